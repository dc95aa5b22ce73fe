//! Process-wide state: identity, credentials, limits, `mm` fields, signal
//! dispositions, pending shared signals and timers.

use serde::{Deserialize, Serialize};

use super::encoding::{b64, hex, hex_vec, rlim};

/// Process-wide state of the dumped process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// pid as seen in the process's own (innermost) pid namespace; equal to
    /// the first thread's tid. Usually 1 (pitfalls §6.3).
    pub pid: i32,
    /// `personality(0xffffffff)`.
    #[serde(with = "hex")]
    pub personality: u32,
    /// File mode creation mask (0..=0o777).
    pub umask: u32,
    /// Working directory, an absolute path inside the container's rootfs.
    pub cwd: String,
    /// `/proc/PID/exe`, an absolute path inside the rootfs; the restorer
    /// sets it with `PR_SET_MM_MAP`'s `exe_fd` (pitfalls §5.4).
    pub exe: String,
    /// Credentials. Per-thread in the kernel; the dumper refuses a process
    /// whose threads differ, so one record serves all threads.
    pub credentials: Credentials,
    /// Resource limits, one record per resource present. Informational for
    /// restore, which applies the bundle's, except `stack` (the stub is
    /// exec'd with it, pitfalls §10.6).
    pub rlimits: Vec<Rlimit>,
    /// The `mm` fields restored with `PR_SET_MM_MAP`.
    pub mm: MmFields,
    /// Signal dispositions other than `SIG_DFL` with no flags, one per signal.
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (`PTRACE_PEEKSIGINFO_SHARED`).
    pub pending: Vec<PendingSignal>,
    /// POSIX timers (`timer_create`).
    pub posix_timers: Vec<PosixTimer>,
    /// The three interval timers (`setitimer`).
    pub itimers: ITimers,
    /// Clock offsets of the process's time namespace
    /// (`/proc/PID/timens_offsets`), `None` in the initial one. A restorer
    /// that gives the sandbox a time namespace with these offsets keeps
    /// `CLOCK_MONOTONIC`/`CLOCK_BOOTTIME` continuous (pitfalls §4.4).
    pub time_offsets: Option<TimeOffsets>,
}

/// Offsets of a time namespace's clocks from the host's, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeOffsets {
    /// `CLOCK_MONOTONIC` offset.
    pub monotonic_ns: i64,
    /// `CLOCK_BOOTTIME` offset.
    pub boottime_ns: i64,
}

/// User and group ids, supplementary groups, capabilities, securebits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Real, effective, saved and filesystem uid.
    pub uids: IdSet,
    /// Real, effective, saved and filesystem gid.
    pub gids: IdSet,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets, as bit masks (`CAP_*` bit numbers).
    pub caps: CapSets,
    /// `prctl(PR_GET_SECUREBITS)`.
    #[serde(with = "hex")]
    pub securebits: u32,
    /// `prctl(PR_GET_NO_NEW_PRIVS)`.
    pub no_new_privs: bool,
}

/// The four ids of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdSet {
    /// Real id.
    pub real: u32,
    /// Effective id.
    pub effective: u32,
    /// Saved set-id.
    pub saved: u32,
    /// Filesystem id.
    pub fs: u32,
}

/// The five capability sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSets {
    /// Inheritable set.
    #[serde(with = "hex")]
    pub inheritable: u64,
    /// Permitted set.
    #[serde(with = "hex")]
    pub permitted: u64,
    /// Effective set.
    #[serde(with = "hex")]
    pub effective: u64,
    /// Bounding set.
    #[serde(with = "hex")]
    pub bounding: u64,
    /// Ambient set.
    #[serde(with = "hex")]
    pub ambient: u64,
}

/// A resource of `getrlimit`, by its `RLIMIT_*` name in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum RlimitResource {
    Cpu,
    Fsize,
    Data,
    Stack,
    Core,
    Rss,
    Nproc,
    Nofile,
    Memlock,
    As,
    Locks,
    Sigpending,
    Msgqueue,
    Nice,
    Rtprio,
    Rttime,
}

/// One resource limit. `"unlimited"` stands for `RLIM_INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// Which resource.
    pub resource: RlimitResource,
    /// Soft limit (`u64::MAX` = unlimited); not above `hard`.
    #[serde(with = "rlim")]
    pub soft: u64,
    /// Hard limit (`u64::MAX` = unlimited).
    #[serde(with = "rlim")]
    pub hard: u64,
}

