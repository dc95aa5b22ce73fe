//! Process-wide state: credentials, limits, mm fields, signal handlers,
//! timers. Read from /proc where it is there, by syscalls injected into
//! the stopped main thread where it is not (pitfalls §5.3, §7).

use crate::image::{
    CapSets, Credentials, ITimer, ITimers, IdSet, MmFields, PosixTimer, Process, Rlimit,
    RlimitResource, SigAction, TimeOffsets, TimerNotify,
};
use crate::proc;
use crate::ptrace::{Tid, TraceCtx};

use super::{DumpError, Scratch, check};

pub(super) const RLIMITS: [(RlimitResource, i32); 16] = [
    (RlimitResource::Cpu, libc::RLIMIT_CPU as i32),
    (RlimitResource::Fsize, libc::RLIMIT_FSIZE as i32),
    (RlimitResource::Data, libc::RLIMIT_DATA as i32),
    (RlimitResource::Stack, libc::RLIMIT_STACK as i32),
    (RlimitResource::Core, libc::RLIMIT_CORE as i32),
    (RlimitResource::Rss, libc::RLIMIT_RSS as i32),
    (RlimitResource::Nproc, libc::RLIMIT_NPROC as i32),
    (RlimitResource::Nofile, libc::RLIMIT_NOFILE as i32),
    (RlimitResource::Memlock, libc::RLIMIT_MEMLOCK as i32),
    (RlimitResource::As, libc::RLIMIT_AS as i32),
    (RlimitResource::Locks, libc::RLIMIT_LOCKS as i32),
    (RlimitResource::Sigpending, libc::RLIMIT_SIGPENDING as i32),
    (RlimitResource::Msgqueue, libc::RLIMIT_MSGQUEUE as i32),
    (RlimitResource::Nice, libc::RLIMIT_NICE as i32),
    (RlimitResource::Rtprio, libc::RLIMIT_RTPRIO as i32),
    (RlimitResource::Rttime, libc::RLIMIT_RTTIME as i32),
];

fn rlimits(pid: Tid) -> Result<Vec<Rlimit>, DumpError> {
    let mut out = Vec::with_capacity(RLIMITS.len());
    for (resource, res) in RLIMITS {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 reading another process's limit into a valid
        // struct; no new limit is passed.
        let r = unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) };
        if r < 0 {
            return Err(DumpError::Syscall {
                what: "prlimit",
                source: std::io::Error::last_os_error(),
            });
        }
        out.push(Rlimit {
            resource,
            soft: old.rlim_cur,
            hard: old.rlim_max,
        });
    }
    Ok(out)
}

fn timespec_ns(b: &[u8]) -> u64 {
    let s = i64::from_le_bytes(b[0..8].try_into().unwrap());
    let ns = i64::from_le_bytes(b[8..16].try_into().unwrap());
    (s.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ns.max(0) as u64)
}

fn timeval_ns(b: &[u8]) -> u64 {
    let s = i64::from_le_bytes(b[0..8].try_into().unwrap());
    let us = i64::from_le_bytes(b[8..16].try_into().unwrap());
    (s.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add((us.max(0) as u64) * 1000)
}

fn sigactions(
    ctx: &mut TraceCtx,
    tid: Tid,
    scratch: &Scratch,
) -> Result<Vec<SigAction>, DumpError> {
    let mut out = Vec::new();
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        let r = ctx.syscall(tid, libc::SYS_rt_sigaction, [sig, 0, scratch.addr, 8, 0, 0])?;
        if r == -(libc::EINVAL as i64) {
            // Signals 32 and 33 are reserved by glibc but valid for the
            // kernel; EINVAL only for numbers the kernel does not know.
            continue;
        }
        check(r, "rt_sigaction")?;
        let b = scratch.read(32)?;
        let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let (handler, flags, restorer, mask) = (word(0), word(1), word(2), word(3));
        if handler == 0 && flags == 0 && mask == 0 {
            continue; // SIG_DFL, nothing to restore
        }
        out.push(SigAction {
            signal: sig as u8,
            handler,
            flags,
            restorer,
            mask,
        });
    }
    Ok(out)
}

fn posix_timers(
    ctx: &mut TraceCtx,
    pid: Tid,
    tid: Tid,
    scratch: &Scratch,
    ns_tid: &dyn Fn(i32) -> i32,
) -> Result<Vec<PosixTimer>, DumpError> {
    let mut out = Vec::new();
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).map_err(|source| {
        DumpError::Syscall {
            what: "reading /proc/PID/timers",
            source,
        }
    })?;
    let sigvals: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("signal: "))
        .map(|v| {
            v.split('/')
                .nth(1)
                .and_then(|x| u64::from_str_radix(x.trim(), 16).ok())
                .unwrap_or(0)
        })
        .collect();
    for (i, t) in proc::parse_timers(&text)
        .map_err(|reason| {
            DumpError::Proc(proc::ProcError::Parse {
                path: format!("/proc/{pid}/timers").into(),
                reason,
            })
        })?
        .into_iter()
        .enumerate()
    {
        let r = ctx.syscall(
            tid,
            libc::SYS_timer_gettime,
            [t.id as u64, scratch.addr, 0, 0, 0, 0],
        )?;
        check(r, "timer_gettime")?;
        let its = scratch.read(32)?;
        let overrun = ctx.syscall(
            tid,
            libc::SYS_timer_getoverrun,
            [t.id as u64, 0, 0, 0, 0, 0],
        )?;
        let notify = match t.notify.as_str() {
            "none" => TimerNotify::None,
            "thread" => TimerNotify::Thread {
                tid: ns_tid(t.notify_tid),
            },
            _ => TimerNotify::Signal,
        };
        out.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify,
            signo: t.signal as u8,
            sigval: sigvals.get(i).copied().unwrap_or(0),
            interval_ns: timespec_ns(&its[0..16]),
            value_ns: timespec_ns(&its[16..32]),
            overrun: overrun.max(0) as i32,
        });
    }
    Ok(out)
}

