//! What the restorer, root with every capability until the end, must not
//! make on a process's behalf: kernel state that the process, with the
//! bundle's capabilities, could not have made itself. An image is
//! untrusted; one that holds such state is refused before the sandbox
//! runs anything (the bundle gives the privilege, or the image is not
//! this sandbox's).

use oci_spec::runtime::{Capability, Process};

use crate::image::{
    EpollTarget, Fd, FdObject, ManifestBody, PosixTimer, SockAddr, SocketState, VmFlag, Vma,
};

use super::RestoreError;

const CLOCK_REALTIME_ALARM: i32 = 8;
const CLOCK_BOOTTIME_ALARM: i32 = 9;
const EPOLLWAKEUP: u32 = 1 << 29;
/// Ports below this need CAP_NET_BIND_SERVICE: the kernel's default
/// `net.ipv4.ip_unprivileged_port_start`, unless the spec sets it (as
/// Docker and containerd's CRI do, to 0).
const UNPRIVILEGED_PORT_START: u16 = 1024;

/// Refuses `m` if restoring it would give the process something its
/// bundle's effective capabilities (`process`) do not allow: a port
/// below 1024, an alarm clock, an epoll wakeup source, a pipe above
/// `fs.pipe-max-size`, or locked memory above its `RLIMIT_MEMLOCK`.
/// (Socket buffers above `net.core.[rw]mem_max` are clamped instead:
/// see [`crate::fds::RestoreOptions::force_socket_buffers`].)
pub(super) fn check(
    m: &ManifestBody,
    process: &Process,
    sysctl: Option<&std::collections::HashMap<String, String>>,
) -> Result<(), RestoreError> {
    let port_start = sysctl
        .and_then(|s| {
            s.get("net.ipv4.ip_unprivileged_port_start")
                .or_else(|| s.get("net/ipv4/ip_unprivileged_port_start"))
        })
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(UNPRIVILEGED_PORT_START, |v| v.min(65536) as u16);
    check_objects(
        &m.fds,
        &m.process.posix_timers,
        &m.vmas,
        process,
        port_start,
    )
}

fn check_objects(
    fds: &[Fd],
    posix_timers: &[PosixTimer],
    vmas: &[Vma],
    process: &Process,
    port_start: u16,
) -> Result<(), RestoreError> {
    let caps = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.effective().clone())
        .unwrap_or_default();
    let has = |c: Capability| caps.contains(&c);
    let needs = |what: String, capability: &'static str| {
        Err(RestoreError::NeedsPrivilege { what, capability })
    };
    for f in fds {
        match &f.object {
            FdObject::Socket(s) => {
                let port = match &s.local {
                    Some(SockAddr::Inet { addr }) if !matches!(s.state, SocketState::Unbound) => {
                        addr.port()
                    }
                    _ => 0,
                };
                if port != 0 && port < port_start && !has(Capability::NetBindService) {
                    return needs(
                        format!("fd {} bound to port {port}", f.fd),
                        "CAP_NET_BIND_SERVICE",
                    );
                }
            }
            FdObject::Timerfd { clock, .. }
                if matches!(*clock, CLOCK_REALTIME_ALARM | CLOCK_BOOTTIME_ALARM)
                    && !has(Capability::WakeAlarm) =>
            {
                return needs(format!("fd {} alarm timerfd", f.fd), "CAP_WAKE_ALARM");
            }
            FdObject::Epoll { targets } if !has(Capability::BlockSuspend) => {
                if let Some(EpollTarget { tfd, .. }) =
                    targets.iter().find(|t| t.events & EPOLLWAKEUP != 0)
                {
                    return needs(
                        format!("fd {} EPOLLWAKEUP registration of fd {tfd}", f.fd),
                        "CAP_BLOCK_SUSPEND",
                    );
                }
            }
            FdObject::Pipe { capacity, .. } if !has(Capability::SysResource) => {
                if let Some(max) = read_sysctl("/proc/sys/fs/pipe-max-size")
                    && u64::from(*capacity) > max
                {
                    return needs(
                        format!(
                            "fd {} pipe of {capacity} bytes (above fs.pipe-max-size {max})",
                            f.fd
                        ),
                        "CAP_SYS_RESOURCE",
                    );
                }
            }
            _ => {}
        }
    }
    if let Some(t) = posix_timers
        .iter()
        .find(|t| matches!(t.clock, CLOCK_REALTIME_ALARM | CLOCK_BOOTTIME_ALARM))
        && !has(Capability::WakeAlarm)
    {
        return needs(
            format!("POSIX timer {} on an alarm clock", t.id),
            "CAP_WAKE_ALARM",
        );
    }
    if !has(Capability::IpcLock) {
        let locked: u64 = vmas
            .iter()
            .filter(|v| v.has(VmFlag::Locked))
            .map(|v| v.len())
            .sum();
        let limit = memlock_limit(process);
        if locked > 0 && limit.is_some_and(|l| locked > l) {
            return needs(
                format!(
                    "{locked} bytes of locked memory (RLIMIT_MEMLOCK {})",
                    limit.unwrap_or_default()
                ),
                "CAP_IPC_LOCK",
            );
        }
    }
    Ok(())
}

/// The bundle's soft RLIMIT_MEMLOCK, else the one the sandbox inherits
/// (this process's); `None` for unlimited.
fn memlock_limit(process: &Process) -> Option<u64> {
    let from_spec = process.rlimits().as_ref().and_then(|l| {
        l.iter()
            .find(|r| r.typ() == oci_spec::runtime::PosixRlimitType::RlimitMemlock)
            .map(|r| r.soft())
    });
    let soft = from_spec.unwrap_or_else(|| {
        super::own_rlimit(libc::RLIMIT_MEMLOCK).map_or(u64::MAX, |(cur, _)| cur)
    });
    (soft != libc::RLIM64_INFINITY).then_some(soft)
}

fn read_sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(caps: &[&str]) -> Process {
        serde_json::from_value(serde_json::json!({
            "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["x"],
            "capabilities": {"effective": caps, "bounding": caps, "permitted": caps}
        }))
        .unwrap()
    }

    #[test]
    fn alarm_clocks_and_wakeups_need_their_capabilities() {
        let timer = |clock| Fd {
            fd: 9,
            flags: 0,
            cloexec: false,
            object: FdObject::Timerfd {
                clock,
                settime_flags: 0,
                ticks: 0,
                interval_ns: 0,
                value_ns: 0,
            },
        };
        let check_fds = |fds: &[Fd], caps: &[&str]| {
            check_objects(fds, &[], &[], &process(caps), UNPRIVILEGED_PORT_START)
        };
        check_fds(&[timer(1)], &[]).unwrap();
        match check_fds(&[timer(CLOCK_BOOTTIME_ALARM)], &[]) {
            Err(RestoreError::NeedsPrivilege { capability, .. }) => {
                assert_eq!(capability, "CAP_WAKE_ALARM")
            }
            other => panic!("{other:?}"),
        }
        check_fds(&[timer(CLOCK_BOOTTIME_ALARM)], &["CAP_WAKE_ALARM"]).unwrap();
        let epoll = Fd {
            fd: 10,
            flags: 0,
            cloexec: false,
            object: FdObject::Epoll {
                targets: vec![EpollTarget {
                    tfd: 9,
                    events: EPOLLWAKEUP | 1,
                    data: 0,
                }],
            },
        };
        assert!(check_fds(&[timer(1), epoll.clone()], &[]).is_err());
        check_fds(&[timer(1), epoll], &["CAP_BLOCK_SUSPEND"]).unwrap();
    }
}