/// The fields of `struct prctl_mm_map` (pitfalls §5). The kernel checks
/// that the addresses lie in `[mmap_min_addr, TASK_SIZE)` and are ordered
/// (`start_code < end_code`, `start_data <= end_data`, `start_brk <= brk`,
/// `arg_start <= arg_end`, `env_start <= env_end`); so does the reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct MmFields {
    #[serde(with = "hex")]
    pub start_code: u64,
    #[serde(with = "hex")]
    pub end_code: u64,
    #[serde(with = "hex")]
    pub start_data: u64,
    #[serde(with = "hex")]
    pub end_data: u64,
    #[serde(with = "hex")]
    pub start_brk: u64,
    /// The current break, from an injected `brk(0)` (pitfalls §5.3).
    #[serde(with = "hex")]
    pub brk: u64,
    #[serde(with = "hex")]
    pub start_stack: u64,
    #[serde(with = "hex")]
    pub arg_start: u64,
    #[serde(with = "hex")]
    pub arg_end: u64,
    #[serde(with = "hex")]
    pub env_start: u64,
    #[serde(with = "hex")]
    pub env_end: u64,
    /// The saved auxiliary vector (`/proc/PID/auxv`) as (type, value) word
    /// pairs, ending with the `AT_NULL` pair. Its `AT_SYSINFO_EHDR` must be
    /// the `[vdso]` VMA's start.
    #[serde(with = "hex_vec")]
    pub auxv: Vec<u64>,
}

/// One signal's disposition (`rt_sigaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigAction {
    /// Signal number, 1..=64, neither SIGKILL nor SIGSTOP.
    pub signal: u8,
    /// `sa_handler`: 0 = `SIG_DFL`, 1 = `SIG_IGN`, else an address.
    #[serde(with = "hex")]
    pub handler: u64,
    /// `sa_flags` (`SA_SIGINFO`, `SA_RESTART`, `SA_ONSTACK`, `SA_RESTORER`, …).
    #[serde(with = "hex")]
    pub flags: u64,
    /// `sa_restorer`, copied verbatim (glibc's `__restore_rt`).
    #[serde(with = "hex")]
    pub restorer: u64,
    /// `sa_mask`, bit `n - 1` for signal `n`.
    #[serde(with = "hex")]
    pub mask: u64,
}

/// A queued signal, as `PTRACE_PEEKSIGINFO` returns it; re-queued with
/// `rt_sigqueueinfo`/`rt_tgsigqueueinfo` from inside (pitfalls §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSignal {
    /// Signal number, 1..=64; equal to `si_signo` in `siginfo`.
    pub signo: u8,
    /// The raw 128-byte `siginfo_t`, base64.
    #[serde(with = "b64")]
    pub siginfo: Vec<u8>,
}

/// How a POSIX timer notifies (`sigev_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimerNotify {
    /// `SIGEV_NONE`.
    None,
    /// `SIGEV_SIGNAL`: to the process.
    Signal,
    /// `SIGEV_THREAD_ID`: to one thread of the image.
    Thread {
        /// The target thread's tid.
        tid: i32,
    },
}

/// A POSIX timer, recreated with the same id under
/// `PR_TIMER_CREATE_RESTORE_IDS` (pitfalls §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosixTimer {
    /// Timer id (`timer_t`), ≥ 0.
    pub id: i32,
    /// Clock: `CLOCK_REALTIME` 0, `MONOTONIC` 1, `PROCESS_CPUTIME_ID` 2,
    /// `THREAD_CPUTIME_ID` 3, `BOOTTIME` 7, `REALTIME_ALARM` 8,
    /// `BOOTTIME_ALARM` 9, `TAI` 11.
    pub clock: i32,
    /// Notification.
    pub notify: TimerNotify,
    /// `sigev_signo` (1..=64 unless `notify` is `none`).
    pub signo: u8,
    /// `sigev_value`.
    #[serde(with = "hex")]
    pub sigval: u64,
    /// Interval in nanoseconds (0 = one-shot).
    pub interval_ns: u64,
    /// Time to the next expiry in nanoseconds (0 = disarmed).
    pub value_ns: u64,
    /// Overrun count at dump.
    pub overrun: i32,
}

/// One interval timer (`struct itimerval`), in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ITimer {
    /// Interval (0 = one-shot).
    pub interval_ns: u64,
    /// Time to the next expiry (0 = disarmed).
    pub value_ns: u64,
}

/// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ITimers {
    /// `ITIMER_REAL` (SIGALRM).
    pub real: ITimer,
    /// `ITIMER_VIRTUAL` (SIGVTALRM).
    #[serde(rename = "virtual")]
    pub virt: ITimer,
    /// `ITIMER_PROF` (SIGPROF).
    pub prof: ITimer,
}
