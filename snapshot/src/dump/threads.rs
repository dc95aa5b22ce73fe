//! Per-thread state of a stopped thread (pitfalls §1, §2, §3, §6.4, §7).

use crate::image::{
    PendingSignal, RobustList, Rseq, SigAltStack, SyscallRestart, Thread, UserRegs,
};
use crate::ptrace::{self, Regs, Restart, SigInfo, Stop, Tid, TraceCtx};

use super::{DumpError, Scratch};

/// `struct rseq_cs` (uapi/linux/rseq.h).
const RSEQ_CS_SIZE: usize = 32;
/// Offset of `rseq_cs` in `struct rseq`.
const RSEQ_CS_OFFSET: u64 = 8;

pub(crate) fn regs_to_image(r: &Regs) -> UserRegs {
    UserRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

fn pending(infos: Vec<SigInfo>) -> Vec<PendingSignal> {
    infos
        .into_iter()
        .map(|i| PendingSignal {
            signo: i.signo() as u8,
            siginfo: i.0.to_vec(),
        })
        .collect()
}

/// If the thread stopped inside an rseq critical section, moves it to the
/// section's abort handler, as the kernel would on preemption (pitfalls
/// §3.3). Must run before anything is injected into the thread: running
/// code there makes the kernel clear `rseq_cs`.
fn fix_rseq_critical_section(pid: Tid, rseq_ptr: u64, regs: &mut Regs) -> Result<(), DumpError> {
    let mut word = [0u8; 8];
    ptrace::mem::read_mem(pid, rseq_ptr + RSEQ_CS_OFFSET, &mut word)?;
    let cs = u64::from_le_bytes(word);
    if cs == 0 {
        return Ok(());
    }
    let mut desc = [0u8; RSEQ_CS_SIZE];
    ptrace::mem::read_mem(pid, cs, &mut desc)?;
    let start_ip = u64::from_le_bytes(desc[8..16].try_into().unwrap());
    let post_commit = u64::from_le_bytes(desc[16..24].try_into().unwrap());
    let abort_ip = u64::from_le_bytes(desc[24..32].try_into().unwrap());
    if regs.rip >= start_ip && regs.rip - start_ip < post_commit {
        regs.rip = abort_ip;
    }
    Ok(())
}

/// Everything of one stopped thread. `stop` is what seizing it reported: a
/// signal-delivery stop means that signal was already dequeued and must be
/// re-queued at restore.
pub(super) fn dump_thread(
    ctx: &mut TraceCtx,
    pid: Tid,
    ns_tid: i32,
    tid: Tid,
    stop: &Stop,
    scratch: &Scratch,
) -> Result<Thread, DumpError> {
    let mut regs = ctx.get_regs(tid)?;
    let rseq_cfg = ctx.rseq_configuration(tid)?;
    if rseq_cfg.rseq_abi_pointer != 0 {
        fix_rseq_critical_section(pid, rseq_cfg.rseq_abi_pointer, &mut regs)?;
    }
    let xsave = ctx.get_xstate(tid)?.into_vec();
    let sigmask = ctx.get_sigmask(tid)?;
    let mut queued = ctx.peek_siginfo(tid, false)?;
    if let Stop::Signal(info) = stop {
        queued.insert(0, *info);
    }
    let robust = ptrace::mem::get_robust_list(tid)?;
    // clear_child_tid: only the thread itself can ask (PR_GET_TID_ADDRESS
    // stores it through a pointer).
    let r = ctx.syscall(
        tid,
        libc::SYS_prctl,
        [libc::PR_GET_TID_ADDRESS as u64, scratch.addr, 0, 0, 0, 0],
    )?;
    super::check(r, "prctl(PR_GET_TID_ADDRESS)")?;
    let clear_child_tid = scratch.read_u64(0)?;
    let r = ctx.syscall(tid, libc::SYS_sigaltstack, [0, scratch.addr, 0, 0, 0, 0])?;
    super::check(r, "sigaltstack")?;
    let ss = scratch.read(24)?;
    let ss_sp = u64::from_le_bytes(ss[0..8].try_into().unwrap());
    let ss_flags = u32::from_le_bytes(ss[8..12].try_into().unwrap());
    let ss_size = u64::from_le_bytes(ss[16..24].try_into().unwrap());
    // SS_DISABLE alone means no alternate stack; SS_ONSTACK is a state,
    // not something to restore.
    let sigaltstack = (ss_flags & libc::SS_DISABLE as u32 == 0).then_some(SigAltStack {
        sp: ss_sp,
        size: ss_size,
        flags: ss_flags & !(libc::SS_ONSTACK as u32),
    });

    let restart = ptrace::prepare_for_resume(&mut regs);
    let syscall = match restart {
        Restart::Rewind { nr, code } => SyscallRestart::Restart {
            nr: nr as u64,
            code: Some(code),
        },
        Restart::Eintr { nr } => SyscallRestart::Eintr { nr: nr as u64 },
        Restart::NotInSyscall | Restart::Done { .. } => SyscallRestart::NotInSyscall,
    };
    // The image keeps orig_rax = the interrupted syscall (its validator
    // checks it); prepare_for_resume set it to -1 for a live resume.
    regs.orig_rax = match syscall {
        SyscallRestart::Restart { nr, .. } | SyscallRestart::Eintr { nr } => nr,
        SyscallRestart::NotInSyscall => u64::MAX,
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string();
    Ok(Thread {
        tid: ns_tid,
        comm,
        regs: regs_to_image(&regs),
        xsave,
        sigmask,
        pending: pending(queued),
        sigaltstack,
        rseq: (rseq_cfg.rseq_abi_pointer != 0).then_some(Rseq {
            ptr: rseq_cfg.rseq_abi_pointer,
            len: rseq_cfg.rseq_abi_size,
            sig: rseq_cfg.signature,
        }),
        robust_list: (robust.0 != 0).then_some(RobustList {
            head: robust.0,
            len: robust.1 as u64,
        }),
        clear_child_tid,
        syscall,
    })
}

/// The process-wide signal queue (`PTRACE_PEEKSIGINFO_SHARED`).
pub(super) fn shared_pending(
    ctx: &mut TraceCtx,
    tid: Tid,
) -> Result<Vec<PendingSignal>, DumpError> {
    Ok(pending(ctx.peek_siginfo(tid, true)?))
}
