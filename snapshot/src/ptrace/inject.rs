//! Injecting single syscalls into a stopped thread.

use super::error::PtraceError;
use super::procfs::{self, MapKind};
use super::regs::{
    EFLAGS_DF, EFLAGS_TF, ERESTART_RESTARTBLOCK, Regs, SyscallInfo, prepare_for_resume,
};
use super::stop::Stop;
use super::sys::{PTRACE_SINGLESTEP, PTRACE_SYSCALL};
use super::tracer::{State, TraceCtx, is_fault};
use super::{Result, Tid, mem};

/// How an injected syscall is run and caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectMode {
    /// `PTRACE_SINGLESTEP` over the `syscall` instruction; the thread ends
    /// in a `SIGTRAP` signal-delivery stop after it. The kernel's restart
    /// logic for the saved registers still runs when the thread is resumed,
    /// so a thread interrupted inside a syscall can be injected into and
    /// then simply resumed. Needs the instruction's page to stay mapped.
    Step,
    /// `PTRACE_SYSCALL` to the syscall-entry, then the syscall-exit stop:
    /// the result is caught before the thread returns to user mode, so the
    /// syscall may unmap its own instruction (the gadget's final `munmap`,
    /// restore-pitfalls §9.2). The thread ends in a syscall-exit stop, from
    /// which the kernel runs no restart logic on resume; so the registers
    /// put back are the saved ones *after* [`super::prepare_for_resume`]
    /// (a thread interrupted in a syscall re-executes it, or gets -EINTR for
    /// -ERESTART_RESTARTBLOCK), with `orig_rax` = -1.
    CatchExit,
}

/// The signal mask used while injected code runs: everything blocked except
/// `SIGTRAP` (restore-pitfalls §1.6; the kernel ignores the SIGKILL and
/// SIGSTOP bits).
pub(super) const ONLY_SIGTRAP: u64 = !(1u64 << (libc::SIGTRAP - 1));

/// What the check closure of [`TraceCtx::drive`] decides about a stop.
pub(super) enum Drive<T> {
    /// Finished with this value.
    Done(T),
    /// Resume again, without the default handling.
    Resume,
    /// Apply the default handling.
    Default,
}

/// Finds a `syscall` instruction (`0f 05`) in the `[vdso]` of `pid`. Any
/// such byte pair executes as `syscall` when rip points at it.
pub(super) fn find_vdso_syscall(pid: Tid) -> Result<u64> {
    let maps = procfs::read_maps(pid)?;
    let vdso = maps
        .iter()
        .find(|m| m.kind == MapKind::Vdso && m.exec)
        .ok_or_else(|| PtraceError::NoSyscallInsn {
            pid,
            detail: "no executable [vdso] mapping".into(),
        })?;
    let bytes = mem::read_vec(pid, vdso.start, vdso.len() as usize)?;
    let off = bytes
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .ok_or_else(|| PtraceError::NoSyscallInsn {
            pid,
            detail: format!("no 0f 05 in [vdso] at {:#x}", vdso.start),
        })?;
    Ok(vdso.start + off as u64)
}

impl TraceCtx {
    /// Runs one syscall in the stopped thread `tid` and returns its raw
    /// result (`-errno` on failure), through a `syscall` instruction of the
    /// target's vDSO ([`TraceCtx::syscall_insn`]) in [`InjectMode::Step`].
    ///
    /// The thread's registers and signal mask are saved and restored; no
    /// memory of the target is written. While the syscall runs every signal
    /// but `SIGTRAP` is blocked; a signal that arrives anyway (`SIGSTOP`) is
    /// set aside in [`TraceCtx::take_events`], as are clone events of an
    /// injected clone. An interrupted injected syscall (-ERESTART*) is
    /// re-run; `-ERESTART_RESTARTBLOCK` becomes `-EINTR`.
    ///
    /// If the thread is in a signal-delivery stop, that signal is discarded
    /// (the caller has its siginfo from the [`Stop`]). Not from a
    /// syscall-entry stop. The thread's kernel `restart_block` survives the
    /// injection unless the injected syscall is itself a relative sleep.
    pub fn syscall(&mut self, tid: Tid, nr: i64, args: [u64; 6]) -> Result<i64> {
        let insn = self.syscall_insn(tid)?;
        self.syscall_at(tid, insn, InjectMode::Step, nr, args)
    }

