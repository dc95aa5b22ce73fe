//! Which namespaces a container gets and how: created by the clone,
//! unshared later by the init (cgroup, time), or joined by path.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::spawn::{NamespaceJoin, SpawnError};

pub fn clone_flag(t: LinuxNamespaceType) -> i32 {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// The namespace plan of a new container.
#[derive(Debug, Default)]
pub struct NamespacePlan {
    /// Flags for clone3.
    pub clone_flags: u64,
    /// Joined by path before the exec, user namespace first (so that
    /// joining the others is checked against it).
    pub joins: Vec<NamespaceJoin>,
    /// A mount namespace joined by path: the init joins it itself, after
    /// its own binary is loaded (inside, the helper's path may not exist).
    pub join_mount: Option<OwnedFd>,
    pub joins_pid: bool,
    pub new_user: bool,
    pub new_cgroup: bool,
    pub new_time: bool,
    pub has: Vec<LinuxNamespaceType>,
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(transparent)]
    Open(#[from] SpawnError),
    #[error(
        "a new user namespace together with joined namespaces ({0}) is not supported: join the user namespace too, or create the others"
    )]
    NewUserWithJoins(String),
}

pub fn plan(namespaces: &[LinuxNamespace]) -> Result<NamespacePlan, NamespaceError> {
    let mut p = NamespacePlan::default();
    let mut joins: Vec<(LinuxNamespaceType, OwnedFd)> = Vec::new();
    for ns in namespaces {
        p.has.push(ns.typ());
        match ns.path() {
            Some(path) => {
                let fd = File::open(path).map_err(|source| SpawnError::OpenNamespace {
                    joined: ns.typ().to_string(),
                    path: path.clone(),
                    source,
                })?;
                joins.push((ns.typ(), fd.into()));
            }
            None => match ns.typ() {
                // Created by the init once it sits in its cgroup / before
                // its offsets are written; see init::unshare_late_namespaces.
                LinuxNamespaceType::Cgroup => p.new_cgroup = true,
                LinuxNamespaceType::Time => p.new_time = true,
                t => {
                    if t == LinuxNamespaceType::User {
                        p.new_user = true;
                    }
                    p.clone_flags |= clone_flag(t) as u32 as u64;
                }
            },
        }
    }
    if p.new_user && !joins.is_empty() {
        let names: Vec<String> = joins.iter().map(|(t, _)| t.to_string()).collect();
        return Err(NamespaceError::NewUserWithJoins(names.join(", ")));
    }
    joins.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
    for (t, fd) in joins {
        if t == LinuxNamespaceType::Mount {
            p.join_mount = Some(fd);
            continue;
        }
        if t == LinuxNamespaceType::Pid {
            p.joins_pid = true;
        }
        p.joins.push(NamespaceJoin {
            fd,
            nstype: clone_flag(t),
        });
    }
    Ok(p)
}

/// uid_map/gid_map file contents from OCI mappings.
pub fn id_map_text(maps: &[oci_spec::runtime::LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A new network namespace, made on a short-lived thread (the caller's
/// stays as it is), with its loopback interface up if `lo_up`.
pub fn new_network_namespace(lo_up: bool) -> std::io::Result<OwnedFd> {
    std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        let ns: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
        if lo_up {
            loopback_up()?;
        }
        Ok(ns)
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// Brings `lo` of the calling thread's network namespace up.
fn loopback_up() -> std::io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero ifreq is valid; SIOCGIFFLAGS/SIOCSIFFLAGS on a
    // socket with a NUL-terminated interface name.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(v: serde_json::Value) -> Vec<LinuxNamespace> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn new_namespaces_become_clone_flags_except_cgroup_and_time() {
        let p = plan(&ns(serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}, {"type": "time"}
        ])))
        .unwrap();
        assert_eq!(
            p.clone_flags,
            (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWNET) as u64
        );
        assert!(p.new_cgroup && p.new_time && !p.joins_pid);
    }

    #[test]
    fn joins_open_paths_user_first() {
        let p = plan(&ns(serde_json::json!([
            {"type": "network", "path": "/proc/self/ns/net"},
            {"type": "user", "path": "/proc/self/ns/user"},
            {"type": "pid", "path": "/proc/self/ns/pid"}
        ])))
        .unwrap();
        assert_eq!(p.joins[0].nstype, libc::CLONE_NEWUSER);
        assert!(p.joins_pid);
        let err = plan(&ns(
            serde_json::json!([{"type": "network", "path": "/nonexistent/ns"}]),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ns"), "{err}");
    }

    #[test]
    fn new_user_with_joins_is_refused() {
        let err = plan(&ns(serde_json::json!([
            {"type": "user"}, {"type": "network", "path": "/proc/self/ns/net"}
        ])));
        assert!(matches!(err, Err(NamespaceError::NewUserWithJoins(_))));
    }
}
