//! Register sets and the interrupted-syscall rules (restore-pitfalls §1, §2,
//! §3).

/// `-ERESTARTSYS`: restart if the handler has `SA_RESTART` (or no handler runs).
pub const ERESTARTSYS: i64 = -512;
/// `-ERESTARTNOINTR`: always restart.
pub const ERESTARTNOINTR: i64 = -513;
/// `-ERESTARTNOHAND`: restart unless a handler runs.
pub const ERESTARTNOHAND: i64 = -514;
/// `-ERESTART_RESTARTBLOCK`: restart through `restart_syscall` and the
/// thread's kernel `restart_block` (relative sleeps, timed futex waits, poll).
pub const ERESTART_RESTARTBLOCK: i64 = -516;
/// `-EINTR`.
pub const EINTR: i64 = -(libc::EINTR as i64);

/// x86_64 general purpose registers: the kernel's `struct user_regs_struct`,
/// as `NT_PRSTATUS` reads and writes it (with `fs_base`/`gs_base`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// The syscall number while the thread is inside (or was interrupted
    /// in) a syscall; `-1` (as u64) otherwise.
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

const _: () = assert!(std::mem::size_of::<Regs>() == 27 * 8);
const _: () = assert!(std::mem::size_of::<Regs>() == std::mem::size_of::<libc::user_regs_struct>());

/// Trap flag in `eflags`.
pub(super) const EFLAGS_TF: u64 = 1 << 8;
/// Direction flag in `eflags`.
pub(super) const EFLAGS_DF: u64 = 1 << 10;

impl Regs {
    /// The six syscall argument registers, in ABI order
    /// (rdi, rsi, rdx, r10, r8, r9).
    pub fn syscall_args(&self) -> [u64; 6] {
        [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9]
    }

    /// Sets rax and the six argument registers for a syscall.
    pub fn set_syscall(&mut self, nr: i64, args: [u64; 6]) {
        self.rax = nr as u64;
        self.rdi = args[0];
        self.rsi = args[1];
        self.rdx = args[2];
        self.r10 = args[3];
        self.r8 = args[4];
        self.r9 = args[5];
    }

    /// `orig_rax` as a signed number: the syscall the thread was in, or -1.
    pub fn orig_syscall(&self) -> i64 {
        self.orig_rax as i64
    }

    /// The raw bytes, as the kernel lays them out.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: Regs is repr(C), made of 27 u64 without padding; any byte
        // view of it is valid.
        unsafe {
            std::slice::from_raw_parts((self as *const Regs).cast(), std::mem::size_of::<Regs>())
        }
    }
}

/// How a thread stopped inside a syscall must be resumed (restore-pitfalls
/// §1.1, §1.2), from its registers as ptrace shows them at an interrupt or
/// signal-delivery stop, i.e. *before* the kernel's restart fix-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// `orig_rax` is -1: the thread was in user mode.
    NotInSyscall,
    /// `rax` is -ERESTARTSYS, -ERESTARTNOINTR or -ERESTARTNOHAND: re-execute
    /// the syscall (`rip -= 2`, `rax = orig_rax`); its arguments are still in
    /// rdi/rsi/rdx/r10/r8/r9.
    Rewind {
        /// The syscall number.
        nr: i64,
        /// The restart code found in rax.
        code: i64,
    },
    /// `rax` is -ERESTART_RESTARTBLOCK: the restart needs the kernel's
    /// per-thread restart_block, which a re-created thread does not have, so
    /// the syscall returns -EINTR (as CRIU does). nanosleep has already
    /// written its remaining time.
    Eintr {
        /// The syscall number.
        nr: i64,
    },
    /// In a syscall, but rax holds its final result (e.g. -EINTR, or any
    /// value at a syscall-exit stop): resume as is.
    Done {
        /// The syscall number.
        nr: i64,
        /// Its result.
        ret: i64,
    },
}

/// Classifies the syscall state of a stopped thread (restore-pitfalls §1.1).
///
/// Meaningful for registers read at an interrupt, group or
/// signal-delivery stop (the dump's case). At a syscall-*entry* stop rax is
/// -ENOSYS and the result says `Done`.
pub fn interrupted_syscall(regs: &Regs) -> Restart {
    let nr = regs.orig_rax as i64;
    if nr < 0 {
        return Restart::NotInSyscall;
    }
    let rax = regs.rax as i64;
    match rax {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => Restart::Rewind { nr, code: rax },
        ERESTART_RESTARTBLOCK => Restart::Eintr { nr },
        _ => Restart::Done { nr, ret: rax },
    }
}

