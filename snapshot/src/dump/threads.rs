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

/// Where the kernel would send a thread whose instruction pointer is `rip`
/// and whose `struct rseq`'s `rseq_cs` points at the descriptor `desc`
/// (uapi `struct rseq_cs`: version, flags, start_ip, post_commit_offset,
/// abort_ip): the abort handler if `rip` is inside the section, else
/// nowhere. A descriptor whose version is not 0 is left alone (the kernel
/// kills the thread on resume). The kernel's other checks (the signature
/// before `abort_ip`, its bounds) are not repeated: a thread whose
/// descriptor fails them is moved to `abort_ip`, where the kernel would
/// have killed it.
fn rseq_abort_ip(rip: u64, desc: &[u8; RSEQ_CS_SIZE]) -> Option<u64> {
    let word = |i: usize| u64::from_le_bytes(desc[i..i + 8].try_into().unwrap());
    let version = u32::from_le_bytes(desc[0..4].try_into().unwrap());
    let (start_ip, post_commit, abort_ip) = (word(8), word(16), word(24));
    (version == 0 && rip >= start_ip && rip - start_ip < post_commit).then_some(abort_ip)
}

/// Moves every thread stopped inside an rseq critical section to the
/// section's abort handler, in the live process, as the kernel would have
/// on its way back to user mode (pitfalls §3.3). This must come before
/// anything is injected: an injected syscall returns to user mode outside
/// the section, where the kernel merely clears `rseq_cs`, and the thread
/// would later resume mid-section with nothing left to abort it. Both the
/// image (registers read afterwards) and a process left running get the
/// abort.
pub(super) fn abort_rseq_critical_sections(
    ctx: &mut TraceCtx,
    pid: Tid,
    tids: impl IntoIterator<Item = Tid>,
) -> Result<(), DumpError> {
    for tid in tids {
        let rseq = ctx.rseq_configuration(tid)?.rseq_abi_pointer;
        if rseq == 0 {
            continue;
        }
        let mut word = [0u8; 8];
        ptrace::mem::read_mem(pid, rseq + RSEQ_CS_OFFSET, &mut word)?;
        let cs = u64::from_le_bytes(word);
        if cs == 0 {
            continue;
        }
        let mut desc = [0u8; RSEQ_CS_SIZE];
        ptrace::mem::read_mem(pid, cs, &mut desc)?;
        let mut regs = ctx.get_regs(tid)?;
        if let Some(abort_ip) = rseq_abort_ip(regs.rip, &desc) {
            regs.rip = abort_ip;
            ctx.set_regs(tid, &regs)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(version: u32, start: u64, len: u64, abort: u64) -> [u8; RSEQ_CS_SIZE] {
        let mut d = [0u8; RSEQ_CS_SIZE];
        d[0..4].copy_from_slice(&version.to_le_bytes());
        d[8..16].copy_from_slice(&start.to_le_bytes());
        d[16..24].copy_from_slice(&len.to_le_bytes());
        d[24..32].copy_from_slice(&abort.to_le_bytes());
        d
    }

    #[test]
    fn only_an_instruction_pointer_inside_the_section_goes_to_abort() {
        let d = desc(0, 0x1000, 0x10, 0x2000);
        assert_eq!(rseq_abort_ip(0x1000, &d), Some(0x2000));
        assert_eq!(rseq_abort_ip(0x100f, &d), Some(0x2000));
        // The post-commit instruction is past the section.
        assert_eq!(rseq_abort_ip(0x1010, &d), None);
        assert_eq!(rseq_abort_ip(0xfff, &d), None);
        // A descriptor the kernel refuses is left to the kernel.
        assert_eq!(rseq_abort_ip(0x1000, &desc(1, 0x1000, 0x10, 0x2000)), None);
    }
}
