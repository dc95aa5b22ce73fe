//! containerd's own runc shim (`io.containerd.runc.v2`, containerd 1.6)
//! driving sprout as its runc binary, through go-runc's command lines.
//!
//! Each test starts a private containerd (tests/common/containerd.rs: own
//! root, state, socket and config, stopped by pid at the end) and drives
//! it with `ctr`. containerd 1.6 has no config-file defaults for the runc
//! shim's options outside the CRI plugin, so every `ctr run` passes
//! `--runc-binary <sprout>` and `--runc-root <dir>` (both land in the
//! shim's `options.json`). Rootfs: busybox via `--rootfs`, no image store.
//! cgroups: a relative `--cgroup` per container, below the test's own
//! cgroup.

mod common;

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::containerd::*;
use common::*;

const RUNC_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

/// A private containerd whose runc shim runs sprout, and a busybox rootfs
/// for `ctr run --rootfs`.
struct RuncContainerd {
    c: Containerd,
    /// The shim's `Root` option; go-runc adds the namespace.
    sprout_root: PathBuf,
    rootfs: PathBuf,
}

impl Deref for RuncContainerd {
    type Target = Containerd;
    fn deref(&self) -> &Containerd {
        &self.c
    }
}

impl RuncContainerd {
    fn start() -> Self {
        assert!(
            Path::new(RUNC_SHIM).exists(),
            "{RUNC_SHIM} missing: these tests need Debian's containerd package"
        );
        let c = Containerd::start();
        let d = c.dir.path();
        let rootfs = d.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let sprout_root = d.join("sprout-root");
        // Best effort for a failed test: what sprout still knows once
        // containerd's containers are gone.
        let (ns_root, dir) = (sprout_root.join("default"), d.to_path_buf());
        c.on_drop_after_containers(move || {
            for id in dir_entries(&ns_root) {
                let _ = run_with_timeout(
                    Command::new(sprout_bin())
                        .arg("--root")
                        .arg(&ns_root)
                        .arg("delete")
                        .arg("--force")
                        .arg(&id),
                    &dir,
                    Stdio::null(),
                    Duration::from_secs(30),
                );
            }
        });
        RuncContainerd {
            c,
            sprout_root,
            rootfs,
        }
    }

    /// `ctr run` flags that make the runc shim use sprout.
    fn run_flags(&self, cgroup: &str) -> Vec<String> {
        vec![
            "--fifo-dir".into(),
            self.fifo_dir.display().to_string(),
            "--rootfs".into(),
            "--cgroup".into(),
            cgroup.into(),
            "--runc-binary".into(),
            sprout_bin().into(),
            "--runc-root".into(),
            self.sprout_root.display().to_string(),
        ]
    }

    /// `ctr run [opts] <flags> <rootfs> <id> <cmd...>`.
    fn run_args(&self, opts: &[&str], cgroup: &str, id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        a.extend(opts.iter().map(|s| s.to_string()));
        a.extend(self.run_flags(cgroup));
        a.push(self.rootfs.display().to_string());
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, opts: &[&str], cgroup: &str, id: &str, cmd: &[&str]) -> CtrOutput {
        self.run_stdin(opts, cgroup, id, cmd, None)
    }

    fn run_stdin(
        &self,
        opts: &[&str],
        cgroup: &str,
        id: &str,
        cmd: &[&str],
        input: Option<&str>,
    ) -> CtrOutput {
        self.ctr_stdin(&self.run_args(opts, cgroup, id, cmd), input)
    }

    /// `ctr run -d`, waiting until the task runs.
    fn run_detached(&self, cgroup: &str, id: &str, cmd: &[&str]) {
        self.ok(&self.run_args(&["-d"], cgroup, id, cmd));
        self.wait_status(id, "RUNNING");
    }

