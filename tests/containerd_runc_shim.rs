//! containerd's own runc shim (`io.containerd.runc.v2`, containerd 1.6)
//! driving sprout as its runc binary, through go-runc's command lines.
//!
//! Each test starts a private containerd (own root, state, socket and
//! config, stopped by pid at the end) and drives it with `ctr`. containerd
//! 1.6 has no config-file defaults for the runc shim's options outside the
//! CRI plugin, so every `ctr run` passes `--runc-binary <sprout>` and
//! `--runc-root <dir>` (both land in the shim's `options.json`). Rootfs:
//! busybox via `--rootfs`, no image store. cgroups: a relative
//! `--cgroup` per container, below the test's own cgroup.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Generous: a shared, noisy 2-core machine.
const CTR_TIMEOUT: Duration = Duration::from_secs(120);
const STATE_TIMEOUT: Duration = Duration::from_secs(60);

static N: AtomicU32 = AtomicU32::new(0);

struct CtrOutput {
    /// `None`: killed after the timeout.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl CtrOutput {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` with stdout/stderr in files (a detached task may inherit
/// ctr's pipes), killing it after `timeout`.
fn run_with_timeout(cmd: &mut Command, dir: &Path, stdin: Stdio, timeout: Duration) -> CtrOutput {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("cmd-{n}.out"));
    let err_path = dir.join(format!("cmd-{n}.err"));
    let mut child = cmd
        .stdin(stdin)
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status = wait_child(&mut child, timeout);
    let out = CtrOutput {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_file(out_path);
    let _ = fs::remove_file(err_path);
    out
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private containerd, stopped (by pid) and cleaned up on drop, also
/// when the test fails.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    sock: PathBuf,
    state: PathBuf,
    /// The shim's `Root` option; go-runc adds the namespace.
    sprout_root: PathBuf,
    rootfs: PathBuf,
    /// ctr's stdio fifos (`--fifo-dir`): ours, since `ctr run -d` and
    /// `ctr task exec -d` leave theirs behind.
    fifo_dir: PathBuf,
    /// cgroups handed out by `names`, for the cleanup of a failed test.
    cgroups: Mutex<Vec<String>>,
}

impl Containerd {
    fn start() -> Self {
        for bin in [
            "/usr/bin/containerd",
            "/usr/bin/ctr",
            "/usr/bin/containerd-shim-runc-v2",
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: these tests need Debian's containerd package"
            );
        }
        // Under /tmp with a short name: the socket path must stay well
        // below the 108-byte sun_path limit.
        let dir = tempfile::Builder::new()
            .prefix("sprout-ctr-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let (root, state, sock) = (d.join("root"), d.join("state"), d.join("c.sock"));
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
"#,
                root = root.display(),
                state = state.display(),
                sock = sock.display(),
            ),
        )
        .unwrap();
        let rootfs = d.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let mut c = Containerd {
            sprout_root: d.join("sprout-root"),
            fifo_dir: d.join("fifo"),
            cgroups: Mutex::new(Vec::new()),
            dir,
            daemon: Some(daemon),
            sock,
            state,
            rootfs,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if c.ctr_raw(&["version"], Duration::from_secs(20)).success() {
                break;
            }
            let exited = c.daemon.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "containerd did not come up ({exited:?}):\n{}",
                    c.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address").arg(&self.sock);
        c
    }

    fn ctr_raw(&self, args: &[&str], timeout: Duration) -> CtrOutput {
        run_with_timeout(
            self.ctr_cmd().args(args),
            self.dir.path(),
            Stdio::null(),
            timeout,
        )
    }

    /// `ctr args...`; panics if it hangs.
    fn ctr<S: AsRef<str>>(&self, args: &[S]) -> CtrOutput {
        self.ctr_stdin(args, None)
    }

