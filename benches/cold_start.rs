//! Cold start of a busybox `true` container, sprout against runc in the
//! same run:
//! - `lifecycle/*`: create + start + wait + delete, each a CLI call, the
//!   bench process acting as subreaper (as containerd's shim does) so it
//!   can wait for the container's init;
//! - `run/*`: one foreground `run` (create, start, wait, delete in one call);
//! - `library/sprout`: the same lifecycle through the embedding API, no CLI.
//!
//! It also prints the peak RSS of the `create` process of each runtime.
//! runc is skipped when it is not installed.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

struct Fixture {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    sprout_root: PathBuf,
    runc_root: PathBuf,
    sprout: PathBuf,
    init: PathBuf,
}

fn bin(name: &str) -> PathBuf {
    // benches run from target/<triple>/release/deps; the binaries sit one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built (cargo bench builds it)",
        p.display()
    );
    p
}

fn busybox_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"],
            "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": format!("sprout-bench-{}", std::process::id()),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    bundle
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sprout-bench-")
            .tempdir()
            .unwrap();
        let bundle = busybox_bundle(dir.path());
        Fixture {
            bundle,
            sprout_root: dir.path().join("sprout-state"),
            runc_root: dir.path().join("runc-state"),
            sprout: bin("sprout"),
            init: bin("sprout-init"),
            _dir: dir,
        }
    }

    fn runtime_cmd(&self, runtime: &Path, root: &Path) -> Command {
        let mut c = Command::new(runtime);
        c.arg("--root").arg(root);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// create, start, wait for the init (we are its subreaper), delete.
    fn lifecycle(&self, runtime: &Path, root: &Path, id: &str) {
        let pid_file = root.with_extension("pid");
        let st = self
            .runtime_cmd(runtime, root)
            .args(["create", "--bundle"])
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .status()
            .unwrap();
        assert!(st.success(), "create failed");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            self.runtime_cmd(runtime, root)
                .args(["start", id])
                .status()
                .unwrap()
                .success()
        );
        let mut status = 0;
        // SAFETY: waitpid on a child (reparented to us as subreaper).
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            self.runtime_cmd(runtime, root)
                .args(["delete", id])
                .status()
                .unwrap()
                .success()
        );
    }

    fn run(&self, runtime: &Path, root: &Path, id: &str) {
        let st = self
            .runtime_cmd(runtime, root)
            .args(["run", "--bundle"])
            .arg(&self.bundle)
            .arg(id)
            .status()
            .unwrap();
        assert!(st.success(), "run failed: {st:?}");
    }

    /// Peak RSS (KiB) of one `create` call, from wait4's rusage.
    fn create_peak_rss(&self, runtime: &Path, root: &Path, id: &str) -> i64 {
        let pid_file = root.with_extension("pid");
        // Waited for with wait4 below (for its rusage), not Child::wait.
        #[allow(clippy::zombie_processes)]
        let child = self
            .runtime_cmd(runtime, root)
            .args(["create", "--bundle"])
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid initial value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid pointers.
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(std::process::ExitStatus::from_raw(status).code(), Some(0));
        let _ = self
            .runtime_cmd(runtime, root)
            .args(["delete", "--force", id])
            .status();
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: reap the killed init, reparented to us.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        usage.ru_maxrss
    }
}

fn runc() -> Option<PathBuf> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn bench(c: &mut Criterion) {
    // Orphaned container inits become our children, so we can wait for
    // them like containerd's shim does.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let f = Fixture::new();
    let runc = runc();

    let sprout_rss = f.create_peak_rss(&f.sprout, &f.sprout_root, "rss");
    match &runc {
        Some(r) => {
            let runc_rss = f.create_peak_rss(r, &f.runc_root, "rss");
            println!(
                "peak RSS of `create`: sprout {sprout_rss} KiB, runc {runc_rss} KiB (ratio {:.2})",
                sprout_rss as f64 / runc_rss as f64
            );
        }
        None => println!("peak RSS of `create`: sprout {sprout_rss} KiB (runc not installed)"),
    }

    let mut g = c.benchmark_group("lifecycle");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("sprout", |b| {
        b.iter(|| f.lifecycle(&f.sprout, &f.sprout_root, "lc"))
    });
    if let Some(r) = &runc {
        g.bench_function("runc", |b| b.iter(|| f.lifecycle(r, &f.runc_root, "lc")));
    }
    g.finish();

    let mut g = c.benchmark_group("run");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("sprout", |b| {
        b.iter(|| f.run(&f.sprout, &f.sprout_root, "run"))
    });
    if let Some(r) = &runc {
        g.bench_function("runc", |b| b.iter(|| f.run(r, &f.runc_root, "run")));
    }
    g.finish();

    let rt = sprout::runtime::Runtime::builder()
        .root(f.sprout_root.join("lib"))
        .init_binary(&f.init)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("library");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("sprout", |b| {
        b.iter(|| {
            let null = || -> Option<std::os::fd::OwnedFd> {
                Some(std::fs::File::open("/dev/null").unwrap().into())
            };
            let mut ct = rt
                .create(
                    "lib",
                    &f.bundle,
                    sprout::runtime::CreateOptions {
                        stdio: [null(), null(), null()],
                        ..Default::default()
                    },
                )
                .unwrap();
            ct.start().unwrap();
            ct.wait().unwrap();
            ct.delete(false).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
