//! Shared by the Python function's benches: the function's bundle, a
//! checkpointed image of it, a pre-made network namespace, and an HTTP
//! client that waits for the first answer from inside a namespace.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The port the function listens on.
pub const PORT: u16 = 8080;

/// A binary of this build (`target/<triple>/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// runc, if installed.
pub fn runc() -> Option<PathBuf> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A named network namespace with `lo` up, removed on drop.
pub struct Netns(String);

impl Netns {
    pub fn new() -> Netns {
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

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One GET inside the network namespace `ns`; Err while nothing listens
/// yet.
pub fn get(ns: impl AsFd) -> std::io::Result<String> {
    let fd = ns.as_fd().as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<String> {
            // SAFETY: setns of this short-lived thread only (network
            // namespaces are per thread); `fd` outlives the scope.
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

/// Waits for the first successful response inside `ns`.
pub fn first_response(ns: impl AsFd) {
    let ns = ns.as_fd();
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

/// The function's bundle under `dir`: host /usr read-only, a read-only
/// root, no cgroupsPath, joining the network namespace at `netns`.
pub fn make_bundle(dir: &Path, netns: &str) -> PathBuf {
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

/// The function's bundle, its image (taken after the initializer and one
/// request) and the pre-made network namespace the bundle joins, in a
/// temp dir that holds every runtime's state root.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub bundle: PathBuf,
    pub image: PathBuf,
    pub netns: Netns,
    pub ns_file: std::fs::File,
    pub sprout: PathBuf,
}

impl Fixture {
    /// Builds the bundle and takes the image as container `image_id`.
    pub fn new(prefix: &str, image_id: &str) -> Fixture {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
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
        f.sprout(&[
            "run",
            "-d",
            "--bundle",
            f.bundle.to_str().unwrap(),
            image_id,
        ]);
        first_response(&f.ns_file);
        f.sprout(&[
            "checkpoint",
            "--image-path",
            f.image.to_str().unwrap(),
            image_id,
        ]);
        f.sprout(&["delete", "--force", image_id]);
        f
    }

    /// The state root of `runtime` (sprout, runc, lib, ...).
    pub fn root(&self, runtime: &str) -> PathBuf {
        self.dir.path().join(format!("{runtime}-root"))
    }

    /// Runs `runtime --root root args...`, panicking if it fails.
    pub fn cmd(&self, runtime: &Path, root: &Path, args: &[&str]) {
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

    pub fn sprout(&self, args: &[&str]) {
        self.cmd(&self.sprout, &self.root("sprout"), args)
    }

    /// What a restore through the library needs: a runtime with the state
    /// root `lib` (its file-hash cache under it) and a tracer thread.
    pub fn library(&self) -> (sprout::runtime::Runtime, sprout::snapshot::ptrace::Tracer) {
        let rt = sprout::runtime::Runtime::builder()
            .root(self.root("lib"))
            .init_binary(bin("sprout-init"))
            .build()
            .unwrap();
        sprout::snapshot::image::set_hash_cache_dir(self.root("lib").join("file-hashes"));
        let tracer = sprout::snapshot::ptrace::Tracer::spawn("bench-tracer").unwrap();
        (rt, tracer)
    }

    /// Start (`run -d` or `restore -d`), then wait for the first answer;
    /// the delete afterwards is not timed.
    pub fn start_to_response(
        &self,
        runtime: &Path,
        root: &Path,
        args: &[&str],
        id: &str,
    ) -> Duration {
        let t0 = Instant::now();
        self.cmd(runtime, root, args);
        first_response(&self.ns_file);
        let t = t0.elapsed();
        self.cmd(runtime, root, &["delete", "--force", id]);
        t
    }
}

/// Another bundle `<dir>/<name>` for the function in `bundle` (same
/// rootfs, by absolute path): with its own new network namespace when
/// `netns` is `None`, else joining the one at that path; with
/// `cgroupsPath` set when given. sproutd's instances coexist, so the
/// function it forks from needs a namespace per instance.
pub fn derived_bundle(
    bundle: &Path,
    dir: &Path,
    name: &str,
    netns: Option<&str>,
    cgroups_path: Option<&str>,
) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    cfg["root"]["path"] = bundle.join("rootfs").to_str().unwrap().into();
    let net = match netns {
        Some(path) => serde_json::json!({"type": "network", "path": path}),
        None => serde_json::json!({"type": "network"}),
    };
    let namespaces = cfg["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    namespaces.push(net);
    if let Some(p) = cgroups_path {
        cfg["linux"]["cgroupsPath"] = p.into();
    }
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

/// Prints the start-to-first-answer table the benches share: each row's
/// p50 and sample count (`p50_and_n`; rows without samples are skipped)
/// beside its ratio to the `runc_run` row's p50, both ways.
pub fn print_runc_table(rows: &[&str], p50_and_n: impl Fn(&str) -> Option<(Duration, usize)>) {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let runc = p50_and_n("runc_run").map(|(d, _)| d);
    println!("| start, to first answer | p50 | n | / runc run | runc run / it |");
    println!("|---|---|---|---|---|");
    for name in rows {
        let Some((d, n)) = p50_and_n(name) else {
            continue;
        };
        let (ratio, inv) = match runc {
            Some(r) => (
                format!("{:.4}", d.as_secs_f64() / r.as_secs_f64()),
                format!("{:.0}×", r.as_secs_f64() / d.as_secs_f64()),
            ),
            None => ("—".into(), "—".into()),
        };
        println!("| {name} | {} | {n} | {ratio} | {inv} |", ms(d));
    }
}

/// The median of each named stage over `runs`, in first-seen order, as
/// `name 123µs, …` (sproutd's and the library's stage splits).
pub fn stage_medians<'a, R, S>(runs: R) -> String
where
    R: IntoIterator<Item = S>,
    S: IntoIterator<Item = (&'a str, Duration)>,
{
    let mut by_stage: Vec<(&str, Vec<Duration>)> = Vec::new();
    for run in runs {
        for (name, d) in run {
            match by_stage.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(d),
                None => by_stage.push((name, vec![d])),
            }
        }
    }
    by_stage
        .iter_mut()
        .map(|(n, v)| {
            v.sort();
            format!("{n} {:.0}µs", v[v.len() / 2].as_secs_f64() * 1e6)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