/// Rewrites registers saved at a stop so that a thread given them resumes as
/// the kernel would have resumed it (compel's `compel_get_task_regs`):
/// -512/-513/-514 → `rip -= 2`, `rax = orig_rax`; -516 → `rax = -EINTR`.
/// In every case `orig_rax` becomes -1 (restore-pitfalls §1.4), so that no
/// restart logic is applied again when these registers are installed.
/// Returns the classification of the registers as they were.
///
/// Not idempotent: apply it once, to registers read at the stop.
pub fn prepare_for_resume(regs: &mut Regs) -> Restart {
    let r = interrupted_syscall(regs);
    match r {
        Restart::Rewind { nr, .. } => {
            regs.rax = nr as u64;
            regs.rip = regs.rip.wrapping_sub(2);
        }
        Restart::Eintr { .. } => regs.rax = EINTR as u64,
        Restart::NotInSyscall | Restart::Done { .. } => {}
    }
    regs.orig_rax = u64::MAX;
    r
}

/// The extended FPU state of a thread: the `NT_X86_XSTATE` regset, in the
/// standard (non-compacted) XSAVE layout, exactly as long as the kernel
/// returned it (restore-pitfalls §2.1: setting it needs exactly that length).
#[derive(Clone, PartialEq, Eq)]
pub struct Xstate(Vec<u8>);

impl std::fmt::Debug for Xstate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xstate")
            .field("len", &self.0.len())
            .field("xstate_bv", &format_args!("{:#x}", self.xstate_bv()))
            .finish()
    }
}

/// Offset of the XSAVE header (after the 512-byte FXSAVE area).
const XSAVE_HDR: usize = 512;
/// Size of the legacy area plus the header: the minimum valid buffer.
const XSAVE_MIN: usize = 576;

