//! seccomp: the OCI `linux.seccomp` section compiled to stacked BPF filters.
//!
//! seccompiler builds filters with one *match* action and one *mismatch*
//! action each, while an OCI profile mixes many actions. The kernel runs every
//! filter stacked on a thread and takes the most restrictive result
//! (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE > LOG >
//! ALLOW; among results of the same action, the one of the most recently
//! installed filter). So a profile becomes:
//!
//! * one **rule filter** per distinct non-ALLOW action of the rules (ERRNO and
//!   TRACE with different `errnoRet` are distinct actions): it returns that
//!   action for the syscall/argument combinations its rules name, ALLOW
//!   otherwise;
//! * one **default filter**, unless `defaultAction` is ALLOW: it returns
//!   `defaultAction` (with `defaultErrnoRet`) for every combination no rule
//!   names, and ALLOW for every combination some rule (of any action) names.
//!   ALLOW rules exist only here.
//!
//! Consequences worth knowing:
//! * when several rules match one call, the most restrictive action wins
//!   whatever their order in the profile: an ERRNO rule beats an ALLOW rule
//!   for the same syscall. Between two rules with the same action but
//!   different `errnoRet` (or TRACE data), the rule listed first wins: rule
//!   filters are installed in reverse order of first appearance. (One
//!   exception, below: the filter that must be installed last.)
//! * a rule whose action equals the default action still gets its own filter,
//!   so it also beats ALLOW rules. (runc drops such rules as redundant, which
//!   makes an overlapping ALLOW rule win there; the difference only shows when
//!   a profile both allows and denies the same call.)
//! * the filters are installed one `seccomp(2)` call at a time, so every filter
//!   but the last must let `seccomp(SECCOMP_SET_MODE_FILTER, flags, ..)`
//!   through. `compile` checks this with the compiled BPF: the one filter
//!   that would block it (typically the default filter of a profile that does
//!   not allow `seccomp`) is installed last. A profile in which more than one
//!   filter blocks it cannot be installed and is rejected.
//!
//! Actions resolve as in runc: `SCMP_ACT_KILL` is KILL_THREAD; `errnoRet`
//! (and `defaultErrnoRet`) default to EPERM for `SCMP_ACT_ERRNO` and
//! `SCMP_ACT_TRACE` (where it is the tracer's data), must be at most 4095
//! (MAX_ERRNO) for ERRNO and 65535 for TRACE, and are an error with any
//! other action (the runtime spec: "the runtime MUST print and error and
//! fail").
//!
//! Syscalls are named as in libseccomp and resolved for x86_64
//! ([`syscall_table`]); names x86_64 does not have are skipped, as runc does,
//! and listed by [`SeccompProgram::unknown_syscalls`].
//!
//! Argument conditions compare all 64 bits (as libseccomp does on x86_64).
//! `SCMP_CMP_MASKED_EQ` with `value` = mask and `valueTwo` = datum matches
//! when `(arg & value) == (valueTwo & value)`: libseccomp masks the datum too
//! (`_db_node_mask_fixup`), and so does seccompiler's `MaskedEq(mask)`.
//!
//! Architectures: sprout runs x86_64 processes only. A profile must list
//! `SCMP_ARCH_X86_64` (or `SCMP_ARCH_NATIVE`) if it lists architectures at
//! all; the others it lists (Docker's profile adds `SCMP_ARCH_X86` and
//! `SCMP_ARCH_X32`) are accepted and ignored. Every filter is built for
//! x86_64 only, and:
//! * a syscall made through another ABI with a different audit arch (i386
//!   `int 0x80`, i.e. 32-bit programs) hits seccompiler's arch check, which
//!   returns `SECCOMP_RET_KILL_PROCESS`: the process dies with SIGSYS;
//! * x32 syscalls carry the x86_64 audit arch with bit 30 (`__X32_SYSCALL_BIT`)
//!   set in the number, so no rule (keyed by x86_64 numbers) would see them,
//!   and a deny-list profile would be bypassed. Every filter therefore starts
//!   with a guard that returns `ERRNO(ENOSYS)` for any number with that bit
//!   set, as a kernel without x32 support would: x32 programs do not run
//!   under a sprout seccomp profile.
//!
//! Flags `SECCOMP_FILTER_FLAG_TSYNC`, `_LOG` and `_SPEC_ALLOW` are passed to
//! every `seccomp(2)` call. User notification (`SCMP_ACT_NOTIFY`,
//! `listenerPath`, `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`) is not supported.

