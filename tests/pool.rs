//! The warm pool through sproutd's API, with the real template engine and
//! the Python function: pre-warm, claims (pool hits and forks), output
//! redirection, release and reuse, request leases on instances that serve
//! several requests at once, crashed warm instances replaced, the memory
//! budget under a flood of pre-warms, drain, settings and history across a
//! restart, metrics, and clear errors.

mod common;

use std::fs;
use std::thread;

use common::sproutd::*;
use common::*;
use serde_json::{Value, json};
use sprout::shim::client::Client;

/// One API call; the status and the JSON answer (`Null` for none).
fn call(c: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bytes = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    let r = c
        .raw(method, path, &bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.json())
}

/// A call that must succeed with `want`.
fn ok(c: &Client, d: &Sproutd, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
    let (status, v) = call(c, method, path, body);
    assert_eq!(status, want, "{method} {path}: {v}\n{}", d.log_text());
    v
}

/// Pre-warms `count` instances of "py", which must fit.
fn prewarm(c: &Client, d: &Sproutd, count: u32) -> Value {
    ok(
        c,
        d,
        "POST",
        "/functions/py/pool/prewarm",
        Some(json!({ "count": count })),
        200,
    )
}

fn pool_of(c: &Client, d: &Sproutd, f: &str) -> Value {
    ok(c, d, "GET", &format!("/functions/{f}/pool"), None, 200)
}

/// Ids of the function's pool instances in `state` (frozen/idle/busy).
fn pool_ids(c: &Client, d: &Sproutd, f: &str, state: &str) -> Vec<String> {
    pool_of(c, d, f)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == state)
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn py_function(s: &Sandbox, c: &Client, d: &Sproutd, concurrency: u32) -> Value {
    let (image, warm) = python_image(s);
    let mut f = function("py", s);
    f.image = image;
    f.concurrency = concurrency;
    c.add_function(&f)
        .unwrap_or_else(|e| panic!("add function: {e}\n{}", d.log_text()));
    warm
}

/// The answer of the instance whose init is `pid`.
fn ask(pid: i32, path: &str) -> Value {
    json_body(&http_get_in_netns(pid, 8080, path).unwrap())
}