    fn ctr_stdin<S: AsRef<str>>(&self, args: &[S], input: Option<&str>) -> CtrOutput {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let stdin = match input {
            Some(text) => {
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p = self.dir.path().join(format!("stdin-{n}"));
                fs::write(&p, text).unwrap();
                Stdio::from(fs::File::open(&p).unwrap())
            }
            None => Stdio::null(),
        };
        let out = run_with_timeout(
            self.ctr_cmd().args(&args),
            self.dir.path(),
            stdin,
            CTR_TIMEOUT,
        );
        assert!(
            out.status.is_some(),
            "ctr {args:?} hung for {CTR_TIMEOUT:?}; stdout: {}\nstderr: {}",
            out.stdout,
            out.stderr
        );
        out
    }

    /// `ctr args...`, which must succeed; its stdout.
    fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.ctr(args);
        assert!(
            out.success(),
            "ctr {:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// A unique container id and its cgroup (relative: below our own).
    fn names(&self, name: &str) -> (String, String) {
        let id = unique_id(name);
        let cgroup = format!("sprout-test-ctr-{id}");
        self.cgroups.lock().unwrap().push(cgroup.clone());
        (id, cgroup)
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

    /// `ctr task exec [opts] --exec-id <exec_id> <id> <cmd...>`.
    fn exec_args(&self, opts: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["task".into(), "exec".into()];
        a.extend(opts.iter().map(|s| s.to_string()));
        a.push("--fifo-dir".into());
        a.push(self.fifo_dir.display().to_string());
        a.push("--exec-id".into());
        a.push(exec_id.into());
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    fn exec(&self, opts: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> CtrOutput {
        self.ctr(&self.exec_args(opts, id, exec_id, cmd))
    }

    /// (pid, status) of a task per `ctr task ls`.
    fn task(&self, id: &str) -> Option<(i32, String)> {
        let out = self.ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == id).then(|| (f[1].parse().unwrap(), f[2].to_string()))
        })
    }

    fn wait_status(&self, id: &str, status: &str) {
        assert!(
            wait_until(STATE_TIMEOUT, || self
                .task(id)
                .is_some_and(|(_, s)| s == status)),
            "task {id} never became {status}: {:?}",
            self.task(id)
        );
    }

    /// Pids per `ctr task ps`, with the exec id for exec'd processes.
    fn ps(&self, id: &str) -> Vec<(i32, Option<String>)> {
        let out = self.ok(&["task", "ps", id]);
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let (pid, info) = l.trim().split_once(char::is_whitespace)?;
                let exec_id = info
                    .split_once("ExecID:")
                    .map(|(_, r)| r.split(',').next().unwrap_or_default().to_string());
                Some((pid.parse().ok()?, exec_id))
            })
            .collect()
    }

    /// The bundle containerd made for `id` (go-runc's `--log` lives here).
    fn bundle(&self, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task/default")
            .join(id)
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
        assert_eq!(self.ok(&["container", "ls", "-q"]).trim(), "");
        assert!(
            wait_until(STATE_TIMEOUT, || self.shim_pids().is_empty()),
            "shims left behind: {:?}",
            self.shim_pids()
        );
        let left: Vec<_> = fs::read_dir(self.sprout_root.join("default"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "sprout state left in the shim's root: {left:?}"
        );
        assert!(
            wait_until(STATE_TIMEOUT, || processes_in_cgroup_named(cgroup_prefix)
                .is_empty()),
            "processes left behind: {:?}",
            processes_in_cgroup_named(cgroup_prefix)
        );
        let cg = cgroup_leftovers(cgroup_prefix);
        assert!(cg.is_empty(), "cgroups left behind: {cg:?}");
    }

    /// Shim processes serving this containerd.
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.sock.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args.contains(&sock)
                && pid_alive(pid)
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let quick = Duration::from_secs(30);
        // Best effort for a failed test: take down whatever is left.
        let ids = self.ctr_raw(&["container", "ls", "-q"], quick).stdout;
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.ctr_raw(&["task", "kill", "-a", "-s", "KILL", id], quick);
            let _ = self.ctr_raw(&["task", "delete", "-f", id], quick);
            let _ = self.ctr_raw(&["container", "delete", id], quick);
        }
        if let Ok(entries) = fs::read_dir(self.sprout_root.join("default")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = run_with_timeout(
                    Command::new(sprout_bin())
                        .arg("--root")
                        .arg(self.sprout_root.join("default"))
                        .args(["delete", "--force", &id]),
                    self.dir.path(),
                    Stdio::null(),
                    quick,
                );
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(d.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            // SIGKILL (by pid, in wait_child) if it does not stop.
            let _ = wait_child(&mut d, Duration::from_secs(15));
        }
        let kill = |pid: i32| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        // Shims still up (only if something above failed) and their
        // sockets, which live in the host-wide /run/containerd/s.
        let sockets: Vec<PathBuf> =
            fs::read_dir(self.state.join("io.containerd.runtime.v2.task/default"))
                .map(|d| d.flatten().collect::<Vec<_>>())
                .unwrap_or_default()
                .iter()
                .filter_map(|e| fs::read_to_string(e.path().join("address")).ok())
                .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
                .collect();
        self.shim_pids().into_iter().for_each(kill);
        wait_until(Duration::from_secs(10), || self.shim_pids().is_empty());
        for s in sockets {
            let _ = fs::remove_file(s);
        }
        // Whatever still runs in our cgroups (only if something above
        // failed), then the cgroups, deepest first.
        for cg in self.cgroups.lock().unwrap().iter() {
            processes_in_cgroup_named(cg).into_iter().for_each(kill);
            wait_until(Duration::from_secs(10), || {
                processes_in_cgroup_named(cg).is_empty()
            });
            let mut dirs = cgroup_leftovers(cg);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = fs::remove_dir(d);
            }
        }
        if std::thread::panicking() {
            let log = self.daemon_log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- containerd log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

#[test]
fn run_rm_passes_output_stdin_and_exit_codes() {
    let c = Containerd::start();
    let (id, cg) = c.names("rm");
    let out = c.run(
        &["--rm"],
        &cg,
        &id,
        &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"],
    );
    assert_eq!(out.code(), Some(3), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "hi\n");
    assert!(out.stderr.contains("oops"), "{}", out.stderr);

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
    let c = Containerd::start();
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

    // exec: output and exit code come back.
    let out = c.exec(
        &[],
        &id,
        "e1",
        &["/bin/sh", "-c", "echo from-exec; echo exec-err >&2; exit 5"],
    );
    assert_eq!(out.code(), Some(5), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "from-exec\n");
    assert!(out.stderr.contains("exec-err"), "{}", out.stderr);

    // A detached exec shows up in ps with its exec id, and can be killed.
    c.ok(&c.exec_args(&["-d"], &id, "e2", &["/bin/sleep", "1000"]));
    let e2 = {
        let mut found = None;
        assert!(wait_until(STATE_TIMEOUT, || {
            found = c
                .ps(&id)
                .into_iter()
                .find(|(_, e)| e.as_deref() == Some("e2"));
            found.is_some()
        }));
        found.unwrap().0
    };
    assert!(c.ps(&id).iter().any(|(p, e)| *p == pid && e.is_none()));
    c.ok(&["task", "kill", "-s", "KILL", "--exec-id", "e2", &id]);
    assert!(wait_until(STATE_TIMEOUT, || !c
        .ps(&id)
        .iter()
        .any(|(p, _)| *p == e2)));

    // A failing exec is explained from the log.
    let out = c.exec(&[], &id, "e3", &["/nonexistent"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("OCI runtime exec failed") && out.stderr.contains("/nonexistent"),
        "{}",
        out.stderr
    );

    c.ok(&["task", "pause", &id]);
    c.wait_status(&id, "PAUSED");
    c.ok(&["task", "resume", &id]);
    c.wait_status(&id, "RUNNING");

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
    c.ok(&["task", "kill", &id]);
    c.wait_status(&id, "STOPPED");
    // Signalling a stopped init is "not found", as with runc; --all is fine.
    let out = c.ctr(&["task", "kill", "-s", "KILL", &id]);
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    c.ok(&["task", "kill", "-a", "-s", "KILL", &id]);
    let out = c.ctr(&["task", "delete", &id]);
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stderr.contains("exit code 7"), "{}", out.stderr);
    c.ok(&["container", "delete", &id]);
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
    let c = Containerd::start();
    let (id, cg) = c.names("killall");
    c.run_detached(
        &cg,
        &id,
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    assert!(
        wait_until(STATE_TIMEOUT, || c.ps(&id).len() == 3),
        "{:?}",
        c.ps(&id)
    );
    c.ok(&["task", "kill", "-a", "-s", "KILL", &id]);
    c.wait_status(&id, "STOPPED");
    c.ok(&["task", "delete", &id]);
    c.ok(&["container", "delete", &id]);

    // SIGKILL to a paused task: it must not stay frozen (runc thaws).
    let (id2, cg2) = c.names("killpaused");
    c.run_detached(&cg2, &id2, &["/bin/sleep", "1000"]);
    c.ok(&["task", "pause", &id2]);
    c.wait_status(&id2, "PAUSED");
    c.ok(&["task", "kill", "-s", "KILL", &id2]);
    c.wait_status(&id2, "STOPPED");
    c.ok(&["task", "delete", &id2]);
    c.ok(&["container", "delete", &id2]);

    // The same with --all, and a forced delete of a paused task.
    let (id3, cg3) = c.names("rmpaused");
    c.run_detached(&cg3, &id3, &["/bin/sh", "-c", "sleep 1000 & sleep 1000"]);
    assert!(
        wait_until(STATE_TIMEOUT, || c.ps(&id3).len() == 2),
        "{:?}",
        c.ps(&id3)
    );
    c.ok(&["task", "pause", &id3]);
    c.wait_status(&id3, "PAUSED");
    c.ok(&["task", "kill", "-a", "-s", "KILL", &id3]);
    c.wait_status(&id3, "STOPPED");
    c.ok(&["task", "delete", &id3]);
    c.ok(&["container", "delete", &id3]);

    let (id4, cg4) = c.names("forcepaused");
    c.run_detached(&cg4, &id4, &["/bin/sleep", "1000"]);
    c.ok(&["task", "pause", &id4]);
    c.wait_status(&id4, "PAUSED");
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
    let c = Containerd::start();
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

/// Runs ctr on a fresh pty (ctr -t insists on a terminal) of 30x100;
/// returns its status and everything it wrote.
fn ctr_on_pty(c: &Containerd, args: &[String]) -> (Option<ExitStatus>, String) {
    let ws = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&ws, None).unwrap();
    let mut child = {
        let slave: OwnedFd = pty.slave;
        let mut cmd = c.ctr_cmd();
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        cmd.spawn().unwrap()
        // `cmd` and with it our copies of the slave are dropped here, so
        // the master reads EIO once ctr is gone.
    };
    let mut master = fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = wait_child(&mut child, CTR_TIMEOUT);
    (status, reader.join().unwrap())
}

#[test]
fn terminals_for_run_and_exec() {
    let c = Containerd::start();
    let (id, cg) = c.names("tty");
    let args = c.run_args(
        &["--rm", "-t"],
        &cg,
        &id,
        // ctr sets the size by a resize after the start: wait for it.
        &[
            "/bin/sh",
            "-c",
            "tty; i=0; until stty size 2>/dev/null | grep -q '^[1-9]' || [ $i -ge 300 ]; \
             do sleep 0.1; i=$((i+1)); done; stty size; exit 6",
        ],
    );
    let (status, out) = ctr_on_pty(&c, &args);
    assert_eq!(status.and_then(|s| s.code()), Some(6), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("30 100"), "{out}");

    let (id2, cg2) = c.names("ttyexec");
    c.run_detached(&cg2, &id2, &["/bin/sleep", "1000"]);
    let args = c.exec_args(
        &["-t"],
        &id2,
        "t1",
        &["/bin/sh", "-c", "sleep 0.2; tty; echo tty-exec; exit 9"],
    );
    let (status, out) = ctr_on_pty(&c, &args);
    assert_eq!(status.and_then(|s| s.code()), Some(9), "{out}");
    assert!(
        out.contains("/dev/pts/") && out.contains("tty-exec"),
        "{out}"
    );
    c.ok(&["task", "kill", "-s", "KILL", &id2]);
    c.wait_status(&id2, "STOPPED");
    c.ok(&["task", "delete", &id2]);
    c.ok(&["container", "delete", &id2]);
    for cg in [cg, cg2] {
        c.assert_clean(&cg);
    }
}