    /// The `syscall` instruction injections into `tid`'s process go
    /// through: the one set with [`TraceCtx::set_syscall_insn`], else the
    /// first `0f 05` in its `[vdso]`. Cached per process, and checked (two
    /// bytes read) before each use, so a vDSO that moved is found again.
    pub fn syscall_insn(&mut self, tid: Tid) -> Result<u64> {
        let tgid = self.tgid(tid)?;
        if let Some(&a) = self.insn_cache.get(&tgid) {
            let mut b = [0u8; 2];
            if mem::read_mem(tgid, a, &mut b).is_ok() && b == [0x0f, 0x05] {
                return Ok(a);
            }
            self.insn_cache.remove(&tgid);
        }
        let a = find_vdso_syscall(tgid)?;
        self.insn_cache.insert(tgid, a);
        Ok(a)
    }

    /// Makes injections into `tid`'s process go through the `syscall`
    /// instruction at `addr` (it must stay mapped and executable), or, with
    /// `None`, forgets the cached one.
    pub fn set_syscall_insn(&mut self, tid: Tid, addr: Option<u64>) -> Result<()> {
        let tgid = self.tgid(tid)?;
        match addr {
            Some(a) => self.insn_cache.insert(tgid, a),
            None => self.insn_cache.remove(&tgid),
        };
        Ok(())
    }

    /// Like [`TraceCtx::syscall`], through the `syscall` instruction at
    /// `insn`, in the given mode.
    pub fn syscall_at(
        &mut self,
        tid: Tid,
        insn: u64,
        mode: InjectMode,
        nr: i64,
        args: [u64; 6],
    ) -> Result<i64> {
        let (saved, saved_mask) = self.begin_injection(tid)?;
        let mut regs = saved;
        regs.set_syscall(nr, args);
        regs.rip = insn;
        regs.orig_rax = u64::MAX;
        regs.eflags &= !(EFLAGS_TF | EFLAGS_DF);
        let mut r = Ok(ERESTART_RESTARTBLOCK);
        for _ in 0..1000 {
            r = self
                .set_regs(tid, &regs)
                .and_then(|()| self.inject_once(tid, insn, mode, nr));
            match r {
                // Interrupted by a signal that could not be blocked (the
                // signal itself is set aside): run it again.
                Ok(-514..=-512) => continue,
                Ok(ERESTART_RESTARTBLOCK) => r = Ok(super::regs::EINTR),
                _ => {}
            }
            break;
        }
        self.end_injection(tid, &saved, saved_mask, r)
    }

    fn inject_once(&mut self, tid: Tid, insn: u64, mode: InjectMode, nr: i64) -> Result<i64> {
        match mode {
            InjectMode::Step => {
                self.drive(tid, PTRACE_SINGLESTEP, "syscall injection", |ctx, stop| {
                    if let Stop::Signal(info) = stop {
                        let r = ctx.get_regs(tid)?;
                        if info.signo() == libc::SIGTRAP && r.rip == insn + 2 {
                            return Ok(Drive::Done(r.rax as i64));
                        }
                        // A signal before the step ran leaves the thread at
                        // the instruction; anywhere else, something changed
                        // the code under us: never step on from there (it
                        // would run with seccomp suspended).
                        if r.rip != insn {
                            return Err(PtraceError::Invalid(format!(
                                "tid {tid} left the injected syscall at {insn:#x} for {:#x}",
                                r.rip
                            )));
                        }
                    }
                    Ok(Drive::Default)
                })
            }
            InjectMode::CatchExit => {
                let mut entered = false;
                self.drive(tid, PTRACE_SYSCALL, "syscall injection", |ctx, stop| {
                    if *stop != Stop::Syscall {
                        return Ok(Drive::Default);
                    }
                    match ctx.syscall_info(tid)? {
                        SyscallInfo::Entry { nr: n, .. } => entered = n == nr as u64,
                        SyscallInfo::Exit { rval, .. } if entered => return Ok(Drive::Done(rval)),
                        _ => {}
                    }
                    Ok(Drive::Resume)
                })
            }
        }
    }