mod eval;
pub mod syscall_table;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::io;
use std::path::PathBuf;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

pub use syscall_table::syscall_number;

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Bit 30 of the syscall number marks an x32 syscall.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on the instructions of one filter (`BPF_MAXINSNS`).
const MAX_FILTER_INSNS: usize = 4096;
/// The kernel's limit on all filters of a thread (`MAX_INSNS_PER_PATH`), each
/// counted with a penalty of 4 instructions.
const MAX_TOTAL_INSNS: usize = 32768;
const PER_FILTER_PENALTY: usize = 4;
/// Largest errno the kernel returns as such (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;
const EPERM: u16 = libc::EPERM as u16;

/// What a seccomp filter makes of a system call: an OCI action resolved to a
/// kernel `SECCOMP_RET_*` action with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// `SECCOMP_RET_KILL_PROCESS` (`SCMP_ACT_KILL_PROCESS`).
    KillProcess,
    /// `SECCOMP_RET_KILL_THREAD` (`SCMP_ACT_KILL`, `SCMP_ACT_KILL_THREAD`).
    KillThread,
    /// `SECCOMP_RET_TRAP`: SIGSYS to the thread (`SCMP_ACT_TRAP`).
    Trap,
    /// `SECCOMP_RET_ERRNO`: the syscall is not run and fails with this errno.
    Errno(u16),
    /// `SECCOMP_RET_TRACE`: the tracer is notified with this data (without a
    /// tracer the syscall fails with ENOSYS).
    Trace(u16),
    /// `SECCOMP_RET_LOG`: allowed, and logged.
    Log,
    /// `SECCOMP_RET_ALLOW`.
    Allow,
}

impl Verdict {
    /// The filter return value for this verdict.
    pub fn to_ret(self) -> u32 {
        match self {
            Verdict::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
            Verdict::KillThread => libc::SECCOMP_RET_KILL_THREAD,
            Verdict::Trap => libc::SECCOMP_RET_TRAP,
            Verdict::Errno(e) => libc::SECCOMP_RET_ERRNO | u32::from(e),
            Verdict::Trace(d) => libc::SECCOMP_RET_TRACE | u32::from(d),
            Verdict::Log => libc::SECCOMP_RET_LOG,
            Verdict::Allow => libc::SECCOMP_RET_ALLOW,
        }
    }

    /// The verdict of a filter return value. Values no filter of ours returns
    /// (`SECCOMP_RET_USER_NOTIF`, unknown actions) map to `KillProcess`, which
    /// is what the kernel does with an unknown action.
    pub fn from_ret(ret: u32) -> Verdict {
        let data = (ret & libc::SECCOMP_RET_DATA) as u16;
        match ret & libc::SECCOMP_RET_ACTION_FULL {
            libc::SECCOMP_RET_KILL_THREAD => Verdict::KillThread,
            libc::SECCOMP_RET_TRAP => Verdict::Trap,
            libc::SECCOMP_RET_ERRNO => Verdict::Errno(data),
            libc::SECCOMP_RET_TRACE => Verdict::Trace(data),
            libc::SECCOMP_RET_LOG => Verdict::Log,
            libc::SECCOMP_RET_ALLOW => Verdict::Allow,
            _ => Verdict::KillProcess,
        }
    }

    /// The kernel's precedence key: lower is more restrictive
    /// (`ACTION_ONLY()` in kernel/seccomp.c, a signed compare).
    fn precedence(ret: u32) -> i32 {
        (ret & libc::SECCOMP_RET_ACTION_FULL) as i32
    }

    /// Whether a syscall with this verdict does not run (or may not run).
    fn blocks(self) -> bool {
        !matches!(self, Verdict::Allow | Verdict::Log)
    }

