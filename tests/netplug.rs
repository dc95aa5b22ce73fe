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
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sprout::netplug::{self, BlockingNetplug, Error as NpError, Options, Owner, ProcRef};

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

/// Nothing of netplug's left for state root `root`: no mounts (hub,
/// namespaces, the shared ns directory), no namespace files, and never a
/// link of ours in the host namespace. Polls: the kernel lets go of a
/// deleted namespace's veth asynchronously.
fn assert_no_netplug_leftovers(root: &Path) {
    let r = root.to_str().unwrap().to_string();
    let ok = wait_until(Duration::from_secs(10), || {
        netplug_namespaces_gone(root)
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
    assert_no_netplug_links_on_host();
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
    create_native_vpc(&s, "a", "198.18.20.0/24", 2, &[]);
    create_native_vpc(&s, "b", "198.18.21.0/24", 2, &[]);
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
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("c", "198.18.22.0/24", 10))
        .unwrap();
    assert_eq!(np.fill().unwrap(), 10);
    let leases: Vec<netplug::Lease> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|_| {
                let root = &root;
                s.spawn(move || {
                    open_netplug(root)
                        .take("c", &Owner::this_process())
                        .unwrap()
                })
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
fn a_stale_give_back_leaves_a_retaken_namespace_to_its_new_holder() {
    // Container x gives its namespace back; y takes the same one (the
    // same taking process: its lease file has the same name as x's had).
    // A second give-back on behalf of x (a delete racing the first) must be
    // refused and leave y's lease and owner record as they are.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("r", "198.18.27.0/29", 1)).unwrap();
    assert_eq!(np.fill().unwrap(), 1);
    // A VPC name is a path component of the records: one that climbs out
    // is refused before it can reach another VPC's ready namespaces.
    for bad in ["../ready/r", "r/..", ""] {
        match np.take(bad, &Owner::this_process()) {
            Err(NpError::InvalidName { .. }) => {}
            other => panic!("take from VPC {bad:?}: {other:?}"),
        }
    }
    let as_container = |c: &str| Owner {
        container: Some(c.into()),
        ..Owner::this_process()
    };
    let first = np.take("r", &as_container("x")).unwrap();
    let id = first.id.clone();
    drop(first);
    np.give_back_from(&id, "x").unwrap();
    let owners = root.join(".netplug/owners");
    let again = np.take("r", &as_container("y")).unwrap();
    assert_eq!(again.id, id, "the pool's one namespace, reused");
    let owner_file = owners.join(format!("{id}.json"));
    let owner_before = fs::read_to_string(&owner_file).unwrap();
    assert!(owner_before.contains("\"y\""), "{owner_before}");
    match np.give_back_from(&id, "x") {
        Err(NpError::NotOwner { .. }) => {}
        other => panic!("a stale give-back took y's namespace: {other:?}"),
    }
    assert_eq!(fs::read_to_string(&owner_file).unwrap(), owner_before);
    assert_eq!(state_files(&root, "leases").len(), 1);
    assert_eq!(np.status().unwrap().pools[0].leased, 1);
    // Given back to the pool, it has no owner record left.
    np.give_back_from(&id, "y").unwrap();
    assert!(!owner_file.exists());
    drop(again);
    np.delete_vpc("r", false).unwrap();
    assert_no_netplug_leftovers(&root);
}

#[test]
fn a_state_root_whose_namespace_mounts_are_gone_recovers_at_gc() {
    // As after a reboot: the records are there, the namespaces and their
    // mounts are not (the mount points are plain files again).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("boot", "198.18.28.0/29", 2))
        .unwrap();
    assert_eq!(np.fill().unwrap(), 2);
    drop(np);
    let ns_dir = root.join(".netplug/ns");
    nix::mount::umount2(&ns_dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(ns_dir.join("hub").exists(), "the hub's mount point stays");

    let np = open_netplug(&root);
    let report = np.gc().unwrap();
    assert!(!report.destroyed.is_empty(), "{report:?}");
    // The pool works again: a new hub, a fresh namespace, plugged.
    let lease = np.take("boot", &Owner::this_process()).unwrap();
    let inside = in_ns(&lease.fd, || {
        links_in(Path::new("/proc/thread-self/ns/net"))
    });
    assert!(inside.contains(&"eth0".to_string()), "{inside:?}");
    np.give_back(&lease.id).unwrap();
    drop(lease);
    np.delete_vpc("boot", false).unwrap();
    assert_no_netplug_leftovers(&root);
}

/// A state root on a tmpfs of `size` bytes, unmounted when dropped.
struct SmallStateRoot(PathBuf);

impl SmallStateRoot {
    fn new(dir: PathBuf, size: &str) -> Self {
        fs::create_dir(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        SmallStateRoot(dir)
    }

    /// Fills what is left of it, until the filler is dropped.
    fn fill(&self) -> Filler {
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        Filler(path)
    }
}

/// A file filling a [`SmallStateRoot`], removed when dropped (declared
/// after the test's VpcGuard, it goes first, so that cleanup has room).
struct Filler(PathBuf);

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Drop for SmallStateRoot {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_take_whose_owner_record_cannot_be_written_leaves_the_namespace_ready() {
    let dir = tempfile::tempdir().unwrap();
    let small = SmallStateRoot::new(dir.path().join("root"), "1m");
    let root = small.0.clone();
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("full", "198.18.43.0/29", 1))
        .unwrap();
    assert_eq!(np.fill().unwrap(), 1);
    let filler = small.fill();
    let as_container = Owner {
        container: Some("c1".into()),
        ..Owner::this_process()
    };
    match np.take("full", &as_container) {
        Err(e) => assert!(e.to_string().contains("owners"), "{e}"),
        Ok(l) => panic!(
            "the owner record was written on a full state root: {}",
            l.id
        ),
    }
    // Back in the pool, not leased to this (live) process.
    assert!(state_files(&root, "leases").is_empty(), "{:?}", walk(&root));
    let st = np.status().unwrap();
    assert_eq!((st.pools[0].leased, st.pools[0].ready), (0, 1), "{st:?}");
    drop(filler);
    let lease = np.take("full", &as_container).unwrap();
    np.give_back_from(&lease.id, "c1").unwrap();
    drop(lease);
    np.delete_vpc("full", false).unwrap();
    assert_no_netplug_leftovers(&root);
}

#[test]
fn a_broken_ready_namespace_goes_to_gc_not_to_the_taker() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("broken", "198.18.44.0/29", 1))
        .unwrap();
    assert_eq!(np.fill().unwrap(), 1);
    drop(np);
    let broken = state_files(&root, "ready")[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    nix::mount::umount2(
        &root.join(".netplug/ns").join(&broken),
        nix::mount::MntFlags::MNT_DETACH,
    )
    .unwrap();
    // A long-lived taker (sproutd) finds it unusable and makes one.
    let np = open_netplug(&root);
    let lease = np.take("broken", &Owner::this_process()).unwrap();
    assert_ne!(lease.id, broken);
    // gc in this same, living process tears the broken one down.
    let report = np.gc().unwrap();
    assert!(report.reclaimed.contains(&broken), "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(np.status().unwrap().pools[0].leased, 1);
    np.give_back(&lease.id).unwrap();
    drop(lease);
    np.delete_vpc("broken", false).unwrap();
    assert_no_netplug_leftovers(&root);
}

#[test]
fn gc_goes_on_past_what_it_cannot_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let _vpcs = VpcGuard(root.clone());
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("gcfail", "198.18.45.0/29", 1))
        .unwrap();
    assert_eq!(np.fill().unwrap(), 1);
    // Two orphans in the namespace directory: the first (a non-empty
    // directory) cannot be removed, the second (a stray file) can.
    let ns_dir = root.join(".netplug/ns");
    let stuck = ns_dir.join("0000000000");
    fs::create_dir(&stuck).unwrap();
    fs::write(stuck.join("x"), "").unwrap();
    let stray = ns_dir.join("ffffffffff");
    fs::write(&stray, "").unwrap();
    let report = np.gc().unwrap();
    assert!(!stray.exists(), "{report:?}");
    assert!(
        report.orphans.contains(&"namespace ffffffffff".to_string()),
        "{report:?}"
    );
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].contains("0000000000"), "{report:?}");
    // The CLI names it and fails.
    let out = Command::new(sprout_bin())
        .arg("--root")
        .arg(&root)
        .args(["netplug", "gc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0000000000"), "{err}");
    fs::remove_dir_all(&stuck).unwrap();
    assert!(np.gc().unwrap().failed.is_empty());
    np.delete_vpc("gcfail", false).unwrap();
    assert_no_netplug_leftovers(&root);
}

#[test]
fn exhausted_subnet_is_a_clear_error_and_leaves_nothing() {
    let mut s = Sandbox::new("np-full");
    let _vpcs = VpcGuard(s.root.clone());
    let np = open_netplug(&s.root);
    // /29: 6 hosts, one of them the gateway.
    np.create_vpc(native_vpc("tiny", "198.18.23.0/29", 0))
        .unwrap();
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

/// Whether every thread of process `pid` is stopped (or it is gone).
fn all_stopped(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|st| st.rsplit_once(") ").map(|(_, r)| r.starts_with(['T', 't'])))
            .unwrap_or(true)
    })
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Stops the pool holder `pid` (SIGSTOP) at a moment when it is half-way
/// through building a namespace — its building record, address,
/// namespace file and hub veth all exist, and no ready record — and
/// returns that namespace's id, leaving the holder stopped. Looks while
/// the holder is stopped, so what it sees is what a kill leaves.
fn stop_mid_build(root: &Path, pid: i32) -> String {
    use nix::sys::signal::Signal;
    let hub = root.join(".netplug/ns/hub");
    for _ in 0..2000 {
        signal(pid, Signal::SIGSTOP);
        assert!(wait_until(Duration::from_secs(10), || all_stopped(pid)));
        let building: Vec<String> = state_files(root, "building")
            .iter()
            .filter_map(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| !n.starts_with('.'))
            .collect();
        let plugged = |id: &String| {
            netplug::netns::is_ns_file(&root.join(".netplug/ns").join(id))
                && state_files(root, "ipam")
                    .iter()
                    .any(|p| fs::read_to_string(p).unwrap_or_default() == *id)
                && state_files(root, "ready")
                    .iter()
                    .all(|p| p.file_stem().unwrap().to_string_lossy() != *id)
        };
        let candidates: Vec<&String> = building.iter().filter(|id| plugged(id)).collect();
        if !candidates.is_empty() {
            let links = links_in(&hub);
            if let Some(id) = candidates
                .into_iter()
                .find(|id| links.contains(&format!("np{id}")))
            {
                return id.clone();
            }
        }
        signal(pid, Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(3));
    }
    panic!("never caught the holder half-way through a build");
}

