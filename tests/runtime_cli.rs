//! The `sprout` CLI against the real kernel: lifecycle, isolation, mounts,
//! capabilities, seccomp, cgroup limits, hooks, exec, pause/resume.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Runs the container in the foreground with `args` as its process.
fn run_with(s: &mut Sandbox, args: &[&str]) -> (i32, String, String) {
    s.set_args(args);
    let out = s.sprout(&["run", "--bundle", s.bundle_str(), &s.id]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_passes_exit_code_and_output_and_cleans_up() {
    let mut s = Sandbox::new("exit");
    let (code, out, err) = run_with(&mut s, &["sh", "-c", "echo hello; echo oops >&2; exit 7"]);
    assert_eq!(code, 7, "stderr: {err}");
    assert_eq!(out, "hello\n");
    assert!(err.contains("oops"));
    s.assert_clean(&s.id.clone());
}

/// A spec without device rules still gets runc's: deny everything but
/// the container's own /dev nodes. /dev/kmsg (c 1:11) opens write-only
/// for anyone the device cgroup lets through, so it shows which it is.
#[test]
fn a_spec_without_device_rules_denies_other_devices() {
    let mut s = Sandbox::new("nodevrules");
    let caps = serde_json::json!(["CAP_MKNOD"]);
    for set in ["bounding", "effective", "permitted"] {
        s.config()["process"]["capabilities"][set] = caps.clone();
    }
    s.config()["linux"]["resources"] = serde_json::json!({});
    let (code, out, err) = run_with(
        &mut s,
        &[
            "sh",
            "-c",
            "mknod /dev/k c 1 11 && echo made; \
             (: > /dev/k) 2>/dev/null && echo kmsg=open || echo kmsg=denied; \
             (: > /dev/null) && echo null=open; \
             l=/sys/fs/cgroup/devices/devices.list; \
             if [ -r $l ]; then grep -q 'a \\*:\\* rwm' $l && echo allow-all; \
             grep -q 'c 1:3 rwm' $l || echo no-null-rule; fi",
        ],
    );
    assert_eq!(code, 0, "stderr: {err}");
    // The v1 list too, in case the host denies c 1:11 above us anyway.
    assert_eq!(out, "made\nkmsg=denied\nnull=open\n", "stderr: {err}");
    s.assert_clean(&s.id.clone());
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let mut s = Sandbox::new("life");
    s.set_args(&["sleep", "1000"]);
    let id = s.id.clone();
    let pidfile = s.dir.path().join("pid");
    s.ok(&[
        "create",
        "--bundle",
        s.bundle_str(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    let st = s.state(&id);
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert_eq!(fs::read_to_string(&pidfile).unwrap(), pid.to_string());
    assert_eq!(st["bundle"], s.bundle_str());
    // A created container cannot be created again.
    let err = s.fails(&["create", "--bundle", s.bundle_str(), &id]);
    assert!(err.contains("already exists"), "{err}");
    // Not yet running: the process is the init, waiting.
    assert!(pid_alive(pid));
    // Frozen at its exec fifo it could never start: pause is refused.
    let err = s.fails(&["pause", &id]);
    assert!(
        err.contains("created") && err.contains("not running"),
        "{err}"
    );
    assert_eq!(s.status(&id), "created");
    s.ok(&["start", &id]);
    assert_eq!(s.status(&id), "running");
    let err = s.fails(&["start", &id]);
    assert!(err.contains("running"), "{err}");
    let list = s.ok(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "running");
    assert!(s.ok(&["list"]).contains(&id));
    let err = s.fails(&["delete", &id]);
    assert!(err.contains("running"), "{err}");
    s.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || s.status(&id) == "stopped"));
    assert_eq!(s.state(&id)["pid"], 0);
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
    let err = s.fails(&["state", &id]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn delete_force_and_kill_all() {
    let mut s = Sandbox::new("force");
    s.set_args(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    let id = s.id.clone();
    s.ok(&["run", "--detach", "--bundle", s.bundle_str(), &id]);
    assert!(wait_until(Duration::from_secs(5), || {
        serde_json::from_str::<Vec<i32>>(&s.ok(&["ps", "--format", "json", &id]))
            .unwrap()
            .len()
            == 3
    }));
    let table = s.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert!(table.lines().count() >= 4, "{table}");
    // Signalled while paused (kill --all freezes around its signals, but
    // must not thaw a container the user paused), the processes get the
    // signal once resumed.
    s.ok(&["pause", &id]);
    s.ok(&["kill", "--all", &id, "TERM"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.status(&id), "paused");
    s.ok(&["resume", &id]);
    assert!(wait_until(Duration::from_secs(5), || s.status(&id) == "stopped"));
    s.ok(&["delete", &id]);
    s.assert_clean(&id);

    // delete --force on a running container.
    let id2 = unique_id("force2");
    s.set_args(&["sleep", "1000"]);
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id2]);
    s.ok(&["delete", "--force", &id2]);
    s.assert_clean(&id2);
    // --force on a missing container is not an error (runc).
    s.ok(&["delete", "--force", &id2]);
}

#[test]
fn processes_in_a_cgroup_below_the_containers_are_listed_and_signalled() {
    // A container that made a cgroup of its own inside its cgroup (as
    // systemd does): here the test moves the container's sleep there, in
    // the freezer hierarchy the runtime lists processes from.
    let mut s = Sandbox::new("nestcg");
    s.set_args(&["sh", "-c", "sleep 1000 & wait"]);
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    let pids =
        || -> Vec<i32> { serde_json::from_str(&s.ok(&["ps", "--format", "json", &id])).unwrap() };
    assert!(wait_until(Duration::from_secs(5), || pids().len() == 2));
    let init = s.state(&id)["pid"].as_i64().unwrap() as i32;
    let sleep = *pids().iter().find(|&&p| p != init).unwrap();
    let cg = fs::read_to_string(format!("/proc/{sleep}/cgroup")).unwrap();
    let freezer = cg
        .lines()
        .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string()))
        .expect("a v1 freezer line");
    let sub = std::path::PathBuf::from(format!("/sys/fs/cgroup/freezer{freezer}/sub"));
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("cgroup.procs"), sleep.to_string()).unwrap();
    let listed = pids();
    assert!(listed.contains(&sleep), "{listed:?} lacks {sleep}");
    // kill --all reaches it (the init, pid 1 of its namespace, ignores
    // TERM: it has no handler).
    s.ok(&["kill", "--all", &id, "TERM"]);
    assert!(
        wait_until(Duration::from_secs(5), || !pids().contains(&sleep)),
        "{:?}",
        pids()
    );
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

#[test]
fn deleting_a_container_leaves_a_shared_parent_cgroup_and_its_sibling_alone() {
    // a makes the parent cgroup, b is made below it too; deleting a must
    // neither wait on nor touch b's cgroup.
    let mut s = Sandbox::new("cgpar");
    s.set_args(&["sleep", "1000"]);
    let parent = format!("{}-grp", s.cgroup);
    let ids = [format!("{}-a", s.id), format!("{}-b", s.id)];
    /// On a failed assertion too: the containers, then the parent.
    struct Cleanup<'a>(&'a Sandbox, &'a [String], &'a str);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            for id in self.1 {
                let _ = self.0.sprout(&["delete", "--force", id]);
            }
            for dir in cgroup_leftovers(self.2) {
                let _ = fs::remove_dir(&dir);
            }
        }
    }
    for id in &ids {
        s.config()["linux"]["cgroupsPath"] = format!("{parent}/{id}").into();
        s.write_config();
        s.ok(&["run", "-d", "--bundle", s.bundle_str(), id]);
    }
    let cleanup = Cleanup(&s, &ids, &parent);
    s.ok(&["delete", "--force", &ids[0]]);
    assert!(
        cgroup_leftovers(&ids[0]).is_empty(),
        "{:?}",
        cgroup_leftovers(&ids[0])
    );
    assert_eq!(s.status(&ids[1]), "running");
    let pid = s.state(&ids[1])["pid"].as_i64().unwrap();
    let memory = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(memory.contains(&format!("{parent}/{}", ids[1])), "{memory}");
    s.ok(&["delete", "--force", &ids[1]]);
    // The parent was a's, busy when a went: left, like runc leaves parents.
    drop(cleanup);
    for id in &ids {
        s.assert_clean(id);
    }
}

