//! A private containerd for tests: own root, state, socket and config
//! under a temp dir, `ctr` against it with timeouts, a busybox image built
//! locally (an OCI layout tarball, no registry), and a cleanup that stops
//! the daemon by pid and removes whatever a failed test left.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Generous: a shared, noisy 2-core machine.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);
pub const STATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The image every test imports.
pub const BUSYBOX_REF: &str = "localhost/sprout-busybox:latest";

static N: AtomicU32 = AtomicU32::new(0);

pub struct CtrOutput {
    /// `None`: killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CtrOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` with stdout/stderr in files (a detached task may inherit
/// ctr's pipes), killing it after `timeout`.
pub fn run_with_timeout(
    cmd: &mut Command,
    dir: &Path,
    stdin: Stdio,
    timeout: Duration,
) -> CtrOutput {
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

/// Waits for `child`, killing it (by its pid) after `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

/// The directory of the workspace's built binaries (where cargo put
/// `sprout`, `sprout-init` and `containerd-shim-sprout-v2`).
pub fn bin_dir() -> PathBuf {
    Path::new(sprout_bin()).parent().unwrap().to_path_buf()
}

pub fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Pids of live processes whose command line starts with a path ending in
/// `name` and mentions `arg`.
pub fn pids_of(name: &str, arg: &str) -> Vec<i32> {
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
        if args.first().is_some_and(|a| a.ends_with(name))
            && args.iter().any(|a| a == arg)
            && pid_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A private containerd, stopped (by pid) and cleaned up on drop, also
/// when the test fails. Shims are found on its `PATH`, which starts with
/// the workspace's binaries.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    pub sock: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    /// ctr's stdio fifos (`--fifo-dir`): ours, since detached tasks leave
    /// theirs behind.
    pub fifo_dir: PathBuf,
    /// cgroups handed out by `names`, for the cleanup of a failed test.
    cgroups: Mutex<Vec<String>>,
    /// Extra cleanup for a failed test, run before the daemon stops.
    on_drop: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// Extra cleanup for a failed test, run once containers are removed
    /// and before the daemon stops.
    after_containers: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// Extra environment of the daemon.
    env: Vec<(String, PathBuf)>,
}

impl Containerd {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// With extra environment for the daemon (and so its shims).
    pub fn start_with_env(env: &[(&str, &Path)]) -> Self {
        for bin in ["/usr/bin/containerd", "/usr/bin/ctr"] {
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
        let mut c = Containerd {
            fifo_dir: d.join("fifo"),
            cgroups: Mutex::new(Vec::new()),
            on_drop: Mutex::new(Vec::new()),
            after_containers: Mutex::new(Vec::new()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_path_buf()))
                .collect(),
            dir,
            daemon: None,
            sock,
            root,
            state,
        };
        c.spawn_daemon();
        c
    }

    /// Starts the daemon on this root, state and config; waits until it
    /// answers.
    fn spawn_daemon(&mut self) {
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let daemon = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.sock)
            .env("PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .ctr_raw(&["version"], Duration::from_secs(20))
                .success()
            {
                break;
            }
            let exited = self.daemon.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "containerd did not come up ({exited:?}):\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon and starts it again: shims and tasks live on, and
    /// containerd reconnects to them.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.spawn_daemon();
    }

    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().map_or(0, |d| d.id() as i32)
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `f` when the test ends, before the daemon stops.
    pub fn on_drop(&self, f: impl FnOnce() + Send + 'static) {
        self.on_drop.lock().unwrap().push(Box::new(f));
    }

    /// Runs `f` when the test ends, after the best-effort removal of the
    /// containers left and before the daemon stops.
    pub fn on_drop_after_containers(&self, f: impl FnOnce() + Send + 'static) {
        self.after_containers.lock().unwrap().push(Box::new(f));
    }

    pub fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address").arg(&self.sock);
        c
    }

    pub fn ctr_raw(&self, args: &[&str], timeout: Duration) -> CtrOutput {
        run_with_timeout(
            self.ctr_cmd().args(args),
            self.dir.path(),
            Stdio::null(),
            timeout,
        )
    }

    /// `ctr args...`; panics if it hangs.
    pub fn ctr<S: AsRef<str>>(&self, args: &[S]) -> CtrOutput {
        self.ctr_stdin(args, None)
    }

    pub fn ctr_stdin<S: AsRef<str>>(&self, args: &[S], input: Option<&str>) -> CtrOutput {
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
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
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

    /// A unique container id and its cgroup (relative: below our own,
    /// which containerd and its shims inherit).
    pub fn names(&self, name: &str) -> (String, String) {
        let id = unique_id(name);
        let cgroup = format!("sprout-test-ctr-{id}");
        self.cgroups.lock().unwrap().push(cgroup.clone());
        (id, cgroup)
    }

    /// Imports an image tarball (see [`busybox_image_tar`]).
    pub fn import(&self, tar: &Path) {
        self.ok(&["images", "import", tar.to_str().unwrap()]);
    }

    /// `ctr task exec [opts] --fifo-dir <ours> --exec-id <exec_id> <id> <cmd...>`.
    pub fn exec_args(&self, opts: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["task".into(), "exec".into()];
        a.extend(opts.iter().map(|s| s.to_string()));
        a.extend([
            "--fifo-dir".into(),
            self.fifo_dir.display().to_string(),
            "--exec-id".into(),
            exec_id.into(),
            id.into(),
        ]);
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// (pid, status) of a task per `ctr task ls`.
    pub fn task(&self, id: &str) -> Option<(i32, String)> {
        let out = self.ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == id).then(|| (f[1].parse().unwrap(), f[2].to_string()))
        })
    }

