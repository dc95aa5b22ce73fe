//! Shared test harness: busybox bundles built at test time, a private
//! state root per test, the `sprout` binary, and leftover checks.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A private containerd for the containerd tests.
pub mod containerd;
/// A private sproutd for the sproutd and pool tests.
pub mod sproutd;

pub fn sprout_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sprout")
}

pub fn init_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sprout-init")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique, valid container id for this test run.
pub fn unique_id(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fills `rootfs` with a static busybox and its applet links.
pub fn make_busybox_rootfs(rootfs: &Path) {
    for d in [
        "bin", "proc", "dev", "sys", "tmp", "etc", "root", "var", "usr/bin", "data",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    )
    .unwrap();
}

/// A busybox bundle in a temp dir with its own state root and a config
/// close to `sprout spec`'s, but without a terminal.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub id: String,
    pub cgroup: String,
    config: serde_json::Value,
}

impl Sandbox {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sprout-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("state");
        let bundle = dir.path().join("bundle");
        make_busybox_rootfs(&bundle.join("rootfs"));
        let id = unique_id(name);
        let cgroup = format!("sprout-test-{id}");
        let config = default_config(&["true"], &cgroup);
        let s = Sandbox {
            dir,
            root,
            bundle,
            id,
            cgroup,
            config,
        };
        s.write_config();
        s
    }

    pub fn config(&mut self) -> &mut serde_json::Value {
        &mut self.config
    }

    /// Writes the (possibly edited) config to the bundle.
    pub fn write_config(&self) {
        fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub fn set_args(&mut self, args: &[&str]) {
        self.config["process"]["args"] = serde_json::json!(args);
        self.write_config();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(sprout_bin());
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs `sprout --root <root> args...` and returns its output.
    ///
    /// stdout and stderr go to files, not pipes: a detached container
    /// inherits them (as with runc) and would keep a pipe open forever.
    pub fn sprout(&self, args: &[&str]) -> Output {
        run_to_files(self.cmd().args(args), self.dir.path())
    }

    /// Like `sprout`, panicking with the stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sprout(args);
        assert!(
            out.status.success(),
            "sprout {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like `sprout`, expecting failure with runc's exit code for every
    /// error, 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.sprout(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "sprout {args:?} should have failed with exit code 1; stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn bundle_str(&self) -> &str {
        self.bundle.to_str().unwrap()
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Asserts nothing of container `id` is left: state, cgroups, mounts,
    /// processes.
    pub fn assert_clean(&self, id: &str) {
        assert!(
            !self.root.join(id).exists(),
            "state dir of {id} left behind"
        );
        let cg = cgroup_leftovers(&self.cgroup);
        assert!(cg.is_empty(), "cgroups left behind: {cg:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let tmp = self.dir.path().to_str().unwrap();
        assert!(!mounts.contains(tmp), "mounts under {tmp} left behind");
        let procs = processes_in_cgroup_named(&self.cgroup);
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Best effort for failed tests: remove every container this
        // sandbox's state root still knows.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.sprout(&["delete", "--force", &id]);
            }
        }
    }
}

static OUTPUT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured in
/// files under `dir`.
pub fn run_to_files(cmd: &mut Command, dir: &Path) -> Output {
    let n = OUTPUT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!(".out-{n}"));
    let err_path = dir.join(format!(".err-{n}"));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .status()
        .expect("running sprout");
    let output = Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_file(out_path);
    let _ = fs::remove_file(err_path);
    output
}

/// A config close to `runc spec`'s, with the given args, no terminal, and
/// a relative cgroupsPath (so cgroups land under the test's own).
pub fn default_config(args: &[&str], cgroup: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "sprout-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// cgroup directories whose name contains `name`, in any hierarchy.
pub fn cgroup_leftovers(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    fn walk(dir: &Path, name: &str, depth: u32, found: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let p = e.path();
            if e.file_name().to_string_lossy().contains(name) {
                found.push(p.clone());
            }
            walk(&p, name, depth - 1, found);
        }
    }
    // Deep enough for a pool instance under the caller's own cgroup:
    // <hierarchy>/<caller…>/<pool>/<function>/<id>.
    walk(Path::new("/sys/fs/cgroup"), name, 8, &mut found);
    found
}

/// Pids of live processes whose cgroup path mentions `name`. Zombies are
/// not counted: an orphaned container init that exited is reaped by pid 1
/// on its own schedule and holds nothing but its pid.
pub fn processes_in_cgroup_named(name: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cg) = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            && cg.contains(name)
            && pid_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn pid_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            !st.starts_with('Z') && !st.starts_with('X')
        })
        .unwrap_or(false)
}