/// The freezer state of an instance, as the runtime sees it.
fn runtime_status(d: &Sproutd, id: &str) -> String {
    let out = d.runtime_cli().args(["state", id]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["status"].as_str().unwrap_or("gone").to_string()
}

fn teardown(s: &Sandbox, c: &Client, d: &Sproutd) {
    ok(
        c,
        d,
        "POST",
        "/functions/py/pool/drain",
        Some(json!({"force": true})),
        200,
    );
    for v in c.instances().unwrap() {
        // One the pool is deleting itself (a dead instance it replaces)
        // may be gone by now.
        if let Err(e) = c.delete(&v.id, true) {
            assert_eq!(e.status(), Some(404), "delete {}: {e}", v.id);
        }
    }
    c.remove_function("py").unwrap();
    assert_holders_gone(d);
    assert_clean(s, d);
    let logs: Vec<_> = fs::read_dir(d.root.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(logs.is_empty(), "instance logs left: {logs:?}");
}

#[test]
fn prewarm_claim_release_reuse_and_crash_replacement() {
    let s = python_sandbox("pool-claim");
    let d = Sproutd::start_real(&s);
    let c = d.client();
    let warm = py_function(&s, &c, &d, 1);

    let r = prewarm(&c, &d, 3);
    assert_eq!(
        (r["forked"].clone(), r["warm"].clone()),
        (json!(3), json!(3)),
        "{r}"
    );
    let frozen = pool_ids(&c, &d, "py", "frozen");
    assert_eq!(frozen.len(), 3);
    for id in &frozen {
        assert_eq!(
            runtime_status(&d, id),
            "paused",
            "{id} is frozen by the freezer"
        );
        let cg = cgroup_leftovers(id);
        assert!(
            !cg.is_empty()
                && cg
                    .iter()
                    .all(|p| p.to_string_lossy().contains(&d.pool_cgroup)),
            "{id} lives under the pool's cgroup: {cg:?}"
        );
    }

    // Three concurrent claims are three pool hits, each answering with the
    // template's state and counting on its own.
    let claims: Vec<Value> = thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| sc.spawn(|| ok(&c, &d, "POST", "/functions/py/claim", Some(json!({})), 201)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut claimed_ids: Vec<String> = claims
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    claimed_ids.sort();
    let mut expected = frozen.clone();
    expected.sort();
    assert_eq!(claimed_ids, expected, "the claims took the warm instances");
    for v in &claims {
        assert_eq!(v["path"], "pool_hit", "{v}");
        assert!(
            v["stages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "thaw"),
            "{v}"
        );
        let pid = v["pid"].as_i64().unwrap() as i32;
        let id = v["id"].as_str().unwrap();
        assert_eq!(runtime_status(&d, id), "running");
        let a = ask(pid, "/first");
        assert_eq!(
            (a["digest"].clone(), a["requests"].clone()),
            (warm["digest"].clone(), json!(2))
        );
        assert_eq!(ask(pid, "/second")["requests"], 3);
    }

    // The pool is refilled to its floor (3 warm beside the busy ones) in
    // the background; a claim may name a file for the instance's output.
    assert!(
        wait_until(TIMEOUT, || pool_ids(&c, &d, "py", "frozen").len() == 3),
        "the pool was not refilled: {}\n{}",
        pool_of(&c, &d, "py"),
        d.log_text()
    );
    let out = s.dir.path().join("claimed.out");
    let limits = json!({"memory": {"limit": 300 << 20}, "pids": {"limit": 77}});
    let fourth = ok(
        &c,
        &d,
        "POST",
        "/functions/py/claim",
        Some(json!({"stdout": out, "resources": limits})),
        201,
    );
    assert_eq!(fourth["path"], "pool_hit", "{fourth}");
    let pid4 = fourth["pid"].as_i64().unwrap() as i32;
    let id4 = fourth["id"].as_str().unwrap().to_string();
    // The claim's limits are in force when it answers, in the instance's
    // own cgroup, and its state records them (right after the answer).
    let cgroups = fs::read_to_string(format!("/proc/{pid4}/cgroup")).unwrap();
    let cgroup_file = |controller: &str, file: &str| {
        let path = cgroups
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (names, path) = rest.split_once(':')?;
                names.split(',').any(|n| n == controller).then_some(path)
            })
            .unwrap_or_else(|| panic!("no {controller} cgroup of {id4}: {cgroups}"));
        assert!(
            path.ends_with(&id4),
            "{controller} cgroup {path} is its own"
        );
        let dir = format!("/sys/fs/cgroup/{controller}{path}");
        fs::read_to_string(format!("{dir}/{file}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        cgroup_file("memory", "memory.limit_in_bytes"),
        (300u64 << 20).to_string()
    );
    assert_eq!(cgroup_file("pids", "pids.max"), "77");
    let state_file = d.root.join("runtime").join(&id4).join("state.json");
    assert!(
        wait_until(TIMEOUT, || fs::read_to_string(&state_file)
            .unwrap_or_default()
            .contains(r#""limit":77"#)),
        "the instance's state records the claim's limits"
    );
    ask(pid4, "/say/hello-claimant");
    assert!(
        wait_until(TIMEOUT, || fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("hello-claimant")),
        "the claimant's stdout file got the instance's output"
    );

    // Drain the warm ones: the next claim is a fork, not a failure.
    assert!(wait_until(TIMEOUT, || pool_ids(&c, &d, "py", "frozen")
        .len()
        == 3));
    let drained = ok(&c, &d, "POST", "/functions/py/pool/drain", None, 200);
    assert_eq!(drained["destroyed"], 3, "{drained}");
    let fifth = ok(&c, &d, "POST", "/functions/py/claim", None, 201);
    assert_eq!(fifth["path"], "fork", "{fifth}");
    assert_eq!(
        ask(fifth["pid"].as_i64().unwrap() as i32, "/x")["requests"],
        2
    );

    // Release without reuse destroys; with reuse the instance goes back
    // into the pool, frozen.
    let id5 = fifth["id"].as_str().unwrap();
    let r = ok(
        &c,
        &d,
        "POST",
        &format!("/instances/{id5}/release"),
        None,
        200,
    );
    assert_eq!(r["reused"], false);
    assert_eq!(call(&c, "GET", &format!("/instances/{id5}"), None).0, 404);
    ok(
        &c,
        &d,
        "PUT",
        "/functions/py/pool/policy",
        Some(json!({"reuse": true, "min_warm": 1})),
        200,
    );
    let r = ok(
        &c,
        &d,
        "POST",
        &format!("/instances/{id4}/release"),
        None,
        200,
    );
    assert_eq!(r["reused"], true, "{r}");
    assert!(pool_ids(&c, &d, "py", "frozen").contains(&id4));
    assert_eq!(runtime_status(&d, &id4), "paused");
    // Releasing twice, or an instance that was never claimed, is a 409.
    assert_eq!(
        call(&c, "POST", &format!("/instances/{id4}/release"), None).0,
        409
    );

    // A warm instance killed while frozen (it dies only once thawed) is
    // never handed out: the claim skips and destroys it, and the pool
    // replaces it.
    let victim_pid = c.instance(&id4).unwrap().pid;
    // SAFETY: kill with plain integers: an instance this test's sproutd forked.
    unsafe { libc::kill(victim_pid, libc::SIGKILL) };
    let next = ok(&c, &d, "POST", "/functions/py/claim", None, 201);
    assert_ne!(next["id"].as_str().unwrap(), id4, "{next}");
    assert_eq!(
        ask(next["pid"].as_i64().unwrap() as i32, "/y")["digest"],
        warm["digest"]
    );
    assert!(
        wait_until(TIMEOUT, || {
            let frozen = pool_ids(&c, &d, "py", "frozen");
            !frozen.contains(&id4) && !frozen.is_empty()
        }),
        "the dead instance was not replaced: {}\n{}",
        pool_of(&c, &d, "py"),
        d.log_text()
    );
    assert!(wait_until(TIMEOUT, || !pid_alive(victim_pid)));
    assert_eq!(call(&c, "GET", &format!("/instances/{id4}"), None).0, 404);
    // One that dies while awake (a claimed one released back, thawed by a
    // lease) is replaced as well.
    let lease = ok(&c, &d, "POST", "/functions/py/leases", None, 201);
    let awake = lease["instance"].as_str().unwrap().to_string();
    // SAFETY: as above.
    unsafe { libc::kill(lease["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
    assert!(
        wait_until(TIMEOUT, || !pool_ids(&c, &d, "py", "busy").contains(&awake)
            && call(&c, "GET", &format!("/instances/{awake}"), None).0 == 404),
        "{}",
        pool_of(&c, &d, "py")
    );
    let lease_id = lease["lease"].as_str().unwrap();
    assert_eq!(
        call(&c, "DELETE", &format!("/leases/{lease_id}"), None).0,
        404,
        "its lease died with it"
    );

    // The policy's view and the counts.
    let view = pool_of(&c, &d, "py");
    assert!(view["starts"]["pool_hit"].as_u64().unwrap() >= 4, "{view}");
    assert!(view["starts"]["fork"].as_u64().unwrap() >= 1, "{view}");
    assert!(view["plan"]["tier"].is_string(), "{view}");
    assert!(view["bytes_per_instance"].as_u64().unwrap() > 0);

    let metrics = c.raw("GET", "/metrics", b"").unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("sprout_starts_total{function=\"py\",path=\"pool_hit\"}")),
        "{text}"
    );
    // A Prometheus text parser reads every line, and the counts agree
    // with the pool's own.
    for line in text.lines() {
        assert!(
            !matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Ignored
            ),
            "not Prometheus text: {line:?}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let view = pool_of(&c, &d, "py");
    assert_eq!(
        sample(
            "sprout_starts_total",
            &[("function", "py"), ("path", "pool_hit")]
        ),
        Some(view["starts"]["pool_hit"].as_u64().unwrap() as f64),
        "{text}"
    );
    assert!(sample("sprout_pool_budget_bytes", &[]).is_some_and(|b| b > 0.0));
    assert!(
        sample("sprout_instance_memory_bytes", &[("function", "py")]).is_some_and(|b| b > 0.0),
        "per-instance usage: {text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "sprout_start_stage_seconds"
                && s.labels.get("stage") == Some("thaw")),
        "{text}"
    );

    teardown(&s, &c, &d);
}

#[test]
fn leases_fill_instances_before_forking_and_errors_are_clear() {
    let s = python_sandbox("pool-lease");
    let d = Sproutd::start_real(&s);
    let c = d.client();
    py_function(&s, &c, &d, 2);

    // Three requests at once on instances that serve two each: two
    // instances, the first one full.
    let leases: Vec<Value> = (0..3)
        .map(|_| ok(&c, &d, "POST", "/functions/py/leases", None, 201))
        .collect();
    let mut instances: Vec<&str> = leases
        .iter()
        .map(|l| l["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        instances[0], instances[1],
        "the first instance is filled first"
    );
    instances.dedup();
    assert_eq!(instances.len(), 2, "{leases:?}");
    for l in &leases {
        let a = ask(l["pid"].as_i64().unwrap() as i32, "/leased");
        assert!(a["requests"].as_u64().unwrap() >= 2);
    }
    let view = pool_of(&c, &d, "py");
    assert_eq!(view["leases"], 3, "{view}");
    for l in &leases {
        let lease = l["lease"].as_str().unwrap();
        assert_eq!(call(&c, "DELETE", &format!("/leases/{lease}"), None).0, 204);
    }
    assert_eq!(
        call(
            &c,
            "DELETE",
            &format!("/leases/{}", leases[0]["lease"].as_str().unwrap()),
            None
        )
        .0,
        404
    );
    // Idle instances are frozen after a moment (those the policy keeps),
    // and the next lease thaws one.
    assert!(
        wait_until(TIMEOUT, || {
            let v = pool_of(&c, &d, "py");
            let all = v["instances"].as_array().unwrap();
            !all.is_empty() && all.iter().all(|i| i["state"] == "frozen")
        }),
        "idle instances were not frozen: {}",
        pool_of(&c, &d, "py")
    );
    let again = ok(&c, &d, "POST", "/functions/py/leases", None, 201);
    assert_eq!(again["path"], "pool_hit");
    let lease = again["lease"].as_str().unwrap().to_string();
    assert!(ask(again["pid"].as_i64().unwrap() as i32, "/thawed")["digest"].is_string());
    assert_eq!(call(&c, "DELETE", &format!("/leases/{lease}"), None).0, 204);

    // Clear errors.
    let (st, v) = call(&c, "POST", "/functions/nope/claim", None);
    assert_eq!(st, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    assert_eq!(
        call(
            &c,
            "POST",
            "/functions/nope/pool/prewarm",
            Some(json!({"count": 1}))
        )
        .0,
        404
    );
    let r = c
        .raw("POST", "/functions/py/pool/prewarm", b"{not json")
        .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        call(
            &c,
            "POST",
            "/functions/py/pool/prewarm",
            Some(json!({"count": 1, "extra": 2}))
        )
        .0,
        400
    );
    assert_eq!(call(&c, "DELETE", "/leases/bogus", None).0, 400);
    assert_eq!(
        call(
            &c,
            "PUT",
            "/functions/py/pool/policy",
            Some(json!({"keep_alive_s": 0}))
        )
        .0,
        400
    );
    assert_eq!(
        call(&c, "PUT", "/pool/budget", Some(json!({"limit_bytes": 10}))).0,
        400
    );
    assert_eq!(call(&c, "GET", "/functions/py/pool/prewarm", None).0, 405);

    // The memory budget holds under a flood of pre-warms: each is refused
    // with a 409 naming the budget once full, and the books never exceed it.
    let per = pool_of(&c, &d, "py")["bytes_per_instance"]
        .as_u64()
        .unwrap();
    let limit = per * 4 + per / 2;
    ok(
        &c,
        &d,
        "PUT",
        "/pool/budget",
        Some(json!({"limit_bytes": limit})),
        200,
    );
    let answers: Vec<(u16, Value)> = thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                sc.spawn(|| {
                    call(
                        &c,
                        "POST",
                        "/functions/py/pool/prewarm",
                        Some(json!({"count": 20})),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (st, v) in &answers {
        assert_eq!(*st, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("budget"), "{v}");
    }
    let overview = ok(&c, &d, "GET", "/pool", None, 200);
    let used = overview["budget"]["used_bytes"].as_u64().unwrap();
    assert!(used <= limit, "{overview}");
    let held = pool_of(&c, &d, "py")["instances"].as_array().unwrap().len() as u64;
    assert!(
        held >= 1 && held * per <= limit,
        "{held} instances of {per} bytes in {limit}"
    );

    teardown(&s, &c, &d);
}

#[test]
fn settings_and_history_survive_a_restart_and_stale_pool_instances_are_replaced() {
    let s = python_sandbox("pool-restart");
    let mut d = Sproutd::start_real(&s);
    let c = d.client();
    py_function(&s, &c, &d, 1);
    ok(
        &c,
        &d,
        "PUT",
        "/functions/py/pool/policy",
        Some(json!({"strategy": "fixed", "keep_alive_s": 120, "reuse": true})),
        200,
    );
    prewarm(&c, &d, 2);
    // The write set of a first request is recorded from a released
    // instance (forked without one) and kept for later pre-warms.
    let first = ok(&c, &d, "POST", "/functions/py/claim", None, 201);
    ask(first["pid"].as_i64().unwrap() as i32, "/first");
    let first_id = first["id"].as_str().unwrap().to_string();
    let r = ok(
        &c,
        &d,
        "POST",
        &format!("/instances/{first_id}/release"),
        None,
        200,
    );
    assert_eq!(r["reused"], true);
    let pages = pool_of(&c, &d, "py")["write_set_pages"].as_u64().unwrap();
    assert!(pages > 0, "no write set recorded:\n{}", d.log_text());

    let claimed = ok(&c, &d, "POST", "/functions/py/claim", None, 201);
    let claimed_id = claimed["id"].as_str().unwrap().to_string();
    assert!(wait_until(TIMEOUT, || pool_ids(&c, &d, "py", "frozen")
        .len()
        == 2));
    let old_warm = pool_ids(&c, &d, "py", "frozen");

    d.kill9();
    d.spawn();
    let view = pool_of(&c, &d, "py");
    assert_eq!(view["policy"]["strategy"], "fixed", "{view}");
    assert_eq!(view["policy"]["keep_alive_s"], 120);
    assert_eq!(view["policy"]["min_warm"], 2);
    assert_eq!(view["policy"]["reuse"], true);
    // The old warm instances are deleted and new ones forked.
    assert!(
        wait_until(TIMEOUT, || {
            let now = pool_ids(&c, &d, "py", "frozen");
            now.len() == 2 && now.iter().all(|id| !old_warm.contains(id))
        }),
        "{}\n{}",
        pool_of(&c, &d, "py"),
        d.log_text()
    );
    // The write set survived too, and the new pre-warmed instances copied
    // it before they were frozen.
    assert_eq!(pool_of(&c, &d, "py")["write_set_pages"], pages);
    for id in pool_ids(&c, &d, "py", "frozen") {
        let stages = c.instance(&id).unwrap().stages;
        assert!(
            stages.iter().any(|st| st.name == "populate"),
            "{id} was not populated: {stages:?}"
        );
    }
    for id in &old_warm {
        assert_eq!(call(&c, "GET", &format!("/instances/{id}"), None).0, 404);
        let left = cgroup_leftovers(id);
        assert!(
            left.is_empty(),
            "{id}'s cgroup is left: {left:?}\n{}",
            d.log_text()
        );
    }
    // The claimed instance was adopted and still serves.
    let v = c.instance(&claimed_id).unwrap();
    assert!(v.adopted);
    // Its third request if it is the reused one (it served /first), else
    // its second.
    let want = if claimed_id == first_id { 3 } else { 2 };
    assert_eq!(ask(v.pid, "/after")["requests"], want);

    teardown(&s, &c, &d);
}

#[test]
fn a_graceful_stop_deletes_the_pool_but_not_claimed_instances() {
    // The fake engine (a cold start of the bundle per "fork") is enough:
    // this is sproutd's bookkeeping, not the fork.
    let mut s = Sandbox::new("pool-stop");
    s.set_args(&["sleep", "1000"]);
    let mut d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("py", &s)).unwrap();
    prewarm(&c, &d, 2);
    // The claim's annotations stay with the instance, across a restart.
    let claimed = ok(
        &c,
        &d,
        "POST",
        "/functions/py/claim",
        Some(json!({"annotations": {"io.example.owner": "pool-stop"}})),
        201,
    );
    assert_eq!(claimed["path"], "pool_hit", "{claimed}");
    let claimed_id = claimed["id"].as_str().unwrap().to_string();
    let owner = |c: &Client| {
        c.instance(&claimed_id)
            .unwrap()
            .annotations
            .get("io.example.owner")
            .cloned()
    };
    assert_eq!(owner(&c).as_deref(), Some("pool-stop"));
    assert!(wait_until(TIMEOUT, || pool_ids(&c, &d, "py", "frozen")
        .len()
        == 2));
    let warm = pool_ids(&c, &d, "py", "frozen");

    d.stop();
    let left = d.runtime_ids();
    assert_eq!(
        left,
        vec![claimed_id.clone()],
        "only the claimed instance outlives sproutd"
    );
    for id in &warm {
        let left = cgroup_leftovers(id);
        assert!(
            left.is_empty(),
            "{id}'s cgroup is left: {left:?}\n{}",
            d.log_text()
        );
    }
    d.spawn();
    let v = c.instance(&claimed_id).unwrap();
    assert!(v.adopted && v.status == "running", "{v:?}");
    assert_eq!(owner(&c).as_deref(), Some("pool-stop"));
    teardown(&s, &c, &d);
}

/// sproutd stopped while a pre-warm forks: the fork under way ends
/// before the pool is deleted, and nothing of the pool is left (no
/// frozen instance, no cgroup); a claim meanwhile is refused.
#[test]
fn a_graceful_stop_during_a_prewarm_leaves_no_pool_instance() {
    let mut s = Sandbox::new("pool-stop-fork");
    s.set_args(&["sleep", "1000"]);
    let mut d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("py", &s)).unwrap();
    let prewarming = {
        let c = d.client();
        std::thread::spawn(move || {
            call(
                &c,
                "POST",
                "/functions/py/pool/prewarm",
                Some(json!({"count": 40})),
            )
        })
    };
    assert!(wait_until(TIMEOUT, || !pool_of(&c, &d, "py")["instances"]
        .as_array()
        .unwrap()
        .is_empty()));
    d.stop();
    let _ = prewarming.join().unwrap();
    assert_eq!(d.runtime_ids(), Vec::<String>::new(), "{}", d.log_text());
    let left = cgroup_leftovers(&d.pool_cgroup);
    assert!(left.is_empty(), "{left:?}\n{}", d.log_text());
    d.spawn();
    c.remove_function("py").unwrap();
    assert_clean(&s, &d);
}

#[test]
fn a_graceful_stop_right_after_a_function_removal_leaves_nothing() {
    // A stop right after the removal must not leave the template's holder
    // behind while the pool instances the removal killed await reaping.
    let s = python_sandbox("pool-stop-real");
    let mut d = Sproutd::start_real(&s);
    let c = d.client();
    py_function(&s, &c, &d, 1);
    prewarm(&c, &d, 2);
    assert_eq!(pool_ids(&c, &d, "py", "frozen").len(), 2);
    // Removing the function drops its template; its holder goes once
    // the instances the removal's drain killed are reaped.
    c.remove_function("py").unwrap();
    d.stop();
    assert_eq!(holders_left(&d), Vec::<String>::new(), "{}", d.log_text());
    assert_clean(&s, &d);
}

#[test]
fn a_function_removed_right_after_a_drain_has_no_pool_instance_left() {
    // The demo's ending: claims each followed by a refill, then a drain
    // and the removal at once. The reconciler may still be destroying an
    // instance it unloaded when the drain answers; the drain waits for
    // it, so the removal never finds one (it answered 409 before).
    let mut s = Sandbox::new("pool-drain-remove");
    s.set_args(&["sleep", "1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    for round in 0..6 {
        c.add_function(&function("py", &s)).unwrap();
        ok(
            &c,
            &d,
            "PUT",
            "/functions/py/pool/policy",
            Some(json!({"strategy": "none"})),
            200,
        );
        prewarm(&c, &d, 1);
        for _ in 0..3 {
            assert!(
                wait_until(TIMEOUT, || pool_ids(&c, &d, "py", "frozen").len() == 1),
                "round {round}: {}\n{}",
                pool_of(&c, &d, "py"),
                d.log_text()
            );
            let claimed = ok(&c, &d, "POST", "/functions/py/claim", Some(json!({})), 201);
            let id = claimed["id"].as_str().unwrap();
            ok(
                &c,
                &d,
                "POST",
                &format!("/instances/{id}/release"),
                None,
                200,
            );
        }
        ok(
            &c,
            &d,
            "POST",
            "/functions/py/pool/drain",
            Some(json!({"force": true})),
            200,
        );
        c.remove_function("py")
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", d.log_text()));
        assert!(c.instances().unwrap().is_empty(), "round {round}");
    }
    assert_holders_gone(&d);
    assert_clean(&s, &d);
}

#[test]
fn bad_claims_and_refused_removals_leave_the_pool_as_it_was_and_requests_end() {
    let s = python_sandbox("pool-keep");
    let d = Sproutd::start_real(&s);
    let c = d.client();
    py_function(&s, &c, &d, 1);
    prewarm(&c, &d, 2);
    let warm = pool_ids(&c, &d, "py", "frozen");
    assert_eq!(warm.len(), 2);
    let in_flight = || pool_of(&c, &d, "py")["in_flight"].as_u64().unwrap();

    // Output files that cannot be opened are the claim's fault: a 400
    // naming them, and every warm instance is still there.
    let missing = s.dir.path().join("no-such-dir").join("out");
    for stdout in [json!("relative/out"), json!(missing)] {
        let (st, v) = call(
            &c,
            "POST",
            "/functions/py/claim",
            Some(json!({ "stdout": stdout })),
        );
        assert_eq!(st, 400, "{v}");
        let mut left = pool_ids(&c, &d, "py", "frozen");
        left.sort();
        assert_eq!(left, warm, "{v}\n{}", d.log_text());
        assert_eq!(in_flight(), 0);
    }

    // A lease whose instance dies ends its request.
    let lease = ok(&c, &d, "POST", "/functions/py/leases", None, 201);
    assert_eq!(in_flight(), 1);
    let leased = lease["instance"].as_str().unwrap().to_string();
    let leased_pid = lease["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) of an instance sproutd forked for this test.
    let killed = unsafe { libc::kill(leased_pid, libc::SIGKILL) };
    assert_eq!(killed, 0);
    assert!(
        wait_until(TIMEOUT, || in_flight() == 0),
        "the dead instance's lease still counts: {}",
        pool_of(&c, &d, "py")
    );
    let gone = format!("/leases/{}", lease["lease"].as_str().unwrap());
    assert_eq!(call(&c, "DELETE", &gone, None).0, 404);
    assert!(wait_until(TIMEOUT, || {
        let v = pool_of(&c, &d, "py");
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != leased.as_str())
    }));

    // Removing a function that has a claimed instance is refused, and
    // leaves its pool and settings alone.
    let claimed = ok(&c, &d, "POST", "/functions/py/claim", Some(json!({})), 201);
    assert_eq!(in_flight(), 1);
    assert!(wait_until(TIMEOUT, || pool_ids(&c, &d, "py", "frozen")
        .len()
        == 2));
    let before = pool_of(&c, &d, "py");
    let (st, v) = call(&c, "DELETE", "/functions/py", None);
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(claimed["id"].as_str().unwrap()),
        "{v}"
    );
    let after = pool_of(&c, &d, "py");
    assert_eq!(after["policy"], before["policy"], "{after}");
    assert_eq!(after["warm"], 2, "{after}");
    ok(
        &c,
        &d,
        "POST",
        &format!("/instances/{}/release", claimed["id"].as_str().unwrap()),
        None,
        200,
    );
    assert_eq!(in_flight(), 0);

    // Two releases of one claimed, reusable instance at once: one puts
    // it back, the other is refused; the request ends once, and the pool's
    // books hold the instance exactly once, alive and frozen.
    ok(
        &c,
        &d,
        "PUT",
        "/functions/py/pool/policy",
        Some(json!({"reuse": true})),
        200,
    );
    for _ in 0..5 {
        let claimed = ok(&c, &d, "POST", "/functions/py/claim", Some(json!({})), 201);
        let id = claimed["id"].as_str().unwrap().to_string();
        let path = format!("/instances/{id}/release");
        let mut statuses: Vec<u16> = thread::scope(|sc| {
            let racers: Vec<_> = (0..2)
                .map(|_| sc.spawn(|| call(&d.client(), "POST", &path, None).0))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        statuses.sort();
        assert_eq!(statuses, [200, 409], "{}", d.log_text());
        assert_eq!(in_flight(), 0, "{}", pool_of(&c, &d, "py"));
        let view = pool_of(&c, &d, "py");
        let listed: Vec<&str> = view["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["id"].as_str())
            .filter(|i| *i == id)
            .collect();
        assert_eq!(listed, [id.as_str()], "{view}");
        assert_eq!(runtime_status(&d, &id), "paused", "{view}");
    }
    teardown(&s, &c, &d);
}