    pub fn wait_status(&self, id: &str, status: &str) {
        assert!(
            wait_until(STATE_TIMEOUT, || self
                .task(id)
                .is_some_and(|(_, s)| s == status)),
            "task {id} never became {status}: {:?}",
            self.task(id)
        );
    }

    /// `ctr task pause`, waiting until the task is paused.
    pub fn pause(&self, id: &str) {
        self.ok(&["task", "pause", id]);
        self.wait_status(id, "PAUSED");
    }

    /// `ctr task resume`, waiting until the task runs.
    pub fn resume(&self, id: &str) {
        self.ok(&["task", "resume", id]);
        self.wait_status(id, "RUNNING");
    }

    /// `ctr task kill [opts] <id>`, waiting until the task stopped.
    pub fn kill_until_stopped(&self, opts: &[&str], id: &str) {
        let mut args = vec!["task", "kill"];
        args.extend_from_slice(opts);
        args.push(id);
        self.ok(&args);
        self.wait_status(id, "STOPPED");
    }

    /// `ctr task delete` and `ctr container delete`, which must succeed.
    pub fn remove(&self, id: &str) {
        self.ok(&["task", "delete", id]);
        self.ok(&["container", "delete", id]);
    }

    /// Waits until `ctr task ps` lists `n` processes of task `id`.
    pub fn wait_process_count(&self, id: &str, n: usize) {
        assert!(
            wait_until(STATE_TIMEOUT, || self.ps(id).len() == n),
            "{:?}",
            self.ps(id)
        );
    }

    /// The pid of exec `exec_id` of task `id`, once `ctr task ps` shows it.
    pub fn exec_pid(&self, id: &str, exec_id: &str) -> i32 {
        let mut found = None;
        assert!(
            wait_until(STATE_TIMEOUT, || {
                found = self
                    .ps(id)
                    .into_iter()
                    .find(|(_, e)| e.as_deref() == Some(exec_id));
                found.is_some()
            }),
            "{:?}",
            self.ps(id)
        );
        found.unwrap().0
    }

    /// Kills exec `exec_id` (pid `pid`) of task `id` and waits until `ctr
    /// task ps` no longer shows it.
    pub fn kill_exec(&self, id: &str, exec_id: &str, pid: i32) {
        self.ok(&["task", "kill", "-s", "KILL", "--exec-id", exec_id, id]);
        assert!(wait_until(STATE_TIMEOUT, || !self
            .ps(id)
            .iter()
            .any(|(p, _)| *p == pid)));
    }

    /// Execs in running task `id`, whose init is `init_pid`: output and
    /// exit code come back; a detached exec shows up in `ctr task ps` with
    /// its exec id, beside the init, and can be killed.
    pub fn assert_execs_work(&self, id: &str, init_pid: i32) {
        let out = self.ctr(&self.exec_args(
            &[],
            id,
            "e1",
            &["/bin/sh", "-c", "echo from-exec; echo exec-err >&2; exit 5"],
        ));
        assert_eq!(out.code(), Some(5), "stderr: {}", out.stderr);
        assert_eq!(out.stdout, "from-exec\n");
        assert!(out.stderr.contains("exec-err"), "{}", out.stderr);

        self.ok(&self.exec_args(&["-d"], id, "e2", &["/bin/sleep", "1000"]));
        let e2 = self.exec_pid(id, "e2");
        assert!(
            self.ps(id)
                .iter()
                .any(|(p, e)| *p == init_pid && e.is_none())
        );
        self.kill_exec(id, "e2", e2);
    }

