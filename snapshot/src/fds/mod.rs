//! File descriptors, both directions (DESIGN "Snapshot", restore-pitfalls
//! §8): [`dump_fds`] reads a stopped process's fd table into the image's
//! [`Fd`](crate::image::Fd) records, [`restore_fds`] re-creates them in a
//! traced process through gadget batches.
//!
//! # What each kind records and how it comes back
//!
//! | kind | dump | restore (injected, *as the target*) |
//! |---|---|---|
//! | stdio (0-2: a pipe, tty, socket or file the runtime set up; a char device) | `Stdio {stream}` / `Tty` | nothing: the sandbox's own fd stays (a record at another number is a `dup3` of it) |
//! | regular file | `File {path, offset}`, path relative to the process's root, checked to name the open file | `openat2` of the path beneath the process's root (`RESOLVE_IN_ROOT \| RESOLVE_NO_MAGICLINKS`, `O_NONBLOCK` until the dumped flags are set), `lseek(offset)` |
//! | `/dev/null zero full random urandom` | `Device` | `openat("/dev/NAME", flags)` |
//! | pipe with both ends in the process | `Pipe {pipe, end, capacity, data}`; bytes copied with `tee(2)` into a scratch pipe (never consumed) | `pipe2`, `F_SETPIPE_SZ`, `write` of the bytes |
//! | unix socketpair (either end's peer is the other) | `Socket` in state `Pair {pair, queued}`; peer from `NETLINK_SOCK_DIAG` (unix_diag, in the target's netns); queued bytes with `MSG_PEEK` under a temporary `SO_PEEK_OFF` | `socketpair`, re-sent from the other end |
//! | listening TCP/TCP6 or unix socket, bound UDP/unix dgram | `Socket` `Listening {backlog}` / `Bound` / `Unbound`: `getsockname` on a `pidfd_getfd` copy, options, backlog from sock_diag (`idiag_wqueue` / `UNIX_DIAG_RQLEN`) | `socket`, `setsockopt` each option, `bind`, `listen(backlog)` |
//! | eventfd | `Eventfd {count, semaphore}` (fdinfo) | `eventfd2` (+ `write` for counts above 2^32) |
//! | epoll | `Epoll {targets}`, each `tfd` checked with `kcmp(KCMP_EPOLL_TFD)` | `epoll_create1`, then `EPOLL_CTL_ADD` of each target once every fd is at its number |
//! | timerfd | `Timerfd {clock, settime_flags, ticks, interval_ns, value_ns}` | `timerfd_create`, `timerfd_settime`, `TFD_IOC_SET_TICKS` |
//! | signalfd | `Signalfd {mask}` | `signalfd4` |
//! | another fd of the same open file description (`kcmp(KCMP_FILE)`) | `Dup {of}` (the lowest-numbered fd is the primary) | `dup3` |
//!
//! Anything else is refused with an [`FdError::Unsupported`] naming the fd
//! and its kind: inotify, fanotify, io_uring, pidfd, userfaultfd, bpf,
//! perf, memfd and deleted files, directories, FIFOs, other devices,
//! namespace files, a pipe or unix socket whose other end is outside the
//! process (unless on 0-2), established or connecting TCP, connected UDP,
//! netlink/packet/raw sockets, `O_PATH` and `O_ASYNC` descriptors, unix
//! sockets with descriptors in flight or `SO_PEEK_OFF` set. There is never
//! a partial result.
//!
//! # Restore
//!
//! [`restore_fds`] runs in phases, each a gadget batch (split further when
//! the data area fills up):
//! 1. create every object at whatever number the kernel picks (all
//!    `O_CLOEXEC`, pipes and socketpairs non-blocking for the refill);
//!    `lstat` each unix socket path; `clock_gettime` for absolute timerfds;
//! 2. (unix path sockets only) probe each existing socket path with a
//!    `connect` from a scratch socket: `ECONNREFUSED` on a socket inode means
//!    a stale socket file left by the dumped process, which is unlinked in
//!    phase 3; a live listener, or a path that is not a socket, is an error
//!    (never unlinked);
//! 3. socket options, `bind`, `listen`; pipe capacities and data; queued
//!    socketpair data; timers; then the **fd shuffle** ([`plan_moves`]: a
//!    parallel assignment of every created fd and every sandbox stdio fd to
//!    its dumped numbers through `dup3` with the dumped `O_CLOEXEC`, free
//!    temporaries breaking cycles), `F_SETFL` with the dumped status flags,
//!    `lseek`, `close` of every temporary and of sandbox fds 0-2 the image
//!    does not have, and last `EPOLL_CTL_ADD` of every registration.
//!
//! Every result is checked; a failure names the fd and the step
//! ([`FdError::Restore`]). After a failure the target's fd table is in an
//! unspecified state: kill it. At the end the target's fd table is checked
//! to hold exactly the image's fds plus the reserved ones.
//!
//! # What the caller arranges
//!
//! - The target holds its sandbox's stdio at 0-2 and nothing else, except
//!   fds named in [`RestoreOptions::reserved`] (never touched; an image fd
//!   at such a number is an error); [`RestoreOptions::close_others`] closes
//!   everything else instead (a fork of a template). Sandbox fds 0-2 the
//!   image does not have are closed.
//! - Everything runs *as the target* (pitfalls §0.3): before its
//!   credentials, capabilities and seccomp filter (`SO_RCVBUFFORCE`,
//!   `F_SETPIPE_SZ` above `pipe-max-size`, ports below 1024, alarm clocks,
//!   `O_NOATIME`, `EPOLLWAKEUP` need privilege); in its mount namespace
//!   (files and `/dev/*` come from the container's rootfs) and network
//!   namespace (`lo` and every bound address must be up first).
//! - `RLIMIT_NOFILE` above the highest image fd (restore the rlimits
//!   first, or raise `NOFILE` meanwhile).
//! - Any point after the gadget exists works: nothing here depends on the
//!   address space (the data area carries every buffer).
//!
//! # Known differences after a restore
//!
//! - Connections waiting in a listener's accept queue and datagrams queued
//!   at a bound (not paired) socket are lost (logged at dump).
//! - Socketpair ends come back unnamed (a connected pair made through a
//!   named listener loses its names).
//! - A disarmed `EPOLLONESHOT` registration comes back armed for
//!   `EPOLLERR`/`EPOLLHUP` (`EPOLL_CTL_ADD` always adds them); an
//!   edge-triggered one may report one extra event (pitfalls §8.4).
//! - An overdue periodic timerfd (fdinfo shows 0 left, ticks pending) is
//!   re-armed a full interval ahead, with its ticks.
//! - Sandbox stdio keeps the sandbox's flags (e.g. not `O_NONBLOCK`).
//! - `pidfd_getfd` of a socket re-tags it with the dumper's cgroup-v1
//!   `net_cls`/`net_prio` ids (the kernel's `__receive_sock`), as passing
//!   it over `SCM_RIGHTS` would (CRIU's parasite does the same).