#[test]
fn namespaces_are_isolated() {
    let mut s = Sandbox::new("ns");
    s.config()["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "time"}));
    s.config()["linux"]["timeOffsets"] =
        serde_json::json!({"boottime": {"secs": 86400000, "nanosecs": 0}});
    let (code, out, err) = run_with(
        &mut s,
        &[
            "sh",
            "-c",
            "echo pid=$$; hostname; for n in net ipc uts mnt pid cgroup time; do echo $n=$(readlink /proc/self/ns/$n); done; cut -d' ' -f1 /proc/uptime; cat /proc/self/cgroup",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("sprout-test\n"), "{out}");
    for n in ["net", "ipc", "uts", "mnt", "pid", "cgroup", "time"] {
        let host = fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{n}=")))
            .unwrap();
        assert_ne!(
            line,
            format!("{n}={}", host.display()),
            "{n} namespace is shared with the host"
        );
    }
    let uptime: f64 = out
        .lines()
        .find(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uptime > 86_400_000.0,
        "boottime offset not applied: {uptime}"
    );
    // The cgroup namespace is rooted at the container's own cgroup.
    assert!(out.lines().any(|l| l.ends_with(":/")), "{out}");
    s.assert_clean(&s.id.clone());
}

#[test]
fn joins_network_namespace_by_path() {
    let name = unique_id("netns");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _del = Del(name.clone());
    let path = format!("/var/run/netns/{name}");
    let ino = fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let mut s = Sandbox::new("joinnet");
    for ns in s.config()["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = path.clone().into();
        }
    }
    let (code, out, err) = run_with(&mut s, &["readlink", "/proc/self/ns/net"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("net:[{ino}]"));
    s.assert_clean(&s.id.clone());
}

#[test]
fn user_namespace_with_id_maps() {
    let mut s = Sandbox::new("userns");
    s.config()["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    s.config()["linux"]["uidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    s.config()["linux"]["gidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // sysfs cannot be mounted by a user namespace that does not own the
    // network namespace's... it does own it here; keep the default mounts.
    let (code, out, err) = run_with(&mut s, &["sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"]);
    s.assert_clean(&s.id.clone());
}

#[test]
fn rro_makes_submounts_read_only_too() {
    // A host directory with a tmpfs mounted inside it, bound with rbind:
    // `ro` leaves the submount writable (as in runc), `rro` does not.
    let mut s = Sandbox::new("rro");
    let host_dir = s.dir.path().join("tree");
    let sub = host_dir.join("sub");
    fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let sub_mount = Unmount(sub);
    s.config()["mounts"].as_array_mut().unwrap().extend([
        serde_json::json!({"destination": "/ro", "type": "bind", "source": host_dir, "options": ["rbind", "ro"]}),
        serde_json::json!({"destination": "/rro", "type": "bind", "source": host_dir, "options": ["rbind", "rro"]}),
    ]);
    let script = "for d in /ro /ro/sub /rro /rro/sub; do \
        (touch $d/f) 2>/dev/null && echo $d=rw || echo $d=ro; done";
    let (code, out, err) = run_with(&mut s, &["sh", "-c", script]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got,
        ["/ro=ro", "/ro/sub=rw", "/rro=ro", "/rro/sub=ro"],
        "{err}"
    );
    drop(sub_mount);
    s.assert_clean(&s.id.clone());
}

/// Entries of the host's temporary directory named like tmpcopyup's
/// staging directories.
fn copyup_staging_dirs() -> Vec<String> {
    fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".sprout-copyup-"))
        .collect()
}

#[test]
fn tmpcopyup_copies_the_image_and_a_failed_one_leaves_nothing() {
    let mut s = Sandbox::new("copyup");
    let etc = s.bundle.join("rootfs/etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(etc.join("from-image"), "image\n").unwrap();
    fs::write(etc.join("big"), vec![b'x'; 256 * 1024]).unwrap();
    fs::create_dir(etc.join("sub")).unwrap();
    fs::write(etc.join("sub/deep"), "deep\n").unwrap();
    // Copied as the link it is, never read through (it names a host file
    // as seen before the pivot).
    std::os::unix::fs::symlink("/etc/hostname", etc.join("host-link")).unwrap();
    let base = s.config()["mounts"].clone();
    let with_etc_opts = |s: &mut Sandbox, size: &str, extra: &[&str]| {
        let mut mounts = base.clone();
        let mut options = vec![
            "tmpcopyup".to_string(),
            "nosuid".into(),
            format!("size={size}"),
        ];
        options.extend(extra.iter().map(|o| o.to_string()));
        mounts.as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": options}
        ));
        s.config()["mounts"] = mounts;
    };
    let with_etc = |s: &mut Sandbox, size: &str| with_etc_opts(s, size, &[]);
    // With rro too: copied, then read-only.
    with_etc_opts(&mut s, "1m", &["rro"]);
    let (code, out, err) = run_with(
        &mut s,
        &[
            "sh",
            "-c",
            "cat /etc/from-image /etc/sub/deep; readlink /etc/host-link; \
             (echo x > /etc/new) 2>/dev/null && echo rw || echo ro",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "image\ndeep\n/etc/hostname\nro\n");
    s.assert_clean(&s.id.clone());
    with_etc(&mut s, "1m");
    let (code, out, err) = run_with(
        &mut s,
        &[
            "sh",
            "-c",
            "cat /etc/from-image; echo new > /etc/from-image && cat /etc/from-image",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "image\nnew\n");
    // Written on the tmpfs, not through to the image.
    assert_eq!(
        fs::read_to_string(etc.join("from-image")).unwrap(),
        "image\n"
    );
    s.assert_clean(&s.id.clone());

    // Too small for the image's /etc: the create fails, naming the mount,
    // and its staging directory in the host's /tmp is gone too.
    let before = copyup_staging_dirs();
    with_etc(&mut s, "16k");
    let (code, _, err) = run_with(&mut s, &["true"]);
    assert_ne!(code, 0);
    assert!(err.contains("/etc") && err.contains("tmpcopyup"), "{err}");
    let left: Vec<String> = copyup_staging_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert!(left.is_empty(), "staging directories left: {left:?}");
    s.assert_clean(&s.id.clone());
}

#[test]
fn mounts_masked_and_readonly_paths() {
    let mut s = Sandbox::new("mounts");
    let host_dir = s.dir.path().join("shared");
    fs::create_dir(&host_dir).unwrap();
    fs::write(host_dir.join("file"), "from-host").unwrap();
    s.config()["mounts"].as_array_mut().unwrap().extend([
        serde_json::json!({"destination": "/data/ro", "type": "bind", "source": host_dir, "options": ["rbind", "ro"]}),
        serde_json::json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=700"]}),
    ]);
    s.config()["root"]["readonly"] = true.into();
    let script = "cat /data/ro/file; echo; \
        (echo x > /data/ro/new) 2>/dev/null && echo ro-bind-writable || echo ro-bind-ok; \
        (touch /rootfile) 2>/dev/null && echo root-writable || echo root-ro-ok; \
        echo y > /scratch/f && echo tmpfs-ok; stat -c %a /scratch; \
        wc -c < /proc/keys; \
        (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo procsys-writable || echo procsys-ro-ok; \
        ls /dev; readlink /dev/ptmx; readlink /dev/fd";
    let (code, out, err) = run_with(&mut s, &["sh", "-c", script]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "from-host",
        "ro-bind-ok",
        "root-ro-ok",
        "tmpfs-ok",
        "procsys-ro-ok",
        "700\n",
        "pts/ptmx",
        "/proc/self/fd",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    // /proc/keys is masked (bound to /dev/null): reads as empty.
    assert!(out.lines().any(|l| l.trim() == "0"), "{out}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
    ] {
        assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
    }
    assert_eq!(fs::read_dir(&host_dir).unwrap().count(), 1);
    s.assert_clean(&s.id.clone());
}

fn cap_mask(names: &[u32]) -> u64 {
    names.iter().fold(0, |m, b| m | (1u64 << b))
}

#[test]
fn capabilities_are_what_the_spec_says() {
    let mut s = Sandbox::new("caps");
    s.config()["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
        "effective": ["CAP_KILL", "CAP_CHOWN"],
        "permitted": ["CAP_KILL", "CAP_CHOWN"],
        "inheritable": ["CAP_KILL"],
        "ambient": ["CAP_KILL"]
    });
    let (code, out, err) = run_with(&mut s, &["grep", "^Cap", "/proc/self/status"]);
    assert_eq!(code, 0, "{err}");
    let get = |k: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(k)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    // CAP_CHOWN=0, CAP_KILL=5, CAP_NET_BIND_SERVICE=10. Root's exec would
    // gain the whole bounding set, but noNewPrivileges caps the new
    // permitted set at the old one.
    assert_eq!(get("CapBnd:"), cap_mask(&[0, 5, 10]));
    assert_eq!(get("CapAmb:"), cap_mask(&[5]));
    assert_eq!(get("CapInh:"), cap_mask(&[5]));
    assert_eq!(get("CapPrm:"), cap_mask(&[0, 5]));
    assert_eq!(get("CapEff:"), cap_mask(&[0, 5]));
    s.assert_clean(&s.id.clone());

    // A non-root user gets exactly the ambient set.
    let mut s = Sandbox::new("caps-user");
    s.config()["process"]["user"] = serde_json::json!({"uid": 65534, "gid": 65534});
    s.config()["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"]
    });
    let (code, out, err) = run_with(
        &mut s,
        &["sh", "-c", "id -u; grep ^CapEff /proc/self/status"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("65534\n"), "{out}");
    let eff = u64::from_str_radix(
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap(),
        16,
    )
    .unwrap();
    assert_eq!(eff, cap_mask(&[10]));
    s.assert_clean(&s.id.clone());
}

fn sysprobe() -> &'static Path {
    use std::sync::OnceLock;
    static PROBE: OnceLock<std::path::PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sysprobe");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/sysprobe.c");
        let st = std::process::Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc");
        assert!(st.success(), "building sysprobe");
        out
    })
}