    /// Stops task `id` by SIGTERM (the default signal) and deletes it,
    /// checking on the way that a signal to the stopped init is "not
    /// found" (as with runc) while `--all` is fine, and that the delete
    /// reports exit code `code`.
    pub fn terminate_and_delete(&self, id: &str, code: i32) {
        self.kill_until_stopped(&[], id);
        let out = self.ctr(&["task", "kill", "-s", "KILL", id]);
        assert!(
            !out.success() && out.stderr.contains("not found"),
            "{}",
            out.stderr
        );
        self.ok(&["task", "kill", "-a", "-s", "KILL", id]);
        let out = self.ctr(&["task", "delete", id]);
        assert!(out.success(), "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("exit code {code}")),
            "{}",
            out.stderr
        );
        self.ok(&["container", "delete", id]);
    }

    /// Pids per `ctr task ps`, with the exec id for exec'd processes.
    pub fn ps(&self, id: &str) -> Vec<(i32, Option<String>)> {
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

    /// The bundle containerd made for `id` in namespace `default`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task/default")
            .join(id)
    }

    /// Shim processes (any runtime) serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let sock = self.sock.to_string_lossy().into_owned();
        let mut pids = pids_of("containerd-shim-runc-v2", &sock);
        pids.extend(pids_of("containerd-shim-sprout-v2", &sock));
        pids
    }

    /// No container records are left, and the shims `shims` lists go
    /// away.
    pub fn assert_no_containers(&self, shims: impl Fn(&Self) -> Vec<i32>) {
        assert_eq!(self.ok(&["container", "ls", "-q"]).trim(), "");
        assert!(
            wait_until(STATE_TIMEOUT, || shims(self).is_empty()),
            "shims left behind: {:?}",
            shims(self)
        );
    }

    /// Stops the daemon (by pid), SIGKILL if it does not stop.
    pub fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(d.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = wait_child(&mut d, Duration::from_secs(15));
        }
    }

    /// Removes what a failed test left in its cgroups: processes, then
    /// the cgroups, deepest first.
    fn clean_cgroups(&self) {
        for cg in self.cgroups.lock().unwrap().iter() {
            processes_in_cgroup_named(cg).into_iter().for_each(kill_pid);
            wait_until(Duration::from_secs(10), || {
                processes_in_cgroup_named(cg).is_empty()
            });
            let mut dirs = cgroup_leftovers(cg);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let quick = Duration::from_secs(30);
        for f in self.on_drop.lock().unwrap().drain(..) {
            f();
        }
        // Best effort for a failed test: take down whatever is left.
        let ids = self.ctr_raw(&["container", "ls", "-q"], quick).stdout;
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.ctr_raw(&["task", "kill", "-a", "-s", "KILL", id], quick);
            let _ = self.ctr_raw(&["task", "delete", "-f", id], quick);
            let _ = self.ctr_raw(&["container", "delete", id], quick);
        }
        for f in self.after_containers.lock().unwrap().drain(..) {
            f();
        }
        // Shim sockets live in the host-wide /run/containerd/s; the
        // bundles name them.
        let sockets: Vec<PathBuf> = fs::read_dir(self.state.join("io.containerd.runtime.v2.task"))
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .iter()
            .flat_map(|ns| fs::read_dir(ns.path()).into_iter().flatten().flatten())
            .filter_map(|e| fs::read_to_string(e.path().join("address")).ok())
            .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
            .collect();
        let panicking = std::thread::panicking();
        let shim_logs: Vec<String> = if panicking {
            fs::read_dir(self.state.join("sprout-shim/default/logs"))
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| fs::read_to_string(e.path()).ok())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.stop_daemon();
        self.shim_pids().into_iter().for_each(kill_pid);
        wait_until(Duration::from_secs(10), || self.shim_pids().is_empty());
        for s in sockets {
            let _ = fs::remove_file(s);
        }
        self.clean_cgroups();
        // Mounts a failed test left (a shim's rootfs mounts), deepest first.
        let tmp = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<PathBuf> = sprout::runtime::mountinfo::read_self()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&tmp))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if panicking {
            let log = self.daemon_log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- containerd log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            for l in shim_logs {
                eprintln!("--- shim log ---\n{l}");
            }
        }
    }
}

