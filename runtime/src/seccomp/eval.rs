//! A small interpreter for the classic-BPF subset our seccomp filters use.
//!
//! [`SeccompProgram::compile`](super::SeccompProgram::compile) runs it to find
//! which filters would block the `seccomp(2)` calls that install the later
//! filters (see `order_for_install`), and
//! [`SeccompProgram::evaluate`](super::SeccompProgram::evaluate) runs it to
//! tell what the kernel will do with a given syscall. It understands exactly
//! the instructions seccompiler and this module emit; anything else makes it
//! give up (`None`), and callers then assume the worst.

use libc::sock_filter;

/// Words (u32) of `struct seccomp_data`: nr, arch, instruction_pointer (2),
/// args[6] (2 each, low word first on little-endian x86_64).
pub(super) const DATA_WORDS: usize = 16;

/// Byte offset of `seccomp_data.args[i]`'s low word.
pub(super) const fn arg_offset(i: usize) -> usize {
    16 + 8 * i
}

/// `struct seccomp_data` as 16 native-endian words.
pub(super) fn seccomp_data(nr: i64, arch: u32, args: [u64; 6]) -> [u32; DATA_WORDS] {
    let mut words = [0u32; DATA_WORDS];
    // The kernel passes the syscall number as an `int`: truncation is the point.
    words[0] = nr as u32;
    words[1] = arch;
    for (i, arg) in args.iter().enumerate() {
        words[arg_offset(i) / 4] = *arg as u32;
        words[arg_offset(i) / 4 + 1] = (*arg >> 32) as u32;
    }
    words
}

/// The result of running one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    /// The filter's return value (`SECCOMP_RET_*` | data).
    pub ret: u32,
    /// Bit `i` set: the run loaded word `i` of `seccomp_data`.
    pub words_read: u16,
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JMP_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JMP_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JMP_JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JMP_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JMP_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Runs `prog` on `data` as the kernel would; `None` if the program does
/// something this interpreter does not model (or is malformed).
pub(super) fn run(prog: &[sock_filter], data: &[u32; DATA_WORDS]) -> Option<Run> {
    let mut acc: u32 = 0;
    let mut pc: usize = 0;
    let mut words_read: u16 = 0;
    loop {
        let insn = prog.get(pc)?;
        pc += 1;
        let k = insn.k;
        let jump = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            LD_W_ABS => {
                let offset = usize::try_from(k).ok()?;
                if offset % 4 != 0 || offset / 4 >= DATA_WORDS {
                    return None;
                }
                acc = data[offset / 4];
                words_read |= 1 << (offset / 4);
            }
            ALU_AND_K => acc &= k,
            JMP_JA => pc = pc.checked_add(usize::try_from(k).ok()?)?,
            JMP_JEQ_K => pc += jump(acc == k),
            JMP_JGT_K => pc += jump(acc > k),
            JMP_JGE_K => pc += jump(acc >= k),
            JMP_JSET_K => pc += jump(acc & k != 0),
            RET_K => return Some(Run { ret: k, words_read }),
            _ => return None,
        }
    }
}