    fn to_seccompiler(self) -> seccompiler::SeccompAction {
        use seccompiler::SeccompAction as A;
        match self {
            Verdict::KillProcess => A::KillProcess,
            Verdict::KillThread => A::KillThread,
            Verdict::Trap => A::Trap,
            Verdict::Errno(e) => A::Errno(u32::from(e)),
            Verdict::Trace(d) => A::Trace(u32::from(d)),
            Verdict::Log => A::Log,
            Verdict::Allow => A::Allow,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::KillProcess => f.write_str("SCMP_ACT_KILL_PROCESS"),
            Verdict::KillThread => f.write_str("SCMP_ACT_KILL_THREAD"),
            Verdict::Trap => f.write_str("SCMP_ACT_TRAP"),
            Verdict::Errno(e) => write!(f, "SCMP_ACT_ERRNO({e})"),
            Verdict::Trace(d) => write!(f, "SCMP_ACT_TRACE({d})"),
            Verdict::Log => f.write_str("SCMP_ACT_LOG"),
            Verdict::Allow => f.write_str("SCMP_ACT_ALLOW"),
        }
    }
}

/// Which part of a profile an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfilePlace {
    /// `defaultAction` / `defaultErrnoRet`.
    Default,
    /// `syscalls[i]`.
    Rule(usize),
}

impl fmt::Display for ProfilePlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfilePlace::Default => f.write_str("defaultAction"),
            ProfilePlace::Rule(i) => write!(f, "syscalls[{i}]"),
        }
    }
}

/// What a compiled filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterRole {
    /// Returns `defaultAction` for every call no rule names, ALLOW otherwise.
    Default,
    /// Returns its verdict for the calls the rules with that action name,
    /// ALLOW otherwise.
    Rules,
}

/// One compiled filter, as [`SeccompProgram::filters`] describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterInfo {
    /// Default-action filter or rules filter.
    pub role: FilterRole,
    /// The verdict the filter returns when it does not return ALLOW.
    pub verdict: Verdict,
    /// Its length in BPF instructions.
    pub instructions: usize,
}

impl fmt::Display for FilterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            FilterRole::Default => write!(f, "default-action filter ({})", self.verdict),
            FilterRole::Rules => write!(f, "{} rules filter", self.verdict),
        }
    }
}

/// Errors of compiling or installing a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "seccomp {place}: SCMP_ACT_NOTIFY is not supported: sprout has no seccomp \
         user-notification listener (seccomp agent)"
    )]
    NotifyUnsupported { place: ProfilePlace },

    #[error(
        "seccomp listenerPath {path:?} is not supported: sprout has no seccomp \
         user-notification listener (seccomp agent)"
    )]
    ListenerUnsupported { path: PathBuf },

    #[error(
        "seccomp flag {flag} is not supported: it only applies to a seccomp \
         user-notification listener, which sprout does not support"
    )]
    UnsupportedFlag { flag: LinuxSeccompFilterFlag },

    #[error(
        "seccomp {place}: errnoRet is not allowed with {action} (only SCMP_ACT_ERRNO \
         and SCMP_ACT_TRACE take one)"
    )]
    ErrnoNotAllowed {
        place: ProfilePlace,
        action: LinuxSeccompAction,
    },

    #[error("seccomp {place}: errnoRet {value} is out of range for {action} (at most {max})")]
    ErrnoOutOfRange {
        place: ProfilePlace,
        action: LinuxSeccompAction,
        value: u32,
        max: u32,
    },

    #[error(
        "seccomp syscalls[{rule}]: argument index {index} is out of range \
         (system call arguments are numbered 0 to 5)"
    )]
    ArgIndexOutOfRange { rule: usize, index: usize },

    #[error("seccomp syscalls[{rule}]: empty string is not a system call name")]
    EmptySyscallName { rule: usize },

    #[error(
        "seccomp architectures {archs:?} do not include SCMP_ARCH_X86_64, \
         the only architecture sprout runs processes for"
    )]
    UnsupportedArchitectures { archs: Vec<Arch> },

    #[error("seccomp: compiling {what}: {source}")]
    Compile {
        what: String,
        #[source]
        source: seccompiler::BackendError,
    },

    #[error(
        "seccomp: the {filter} has {len} BPF instructions; the kernel accepts at most \
         {MAX_FILTER_INSNS} per filter"
    )]
    FilterTooLarge { filter: FilterInfo, len: usize },

    #[error(
        "seccomp: the profile compiles to {total} BPF instructions in all (counting the \
         kernel's {PER_FILTER_PENALTY} per filter); the kernel accepts at most {MAX_TOTAL_INSNS}"
    )]
    ProgramTooLarge { total: usize },

    #[error(
        "seccomp: the profile denies seccomp(2) itself in more than one stacked filter \
         ({filters}), so the filters cannot all be installed; allow `seccomp`, or deny it \
         with a single action"
    )]
    SeccompCallBlocked { filters: String },

    #[error(
        "seccomp: installing filter {} of {count}, the {filter}, failed: {}{}",
        index + 1,
        io::Error::from_raw_os_error(*errno),
        install_hint(*errno)
    )]
    Install {
        /// 0-based position in install order; filters before it are in force.
        index: usize,
        count: usize,
        filter: FilterInfo,
        errno: i32,
    },

    #[error(
        "seccomp: installing filter {} of {count}, the {filter}, with \
         SECCOMP_FILTER_FLAG_TSYNC failed: thread {tid} cannot be synchronized (it has \
         seccomp filters of its own or is in strict mode)",
        index + 1
    )]
    ThreadSync {
        index: usize,
        count: usize,
        filter: FilterInfo,
        tid: i64,
    },
}

