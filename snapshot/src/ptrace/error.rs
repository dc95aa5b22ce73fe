//! Errors of the ptrace core.

use std::time::Duration;

use nix::errno::Errno;

use super::Tid;
use super::stop::{SigInfo, Stop};

/// What went wrong in a ptrace operation, an injection or a `/proc` read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PtraceError {
    /// A `ptrace(2)` request failed.
    #[error("ptrace({request}) on tid {tid}: {errno}")]
    Ptrace {
        /// The request, e.g. `PTRACE_SEIZE`.
        request: &'static str,
        /// The tracee.
        tid: Tid,
        /// What the kernel said.
        errno: Errno,
    },
    /// `waitpid(tid, __WALL)` failed.
    #[error("waitpid({tid}, __WALL): {errno}")]
    Wait {
        /// The tracee waited for.
        tid: Tid,
        /// What the kernel said.
        errno: Errno,
    },
    /// Another system call made by the tracer failed.
    #[error("{what}: {errno}")]
    Sys {
        /// The call and its subject, e.g. `process_vm_readv(pid 12, 0x1000+8)`.
        what: String,
        /// What the kernel said.
        errno: Errno,
    },
    /// Reading or parsing a file under `/proc` failed.
    #[error("{path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No stop came within the deadline (e.g. a thread in uninterruptible
    /// sleep, restore-pitfalls §1.5).
    #[error("tid {tid}: no ptrace stop within {after:?} (state {state}, wchan {wchan})")]
    Timeout {
        /// The tracee.
        tid: Tid,
        /// How long we waited.
        after: Duration,
        /// Its `State:` from `/proc/TID/status`, if readable.
        state: String,
        /// Its `/proc/TID/wchan`, if readable.
        wchan: String,
    },
    /// The tracee exited or was killed where a ptrace stop was expected.
    #[error("tid {tid} is gone: {stop:?}")]
    Gone {
        /// The tracee.
        tid: Tid,
        /// [`Stop::Exited`] or [`Stop::Killed`].
        stop: Box<Stop>,
    },
    /// The operation needs the tracee in a ptrace stop, and this `TraceCtx`
    /// resumed it and has not seen it stop since.
    #[error("tid {tid} is not in a ptrace stop")]
    NotStopped {
        /// The tracee.
        tid: Tid,
    },
    /// An injection saw a stop it cannot continue from (an `exec`, an exit
    /// event).
    #[error("tid {tid}: unexpected {stop:?} during {during}")]
    UnexpectedStop {
        /// The tracee.
        tid: Tid,
        /// The stop.
        stop: Box<Stop>,
        /// What was going on.
        during: &'static str,
    },
    /// The injected code faulted (e.g. the syscall instruction's page is not
    /// executable any more). Registers and mask were restored; the fault's
    /// signal was discarded.
    #[error("tid {tid}: injected code faulted at rip {rip:#x}: {info:?}")]
    InjectFault {
        /// The tracee.
        tid: Tid,
        /// Where.
        rip: u64,
        /// The fault's siginfo.
        info: Box<SigInfo>,
    },
    /// No usable `syscall` instruction for an injection.
    #[error("pid {pid}: no syscall instruction to inject through: {detail}")]
    NoSyscallInsn {
        /// The process.
        pid: Tid,
        /// Why.
        detail: String,
    },
    /// An xstate buffer of the wrong size (restore-pitfalls §2.1).
    #[error("tid {tid}: xstate is {len} bytes, this kernel's NT_X86_XSTATE is {want}")]
    XstateSize {
        /// The tracee.
        tid: Tid,
        /// The size given.
        len: usize,
        /// The size the kernel uses.
        want: usize,
    },
    /// A malformed argument.
    #[error("{0}")]
    Invalid(String),
}

impl PtraceError {
    /// The errno behind this error, if it came from a system call.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            PtraceError::Ptrace { errno, .. }
            | PtraceError::Wait { errno, .. }
            | PtraceError::Sys { errno, .. } => Some(*errno),
            PtraceError::Proc { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// Whether the tracee is gone: [`PtraceError::Gone`], `ECHILD` from
    /// wait, or `ESRCH` from ptrace (which also means "not traced by this
    /// thread, or not in a ptrace stop").
    pub fn is_gone(&self) -> bool {
        matches!(self, PtraceError::Gone { .. })
            || matches!(
                self,
                PtraceError::Ptrace {
                    errno: Errno::ESRCH,
                    ..
                } | PtraceError::Wait {
                    errno: Errno::ECHILD,
                    ..
                }
            )
    }
}
