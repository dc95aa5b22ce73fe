//! Bad input: each case exits non-zero with one line naming the problem,
//! and leaves no state, cgroup, mount or process behind.

mod common;

use std::fs;

use common::*;

/// Runs `sprout create` on the sandbox's bundle and checks the failure.
fn create_fails(s: &Sandbox, want: &[&str]) {
    let id = s.id.clone();
    let err = s.fails(&["create", "--bundle", s.bundle_str(), &id]);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line of error, got: {err}");
    for w in want {
        assert!(err.contains(w), "error {err:?} should mention {w:?}");
    }
    s.assert_clean(&id);
}

#[test]
fn malformed_json() {
    let s = Sandbox::new("badjson");
    fs::write(
        s.bundle.join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    create_fails(&s, &["config.json", "malformed"]);
}

#[test]
fn missing_rootfs() {
    let mut s = Sandbox::new("norootfs");
    s.config()["root"]["path"] = "no-such-rootfs".into();
    s.write_config();
    create_fails(&s, &["root.path", "does not exist"]);
}

#[test]
fn missing_process_and_unknown_namespace_and_bad_mount_option() {
    let mut s = Sandbox::new("nofields");
    s.config().as_object_mut().unwrap().remove("process");
    s.write_config();
    create_fails(&s, &["process", "required"]);

    let mut s = Sandbox::new("badns");
    s.config()["linux"]["namespaces"][1]["type"] = "bogus".into();
    s.write_config();
    create_fails(&s, &["linux.namespaces[1].type"]);

    // Without a new mount namespace the rootfs would be set up (and
    // pivoted into) in the host's own, or in the joined one.
    let mut s = Sandbox::new("nomntns");
    let ns: Vec<serde_json::Value> = s.config()["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "mount")
        .cloned()
        .collect();
    s.config()["linux"]["namespaces"] = ns.into();
    s.write_config();
    create_fails(&s, &["linux.namespaces", "no mount namespace"]);

    let mut s = Sandbox::new("joinmntns");
    s.config()["linux"]["namespaces"][4]["path"] = "/proc/self/ns/mnt".into();
    s.write_config();
    create_fails(
        &s,
        &["linux.namespaces[4].path", "joining a mount namespace"],
    );

    // Sysctls of a namespace joined by path that is the host's own (set
    // to the host's current values, should validation ever let them by).
    for (typ, index, key) in [
        ("network", 1, "net.ipv4.ip_forward"),
        ("ipc", 2, "kernel.shm_rmid_forced"),
    ] {
        let mut s = Sandbox::new("hostsysctl");
        let own = format!(
            "/proc/{}/ns/{}",
            std::process::id(),
            if typ == "network" { "net" } else { typ }
        );
        assert_eq!(s.config()["linux"]["namespaces"][index]["type"], typ);
        s.config()["linux"]["namespaces"][index]["path"] = own.into();
        let current = fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/"))).unwrap();
        s.config()["linux"]["sysctl"] = serde_json::json!({key: current.trim()});
        s.write_config();
        create_fails(&s, &[&format!("linux.sysctl.{key}"), "is the host's"]);
    }

    let mut s = Sandbox::new("badopt");
    s.config()["mounts"][1]["options"] = serde_json::json!(["nosuid", ""]);
    s.write_config();
    create_fails(&s, &["mounts[1].options"]);

    let mut s = Sandbox::new("badrlimit");
    s.config()["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_WHATEVER", "hard": 1, "soft": 1}]);
    s.write_config();
    create_fails(&s, &["process.rlimits[0].type"]);
}

#[test]
fn duplicate_unknown_and_invalid_ids() {
    let mut s = Sandbox::new("ids");
    s.set_args(&["sleep", "100"]);
    let id = s.id.clone();
    s.ok(&["create", "--bundle", s.bundle_str(), &id]);
    let err = s.fails(&["create", "--bundle", s.bundle_str(), &id]);
    assert!(err.contains("already exists"), "{err}");
    // The first container is untouched by the refused duplicate.
    assert_eq!(s.status(&id), "created");
    s.ok(&["delete", &id]);
    s.assert_clean(&id);

    for cmd in [
        &["state", "nope-x"][..],
        &["start", "nope-x"],
        &["kill", "nope-x"],
        &["delete", "nope-x"],
        &["exec", "nope-x", "true"],
        &["pause", "nope-x"],
    ] {
        let err = s.fails(cmd);
        assert!(err.contains("does not exist"), "{cmd:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    for bad in ["../x", "a/b", "..", ""] {
        let err = s.fails(&["create", "--bundle", s.bundle_str(), bad]);
        assert!(err.contains("invalid container id"), "{bad:?}: {err}");
        let err = s.fails(&["state", bad]);
        assert!(err.contains("invalid container id"), "{bad:?}: {err}");
    }
    assert!(!s.dir.path().join("x").exists());
}

#[test]
fn bad_cgroups_path() {
    for (name, path) in [
        ("cgdots", "../../etc"),
        ("cgsystemd", "system.slice:sprout:x"),
    ] {
        let mut s = Sandbox::new(name);
        s.config()["linux"]["cgroupsPath"] = path.into();
        s.write_config();
        create_fails(&s, &["cgroupsPath"]);
    }
}

#[test]
fn failing_prestart_hook_undoes_everything() {
    let mut s = Sandbox::new("badhook");
    s.config()["hooks"] = serde_json::json!({
        "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook says no >&2; exit 1"]}]
    });
    s.write_config();
    create_fails(&s, &["prestart hook", "hook says no"]);
}