    fn exec(&self, opts: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> CtrOutput {
        self.ctr(&self.exec_args(opts, id, exec_id, cmd))
    }

    /// sprout with the global flags the shim gives it (go-runc:
    /// `--root <Root>/<namespace> --log <bundle>/log.json --log-format json`).
    fn sprout_as_shim(&self, id: &str) -> Command {
        let mut c = Command::new(sprout_bin());
        c.arg("--root")
            .arg(self.sprout_root.join("default"))
            .arg("--log")
            .arg(self.bundle(id).join("log.json"))
            .args(["--log-format", "json"]);
        c
    }

    /// Nothing of these containers is left: containerd's records, sprout's
    /// state, cgroups, processes, shims.
    fn assert_clean(&self, cgroup_prefix: &str) {
        self.assert_no_containers(Containerd::shim_pids);
        let left = dir_entries(&self.sprout_root.join("default"));
        assert!(
            left.is_empty(),
            "sprout state left in the shim's root: {left:?}"
        );
        assert_cgroup_clean(cgroup_prefix);
    }
}

#[test]
fn run_rm_passes_output_stdin_and_exit_codes() {
    let c = RuncContainerd::start();
    let (id, cg) = c.names("rm");
    let out = c.run(&["--rm"], &cg, &id, &OUTPUT_CMD);
    assert_output_run(&out);

    // stdin through containerd's fifo and the shim's pipe.
    let (id, cg2) = c.names("rm-stdin");
    let out = c.run_stdin(
        &["--rm"],
        &cg2,
        &id,
        &["/bin/head", "-n", "1"],
        Some("line1\nline2\n"),
    );
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "line1\n");

    // No stdio at all (go-runc's NullIO).
    let (id, cg3) = c.names("rm-null");
    let out = c.run(
        &["--rm", "--null-io"],
        &cg3,
        &id,
        &["/bin/sh", "-c", "echo x; exit 4"],
    );
    assert_eq!(out.code(), Some(4), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "");

    // A failed create: the shim explains it with the last error line of
    // sprout's JSON log.
    let (id, cg4) = c.names("rm-bad");
    let out = c.run(&["--rm"], &cg4, &id, &["/nonexistent"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("OCI runtime create failed") && out.stderr.contains("/nonexistent"),
        "{}",
        out.stderr
    );
    for cg in [cg, cg2, cg3, cg4] {
        c.assert_clean(&cg);
    }
}

#[test]
fn detached_task_exec_ps_pause_resume_metrics_update_kill_delete() {
    let c = RuncContainerd::start();
    let (id, cg) = c.names("det");
    c.run_detached(
        &cg,
        &id,
        &["/bin/sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"],
    );
    let (pid, _) = c.task(&id).unwrap();
    assert!(pid > 0);
    let state: serde_json::Value = serde_json::from_slice(
        &c.sprout_as_shim(&id)
            .args(["state", &id])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], pid);

    // exec: output and exit code come back; a detached exec shows up in
    // ps with its exec id, and can be killed.
    c.assert_execs_work(&id, pid);

    // A failing exec is explained from the log.
    let out = c.exec(&[], &id, "e3", &["/nonexistent"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("OCI runtime exec failed") && out.stderr.contains("/nonexistent"),
        "{}",
        out.stderr
    );

    c.pause(&id);
    c.resume(&id);

    // Metrics: the shim reads the cgroups sprout made.
    let metrics = c.ok(&["task", "metrics", &id]);
    assert!(metrics.contains(&id), "{metrics}");

    // update: ctr 1.6 has no command for it, so call sprout exactly as the
    // shim does for CRI's UpdateContainerResources, which sends the spec's
    // whole resources, device rules included.
    let limit = 96 * 1024 * 1024;
    let resources = serde_json::json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": limit},
        "cpu": {"shares": 512}
    });
    let mut update = c
        .sprout_as_shim(&id)
        .args(["update", "--resources", "-", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut update.stdin.take().unwrap(),
        resources.to_string().as_bytes(),
    )
    .unwrap();
    let out = update.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(memory_limit(pid), limit);
    // The default device rules survive the update.
    let out = c.exec(
        &[],
        &id,
        "e4",
        &[
            "/bin/sh",
            "-c",
            "echo x >/dev/null && head -c 4 /dev/zero | wc -c",
        ],
    );
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), "4");

    // SIGTERM (the default) reaches the init's trap: exit status 7.
    c.terminate_and_delete(&id, 7);
    c.assert_clean(&cg);
}