fn itimers(ctx: &mut TraceCtx, tid: Tid, scratch: &Scratch) -> Result<ITimers, DumpError> {
    let mut get = |which: u64| -> Result<ITimer, DumpError> {
        let r = ctx.syscall(tid, libc::SYS_getitimer, [which, scratch.addr, 0, 0, 0, 0])?;
        check(r, "getitimer")?;
        let b = scratch.read(32)?;
        Ok(ITimer {
            interval_ns: timeval_ns(&b[0..16]),
            value_ns: timeval_ns(&b[16..32]),
        })
    };
    Ok(ITimers {
        real: get(libc::ITIMER_REAL as u64)?,
        virt: get(libc::ITIMER_VIRTUAL as u64)?,
        prof: get(libc::ITIMER_PROF as u64)?,
    })
}

fn time_offsets(pid: Tid) -> Option<TimeOffsets> {
    let own = std::fs::read_link("/proc/self/ns/time").ok()?;
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/time")).ok()?;
    if own == theirs {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).ok()?;
    let mut o = TimeOffsets {
        monotonic_ns: 0,
        boottime_ns: 0,
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let ns =
            f[1].parse::<i64>().unwrap_or(0) * 1_000_000_000 + f[2].parse::<i64>().unwrap_or(0);
        match f[0] {
            "monotonic" => o.monotonic_ns = ns,
            "boottime" => o.boottime_ns = ns,
            _ => {}
        }
    }
    Some(o)
}

/// The process record. `tid` is the stopped main thread; `ns_pid` the
/// process's pid inside its own pid namespace; `ns_tid` maps a host tid to
/// the container's numbering.
pub(super) fn dump_process(
    ctx: &mut TraceCtx,
    pid: Tid,
    ns_pid: i32,
    scratch: &Scratch,
    ns_tid: &dyn Fn(i32) -> i32,
) -> Result<Process, DumpError> {
    let tid = pid;
    let status = proc::status(pid)?;
    let (stat_mm, _threads) = proc::stat_mm(pid)?;
    let brk = ctx.syscall(tid, libc::SYS_brk, [0; 6])?;
    check(brk, "brk(0)")?;
    let securebits = ctx.syscall(
        tid,
        libc::SYS_prctl,
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
    )?;
    check(securebits, "prctl(PR_GET_SECUREBITS)")?;
    let auxv = proc::auxv(pid)?;
    let personality = std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let link = |what: &str| -> Result<String, DumpError> {
        std::fs::read_link(format!("/proc/{pid}/{what}"))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|source| DumpError::Syscall {
                what: "readlink of /proc/PID/cwd or exe",
                source,
            })
    };
    let ids = |v: [u32; 4]| IdSet {
        real: v[0],
        effective: v[1],
        saved: v[2],
        fs: v[3],
    };
    Ok(Process {
        pid: ns_pid,
        personality,
        umask: status.umask,
        cwd: link("cwd")?,
        exe: link("exe")?,
        credentials: Credentials {
            uids: ids(status.uids),
            gids: ids(status.gids),
            groups: status.groups.clone(),
            caps: CapSets {
                inheritable: status.cap_inh,
                permitted: status.cap_prm,
                effective: status.cap_eff,
                bounding: status.cap_bnd,
                ambient: status.cap_amb,
            },
            securebits: securebits as u32,
            no_new_privs: status.no_new_privs,
        },
        rlimits: rlimits(pid)?,
        mm: MmFields {
            start_code: stat_mm.start_code,
            end_code: stat_mm.end_code,
            start_data: stat_mm.start_data,
            end_data: stat_mm.end_data,
            start_brk: stat_mm.start_brk,
            brk: brk as u64,
            start_stack: stat_mm.start_stack,
            arg_start: stat_mm.arg_start,
            arg_end: stat_mm.arg_end,
            env_start: stat_mm.env_start,
            env_end: stat_mm.env_end,
            // With the terminating AT_NULL pair, as the kernel keeps it.
            auxv: auxv
                .iter()
                .flat_map(|(t, v)| [*t, *v])
                .chain([0, 0])
                .collect(),
        },
        sigactions: sigactions(ctx, tid, scratch)?,
        pending: super::threads::shared_pending(ctx, tid)?,
        posix_timers: posix_timers(ctx, pid, tid, scratch, ns_tid)?,
        itimers: itimers(ctx, tid, scratch)?,
        time_offsets: time_offsets(pid),
    })
}