/// Nothing runs in cgroup `name` (given time to go) and nothing of it
/// is left.
pub fn assert_cgroup_clean(name: &str) {
    assert!(
        wait_until(STATE_TIMEOUT, || processes_in_cgroup_named(name).is_empty()),
        "processes left behind: {:?}",
        processes_in_cgroup_named(name)
    );
    let dirs = cgroup_leftovers(name);
    assert!(dirs.is_empty(), "cgroups left behind: {dirs:?}");
}

/// The names in `dir`; none if it does not exist.
pub fn dir_entries(dir: &Path) -> Vec<OsString> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// Runs ctr on a fresh pty (ctr -t insists on a terminal) of 30x100;
/// returns its status and everything it wrote.
pub fn ctr_on_pty(c: &Containerd, args: &[String]) -> (Option<ExitStatus>, String) {
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

/// A task's command for [`assert_output_run`]: writes to stdout and
/// stderr, exits 3.
pub const OUTPUT_CMD: [&str; 3] = ["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"];

/// A foreground `ctr run` of [`OUTPUT_CMD`]: its stdout, stderr and exit
/// code came back.
pub fn assert_output_run(out: &CtrOutput) {
    assert_eq!(out.code(), Some(3), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "hi\n");
    assert!(out.stderr.contains("oops"), "{}", out.stderr);
}

/// A task's command for [`assert_tty_run`]: prints its terminal, waits
/// until ctr has set the size (by a resize after the start), prints it,
/// exits 6.
pub const TTY_SIZE_CMD: [&str; 3] = [
    "/bin/sh",
    "-c",
    "tty; i=0; until stty size 2>/dev/null | grep -q '^[1-9]' || [ $i -ge 300 ]; \
     do sleep 0.1; i=$((i+1)); done; stty size; exit 6",
];

/// `ctr run -t ...` (`args`, running [`TTY_SIZE_CMD`]) on a 30x100 pty:
/// the task ran on a pty of that size and its exit code came back.
pub fn assert_tty_run(c: &Containerd, args: &[String]) {
    let (status, out) = ctr_on_pty(c, args);
    assert_eq!(status.and_then(|s| s.code()), Some(6), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("30 100"), "{out}");
}

/// `ctr task exec -t` in running task `id`, on a pty: the exec ran on a
/// pty, its output and exit code came back.
pub fn assert_tty_exec(c: &Containerd, id: &str) {
    let args = c.exec_args(
        &["-t"],
        id,
        "t1",
        &["/bin/sh", "-c", "sleep 0.2; tty; echo tty-exec; exit 9"],
    );
    let (status, out) = ctr_on_pty(c, &args);
    assert_eq!(status.and_then(|s| s.code()), Some(9), "{out}");
    assert!(
        out.contains("/dev/pts/") && out.contains("tty-exec"),
        "{out}"
    );
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes `bytes` as a blob of an OCI layout; returns its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let tmp = layout.join("blob.tmp");
    fs::write(&tmp, bytes).unwrap();
    let digest = sha256_of(&tmp);
    fs::rename(&tmp, layout.join("blobs/sha256").join(&digest)).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len()})
}

/// A busybox image as an OCI layout tarball (one uncompressed layer),
/// its rootfs completed by `prepare`; its index names [`BUSYBOX_REF`].
pub fn busybox_image_tar(prepare: impl FnOnce(&Path)) -> PathBuf {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_id("bb-image"));
    let rootfs = work.join("rootfs");
    make_busybox_rootfs(&rootfs);
    prepare(&rootfs);
    let layout = work.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer_tar = work.join("layer.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the busybox layer");
    let layer_bytes = fs::read(&layer_tar).unwrap();
    let layer = blob(
        &layout,
        "application/vnd.oci.image.layer.v1.tar",
        &layer_bytes,
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"].clone()]}
    });
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer]
    });
    let mut manifest = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    manifest["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": BUSYBOX_REF});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = work.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the image layout");
    let _ = fs::remove_dir_all(&rootfs);
    tar
}