/// The memory limit of `pid`'s cgroup, read on the host.
fn memory_limit(pid: i32) -> i64 {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut unified = None;
    for line in text.lines() {
        let mut p = line.splitn(3, ':');
        let (_, ctrls, path) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let path = path.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == "memory") {
            return fs::read_to_string(
                Path::new("/sys/fs/cgroup/memory")
                    .join(path)
                    .join("memory.limit_in_bytes"),
            )
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        }
        if ctrls.is_empty() {
            unified = Some(Path::new("/sys/fs/cgroup").join(path).join("memory.max"));
        }
    }
    fs::read_to_string(unified.expect("no memory cgroup"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn kill_all_and_killing_paused_tasks() {
    let c = RuncContainerd::start();
    let (id, cg) = c.names("killall");
    c.run_detached(
        &cg,
        &id,
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    c.wait_process_count(&id, 3);
    c.kill_until_stopped(&["-a", "-s", "KILL"], &id);
    c.remove(&id);

    // SIGKILL to a paused task: it must not stay frozen (runc thaws).
    let (id2, cg2) = c.names("killpaused");
    c.run_detached(&cg2, &id2, &["/bin/sleep", "1000"]);
    c.pause(&id2);
    c.kill_until_stopped(&["-s", "KILL"], &id2);
    c.remove(&id2);

    // The same with --all, and a forced delete of a paused task.
    let (id3, cg3) = c.names("rmpaused");
    c.run_detached(&cg3, &id3, &["/bin/sh", "-c", "sleep 1000 & sleep 1000"]);
    c.wait_process_count(&id3, 2);
    c.pause(&id3);
    c.kill_until_stopped(&["-a", "-s", "KILL"], &id3);
    c.remove(&id3);

    let (id4, cg4) = c.names("forcepaused");
    c.run_detached(&cg4, &id4, &["/bin/sleep", "1000"]);
    c.pause(&id4);
    c.ok(&["task", "delete", "-f", &id4]);
    c.ok(&["container", "delete", &id4]);
    for cg in [cg, cg2, cg3, cg4] {
        c.assert_clean(&cg);
    }
}

#[test]
fn children_of_an_exited_init_in_a_shared_pid_namespace_are_killed() {
    // Joining our own pid namespace by path: the shim then kills what is
    // left in the cgroup when the init exits (`kill --all` on a stopped
    // container), and `delete` must find the cgroup empty.
    let c = RuncContainerd::start();
    let (id, cg) = c.names("sharedpid");
    let ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    let out = c.run(
        &["--rm", "--with-ns", &ns],
        &cg,
        &id,
        &["/bin/sh", "-c", "sleep 1000 & echo started"],
    );
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "started\n");
    c.assert_clean(&cg);
}

#[test]
fn terminals_for_run_and_exec() {
    let c = RuncContainerd::start();
    let (id, cg) = c.names("tty");
    let args = c.run_args(&["--rm", "-t"], &cg, &id, &TTY_SIZE_CMD);
    assert_tty_run(&c, &args);

    let (id2, cg2) = c.names("ttyexec");
    c.run_detached(&cg2, &id2, &["/bin/sleep", "1000"]);
    assert_tty_exec(&c, &id2);
    c.kill_until_stopped(&["-s", "KILL"], &id2);
    c.remove(&id2);
    for cg in [cg, cg2] {
        c.assert_clean(&cg);
    }
}