/// A namespace of the pool left a lease whose owner (a process of the
/// test's own) died without giving it back; returns its id.
fn orphaned_lease(np: &BlockingNetplug, vpc: &str) -> String {
    let owner_proc = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = owner_proc.0.id() as i32;
    let owner = Owner {
        process: ProcRef {
            pid,
            start: netplug::state::proc_start(pid).unwrap(),
        },
        container: None,
        may_reconfigure: false,
    };
    let lease = np.take(vpc, &owner).unwrap();
    drop(owner_proc);
    lease.id.clone()
}

/// Starts `sprout netplug serve` (stdout to `out`) and waits until it has
/// reconciled and holds the pools; returns it and what it printed.
fn start_holder(s: &Sandbox, out: &Path) -> (Reaped, String) {
    let holder = Reaped(
        s.cmd()
            .args(["netplug", "serve"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(60), || lines(out)
            .iter()
            .any(|l| l == "serving")),
        "the pool holder did not start: {:?}",
        lines(out)
    );
    (holder, fs::read_to_string(out).unwrap())
}

/// Every namespace file, hub veth and address of `root` belongs to a
/// ready record, and nothing is building or leased. Polls: the kernel
/// lets go of a deleted namespace's veth asynchronously.
fn assert_only_ready_namespaces(root: &Path) -> Vec<netplug::NsRecord> {
    let ready_recs: Vec<netplug::NsRecord> = state_files(root, "ready")
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect();
    let ids: HashSet<String> = ready_recs.iter().map(|r| r.id.clone()).collect();
    let veths: HashSet<String> = ready_recs
        .iter()
        .filter_map(|r| r.hub_veth.clone())
        .collect();
    let addrs: HashSet<String> = ready_recs.iter().map(|r| r.address.to_string()).collect();
    assert!(state_files(root, "building").is_empty());
    assert!(state_files(root, "leases").is_empty());
    let hub = root.join(".netplug/ns/hub");
    let consistent = wait_until(Duration::from_secs(10), || {
        let files: HashSet<String> = fs::read_dir(root.join(".netplug/ns"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "hub")
            .collect();
        let hub_veths: HashSet<String> = links_in(&hub)
            .into_iter()
            .filter(|l| l.starts_with("np") && !l.starts_with("npbr"))
            .collect();
        let ipam: HashSet<String> = state_files(root, "ipam")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        files == ids && hub_veths == veths && ipam == addrs
    });
    assert!(
        consistent,
        "reconciliation left namespaces, veths or addresses no record owns"
    );
    for r in &ready_recs {
        assert!(netplug::netns::is_ns_file(
            &root.join(".netplug/ns").join(&r.id)
        ));
    }
    ready_recs
}

/// What is left of namespace `id`: records, its namespace file, its hub
/// veth, an address held for it.
fn traces_of(root: &Path, id: &str) -> Vec<String> {
    let mut out: Vec<String> = walk(&root.join(".netplug"))
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains(id)
                || (p.starts_with(root.join(".netplug/ipam"))
                    && fs::read_to_string(p).unwrap_or_default() == id)
        })
        .map(|p| p.display().to_string())
        .collect();
    if links_in(&root.join(".netplug/ns/hub")).contains(&format!("np{id}")) {
        out.push(format!("hub veth np{id}"));
    }
    out
}