fn install_hint(errno: i32) -> &'static str {
    match errno {
        libc::EACCES => " (the thread has neither no_new_privs set nor CAP_SYS_ADMIN)",
        libc::EINVAL => " (a flag or action this kernel does not support?)",
        libc::ENOMEM => {
            " (the filters, with those already in force, exceed the kernel's limit of \
             32768 instructions)"
        }
        _ => "",
    }
}

/// One compiled filter.
#[derive(Debug, Clone)]
struct Filter {
    role: FilterRole,
    verdict: Verdict,
    bpf: Vec<libc::sock_filter>,
}

impl Filter {
    fn info(&self) -> FilterInfo {
        FilterInfo {
            role: self.role,
            verdict: self.verdict,
            instructions: self.bpf.len(),
        }
    }
}

/// A compiled seccomp profile: BPF filters in install order, plus the
/// `seccomp(2)` flags to install them with.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    filters: Vec<Filter>,
    flags: libc::c_ulong,
    unknown_syscalls: Vec<String>,
}

/// Which calls of one syscall a set of rules matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    /// Every call.
    Always,
    /// Calls for which any of these rules (each an AND of conditions) holds.
    AnyOf(Vec<SeccompRule>),
}

/// Adds `m` to what `map` matches for syscall `nr`.
fn merge(map: &mut BTreeMap<i64, Match>, nr: i64, m: &Match) {
    match map.entry(nr) {
        Entry::Vacant(slot) => {
            slot.insert(m.clone());
        }
        Entry::Occupied(mut slot) => match (slot.get_mut(), m) {
            (Match::Always, _) => {}
            (existing, Match::Always) => *existing = Match::Always,
            (Match::AnyOf(existing), Match::AnyOf(new)) => {
                for rule in new {
                    if !existing.contains(rule) {
                        existing.push(rule.clone());
                    }
                }
            }
        },
    }
}

/// seccompiler's rule map: an empty rule list matches the syscall unconditionally.
fn into_rule_map(map: BTreeMap<i64, Match>) -> BTreeMap<i64, Vec<SeccompRule>> {
    map.into_iter()
        .map(|(nr, m)| match m {
            Match::Always => (nr, Vec::new()),
            Match::AnyOf(rules) => (nr, rules),
        })
        .collect()
}

/// Resolves an OCI action (with its `errnoRet`) the way runc does.
fn verdict_of(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    place: ProfilePlace,
) -> Result<Verdict, SeccompError> {
    use LinuxSeccompAction as A;
    let data = |max: u32| -> Result<u16, SeccompError> {
        match errno_ret {
            // runc (and oci-spec's `as_u32`) default both ERRNO and TRACE to EPERM.
            None => Ok(EPERM),
            Some(value) if value <= max => Ok(value as u16),
            Some(value) => Err(SeccompError::ErrnoOutOfRange {
                place,
                action,
                value,
                max,
            }),
        }
    };
    let verdict = match action {
        A::ScmpActErrno => return Ok(Verdict::Errno(data(MAX_ERRNO)?)),
        // TRACE's data is handed to the tracer, not returned as an errno: any
        // 16-bit value is meaningful.
        A::ScmpActTrace => return Ok(Verdict::Trace(data(u32::from(u16::MAX))?)),
        A::ScmpActNotify => return Err(SeccompError::NotifyUnsupported { place }),
        A::ScmpActKill | A::ScmpActKillThread => Verdict::KillThread,
        A::ScmpActKillProcess => Verdict::KillProcess,
        A::ScmpActTrap => Verdict::Trap,
        A::ScmpActLog => Verdict::Log,
        A::ScmpActAllow => Verdict::Allow,
    };
    // The runtime spec: "When the action doesn't support an errno, the runtime
    // MUST print and error and fail."
    if errno_ret.is_some() {
        return Err(SeccompError::ErrnoNotAllowed { place, action });
    }
    Ok(verdict)
}

