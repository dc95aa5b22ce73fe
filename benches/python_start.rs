//! The Python function (tests/programs/function.py: asyncio HTTP, imports
//! and an initializer) from nothing to its first HTTP response, in one run:
//! - `python/runc_run`: `runc run -d` cold start;
//! - `python/sprout_run`: `sprout run -d` cold start;
//! - `python/sprout_restore`: `sprout restore -d` of an image taken after
//!   the initializer.
//!
//! Each container joins one network namespace the bench made (with `lo`
//! up), as a pre-plugged namespace would be; the client connects from a
//! thread inside it, so traffic stays on that namespace's loopback. Only
//! start-to-response is timed; deleting the container is not. At the end
//! the restore's per-stage split (library API, same image) is printed.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

const PORT: u16 = 8080;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("sprout-bench-{}", std::process::id());
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One GET inside the namespace; Err while nothing listens yet.
fn get(ns: &std::fs::File) -> std::io::Result<String> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<String> {
            // SAFETY: setns of this short-lived thread only.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut c = std::net::TcpStream::connect(("127.0.0.1", PORT))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(b"GET /bench HTTP/1.1\r\nHost: fn\r\n\r\n")?;
            let mut r = String::new();
            c.read_to_string(&mut r)?;
            Ok(r)
        })
        .join()
        .unwrap()
    })
}

/// Waits for the first successful response.
fn first_response(ns: &std::fs::File) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = get(ns)
            && r.starts_with("HTTP/1.1 200")
        {
            return;
        }
        assert!(Instant::now() < deadline, "no response within 30 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    image: PathBuf,
    netns: Netns,
    ns_file: std::fs::File,
    sprout: PathBuf,
}

fn make_bundle(dir: &Path, netns: &str) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "usr", "app"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/function.py"),
        rootfs.join("app/function.py"),
    )
    .unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0},
            "args": ["/usr/bin/python3", "/app/function.py", PORT.to_string()],
            "env": ["PATH=/usr/bin:/bin"], "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "fn",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network", "path": netns}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    bundle
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("sprout-bench-py-")
            .tempdir()
            .unwrap();
        let netns = Netns::new();
        let bundle = make_bundle(dir.path(), &netns.path());
        let ns_file = std::fs::File::open(netns.path()).unwrap();
        let f = Fixture {
            image: dir.path().join("image"),
            bundle,
            netns,
            ns_file,
            sprout: bin("sprout"),
            dir,
        };
        // The image: run once, wait for the initializer, checkpoint.
        f.sprout(&["run", "-d", "--bundle", f.bundle.to_str().unwrap(), "img"]);
        first_response(&f.ns_file);
        f.sprout(&[
            "checkpoint",
            "--image-path",
            f.image.to_str().unwrap(),
            "img",
        ]);
        f.sprout(&["delete", "--force", "img"]);
        f
    }

    fn root(&self, runtime: &str) -> PathBuf {
        self.dir.path().join(format!("{runtime}-root"))
    }

    fn cmd(&self, runtime: &Path, root: &Path, args: &[&str]) {
        let st = Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "{} {args:?} failed", runtime.display());
    }

    fn sprout(&self, args: &[&str]) {
        self.cmd(&self.sprout, &self.root("sprout"), args)
    }

    /// Start (`run -d` or `restore -d`), then wait for the first answer.
    fn start_to_response(&self, runtime: &Path, root: &Path, args: &[&str], id: &str) -> Duration {
        let t0 = Instant::now();
        self.cmd(runtime, root, args);
        first_response(&self.ns_file);
        let t = t0.elapsed();
        self.cmd(runtime, root, &["delete", "--force", id]);
        t
    }
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new();
    let bundle = f.bundle.to_str().unwrap().to_string();
    let image = f.image.to_str().unwrap().to_string();
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let mut g = c.benchmark_group("python");
    g.sample_size(15)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    if let Some(r) = &runc {
        let root = f.root("runc");
        g.bench_function("runc_run", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        f.start_to_response(r, &root, &["run", "-d", "--bundle", &bundle, "a"], "a")
                    })
                    .sum()
            })
        });
    }
    let root = f.root("sprout");
    g.bench_function("sprout_run", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    f.start_to_response(
                        &f.sprout,
                        &root,
                        &["run", "-d", "--bundle", &bundle, "b"],
                        "b",
                    )
                })
                .sum()
        })
    });
    g.bench_function("sprout_restore", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    f.start_to_response(
                        &f.sprout,
                        &root,
                        &[
                            "restore",
                            "-d",
                            "--image-path",
                            &image,
                            "--bundle",
                            &bundle,
                            "c",
                        ],
                        "c",
                    )
                })
                .sum()
        })
    });
    g.finish();

    // The restore's stages, through the library, median of 15.
    let rt = sprout::runtime::Runtime::builder()
        .root(f.root("lib"))
        .init_binary(bin("sprout-init"))
        .build()
        .unwrap();
    sprout::snapshot::image::set_hash_cache_dir(f.root("lib").join("file-hashes"));
    let tracer = sprout::snapshot::ptrace::Tracer::spawn("bench-tracer").unwrap();
    let mut runs: Vec<Vec<(&'static str, Duration)>> = Vec::new();
    for _ in 0..15 {
        let null = || -> Option<std::os::fd::OwnedFd> {
            Some(std::fs::File::open("/dev/null").unwrap().into())
        };
        let (ct, report) = sprout::snapshot::restore::restore(
            &rt,
            &tracer,
            "lib",
            &f.bundle,
            &f.image,
            sprout::snapshot::restore::RestoreOptions {
                stdio: [null(), null(), null()],
                ..Default::default()
            },
        )
        .unwrap();
        first_response(&f.ns_file);
        runs.push(report.stages.clone());
        ct.delete(true).unwrap();
    }
    let mut line = Vec::new();
    for (i, (name, _)) in runs[0].iter().enumerate() {
        let mut v: Vec<Duration> = runs.iter().map(|r| r[i].1).collect();
        v.sort();
        line.push(format!("{name} {}µs", v[v.len() / 2].as_micros()));
    }
    let mut totals: Vec<Duration> = runs.iter().map(|r| r.iter().map(|s| s.1).sum()).collect();
    totals.sort();
    println!(
        "restore stages (library, median of {}): {}; total {}µs",
        runs.len(),
        line.join(", "),
        totals[totals.len() / 2].as_micros()
    );
    drop(f.netns);
}

criterion_group!(benches, bench);
criterion_main!(benches);