/// Nothing of namespace `id` is left. Polls: the kernel lets go of a
/// deleted namespace's veth asynchronously.
fn assert_gone(root: &Path, id: &str) {
    let gone = wait_until(Duration::from_secs(10), || traces_of(root, id).is_empty());
    assert!(
        gone,
        "namespace {id} left traces: {:?}",
        traces_of(root, id)
    );
}

#[test]
fn reconciliation_after_the_pool_holder_is_killed() {
    use nix::sys::signal::Signal;
    let s = Sandbox::new("np-crash");
    let _vpcs = VpcGuard(s.root.clone());
    let target = 150;
    create_native_vpc(&s, "k", "198.18.25.0/24", target, &[]);
    let np = open_netplug(&s.root);
    let ready = || state_files(&s.root, "ready").len();

    // 1. The holder is killed half-way through a build, after a lease's
    // owner died without giving it back.
    let (holder, _) = start_holder(&s, &s.dir.path().join("serve-1"));
    assert!(
        wait_until(Duration::from_secs(30), || ready() >= 5),
        "the holder made nothing"
    );
    let orphaned = orphaned_lease(&np, "k");
    let pid = holder.0.id() as i32;
    let half = stop_mid_build(&s.root, pid);
    assert!(ready() < target, "the holder finished before it was killed");
    signal(pid, Signal::SIGKILL);
    drop(holder);
    assert!(
        s.root
            .join(format!(".netplug/building/{half}.json"))
            .exists()
    );

    // 2. A new holder reconciles as it starts: the lease is reclaimed,
    // the half-built namespace torn down (veth, address, file, record).
    let (holder, out) = start_holder(&s, &s.dir.path().join("serve-2"));
    eprintln!("serve after the holder was killed:\n{out}");
    assert!(out.contains(&format!("reclaimed {orphaned}")), "{out}");
    assert!(out.contains(&format!("destroyed {half}")), "{out}");
    assert_gone(&s.root, &half);

    // 3. Killed again mid-build, this time reconciled by `netplug gc`.
    let orphaned = orphaned_lease(&np, "k");
    let pid = holder.0.id() as i32;
    let half = stop_mid_build(&s.root, pid);
    signal(pid, Signal::SIGKILL);
    drop(holder);
    assert!(
        s.root
            .join(format!(".netplug/building/{half}.json"))
            .exists()
    );
    let out = s.ok(&["netplug", "gc"]);
    eprintln!("gc after the holder was killed:\n{out}");
    assert!(out.contains(&format!("reclaimed {orphaned}")), "{out}");
    assert!(out.contains(&format!("destroyed {half}")), "{out}");
    assert_gone(&s.root, &half);
    // Every namespace, hub veth and address left belongs to a ready record.
    assert_only_ready_namespaces(&s.root);
    // A second gc finds nothing more to do.
    let out = s.ok(&["netplug", "gc"]);
    assert!(out.trim().is_empty(), "{out}");
    s.ok(&["vpc", "delete", "k"]);
    assert_no_netplug_leftovers(&s.root);
}

/// `restore --image-path <img> --bundle <the sandbox's> -d <extra...> <rid>`.
fn restore_argv<'a>(s: &'a Sandbox, img: &'a str, extra: &[&'a str], rid: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "restore",
        "--image-path",
        img,
        "--bundle",
        s.bundle_str(),
        "-d",
    ];
    a.extend_from_slice(extra);
    a.push(rid);
    a
}

/// `sprout vpc create <vpc> --subnet <subnet> --pool <pool> <extra...>`.
fn create_native_vpc(s: &Sandbox, vpc: &str, subnet: &str, pool: usize, extra: &[&str]) {
    let pool = pool.to_string();
    let mut args = vec!["vpc", "create", vpc, "--subnet", subnet, "--pool", &pool];
    args.extend_from_slice(extra);
    s.ok(&args);
}

