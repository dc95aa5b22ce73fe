//! A sproutd of a test's own: started on a state directory inside the
//! test's sandbox (real or fake engine), stopped by pid, and whatever
//! instances and template holders it leaves deleted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sprout::shim::client::{Client, ClientError};
use sprout::shim::registry::FunctionSpec;

use super::*;

/// Generous: a shared, noisy 2-core machine. Never a performance claim.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn sproutd_bin() -> PathBuf {
    let p = Path::new(sprout_bin()).with_file_name("sproutd");
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries (cargo test --workspace does)",
        p.display()
    );
    p
}

/// A sproutd process on a state directory under the sandbox.
pub struct Sproutd {
    pub fake: bool,
    pub child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub side: PathBuf,
    pub log: PathBuf,
    /// The cgroup its pool instances are forked under (named after the
    /// sandbox's, so the leftover checks see it).
    pub pool_cgroup: String,
    /// Extra arguments for every start.
    pub extra_args: Vec<String>,
}

impl Sproutd {
    /// With the test-only fake engine.
    pub fn start(s: &Sandbox) -> Self {
        Self::start_with(s, true)
    }

    /// With the real template engine.
    pub fn start_real(s: &Sandbox) -> Self {
        Self::start_with(s, false)
    }

    pub fn start_with(s: &Sandbox, fake: bool) -> Self {
        Self::start_with_args(s, fake, &[])
    }

    pub fn start_with_args(s: &Sandbox, fake: bool, args: &[&str]) -> Self {
        let dir = s.dir.path();
        let mut d = Sproutd {
            fake,
            child: None,
            root: dir.join("sproutd"),
            socket: dir.join("api.sock"),
            side: dir.join("side.sock"),
            log: dir.join("sproutd.log"),
            pool_cgroup: format!("{}-pool", s.cgroup),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        d.spawn();
        d
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(sproutd_bin());
        c.arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--side-socket")
            .arg(&self.side)
            .arg("--init-binary")
            .arg(init_bin())
            .arg("--pool-cgroup")
            .arg(&self.pool_cgroup)
            .args(&self.extra_args)
            .arg("--debug");
        if self.fake {
            c.arg("--fake-engine");
        }
        c
    }

    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let c = self.client();
        let up = wait_until(TIMEOUT, || {
            c.info().is_ok() || self.child.as_mut().unwrap().try_wait().unwrap().is_some()
        });
        assert!(
            up && c.info().is_ok(),
            "sproutd did not come up: {}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM by pid, and wait for it to exit: a graceful stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with plain integers: our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// SIGKILL by pid, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with plain integers: our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// `sprout --root <runtime root>`, to inspect and clean up the
    /// instances behind sproutd's back.
    pub fn runtime_cli(&self) -> Command {
        let mut c = Command::new(sprout_bin());
        c.arg("--root").arg(self.root.join("runtime"));
        c
    }

    /// Instance state directories left in the runtime root (not
    /// netplug's `.netplug`).
    pub fn runtime_ids(&self) -> Vec<String> {
        fs::read_dir(self.root.join("runtime"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Sproutd {
    fn drop(&mut self) {
        self.kill9();
        for id in self.runtime_ids() {
            let _ = self
                .runtime_cli()
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // The template holders outlive sproutd by design.
        delete_all_in(&self.root.join("engine/holders"));
        // The pool's parent cgroups with their function directories,
        // children first (empty by now).
        fn remove_tree(dir: &Path) {
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_tree(&e.path());
                    }
                }
            }
            let _ = fs::remove_dir(dir);
        }
        for d in cgroup_leftovers(&self.pool_cgroup) {
            remove_tree(&d);
        }
    }
}

pub fn function(name: &str, s: &Sandbox) -> FunctionSpec {
    let image = s.dir.path().join("image");
    fs::create_dir_all(&image).unwrap();
    FunctionSpec {
        name: name.into(),
        image,
        bundle: s.bundle.clone(),
        vpc: None,
        after_fork_signal: None,
        resources: None,
        concurrency: 1,
        callers: None,
    }
}

pub fn api_status(r: Result<impl Sized, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, message }) => (status, message),
        Err(e) => panic!("expected an API error, got {e}"),
        Ok(_) => panic!("expected an API error, got success"),
    }
}

/// Nothing of the instances is left: state, cgroups, processes.
pub fn assert_clean(s: &Sandbox, d: &Sproutd) {
    assert!(
        d.runtime_ids().is_empty(),
        "instances left in the runtime root: {:?}",
        d.runtime_ids()
    );
    let records: Vec<_> = fs::read_dir(d.root.join("instances"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(records.is_empty(), "instance records left: {records:?}");
    let cg = cgroup_leftovers(&s.cgroup);
    assert!(cg.is_empty(), "cgroups left behind: {cg:?}");
    let procs = processes_in_cgroup_named(&s.cgroup);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let tmp = s.dir.path().to_str().unwrap();
    assert!(!mounts.contains(tmp), "mounts under {tmp} left behind");
}

pub fn assert_holders_gone(d: &Sproutd) {
    assert!(
        wait_until(TIMEOUT, || holders_left(d).is_empty()),
        "holders left: {:?}\n{}",
        holders_left(d),
        d.log_text()
    );
}

/// Holders (the sandboxes templates live in) left in the engine's runtime.
pub fn holders_left(d: &Sproutd) -> Vec<String> {
    fs::read_dir(d.root.join("engine/holders"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "file-hashes")
                .collect()
        })
        .unwrap_or_default()
}