#[test]
fn seccomp_profile_kill_default_allow_list_and_errno_rules() {
    let mut s = Sandbox::new("seccomp");
    fs::copy(sysprobe(), s.bundle.join("rootfs/bin/sysprobe")).unwrap();
    let allow = [
        "execve",
        "arch_prctl",
        "brk",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "mprotect",
        "readlink",
        "readlinkat",
        "getrandom",
        "newfstatat",
        "fstat",
        "write",
        "exit_group",
        "exit",
        "getpid",
        "uname",
        "mmap",
        "munmap",
        "ioctl",
        "pause",
    ];
    s.config()["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allow, "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
             "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let cases: [(&str, Option<&str>); 6] = [
        // allowed outright
        ("getpid", Some("ret=1 errno=0")),
        // ERRNO rule whose argument matches: its own errno
        ("personality-query", Some("errno=38")),
        // same syscall, other argument: no rule names it -> default KILL
        ("personality-linux", None),
        // second ERRNO rule with another errno
        ("getpriority-process", Some("errno=13")),
        // allowed by the argument-conditioned ALLOW rule
        ("getpriority-user", Some("errno=0")),
        // not listed at all -> KILL
        ("getppid", None),
    ];
    for (call, want) in cases {
        s.id = unique_id("seccomp");
        let (code, out, err) = run_with(&mut s, &["/bin/sysprobe", call]);
        match want {
            Some(w) => {
                assert_eq!(code, 0, "{call}: {err}");
                assert!(out.contains(w), "{call}: got {out:?}, want {w}");
            }
            None => assert_eq!(code, 128 + 31, "{call} should die of SIGSYS: {out} {err}"),
        }
        s.assert_clean(&s.id.clone());
    }
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let mut s = Sandbox::new("pids");
    s.config()["linux"]["resources"]["pids"] = serde_json::json!({"limit": 8});
    // Each successful fork prints its number; busybox sh gives up with
    // "can't fork" at the first refused one.
    let (code, out, err) = run_with(
        &mut s,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 40); do sleep 30 & echo $i; done",
        ],
    );
    assert_ne!(code, 0, "the loop should have been stopped: {out}");
    assert!(err.contains("can't fork"), "no fork failure seen: {err}");
    let started: u32 = out.lines().last().unwrap_or("0").trim().parse().unwrap();
    // pid 1 (sh) plus at most 7 sleeps fit under a limit of 8.
    assert!(
        started <= 7,
        "pids limit not enforced: {started} forks succeeded"
    );
    assert!(started >= 1, "{out}");
    s.assert_clean(&s.id.clone());
}