/// A CNI network `name` (one bridge plugin on `bridge`, host-local
/// addresses from `subnet`, a default route if `default_route`) in the
/// sandbox's `net.conflist`.
fn bridge_conflist(
    s: &Sandbox,
    name: &str,
    bridge: &str,
    subnet: &str,
    default_route: bool,
) -> PathBuf {
    let mut ipam = serde_json::json!({"type": "host-local", "ranges": [[{"subnet": subnet}]]});
    if default_route {
        ipam["routes"] = serde_json::json!([{"dst": "0.0.0.0/0"}]);
    }
    let conflist = s.dir.path().join("net.conflist");
    fs::write(
        &conflist,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": true, "ipam": ipam}]
        })
        .to_string(),
    )
    .unwrap();
    conflist
}

/// `sprout vpc create <vpc> --cni <conflist> --pool <pool>`.
fn create_cni_vpc(s: &Sandbox, vpc: &str, conflist: &Path, pool: usize) {
    s.ok(&[
        "vpc",
        "create",
        vpc,
        "--cni",
        conflist.to_str().unwrap(),
        "--pool",
        &pool.to_string(),
    ]);
}

#[test]
fn cni_fill_mode_produces_working_namespaces() {
    let s = Sandbox::new("np-cni");
    let _vpcs = VpcGuard(s.root.clone());
    assert!(
        Path::new("/usr/lib/cni/bridge").exists() && Path::new("/usr/lib/cni/host-local").exists(),
        "install containernetworking-plugins"
    );
    let conflist = bridge_conflist(&s, "sprout-test-cni", "npcni0", "198.18.26.0/24", false);
    create_cni_vpc(&s, "cn", &conflist, 2);
    // netplug's own ranges never overlap the CNI network's.
    let err = s.fails(&["vpc", "create", "nat", "--subnet", "198.18.26.128/25"]);
    assert!(err.contains("overlaps"), "{err}");
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 2");
    let np = open_netplug(&s.root);
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
    let np = open_netplug(&root);
    np.create_vpc(native_vpc("d", "198.18.27.0/24", 3)).unwrap();
    np.create_vpc(native_vpc("d2", "198.18.28.0/24", 1))
        .unwrap();
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

/// An HTTP GET of `path` from `addr:port`, sent from a thread inside
/// namespace `ns`.
fn http_get_from(ns: &OwnedFd, addr: Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    in_ns(ns, || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(c, "GET {path} HTTP/1.1\r\nHost: fn\r\n\r\n")?;
        let mut r = String::new();
        c.read_to_string(&mut r)?;
        Ok(r)
    })
}

