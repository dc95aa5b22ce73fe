//! Threads, per-thread kernel state, signals and timers (pitfalls §6, §7).

use crate::image::{ManifestBody, Thread, TimerNotify, UserRegs};
use crate::ptrace::{Entry, Gadget, GadgetError, Regs, Stop, Tid, TraceCtx, Xstate};

use super::RestoreError;

const CLONE_ARGS_SIZE: u64 = 88;
/// prctl(PR_TIMER_CREATE_RESTORE_IDS, ON/OFF): `timer_create` takes the
/// wanted id in through its `timer_t *` (pitfalls §7.4).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_THREAD_ID: i32 = 4;

/// The innermost pid-namespace tid of host thread `tid` of `pid`.
fn ns_tid(pid: Tid, tid: Tid) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Creates every thread but the main one, each at its dumped tid
/// (`clone3` with `set_tid`, from the main thread, while it still has
/// CAP_SYS_ADMIN in its pid namespace's user namespace). Returns the host
/// tids, index for index with `threads` (the first is `pid`).
pub(super) fn create_threads(
    ctx: &mut TraceCtx,
    pid: Tid,
    gadget: &mut Gadget,
    threads: &[Thread],
) -> Result<Vec<Tid>, RestoreError> {
    let mut host = vec![pid];
    if threads.len() <= 1 {
        return Ok(host);
    }
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let mut entries = Vec::new();
    for t in &threads[1..] {
        let tid = gadget.data(&t.tid.to_le_bytes())?;
        // struct clone_args; no stack: the thread stops (TRACECLONE) before
        // it runs and gets its own registers.
        let args = le(&[flags, 0, 0, 0, 0, 0, 0, 0, tid, 1, 0]);
        let a = gadget.data(&args)?;
        entries.push(Entry::new(
            libc::SYS_clone3,
            [a, CLONE_ARGS_SIZE, 0, 0, 0, 0],
        ));
    }
    let rs = gadget.run(ctx, pid, &entries)?;
    for (t, r) in threads[1..].iter().zip(&rs) {
        if *r != t.tid as i64 {
            return Err(RestoreError::Incompatible(format!(
                "thread {} was created as {r}",
                t.tid
            )));
        }
    }
    let new: Vec<Tid> = ctx
        .take_events(pid)
        .into_iter()
        .filter_map(|e| match e {
            Stop::Clone { new_tid, .. } => Some(new_tid),
            _ => None,
        })
        .collect();
    if new.len() != threads.len() - 1 {
        return Err(RestoreError::Incompatible(format!(
            "{} threads created, {} expected",
            new.len(),
            threads.len() - 1
        )));
    }
    for &h in &new {
        // The first stop of an auto-attached thread, before any user code.
        match ctx.wait(h)? {
            Stop::Interrupt => {}
            other => {
                return Err(RestoreError::Incompatible(format!(
                    "new thread {h} stopped with {other:?}"
                )));
            }
        }
    }
    // Match host tids to the image's by the tid inside the namespace.
    for t in &threads[1..] {
        let h = new
            .iter()
            .copied()
            .find(|&h| ns_tid(pid, h) == Some(t.tid))
            .ok_or_else(|| {
                RestoreError::Incompatible(format!("no new thread has tid {}", t.tid))
            })?;
        host.push(h);
    }
    Ok(host)
}

/// What only a thread can do for itself: its robust list, clear-tid
/// address, alternate signal stack, rseq registration, name.
pub(super) fn per_thread_entries(
    gadget: &mut Gadget,
    t: &Thread,
) -> Result<Vec<Entry>, RestoreError> {
    let mut e = Vec::new();
    if let Some(r) = &t.robust_list {
        e.push(Entry::new(
            libc::SYS_set_robust_list,
            [r.head, r.len, 0, 0, 0, 0],
        ));
    }
    e.push(Entry::new(
        libc::SYS_set_tid_address,
        [t.clear_child_tid, 0, 0, 0, 0, 0],
    ));
    if let Some(ss) = &t.sigaltstack {
        let st = le(&[ss.sp, ss.flags as u64, ss.size]);
        let a = gadget.data(&st)?;
        e.push(Entry::new(libc::SYS_sigaltstack, [a, 0, 0, 0, 0, 0]));
    }
    if let Some(r) = &t.rseq {
        e.push(Entry::new(
            libc::SYS_rseq,
            [r.ptr, r.len as u64, 0, r.sig as u64, 0, 0],
        ));
    }
    let mut name = t.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let a = gadget.data(&name)?;
    e.push(Entry::new(
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, a, 0, 0, 0, 0],
    ));
    Ok(e)
}

