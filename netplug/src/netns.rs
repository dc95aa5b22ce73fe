//! Network namespaces persisted by bind mounts, and work done inside one.
//!
//! A namespace is made by a short-lived thread that `unshare`s a new
//! network namespace for itself alone, bind-mounts
//! `/proc/thread-self/ns/net` onto a file, and opens a netlink socket in
//! it (a socket stays in the namespace it was made in, whichever thread
//! uses it later). The caller's own threads never change namespace.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

const NSFS_MAGIC: i64 = 0x6e73_6673;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount(src: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let target = cstr(target)?;
    let none = c"none";
    // SAFETY: all pointers are valid NUL-terminated strings (or null for
    // the source of a propagation change) that outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(none.as_ptr(), |s| s.as_ptr()),
            target.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

fn umount_detach(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: t is a valid NUL-terminated path.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) })
}

/// Makes `dir` a mount point of its own with shared propagation (as
/// `ip netns` does for /run/netns), so that unmounting a namespace file
/// also unmounts it in mount namespaces copied while it was mounted.
pub fn prepare_ns_dir(dir: &Path) -> Result<()> {
    let op = || format!("making {} a shared mount", dir.display());
    match mount(None, dir, libc::MS_SHARED) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(Error::sys(op())(e)),
    }
    // Not a mount point yet: bind it onto itself, in a peer group of its
    // own (private first, so it does not join its parent's group).
    mount(Some(dir), dir, libc::MS_BIND).map_err(Error::sys(op()))?;
    let r = mount(None, dir, libc::MS_PRIVATE).and_then(|()| mount(None, dir, libc::MS_SHARED));
    if let Err(e) = r {
        let _ = umount_detach(dir);
        return Err(Error::sys(op())(e));
    }
    Ok(())
}

/// Undoes [`prepare_ns_dir`].
pub fn release_ns_dir(dir: &Path) -> Result<()> {
    match umount_detach(dir) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(()),
        Err(e) => Err(Error::sys(format!("unmounting {}", dir.display()))(e)),
    }
}

/// Whether `path` is a mounted namespace file.
pub fn is_ns_file(path: &Path) -> bool {
    let Ok(p) = cstr(path) else { return false };
    // SAFETY: statfs fills the zeroed struct; p is a valid path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(p.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

/// The inode of a namespace file (identifies the namespace).
pub fn ns_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: fstat fills the zeroed struct for a valid fd.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(fd.as_raw_fd(), &mut st))?;
        Ok(st.st_ino)
    }
}

/// Opens the network namespace mounted at `path`. A plain file there (the
/// mount point of a namespace that is gone, e.g. after a reboot) is an
/// error, not a namespace.
pub fn open_ns(path: &Path) -> Result<OwnedFd> {
    let what = || format!("opening namespace {}", path.display());
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(Error::sys(what()))?;
    // SAFETY: fstatfs fills the zeroed struct for a valid fd.
    let fs_type = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        check(libc::fstatfs(f.as_raw_fd(), &mut st)).map_err(Error::sys(what()))?;
        st.f_type as i64
    };
    if fs_type != NSFS_MAGIC {
        return Err(Error::sys(what())(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a namespace (its mount is gone)",
        )));
    }
    Ok(f.into())
}

/// A new NETLINK_ROUTE socket in the calling thread's network namespace.
pub fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::PF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes a sysctl of the calling thread's network namespace, e.g.
/// `net/ipv4/ip_forward` (net sysctls are looked up in the namespace of
/// the task that opens them).
pub fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    fs::write(format!("/proc/sys/{key}"), value)
}

/// A namespace made by [`create`].
#[derive(Debug)]
pub struct NewNs {
    /// The namespace (an nsfs fd).
    pub fd: OwnedFd,
    /// A NETLINK_ROUTE socket inside it.
    pub netlink: OwnedFd,
}

/// Makes a network namespace, persisted by a bind mount on `path` (a new
/// file; an existing one is an error). `sysctls` are written inside
/// before anything else happens there. On error nothing is left.
pub fn create(path: &Path, sysctls: &[(&str, &str)]) -> Result<NewNs> {
    std::thread::scope(|s| {
        s.spawn(|| create_in_thread(path, sysctls))
            .join()
            .unwrap_or_else(|_| {
                Err(Error::sys("creating a network namespace")(
                    io::Error::other("namespace thread panicked"),
                ))
            })
    })
}

fn create_in_thread(path: &Path, sysctls: &[(&str, &str)]) -> Result<NewNs> {
    let op = |what: &str| format!("network namespace {}: {what}", path.display());
    // SAFETY: unshare only changes this (short-lived) thread's namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map_err(Error::sys(op("unshare")))?;
    for (k, v) in sysctls {
        write_sysctl(k, v).map_err(Error::sys(op(&format!("sysctl {k}"))))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(Error::sys(op("creating the mount point")))?;
    if let Err(e) = mount(
        Some(Path::new("/proc/thread-self/ns/net")),
        path,
        libc::MS_BIND,
    ) {
        let _ = fs::remove_file(path);
        return Err(Error::sys(op("bind mount"))(e));
    }
    let made = (|| {
        let fd = open_ns(path)?;
        let netlink = netlink_socket().map_err(Error::sys(op("netlink socket")))?;
        Ok(NewNs { fd, netlink })
    })();
    if made.is_err() {
        let _ = remove(path);
    }
    made
}

/// Unmounts and removes a namespace file; missing or unmounted is fine.
/// The namespace itself goes once nothing else holds it.
pub fn remove(path: &Path) -> Result<()> {
    match umount_detach(path) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
        Err(e) => return Err(Error::sys(format!("unmounting {}", path.display()))(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path)(e)),
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn run_in<R: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> R + Send) -> Result<R> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd changes only this
            // (short-lived) thread's network namespace.
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
                .map_err(Error::sys("joining a network namespace"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::sys("network namespace thread")(io::Error::other(
                "panicked",
            )))
        })
    })
}

