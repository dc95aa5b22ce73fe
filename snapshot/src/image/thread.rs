//! Per-thread state: registers, extended state, signals, and the kernel
//! calls that only act on the calling thread (pitfalls §6.4).

use serde::{Deserialize, Serialize};

use super::encoding::{b64, hex};
use super::process::PendingSignal;

/// One thread of the dumped process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thread {
    /// tid in the process's pid namespace, re-created exactly with
    /// `clone3(set_tid)` (pitfalls §6.1, §6.2). The first thread is the
    /// leader: its tid is the process's pid.
    pub tid: i32,
    /// Thread name (`comm`), at most 15 bytes.
    pub comm: String,
    /// General-purpose registers, stored after the dump-time syscall
    /// fix-up described at [`SyscallRestart`].
    pub regs: UserRegs,
    /// The `NT_X86_XSTATE` regset as `PTRACE_GETREGSET` returned it:
    /// standard (non-compacted) XSAVE layout, exactly
    /// [`Cpu::xstate_regset_size`](super::Cpu::xstate_regset_size) bytes,
    /// base64. Validated as the kernel will (pitfalls §2.2): `xcomp_bv` and
    /// the header's reserved bytes zero, `xstate_bv` within XCR0, no AMX
    /// tile state.
    #[serde(with = "b64")]
    pub xsave: Vec<u8>,
    /// Blocked signals (`PTRACE_GETSIGMASK`), bit `n - 1` for signal `n`.
    #[serde(with = "hex")]
    pub sigmask: u64,
    /// Signals pending for this thread only (`PTRACE_PEEKSIGINFO`), plus
    /// one caught in a signal-delivery-stop at seize time.
    pub pending: Vec<PendingSignal>,
    /// Alternate signal stack, `None` if disabled (`SS_DISABLE`).
    pub sigaltstack: Option<SigAltStack>,
    /// rseq registration (`PTRACE_GET_RSEQ_CONFIGURATION`), `None` if the
    /// thread has none (pitfalls §3).
    pub rseq: Option<Rseq>,
    /// Robust futex list (`get_robust_list`), `None` if never set.
    pub robust_list: Option<RobustList>,
    /// `set_tid_address` value (`PR_GET_TID_ADDRESS`), 0 if none.
    #[serde(with = "hex")]
    pub clear_child_tid: u64,
    /// Whether the thread was stopped inside an interrupted syscall, and how
    /// it resumes.
    pub syscall: SyscallRestart,
}

/// `struct user_regs_struct` (x86_64), by field name. `cs` must be the
/// 64-bit user code selector 0x33 and `ss` 0x2b; `rip`, `fs_base` and
/// `gs_base` lie below the end of the user address space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct UserRegs {
    #[serde(with = "hex")]
    pub r15: u64,
    #[serde(with = "hex")]
    pub r14: u64,
    #[serde(with = "hex")]
    pub r13: u64,
    #[serde(with = "hex")]
    pub r12: u64,
    #[serde(with = "hex")]
    pub rbp: u64,
    #[serde(with = "hex")]
    pub rbx: u64,
    #[serde(with = "hex")]
    pub r11: u64,
    #[serde(with = "hex")]
    pub r10: u64,
    #[serde(with = "hex")]
    pub r9: u64,
    #[serde(with = "hex")]
    pub r8: u64,
    #[serde(with = "hex")]
    pub rax: u64,
    #[serde(with = "hex")]
    pub rcx: u64,
    #[serde(with = "hex")]
    pub rdx: u64,
    #[serde(with = "hex")]
    pub rsi: u64,
    #[serde(with = "hex")]
    pub rdi: u64,
    /// As dumped (the syscall number inside a syscall, else -1). The
    /// restorer installs -1 whatever is stored here (pitfalls §1.4).
    #[serde(with = "hex")]
    pub orig_rax: u64,
    #[serde(with = "hex")]
    pub rip: u64,
    #[serde(with = "hex")]
    pub cs: u64,
    #[serde(with = "hex")]
    pub eflags: u64,
    #[serde(with = "hex")]
    pub rsp: u64,
    #[serde(with = "hex")]
    pub ss: u64,
    #[serde(with = "hex")]
    pub fs_base: u64,
    #[serde(with = "hex")]
    pub gs_base: u64,
    #[serde(with = "hex")]
    pub ds: u64,
    #[serde(with = "hex")]
    pub es: u64,
    #[serde(with = "hex")]
    pub fs: u64,
    #[serde(with = "hex")]
    pub gs: u64,
}

/// The 64-bit user code segment selector.
pub const USER_CS: u64 = 0x33;
/// The user stack segment selector.
pub const USER_SS: u64 = 0x2b;

/// What the thread was doing in the kernel when it stopped, and the
/// dump-time fix-up already applied to [`Thread::regs`] (pitfalls §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum SyscallRestart {
    /// Not in an interrupted syscall: registers are as dumped.
    #[serde(rename = "none")]
    NotInSyscall,
    /// Interrupted with -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND: the
    /// dumper set `rax = nr` and moved `rip` back onto the `syscall`
    /// instruction, so the call re-executes with its arguments.
    Restart {
        /// Syscall number (`orig_rax` at dump; equals the stored `rax`).
        nr: u64,
        /// The restart code the kernel left in `rax`. The restorer puts
        /// the thread back as it was (`rax = code`, `orig_rax = nr`, `rip`
        /// after the instruction), so that the kernel decides as it would
        /// have: a signal that arrives first runs its handler and the call
        /// returns -EINTR or restarts by the code and `SA_RESTART`, else
        /// it restarts. Without it (older images) the call re-executes
        /// directly, and a signal handled before it re-enters is not seen
        /// by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i64>,
    },
    /// Interrupted with -ERESTART_RESTARTBLOCK (relative sleeps, timed
    /// futex waits, poll), or -EINTR outright: the dumper set
    /// `rax = -EINTR`, `rip` stays after the `syscall` instruction.
    Eintr {
        /// Syscall number (`orig_rax` at dump).
        nr: u64,
    },
}

/// `stack_t` of `sigaltstack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigAltStack {
    /// `ss_sp`.
    #[serde(with = "hex")]
    pub sp: u64,
    /// `ss_size`.
    pub size: u64,
    /// `ss_flags` without `SS_DISABLE`: 0, `SS_ONSTACK` (1, on it at dump)
    /// and/or `SS_AUTODISARM` (1 << 31).
    #[serde(with = "hex")]
    pub flags: u32,
}

/// An rseq registration: `rseq(ptr, len, 0, sig)` is injected in the
/// restored thread (pitfalls §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rseq {
    /// `rseq_abi_pointer`, 32-byte aligned.
    #[serde(with = "hex")]
    pub ptr: u64,
    /// `rseq_abi_size`, 32..=1024.
    pub len: u32,
    /// Signature.
    #[serde(with = "hex")]
    pub sig: u32,
}

/// A robust futex list head (`set_robust_list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobustList {
    /// Address of the `robust_list_head`.
    #[serde(with = "hex")]
    pub head: u64,
    /// Its length: 24 on x86_64.
    pub len: u64,
}
