//! Threads, per-thread kernel state, signals and timers (pitfalls §6, §7).

use crate::image::{ManifestBody, PendingSignal, SyscallRestart, Thread, TimerNotify, UserRegs};
use crate::ptrace::{Entry, Gadget, GadgetError, Regs, Stop, Tid, TraceCtx, Xstate};

use super::RestoreError;

const CLONE_ARGS_SIZE: u64 = 88;
/// prctl(PR_TIMER_CREATE_RESTORE_IDS, ON/OFF): `timer_create` takes the
/// wanted id in through its `timer_t *` (pitfalls §7.4).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_THREAD_ID: i32 = 4;

/// The innermost pid-namespace tid of host thread `tid` of `pid`.
pub(super) fn ns_tid(pid: Tid, tid: Tid) -> Option<i32> {
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

/// Re-queues the dumped process-wide pending signals from inside the
/// process, on its main thread (a forged `si_code` is accepted only from
/// the process itself, pitfalls §7.1; see [`queue_thread_signals`] for
/// each thread's own). They stay pending: the gadget runs with every
/// signal but SIGTRAP blocked, and the final masks are the dumped ones.
/// `own_pid` is the process's pid in its own pid namespace, never the
/// image's: a forged `si_code` < 0 may be sent to any process, so an
/// image naming another pid would have the restorer, as root, signal it.
pub(super) fn queue_signals(
    gadget: &mut Gadget,
    m: &ManifestBody,
    own_pid: i32,
) -> Result<Vec<Entry>, RestoreError> {
    let tgid = own_pid as u64;
    queue_entries(gadget, &m.process.pending, |signo, info| {
        Entry::new(libc::SYS_rt_sigqueueinfo, [tgid, signo, info, 0, 0, 0])
    })
}

/// Thread `t`'s own pending signals, to run on that thread: the kernel
/// lets a thread queue a signal with the siginfo of a `tgkill` or of the
/// kernel (`si_code` ≥ 0 or `SI_TKILL`) only to itself.
/// `own_pid`: as for [`queue_signals`]; the main thread is that pid, the
/// others were created at their dumped tids (checked).
pub(super) fn queue_thread_signals(
    gadget: &mut Gadget,
    m: &ManifestBody,
    t: &Thread,
    own_pid: i32,
) -> Result<Vec<Entry>, RestoreError> {
    let main = m.threads.first().is_some_and(|first| first.tid == t.tid);
    let tid = if main { own_pid } else { t.tid };
    let (tgid, tid) = (own_pid as u64, tid as u64);
    queue_entries(gadget, &t.pending, |signo, info| {
        Entry::new(libc::SYS_rt_tgsigqueueinfo, [tgid, tid, signo, info, 0, 0])
    })
}

/// One queueing entry per signal of `pending`, its siginfo in the
/// gadget's data: `entry(signo, siginfo address)`.
fn queue_entries(
    gadget: &mut Gadget,
    pending: &[PendingSignal],
    entry: impl Fn(u64, u64) -> Entry,
) -> Result<Vec<Entry>, RestoreError> {
    pending
        .iter()
        .map(|p| Ok(entry(p.signo as u64, gadget.data(&p.siginfo)?)))
        .collect()
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

/// The registers a thread resumes with. One interrupted in a syscall the
/// kernel would restart is put back as the kernel left it (the -ERESTART*
/// code in `rax`, the call in `orig_rax`, `rip` after the instruction):
/// on its way back to user mode the kernel restarts the call, or, if a
/// signal comes first, handles it and returns -EINTR or restarts by the
/// code and `SA_RESTART`, as it would have. Re-executing the call
/// directly would run a handler first and then block again, missing the
/// signal (a `while (!flag) pause();` would hang).
fn regs_from_image(r: &UserRegs, syscall: SyscallRestart) -> Regs {
    let mut regs = plain_regs(r);
    if let SyscallRestart::Restart {
        nr,
        code: Some(code),
    } = syscall
    {
        regs.rip = r.rip.wrapping_add(2);
        regs.rax = code as u64;
        regs.orig_rax = nr;
    }
    regs
}

fn plain_regs(r: &UserRegs) -> Regs {
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
        // Not "inside" a syscall: the dump already rewound it or turned
        // it into EINTR (pitfalls §1.2, §1.4); see `regs_from_image`.
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
    ctx.set_regs(tid, &regs_from_image(&t.regs, t.syscall))?;
    ctx.set_sigmask(tid, t.sigmask)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::ptrace::{Options, Restart, Tracer, interrupted_syscall, prepare_for_resume};

    static GO: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_usr1(_: libc::c_int) {
        GO.store(true, Ordering::SeqCst);
    }

    /// A thread put back into its interrupted `pause()` with a signal
    /// already pending when it resumes: the handler runs and the call
    /// returns -EINTR, as the kernel does, so `while (!go) pause();` ends.
    /// (Re-executing the call instead would block again after the
    /// handler, with the signal spent.)
    #[test]
    fn a_signal_that_comes_before_the_restarted_call_interrupts_it() {
        // SAFETY: the child only installs a handler, loops on pause() and
        // exits: async-signal-safe calls only.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // SAFETY: a zeroed sigaction with our handler; no SA_RESTART.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr1 as *const () as usize;
                libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
                while !GO.load(Ordering::SeqCst) {
                    libc::pause();
                }
                libc::_exit(7);
            }
        }
        let in_pause = || {
            std::fs::read_to_string(format!("/proc/{child}/syscall"))
                .is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_pause)))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_pause() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let tracer = Tracer::spawn("test-restart").unwrap();
        let resumed = tracer.run(move |ctx| -> crate::ptrace::Result<Restart> {
            ctx.seize(child, Options::NONE)?;
            ctx.interrupt(child)?;
            ctx.wait(child)?;
            let mut regs = ctx.get_regs(child)?;
            let found = interrupted_syscall(&regs);
            // As the dump stores it, then as the restore installs it.
            let restart = prepare_for_resume(&mut regs);
            let Restart::Rewind { nr, code } = restart else {
                return Ok(found);
            };
            let stored = crate::dump::threads::regs_to_image(&regs);
            let syscall = SyscallRestart::Restart {
                nr: nr as u64,
                code: Some(code),
            };
            ctx.set_regs(child, &regs_from_image(&stored, syscall))?;
            // SAFETY: kill(2) of our own child, stopped under ptrace.
            unsafe { libc::kill(child, libc::SIGUSR1) };
            ctx.detach(child, 0)?;
            Ok(found)
        });
        let found = resumed.unwrap();
        let mut status = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: waitpid of our own child, without blocking.
        while unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == 0 {
            if Instant::now() > deadline {
                // SAFETY: as above; the child hangs in pause().
                unsafe {
                    libc::kill(child, libc::SIGKILL);
                    libc::waitpid(child, &mut status, 0);
                }
                panic!("the child missed its signal ({found:?})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            matches!(found, Restart::Rewind { code, .. } if code == crate::ptrace::ERESTARTNOHAND),
            "{found:?}"
        );
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7);
    }
}