#[test]
fn oom_score_adj_below_our_minimum() {
    let mut s = Sandbox::new("oomadj");
    s.config()["process"]["oomScoreAdj"] = (-500).into();
    s.write_config();
    create_fails(&s, &["oomScoreAdj -500", "CAP_SYS_RESOURCE"]);
}

#[test]
fn rlimit_above_the_hard_limit() {
    let mut s = Sandbox::new("rlimit");
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    let too_high = cur.rlim_max + 1;
    s.config()["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": too_high, "soft": 1024}]);
    s.write_config();
    create_fails(&s, &["RLIMIT_NOFILE", "CAP_SYS_RESOURCE"]);
}

#[test]
fn missing_executable_and_missing_bind_source() {
    let mut s = Sandbox::new("noexe");
    s.set_args(&["no-such-program"]);
    create_fails(&s, &["no-such-program", "not found"]);

    let mut s = Sandbox::new("nobind");
    s.config()["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/x", "type": "bind", "source": "/nonexistent/source", "options": ["rbind"]}));
    s.write_config();
    create_fails(&s, &["/nonexistent/source"]);
}

#[test]
fn exec_into_stopped_container() {
    let mut s = Sandbox::new("execstopped");
    s.set_args(&["true"]);
    let id = s.id.clone();
    s.ok(&["run", "--keep", "--bundle", s.bundle_str(), &id]);
    assert_eq!(s.status(&id), "stopped");
    let err = s.fails(&["exec", &id, "true"]);
    assert!(err.contains("stopped"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
}

#[test]
fn unsupported_global_flags() {
    let s = Sandbox::new("flags");
    let err = s.fails(&["--systemd-cgroup", "list"]);
    assert!(err.contains("systemd"), "{err}");
    let err = s.fails(&["kill", "whatever", "NOTASIGNAL"]);
    assert!(err.contains("unknown signal"), "{err}");
}

#[test]
fn usage_errors_exit_1_like_runc_and_reach_the_log() {
    let s = Sandbox::new("usage");
    let log = s.dir.path().join("usage.log");
    // `state` needs an id: runc says so and exits 1 (clap's own code is 2).
    let err = s.fails(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
    ]);
    assert!(err.contains("required"), "{err}");
    let line = fs::read_to_string(&log).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(entry["level"], "error");
    assert!(
        entry["msg"].as_str().unwrap().contains("required"),
        "{entry}"
    );
    let err = s.fails(&["kill", "--no-such-flag", "x"]);
    assert!(err.contains("--no-such-flag"), "{err}");
    // Help is not an error.
    assert!(s.sprout(&["--help"]).status.success());
    // runc's `delete --force` of an unknown id succeeds; the flag may come
    // after the id.
    s.ok(&["delete", "nope-usage", "--force"]);
}

#[test]
fn failing_hooks_at_every_create_point_undo_everything() {
    for (name, kind) in [
        ("badhookcr", "createRuntime"),
        ("badhookcc", "createContainer"),
    ] {
        let mut s = Sandbox::new(name);
        s.config()["hooks"] = serde_json::json!({
            kind: [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook says no >&2; exit 1"]}]
        });
        s.write_config();
        create_fails(&s, &[&format!("{kind} hook"), "hook says no"]);
    }
    // A hook that hangs past its timeout is killed with what it started.
    let mut s = Sandbox::new("hookhang");
    s.config()["hooks"] = serde_json::json!({
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 300 & wait"], "timeout": 1}]
    });
    s.write_config();
    create_fails(&s, &["createRuntime hook", "timed out"]);
    // startContainer fails at `start`: the container does not run its
    // process, and delete leaves nothing.
    let mut s = Sandbox::new("badhooksc");
    s.set_args(&["sh", "-c", "echo ran > /ran"]);
    s.config()["hooks"] = serde_json::json!({
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook says no >&2; exit 1"]}]
    });
    s.write_config();
    let id = s.id.clone();
    s.ok(&["create", "--bundle", s.bundle_str(), &id]);
    let err = s.fails(&["start", &id]);
    assert!(err.contains("startContainer hook"), "{err}");
    assert!(!s.bundle.join("rootfs/ran").exists());
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}