/// What still uses network namespace `ns` besides its mount: open sockets
/// (`/proc/net/*` as seen from inside, so whoever holds them, an fd
/// passed out of a sandbox included; sockets no file holds and the
/// kernel's own netlink sockets aside) and processes with a thread inside
/// it. Not seen: an fd or a mount of the namespace itself kept elsewhere,
/// and SCTP sockets. A namespace in use
/// must never be handed to the next sandbox: a socket left there would
/// see, or take, its traffic.
pub fn users_of(ns: BorrowedFd<'_>) -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    // Our own (the netlink sockets netplug configures namespaces with,
    // which may linger until their connection task ends) do not count.
    let ours: std::collections::HashSet<String> = fs::read_dir("/proc/self/fd")
        .map_err(Error::sys("listing our descriptors"))?
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut users = run_in(ns, || {
        let mut found = Vec::new();
        for table in [
            "tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6", "icmp", "icmp6",
            "unix", "packet", "netlink",
        ] {
            let Ok(text) = fs::read_to_string(format!("/proc/thread-self/net/{table}")) else {
                continue;
            };
            let n = text
                .lines()
                .skip(1)
                .filter(|l| socket_in_use(table, l, &ours))
                .count();
            if n > 0 {
                found.push(format!("{n} {table} socket(s)"));
            }
        }
        found
    })?;
    let ino = fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd()))
        .map_err(Error::sys("looking at a network namespace"))?
        .ino();
    let inside = format!("net:[{ino}]");
    for e in fs::read_dir("/proc")
        .map_err(Error::sys("listing /proc"))?
        .flatten()
    {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // Every thread: one may have joined it while its leader did not.
        let Ok(tasks) = fs::read_dir(e.path().join("task")) else {
            continue;
        };
        let in_it = tasks.flatten().any(|t| {
            fs::read_link(t.path().join("ns/net")).is_ok_and(|l| l.as_os_str() == inside.as_str())
        });
        if in_it {
            users.push(format!("process {pid}"));
        }
    }
    Ok(users)
}

/// Whether a line of `/proc/net/<table>` is a socket someone holds. Inode
/// 0 is a socket no file holds any more (TIME_WAIT, an orphaned close in
/// progress): nobody's. Netlink sockets of the kernel (port id 0) and our
/// own (`ours`: our socket inodes) do not count.
fn socket_in_use(table: &str, line: &str, ours: &std::collections::HashSet<String>) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    let inode_column = match table {
        "unix" => 6,
        "packet" => 8,
        _ => 9,
    };
    let Some(&inode) = f.get(inode_column) else {
        return false;
    };
    // sk Eth Pid ...: the kernel's own netlink sockets have port id 0.
    let netplugs = table == "netlink" && (f.get(2) == Some(&"0") || ours.contains(inode));
    inode != "0" && !netplugs
}

/// A NETLINK_ROUTE socket inside namespace `ns`.
pub fn netlink_socket_in(ns: BorrowedFd<'_>) -> Result<OwnedFd> {
    run_in(ns, netlink_socket)?.map_err(Error::sys("netlink socket in a namespace"))
}

/// Joins `ns` in the calling thread (for a caller that is about to run a
/// sandbox in it, or a test/bench thread).
pub fn enter(ns: impl AsFd) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd; affects the calling thread.
    check(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_count_unless_no_file_holds_them_or_they_are_netlinks_own() {
        let ours: std::collections::HashSet<String> = ["777".to_string()].into();
        let tcp = |st: &str, ino: &str| {
            format!(
                "   0: 0100007F:1BBC 00000000:0000 {st} 00000000:00000000 00:00000000 00000000     0        0 {ino} 1 0000 100 0 0 10 0"
            )
        };
        assert!(socket_in_use("tcp", &tcp("0A", "1081"), &ours));
        // TIME_WAIT, FIN_WAIT2 of an orphan: inode 0.
        assert!(!socket_in_use("tcp", &tcp("06", "0"), &ours));
        assert!(!socket_in_use("tcp", &tcp("05", "0"), &ours));
        // Our inode counts outside netlink: the sandbox's socket an fd of
        // which we were handed is still its.
        assert!(socket_in_use("tcp", &tcp("0A", "777"), &ours));
        let unix = "000000002d56cb80: 00000003 00000000 00000000 0001 03  1078";
        assert!(socket_in_use("unix", unix, &ours));
        let netlink = |pid: &str, ino: &str| {
            format!(
                "0000000010d91b82 0   {pid}          00000000 0        0        0     2        0        {ino}"
            )
        };
        assert!(!socket_in_use("netlink", &netlink("0", "13776335"), &ours));
        assert!(!socket_in_use("netlink", &netlink("4242", "777"), &ours));
        assert!(socket_in_use("netlink", &netlink("4242", "778"), &ours));
        let packet = "0000000012345678 3      3    0003   2     1 0      0      9001";
        assert!(socket_in_use("packet", packet, &ours));
    }
}
