//! Attaching a sandbox to a VPC: a namespace taken from netplug's pool
//! and joined (`setns`), against making and plugging one at that moment,
//! in-process over netlink (netplug's miss path) and with `ip` commands;
//! and a container start (`sprout create`) with a pooled network
//! namespace against a fresh one.
//!
//! Everything lives in a temporary sprout state root with its own hub; the
//! bench runs in a private mount namespace with its own tmpfs on /run, so
//! `ip netns` leaves nothing on the host. No traffic is sent.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use sprout::netplug::{
    self, BlockingNetplug, GiveBackPolicy, Options, Owner, VpcConfig, VpcPlumbing,
};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} not built (cargo bench builds it)",
        p.display()
    );
    p
}

/// A private mount namespace with a tmpfs on /run (for `ip netns`).
fn private_mounts() {
    // SAFETY: unshare/mount with valid NUL-terminated strings; at the
    // start of main, before criterion starts any thread.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
        assert_eq!(
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/run".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null()
            ),
            0
        );
    }
}

fn vpc(name: &str, subnet: &str, pool: usize, give_back: GiveBackPolicy) -> VpcConfig {
    VpcConfig {
        name: name.into(),
        plumbing: VpcPlumbing::Native {
            subnet: subnet.parse().unwrap(),
            gateway: None,
        },
        mtu: 1500,
        pool_size: pool,
        give_back,
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

fn busybox_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"], "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "cgroupsPath": format!("sprout-bench-np-{}", std::process::id()),
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    bundle
}

fn bench(c: &mut Criterion) {
    // The state root on tmpfs, as /run/sprout is.
    let dir = tempfile::tempdir_in("/run").unwrap();
    let root = dir.path().join("state");
    let np = BlockingNetplug::open(Options::new(&root)).unwrap();
    np.create_vpc(vpc("pool", "198.18.40.0/22", 16, GiveBackPolicy::Reuse))
        .unwrap();
    let fresh = np
        .create_vpc(vpc("fresh", "198.18.44.0/22", 0, GiveBackPolicy::Destroy))
        .unwrap();
    let ipv = np
        .create_vpc(vpc("ipcmd", "198.18.48.0/22", 0, GiveBackPolicy::Destroy))
        .unwrap();
    np.fill().unwrap();
    let home = File::open("/proc/thread-self/ns/net").unwrap();
    let owner = Owner::this_process();

    let mut g = c.benchmark_group("netns_attach");
    g.bench_function("take_from_pool+setns", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let l = np.take("pool", &owner).unwrap();
                netplug::netns::enter(&l.fd).unwrap();
                t += t0.elapsed();
                netplug::netns::enter(&home).unwrap();
                np.give_back_unused(l).unwrap();
            }
            t
        })
    });
    g.bench_function("create_and_plug_netlink+setns", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let l = np.take(&fresh.name, &owner).unwrap();
                netplug::netns::enter(&l.fd).unwrap();
                t += t0.elapsed();
                netplug::netns::enter(&home).unwrap();
                let id = l.id.clone();
                drop(l);
                np.give_back(&id).unwrap();
            }
            t
        })
    });
    // The same plumbing with ip(8): netns, veth into it, bridge port,
    // address, links up, default route.
    std::fs::create_dir_all("/run/netns").unwrap();
    File::create("/run/netns/npbhub").unwrap();
    let hub = np.hub_path().unwrap();
    // SAFETY: bind mount between two valid paths (private mount namespace).
    let r = unsafe {
        let src = std::ffi::CString::new(hub.to_str().unwrap()).unwrap();
        libc::mount(
            src.as_ptr(),
            c"/run/netns/npbhub".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    let mut n = 0u32;
    g.bench_function("create_and_plug_ip_commands", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let ns = format!("npb{n}");
                let veth = format!("npbv{n}");
                let addr = Ipv4Addr::from(u32::from(ipv.subnet.network()) + 2 + (n % 1000));
                let t0 = Instant::now();
                ip(&["netns", "add", &ns]);
                ip(&[
                    "-n", "npbhub", "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ]);
                ip(&[
                    "-n",
                    "npbhub",
                    "link",
                    "set",
                    &veth,
                    "master",
                    &ipv.bridge,
                    "up",
                ]);
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/22"),
                    "dev",
                    "eth0",
                ]);
                ip(&["-n", &ns, "link", "set", "lo", "up"]);
                ip(&["-n", &ns, "link", "set", "eth0", "up"]);
                ip(&[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &ipv.gateway.to_string(),
                ]);
                let f = File::open(format!("/run/netns/{ns}")).unwrap();
                netplug::netns::enter(&f).unwrap();
                t += t0.elapsed();
                netplug::netns::enter(&home).unwrap();
                drop(f);
                ip(&["-n", "npbhub", "link", "del", &veth]);
                ip(&["netns", "del", &ns]);
            }
            t
        })
    });
    g.finish();

    // Container start: `sprout create` with a pooled namespace (--vpc)
    // against a fresh, empty one; delete untimed.
    let sprout = bin("sprout");
    let bundle = busybox_bundle(dir.path());
    let mut g = c.benchmark_group("container_create");
    for (name, vpc) in [("fresh_netns", None), ("pooled_netns", Some("pool"))] {
        let mut k = 0u32;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    k += 1;
                    let id = format!("npbench-{name}-{k}");
                    let mut cmd = Command::new(&sprout);
                    cmd.arg("--root")
                        .arg(&root)
                        .arg("create")
                        .arg("-b")
                        .arg(&bundle);
                    if let Some(v) = vpc {
                        cmd.args(["--vpc", v]);
                    }
                    cmd.arg(&id);
                    let t0 = Instant::now();
                    let st = cmd.status().unwrap();
                    t += t0.elapsed();
                    assert!(st.success());
                    let st = Command::new(&sprout)
                        .arg("--root")
                        .arg(&root)
                        .args(["delete", "-f", &id])
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
                t
            })
        });
    }
    g.finish();
    for v in ["pool", "fresh", "ipcmd"] {
        np.delete_vpc(v, true).unwrap();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}

fn main() {
    private_mounts();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
