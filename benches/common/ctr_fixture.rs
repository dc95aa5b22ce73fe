//! What the containerd bench stands on besides the test harness: the
//! binaries it needs, a sproutd of its own, and the check that nothing of
//! the run is left.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sprout::shim::client::Client;
use sprout::shim::registry::FunctionSpec;

use crate::harness::containerd::{bin_dir, kill_pid, pids_of};
use crate::harness::{self, init_bin, sprout_bin};
use crate::timeline::parse_rfc3339;

/// How long sproutd may take to come up.
const UP: Duration = Duration::from_secs(60);

/// runc and containerd's runc shim, if both are installed.
pub fn runc_available() -> bool {
    let shim = Path::new("/usr/bin/containerd-shim-runc-v2").exists();
    let path = std::env::var("PATH").unwrap_or_default();
    let runc = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .any(|d| Path::new(d).join("runc").exists());
    shim && runc
}

/// The release binaries containerd and the bench run, which `cargo bench`
/// does not build (another package); warns when sources changed since.
pub fn check_binaries() {
    let newest_source = ["shim/src", "runtime/src", "snapshot/src", "netplug/src"]
        .iter()
        .flat_map(|d| rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(d)))
        .filter_map(|f| f.metadata().and_then(|m| m.modified()).ok())
        .max();
    for name in ["containerd-shim-sprout-v2", "sproutd", "sprout-init"] {
        let p = bin_dir().join(name);
        let built = p.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --release -p sprout -p sprout-shim --bins` first",
                p.display()
            )
        });
        if newest_source.is_some_and(|s| s > built) {
            eprintln!(
                "warning: {} is older than the newest source file; rebuild with \
                 `cargo build --release -p sprout -p sprout-shim --bins`",
                p.display()
            );
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// sproutd (the template engine) for template containers, under `dir`:
/// its sockets go into containerd's environment, which the shims inherit.
/// Dropped: the function's template is dropped, sproutd stopped by pid,
/// and whatever its runtime root still holds deleted.
pub struct Sproutd {
    child: Option<Child>,
    root: PathBuf,
    socket: PathBuf,
    side: PathBuf,
    log: PathBuf,
    functions: Mutex<Vec<String>>,
}

impl Sproutd {
    pub fn start(dir: &Path) -> Sproutd {
        Sproutd::start_with_args(dir, &[])
    }

    /// The same with more arguments for sproutd (`--pool-cgroup`, ...).
    pub fn start_with_args(dir: &Path, args: &[&str]) -> Sproutd {
        let (root, socket, side, log) = (
            dir.join("sproutd"),
            dir.join("api.sock"),
            dir.join("side.sock"),
            dir.join("sproutd.log"),
        );
        let logf = File::create(&log).unwrap();
        let child = Command::new(bin_dir().join("sproutd"))
            .arg("--root")
            .arg(&root)
            .arg("--socket")
            .arg(&socket)
            .arg("--side-socket")
            .arg(&side)
            .arg("--init-binary")
            .arg(init_bin())
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("starting sproutd");
        let d = Sproutd {
            child: Some(child),
            root,
            socket,
            side,
            log,
            functions: Mutex::default(),
        };
        assert!(
            harness::wait_until(UP, || d.client().info().is_ok()),
            "sproutd did not come up: {}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        d
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    pub fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("SPROUTD_SOCKET", self.socket.as_path()),
            ("SPROUTD_SIDE_SOCKET", self.side.as_path()),
        ]
    }

    /// Registers the function and loads its template now (not at the
    /// first fork).
    pub fn add_function(&self, spec: &FunctionSpec) {
        self.client().add_function(spec).unwrap();
        self.functions.lock().unwrap().push(spec.name.clone());
        let _: serde_json::Value = self
            .client()
            .call(
                "POST",
                &format!("/functions/{}/template", spec.name),
                None::<&()>,
            )
            .unwrap_or_else(|e| panic!("loading the template of {}: {e}", spec.name));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// When sproutd's fork of `instance` ended (its "instance forked" log
    /// line) and how long the fork took by its own clock.
    pub fn forked(&self, instance: &str) -> Option<(SystemTime, Duration)> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            if f["message"] != "instance forked" || f["container"] != instance {
                return None;
            }
            let at = parse_rfc3339(v["timestamp"].as_str()?)?;
            Some((at, Duration::from_micros(f["us"].as_u64()?)))
        })
    }
}

impl Drop for Sproutd {
    fn drop(&mut self) {
        for f in self.functions.lock().unwrap().drain(..) {
            if let Err(e) = self.client().remove_function(&f) {
                eprintln!("removing function {f}: {e}");
            }
        }
        if let Some(mut c) = self.child.take() {
            kill_pid(c.id() as i32);
            let _ = c.wait();
        }
        let runtime = self.root.join("runtime");
        for e in std::fs::read_dir(&runtime).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !id.starts_with('.') {
                let _ = Command::new(sprout_bin())
                    .arg("--root")
                    .arg(&runtime)
                    .args(["delete", "--force", &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// What must be gone once the bench is: checked after everything dropped.
pub struct Traces {
    /// This process: every container id and cgroup of the run carries it.
    pub pid: u32,
    /// Temp dirs: gone, nothing mounted below them.
    pub dirs: Vec<PathBuf>,
    /// containerd and sproutd.
    pub daemons: Vec<i32>,
    /// Shims serving this address: none.
    pub containerd_sock: String,
    /// The named network namespace the functions joined.
    pub netns: String,
}

impl Traces {
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        // Every container id and cgroup of this run carries `-<pid>-`.
        let tag = format!("-{}-", self.pid);
        left.extend(
            harness::cgroup_leftovers(&tag)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("sprout-test-"))
                .map(|p| format!("cgroup {}", p.display())),
        );
        for pid in harness::processes_in_cgroup_named(&tag) {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cg.contains("sprout-test-") {
                left.push(format!("process {pid} in {}", cg.trim()));
            }
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for d in &self.dirs {
            let d = d.to_string_lossy();
            left.extend(
                mountinfo
                    .lines()
                    .filter(|l| l.contains(d.as_ref()))
                    .map(|l| format!("mount {l}")),
            );
        }
        left.extend(
            self.dirs
                .iter()
                .filter(|d| d.exists())
                .map(|d| format!("dir {}", d.display())),
        );
        left.extend(
            self.daemons
                .iter()
                .filter(|p| harness::pid_alive(**p))
                .map(|p| format!("daemon {p}")),
        );
        for shim in ["containerd-shim-sprout-v2", "containerd-shim-runc-v2"] {
            left.extend(
                pids_of(shim, &self.containerd_sock)
                    .into_iter()
                    .map(|p| format!("{shim} {p}")),
            );
        }
        if Path::new(&self.netns).exists() {
            left.push(format!("netns {}", self.netns));
        }
        left
    }
}