impl Xstate {
    /// Wraps bytes from an image. Their length must be the kernel's
    /// `NT_X86_XSTATE` size to be settable ([`super::TraceCtx::set_xstate`]
    /// checks).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Xstate, super::PtraceError> {
        if bytes.len() < XSAVE_MIN {
            return Err(super::PtraceError::Invalid(format!(
                "xstate of {} bytes is shorter than the {XSAVE_MIN}-byte legacy area and header",
                bytes.len()
            )));
        }
        Ok(Xstate(bytes))
    }

    /// The raw buffer.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw buffer, mutable (its length cannot change).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// The buffer.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (a valid xstate has at least 576 bytes).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.0[off..off + 8].try_into().expect("8 bytes"))
    }

    /// `xstate_bv`: which components hold non-init state (restore-pitfalls
    /// §2.3: the FP/SSE bits may be missing; keep it as read).
    pub fn xstate_bv(&self) -> u64 {
        self.u64_at(XSAVE_HDR)
    }

    /// `xcomp_bv` (must be 0 in this layout).
    pub fn xcomp_bv(&self) -> u64 {
        self.u64_at(XSAVE_HDR + 8)
    }

    /// The features enabled for user space (the kernel's XCR0 mirror): in
    /// the ptrace regset (and core dumps) the kernel stores it in the first
    /// word of the FXSAVE area's software-reserved bytes, at offset 464
    /// (signal frames put `struct _fpx_sw_bytes` there instead).
    pub fn xcr0(&self) -> u64 {
        self.u64_at(464)
    }

    /// MXCSR.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.0[24..28].try_into().expect("4 bytes"))
    }

    /// XMM register `i` (0..16), from the legacy area.
    pub fn xmm(&self, i: usize) -> [u8; 16] {
        assert!(i < 16, "xmm{i}");
        self.0[160 + 16 * i..176 + 16 * i]
            .try_into()
            .expect("16 bytes")
    }

    /// Sets XMM register `i` and marks the SSE component (bit 1 of
    /// `xstate_bv`) as present: without that bit the kernel loads the SSE
    /// init state (zeros) and ignores the bytes.
    pub fn set_xmm(&mut self, i: usize, value: [u8; 16]) {
        assert!(i < 16, "xmm{i}");
        self.0[160 + 16 * i..176 + 16 * i].copy_from_slice(&value);
        let bv = self.xstate_bv() | 0b10;
        self.0[XSAVE_HDR..XSAVE_HDR + 8].copy_from_slice(&bv.to_le_bytes());
    }

    /// The header checks `validate_user_xstate_header` makes
    /// (restore-pitfalls §2.2), against the features this task may use
    /// (`allowed`, e.g. [`Xstate::xcr0`] of an xstate read on this host).
    pub fn validate(&self, allowed: u64) -> Result<(), String> {
        if self.xcomp_bv() != 0 {
            return Err(format!("xcomp_bv is {:#x}, must be 0", self.xcomp_bv()));
        }
        if self.xstate_bv() & !allowed != 0 {
            return Err(format!(
                "xstate_bv {:#x} has features outside {allowed:#x}",
                self.xstate_bv()
            ));
        }
        if self.0[XSAVE_HDR + 16..XSAVE_HDR + 64]
            .iter()
            .any(|&b| b != 0)
        {
            return Err("reserved bytes of the xsave header are not zero".into());
        }
        Ok(())
    }
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`'s answer (restore-pitfalls §3.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the thread's `struct rseq`; 0 when none is registered.
    pub rseq_abi_pointer: u64,
    /// Its registered length.
    pub rseq_abi_size: u32,
    /// The abort signature.
    pub signature: u32,
    /// Registration flags (0).
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// `PTRACE_GET_SYSCALL_INFO`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallInfo {
    /// Not at a syscall stop.
    None,
    /// Syscall-entry stop.
    Entry {
        /// The syscall number.
        nr: u64,
        /// Its arguments.
        args: [u64; 6],
    },
    /// Syscall-exit stop.
    Exit {
        /// The return value.
        rval: i64,
        /// Whether it is an error.
        is_error: bool,
    },
    /// `PTRACE_EVENT_SECCOMP` stop.
    Seccomp {
        /// The syscall number.
        nr: u64,
        /// Its arguments.
        args: [u64; 6],
        /// `SECCOMP_RET_DATA`.
        ret_data: u32,
    },
}

impl SyscallInfo {
    pub(super) fn parse(buf: &[u8]) -> SyscallInfo {
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        let args = || std::array::from_fn(|i| u64_at(32 + 8 * i));
        match buf[0] {
            1 => SyscallInfo::Entry {
                nr: u64_at(24),
                args: args(),
            },
            2 => SyscallInfo::Exit {
                rval: u64_at(24) as i64,
                is_error: buf[32] != 0,
            },
            3 => SyscallInfo::Seccomp {
                nr: u64_at(24),
                args: args(),
                ret_data: u32::from_le_bytes(buf[80..84].try_into().expect("4 bytes")),
            },
            _ => SyscallInfo::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig: i64, rax: i64) -> Regs {
        Regs {
            orig_rax: orig as u64,
            rax: rax as u64,
            rip: 0x1002,
            ..Regs::default()
        }
    }

    #[test]
    fn classification_and_rewrite() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let mut r = regs(0, code);
            assert_eq!(interrupted_syscall(&r), Restart::Rewind { nr: 0, code });
            prepare_for_resume(&mut r);
            assert_eq!((r.rip, r.rax, r.orig_rax), (0x1000, 0, u64::MAX));
        }
        let mut r = regs(35, ERESTART_RESTARTBLOCK);
        assert_eq!(interrupted_syscall(&r), Restart::Eintr { nr: 35 });
        prepare_for_resume(&mut r);
        assert_eq!((r.rip, r.rax as i64, r.orig_rax), (0x1002, EINTR, u64::MAX));
        let mut r = regs(-1, 7);
        assert_eq!(prepare_for_resume(&mut r), Restart::NotInSyscall);
        assert_eq!((r.rip, r.rax), (0x1002, 7));
        let mut r = regs(202, EINTR);
        assert_eq!(
            prepare_for_resume(&mut r),
            Restart::Done {
                nr: 202,
                ret: EINTR
            }
        );
        assert_eq!((r.rip, r.rax as i64, r.orig_rax), (0x1002, EINTR, u64::MAX));
    }

    #[test]
    fn xmm_sets_sse_bit() {
        let mut x = Xstate::from_bytes(vec![0; 832]).unwrap();
        x.set_xmm(3, [7; 16]);
        assert_eq!(x.xmm(3), [7; 16]);
        assert_eq!(x.xstate_bv(), 2);
        assert!(x.validate(0b111).is_ok());
        assert!(x.validate(0b1).is_err());
        assert!(Xstate::from_bytes(vec![0; 100]).is_err());
    }
}