/// One OCI argument condition as a 64-bit seccompiler condition.
fn condition(arg: &LinuxSeccompArg, rule: usize) -> Result<SeccompCondition, SeccompError> {
    use LinuxSeccompOperator as O;
    let index = arg.index();
    let index8 = u8::try_from(index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or(SeccompError::ArgIndexOutOfRange { rule, index })?;
    let (op, value) = match arg.op() {
        O::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        O::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        O::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        O::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        O::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        O::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp: `value` is the mask, `valueTwo` the datum (0 when absent);
        // seccompiler's MaskedEq(mask) compares (arg & mask) == (datum & mask).
        O::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index8, SeccompCmpArgLen::Qword, op, value).map_err(|source| {
        SeccompError::Compile {
            what: format!("syscalls[{rule}] argument condition"),
            source,
        }
    })
}

/// What the calls named by `rule` are, as seccompiler rules.
fn rule_match(rule: &LinuxSyscall, index: usize) -> Result<Match, SeccompError> {
    let args = rule.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Ok(Match::Always);
    }
    let mut per_index = [0usize; 6];
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        conditions.push(condition(arg, index)?);
        per_index[arg.index()] += 1;
    }
    let compile_error = |source| SeccompError::Compile {
        what: format!("syscalls[{index}]"),
        source,
    };
    // runc's rule, replicated so profiles mean here what they mean under runc:
    // if any argument index appears in more than one condition, runc adds each
    // condition as a libseccomp rule of its own, so they are ORed (ALL of them,
    // including conditions on other indexes); otherwise the conditions form
    // one rule and are ANDed. (libseccomp used to reject two comparisons of
    // the same argument in one rule, and a range like `a <= x && x <= b` is
    // not what Docker-style profiles express: they list alternative values,
    // e.g. personality(PER_LINUX) OR personality(0xffffffff).)
    if per_index.iter().any(|&n| n > 1) {
        conditions
            .into_iter()
            .map(|c| SeccompRule::new(vec![c]))
            .collect::<Result<Vec<_>, _>>()
            .map(Match::AnyOf)
            .map_err(compile_error)
    } else {
        SeccompRule::new(conditions)
            .map(|r| Match::AnyOf(vec![r]))
            .map_err(compile_error)
    }
}

fn check_architectures(archs: Option<&Vec<Arch>>) -> Result<(), SeccompError> {
    match archs {
        Some(archs)
            if !archs.is_empty()
                && !archs
                    .iter()
                    .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative)) =>
        {
            Err(SeccompError::UnsupportedArchitectures {
                archs: archs.clone(),
            })
        }
        _ => Ok(()),
    }
}

fn filter_flags(
    flags: Option<&Vec<LinuxSeccompFilterFlag>>,
) -> Result<libc::c_ulong, SeccompError> {
    let mut bits = 0;
    for flag in flags.map(Vec::as_slice).unwrap_or_default() {
        bits |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::UnsupportedFlag { flag: *flag });
            }
        };
    }
    Ok(bits)
}

/// The x32 guard every filter starts with: `ERRNO(ENOSYS)` for any syscall
/// number with `__X32_SYSCALL_BIT` set (also -1, which the kernel fails with
/// ENOSYS anyway).
fn x32_guard() -> [libc::sock_filter; 3] {
    let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        // A = seccomp_data.nr
        insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        // if A >= X32_SYSCALL_BIT fall through to the return, else skip it
        insn(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            0,
            1,
            X32_SYSCALL_BIT,
        ),
        insn(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            Verdict::Errno(libc::ENOSYS as u16).to_ret(),
        ),
    ]
}