#[test]
fn memory_limit_oom_kills_the_container_and_sprout_is_fine() {
    let mut s = Sandbox::new("oom");
    s.config()["linux"]["resources"]["memory"] =
        serde_json::json!({"limit": 33554432, "swap": 33554432});
    let id = s.id.clone();
    s.set_args(&[
        "sh",
        "-c",
        "sleep 0.3; awk 'BEGIN { s = \"x\"; while (1) s = s s }'",
    ]);
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    let events = s
        .cmd()
        .args(["events", "--interval", "100ms", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || s.status(&id) == "stopped"));
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("\"type\":\"oom\"")),
        "no oom event: {text}"
    );
    assert!(
        text.lines().any(|l| l.contains("\"type\":\"stats\"")),
        "no stats: {text}"
    );
    // The runtime still works: state and delete.
    assert_eq!(s.status(&id), "stopped");
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
}

#[test]
fn hooks_receive_the_state() {
    let mut s = Sandbox::new("hooks");
    let out_dir = s.dir.path().join("hooks-out");
    fs::create_dir(&out_dir).unwrap();
    // In-container hooks write under /data, which is bound to out_dir.
    s.config()["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/data", "type": "bind", "source": out_dir, "options": ["rbind"]}));
    let host = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}", out_dir.display())]});
    s.config()["hooks"] = serde_json::json!({
        "prestart": [host("prestart")],
        "createRuntime": [host("createRuntime")],
        // createContainer runs in the container's namespaces before the
        // pivot: host paths still resolve.
        "createContainer": [host("createContainer")],
        // startContainer runs after the pivot: container paths.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /data/startContainer"]}],
        "poststart": [host("poststart")],
        "poststop": [host("poststop")]
    });
    let (code, _out, err) = run_with(&mut s, &["true"]);
    assert_eq!(code, 0, "{err}");
    for (name, status) in [
        ("prestart", "creating"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text = fs::read_to_string(out_dir.join(name))
            .unwrap_or_else(|_| panic!("{name} hook did not run"));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        assert_eq!(v["id"], s.id.as_str(), "{name}");
        assert_eq!(v["status"], status, "{name}");
        assert!(v["pid"].as_i64().unwrap_or(0) > 0, "{name}: {text}");
        assert_eq!(v["bundle"], s.bundle_str(), "{name}");
    }
    s.assert_clean(&s.id.clone());
}

