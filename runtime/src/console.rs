//! `terminal: true`: a pty made inside the container, its master handed to
//! whoever listens on `--console-socket` (SCM_RIGHTS), its slave made the
//! process's controlling terminal and stdio.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("creating the pty: {0}")]
    Pty(#[source] io::Error),
    #[error("sending the pty master to the console socket: {0}")]
    Send(#[source] io::Error),
    #[error("making the pty the controlling terminal: {0}")]
    Ctty(#[source] io::Error),
}

/// A pty pair: the master goes out, the slave becomes stdio.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

/// Opens a pty from the current `/dev/ptmx` (inside the container: its
/// devpts instance) and sets its size.
pub fn open_pty(size: Option<(u16, u16)>) -> Result<Pty, ConsoleError> {
    let e = |err: nix::Error| ConsoleError::Pty(err.into());
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(e)?;
    grantpt(&master).map_err(e)?;
    unlockpt(&master).map_err(e)?;
    let name = ptsname_r(&master).map_err(e)?;
    // The slave from the master itself (TIOCGPTPEER), never by its path:
    // /dev/pts is the container's, and what that path names could be
    // something else (runc's CVE-2025-52565).
    // SAFETY: an ioctl on the master we own; the result is a new fd or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(ConsoleError::Pty(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd; we own it from here.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(ConsoleError::Pty(io::Error::last_os_error()));
        }
    }
    // SAFETY: `master` owns a valid fd; we move it out of nix's wrapper.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok(Pty {
        master,
        slave,
        slave_path: PathBuf::from(name),
    })
}

/// Sends `fd` over a connected unix socket, with `name` as the payload
/// (runc sends the pty's path; containerd's receiver accepts any name).
pub fn send_fd(socket: RawFd, fd: RawFd, name: &str) -> Result<(), ConsoleError> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| ConsoleError::Send(e.into()))?;
    Ok(())
}

/// Makes `slave` the controlling terminal of a new session and dups it to
/// 0, 1 and 2.
pub fn become_tty(slave: &OwnedFd) -> Result<(), ConsoleError> {
    nix::unistd::setsid().map_err(|e| ConsoleError::Ctty(e.into()))?;
    // SAFETY: TIOCSCTTY on a valid tty fd with argument 0.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(ConsoleError::Ctty(io::Error::last_os_error()));
    }
    for target in 0..3 {
        // SAFETY: dup2 of a valid fd onto a standard descriptor number.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(ConsoleError::Ctty(io::Error::last_os_error()));
        }
    }
    Ok(())
}
