//! netplug against the real kernel: VPCs in a hub namespace of the test's
//! own state root, pooled namespaces, containers joined to them.
//!
//! Traffic only ever goes between namespaces these tests made (pooled
//! namespaces and the hub). Subnets are taken from 198.18.0.0/15, the
//! range set aside for network benchmarking (RFC 2544), and exist only
//! inside those namespaces.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sprout::netplug::{
    self, BlockingNetplug, Error as NpError, Options, Owner, ProcRef, VpcConfig, VpcPlumbing,
};

fn open(root: &Path) -> BlockingNetplug {
    BlockingNetplug::open(Options::new(root)).unwrap()
}

fn native(name: &str, subnet: &str, pool: usize) -> VpcConfig {
    VpcConfig {
        name: name.into(),
        plumbing: VpcPlumbing::Native {
            subnet: subnet.parse().unwrap(),
            gateway: None,
        },
        mtu: 1500,
        pool_size: pool,
        give_back: Default::default(),
    }
}

/// Deletes every VPC of a state root when dropped (a failed test too),
/// after reconciling away leases of owners that are gone.
struct VpcGuard(PathBuf);

impl Drop for VpcGuard {
    fn drop(&mut self) {
        let np = open(&self.0);
        let _ = np.gc();
        for v in np.vpcs().unwrap_or_default() {
            let _ = np.delete_vpc(&v.name, true);
        }
    }
}

/// A child process stopped by pid when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            netplug::netns::enter(ns.as_fd()).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A TCP listener on `addr:port` inside namespace `ns`, accepting one
/// connection within `wait`; yields what was sent, or None.
fn listen_once(
    ns: OwnedFd,
    addr: Ipv4Addr,
    port: u16,
    wait: Duration,
) -> std::thread::JoinHandle<Option<String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        netplug::netns::enter(ns.as_fd()).unwrap();
        let l = TcpListener::bind((addr, port)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = String::new();
                    let _ = c.read_to_string(&mut buf);
                    let _ = c.write_all(b"ack\n");
                    return Some(buf);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    });
    rx.recv().unwrap();
    h
}

fn hub_fd(root: &Path) -> OwnedFd {
    fs::File::open(root.join(".netplug/ns/hub")).unwrap().into()
}

fn status(s: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&s.ok(&["netplug", "status", "-f", "json"])).unwrap()
}

fn pool<'a>(st: &'a serde_json::Value, vpc: &str) -> &'a serde_json::Value {
    st["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["vpc"] == vpc)
        .unwrap()
}

