//! What `waitpid` reports about a tracee.

use super::Tid;

/// A `siginfo_t` (128 bytes), kept as raw bytes so that it can be saved in
/// an image and re-queued verbatim (`rt_tgsigqueueinfo`, restore-pitfalls
/// §7.1).
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigInfo(pub [u8; 128]);

const _: () = assert!(std::mem::size_of::<SigInfo>() == std::mem::size_of::<libc::siginfo_t>());

impl SigInfo {
    fn i32_at(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }

    /// `si_signo`.
    pub fn signo(&self) -> i32 {
        self.i32_at(0)
    }

    /// `si_errno`.
    pub fn errno(&self) -> i32 {
        self.i32_at(4)
    }

    /// `si_code` (for ptrace event stops, `signo | PTRACE_EVENT_x << 8`).
    pub fn code(&self) -> i32 {
        self.i32_at(8)
    }

    /// `si_pid` (for signals sent by a process) or the low half of `si_addr`.
    pub fn pid(&self) -> i32 {
        self.i32_at(16)
    }

    /// `si_addr` (for faults).
    pub fn addr(&self) -> u64 {
        u64::from_le_bytes(self.0[16..24].try_into().expect("8 bytes"))
    }

    /// A zeroed siginfo.
    pub fn zeroed() -> SigInfo {
        SigInfo([0; 128])
    }
}

impl Default for SigInfo {
    fn default() -> SigInfo {
        SigInfo::zeroed()
    }
}

impl std::fmt::Debug for SigInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigInfo")
            .field("signo", &self.signo())
            .field("errno", &self.errno())
            .field("code", &self.code())
            .field("addr_or_pid", &format_args!("{:#x}", self.addr()))
            .finish()
    }
}

/// Which clone event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloneKind {
    /// `PTRACE_EVENT_FORK`.
    Fork,
    /// `PTRACE_EVENT_VFORK`.
    Vfork,
    /// `PTRACE_EVENT_CLONE`.
    Clone,
}

/// One report of `waitpid(tid, __WALL)` about a seized tracee.
///
/// Every variant except [`Stop::Exited`] and [`Stop::Killed`] is a ptrace
/// stop: the tracee waits for the tracer, its registers can be read and
/// written, and it runs again only when resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The thread exited (for a thread group leader, or `exit_group`, the
    /// process did).
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The thread was killed by a signal.
    Killed {
        /// The signal.
        signal: i32,
        /// Whether a core was dumped.
        core_dumped: bool,
    },
    /// `PTRACE_EVENT_STOP` from a group-stop (`SIGSTOP`, `SIGTSTP`, ...).
    GroupStop {
        /// The stopping signal.
        signal: i32,
    },
    /// `PTRACE_EVENT_STOP` with `SIGTRAP`: a `PTRACE_INTERRUPT`, or the
    /// first stop of a thread auto-attached through `PTRACE_O_TRACECLONE`
    /// (before it runs any user code).
    Interrupt,
    /// Signal-delivery stop: the signal has been dequeued and will be
    /// delivered only if the tracer resumes with it. Resuming with 0 (which
    /// every injection does) discards it, so save this siginfo and re-queue
    /// it (restore-pitfalls §7.1), or resume with `info.signo()`.
    Signal(SigInfo),
    /// `PTRACE_EVENT_FORK`/`VFORK`/`CLONE`: the new task is already traced
    /// by this tracer and will report its own [`Stop::Interrupt`].
    Clone {
        /// Which event.
        kind: CloneKind,
        /// The new task's tid, in the tracer's pid namespace.
        new_tid: Tid,
    },
    /// `PTRACE_EVENT_VFORK_DONE`.
    VforkDone {
        /// The vfork child.
        child: Tid,
    },
    /// `PTRACE_EVENT_EXEC`; the tracee now runs the new program.
    Exec {
        /// The tid the thread that called `execve` had (a non-leader thread
        /// takes over the leader's tid).
        former_tid: Tid,
    },
    /// `PTRACE_EVENT_EXIT`: the thread is about to exit; its registers are
    /// still readable.
    Exit {
        /// The wait status it will exit with.
        status: i32,
    },
    /// `PTRACE_EVENT_SECCOMP`.
    Seccomp {
        /// `SECCOMP_RET_DATA` of the filter's `SECCOMP_RET_TRACE`.
        data: u64,
    },
    /// Syscall-entry or syscall-exit stop (`PTRACE_SYSCALL`; tracees here
    /// always have `PTRACE_O_TRACESYSGOOD`).
    /// [`super::TraceCtx::syscall_info`] tells which.
    Syscall,
}

impl Stop {
    /// Whether the tracee is in a ptrace stop (not gone).
    pub fn is_stopped(&self) -> bool {
        !matches!(self, Stop::Exited { .. } | Stop::Killed { .. })
    }
}
