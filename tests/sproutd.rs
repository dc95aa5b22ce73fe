//! sproutd end to end: the real daemon binary (with its test-only fake
//! engine, which "forks" by cold-starting the function's busybox bundle
//! as a real container), driven through its HTTP API, its side channel and
//! the `sprout function` / `sprout run --function` commands.
//!
//! The `sproutd` binary is found next to `sprout` (they are installed side
//! by side); `cargo test --workspace` builds it. Each test starts its own
//! sproutd on a state directory inside its sandbox and stops it by pid at
//! the end, even on failure, deleting whatever instances are left.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::sproutd::*;
use common::*;
use sprout::netplug::{self, BlockingNetplug, Owner, ProcRef};
use sprout::shim::client::{Client, side_fork};
use sprout::shim::events::{Event, EventKind};
use sprout::shim::proto::{
    ExecBody, ExecUser, FdRole, ForkBody, KillBody, SideMessage, SideRequest, SignalArg,
};

/// Events of a `GET /events` stream, read on a thread.
struct Events {
    rx: mpsc::Receiver<Event>,
    seen: Vec<Event>,
}

impl Events {
    fn subscribe(c: &Client, query: &str) -> Self {
        let stream = c.events(query).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for e in stream {
                match e {
                    Ok(e) => {
                        if tx.send(e).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next event of `kind` for `id` (earlier ones are kept in `seen`).
    fn expect(&mut self, kind: EventKind, id: &str) -> Event {
        if let Some(i) = self.seen.iter().position(|e| e.kind == kind && e.id == id) {
            return self.seen.remove(i);
        }
        loop {
            match self.rx.recv_timeout(TIMEOUT) {
                Ok(e) if e.kind == kind && e.id == id => return e,
                Ok(e) => self.seen.push(e),
                Err(_) => panic!("no {kind:?} event for {id}; saw {:?}", self.seen),
            }
        }
    }
}

/// A fork request for instance `id`, everything else defaulted.
fn fork_body(id: &str) -> ForkBody {
    ForkBody {
        id: id.into(),
        ..Default::default()
    }
}

fn pipe() -> (fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned here.
    unsafe { (fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn api_fork_exec_pause_stats_kill_delete_with_events() {
    let mut s = Sandbox::new("sd-api");
    s.set_args(&["sh", "-c", "echo started; exec sleep 1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    assert!(c.info().unwrap().engine.starts_with("fake"));
    c.add_function(&function("f", &s)).unwrap();
    let mut ev = Events::subscribe(&c, "function=f");

    let out = s.dir.path().join("i1.out");
    let forked = c
        .fork(
            "f",
            &ForkBody {
                id: "i1".into(),
                stdout: Some(out.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(forked.pid > 0);
    assert!(!forked.stages.is_empty());
    assert_eq!(ev.expect(EventKind::Created, "i1").pid, Some(forked.pid));
    ev.expect(EventKind::Started, "i1");
    assert!(wait_until(TIMEOUT, || fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("started")));
    let v = c.instance("i1").unwrap();
    assert_eq!((v.status.as_str(), v.function.as_str()), ("running", "f"));
    assert_eq!(v.pid, forked.pid);
    assert!(!v.adopted);
    // The fork loaded the function's template on demand.
    assert!(c.function("f").unwrap().template.is_some());
    assert_eq!(c.function("f").unwrap().instances, ["i1"]);

    // exec: captured output and exit code, or output to a file.
    let r = c
        .exec(
            "i1",
            &ExecBody {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo out-$((6*7)); echo err >&2; exit 3".into(),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.stdout.as_deref(), Some("out-42\n"));
    assert_eq!(r.stderr.as_deref(), Some("err\n"));
    let exec_out = s.dir.path().join("exec.out");
    let r = c
        .exec(
            "i1",
            &ExecBody {
                args: vec!["hostname".into()],
                stdout: Some(exec_out.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout, None);
    assert_eq!(fs::read_to_string(&exec_out).unwrap(), "sprout-test\n");

    // A process that leaves a child holding its stdout: the answer comes
    // once the process itself exits.
    let r = c
        .exec(
            "i1",
            &ExecBody {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo quick; sleep 1000 & exit 0".into(),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_deref()),
        (Some(0), Some("quick\n"))
    );

    // pause / resume.
    c.call::<()>("POST", "/instances/i1/pause", None::<&()>)
        .unwrap();
    ev.expect(EventKind::Paused, "i1");
    assert_eq!(c.instance("i1").unwrap().status, "paused");
    c.call::<()>("POST", "/instances/i1/resume", None::<&()>)
        .unwrap();
    ev.expect(EventKind::Resumed, "i1");
    assert_eq!(c.instance("i1").unwrap().status, "running");

    // stats, as the runtime reads them.
    let st: serde_json::Value = c.call("GET", "/instances/i1/stats", None::<&()>).unwrap();
    assert!(st["pids"]["current"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["memory"].is_object(), "{st}");

    // kill: the exit is reported with its status.
    c.kill(
        "i1",
        &KillBody {
            signal: SignalArg::Name("KILL".into()),
            all: false,
        },
    )
    .unwrap();
    let e = ev.expect(EventKind::Exited, "i1");
    let exit = e.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (Some(137), Some(9)));
    let v = c.instance("i1").unwrap();
    assert_eq!(v.status, "stopped");
    assert_eq!(v.exit.unwrap().exit_code, Some(137));

    c.delete("i1", false).unwrap();
    ev.expect(EventKind::Deleted, "i1");
    assert_eq!(api_status(c.instance("i1")).0, 404);

    // The template can be dropped and loaded explicitly.
    c.call::<()>("DELETE", "/functions/f/template", None::<&()>)
        .unwrap();
    assert_eq!(
        api_status(c.call::<serde_json::Value>("GET", "/functions/f/template", None::<&()>)).0,
        404
    );
    let t: serde_json::Value = c
        .call("POST", "/functions/f/template", None::<&()>)
        .unwrap();
    assert_eq!(t["function"], "f");
    c.remove_function("f").unwrap();
    assert!(c.functions().unwrap().is_empty());
    assert_clean(&s, &d);
}

/// Two deletes of one running instance at once: one deletes it, the other
/// waits for that and finds it gone; one Deleted event, and the
/// namespace is given back once.
#[test]
fn concurrent_deletes_of_one_instance_delete_it_once() {
    let mut s = Sandbox::new("sd-del2");
    s.set_args(&["sh", "-c", "trap '' TERM; exec sleep 1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();
    let mut ev = Events::subscribe(&c, "function=f");
    c.fork("f", &fork_body("i1")).unwrap();
    ev.expect(EventKind::Started, "i1");

    let results: Vec<Result<(), _>> = std::thread::scope(|scope| {
        let both: Vec<_> = (0..2)
            .map(|_| {
                let c = d.client();
                scope.spawn(move || c.delete("i1", true))
            })
            .collect();
        both.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    let failed = results.into_iter().find(|r| r.is_err()).unwrap();
    assert_eq!(api_status(failed).0, 404);
    ev.expect(EventKind::Deleted, "i1");
    // A second Deleted would have been published before the second
    // delete returned.
    c.fork("f", &fork_body("marker")).unwrap();
    ev.expect(EventKind::Created, "marker");
    assert!(
        !ev.seen
            .iter()
            .any(|e| e.kind == EventKind::Deleted && e.id == "i1"),
        "{:?}",
        ev.seen
    );
    c.delete("marker", true).unwrap();
    assert_clean(&s, &d);
}

#[test]
fn side_channel_passes_stdio_and_reports_the_exit() {
    let mut s = Sandbox::new("sd-side");
    s.set_args(&["sh", "-c", "read x; echo got-$x; echo oops >&2; exit 5"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();
    let mut ev = Events::subscribe(&c, "");

    let (in_r, in_w) = pipe();
    let (mut out_r, out_w) = pipe();
    let (mut err_r, err_w) = pipe();
    let in_r: OwnedFd = in_r.into();
    let req = SideRequest {
        op: "fork".into(),
        function: "f".into(),
        id: "s1".into(),
        fds: vec![FdRole::Stdin, FdRole::Stdout, FdRole::Stderr],
        wait: true,
        ..Default::default()
    };
    let (forked, conn) =
        side_fork(&d.side, &req, &[in_r.as_fd(), out_w.as_fd(), err_w.as_fd()]).unwrap();
    // sproutd keeps no copy: ours are the only other ends.
    drop((in_r, out_w, err_w));
    assert_eq!(forked.id, "s1");
    let mut in_w = fs::File::from(in_w);
    in_w.write_all(b"abc\n").unwrap();
    drop(in_w);
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    err_r.read_to_string(&mut err).unwrap();
    assert_eq!(out, "got-abc\n");
    assert_eq!(err, "oops\n");
    match conn.wait().unwrap() {
        SideMessage::Exited { id, exit, .. } => {
            assert_eq!(id, "s1");
            assert_eq!((exit.exit_code, exit.signal), (Some(5), None));
        }
        other => panic!("expected the exit, got {other:?}"),
    }
    let e = ev.expect(EventKind::Exited, "s1");
    assert_eq!(e.exit.unwrap().exit_code, Some(5));

    // Without fds and without waiting: stdio is /dev/null (so `read`
    // gets EOF) and the connection ends after the answer.
    let req = SideRequest {
        id: "s2".into(),
        wait: false,
        fds: vec![],
        ..req
    };
    let (_, conn) = side_fork(&d.side, &req, &[]).unwrap();
    let mut rest = Vec::new();
    conn.socket().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(
        ev.expect(EventKind::Exited, "s2").exit.unwrap().exit_code,
        Some(5)
    );

    for id in ["s1", "s2"] {
        c.delete(id, false).unwrap();
        ev.expect(EventKind::Deleted, id);
    }
    assert_clean(&s, &d);
}

#[test]
fn bad_requests_get_clear_errors() {
    let mut s = Sandbox::new("sd-bad");
    s.set_args(&["sleep", "1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    let f = function("f", &s);

    let err = |method: &str, path: &str, body: &str| -> (u16, String) {
        let r = c.raw(method, path, body.as_bytes()).unwrap();
        let v = r.json();
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no JSON error in {v}"))
            .to_string();
        (r.status, msg)
    };
    let (st, m) = err("POST", "/functions", "{bad");
    assert_eq!(st, 400);
    assert!(m.contains("bad JSON"), "{m}");
    let (st, m) = err("POST", "/functions", r#"{"name":"f"}"#);
    assert_eq!(st, 400);
    assert!(m.contains("missing field"), "{m}");
    let (st, m) = err(
        "POST",
        "/functions",
        r#"{"name":"f","image":"rel","bundle":"/"}"#,
    );
    assert_eq!(st, 400);
    assert!(m.contains("absolute"), "{m}");
    let mut no_bundle = f.clone();
    no_bundle.bundle = s.dir.path().join("image");
    assert_eq!(api_status(c.add_function(&no_bundle)).0, 400);
    let mut bad_name = f.clone();
    bad_name.name = "a/b".into();
    assert_eq!(api_status(c.add_function(&bad_name)).0, 400);
    c.add_function(&f).unwrap();
    let (st, m) = api_status(c.add_function(&f));
    assert_eq!(st, 409);
    assert!(m.contains("already exists"), "{m}");

    let (st, m) = err("GET", "/functions/nope", "");
    assert_eq!(st, 404);
    assert!(m.contains("unknown function \"nope\""), "{m}");
    let (st, _) = err("POST", "/functions/nope/instances", r#"{"id":"x"}"#);
    assert_eq!(st, 404);
    let (st, m) = err("POST", "/functions/f/instances", r#"{"id":"../x"}"#);
    assert_eq!(st, 400);
    assert!(m.contains("invalid instance id"), "{m}");
    let (st, m) = err(
        "POST",
        "/functions/f/instances",
        r#"{"id":"x","stdout":"rel.out"}"#,
    );
    assert_eq!(st, 400);
    assert!(m.contains("absolute"), "{m}");
    let (st, m) = err("POST", "/functions/f/instances", r#"{"id":"x","extra":1}"#);
    assert_eq!(st, 400);
    assert!(m.contains("unknown field"), "{m}");
    let (st, _) = err("POST", "/functions/f/instances", "");
    assert_eq!(st, 400);
    for (m, p) in [
        ("GET", "/instances/nope"),
        ("DELETE", "/instances/nope"),
        ("POST", "/instances/nope/pause"),
        ("GET", "/instances/nope/stats"),
    ] {
        let (st, msg) = err(m, p, "");
        assert_eq!(st, 404, "{m} {p}");
        assert!(msg.contains("unknown instance \"nope\""), "{msg}");
    }
    let (st, m) = err("POST", "/instances/nope/kill", r#"{"signal":"NOPE"}"#);
    assert_eq!(st, 400);
    assert!(m.contains("unknown signal"), "{m}");
    let (st, m) = err("GET", "/nothing/here", "");
    assert_eq!(st, 404);
    assert!(m.contains("no such endpoint"), "{m}");
    let r = c.raw("PUT", "/functions", b"").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));

    // Duplicate and busy instances.
    c.fork("f", &fork_body("x")).unwrap();
    let (st, m) = api_status(c.fork("f", &fork_body("x")));
    assert_eq!(st, 409);
    assert!(m.contains("already exists"), "{m}");
    let (st, m) = api_status(c.delete("x", false));
    assert_eq!(st, 409);
    assert!(m.contains("running"), "{m}");
    let (st, m) = api_status(c.remove_function("f"));
    assert_eq!(st, 409);
    assert!(m.contains("delete them first"), "{m}");
    let (st, m) = err("POST", "/instances/x/exec", r#"{"args":[]}"#);
    assert_eq!(st, 400);
    assert!(m.contains("args"), "{m}");
    let (st, _) = err("POST", "/instances/x/resume", "");
    assert_eq!(st, 409, "resume of a running instance");

    // The side channel: garbage, a count mismatch, an unknown function.
    let side_err = |line: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| -> (u16, String) {
        let sock = UnixStream::connect(&d.side).unwrap();
        sprout::shim::client::send_with_fds(&sock, line, fds).unwrap();
        let mut answer = String::new();
        (&sock).read_to_string(&mut answer).unwrap();
        match serde_json::from_str::<SideMessage>(answer.trim()).unwrap() {
            SideMessage::Error { status, error } => (status, error),
            other => panic!("expected an error, got {other:?}"),
        }
    };
    let (st, m) = side_err(b"not json\n", &[]);
    assert_eq!(st, 400);
    assert!(m.contains("bad JSON"), "{m}");
    let devnull = fs::File::open("/dev/null").unwrap();
    let (st, m) = side_err(
        br#"{"op":"fork","function":"f","id":"y","fds":["stdin","stdout"]}
"#,
        &[devnull.as_fd()],
    );
    assert_eq!(st, 400);
    assert!(m.contains("names 2 fd(s) but 1 came"), "{m}");
    let (st, _) = side_err(
        br#"{"op":"fork","function":"nope","id":"y"}
"#,
        &[],
    );
    assert_eq!(st, 404);
    let (st, m) = side_err(
        br#"{"op":"launch","function":"f","id":"y"}
"#,
        &[],
    );
    assert_eq!(st, 400);
    assert!(m.contains("unknown op"), "{m}");

    c.delete("x", true).unwrap();
    c.remove_function("f").unwrap();
    assert_clean(&s, &d);
}

#[test]
fn cli_function_commands_and_run_function() {
    let mut s = Sandbox::new("sd-cli");
    s.set_args(&["sh", "-c", "echo from-instance; echo to-stderr >&2; exit 3"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    let socket = d.socket.to_str().unwrap().to_string();
    let image = s.dir.path().join("image");
    fs::create_dir_all(&image).unwrap();
    let sprout = |args: &[&str]| {
        run_to_files(
            Command::new(sprout_bin())
                .arg("--sproutd-socket")
                .arg(&socket)
                .args(args),
            s.dir.path(),
        )
    };
    let ok = |args: &[&str]| {
        let out = sprout(args);
        assert!(
            out.status.success(),
            "sprout {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&[
        "function",
        "add",
        "f",
        "--image",
        image.to_str().unwrap(),
        "--bundle",
        s.bundle_str(),
        "--concurrency",
        "8",
    ]);
    let table = ok(&["function", "list"]);
    assert!(table.lines().any(|l| l.starts_with("f ")), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["function", "list", "-f", "json"])).unwrap();
    assert_eq!(json[0]["function"]["concurrency"], 8);
    let out = sprout(&[
        "function",
        "add",
        "f",
        "--image",
        "/",
        "--bundle",
        s.bundle_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // Foreground: the instance writes to our stdio and its exit code is
    // ours; the instance is deleted afterwards.
    let out = sprout(&["run", "--function", "f", "r1"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-instance\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    assert_eq!(api_status(c.instance("r1")).0, 404);

    // Detached, with a bundle of its own (same rootfs, own cgroup).
    let own = s.dir.path().join("own-bundle");
    fs::create_dir_all(&own).unwrap();
    let mut config = default_config(&["sleep", "1000"], &format!("{}-own", s.cgroup));
    config["root"]["path"] = serde_json::json!(s.bundle.join("rootfs"));
    fs::write(own.join("config.json"), config.to_string()).unwrap();
    let pid_file = s.dir.path().join("r2.pid");
    ok(&[
        "run",
        "--function",
        "f",
        "--bundle",
        own.to_str().unwrap(),
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "r2",
    ]);
    let v = c.instance("r2").unwrap();
    assert_eq!(v.status, "running");
    assert_eq!(v.bundle, own);
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        v.pid.to_string()
    );
    let out = sprout(&["function", "remove", "f"]);
    assert_eq!(out.status.code(), Some(1));
    c.delete("r2", true).unwrap();
    ok(&["function", "remove", "f"]);
    assert_eq!(ok(&["function", "list", "-q"]), "");

    let out = sprout(&["run", "--function", "nope", "r3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown function \"nope\""));
    let out = run_to_files(
        Command::new(sprout_bin())
            .env("SPROUTD_SOCKET", s.dir.path().join("missing.sock"))
            .args(["function", "list"]),
        s.dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach sproutd"));
    assert_clean(&s, &d);
}

#[test]
fn restarted_sproutd_adopts_its_instances() {
    let mut s = Sandbox::new("sd-restart");
    s.set_args(&["sleep", "1000"]);
    let mut d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();
    let mut pids = Vec::new();
    for id in ["a", "b"] {
        let f = c.fork("f", &fork_body(id)).unwrap();
        pids.push(f.pid);
    }
    let old = d.pid();
    d.kill9();
    assert!(!pid_alive(old));
    for &p in &pids {
        assert!(pid_alive(p), "instance {p} died with sproutd");
    }

    // A record whose id is not its file's name is ignored, never used to
    // remove a file outside the records.
    let victim = d.root.join("victim.json");
    fs::write(&victim, "{}").unwrap();
    fs::write(
        d.root.join("instances/forged.json"),
        serde_json::json!({"id": "../victim", "function": "f", "bundle": "/", "created": "0"})
            .to_string(),
    )
    .unwrap();
    d.spawn();
    // A second sproutd on the same root is refused.
    let second = run_to_files(&mut d.command(), s.dir.path());
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another sproutd"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // The registry and the instances are back.
    assert_eq!(c.functions().unwrap()[0].function.name, "f");
    let list = c.instances().unwrap();
    assert_eq!(
        list.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    for (v, p) in list.iter().zip(&pids) {
        assert_eq!((v.status.as_str(), v.pid, v.adopted), ("running", *p, true));
        assert_eq!(v.function, "f");
    }
    // Events go on for adopted instances; their status is known when the
    // kernel can tell it (PIDFD_INFO_EXIT) once something reaped them.
    let mut ev = Events::subscribe(&c, "");
    c.kill(
        "a",
        &KillBody {
            signal: SignalArg::Number(9),
            all: false,
        },
    )
    .unwrap();
    let e = ev.expect(EventKind::Exited, "a");
    let code = e.exit.unwrap().exit_code;
    assert!(code.is_none() || code == Some(137), "{code:?}");
    c.delete("a", false).unwrap();
    ev.expect(EventKind::Deleted, "a");
    c.delete("b", true).unwrap();
    ev.expect(EventKind::Exited, "b");
    ev.expect(EventKind::Deleted, "b");
    assert!(c.instances().unwrap().is_empty());
    assert!(
        victim.exists(),
        "a forged record removed {}",
        victim.display()
    );
    fs::remove_file(&victim).unwrap();
    fs::remove_file(d.root.join("instances/forged.json")).unwrap();
    assert_clean(&s, &d);
}

#[test]
fn crashed_clients_do_not_hurt_instances() {
    let mut s = Sandbox::new("sd-client");
    s.set_args(&["sleep", "1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();

    // A foreground `sprout run --function`, killed while it waits.
    let log = fs::File::create(s.dir.path().join("client.out")).unwrap();
    let mut client = Command::new(sprout_bin())
        .arg("--sproutd-socket")
        .arg(&d.socket)
        .args(["run", "--function", "f", "c1"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(wait_until(TIMEOUT, || c
        .instance("c1")
        .is_ok_and(|v| v.status == "running")));
    // SAFETY: kill with plain integers: our own child.
    unsafe { libc::kill(client.id() as i32, libc::SIGKILL) };
    client.wait().unwrap();

    // An events subscriber that leaves, and side-channel clients that
    // send half a request or leave before the exit.
    drop(c.events("").unwrap());
    let mut half = UnixStream::connect(&d.side).unwrap();
    half.write_all(br#"{"op":"fork","function":"f","#).unwrap();
    drop(half);
    let req = SideRequest {
        op: "fork".into(),
        function: "f".into(),
        id: "c2".into(),
        wait: true,
        ..Default::default()
    };
    let (_, conn) = side_fork(&d.side, &req, &[]).unwrap();
    drop(conn);

    let v1 = c.instance("c1").unwrap();
    let v2 = c.instance("c2").unwrap();
    assert_eq!(
        (v1.status.as_str(), v2.status.as_str()),
        ("running", "running")
    );
    assert!(pid_alive(v1.pid) && pid_alive(v2.pid));
    // The instance keeps its stdio: the killed client's file.
    let exec = c
        .exec(
            "c1",
            &ExecBody {
                args: vec!["true".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(exec.exit_code, Some(0));
    assert!(c.info().is_ok());
    for id in ["c1", "c2"] {
        c.delete(id, true).unwrap();
    }
    assert_clean(&s, &d);
}

#[test]
fn fork_limits_apply_and_oom_kills_are_events() {
    let mut s = Sandbox::new("sd-oom");
    s.set_args(&["sleep", "1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();
    let mut ev = Events::subscribe(&c, "id=m");
    let limit = 32u64 << 20;
    let resources =
        serde_json::from_value(serde_json::json!({"memory": {"limit": limit}})).unwrap();
    c.fork(
        "f",
        &ForkBody {
            id: "m".into(),
            resources: Some(resources),
            ..Default::default()
        },
    )
    .unwrap();
    let st: serde_json::Value = c.call("GET", "/instances/m/stats", None::<&()>).unwrap();
    assert_eq!(st["memory"]["usage"]["limit"].as_u64(), Some(limit), "{st}");
    // dd's 64 MiB buffer does not fit: the OOM killer ends it.
    let r = c
        .exec(
            "m",
            &ExecBody {
                args: ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.signal, Some(libc::SIGKILL), "{r:?}");
    ev.expect(EventKind::Oom, "m");
    c.delete("m", true).unwrap();
    assert_clean(&s, &d);
}

#[test]
fn a_foreground_run_outlives_a_sproutd_restart() {
    let mut s = Sandbox::new("sd-fg");
    s.set_args(&["sh", "-c", "read x; echo got-$x; exit 4"]);
    let mut d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();
    let out = s.dir.path().join("fg.out");
    let mut client = Command::new(sprout_bin())
        .arg("--sproutd-socket")
        .arg(&d.socket)
        .args(["run", "--function", "f", "fg"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_until(TIMEOUT, || c
        .instance("fg")
        .is_ok_and(|v| v.status == "running")));
    d.kill9();
    d.spawn();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"x\n").unwrap();
    drop(stdin);
    let status = client.wait().unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "got-x\n");
    // 255 when the kernel cannot tell an adopted instance's status.
    assert!(
        matches!(status.code(), Some(4) | Some(255)),
        "{status}: {}",
        fs::read_to_string(out.with_extension("err")).unwrap_or_default()
    );
    assert_eq!(api_status(c.instance("fg")).0, 404, "deleted after the run");
    assert_clean(&s, &d);
}

#[test]
fn concurrent_forks_and_deletes() {
    let mut s = Sandbox::new("sd-many");
    s.set_args(&["sleep", "1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    std::thread::scope(|t| {
        for id in &ids {
            let c = c.clone();
            t.spawn(move || c.fork("f", &fork_body(id)).unwrap());
        }
    });
    let list = c.instances().unwrap();
    assert_eq!(list.len(), ids.len());
    let mut pids: Vec<i32> = list.iter().map(|v| v.pid).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), ids.len());
    assert!(list.iter().all(|v| v.status == "running"));
    assert_eq!(c.function("f").unwrap().instances, ids);
    std::thread::scope(|t| {
        for id in &ids {
            let c = c.clone();
            t.spawn(move || c.delete(id, true).unwrap());
        }
    });
    assert!(c.instances().unwrap().is_empty());
    assert_clean(&s, &d);
}

/// Holders go once nothing runs below them.
#[test]
fn real_engine_forks_python_instances_that_survive_a_sproutd_crash() {
    let s = python_sandbox("sd-real");
    let (image, warm) = python_image(&s);
    let mut d = Sproutd::start_real(&s);
    let c = d.client();
    assert_eq!(c.info().unwrap().engine, "sfork");
    let mut f = function("py", &s);
    f.image = image;
    c.add_function(&f).unwrap();

    let ids = ["p0", "p1", "p2"];
    let mut pids = Vec::new();
    for id in ids {
        let forked = c
            .fork(
                "py",
                &ForkBody {
                    id: id.into(),
                    stdout: Some(s.dir.path().join(format!("{id}.out"))),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("fork {id}: {e}\n{}", d.log_text()));
        assert!(forked.stages.iter().any(|st| st.name == "clone"));
        pids.push(forked.pid);
    }
    let template = c
        .function("py")
        .unwrap()
        .template
        .expect("loaded on demand");
    // A fork into a bundle whose rootfs holds another python3.11 (one byte
    // more) is a clear 400 naming the file, and leaves nothing.
    let other = bundle_with_other_python(&s, "other-bundle");
    let (status, msg) = api_status(c.fork(
        "py",
        &ForkBody {
            id: "pbad".into(),
            bundle: Some(other),
            ..Default::default()
        },
    ));
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("python3.11"), "{msg}");
    assert_eq!(api_status(c.instance("pbad")).0, 404);
    assert!(cgroup_leftovers("pbad").is_empty());
    for (i, &pid) in pids.iter().enumerate() {
        let r = json_body(&http_get_in_netns(pid, 8080, &format!("/{i}")).unwrap());
        assert_eq!(r["digest"], warm["digest"]);
        assert_eq!(r["requests"], 2, "each instance counts on its own");
    }

    // sproutd crashes: its template dies with it (the tracer's EXITKILL),
    // the instances do not; the next sproutd adopts them.
    d.kill9();
    assert!(wait_until(TIMEOUT, || !pid_alive(template.pid)));
    d.spawn();
    for (id, &pid) in ids.iter().zip(&pids) {
        let v = c.instance(id).unwrap();
        assert_eq!(
            (v.status.as_str(), v.pid, v.adopted),
            ("running", pid, true)
        );
        let r = json_body(&http_get_in_netns(pid, 8080, "/again").unwrap());
        assert_eq!(r["requests"], 3);
    }
    // A new template is loaded for the next fork.
    let again = c
        .fork("py", &fork_body("p3"))
        .unwrap_or_else(|e| panic!("fork after restart: {e}\n{}", d.log_text()));
    let r = json_body(&http_get_in_netns(again.pid, 8080, "/new").unwrap());
    assert_eq!(
        (r["digest"].clone(), r["requests"].clone()),
        (warm["digest"].clone(), 2.into())
    );

    let mut ev = Events::subscribe(&c, "function=py");
    for id in ["p0", "p1", "p2", "p3"] {
        c.delete(id, true).unwrap();
        ev.expect(EventKind::Deleted, id);
    }
    c.remove_function("py").unwrap();
    assert_holders_gone(&d);
    assert_clean(&s, &d);
}

#[test]
fn a_template_killed_from_outside_is_loaded_again_at_the_next_fork() {
    let s = python_sandbox("sd-tdead");
    let (image, warm) = python_image(&s);
    let d = Sproutd::start_real(&s);
    let c = d.client();
    let mut f = function("py", &s);
    f.image = image;
    c.add_function(&f).unwrap();
    let first = c.fork("py", &fork_body("t0")).unwrap();
    let dead = c.function("py").unwrap().template.expect("loaded").pid;
    // SAFETY: kill(2) of the template sproutd made for this test.
    assert_eq!(unsafe { libc::kill(dead, libc::SIGKILL) }, 0);
    assert!(wait_until(TIMEOUT, || !pid_alive(dead)));

    // The next fork loads a new template; the instance of the dead one
    // runs on.
    let next = c
        .fork("py", &fork_body("t1"))
        .unwrap_or_else(|e| panic!("fork after the template died: {e}\n{}", d.log_text()));
    let again = c.function("py").unwrap().template.expect("loaded again");
    assert_ne!(again.pid, dead);
    for (pid, path) in [(first.pid, "/first"), (next.pid, "/next")] {
        let r = json_body(&http_get_in_netns(pid, 8080, path).unwrap());
        assert_eq!(r["digest"], warm["digest"]);
    }

    // Killed again, then dropped and removed: both work.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(again.pid, libc::SIGKILL) }, 0);
    assert!(wait_until(TIMEOUT, || !pid_alive(again.pid)));
    for id in ["t0", "t1"] {
        c.delete(id, true).unwrap();
    }
    c.remove_function("py")
        .unwrap_or_else(|e| panic!("removing after the template died: {e}\n{}", d.log_text()));
    assert_holders_gone(&d);
    assert_clean(&s, &d);
}

// ---- VPCs and the after-fork hook ----------------------------------------

/// netplug of a sproutd's runtime root, where its VPCs live.
fn netplug_root(d: &Sproutd) -> PathBuf {
    d.root.join("runtime")
}

/// The network namespace inode of a process.
fn netns_ino(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

/// Leases of a netplug root: namespace id → (owner container, address).
fn leases(np: &BlockingNetplug) -> HashMap<String, (Option<String>, Ipv4Addr)> {
    netplug::state::list_leases(np.layout())
        .unwrap()
        .into_iter()
        .map(|l| (l.ns.id, (l.owner.container, l.ns.address)))
        .collect()
}

fn in_subnet(a: Ipv4Addr, prefix: [u8; 3]) -> bool {
    a.octets()[..3] == prefix
}

/// Nothing of netplug is left: no namespace files or mounts under its
/// root, no link of ours in the host namespace. Polls: the kernel lets go
/// of a deleted namespace's veths asynchronously.
fn assert_no_netplug_leftovers(root: &Path) {
    let r = root.to_str().unwrap().to_string();
    let ok = wait_until(TIMEOUT, || netplug_namespaces_gone(root));
    assert!(ok, "netplug namespaces or mounts left under {r}");
    assert_no_netplug_links_on_host();
}

/// An instance that may reconfigure its pooled namespace beyond a scrub
/// (CAP_NET_ADMIN in its bundle) holds a lease marked to be destroyed,
/// not reused, when it is given back; one that may not (an exec as root
/// changes nothing where /proc/sys is read-only) is reused.
#[test]
fn leases_of_instances_that_may_reconfigure_their_namespace_are_not_reused() {
    let mut s = Sandbox::new("sd-reach");
    s.set_args(&["sleep", "1000"]);
    s.config()["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    s.write_config();
    let mut admin = Sandbox::new("sd-reach-admin");
    admin.set_args(&["sleep", "1000"]);
    for set in ["bounding", "effective", "permitted"] {
        admin.config()["process"]["capabilities"][set] = serde_json::json!(["CAP_NET_ADMIN"]);
    }
    admin.write_config();
    let root = s.dir.path().join("sproutd/runtime");
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("rx", "198.18.47.0/24", 0))
        .unwrap();
    let mut d = Sproutd::start(&s);
    assert_eq!(netplug_root(&d), root);
    let c = d.client();
    let mut f = function("f", &s);
    f.vpc = Some("rx".into());
    c.add_function(&f).unwrap();
    let may_reconfigure = |id: &str| {
        let lease = c.instance(id).unwrap().lease.unwrap();
        netplug::state::list_leases(np.layout())
            .unwrap()
            .into_iter()
            .find(|l| l.ns.id == lease)
            .unwrap()
            .owner
            .may_reconfigure
    };
    c.fork("f", &fork_body("plain")).unwrap();
    assert!(!may_reconfigure("plain"));
    let as_root = ExecBody {
        args: vec!["true".into()],
        user: Some(ExecUser { uid: 0, gid: 0 }),
        ..Default::default()
    };
    assert_eq!(c.exec("plain", &as_root).unwrap().exit_code, Some(0));
    assert!(!may_reconfigure("plain"));
    let forked = ForkBody {
        bundle: Some(admin.bundle.clone()),
        ..fork_body("admin")
    };
    c.fork("f", &forked)
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(may_reconfigure("admin"));
    // The plain one back in the pool, the other destroyed.
    for (id, kept) in [("plain", true), ("admin", false)] {
        let lease = c.instance(id).unwrap().lease.unwrap();
        c.delete(id, true).unwrap();
        assert_eq!(
            root.join(".netplug/ns").join(&lease).exists(),
            kept,
            "{id}: {lease}"
        );
    }
    assert_eq!(np.status().unwrap().pools[0].ready, 1);
    d.kill9();
    np.delete_vpc("rx", false).unwrap();
    drop(np);
    assert_no_netplug_leftovers(&root);
    assert_clean(&s, &d);
    assert_clean(&admin, &d);
}

#[test]
fn real_engine_instances_join_their_vpc_and_keep_their_leases_across_a_crash() {
    let s = python_sandbox("sd-vpc");
    let (image, warm) = python_image(&s);
    // The VPCs live in netplug's state under sproutd's runtime root,
    // made before sproutd starts (as an operator would).
    let root = s.dir.path().join("sproutd/runtime");
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("blue", "198.18.40.0/24", 2))
        .unwrap();
    np.create_vpc(native_vpc("green", "198.18.41.0/24", 0))
        .unwrap();
    let hub = root.join(".netplug/ns/hub");
    let mut d = Sproutd::start_real(&s);
    let c = d.client();
    assert_eq!(c.info().unwrap().netplug_root, netplug_root(&d));
    // sproutd keeps the pool filled.
    assert!(
        wait_until(TIMEOUT, || np.status().unwrap().pools[0].ready >= 2),
        "{:?}\n{}",
        np.status().unwrap(),
        d.log_text()
    );
    let mut f = function("py", &s);
    f.image = image;
    f.vpc = Some("blue".into());
    c.add_function(&f).unwrap();

    let mut pids = Vec::new();
    let mut addrs = Vec::new();
    let mut lease_of = HashMap::new();
    for id in ["v0", "v1"] {
        let forked = c
            .fork("py", &fork_body(id))
            .unwrap_or_else(|e| panic!("fork {id}: {e}\n{}", d.log_text()));
        assert_eq!(forked.vpc.as_deref(), Some("blue"));
        let addr = forked.address.expect("an address in the VPC");
        assert!(in_subnet(addr, [198, 18, 40]), "{addr}");
        let v = c.instance(id).unwrap();
        assert_eq!((v.vpc.as_deref(), v.address), (Some("blue"), Some(addr)));
        let lease = v.lease.clone().unwrap();
        // The instance's network namespace is the pooled one.
        let pooled = fs::metadata(root.join(".netplug/ns").join(&lease))
            .unwrap()
            .ino();
        assert_eq!(netns_ino(forked.pid), pooled, "{id} is not in its lease");
        assert_eq!(
            v.annotations.get("io.sprout.netplug.lease"),
            Some(&lease),
            "recorded for `sprout delete` too"
        );
        lease_of.insert(id, lease);
        pids.push(forked.pid);
        addrs.push(addr);
    }
    assert_ne!(addrs[0], addrs[1]);
    // Each answers on its address in the VPC, from the VPC's hub.
    for (i, &addr) in addrs.iter().enumerate() {
        let r = json_body(&http_get_via(&hub, addr, 8080, &format!("/{i}"), TIMEOUT).unwrap());
        assert_eq!(r["digest"], warm["digest"]);
        assert_eq!(r["requests"], 2, "{r}");
        assert_eq!(r["path"], format!("/{i}"));
    }
    let held = leases(&np);
    for (id, addr) in ["v0", "v1"].iter().zip(&addrs) {
        assert_eq!(
            held.get(&lease_of[id]),
            Some(&(Some(id.to_string()), *addr)),
            "{held:?}"
        );
    }

    // sproutd crashes. Meanwhile a lease is left whose instance never
    // came to be (as by a sproutd that died mid-fork): its taker is gone
    // and no container of that id exists.
    d.kill9();
    let dead_taker = Owner {
        process: ProcRef {
            pid: std::process::id() as i32,
            start: 1,
        },
        container: Some("never-forked".into()),
        may_reconfigure: false,
    };
    let orphan = np.take("blue", &dead_taker).unwrap();
    assert!(leases(&np).contains_key(&orphan.id));
    drop(orphan);
    d.spawn();
    // The restart gave the orphan back and left the instances theirs.
    let held = leases(&np);
    assert_eq!(held.len(), 2, "{held:?}\n{}", d.log_text());
    for ((id, &pid), addr) in ["v0", "v1"].iter().zip(&pids).zip(&addrs) {
        let v = c.instance(id).unwrap();
        assert_eq!(
            (v.status.as_str(), v.pid, v.adopted),
            ("running", pid, true)
        );
        assert_eq!((v.vpc.as_deref(), v.address), (Some("blue"), Some(*addr)));
        assert_eq!(v.lease.as_ref(), Some(&lease_of[id]));
        assert_eq!(held[&lease_of[id]].0.as_deref(), Some(*id));
        let r = json_body(&http_get_via(&hub, *addr, 8080, "/again", TIMEOUT).unwrap());
        assert_eq!(r["requests"], 3, "{r}");
    }

    // A fork may name another VPC than its function's: through the API,
    // and through `sprout run --function --vpc`.
    let g = c
        .fork(
            "py",
            &ForkBody {
                id: "g0".into(),
                vpc: Some("green".into()),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("fork g0: {e}\n{}", d.log_text()));
    assert_eq!(g.vpc.as_deref(), Some("green"));
    let g_addr = g.address.unwrap();
    assert!(in_subnet(g_addr, [198, 18, 41]), "{g_addr}");
    let r = json_body(&http_get_via(&hub, g_addr, 8080, "/green", TIMEOUT).unwrap());
    assert_eq!(r["requests"], 2, "{r}");
    let out = run_to_files(
        Command::new(sprout_bin())
            .arg("--sproutd-socket")
            .arg(&d.socket)
            .args(["run", "--function", "py", "--vpc", "green", "-d", "g1"]),
        s.dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g1 = c.instance("g1").unwrap();
    assert_eq!(g1.vpc.as_deref(), Some("green"));
    let g1_addr = g1.address.unwrap();
    assert!(in_subnet(g1_addr, [198, 18, 41]) && g1_addr != g_addr);
    // VPCs are isolated: blue's instances are not reachable from green's
    // (their own namespaces, through the hub).
    let from_green = fs::File::open(root.join(".netplug/ns").join(g1.lease.unwrap())).unwrap();
    let blue0 = addrs[0];
    let blocked = std::thread::spawn(move || {
        // SAFETY: setns on this thread only; it exits afterwards.
        let entered = unsafe { libc::setns(from_green.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0);
        std::net::TcpStream::connect_timeout(&(blue0, 8080).into(), Duration::from_secs(2))
    })
    .join()
    .unwrap();
    assert!(blocked.is_err(), "green reached an instance of blue");

    // Deleting gives the namespaces back, scrubbed for reuse.
    let given: Vec<String> = ["v0", "v1", "g0", "g1"]
        .iter()
        .map(|id| c.instance(id).unwrap().lease.unwrap())
        .collect();
    for id in ["v0", "v1", "g0", "g1"] {
        c.delete(id, true).unwrap();
    }
    assert!(leases(&np).is_empty(), "{:?}", leases(&np));
    for (lease, vpc) in given.iter().zip(["blue", "blue", "green", "green"]) {
        assert!(
            np.layout().ready(vpc, lease).exists(),
            "{lease} is not back in {vpc}'s pool"
        );
    }
    assert!(
        wait_until(TIMEOUT, || {
            let st = np.status().unwrap();
            st.pools.iter().all(|p| p.leased == 0)
                && st.pools.iter().map(|p| p.counters.reused).sum::<u64>() >= 4
        }),
        "{:?}",
        np.status().unwrap()
    );

    c.remove_function("py").unwrap();
    assert_holders_gone(&d);
    // sproutd holds namespaces of the pools open; stop it before the VPCs
    // go, then nothing of them may be left.
    d.kill9();
    np.delete_vpc("blue", false).unwrap();
    np.delete_vpc("green", false).unwrap();
    drop(np);
    assert_no_netplug_leftovers(&root);
    assert_clean(&s, &d);
}

#[test]
fn real_engine_after_fork_signal_lets_instances_reseed() {
    let s = python_sandbox("sd-seed");
    let (image, _) = python_image(&s);
    let d = Sproutd::start_real(&s);
    let c = d.client();
    let mut plain = function("plain", &s);
    plain.image = image.clone();
    c.add_function(&plain).unwrap();
    let mut seeded = function("seeded", &s);
    seeded.image = image;
    seeded.after_fork_signal = Some(SignalArg::Name("SIGUSR2".into()));
    c.add_function(&seeded).unwrap();
    assert_eq!(
        c.function("seeded").unwrap().function.after_fork_signal,
        Some(SignalArg::Name("SIGUSR2".into()))
    );

    let fork = |function: &str, id: &str| {
        c.fork(function, &fork_body(id))
            .unwrap_or_else(|e| panic!("fork {id}: {e}\n{}", d.log_text()))
            .pid
    };
    // Without the hook, fork copies the template's PRNG: every instance
    // draws the same first number.
    let plain_draws: Vec<serde_json::Value> = ["a0", "a1"]
        .iter()
        .map(|id| json_body(&http_get_in_netns(fork("plain", id), 8080, "/").unwrap()))
        .collect();
    assert_eq!(plain_draws[0]["reseeds"], 0);
    assert_eq!(plain_draws[1]["reseeds"], 0);
    assert_eq!(
        plain_draws[0]["random"], plain_draws[1]["random"],
        "instances of one template should start from the same PRNG state"
    );

    // With it, each instance gets the signal once and re-seeds from the
    // kernel: their numbers differ (and differ from the template's).
    let mut seeded_draws = Vec::new();
    for id in ["b0", "b1"] {
        let pid = fork("seeded", id);
        let mut last = serde_json::Value::Null;
        assert!(
            wait_until(TIMEOUT, || {
                last = json_body(&http_get_in_netns(pid, 8080, "/").unwrap());
                last["reseeds"] == 1
            }),
            "{id} never re-seeded: {last}"
        );
        seeded_draws.push(last["random"].clone());
    }
    assert_ne!(seeded_draws[0], seeded_draws[1]);
    for draw in &seeded_draws {
        assert_ne!(draw, &plain_draws[0]["random"]);
    }

    for id in ["a0", "a1", "b0", "b1"] {
        c.delete(id, true).unwrap();
    }
    c.remove_function("plain").unwrap();
    c.remove_function("seeded").unwrap();
    assert_holders_gone(&d);
    assert_clean(&s, &d);
}

#[test]
fn unknown_vpcs_and_bad_signals_are_clear_errors_that_leave_nothing() {
    let mut s = Sandbox::new("sd-badnet");
    s.set_args(&["sleep", "1000"]);
    let root = s.dir.path().join("sproutd/runtime");
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("red", "198.18.42.0/24", 1))
        .unwrap();
    assert_eq!(np.fill().unwrap(), 1);
    let mut d = Sproutd::start(&s);
    let c = d.client();

    // Function add: a VPC that does not exist, a signal that does not.
    let mut f = function("f", &s);
    f.vpc = Some("nope".into());
    let (st, m) = api_status(c.add_function(&f));
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("no VPC named nope"), "{m}");
    assert!(
        m.contains(root.to_str().unwrap()),
        "names where VPCs live: {m}"
    );
    f.vpc = None;
    f.after_fork_signal = Some(SignalArg::Name("SIGBOGUS".into()));
    let (st, m) = api_status(c.add_function(&f));
    assert_eq!(st, 400, "{m}");
    assert!(
        m.contains("after_fork_signal") && m.contains("SIGBOGUS"),
        "{m}"
    );
    f.after_fork_signal = Some(SignalArg::Number(99));
    assert_eq!(api_status(c.add_function(&f)).0, 400);
    assert!(c.functions().unwrap().is_empty());
    // The same through the CLI: one clear line, exit 1.
    let cli = |args: &[&str]| {
        run_to_files(
            Command::new(sprout_bin())
                .arg("--sproutd-socket")
                .arg(&d.socket)
                .args(args),
            s.dir.path(),
        )
    };
    let image = f.image.to_str().unwrap().to_string();
    for (extra, says) in [
        (["--vpc", "nope"], "no VPC named nope"),
        (["--after-fork-signal", "BOGUS"], "unknown signal \"BOGUS\""),
    ] {
        let mut args = vec![
            "function",
            "add",
            "f",
            "--image",
            &image,
            "--bundle",
            s.bundle_str(),
        ];
        args.extend(extra);
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    assert!(c.functions().unwrap().is_empty());

    // Fork: a VPC of the request's that does not exist; a VPC and a
    // netns fd at once.
    f.after_fork_signal = None;
    c.add_function(&f).unwrap();
    let fork_x_in = |vpc: &str| {
        api_status(c.fork(
            "f",
            &ForkBody {
                id: "x".into(),
                vpc: Some(vpc.into()),
                ..Default::default()
            },
        ))
    };
    let (st, m) = fork_x_in("nope");
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("no VPC named nope"), "{m}");
    let out = cli(&["run", "--function", "f", "--vpc", "nope", "-d", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VPC named nope"));
    let side = d.side.clone();
    let netns = fs::File::open("/proc/self/ns/net").unwrap();
    let (st, m) = api_status(side_fork(
        &side,
        &SideRequest {
            op: "fork".into(),
            function: "f".into(),
            id: "x".into(),
            fds: vec![FdRole::Netns],
            vpc: Some("red".into()),
            ..Default::default()
        },
        &[netns.as_fd()],
    ));
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("not both"), "{m}");

    // A fork that fails after its namespace was taken (the sandbox is
    // refused: a device rule of type p) gives it back unused.
    let ready_before = np.status().unwrap().pools[0].ready;
    let bad_devices: oci_spec::runtime::LinuxResources = serde_json::from_value(
        serde_json::json!({"devices": [{"allow": true, "type": "p", "access": "rwm"}]}),
    )
    .unwrap();
    let (st, m) = api_status(c.fork(
        "f",
        &ForkBody {
            id: "x".into(),
            vpc: Some("red".into()),
            resources: Some(bad_devices),
            ..Default::default()
        },
    ));
    assert!(st >= 400 && m.contains("FIFO"), "{st} {m}");
    assert!(leases(&np).is_empty(), "{:?}", leases(&np));
    assert!(np.status().unwrap().pools[0].ready >= ready_before);
    assert!(c.instances().unwrap().is_empty());
    assert_eq!(api_status(c.instance("x")).0, 404);

    c.remove_function("f").unwrap();
    d.kill9();
    np.delete_vpc("red", false).unwrap();
    drop(np);
    assert_no_netplug_leftovers(&root);
    assert_clean(&s, &d);
}