/// The host's helper binary stays out of the container's reach (runc's
/// CVE-2019-5736): a created container's init is `sprout-init` waiting
/// for `start`, already holding the container's user and capabilities,
/// so a process exec'd into the container could otherwise open
/// `/proc/1/exe` (and, once the helper has exec'd, write through it) or follow its
/// descriptors.
#[test]
fn the_waiting_init_helper_is_out_of_the_containers_reach() {
    let mut s = Sandbox::new("helperexe");
    s.set_args(&["true"]);
    let id = s.id.clone();
    s.ok(&["create", "--bundle", s.bundle_str(), &id]);
    let r = s.sprout(&[
        "exec",
        &id,
        "sh",
        "-c",
        "readlink /proc/1/exe; cat /proc/1/exe >/dev/null 2>&1 && echo exe-readable; \
         readlink /proc/1/fd/0 >/dev/null && echo fd-readable; readlink /proc/self/exe",
    ]);
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
    // The exec'd shell itself is an ordinary process (its own exe).
    assert_eq!(
        out,
        "/bin/busybox\n",
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// An image's own `/dev/null` (a spec without a `/dev` tmpfs) is kept only
/// if it is the null device: masks are bound from it, so a symlink there
/// would put its target in place of /proc/keys (runc's CVE-2025-31133).
#[test]
fn an_image_dev_null_that_is_not_the_device_is_refused() {
    let mut s = Sandbox::new("devnull");
    let mounts: Vec<serde_json::Value> = s.config()["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["destination"] != "/dev")
        .cloned()
        .collect();
    s.config()["mounts"] = mounts.into();
    let dev = s.bundle.join("rootfs/dev");
    fs::create_dir_all(&dev).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/hostname", dev.join("null")).unwrap();
    let (code, out, err) = run_with(&mut s, &["cat", "/proc/keys"]);
    assert_eq!(code, 1, "stdout: {out}");
    assert!(
        err.contains("device /dev/null: exists in the rootfs and is not the device c 1:3"),
        "{err}"
    );
    s.assert_clean(&s.id.clone());
    // The image's node is used when it is the device.
    fs::remove_file(dev.join("null")).unwrap();
    nix::sys::stat::mknod(
        &dev.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let (code, out, err) = run_with(
        &mut s,
        &["sh", "-c", "echo x >/dev/null; wc -c </proc/keys"],
    );
    assert_eq!((code, out.trim()), (0, "0"), "stderr: {err}");
    s.assert_clean(&s.id.clone());
}

/// The runtime's writes to /proc (sysctls here, LSM labels likewise) reach
/// procfs or fail: never a file a mount put in their way. An image whose
/// `/proc` is a symlink into a volume would get proc mounted there and
/// covered by the volume (runc's CVE-2019-16884); a bind over /proc/sys
/// would take the write just the same.
#[test]
fn writes_to_proc_never_land_outside_procfs() {
    let mut s = Sandbox::new("procsym");
    let volume = s.dir.path().join("volume");
    fs::create_dir_all(volume.join("sys/kernel")).unwrap();
    let rootfs = s.bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("data")).unwrap();
    let _ = fs::remove_dir(rootfs.join("proc"));
    std::os::unix::fs::symlink("/data", rootfs.join("proc")).unwrap();
    s.config()["linux"]["sysctl"] = serde_json::json!({"kernel.shm_rmid_forced": "1"});
    s.config()["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/data", "type": "bind", "source": volume, "options": ["rbind"]}));
    s.write_config();
    let err = s.fails(&["run", "--bundle", s.bundle_str(), &s.id.clone()]);
    assert!(
        err.contains("mount /proc: proc goes only on a directory"),
        "{err}"
    );
    assert!(!volume.join("sys/kernel/shm_rmid_forced").exists());
    s.assert_clean(&s.id.clone());

    // A real /proc, and a bind over its sys.
    fs::remove_file(rootfs.join("proc")).unwrap();
    fs::create_dir(rootfs.join("proc")).unwrap();
    let forced = volume.join("sys/kernel/shm_rmid_forced");
    fs::write(&forced, "0\n").unwrap();
    let mounts = s.config()["mounts"].as_array_mut().unwrap();
    mounts.pop();
    mounts.push(serde_json::json!({"destination": "/proc/sys", "type": "bind", "source": volume.join("sys"), "options": ["rbind"]}));
    s.write_config();
    let err = s.fails(&["run", "--bundle", s.bundle_str(), &s.id.clone()]);
    assert!(
        err.contains("sysctl kernel.shm_rmid_forced") && err.contains("is not on procfs"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&forced).unwrap(), "0\n");
    s.assert_clean(&s.id.clone());
}

/// A process without HOME gets its user's home from the container's
/// /etc/passwd, else `/` (runc's rule); a HOME it has is kept.
#[test]
fn home_is_set_from_the_containers_passwd() {
    let mut s = Sandbox::new("home");
    let env = serde_json::json!(["PATH=/bin"]);
    s.config()["process"]["env"] = env;
    let (code, out, err) = run_with(&mut s, &["sh", "-c", "echo $HOME"]);
    assert_eq!((code, out.as_str()), (0, "/root\n"), "{err}");
    s.config()["process"]["user"] = serde_json::json!({"uid": 4242, "gid": 4242});
    let (code, out, err) = run_with(&mut s, &["sh", "-c", "echo $HOME"]);
    assert_eq!((code, out.as_str()), (0, "/\n"), "{err}");
    s.config()["process"]["env"] = serde_json::json!(["PATH=/bin", "HOME=/data"]);
    let (code, out, err) = run_with(&mut s, &["sh", "-c", "echo $HOME"]);
    assert_eq!((code, out.as_str()), (0, "/data\n"), "{err}");
    s.assert_clean(&s.id.clone());
}

/// An LSM label the host cannot apply is an error, for `create` and
/// `exec`, decided on the host: a label that is dropped leaves the
/// process unconfined. (This host has neither AppArmor nor SELinux.)
#[test]
fn lsm_labels_the_host_cannot_apply_are_refused() {
    if std::path::Path::new("/sys/fs/selinux/enforce").exists()
        || fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y")
    {
        eprintln!("skipped: this host has an LSM");
        return;
    }
    let mut s = Sandbox::new("lsm");
    let id = s.id.clone();
    s.config()["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into();
    s.write_config();
    let err = s.fails(&["run", "--bundle", s.bundle_str(), &id]);
    assert!(
        err.contains("`process.selinuxLabel`: SELinux is not enabled on this host"),
        "{err}"
    );
    s.assert_clean(&id);
    s.config()["process"]["selinuxLabel"] = serde_json::Value::Null;
    s.config()["process"]["apparmorProfile"] = "sprout-test".into();
    s.write_config();
    let err = s.fails(&["run", "--bundle", s.bundle_str(), &id]);
    assert!(
        err.contains("`process.apparmorProfile`: AppArmor is not enabled on this host"),
        "{err}"
    );
    s.assert_clean(&id);

    s.config()["process"]["apparmorProfile"] = serde_json::Value::Null;
    s.set_args(&["sleep", "1000"]);
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    let err = s.fails(&[
        "exec",
        "--process-label",
        "system_u:system_r:container_t:s0",
        &id,
        "true",
    ]);
    assert!(err.contains("process.selinuxLabel"), "{err}");
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

/// A masked path that is a symlink in the image masks what it names, as
/// mount(2) would (inside the container's root).
#[test]
fn a_masked_symlink_masks_its_target() {
    let mut s = Sandbox::new("masklink");
    let etc = s.bundle.join("rootfs/etc");
    fs::write(etc.join("secret"), "s3cret\n").unwrap();
    std::os::unix::fs::symlink("/etc/secret", etc.join("secret-link")).unwrap();
    // A symlink to nothing hides nothing, and is no error (runc's rule).
    std::os::unix::fs::symlink("/no/such/file", etc.join("dangling")).unwrap();
    s.config()["linux"]["maskedPaths"] = serde_json::json!(["/etc/secret-link", "/etc/dangling"]);
    let (code, out, err) = run_with(&mut s, &["sh", "-c", "cat /etc/secret; echo end"]);
    assert_eq!((code, out.as_str()), (0, "end\n"), "{err}");
    s.assert_clean(&s.id.clone());
}

/// A working directory through a descriptor (runc's CVE-2024-21626, where
/// an image's WORKDIR named a leaked fd of a host directory) is refused:
/// none of the waiting init's descriptors is a directory, and a directory
/// the caller passes on (`--preserve-fds`) is refused as outside the root.
#[test]
fn a_working_directory_outside_the_root_is_refused() {
    let mut s = Sandbox::new("leakycwd");
    s.set_args(&["true"]);
    let id = s.id.clone();
    s.ok(&["create", "--bundle", s.bundle_str(), &id]);
    let state: serde_json::Value = serde_json::from_str(&s.ok(&["state", &id])).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    let dirs: Vec<String> = fds
        .iter()
        .filter_map(|fd| {
            let link = format!("/proc/{pid}/fd/{fd}");
            fs::metadata(&link)
                .is_ok_and(|m| m.is_dir())
                .then(|| format!("{fd} -> {:?}", fs::read_link(&link)))
        })
        .collect();
    s.ok(&["delete", "--force", &id]);
    assert!(
        dirs.is_empty(),
        "the waiting init holds directories: {dirs:?}"
    );
    for fd in fds.iter().filter(|&&fd| fd > 2) {
        s.config()["process"]["cwd"] = format!("/proc/self/fd/{fd}").into();
        s.write_config();
        let err = s.fails(&["run", "--bundle", s.bundle_str(), &id]);
        assert!(err.contains(&format!("cwd /proc/self/fd/{fd}")), "{err}");
        s.assert_clean(&id);
    }
    // A host directory passed on at fd 3.
    s.config()["process"]["cwd"] = "/proc/self/fd/3/..".into();
    s.set_args(&["sh", "-c", "ls; echo escaped"]);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3</ \"$0\" --root \"$1\" run --preserve-fds 1 --bundle \"$2\" {id}"
        ))
        .arg(sprout_bin())
        .arg(&s.root)
        .arg(&s.bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("outside the container's root"), "{stderr}");
    s.assert_clean(&id);
}

/// An exec'd process gets its own `oomScoreAdj`, else the container's,
/// never the caller's (a shim's is about -998: image code run by an exec
/// probe would be safe from the OOM killer).
#[test]
fn exec_applies_the_oom_score_adj() {
    let mut s = Sandbox::new("execoom");
    s.config()["process"]["oomScoreAdj"] = 500.into();
    s.set_args(&["sleep", "1000"]);
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    let out = s.ok(&["exec", &id, "cat", "/proc/self/oom_score_adj"]);
    let proc_file = s.dir.path().join("process.json");
    fs::write(
        &proc_file,
        serde_json::json!({"args": ["cat", "/proc/self/oom_score_adj"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "oomScoreAdj": 300}).to_string(),
    )
    .unwrap();
    let own = s.ok(&["exec", "--process", proc_file.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
    assert_eq!((out.as_str(), own.as_str()), ("500\n", "300\n"));
}

#[test]
fn pause_resume_and_exec() {
    let mut s = Sandbox::new("exec");
    s.set_args(&["sleep", "1000"]);
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    let out = s.ok(&["exec", &id, "sh", "-c", "echo $$; hostname; pwd"]);
    let mut lines = out.lines();
    assert_ne!(lines.next(), Some("1"));
    assert_eq!(lines.next(), Some("sprout-test"));
    assert_eq!(lines.next(), Some("/"));
    let out = s.ok(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $FOO; pwd",
    ]);
    assert_eq!(out, "bar\n/tmp\n");
    let r = s.sprout(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(r.status.code(), Some(5));
    let r = s.sprout(&["exec", &id, "no-such-binary"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("executable file not found"));
    // --process JSON, as containerd's shim passes it.
    let proc_file = s.dir.path().join("process.json");
    fs::write(
        &proc_file,
        serde_json::json!({"args": ["sh", "-c", "echo from-json $(id -u)"], "cwd": "/", "user": {"uid": 65534, "gid": 65534}, "env": ["PATH=/bin"]}).to_string(),
    )
    .unwrap();
    let out = s.ok(&["exec", "--process", proc_file.to_str().unwrap(), &id]);
    assert_eq!(out, "from-json 65534\n");
    // A detached exec with a pid file.
    let pidfile = s.dir.path().join("exec.pid");
    s.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
        "sleep",
        "1000",
    ]);
    let exec_pid: i32 = fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    assert!(pid_alive(exec_pid));
    let pids: Vec<i32> = serde_json::from_str(&s.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&exec_pid), "{pids:?} lacks {exec_pid}");
    // A pid file that cannot be written fails the exec and stops the
    // process it started: nothing untracked keeps running.
    let bad = s.dir.path().join("no-such-dir").join("exec.pid");
    let err = s.fails(&[
        "exec",
        "-d",
        "--pid-file",
        bad.to_str().unwrap(),
        &id,
        "sleep",
        "999",
    ]);
    assert!(err.contains("no-such-dir"), "{err}");
    let pids_after: Vec<i32> =
        serde_json::from_str(&s.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids_after, pids, "the failed exec's process runs on");

    s.ok(&["pause", &id]);
    assert_eq!(s.status(&id), "paused");
    // The exec'd process sits in the container's frozen freezer cgroup.
    let cg = fs::read_to_string(format!("/proc/{exec_pid}/cgroup")).unwrap();
    let freezer = cg
        .lines()
        .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_string()))
        .expect("a v1 freezer line");
    let state =
        fs::read_to_string(format!("/sys/fs/cgroup/freezer{freezer}/freezer.state")).unwrap();
    assert_eq!(state.trim(), "FROZEN");
    let err = s.fails(&["exec", &id, "true"]);
    assert!(err.contains("paused"), "{err}");
    s.ok(&["resume", &id]);
    assert_eq!(s.status(&id), "running");
    let err = s.fails(&["resume", &id]);
    assert!(err.contains("not paused"), "{err}");

    s.ok(&["kill", &id, "9"]);
    assert!(wait_until(Duration::from_secs(5), || s.status(&id) == "stopped"));
    let err = s.fails(&["exec", &id, "true"]);
    assert!(err.contains("stopped"), "{err}");
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(exec_pid)));
}

