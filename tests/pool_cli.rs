//! `sprout pool ...` against a sproutd of the test's own (the fake engine:
//! pool instances are busybox containers, frozen and thawed for real), the
//! command line's own errors, and the metrics' per-instance usage read
//! from a live container's cgroup.

mod common;

use std::fs;
use std::os::fd::OwnedFd;
use std::process::{Command, Output};

use common::sproutd::*;
use common::*;
use serde_json::Value;
use sprout::runtime::{CreateOptions, Runtime};
use sprout::shim::metrics::instance_usage;

/// `sprout --sproutd-socket <d's> args...`.
fn sprout_at(s: &Sandbox, d: &Sproutd, args: &[&str]) -> Output {
    run_to_files(
        Command::new(sprout_bin())
            .arg("--sproutd-socket")
            .arg(&d.socket)
            .args(args),
        s.dir.path(),
    )
}

fn ok_at(s: &Sandbox, d: &Sproutd, args: &[&str]) -> String {
    let out = sprout_at(s, d, args);
    assert!(
        out.status.success(),
        "sprout {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with exit code 1; its stderr.
fn fails_at(s: &Sandbox, d: &Sproutd, args: &[&str]) -> String {
    let out = sprout_at(s, d, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "sprout {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// The value of the sample line `series` (name and labels as written).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

#[test]
fn command_line_errors_are_clear_and_need_no_sproutd() {
    let s = Sandbox::new("pool-cli-args");
    let run = |args: &[&str]| {
        let out = run_to_files(
            Command::new(sprout_bin())
                .env("SPROUTD_SOCKET", s.dir.path().join("missing.sock"))
                .args(args),
            s.dir.path(),
        );
        assert_eq!(out.status.code(), Some(1), "sprout {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["pool", "budget", "lots"]).contains("\"lots\""));
    assert!(run(&["pool", "policy", "f", "--keep-alive", "10x"]).contains("bad duration"));
    assert!(run(&["pool", "policy", "f", "--strategy", "greedy"]).contains("greedy"));
    assert!(run(&["pool", "prewarm", "f"]).contains("COUNT"));
    assert!(run(&["pool", "status"]).contains("cannot reach sproutd"));
    assert!(run(&["pool", "metrics"]).contains("cannot reach sproutd"));
}

#[test]
fn pool_commands_drive_sproutd() {
    let mut s = Sandbox::new("pool-cli");
    s.set_args(&["sleep", "1000"]);
    let d = Sproutd::start(&s);
    let c = d.client();
    c.add_function(&function("f", &s)).unwrap();

    let out = ok_at(&s, &d, &["pool", "prewarm", "f", "2"]);
    assert!(out.starts_with("f: forked "), "{out}");
    let warm = || json(&ok_at(&s, &d, &["pool", "status", "f", "-f", "json"]))["warm"].as_u64();
    assert!(
        wait_until(TIMEOUT, || warm() == Some(2)),
        "not 2 warm: {}",
        ok_at(&s, &d, &["pool", "status", "f"])
    );
    let table = ok_at(&s, &d, &["pool", "status"]);
    assert!(table.starts_with("budget: "), "{table}");
    assert!(table.lines().any(|l| l.starts_with("FUNCTION ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("f ")), "{table}");
    let one = ok_at(&s, &d, &["pool", "status", "f"]);
    assert!(one.starts_with("function: f\n"), "{one}");
    assert!(one.contains("min-warm 2"), "{one}");
    assert_eq!(
        one.lines().filter(|l| l.contains(" frozen ")).count(),
        2,
        "{one}"
    );
    let all = json(&ok_at(&s, &d, &["pool", "status", "-f", "json"]));
    assert_eq!(all["functions"][0]["function"], "f");

    let out = ok_at(
        &s,
        &d,
        &[
            "pool",
            "policy",
            "f",
            "--strategy",
            "fixed",
            "--keep-alive",
            "1h30m",
            "--reuse",
            "true",
        ],
    );
    assert_eq!(
        out,
        "f: strategy fixed, keep-alive 1h30m, min-warm 2, reuse yes\n"
    );
    let policy = json(&ok_at(&s, &d, &["pool", "policy", "f", "-f", "json"]));
    assert_eq!(policy["keep_alive_s"], 5400);
    assert_eq!(policy["strategy"], "fixed");

    let out = ok_at(&s, &d, &["pool", "budget", "512M"]);
    assert!(out.ends_with(" used of 512.0 MiB\n"), "{out}");
    assert_eq!(ok_at(&s, &d, &["pool", "budget"]), out);

    // A claim takes a warm instance; with reuse it goes back on release.
    let claimed = json(&ok_at(&s, &d, &["pool", "claim", "f", "-f", "json"]));
    assert_eq!(claimed["path"], "pool_hit", "{claimed}");
    let id = claimed["id"].as_str().unwrap().to_string();
    assert_eq!(c.instance(&id).unwrap().status, "running");
    let out = ok_at(&s, &d, &["pool", "release", &id]);
    assert_eq!(out, format!("{id}: back in the pool\n"));
    let line = ok_at(&s, &d, &["pool", "claim", "f"]);
    assert!(line.contains(" path=pool_hit "), "{line}");
    let id = line.split(' ').next().unwrap().to_string();
    ok_at(&s, &d, &["pool", "release", &id]);

    // A request slot, given back once; the second time is an error.
    let line = ok_at(&s, &d, &["pool", "acquire", "f"]);
    let lease = line.split(' ').next().unwrap().to_string();
    assert!(line.contains(" instance="), "{line}");
    assert_eq!(ok_at(&s, &d, &["pool", "return", &lease]), "");
    assert!(fails_at(&s, &d, &["pool", "return", &lease]).contains(&lease));

    let metrics = ok_at(&s, &d, &["pool", "metrics"]);
    let hits = sample(
        &metrics,
        "sprout_starts_total{function=\"f\",path=\"pool_hit\"}",
    );
    assert!(hits.is_some_and(|n| n >= 2.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "sprout_pool_budget_bytes"),
        Some((512u64 << 20) as f64)
    );

    // API errors are the command's, with sproutd's message.
    assert!(fails_at(&s, &d, &["pool", "prewarm", "nope", "1"]).contains("nope"));
    assert!(fails_at(&s, &d, &["pool", "status", "nope"]).contains("nope"));
    assert!(fails_at(&s, &d, &["pool", "release", "nope"]).contains("nope"));

    let out = ok_at(&s, &d, &["pool", "drain", "f", "--force"]);
    assert!(out.starts_with("f: destroyed "), "{out}");
    assert_eq!(
        json(&ok_at(&s, &d, &["pool", "status", "f", "-f", "json"]))["instances"],
        Value::Array(vec![])
    );
    for v in c.instances().unwrap() {
        c.delete(&v.id, true).unwrap();
    }
    c.remove_function("f").unwrap();
    assert_clean(&s, &d);
}

#[test]
fn instance_usage_reads_a_live_containers_cgroup() {
    let mut s = Sandbox::new("pool-usage");
    // Some CPU and fresh pages, then nothing.
    s.set_args(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; exec sleep 1000",
    ]);
    let rt = Runtime::builder()
        .root(&s.root)
        .init_binary(init_bin())
        .build()
        .unwrap();
    let devnull = || -> Option<OwnedFd> { Some(fs::File::open("/dev/null").unwrap().into()) };
    let mut c = rt
        .create(
            &s.id,
            &s.bundle,
            CreateOptions {
                stdio: [devnull(), devnull(), devnull()],
                ..Default::default()
            },
        )
        .unwrap();
    c.start().unwrap();
    let mut usage = None;
    let counted = wait_until(TIMEOUT, || {
        usage = instance_usage(&c);
        usage.is_some_and(|u| u.cpu_ns > 0 && u.memory_bytes > 0 && u.minor_faults > 0)
    });
    assert!(counted, "no usage counted: {usage:?}");
    c.kill(libc::SIGKILL, true).unwrap();
    c.wait().unwrap();
    c.delete(true).unwrap();
    s.assert_clean(&s.id.clone());
}
