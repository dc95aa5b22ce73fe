//! The ptrace and syscall-injection core that the dumper and the restorer
//! build on (x86_64 only).
//!
//! # The tracer thread
//!
//! ptrace belongs to the *thread* that attached: only that thread may issue
//! requests for a tracee and only that thread gets its stops from
//! `waitpid`, and a tracer thread that exits detaches (or, with
//! `PTRACE_O_EXITKILL`, kills) its tracees. So every ptrace operation here
//! goes through a [`TraceCtx`], and the only way to get one is
//! [`Tracer::run`], which runs a closure on the tracer's own long-lived
//! thread:
//!
//! ```no_run
//! # use sprout_snapshot::ptrace::*;
//! let tracer = Tracer::spawn("sprout-tracer").unwrap();
//! let pid = 1234;
//! let stop = tracer.run(move |ctx| {
//!     ctx.seize(pid, Options::EXITKILL)?;
//!     ctx.interrupt(pid)?;
//!     ctx.wait(pid)
//! });
//! ```
//!
//! # What is here
//!
//! - [`Tracer`], [`TraceCtx`]: seize, interrupt, wait ([`Stop`]), resume,
//!   detach; registers ([`Regs`], [`Xstate`]), signal masks, siginfo, rseq
//!   configuration, `PTRACE_GET_SYSCALL_INFO`; [`TraceCtx::seize_all_threads`].
//! - [`interrupted_syscall`] and [`prepare_for_resume`]: what a thread stopped
//!   inside a syscall must get when it is resumed from saved registers
//!   (restore-pitfalls §1).
//! - [`TraceCtx::syscall`]: one syscall injected through a `syscall`
//!   instruction of the target's vDSO; no memory of the target is touched.
//! - [`Gadget`]: a few pages mapped into the target with a tiny machine-code
//!   loop that runs a table of syscalls in one `PTRACE_CONT`.
//! - [`mem`] and [`procfs`]: `process_vm_readv`/`writev`, `pidfd_getfd`,
//!   `kcmp`, `get_robust_list`, `/proc/PID/maps` and `/proc/PID/task`.

mod error;
mod gadget;
mod inject;
pub mod mem;
pub mod procfs;
mod regs;
mod stop;
mod sys;
mod tracer;

pub use error::PtraceError;
pub use gadget::{
    BatchError, ENTRY_SIZE, Entry, Gadget, GadgetConfig, GadgetError, GadgetLayout, cstring,
    find_hole,
};
pub use inject::InjectMode;
pub use regs::{
    EINTR, ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, Regs, Restart,
    RseqConfig, SyscallInfo, Xstate, interrupted_syscall, prepare_for_resume,
};
pub use stop::{CloneKind, SigInfo, Stop};
pub use tracer::{Options, SeizedThread, TraceCtx, Tracer};

/// `Result` with a [`PtraceError`].
pub type Result<T, E = PtraceError> = std::result::Result<T, E>;

/// A thread id (or process id), as the kernel numbers it in the tracer's pid
/// namespace.
pub type Tid = libc::pid_t;