#[test]
fn update_changes_limits_and_events_report_stats() {
    let mut s = Sandbox::new("update");
    s.set_args(&["sleep", "1000"]);
    s.config()["linux"]["resources"]["memory"] = serde_json::json!({"limit": 134217728});
    s.write_config();
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    let mem_dir = own_cgroup_dir("memory").join(&s.cgroup);
    let read = |f: &str| {
        fs::read_to_string(mem_dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.limit_in_bytes"), "134217728");
    s.ok(&["update", "--memory", "67108864", "--pids-limit", "50", &id]);
    assert_eq!(read("memory.limit_in_bytes"), "67108864");
    let pids_max = own_cgroup_dir("pids").join(&s.cgroup).join("pids.max");
    assert_eq!(fs::read_to_string(pids_max).unwrap().trim(), "50");
    let res_file = s.dir.path().join("res.json");
    fs::write(&res_file, r#"{"memory": {"limit": 100663296}}"#).unwrap();
    s.ok(&["update", "--resources", res_file.to_str().unwrap(), &id]);
    assert_eq!(read("memory.limit_in_bytes"), "100663296");
    let ev: serde_json::Value =
        serde_json::from_str(s.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert_eq!(ev["data"]["pids"]["current"], 1);
    s.ok(&["delete", "-f", &id]);
    s.assert_clean(&id);
}

#[test]
fn spec_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sandbox::new("spec");
    s.ok(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(v["process"]["args"][0], "sh");
    let err = s.fails(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
    let f: serde_json::Value = serde_json::from_str(&s.ok(&["features"])).unwrap();
    assert!(
        f["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "time")
    );
    let v = s.ok(&["--version"]);
    assert!(v.starts_with("sprout version"), "{v}");
}

#[test]
fn process_and_sandbox_settings_are_applied() {
    let mut s = Sandbox::new("settings");
    s.set_args(&[
        "sh",
        "-c",
        "echo groups=$(id -G); echo umask=$(umask); \
         grep 'open files' /proc/self/limits | tr -s ' '; \
         echo oom=$(cat /proc/self/oom_score_adj); \
         echo domain=$(cat /proc/sys/kernel/domainname); \
         echo forward=$(cat /proc/sys/net/ipv4/ip_forward); \
         echo fuse=$(stat -c '%F %t:%T %a' /dev/fuse); \
         echo rootprop=$(awk '$5 == \"/\" {print $7}' /proc/self/mountinfo); \
         echo net=$(ls /sys/class/net); \
         echo cgroups=$(ls /sys/fs/cgroup | tr '\\n' ' '); \
         exec sleep 1000",
    ]);
    let c = s.config();
    c["process"]["user"]["additionalGids"] = serde_json::json!([10, 20]);
    c["process"]["user"]["umask"] = 0o027.into();
    c["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 654, "soft": 321}]);
    c["process"]["oomScoreAdj"] = 500.into();
    c["domainname"] = "example.test".into();
    c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    c["linux"]["devices"] = serde_json::json!([
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640}
    ]);
    c["linux"]["resources"]["devices"] = serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
    ]);
    c["linux"]["rootfsPropagation"] = "private".into();
    s.write_config();
    let id = s.id.clone();
    let out = s.dir.path().join("settings.out");
    let pid_file = s.dir.path().join("run.pid");
    // Flags after the id, as runc accepts them.
    let st = sprout_to(
        &s,
        &[
            "run",
            &id,
            "--bundle",
            s.bundle_str(),
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &out,
    );
    assert!(st.success(), "{}", stderr_of(&out));
    assert!(wait_until(Duration::from_secs(10), || lines(&out)
        .iter()
        .any(|l| l.starts_with("cgroups="))));
    let got = lines(&out).join("\n");
    for want in [
        "groups=0 10 20",
        "umask=0027",
        "Max open files 321 654 files",
        "oom=500",
        "domain=example.test",
        "forward=1",
        "fuse=character special file a:e5 640",
        "net=lo",
    ] {
        assert!(
            got.lines().any(|l| l.trim() == want),
            "want {want:?} in:\n{got}"
        );
    }
    // A private root carries no propagation tag; sysfs and the cgroup
    // mounts are there.
    let root = got.lines().find(|l| l.starts_with("rootprop=")).unwrap();
    assert!(
        !root.contains("shared:") && !root.contains("master:"),
        "{root}"
    );
    let cgroups = got.lines().find(|l| l.starts_with("cgroups=")).unwrap();
    assert!(
        cgroups.contains("memory") && cgroups.contains("pids"),
        "{cgroups}"
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(s.state(&id)["pid"], pid);
    s.ok(&["delete", &id, "--force"]);
    s.assert_clean(&id);
}