fn drops(st: &serde_json::Value, vpc: &str, hook: &str) -> u64 {
    st["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["vpc"] == vpc && d["hook"] == hook)
        .map(|d| d["packets"].as_u64().unwrap())
        .unwrap_or(0)
}

/// Names of the links in the namespace at `path`.
fn links_in(path: &Path) -> Vec<String> {
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

/// Nothing of netplug's left for state root `root`: no mounts (hub,
/// namespaces, the shared ns directory), no namespace files, and never a
/// link of ours in the host namespace. Polls: the kernel lets go of a
/// deleted namespace's veth asynchronously.
fn assert_no_netplug_leftovers(root: &Path) {
    let r = root.to_str().unwrap().to_string();
    let ok = wait_until(Duration::from_secs(10), || {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        !mounts.contains(&r)
            && fs::read_dir(root.join(".netplug/ns"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
            && state_files(root, "ready").is_empty()
            && state_files(root, "leases").is_empty()
            && state_files(root, "building").is_empty()
            && state_files(root, "ipam").is_empty()
    });
    assert!(
        ok,
        "netplug leftovers under {r}: mounts {:?}, files {:?}",
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&r))
            .collect::<Vec<_>>(),
        walk(&root.join(".netplug"))
    );
    let host = links_in(Path::new("/proc/self/ns/net"));
    assert!(
        !host.iter().any(|l| l.starts_with("np")),
        "netplug made links in the host namespace: {host:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !netplug::netns::is_ns_file(&p) {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files (not directories) under `.netplug/<sub>`.
fn state_files(root: &Path, sub: &str) -> Vec<PathBuf> {
    walk(&root.join(".netplug").join(sub))
}

#[test]
fn containers_in_a_vpc_talk_and_vpcs_are_isolated() {
    let mut s = Sandbox::new("np-iso");
    let _vpcs = VpcGuard(s.root.clone());
    s.ok(&[
        "vpc",
        "create",
        "a",
        "--subnet",
        "198.18.20.0/24",
        "--pool",
        "2",
    ]);
    s.ok(&[
        "vpc",
        "create",
        "b",
        "--subnet",
        "198.18.21.0/24",
        "--pool",
        "2",
    ]);
    // Isolation must not rely on forwarding being off.
    s.ok(&["netplug", "forwarding", "on"]);
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 4");
    let hub = s.root.join(".netplug/ns/hub");
    let fwd = Command::new("nsenter")
        .arg(format!("--net={}", hub.display()))
        .args(["cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    let mut n = 0;
    let mut config = |s: &mut Sandbox, args: &[&str], vpc_annotation: Option<&str>| {
        n += 1;
        let cg = format!("{}-{n}", s.cgroup);
        s.config()["linux"]["cgroupsPath"] = serde_json::json!(cg);
        s.config()["annotations"] = match vpc_annotation {
            Some(v) => serde_json::json!({ "io.sprout.vpc": v }),
            None => serde_json::json!({}),
        };
        s.set_args(args);
        unique_id("np-iso")
    };
    let server = [
        "nc",
        "-l",
        "-p",
        "7000",
        "-e",
        "sh",
        "-c",
        "read x; echo pong-$x",
    ];

    // A server in VPC a (joined with --vpc), detached.
    let sa = config(&mut s, &server, None);
    s.ok(&["run", "-b", s.bundle_str(), "-d", "--vpc", "a", &sa]);
    let st = s.state(&sa);
    let addr_a = st["annotations"]["io.sprout.netplug.address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(addr_a.starts_with("198.18.20."), "{st}");
    // A client in VPC a (joined by annotation): a TCP round trip.
    let c1 = config(
        &mut s,
        &["sh", "-c", &format!("echo ping | nc -w 5 {addr_a} 7000")],
        Some("a"),
    );
    let out = s.ok(&["run", "-b", s.bundle_str(), &c1]);
    assert_eq!(out.trim(), "pong-ping");

    // The gateway of a: a listener in the hub on its address.
    let got = listen_once(
        hub_fd(&s.root),
        Ipv4Addr::new(198, 18, 20, 1),
        7100,
        Duration::from_secs(15),
    );
    let c2 = config(
        &mut s,
        &["sh", "-c", "echo hello-gw | nc -w 5 198.18.20.1 7100"],
        Some("a"),
    );
    let out = s.ok(&["run", "-b", s.bundle_str(), &c2]);
    assert_eq!(got.join().unwrap().as_deref(), Some("hello-gw\n"));
    assert_eq!(out.trim(), "ack");

    // A server in VPC b; from VPC a neither it nor b's gateway answers.
    let sb = config(&mut s, &server, Some("b"));
    s.ok(&["run", "-b", s.bundle_str(), "-d", &sb]);
    let st = s.state(&sb);
    let addr_b = st["annotations"]["io.sprout.netplug.address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(addr_b.starts_with("198.18.21."), "{st}");
    let before = status(&s);
    let c3 = config(
        &mut s,
        &["sh", "-c", &format!("echo ping | nc -w 2 {addr_b} 7000")],
        Some("a"),
    );
    let out = s.sprout(&["run", "-b", s.bundle_str(), &c3]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("pong"),
        "VPC a reached a sandbox of VPC b"
    );
    let got = listen_once(
        hub_fd(&s.root),
        Ipv4Addr::new(198, 18, 21, 1),
        7101,
        Duration::from_secs(4),
    );
    let c4 = config(
        &mut s,
        &["sh", "-c", "echo sneaky | nc -w 2 198.18.21.1 7101"],
        Some("a"),
    );
    let out = s.sprout(&["run", "-b", s.bundle_str(), &c4]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ack"));
    assert_eq!(got.join().unwrap(), None, "VPC a reached VPC b's gateway");
    let after = status(&s);
    assert!(
        drops(&after, "a", "forward") > drops(&before, "a", "forward"),
        "{after}"
    );
    assert!(
        drops(&after, "a", "input") > drops(&before, "a", "input"),
        "{after}"
    );

    // Deleting the containers gives their namespaces back (scrubbed and
    // reused), so the pools are whole again.
    s.ok(&["delete", "--force", &sa]);
    s.ok(&["delete", "--force", &sb]);
    let st = status(&s);
    for v in ["a", "b"] {
        let p = pool(&st, v);
        assert_eq!(p["leased"], 0, "{st}");
        assert_eq!(p["ready"], 2, "{st}");
    }
    assert!(
        pool(&st, "a")["counters"]["takes"].as_u64().unwrap() >= 5,
        "{st}"
    );
    s.ok(&["vpc", "delete", "a"]);
    s.ok(&["vpc", "delete", "b"]);
    assert_no_netplug_leftovers(&s.root);
    for id in [&sa, &c1, &c2, &sb, &c3, &c4] {
        s.assert_clean(id);
    }
}

#[test]
fn fifty_concurrent_takes_get_unique_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let _vpcs = VpcGuard(root.clone());
    let np = open(&root);
    np.create_vpc(native("c", "198.18.22.0/24", 10)).unwrap();
    assert_eq!(np.fill().unwrap(), 10);
    let leases: Vec<netplug::Lease> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|_| {
                let root = &root;
                s.spawn(move || open(root).take("c", &Owner::this_process()).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: HashSet<Ipv4Addr> = leases.iter().map(|l| l.address).collect();
    let ids: HashSet<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(addrs.len(), 50, "an address was handed out twice");
    assert_eq!(ids.len(), 50);
    assert!(
        !addrs.contains(&Ipv4Addr::new(198, 18, 22, 1)),
        "the gateway was handed out"
    );
    // Each is really plugged: eth0 holds the recorded address.
    let l = &leases[17];
    let inside = in_ns(&l.fd, || links_in(Path::new("/proc/thread-self/ns/net")));
    assert!(inside.contains(&"eth0".to_string()), "{inside:?}");
    let st = np.status().unwrap();
    let p = &st.pools[0];
    assert_eq!((p.leased, p.counters.takes), (50, 50));
    assert!(p.counters.misses >= 40, "{:?}", p.counters);
    for l in leases {
        np.give_back(&l.id).unwrap();
    }
    assert_eq!(np.status().unwrap().pools[0].leased, 0);
    np.delete_vpc("c", false).unwrap();
    assert_no_netplug_leftovers(&root);
}

#[test]
fn exhausted_subnet_is_a_clear_error_and_leaves_nothing() {
    let mut s = Sandbox::new("np-full");
    let _vpcs = VpcGuard(s.root.clone());
    let np = open(&s.root);
    // /29: 6 hosts, one of them the gateway.
    np.create_vpc(native("tiny", "198.18.23.0/29", 0)).unwrap();
    let leases: Vec<_> = (0..5)
        .map(|_| np.take("tiny", &Owner::this_process()).unwrap())
        .collect();
    let err = np.take("tiny", &Owner::this_process()).unwrap_err();
    assert!(matches!(err, NpError::SubnetExhausted { .. }), "{err}");
    assert!(err.to_string().contains("198.18.23.0/29"), "{err}");
    // The failed attempt left no namespace, veth, address or record.
    assert!(state_files(&s.root, "building").is_empty());
    assert_eq!(state_files(&s.root, "ipam").len(), 5);
    assert_eq!(fs::read_dir(s.root.join(".netplug/ns")).unwrap().count(), 6);
    let hub_links = links_in(&s.root.join(".netplug/ns/hub"));
    assert_eq!(
        hub_links
            .iter()
            .filter(|l| l.starts_with("np") && *l != "npbr0")
            .count(),
        5,
        "{hub_links:?}"
    );
    // Through the CLI: one clear error line, no container left.
    s.config()["linux"]["cgroupsPath"] = serde_json::json!(format!("{}-x", s.cgroup));
    s.write_config();
    let id = unique_id("np-full");
    let err = s.fails(&["run", "-b", s.bundle_str(), "--vpc", "tiny", &id]);
    assert!(err.contains("exhausted") && err.contains("tiny"), "{err}");
    assert!(!s.root.join(&id).exists());
    // Unknown VPC: clear too.
    let err = s.fails(&["run", "-b", s.bundle_str(), "--vpc", "nope", &id]);
    assert!(err.contains("no VPC named nope"), "{err}");
    for l in leases {
        np.give_back(&l.id).unwrap();
    }
    np.delete_vpc("tiny", false).unwrap();
    assert_no_netplug_leftovers(&s.root);
    s.assert_clean(&id);
}

#[test]
fn a_take_from_an_empty_pool_still_works() {
    let mut s = Sandbox::new("np-empty");
    let _vpcs = VpcGuard(s.root.clone());
    s.ok(&["vpc", "create", "e", "--subnet", "198.18.24.0/24"]);
    s.config()["linux"]["cgroupsPath"] = serde_json::json!(format!("{}-1", s.cgroup));
    s.set_args(&["sh", "-c", "ip -4 -o addr show eth0; ip route"]);
    let id = unique_id("np-empty");
    let out = s.ok(&["run", "-b", s.bundle_str(), "--vpc", "e", &id]);
    assert!(out.contains("198.18.24.2/24"), "{out}");
    assert!(out.contains("default via 198.18.24.1"), "{out}");
    let st = status(&s);
    let p = pool(&st, "e");
    assert_eq!(
        (
            p["counters"]["takes"].as_u64(),
            p["counters"]["misses"].as_u64()
        ),
        (Some(1), Some(1)),
        "{st}"
    );
    // Given back at delete (run without --keep deletes) and reused.
    assert_eq!(
        (p["leased"].as_u64(), p["ready"].as_u64()),
        (Some(0), Some(1)),
        "{st}"
    );
    s.ok(&["vpc", "delete", "e"]);
    assert_no_netplug_leftovers(&s.root);
    s.assert_clean(&id);
}

#[test]
fn reconciliation_after_the_pool_holder_is_killed() {
    let s = Sandbox::new("np-crash");
    let _vpcs = VpcGuard(s.root.clone());
    s.ok(&[
        "vpc",
        "create",
        "k",
        "--subnet",
        "198.18.25.0/24",
        "--pool",
        "60",
    ]);
    let np = open(&s.root);
    // The holder: killed while it is filling the pool.
    let holder = Reaped(
        s.cmd()
            .args(["netplug", "serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = || state_files(&s.root, "ready").len();
    assert!(
        wait_until(Duration::from_secs(30), || ready() >= 5),
        "the holder made nothing"
    );
    // A lease whose owner dies without giving it back.
    let owner_proc = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = owner_proc.0.id() as i32;
    let owner = Owner {
        process: ProcRef {
            pid,
            start: netplug::state::proc_start(pid).unwrap(),
        },
        container: None,
    };
    let orphaned = np.take("k", &owner).unwrap();
    drop(owner_proc);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(holder);
    assert!(ready() < 60, "the holder finished before it was killed");

    let out = s.ok(&["netplug", "gc"]);
    eprintln!("gc after the holder was killed:\n{out}");
    assert!(out.contains(&format!("reclaimed {}", orphaned.id)), "{out}");
    drop(orphaned);
    // Every namespace, hub veth and address left belongs to a ready record.
    let ready_recs: Vec<netplug::NsRecord> = state_files(&s.root, "ready")
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect();
    let ids: HashSet<String> = ready_recs.iter().map(|r| r.id.clone()).collect();
    let veths: HashSet<String> = ready_recs
        .iter()
        .filter_map(|r| r.hub_veth.clone())
        .collect();
    let addrs: HashSet<String> = ready_recs.iter().map(|r| r.address.to_string()).collect();
    assert!(state_files(&s.root, "building").is_empty());
    assert!(state_files(&s.root, "leases").is_empty());
    let hub = s.root.join(".netplug/ns/hub");
    let consistent = wait_until(Duration::from_secs(10), || {
        let files: HashSet<String> = fs::read_dir(s.root.join(".netplug/ns"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "hub")
            .collect();
        let hub_veths: HashSet<String> = links_in(&hub)
            .into_iter()
            .filter(|l| l.starts_with("np") && !l.starts_with("npbr"))
            .collect();
        let ipam: HashSet<String> = state_files(&s.root, "ipam")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        files == ids && hub_veths == veths && ipam == addrs
    });
    assert!(
        consistent,
        "reconciliation left namespaces, veths or addresses no record owns"
    );
    for p in &ready_recs {
        assert!(netplug::netns::is_ns_file(
            &s.root.join(".netplug/ns").join(&p.id)
        ));
    }
    // A second gc finds nothing more to do.
    let out = s.ok(&["netplug", "gc"]);
    assert!(out.trim().is_empty(), "{out}");
    s.ok(&["vpc", "delete", "k"]);
    assert_no_netplug_leftovers(&s.root);
}

#[test]
fn cni_fill_mode_produces_working_namespaces() {
    let s = Sandbox::new("np-cni");
    let _vpcs = VpcGuard(s.root.clone());
    assert!(
        Path::new("/usr/lib/cni/bridge").exists() && Path::new("/usr/lib/cni/host-local").exists(),
        "install containernetworking-plugins"
    );
    let conflist = s.dir.path().join("net.conflist");
    fs::write(
        &conflist,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "sprout-test-cni",
            "plugins": [{
                "type": "bridge", "bridge": "npcni0", "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.26.0/24"}]]}
            }]
        })
        .to_string(),
    )
    .unwrap();
    s.ok(&[
        "vpc",
        "create",
        "cn",
        "--cni",
        conflist.to_str().unwrap(),
        "--pool",
        "2",
    ]);
    // netplug's own ranges never overlap the CNI network's.
    let err = s.fails(&["vpc", "create", "nat", "--subnet", "198.18.26.128/25"]);
    assert!(err.contains("overlaps"), "{err}");
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 2");
    let np = open(&s.root);
    let subnet: netplug::Subnet = "198.18.26.0/24".parse().unwrap();
    let a = np.take("cn", &Owner::this_process()).unwrap();
    let b = np.take("cn", &Owner::this_process()).unwrap();
    assert!(subnet.is_host(a.address) && subnet.is_host(b.address) && a.address != b.address);
    assert_eq!(a.gateway, Ipv4Addr::new(198, 18, 26, 1));
    let st = np.status().unwrap();
    assert_eq!(
        st.pools[0].counters.misses, 0,
        "the takes came from the pool"
    );
    // host-local keeps its state under sprout's state root.
    let ipam_dir = s.root.join(".netplug/cni/cn/ipam/sprout-test-cni");
    assert!(
        ipam_dir.join(a.address.to_string()).exists(),
        "{:?}",
        walk(&ipam_dir)
    );
    // The bridge is in the hub, not in the host.
    assert!(links_in(&s.root.join(".netplug/ns/hub")).contains(&"npcni0".to_string()));
    // TCP between the two namespaces, and to the gateway.
    let got = listen_once(
        a.fd.try_clone().unwrap(),
        a.address,
        7200,
        Duration::from_secs(10),
    );
    let reply = in_ns(&b.fd, || {
        let mut c = TcpStream::connect_timeout(
            &SocketAddr::from((a.address, 7200)),
            Duration::from_secs(5),
        )
        .unwrap();
        c.write_all(b"over-cni").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    });
    assert_eq!(got.join().unwrap().as_deref(), Some("over-cni"));
    assert_eq!(reply, "ack\n");
    let got = listen_once(hub_fd(&s.root), a.gateway, 7201, Duration::from_secs(10));
    in_ns(&b.fd, || {
        let mut c = TcpStream::connect_timeout(
            &SocketAddr::from((a.gateway, 7201)),
            Duration::from_secs(5),
        )
        .unwrap();
        c.write_all(b"gw").unwrap();
    });
    assert_eq!(got.join().unwrap().as_deref(), Some("gw"));
    let (ida, idb) = (a.id.clone(), b.id.clone());
    drop((a, b));
    np.give_back(&ida).unwrap();
    np.give_back(&idb).unwrap();
    s.ok(&["vpc", "delete", "cn"]);
    assert!(!s.root.join(".netplug/cni/cn").exists());
    assert_no_netplug_leftovers(&s.root);
}

#[test]
fn deleting_a_vpc_removes_everything_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let _vpcs = VpcGuard(root.clone());
    let np = open(&root);
    np.create_vpc(native("d", "198.18.27.0/24", 3)).unwrap();
    np.create_vpc(native("d2", "198.18.28.0/24", 1)).unwrap();
    np.fill().unwrap();
    let l = np.take("d", &Owner::this_process()).unwrap();
    // Refused while a live owner holds a namespace of it.
    let err = np.delete_vpc("d", false).unwrap_err();
    assert!(matches!(err, NpError::VpcBusy { .. }), "{err}");
    let id = l.id.clone();
    drop(l);
    np.give_back(&id).unwrap();
    np.delete_vpc("d", false).unwrap();
    // d's bridge, veths, namespaces, addresses and rules are gone; d2's stay.
    let hub = root.join(".netplug/ns/hub");
    let links = links_in(&hub);
    assert_eq!(
        links.iter().filter(|l| l.starts_with("np")).count(),
        2,
        "{links:?}"
    );
    assert!(!root.join(".netplug/ipam/d").exists() && !root.join(".netplug/ready/d").exists());
    assert_eq!(fs::read_dir(root.join(".netplug/ns")).unwrap().count(), 2);
    let rules = Command::new("nsenter")
        .arg(format!("--net={}", hub.display()))
        .args(["nft", "list", "table", "inet", "sprout_netplug"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains("vpc d ") && rules.contains("vpc d2 "),
        "{rules}"
    );
    // The last VPC takes the hub with it; --force takes back namespaces
    // live owners hold (they are left unplugged).
    let held = np.take("d2", &Owner::this_process()).unwrap();
    np.delete_vpc("d2", true).unwrap();
    let inside = in_ns(&held.fd, || links_in(Path::new("/proc/thread-self/ns/net")));
    assert_eq!(
        inside,
        vec!["lo".to_string()],
        "still plugged after a forced delete"
    );
    drop(held);
    assert!(np.hub_path().is_none());
    assert_no_netplug_leftovers(&root);
}