/// Builds one filter: the x32 guard, then seccompiler's program.
fn build_filter(
    role: FilterRole,
    verdict: Verdict,
    rules: BTreeMap<i64, Match>,
) -> Result<Filter, SeccompError> {
    let (mismatch, matched) = match role {
        FilterRole::Default => (verdict, Verdict::Allow),
        FilterRole::Rules => (Verdict::Allow, verdict),
    };
    let info = FilterInfo {
        role,
        verdict,
        instructions: 0,
    };
    let compile_error = |source| SeccompError::Compile {
        what: format!("the {info}"),
        source,
    };
    let filter = SeccompFilter::new(
        into_rule_map(rules),
        mismatch.to_seccompiler(),
        matched.to_seccompiler(),
        TargetArch::x86_64,
    )
    .map_err(compile_error)?;
    let program: BpfProgram = filter.try_into().map_err(compile_error)?;
    let mut bpf = Vec::with_capacity(program.len() + 3);
    bpf.extend(x32_guard());
    bpf.extend(program.into_iter().map(|i| libc::sock_filter {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }));
    if bpf.len() > MAX_FILTER_INSNS {
        return Err(SeccompError::FilterTooLarge {
            filter: FilterInfo {
                instructions: bpf.len(),
                ..info
            },
            len: bpf.len(),
        });
    }
    Ok(Filter { role, verdict, bpf })
}

/// Whether `filter` blocks (or may block) the `seccomp(2)` call that
/// [`SeccompProgram::install`] makes with `flags`. The call's pointer argument
/// is not known here, so a filter whose result depends on it counts as
/// blocking.
fn blocks_install_call(filter: &Filter, flags: libc::c_ulong) -> bool {
    let data = eval::seccomp_data(
        libc::SYS_seccomp,
        AUDIT_ARCH_X86_64,
        [u64::from(libc::SECCOMP_SET_MODE_FILTER), flags, 0, 0, 0, 0],
    );
    let pointer_words = 0b11 << (eval::arg_offset(2) / 4);
    match eval::run(&filter.bpf, &data) {
        Some(run) => Verdict::from_ret(run.ret).blocks() || run.words_read & pointer_words != 0,
        None => true,
    }
}

impl SeccompProgram {
    /// Compiles an OCI seccomp section for x86_64. Pure: no syscalls.
    pub fn compile(spec: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
        check_architectures(spec.architectures().as_ref())?;
        if let Some(path) = spec.listener_path() {
            return Err(SeccompError::ListenerUnsupported { path: path.clone() });
        }
        let flags = filter_flags(spec.flags().as_ref())?;
        let default = verdict_of(
            spec.default_action(),
            spec.default_errno_ret(),
            ProfilePlace::Default,
        )?;

        // Every rule's calls (for the default filter), and per non-ALLOW
        // verdict the calls of its rules, in order of first appearance.
        let mut named: BTreeMap<i64, Match> = BTreeMap::new();
        let mut groups: Vec<(Verdict, BTreeMap<i64, Match>)> = Vec::new();
        let mut unknown_syscalls: Vec<String> = Vec::new();
        for (index, rule) in spec
            .syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let verdict = verdict_of(rule.action(), rule.errno_ret(), ProfilePlace::Rule(index))?;
            let calls = rule_match(rule, index)?;
            for name in rule.names() {
                if name.is_empty() {
                    return Err(SeccompError::EmptySyscallName { rule: index });
                }
                let Some(nr) = syscall_number(name) else {
                    if !unknown_syscalls.contains(name) {
                        unknown_syscalls.push(name.clone());
                    }
                    continue;
                };
                merge(&mut named, nr, &calls);
                if verdict != Verdict::Allow {
                    let group = match groups.iter().position(|(v, _)| *v == verdict) {
                        Some(group) => group,
                        None => {
                            groups.push((verdict, BTreeMap::new()));
                            groups.len() - 1
                        }
                    };
                    merge(&mut groups[group].1, nr, &calls);
                }
            }
        }

        // Install order: the default filter (it never ties with a rule filter:
        // where it returns the default action no rule matches), then the rule
        // filters in reverse order of first appearance, so that among equally
        // restrictive results the rule listed first wins.
        let mut filters = Vec::with_capacity(groups.len() + 1);
        if default != Verdict::Allow {
            filters.push(build_filter(FilterRole::Default, default, named)?);
        }
        for (verdict, rules) in groups.into_iter().rev() {
            filters.push(build_filter(FilterRole::Rules, verdict, rules)?);
        }