mod batch;
mod diag;
mod dump;
mod link;
mod plan;
mod restore;
mod sock;

pub use dump::dump_fds;
pub use link::{AnonKind, Link, parse_link};
pub use plan::{Copy, Op, plan_moves};
pub use restore::{FsUser, RestoreOptions, restore_fds, restore_fds_with};
pub(crate) use restore::{OPEN_HOW_SIZE, SYS_OPENAT2, open_how_in_root};

use nix::errno::Errno;

use crate::ptrace::{GadgetError, PtraceError};

/// Why fds could not be dumped or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FdError {
    /// A kind sprout cannot checkpoint (the message names fd and kind, e.g.
    /// "fd 7 is an inotify instance: sprout cannot checkpoint it").
    #[error("fd {fd} is {kind}: sprout cannot checkpoint it")]
    Unsupported {
        /// The fd number in the dumped process.
        fd: i32,
        /// What it is, as a noun phrase ("an inotify instance").
        kind: String,
    },
    /// Inspecting an fd of the dumped process failed.
    #[error("fd {fd}: {what}: {detail}")]
    Inspect {
        /// The fd number.
        fd: i32,
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// Reading the process's fd table, or another per-process step, failed.
    #[error("pid {pid}: {what}: {detail}")]
    Process {
        /// The process.
        pid: i32,
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// A thread of the process is not in a ptrace stop of this tracer.
    #[error(
        "pid {pid}: thread {tid} is not in a ptrace stop: the fd table could change under the dump"
    )]
    NotStopped {
        /// The process.
        pid: i32,
        /// The running thread.
        tid: i32,
    },
    /// An injected step of the restore failed.
    #[error("restoring fd {fd}: {step}: {errno}")]
    Restore {
        /// The fd number in the image.
        fd: i32,
        /// The step ("bind 127.0.0.1:8080", "open /data/log").
        step: String,
        /// What the kernel said.
        errno: Errno,
    },
    /// The records cannot be restored as given (a reserved or missing fd,
    /// an inconsistent pipe, a check after the restore).
    #[error("restoring fd {fd}: {reason}")]
    Plan {
        /// The fd number in the image.
        fd: i32,
        /// Why.
        reason: String,
    },
    /// The gadget failed outside a batch entry (ptrace, memory, the thread
    /// died).
    #[error(transparent)]
    Gadget(#[from] GadgetError),
    /// A ptrace operation failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
}

impl FdError {
    pub(crate) fn unsupported(fd: i32, kind: impl Into<String>) -> FdError {
        FdError::Unsupported {
            fd,
            kind: kind.into(),
        }
    }

    pub(crate) fn inspect(fd: i32, what: impl Into<String>, detail: impl ToString) -> FdError {
        FdError::Inspect {
            fd,
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn plan(fd: i32, reason: impl Into<String>) -> FdError {
        FdError::Plan {
            fd,
            reason: reason.into(),
        }
    }

    /// The fd the error is about, if it is about one.
    pub fn fd(&self) -> Option<i32> {
        match self {
            FdError::Unsupported { fd, .. }
            | FdError::Inspect { fd, .. }
            | FdError::Restore { fd, .. }
            | FdError::Plan { fd, .. } => Some(*fd),
            _ => None,
        }
    }
}