    /// Checks that `tid` can take injected code and saves its registers and
    /// signal mask.
    pub(super) fn begin_injection(&mut self, tid: Tid) -> Result<(Regs, u64)> {
        self.ensure_stopped(tid)?;
        if self.current_stop(tid) == Some(Stop::Syscall)
            && matches!(self.syscall_info(tid)?, SyscallInfo::Entry { .. })
        {
            return Err(PtraceError::Invalid(format!(
                "tid {tid} is at a syscall-entry stop: the kernel would run that syscall next; \
                 resume it to the exit stop first"
            )));
        }
        let saved = self.get_regs(tid)?;
        let mask = self.get_sigmask(tid)?;
        self.set_sigmask(tid, super::inject::ONLY_SIGTRAP)?;
        Ok((saved, mask))
    }

    /// Puts back the registers and mask saved by `begin_injection`, if the
    /// thread is still there and stopped, and marks it as stopped by us.
    pub(super) fn end_injection<T>(
        &mut self,
        tid: Tid,
        saved: &Regs,
        mask: u64,
        r: Result<T>,
    ) -> Result<T> {
        let state = self.tracees.get(&tid).map(|t| t.state);
        let ours = match state {
            // Gone, or still running our code (timeout): nothing to restore.
            None | Some(State::Running) => return r,
            Some(State::Stopped(Stop::Exec { .. })) => return r,
            Some(State::Stopped(Stop::Signal(_) | Stop::Syscall)) | Some(State::AfterInjection) => {
                true
            }
            Some(State::Stopped(_)) => false,
        };
        // From a syscall-exit stop the kernel runs no restart logic when the
        // thread is resumed, so a thread that was interrupted inside a
        // syscall gets its registers with the fix-up already applied.
        let mut regs = *saved;
        if state == Some(State::Stopped(Stop::Syscall)) {
            prepare_for_resume(&mut regs);
        }
        let restored = self
            .set_regs(tid, &regs)
            .and_then(|()| self.set_sigmask(tid, mask));
        if ours && let Some(t) = self.tracees.get_mut(&tid) {
            t.state = State::AfterInjection;
        }
        match (r, restored) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(v), Ok(())) => Ok(v),
        }
    }

    /// Resumes `tid` with `request` and waits, until `check` says done.
    /// Default handling: signals that are not faults, group stops, clone
    /// and seccomp events are set aside ([`TraceCtx::take_events`]) and the
    /// thread resumed; a fault ends with [`PtraceError::InjectFault`]; an
    /// exit or exec with an error.
    pub(super) fn drive<T>(
        &mut self,
        tid: Tid,
        request: u32,
        during: &'static str,
        mut check: impl FnMut(&mut TraceCtx, &Stop) -> Result<Drive<T>>,
    ) -> Result<T> {
        loop {
            self.resume_raw(request, tid)?;
            let stop = self.wait_internal(tid)?;
            match check(self, &stop)? {
                Drive::Done(v) => return Ok(v),
                Drive::Resume => continue,
                Drive::Default => {}
            }
            match stop {
                Stop::Exited { .. } | Stop::Killed { .. } => {
                    return Err(PtraceError::Gone {
                        tid,
                        stop: Box::new(stop),
                    });
                }
                Stop::Signal(info) if is_fault(&info) => {
                    let rip = self.get_regs(tid)?.rip;
                    return Err(PtraceError::InjectFault {
                        tid,
                        rip,
                        info: Box::new(info),
                    });
                }
                Stop::Signal(_)
                | Stop::GroupStop { .. }
                | Stop::Clone { .. }
                | Stop::Seccomp { .. } => self.push_event(tid, stop),
                Stop::Interrupt | Stop::Syscall | Stop::VforkDone { .. } => {}
                Stop::Exec { .. } | Stop::Exit { .. } => {
                    return Err(PtraceError::UnexpectedStop {
                        tid,
                        stop: Box::new(stop),
                        during,
                    });
                }
            }
        }
    }
}