/// The memory cgroup directory the caller itself is in (tests put
/// relative cgroups below it).
pub fn own_cgroup_dir(controller: &str) -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in text.lines() {
        let mut p = line.splitn(3, ':');
        let (_, ctrls, path) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        if ctrls.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'));
        }
    }
    panic!("no {controller} cgroup");
}

// ---- processes to checkpoint, restore and fork (snapshot and template tests) ----

/// Builds tests/programs/NAME.c into the target's temp dir (once).
pub fn program(name: &str, static_link: bool) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("snap-{name}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    // Build to a unique name and rename: tests run in parallel.
    let tmp = out.with_extension(format!("tmp{}", unique_id("b")));
    let mut cmd = std::process::Command::new("gcc");
    if static_link {
        cmd.arg("-static");
    }
    let st = cmd
        .args(["-O2", "-pthread", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "building {name}");
    fs::rename(&tmp, &out).unwrap();
    out
}

/// A sandbox whose rootfs sees the host's /usr read-only (merged-usr:
/// /lib and /lib64 are links into it), for dynamic programs and Python.
pub fn with_usr(s: &mut Sandbox) {
    let rootfs = s.bundle.join("rootfs");
    let _ = std::os::unix::fs::symlink("usr/lib", rootfs.join("lib"));
    let _ = std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64"));
    fs::create_dir_all(rootfs.join("usr")).unwrap();
    s.config()["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}));
    s.write_config();
}

/// Runs `sprout args` with stdout/stderr appended to `out` (the container
/// keeps writing there after sprout returns).
pub fn sprout_to(s: &Sandbox, args: &[&str], out: &Path) -> std::process::ExitStatus {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap();
    let e = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.with_extension("err"))
        .unwrap();
    s.cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(e)
        .status()
        .unwrap()
}

pub fn stderr_of(out: &Path) -> String {
    fs::read_to_string(out.with_extension("err")).unwrap_or_default()
}

pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn count_of(line: &str) -> u64 {
    line.strip_prefix("count ").unwrap().parse().unwrap()
}

/// Accepts one connection on `listener` and returns the fd it carries
/// (SCM_RIGHTS: a console socket's pty master).
pub fn recv_fd(listener: &std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed this fd for us.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received");
}

/// Sends one HTTP request to 127.0.0.1:port inside the network namespace of
/// `pid`, from a thread that joins it (traffic stays on that loopback).
pub fn http_get_in_netns(pid: i32, port: u16, path: &str) -> std::io::Result<String> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    http_get_from(ns, (Ipv4Addr::LOCALHOST, port).into(), path, None)
}

/// One HTTP GET to `addr:port` from a thread inside the network namespace
/// bind-mounted at `ns` (traffic stays in namespaces the test made),
/// connecting and reading with `timeout`.
pub fn http_get_via(
    ns: &Path,
    addr: Ipv4Addr,
    port: u16,
    path: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let ns = fs::File::open(ns)?;
    http_get_from(ns, (addr, port).into(), path, Some(timeout))
}

/// One HTTP GET from a thread that joins the network namespace `ns`;
/// without a `timeout`, a plain connect and a 10 s read timeout.
fn http_get_from(
    ns: fs::File,
    to: SocketAddr,
    path: &str,
    timeout: Option<Duration>,
) -> std::io::Result<String> {
    let path = path.to_string();
    std::thread::spawn(move || -> std::io::Result<String> {
        // SAFETY: setns on this thread only (network namespaces are per
        // thread); the thread exits afterwards.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut c = match timeout {
            Some(t) => std::net::TcpStream::connect_timeout(&to, t)?,
            None => std::net::TcpStream::connect(to)?,
        };
        c.set_read_timeout(Some(timeout.unwrap_or(Duration::from_secs(10))))?;
        write!(c, "GET {path} HTTP/1.1\r\nHost: fn\r\n\r\n")?;
        let mut resp = String::new();
        c.read_to_string(&mut resp)?;
        Ok(resp)
    })
    .join()
    .unwrap()
}

/// netplug on state root `root`.
pub fn open_netplug(root: &Path) -> sprout::netplug::BlockingNetplug {
    sprout::netplug::BlockingNetplug::open(sprout::netplug::Options::new(root)).unwrap()
}

/// A VPC `name` of native plumbing on `subnet` (no gateway, MTU 1500)
/// with `pool` pooled namespaces.
pub fn native_vpc(name: &str, subnet: &str, pool: usize) -> sprout::netplug::VpcConfig {
    sprout::netplug::VpcConfig {
        name: name.into(),
        plumbing: sprout::netplug::VpcPlumbing::Native {
            subnet: subnet.parse().unwrap(),
            gateway: None,
        },
        mtu: 1500,
        pool_size: pool,
        give_back: Default::default(),
    }
}