/// Runs `entries` on thread `tid`, then gives its gadget stack back. The
/// gadget stops at the first entry that fails and is not allowed to.
pub(super) fn run_on(
    ctx: &mut TraceCtx,
    gadget: &mut Gadget,
    tid: Tid,
    entries: &[Entry],
    what: &'static str,
) -> Result<(), RestoreError> {
    let rs = gadget.run(ctx, tid, entries);
    gadget.release_thread(tid);
    match rs {
        Ok(_) => Ok(()),
        Err(GadgetError::Failed(b)) => Err(RestoreError::Batch { what, error: b }),
        Err(e) => Err(e.into()),
    }
}

/// Re-queues the dumped pending signals from inside the process (a forged
/// `si_code` is accepted only from the process itself, pitfalls §7.1).
/// They stay pending: the gadget runs with every signal but SIGTRAP
/// blocked, and the final masks are the dumped ones.
pub(super) fn queue_signals(
    gadget: &mut Gadget,
    m: &ManifestBody,
) -> Result<Vec<Entry>, RestoreError> {
    let mut e = Vec::new();
    let tgid = m.process.pid as u64;
    for p in &m.process.pending {
        let info = gadget.data(&p.siginfo)?;
        e.push(Entry::new(
            libc::SYS_rt_sigqueueinfo,
            [tgid, p.signo as u64, info, 0, 0, 0],
        ));
    }
    for t in &m.threads {
        for p in &t.pending {
            let info = gadget.data(&p.siginfo)?;
            e.push(Entry::new(
                libc::SYS_rt_tgsigqueueinfo,
                [tgid, t.tid as u64, p.signo as u64, info, 0, 0],
            ));
        }
    }
    Ok(e)
}

fn timespec(ns: u64) -> [u64; 2] {
    [ns / 1_000_000_000, ns % 1_000_000_000]
}

fn timeval(ns: u64) -> [u64; 2] {
    [ns / 1_000_000_000, (ns % 1_000_000_000) / 1000]
}

/// POSIX timers at their dumped ids (after the threads they may target
/// exist) and interval timers.
pub(super) fn timer_entries(
    gadget: &mut Gadget,
    m: &ManifestBody,
) -> Result<Vec<Entry>, RestoreError> {
    let mut e = Vec::new();
    let p = &m.process;
    if !p.posix_timers.is_empty() {
        e.push(Entry::new(
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
        ));
        for t in &p.posix_timers {
            // struct sigevent: value, signo, notify, then the thread id.
            let mut sev = vec![0u8; 64];
            sev[0..8].copy_from_slice(&t.sigval.to_le_bytes());
            sev[8..12].copy_from_slice(&(t.signo as i32).to_le_bytes());
            let (notify, tid) = match t.notify {
                TimerNotify::None => (libc::SIGEV_NONE, 0),
                TimerNotify::Signal => (libc::SIGEV_SIGNAL, 0),
                TimerNotify::Thread { tid } => (SIGEV_THREAD_ID, tid),
            };
            sev[12..16].copy_from_slice(&notify.to_le_bytes());
            sev[16..20].copy_from_slice(&tid.to_le_bytes());
            let sev = gadget.data(&sev)?;
            let id = gadget.data(&t.id.to_le_bytes())?;
            e.push(Entry::new(
                libc::SYS_timer_create,
                [t.clock as u64, sev, id, 0, 0, 0],
            ));
            let its = le(&[timespec(t.interval_ns), timespec(t.value_ns)].concat());
            let its = gadget.data(&its)?;
            e.push(Entry::new(
                libc::SYS_timer_settime,
                [t.id as u64, 0, its, 0, 0, 0],
            ));
        }
        e.push(Entry::new(
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        ));
    }
    for (which, it) in [
        (libc::ITIMER_REAL, p.itimers.real),
        (libc::ITIMER_VIRTUAL, p.itimers.virt),
        (libc::ITIMER_PROF, p.itimers.prof),
    ] {
        if it.value_ns == 0 && it.interval_ns == 0 {
            continue;
        }
        let v = le(&[timeval(it.interval_ns), timeval(it.value_ns)].concat());
        let v = gadget.data(&v)?;
        e.push(Entry::new(
            libc::SYS_setitimer,
            [which as u64, v, 0, 0, 0, 0],
        ));
    }
    Ok(e)
}

fn regs_from_image(r: &UserRegs) -> Regs {
    Regs {
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
        // Never resume "inside" a syscall: the dump already rewound or
        // turned it into EINTR (pitfalls §1.2, §1.4).
        orig_rax: u64::MAX,
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

/// The thread's dumped registers, extended state and signal mask: the
/// last thing before it is let go.
pub(super) fn install_final_state(
    ctx: &mut TraceCtx,
    tid: Tid,
    t: &Thread,
) -> Result<(), RestoreError> {
    ctx.set_xstate(tid, &Xstate::from_bytes(t.xsave.clone())?)?;
    ctx.set_regs(tid, &regs_from_image(&t.regs))?;
    ctx.set_sigmask(tid, t.sigmask)?;
    Ok(())
}
