//! A spawn that fails after the intermediate has reported the init leaves
//! no zombie behind in a long-lived caller (the shim, sproutd). Its own
//! test binary: a zombie of a test running in parallel would look the
//! same.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;
use sprout::runtime::{Container, CreateOptions, Runtime};

/// The holder container, deleted when dropped: a failed assertion leaves
/// no cgroup behind either.
struct Holder(Option<Container>);

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = c.delete(true);
        }
    }
}

/// Children of this process (any thread) that are zombies.
fn zombie_children() -> Vec<i32> {
    let mut out = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
            if state == Some('Z') {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn an_init_that_cannot_exec_in_a_joined_pid_namespace_leaves_no_zombie() {
    // A container whose pid namespace the second one joins by path: that
    // spawn goes through an intermediate process.
    let mut s = Sandbox::new("spawnfail");
    s.set_args(&["sleep", "1000"]);
    let good = Runtime::builder()
        .root(&s.root)
        .init_binary(init_bin())
        .build()
        .unwrap();
    let holder_id = format!("{}-ns", s.id);
    let mut holder = Holder(Some(
        good.create(&holder_id, &s.bundle, CreateOptions::default())
            .unwrap(),
    ));
    let holder_pid = holder.0.as_ref().unwrap().pid().unwrap();

    // An init helper the kernel cannot execute (ENOEXEC).
    let bad_init = s.dir.path().join("not-an-elf");
    fs::write(&bad_init, "not an executable\n").unwrap();
    fs::set_permissions(&bad_init, fs::Permissions::from_mode(0o755)).unwrap();
    let bad = Runtime::builder()
        .root(&s.root)
        .init_binary(&bad_init)
        .build()
        .unwrap();
    let namespaces: Vec<serde_json::Value> = s.config()["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "pid")
        .cloned()
        .chain([serde_json::json!({"type": "pid", "path": format!("/proc/{holder_pid}/ns/pid")})])
        .collect();
    s.config()["linux"]["namespaces"] = namespaces.into();
    s.config()["linux"]["cgroupsPath"] = format!("{}-2", s.cgroup).into();
    s.write_config();
    let before = zombie_children();
    let err = bad
        .create(&s.id, &s.bundle, CreateOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("exec"), "{err}");
    let left: Vec<i32> = zombie_children()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "zombie children left: {left:?}");
    holder.0.take().unwrap().delete(true).unwrap();
    s.assert_clean(&holder_id);
    s.assert_clean(&s.id);
}