/// Deletes every VPC of a netplug state root when dropped (a failed test
/// too), after reclaiming leases of owners that are gone. Declare it
/// before what uses the VPCs, so it drops after them.
pub struct VpcGuard(pub PathBuf);

impl Drop for VpcGuard {
    fn drop(&mut self) {
        let np = open_netplug(&self.0);
        let _ = np.gc();
        for v in np.vpcs().unwrap_or_default() {
            let _ = np.delete_vpc(&v.name, true);
        }
    }
}

/// Names of the links in the network namespace at `path`.
pub fn links_in(path: &Path) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ip", "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

/// No mount under netplug state root `root` (hub, namespaces, the shared
/// ns directory) and no namespace file in it.
pub fn netplug_namespaces_gone(root: &Path) -> bool {
    // Mounts below the root (the root may be a mount of its own).
    let r = format!("{}/", root.to_str().unwrap());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    !mounts.contains(&r)
        && fs::read_dir(root.join(".netplug/ns"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
}

/// Netplug never makes a link (`np...`) in the host namespace.
pub fn assert_no_netplug_links_on_host() {
    let host = links_in(Path::new("/proc/self/ns/net"));
    assert!(
        !host.iter().any(|l| l.starts_with("np")),
        "netplug made links in the host namespace: {host:?}"
    );
}

pub fn lo_up(pid: i32) {
    let st = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn json_body(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
}

pub fn python_sandbox(name: &str) -> Sandbox {
    let mut s = Sandbox::new(name);
    with_usr(&mut s);
    let app = s.bundle.join("rootfs/app");
    fs::create_dir_all(&app).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/function.py"),
        app.join("function.py"),
    )
    .unwrap();
    s.set_args(&["/usr/bin/python3", "/app/function.py", "8080"]);
    s
}

/// A bundle `<dir>/<name>` like `s`'s (same rootfs, by absolute path)
/// whose /usr/bin/python3.11 is another file: the host's with one byte
/// more, bound over it.
pub fn bundle_with_other_python(s: &Sandbox, name: &str) -> PathBuf {
    let other = s.dir.path().join(name);
    fs::create_dir_all(&other).unwrap();
    let changed = s.dir.path().join("python3.11");
    let mut bytes = fs::read("/usr/bin/python3.11").unwrap();
    bytes.push(0);
    fs::write(&changed, bytes).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    cfg["root"]["path"] = s.bundle.join("rootfs").to_str().unwrap().into();
    cfg["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/usr/bin/python3.11", "type": "bind", "source": changed, "options": ["bind", "ro"]}
    ));
    fs::write(other.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    other
}

/// Runs the Python function in `s`, warms it with one request and
/// checkpoints it to `<dir>/image` (the container is deleted); returns
/// the image and the warm answer.
pub fn python_image(s: &Sandbox) -> (PathBuf, serde_json::Value) {
    let id = s.id.clone();
    let out = s.dir.path().join("out");
    assert!(
        sprout_to(s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success(),
        "{}",
        stderr_of(&out)
    );
    assert!(
        wait_until(Duration::from_secs(30), || lines(&out)
            .iter()
            .any(|l| l == "ready")),
        "{}",
        stderr_of(&out)
    );
    let pid = s.state(&id)["pid"].as_i64().unwrap() as i32;
    lo_up(pid);
    let warm = json_body(&http_get_in_netns(pid, 8080, "/warm").unwrap());
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);
    (img, warm)
}

/// The values of a `k=v k=v ...` line, in order.
pub fn counters(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.parse().unwrap()))
        .collect()
}

/// Force-deletes every container the state root `root` still knows: the
/// teardown of a daemon a test started (sproutd's instances, then its
/// template holders, which outlive it by design).
pub fn delete_all_in(root: &Path) {
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        let _ = Command::new(sprout_bin())
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A 64 KiB tmpfs filled to the brim, unmounted on drop: a state root in
/// which a container's directory can be made but its state not written.
pub struct FullStateRoot(pub PathBuf);

impl FullStateRoot {
    pub fn new(dir: PathBuf) -> Self {
        fs::create_dir(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let root = FullStateRoot(dir);
        // ENOSPC once full: that is the point.
        let _ = fs::write(root.0.join("fill"), vec![0u8; 128 * 1024]);
        root
    }
}

impl Drop for FullStateRoot {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