/// The address a container got in its VPC (from its annotations).
fn address_of(s: &Sandbox, id: &str) -> Ipv4Addr {
    let st = s.state(id);
    st["annotations"]["io.sprout.netplug.address"]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no VPC address: {st}"))
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_restored_function_joins_a_vpc_and_gives_its_namespace_back() {
    let mut s = python_sandbox("np-restore");
    let _vpcs = VpcGuard(s.root.clone());
    create_native_vpc(&s, "fn", "198.18.29.0/24", 2, &[]);
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 2");
    // Checkpointed from a container in a namespace of its own.
    let (img, warm) = python_image(&s);
    let img = img.to_str().unwrap().to_string();
    let subnet: netplug::Subnet = "198.18.29.0/24".parse().unwrap();
    let np = open_netplug(&s.root);
    // Another namespace of the VPC, to call the function from.
    let client = np.take("fn", &Owner::this_process()).unwrap();
    let leased = |s: &Sandbox| pool(&status(s), "fn")["leased"].as_u64().unwrap();

    // --vpc on the command line.
    let r1 = format!("{}-r1", s.id);
    s.ok(&restore_argv(&s, &img, &["--vpc", "fn"], &r1));
    let a1 = address_of(&s, &r1);
    assert!(subnet.is_host(a1) && a1 != client.address, "{a1}");
    let got = json_body(&http_get_from(&client.fd, a1, 8080, "/r1").unwrap());
    assert_eq!(got["digest"], warm["digest"], "{got}");
    assert_eq!(got["requests"], 2, "{got}");
    assert_eq!(leased(&s), 2);
    s.ok(&["delete", "--force", &r1]);
    assert_eq!(leased(&s), 1, "delete did not give the namespace back");

    // The annotation, as containerd would pass it.
    s.config()["annotations"] = serde_json::json!({ "io.sprout.vpc": "fn" });
    s.write_config();
    let r2 = format!("{}-r2", s.id);
    s.ok(&restore_argv(&s, &img, &[], &r2));
    let a2 = address_of(&s, &r2);
    assert!(subnet.is_host(a2) && a2 != client.address, "{a2}");
    let got = json_body(&http_get_from(&client.fd, a2, 8080, "/r2").unwrap());
    assert_eq!(got["digest"], warm["digest"], "{got}");
    assert_eq!(got["path"], "/r2", "{got}");
    s.ok(&["delete", "--force", &r2]);
    assert_eq!(leased(&s), 1);

    // A restore that fails after the take gives the namespace back.
    let takes = pool(&status(&s), "fn")["counters"]["takes"]
        .as_u64()
        .unwrap();
    let r3 = format!("{}-r3", s.id);
    let missing = s.dir.path().join("no-such-image");
    let err = s.fails(&restore_argv(&s, missing.to_str().unwrap(), &[], &r3));
    assert!(err.contains("no-such-image"), "{err}");
    let st = status(&s);
    let p = pool(&st, "fn");
    assert_eq!(p["counters"]["takes"].as_u64(), Some(takes + 1), "{st}");
    assert_eq!(p["leased"], 1, "{st}");
    assert!(!s.root.join(&r3).exists());
    let err = s.fails(&restore_argv(&s, &img, &["--vpc", "nope"], &r3));
    assert!(err.contains("no VPC named nope"), "{err}");

    let id = client.id.clone();
    drop(client);
    np.give_back(&id).unwrap();
    let st = status(&s);
    assert_eq!(
        (
            pool(&st, "fn")["leased"].as_u64(),
            pool(&st, "fn")["ready"].as_u64()
        ),
        (Some(0), Some(2)),
        "{st}"
    );
    s.ok(&["vpc", "delete", "fn"]);
    assert_no_netplug_leftovers(&s.root);
    for id in [&r1, &r2, &r3] {
        s.assert_clean(id);
    }
}

/// The MTU of link `ifname` in the namespace at `ns`.
fn mtu_in(ns: &Path, ifname: &str) -> u32 {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or_else(|| panic!("no mtu for {ifname}: {text}"))
        .parse()
        .unwrap()
}

#[test]
fn the_mtu_reaches_the_bridge_and_every_namespace_and_survives_a_scrub() {
    let s = Sandbox::new("np-mtu");
    let _vpcs = VpcGuard(s.root.clone());
    // Out of range: a clear error, nothing made.
    let err = s.fails(&[
        "vpc",
        "create",
        "m",
        "--subnet",
        "198.18.33.0/24",
        "--mtu",
        "100",
    ]);
    assert!(err.contains("invalid MTU 100"), "{err}");
    assert!(!s.root.join(".netplug/ns/hub").exists());
    create_native_vpc(&s, "m", "198.18.33.0/24", 1, &["--mtu", "1400"]);
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 1");
    let hub = s.root.join(".netplug/ns/hub");
    assert_eq!(mtu_in(&hub, "npbr0"), 1400);
    let np = open_netplug(&s.root);
    let l = np.take("m", &Owner::this_process()).unwrap();
    assert_eq!(l.mtu, 1400);
    assert_eq!(mtu_in(&l.path, "eth0"), 1400);
    assert_eq!(mtu_in(&hub, &format!("np{}", l.id)), 1400);
    // A sandbox changes it; the scrub at give-back puts it back.
    let st = Command::new("nsenter")
        .arg(format!("--net={}", l.path.display()))
        .args(["ip", "link", "set", "eth0", "mtu", "1280"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(mtu_in(&l.path, "eth0"), 1280);
    let (id, path) = (l.id.clone(), l.path.clone());
    drop(l);
    np.give_back(&id).unwrap();
    let again = np.take("m", &Owner::this_process()).unwrap();
    assert_eq!(again.id, id, "the scrubbed namespace was not reused");
    assert_eq!(mtu_in(&path, "eth0"), 1400);
    let id = again.id.clone();
    drop(again);
    np.give_back(&id).unwrap();
    s.ok(&["vpc", "delete", "m"]);
    assert_no_netplug_leftovers(&s.root);
}

#[test]
fn destroy_on_give_back_removes_the_namespace() {
    let mut s = Sandbox::new("np-destroy");
    let _vpcs = VpcGuard(s.root.clone());
    // The VPC's own policy, through the CLI.
    create_native_vpc(&s, "dz", "198.18.34.0/24", 1, &["--destroy-on-give-back"]);
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 1");
    s.config()["linux"]["cgroupsPath"] = serde_json::json!(format!("{}-1", s.cgroup));
    s.set_args(&["sleep", "60"]);
    let id = unique_id("np-destroy");
    s.ok(&["run", "-b", s.bundle_str(), "-d", "--vpc", "dz", &id]);
    let lease = s.state(&id)["annotations"]["io.sprout.netplug.lease"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(netplug::netns::is_ns_file(
        &s.root.join(".netplug/ns").join(&lease)
    ));
    s.ok(&["delete", "--force", &id]);
    assert_gone(&s.root, &lease);
    let st = status(&s);
    let p = pool(&st, "dz");
    assert_eq!(
        (
            p["leased"].as_u64(),
            p["ready"].as_u64(),
            p["counters"]["destroyed"].as_u64(),
            p["counters"]["reused"].as_u64()
        ),
        (Some(0), Some(0), Some(1), Some(0)),
        "{st}"
    );

    // Netplug's own option, for a VPC that would reuse.
    s.ok(&["vpc", "create", "dr", "--subnet", "198.18.35.0/24"]);
    let mut opts = Options::new(&s.root);
    opts.give_back = netplug::GiveBackPolicy::Destroy;
    let np = BlockingNetplug::open(opts).unwrap();
    let l = np.take("dr", &Owner::this_process()).unwrap();
    let lid = l.id.clone();
    drop(l);
    np.give_back(&lid).unwrap();
    assert_gone(&s.root, &lid);
    assert_eq!(np.status().unwrap().pools[1].ready, 0);
    // The same VPC with the default policy reuses.
    let np = open_netplug(&s.root);
    let l = np.take("dr", &Owner::this_process()).unwrap();
    let lid = l.id.clone();
    drop(l);
    np.give_back(&lid).unwrap();
    assert!(netplug::netns::is_ns_file(
        &s.root.join(".netplug/ns").join(&lid)
    ));
    s.ok(&["vpc", "delete", "dz"]);
    s.ok(&["vpc", "delete", "dr"]);
    assert_no_netplug_leftovers(&s.root);
    s.assert_clean(&id);
}

/// A sandbox cannot make the hub answer into another VPC by spoofing one
/// of its addresses: a datagram to its own gateway's closed port, sent
/// from VPC b's address, must not bring b an ICMP error.
#[test]
fn a_spoofed_source_gets_no_answer_into_another_vpc() {
    let s = Sandbox::new("np-spoof");
    let _vpcs = VpcGuard(s.root.clone());
    create_native_vpc(&s, "a", "198.18.38.0/24", 1, &[]);
    create_native_vpc(&s, "b", "198.18.39.0/24", 1, &[]);
    // A hub made before the setting (here: turned off by hand) gets it
    // from the next process that opens it.
    let hub = s.root.join(".netplug/ns/hub");
    let in_hub = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", hub.display()))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    in_hub(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
    assert_eq!(
        in_hub(&["cat", "/proc/sys/net/ipv4/conf/all/rp_filter"]),
        "0"
    );
    let np = open_netplug(&s.root);
    let la = np.take("a", &Owner::this_process()).unwrap();
    let lb = np.take("b", &Owner::this_process()).unwrap();
    // In b: every ICMP message that arrives.
    let icmp = in_ns(&lb.fd, || {
        // SAFETY: plain socket(2); the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd of ours.
        let sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        sock
    });
    let (spoofed, gateway) = (lb.address, la.gateway);
    in_ns(&la.fd, || {
        let ip = Command::new("ip")
            .args(["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
            .status()
            .unwrap();
        assert!(ip.success());
        let u = std::net::UdpSocket::bind((spoofed, 0)).unwrap();
        u.send_to(b"spoof", (gateway, 9)).unwrap();
    });
    let mut buf = [0u8; 256];
    let got = icmp.recv(&mut buf);
    assert!(
        got.is_err(),
        "VPC b got an ICMP message ({got:?} bytes) caused by VPC a"
    );
    assert_eq!(
        in_hub(&["cat", "/proc/sys/net/ipv4/conf/all/rp_filter"]),
        "1"
    );
    drop((la, lb));
    s.ok(&["vpc", "delete", "-f", "a"]);
    s.ok(&["vpc", "delete", "-f", "b"]);
    assert_no_netplug_leftovers(&s.root);
}

/// A builder that died after writing its ready record but before removing
/// its building record finished its namespace: gc drops the stale building
/// record and leaves the namespace to its lease (it used to destroy it
/// under the holder).
#[test]
fn gc_leaves_a_finished_namespace_with_a_stale_building_record_alone() {
    let s = Sandbox::new("np-stalebuild");
    let _vpcs = VpcGuard(s.root.clone());
    create_native_vpc(&s, "sb", "198.18.48.0/24", 1, &[]);
    let np = open_netplug(&s.root);
    let l = np.take("sb", &Owner::this_process()).unwrap();
    let building = s
        .root
        .join(".netplug/building")
        .join(format!("{}.json", l.id));
    fs::create_dir_all(building.parent().unwrap()).unwrap();
    fs::write(
        &building,
        serde_json::json!({"id": l.id, "vpc": "sb", "builder": {"pid": 0, "start": 0}, "cni": false})
            .to_string(),
    )
    .unwrap();
    let report = np.gc().unwrap();
    assert!(!report.destroyed.contains(&l.id), "{report:?}");
    assert!(!building.exists());
    assert!(netplug::netns::is_ns_file(&l.path));
    assert!(links_in(&s.root.join(".netplug/ns/hub")).contains(&format!("np{}", l.id)));
    let id = l.id.clone();
    drop(l);
    np.give_back(&id).unwrap();
    s.ok(&["vpc", "delete", "sb"]);
    assert_no_netplug_leftovers(&s.root);
}

/// A namespace still in use at give-back is destroyed, never handed to
/// the next sandbox: a socket left open in it (an fd passed out of the
/// sandbox; here the test holds a listener) would take the next one's
/// connections, and a process still inside could open one at any time.
#[test]
fn a_namespace_still_in_use_is_not_reused() {
    let s = Sandbox::new("np-inuse");
    let _vpcs = VpcGuard(s.root.clone());
    create_native_vpc(&s, "iu", "198.18.37.0/24", 1, &[]);
    let np = open_netplug(&s.root);
    let l = np.take("iu", &Owner::this_process()).unwrap();
    let lid = l.id.clone();
    let listener = in_ns(&l.fd, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7100)).unwrap()
    });
    drop(l);
    np.give_back(&lid).unwrap();
    assert_gone(&s.root, &lid);
    drop(listener);

    let l = np.take("iu", &Owner::this_process()).unwrap();
    let lid = l.id.clone();
    let inside = Reaped(
        Command::new("nsenter")
            .arg(format!("--net={}", l.path.display()))
            .args(["sleep", "60"])
            .spawn()
            .unwrap(),
    );
    let ns_of = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let want = Some(PathBuf::from(format!(
        "net:[{}]",
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&l.path).unwrap())
    )));
    assert!(
        wait_until(Duration::from_secs(5), || ns_of(inside.0.id()) == want),
        "{:?} {want:?}",
        ns_of(inside.0.id())
    );
    drop(l);
    np.give_back(&lid).unwrap();
    assert_gone(&s.root, &lid);
    drop(inside);

    // Nothing left in it: reused.
    let l = np.take("iu", &Owner::this_process()).unwrap();
    let lid = l.id.clone();
    drop(l);
    np.give_back(&lid).unwrap();
    assert!(netplug::netns::is_ns_file(
        &s.root.join(".netplug/ns").join(&lid)
    ));
    s.ok(&["vpc", "delete", "iu"]);
    assert_no_netplug_leftovers(&s.root);
}

/// A container that may reconfigure its pooled namespace beyond what a
/// scrub undoes (a rule, a route in another table) gets it destroyed at
/// give-back, so the next container of the VPC never sees what it did:
/// one holding CAP_NET_ADMIN, and one whose exec was given it.
#[test]
fn a_namespace_its_container_may_reconfigure_is_not_reused() {
    let mut s = Sandbox::new("np-reach");
    let _vpcs = VpcGuard(s.root.clone());
    create_native_vpc(&s, "rc", "198.18.46.0/24", 1, &[]);
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 1");
    s.config()["linux"]["cgroupsPath"] = serde_json::json!(format!("{}-1", s.cgroup));
    let lease_of = |s: &Sandbox, id: &str| {
        s.state(id)["annotations"]["io.sprout.netplug.lease"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let counters = |s: &Sandbox| {
        let st = status(s);
        let c = &pool(&st, "rc")["counters"];
        (
            c["reused"].as_u64().unwrap(),
            c["destroyed"].as_u64().unwrap(),
        )
    };
    let leave_traces = "ip rule add from 198.18.46.77 table 100 && \
                        ip route add 10.9.9.0/24 dev eth0 table 100";
    let traces = "ip rule; ip route show table 100";

    // A plain container: reused (what scrubbing covers is all it can do).
    s.set_args(&["sleep", "60"]);
    let plain = unique_id("np-reach-plain");
    s.ok(&["run", "-b", s.bundle_str(), "-d", "--vpc", "rc", &plain]);
    let first = lease_of(&s, &plain);
    s.ok(&["delete", "--force", &plain]);
    assert_eq!(counters(&s), (1, 0));

    // CAP_NET_ADMIN: it leaves a rule and a route, and its namespace goes.
    let admin = serde_json::json!(["CAP_NET_ADMIN"]);
    for set in ["bounding", "effective", "permitted"] {
        s.config()["process"]["capabilities"][set] = admin.clone();
    }
    s.set_args(&[
        "sh",
        "-c",
        &format!("{leave_traces} && echo done && exec sleep 60"),
    ]);
    let holder = unique_id("np-reach-admin");
    s.ok(&["run", "-b", s.bundle_str(), "-d", "--vpc", "rc", &holder]);
    let taken = lease_of(&s, &holder);
    assert_eq!(taken, first, "the pool's one namespace, reused");
    s.ok(&["delete", "--force", &holder]);
    assert_gone(&s.root, &taken);
    assert_eq!(counters(&s), (1, 1));

    // An exec given CAP_NET_ADMIN in a plain container: the same.
    let plain_caps = serde_json::json!(["CAP_KILL"]);
    for set in ["bounding", "effective", "permitted"] {
        s.config()["process"]["capabilities"][set] = plain_caps.clone();
    }
    s.set_args(&["sleep", "60"]);
    let execd = unique_id("np-reach-exec");
    s.ok(&["run", "-b", s.bundle_str(), "-d", "--vpc", "rc", &execd]);
    let taken = lease_of(&s, &execd);
    s.ok(&[
        "exec",
        "--cap",
        "CAP_NET_ADMIN",
        &execd,
        "sh",
        "-c",
        leave_traces,
    ]);
    s.ok(&["delete", "--force", &execd]);
    assert_gone(&s.root, &taken);
    assert_eq!(counters(&s), (1, 2));

    // The next container sees none of it.
    s.set_args(&["sh", "-c", traces]);
    let next = unique_id("np-reach-next");
    let out = s.ok(&["run", "-b", s.bundle_str(), "--vpc", "rc", &next]);
    assert!(
        !out.contains("198.18.46.77") && !out.contains("10.9.9.0"),
        "{out}"
    );
    s.ok(&["vpc", "delete", "rc"]);
    assert_no_netplug_leftovers(&s.root);
    for id in [&plain, &holder, &execd, &next] {
        s.assert_clean(id);
    }
}

/// IPv4 forwarding in the hub of state root `root`.
fn hub_forwarding(root: &Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", root.join(".netplug/ns/hub").display()))
        .args(["cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_hub_does_not_forward_unless_asked() {
    let s = Sandbox::new("np-fwd");
    let _vpcs = VpcGuard(s.root.clone());
    s.ok(&["vpc", "create", "f", "--subnet", "198.18.36.0/24"]);
    assert_eq!(hub_forwarding(&s.root), "0");
    assert_eq!(status(&s)["forwarding"], false);
    assert!(s.ok(&["netplug", "status"]).contains("forwarding off"));
    s.ok(&["netplug", "forwarding", "on"]);
    assert_eq!(hub_forwarding(&s.root), "1");
    assert_eq!(status(&s)["forwarding"], true);
    s.ok(&["netplug", "forwarding", "off"]);
    assert_eq!(hub_forwarding(&s.root), "0");
    // A hub made again (the last VPC took the old one with it) keeps the
    // setting.
    s.ok(&["vpc", "delete", "f"]);
    s.ok(&["netplug", "forwarding", "on"]);
    s.ok(&["vpc", "create", "f", "--subnet", "198.18.36.0/24"]);
    assert_eq!(hub_forwarding(&s.root), "1");
    s.ok(&["netplug", "forwarding", "off"]);
    s.ok(&["vpc", "delete", "f"]);
    s.ok(&["vpc", "create", "f", "--subnet", "198.18.36.0/24"]);
    assert_eq!(hub_forwarding(&s.root), "0");
    s.ok(&["vpc", "delete", "f"]);
    assert_no_netplug_leftovers(&s.root);
}

/// A TCP connection from namespace `from` to `addr:port` that gets
/// through within 2 s.
fn connects(from: &OwnedFd, addr: Ipv4Addr, port: u16) -> bool {
    in_ns(from, || {
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(2))
            .and_then(|mut c| c.write_all(b"x"))
            .is_ok()
    })
}

#[test]
fn a_cni_vpc_and_a_native_vpc_are_isolated_and_listed() {
    let s = Sandbox::new("np-mixed");
    let _vpcs = VpcGuard(s.root.clone());
    // A default route, as real networks have: the isolation
    // must come from the rules, not from a missing route.
    let conflist = bridge_conflist(&s, "sprout-test-mixed", "npcni1", "198.18.30.0/24", true);
    create_cni_vpc(&s, "ci", &conflist, 1);
    create_native_vpc(
        &s,
        "na",
        "198.18.31.0/24",
        1,
        &["--mtu", "1450", "--destroy-on-give-back"],
    );
    // `vpc list`: a row per VPC, in both formats.
    let table = s.ok(&["vpc", "list"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["NAME", "SUBNET", "GATEWAY", "BRIDGE", "MTU", "POOL", "MODE"],
            vec![
                "ci",
                "198.18.30.0/24",
                "198.18.30.1",
                "npcni1",
                "1500",
                "1",
                "cni"
            ],
            vec![
                "na",
                "198.18.31.0/24",
                "198.18.31.1",
                "npbr0",
                "1450",
                "1",
                "native"
            ],
        ],
        "{table}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&s.ok(&["vpc", "ls", "-f", "json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["name"], "na");
    assert_eq!(list[1]["give_back"], "destroy");
    assert_eq!(list[0]["fill"]["mode"], "cni");

    s.ok(&["netplug", "forwarding", "on"]);
    assert_eq!(s.ok(&["netplug", "fill"]).trim(), "made 2");
    let np = open_netplug(&s.root);
    let c = np.take("ci", &Owner::this_process()).unwrap();
    let n = np.take("na", &Owner::this_process()).unwrap();
    let before = np.status().unwrap().drops;
    let drop_count = |drops: &[netplug::DropCounter], vpc: &str, hook: &str| {
        drops
            .iter()
            .find(|d| d.vpc == vpc && d.hook == hook)
            .map(|d| d.packets)
            .unwrap_or(0)
    };
    // Each reaches its own gateway (the hub answers on both).
    for (from, gw, port) in [(&c, c.gateway, 7400), (&n, n.gateway, 7401)] {
        let got = listen_once(hub_fd(&s.root), gw, port, Duration::from_secs(10));
        assert!(
            connects(&from.fd, gw, port),
            "no way to its own gateway {gw}"
        );
        assert!(got.join().unwrap().is_some());
    }
    // Neither reaches the other's sandboxes or gateway, both ways.
    for (from, to, port) in [(&c, &n, 7402), (&n, &c, 7403)] {
        let got = listen_once(
            to.fd.try_clone().unwrap(),
            to.address,
            port,
            Duration::from_secs(4),
        );
        assert!(
            !connects(&from.fd, to.address, port),
            "VPC {} reached a sandbox of VPC {}",
            from.vpc,
            to.vpc
        );
        assert_eq!(got.join().unwrap(), None);
        let got = listen_once(hub_fd(&s.root), to.gateway, port, Duration::from_secs(4));
        assert!(
            !connects(&from.fd, to.gateway, port),
            "VPC {} reached the gateway of VPC {}",
            from.vpc,
            to.vpc
        );
        assert_eq!(got.join().unwrap(), None);
    }
    let after = np.status().unwrap().drops;
    for vpc in ["ci", "na"] {
        for hook in ["forward", "input"] {
            assert!(
                drop_count(&after, vpc, hook) > drop_count(&before, vpc, hook),
                "{vpc} {hook}: {after:?}"
            );
        }
    }
    let (ci, ni) = (c.id.clone(), n.id.clone());
    drop((c, n));
    np.give_back(&ci).unwrap();
    np.give_back(&ni).unwrap();
    s.ok(&["vpc", "delete", "ci"]);
    s.ok(&["vpc", "delete", "na"]);
    assert_no_netplug_leftovers(&s.root);
}

/// A CNI bridge plugin for the test below, put in front of the real one:
/// an ADD from any process but this test's blocks while `gate` exists
/// (saying so in `blocked`), then fails if `fail` exists (adding a line
/// to `failed`).
fn gated_cni_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("cni");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/usr/lib/cni/host-local", bin.join("host-local")).unwrap();
    let d = dir.display();
    let script = format!(
        r#"#!/bin/sh
if [ "$CNI_COMMAND" = ADD ] && [ "$PPID" != {me} ]; then
  if [ -e {d}/gate ]; then
    : > {d}/blocked
    while [ -e {d}/gate ]; do sleep 0.05; done
    rm -f {d}/blocked
  fi
  if [ -e {d}/fail ]; then
    echo x >> {d}/failed
    echo '{{"cniVersion":"1.0.0","code":11,"msg":"made to fail by the test"}}'
    exit 1
  fi
fi
exec /usr/lib/cni/bridge
"#,
        me = std::process::id()
    );
    fs::write(bin.join("bridge"), script).unwrap();
    fs::set_permissions(
        bin.join("bridge"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    bin
}

#[test]
fn a_take_never_waits_for_the_refill() {
    let s = Sandbox::new("np-slow");
    let _vpcs = VpcGuard(s.root.clone());
    let d = s.dir.path();
    let cni = gated_cni_dir(d);
    let conflist = bridge_conflist(&s, "sprout-test-slow", "npcni2", "198.18.32.0/24", false);
    create_cni_vpc(&s, "sl", &conflist, 1);
    // The holder's first build hangs in the plugin.
    fs::write(d.join("gate"), "").unwrap();
    let holder = Reaped(
        s.cmd()
            .env("SPROUT_CNI_PATH", &cni)
            .args(["netplug", "serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(30), || d.join("blocked").exists()),
        "the refill never ran the plugin"
    );
    let mut opts = Options::new(&s.root);
    opts.cni_path = cni.clone();
    let np = BlockingNetplug::open(opts).unwrap();
    // A take from the empty pool: made on the spot while the refill's
    // build is stuck (a take that waited for it would never return).
    let take = || {
        let (tx, rx) = std::sync::mpsc::channel();
        let root = s.root.clone();
        let cni = cni.clone();
        std::thread::spawn(move || {
            let mut opts = Options::new(&root);
            opts.cni_path = cni;
            let np = BlockingNetplug::open(opts).unwrap();
            let lease = np.take("sl", &Owner::this_process());
            // Its counters go to the state when it is dropped.
            drop(np);
            let _ = tx.send(lease);
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the take waited for the refill")
            .unwrap()
    };
    let first = take();
    let st = np.status().unwrap();
    let p = &st.pools[0];
    assert_eq!((p.counters.takes, p.counters.misses), (1, 1), "{p:?}");
    assert_eq!(p.ready, 0, "{p:?}");
    assert!(
        d.join("blocked").exists() && state_files(&s.root, "building").len() == 1,
        "the refill was not stuck during the take"
    );

    // Now the refill fails instead, round after round; takes still work.
    fs::write(d.join("fail"), "").unwrap();
    fs::remove_file(d.join("gate")).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || lines(&d.join("failed")).len()
            >= 2),
        "the refill did not try again"
    );
    let second = take();
    let st = np.status().unwrap();
    let p = &st.pools[0];
    assert_eq!((p.counters.takes, p.counters.misses), (2, 2), "{p:?}");
    // Failed builds leave nothing: every CNI address is a lease's.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let ipam: Vec<_> = state_files(&s.root, "cni/sl/ipam")
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .parse::<Ipv4Addr>()
                        .is_ok()
                })
                .collect();
            state_files(&s.root, "building").is_empty() && ipam.len() == 2
        }),
        "a failed build left something: {:?}",
        walk(&s.root.join(".netplug"))
    );
    for l in [first, second] {
        let id = l.id.clone();
        drop(l);
        np.give_back(&id).unwrap();
    }
    fs::remove_file(d.join("fail")).unwrap();
    let mut holder = holder;
    signal(holder.0.id() as i32, nix::sys::signal::Signal::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(30), || holder
            .0
            .try_wait()
            .unwrap()
            .is_some()),
        "the holder did not stop on SIGTERM"
    );
    s.ok(&["vpc", "delete", "sl"]);
    assert_no_netplug_leftovers(&s.root);
}
