//! The `sproutd` binary without containers: its flags, its state
//! directory, its sockets, and the clear errors of a function whose image
//! cannot be loaded. (Instances, the side channel and the
//! CLI clients are tested end to end in the workspace's tests/sproutd.rs.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sprout_shim::client::{Client, ClientError};
use sprout_shim::proto::SignalArg;
use sprout_shim::registry::FunctionSpec;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    side: PathBuf,
}

fn sproutd(dir: &Path, root: &str, socket: &Path, side: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sproutd"));
    c.arg("--root")
        .arg(dir.join(root))
        .arg("--socket")
        .arg(socket)
        .arg("--side-socket")
        .arg(side)
        // No container is started here: any existing file will do.
        .arg("--init-binary")
        .arg("/bin/true")
        .stdin(Stdio::null());
    c
}

impl Daemon {
    fn start(dir: &Path) -> Self {
        let mut d = Daemon {
            child: None,
            dir: dir.to_path_buf(),
            socket: dir.join("api.sock"),
            side: dir.join("side.sock"),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let mut child = sproutd(&self.dir, "root", &self.socket, &self.side)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Client::new(&self.socket);
        let deadline = Instant::now() + TIMEOUT;
        while c.info().is_err() {
            assert!(
                child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "sproutd did not come up: {}",
                fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGTERM by pid; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill with plain integers: our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with plain integers: our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    fs::create_dir_all(b.join("rootfs")).unwrap();
    fs::write(
        b.join("config.json"),
        serde_json::json!({
            "ociVersion": "1.2.0",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
        .to_string(),
    )
    .unwrap();
    b
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn a_function_with_no_image_fails_clearly_and_the_registry_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    let c = Client::new(&d.socket);
    let info = c.info().unwrap();
    assert_eq!(info.engine, "sfork");
    assert_eq!(info.side_socket.as_deref(), Some(d.side.as_path()));
    let image = tmp.path().join("image");
    fs::create_dir_all(&image).unwrap();
    let mut f = FunctionSpec {
        name: "f".into(),
        image,
        bundle: bundle(tmp.path()),
        vpc: Some("blue".into()),
        after_fork_signal: Some(SignalArg::Name("USR2".into())),
        resources: None,
        concurrency: 4,
        callers: None,
    };
    // No VPC "blue" in sproutd's netplug root: a clear 400, nothing added.
    let (st, m) = status_of(c.add_function(&f));
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("no VPC named blue"), "{m}");
    assert!(m.contains(&info.netplug_root.display().to_string()), "{m}");
    assert_eq!(info.netplug_root, tmp.path().join("root/runtime"));
    // A signal that cannot be handled: 400 too.
    f.vpc = None;
    f.after_fork_signal = Some(SignalArg::Name("KILL".into()));
    let (st, m) = status_of(c.add_function(&f));
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("after_fork_signal"), "{m}");
    assert!(c.functions().unwrap().is_empty());
    f.after_fork_signal = Some(SignalArg::Name("USR2".into()));
    c.add_function(&f).unwrap();

    let (st, m) =
        status_of(c.call::<serde_json::Value>("POST", "/functions/f/template", None::<&()>));
    assert_eq!(st, 400, "{m}");
    assert!(
        m.contains(&tmp.path().join("image").display().to_string()),
        "{m}"
    );
    let (st, m) = status_of(c.fork(
        "f",
        &sprout_shim::proto::ForkBody {
            id: "i".into(),
            ..Default::default()
        },
    ));
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("image"), "{m}");
    // Nothing is left of the failed fork.
    assert!(c.instances().unwrap().is_empty());
    assert!(c.function("f").unwrap().instances.is_empty());
    let root = tmp.path().join("root");
    assert_eq!(fs::read_dir(root.join("instances")).unwrap().count(), 0);
    // Only netplug's state directory is in the runtime root.
    let runtime: Vec<_> = fs::read_dir(root.join("runtime"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(runtime, [".netplug"]);

    // SIGTERM: a clean exit that removes the sockets; the registry stays.
    assert!(d.stop().success());
    assert!(!d.socket.exists() && !d.side.exists());
    d.spawn();
    let back = c.function("f").unwrap().function;
    assert_eq!(back, f);
}

#[test]
fn a_socket_in_use_is_refused_and_a_stale_one_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let out = sproutd(&other, "root", &d.socket, &other.join("side.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by a running server"), "{err}");
    assert!(
        Client::new(&d.socket).info().is_ok(),
        "the first one still serves"
    );
    drop(d);

    // Killed: its socket files stay behind, and the next start replaces
    // them.
    assert!(tmp.path().join("api.sock").exists());
    let d = Daemon::start(tmp.path());
    assert!(Client::new(&d.socket).info().is_ok());
}

#[test]
fn the_test_engine_is_not_advertised() {
    let out = Command::new(env!("CARGO_BIN_EXE_sproutd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--socket"), "{help}");
    assert!(!help.contains("fake"), "{help}");
}
