//! Process exit through pidfds: waiting for an exit in the event loop, and
//! reading the status of our own child (`waitid(P_PIDFD)`) or, on kernels
//! with `PIDFD_INFO_EXIT` (6.15+), of any process once it was reaped.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::engine::ExitStatus;

pub use sprout_runtime::container::wait_pidfd;
pub use sprout_runtime::spawn::pidfd_open;

/// Waits until the process behind `pidfd` has exited (or is a zombie).
pub async fn exited(pidfd: &OwnedFd) {
    let fd = match pidfd.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("dup of a pidfd: {e}; waiting on a thread");
            return wait_on_thread(pidfd).await;
        }
    };
    // SAFETY: an OwnedFd owned by the AsyncFd: open, and the same fd,
    // for the AsyncFd's whole life.
    match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
        Ok(afd) => {
            // A pidfd stays readable once the process has exited.
            let _ = afd.readable().await;
        }
        Err(e) => {
            tracing::warn!("registering a pidfd: {e}; waiting on a thread");
            wait_on_thread(pidfd).await
        }
    }
}

async fn wait_on_thread(pidfd: &OwnedFd) {
    let Ok(fd) = pidfd.try_clone() else { return };
    let _ = tokio::task::spawn_blocking(move || wait_pidfd(&fd, None)).await;
}

/// Reaps our own exited child: `Ok(Some)` with its status, `Ok(None)` if
/// it has not exited, `Err(ECHILD)` if it is not our child (or was reaped
/// by someone else).
pub fn try_reap_child(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid with P_PIDFD on a valid pidfd and a valid siginfo.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => ExitStatus::Signaled(status),
        _ => ExitStatus::Unknown,
    }))
}

/// `struct pidfd_info` (include/uapi/linux/pidfd.h), version 0 (64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

/// The exit status of a reaped process, read from its pidfd (Linux 6.15+);
/// `None` if it is not reaped yet or the kernel cannot tell.
pub fn exit_info(pidfd: &OwnedFd) -> Option<ExitStatus> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..Default::default()
    };
    // SAFETY: PIDFD_GET_INFO fills at most size_of::<PidfdInfo>() bytes of
    // `info`, a properly sized and aligned struct pidfd_info.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    if r < 0 || info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    Some(ExitStatus::from_wait_status(info.exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_info_layout() {
        assert_eq!(std::mem::size_of::<PidfdInfo>(), 64);
        assert_eq!(PIDFD_GET_INFO, 0xC040_FF0B);
    }

    #[tokio::test]
    async fn child_exit_status() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        exited(&fd).await;
        assert_eq!(try_reap_child(&fd).unwrap(), Some(ExitStatus::Exited(7)));
        // Reaped: nothing more for waitid, but the kernel may know it.
        assert!(try_reap_child(&fd).is_err());
        if let Some(s) = exit_info(&fd) {
            assert_eq!(s, ExitStatus::Exited(7));
        }
        drop(child);
    }
}