        // Filters are installed one seccomp(2) call at a time: the one filter
        // that would block the calls installing the others must come last.
        let blocking: Vec<usize> = (0..filters.len())
            .filter(|&i| blocks_install_call(&filters[i], flags))
            .collect();
        match blocking.as_slice() {
            [] => {}
            [i] => {
                let last = filters.remove(*i);
                filters.push(last);
            }
            many => {
                return Err(SeccompError::SeccompCallBlocked {
                    filters: many
                        .iter()
                        .map(|&i| filters[i].info().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }

        let total: usize = filters
            .iter()
            .map(|f| f.bpf.len() + PER_FILTER_PENALTY)
            .sum();
        if total > MAX_TOTAL_INSNS {
            return Err(SeccompError::ProgramTooLarge { total });
        }

        Ok(SeccompProgram {
            filters,
            flags,
            unknown_syscalls,
        })
    }

    /// Installs every filter on the calling thread (on all threads of the
    /// process with `SECCOMP_FILTER_FLAG_TSYNC`), in order.
    ///
    /// Requires `no_new_privs` or CAP_SYS_ADMIN. Async-signal-safe: it neither
    /// allocates nor takes locks, and makes no syscall but `seccomp(2)`, so it
    /// may run in a child forked from a multi-threaded process right before
    /// `execve` (which the profile must then allow). On error the filters
    /// before the failing one stay installed: treat any error as fatal for
    /// the process.
    pub fn install(&self) -> Result<(), SeccompError> {
        const ZERO: libc::c_ulong = 0;
        let count = self.filters.len();
        for (index, filter) in self.filters.iter().enumerate() {
            let prog = libc::sock_fprog {
                // compile() bounds every filter by MAX_FILTER_INSNS (4096).
                len: filter.bpf.len() as libc::c_ushort,
                filter: filter.bpf.as_ptr().cast_mut(),
            };
            // SAFETY: `prog` points to `filter.bpf`, a live, initialized array
            // of `len` sock_filter; the kernel only reads it (copy_from_user)
            // during the call and keeps no reference. The three trailing zero
            // arguments make the unused registers deterministic, which is what
            // compile() assumed when it checked which filter blocks this call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
                    self.flags,
                    &raw const prog,
                    ZERO,
                    ZERO,
                    ZERO,
                )
            };
            if rc < 0 {
                return Err(SeccompError::Install {
                    index,
                    count,
                    filter: filter.info(),
                    errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
                });
            }
            if rc > 0 {
                // With TSYNC, a positive return is the thread that could not sync.
                return Err(SeccompError::ThreadSync {
                    index,
                    count,
                    filter: filter.info(),
                    tid: rc,
                });
            }
        }
        Ok(())
    }

    /// The raw BPF of every filter, in install order, for an installer that
    /// runs the `seccomp(2)` calls elsewhere (the restorer injects them into
    /// the restored process; flags from [`flags`](Self::flags)).
    pub fn bpf_programs(&self) -> impl Iterator<Item = &[libc::sock_filter]> + '_ {
        self.filters.iter().map(|f| f.bpf.as_slice())
    }

    /// The number of filters [`install`](Self::install) installs.
    pub fn filter_count(&self) -> usize {
        self.filters.len()
    }

    /// The filters, in install order.
    pub fn filters(&self) -> impl Iterator<Item = FilterInfo> + '_ {
        self.filters.iter().map(Filter::info)
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits every filter is installed with.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }

    /// The syscall names of the profile that x86_64 does not have, skipped
    /// (as runc does); each once, in order of appearance. Worth a log line.
    pub fn unknown_syscalls(&self) -> &[String] {
        &self.unknown_syscalls
    }

    /// What the kernel will do with the native x86_64 syscall `nr` called
    /// with `args`, once this program is installed (on a thread without other
    /// filters): every filter is run and the most restrictive result wins,
    /// ties going to the most recently installed filter.
    pub fn evaluate(&self, nr: i64, args: [u64; 6]) -> Verdict {
        let data = eval::seccomp_data(nr, AUDIT_ARCH_X86_64, args);
        let mut ret = libc::SECCOMP_RET_ALLOW;
        for filter in self.filters.iter().rev() {
            // A program the interpreter does not model cannot come from
            // compile(); were it to, assume the kernel's fail-closed result.
            let cur =
                eval::run(&filter.bpf, &data).map_or(libc::SECCOMP_RET_KILL_PROCESS, |r| r.ret);
            if Verdict::precedence(cur) < Verdict::precedence(ret) {
                ret = cur;
            }
        }
        Verdict::from_ret(ret)
    }
}
