//! The batch gadget: a few pages mapped into the target that run a table of
//! syscalls in one `PTRACE_CONT` (DESIGN "Snapshot", restore).
//!
//! # Layout (from the base address, every part page-aligned)
//!
//! ```text
//! +0                  code page, r-x: the loop below
//! +4096               table, rw-: `entries` entries of 72 bytes
//!                         { nr, a0, a1, a2, a3, a4, a5, result, flags } (u64 each)
//! +4096+table         data, rw-: pointer arguments (paths, structs, iovecs),
//!                         bump-allocated by Gadget::data, reset per batch
//! +...                stacks, rw-: one of `stack_size` bytes per thread that
//!                         runs the gadget (the code itself never pushes)
//! ```
//!
//! # Code
//!
//! Entry: `rbx` = first table entry, `r12` = number of entries; signals
//! blocked except `SIGTRAP`; `orig_rax` = -1. It only reads and writes the
//! table, so it keeps working when everything else is unmapped.
//!
//! ```text
//! 00: 4d 85 e4           loop:  test r12, r12          ; entries left?
//! 03: 74 3b                     jz   done
//! 05: 48 8b 03                  mov  rax, [rbx]        ; nr
//! 08: 48 8b 7b 08               mov  rdi, [rbx+8]      ; a0
//! 0c: 48 8b 73 10               mov  rsi, [rbx+16]     ; a1
//! 10: 48 8b 53 18               mov  rdx, [rbx+24]     ; a2
//! 14: 4c 8b 53 20               mov  r10, [rbx+32]     ; a3
//! 18: 4c 8b 43 28               mov  r8,  [rbx+40]     ; a4
//! 1c: 4c 8b 4b 30               mov  r9,  [rbx+48]     ; a5
//! 20: 0f 05                     syscall                ; clobbers rcx, r11
//! 22: 48 89 43 38               mov  [rbx+56], rax     ; result
//! 26: 48 3d 01 f0 ff ff         cmp  rax, -4095        ; -4095..-1 is an error
//! 2c: 72 09                     jb   next              ; unsigned below: success
//! 2e: f6 43 40 01               test byte [rbx+64], 1  ; flags: may fail?
//! 32: 75 03                     jnz  next
//! 34: cc                 fail:  int3                   ; stop: rbx = failed entry
//! 35: eb fd                     jmp  fail              ; (never resumed past)
//! 37: 48 83 c3 48        next:  add  rbx, 72           ; next entry
//! 3b: 49 ff cc                  dec  r12
//! 3e: eb c0                     jmp  loop
//! 40: cc                 done:  int3                   ; stop: all ran
//! 41: eb fd                     jmp  done
//! 43: 0f 05            single:  syscall                ; for lone injections
//! 45: cc                        int3                   ;   (e.g. the final munmap)
//! 46: eb fb                     jmp  single
//! ```

use super::error::PtraceError;
use super::inject::{Drive, InjectMode};
use super::procfs::MapEntry;
use super::regs::{EFLAGS_DF, EFLAGS_TF};
use super::stop::Stop;
use super::sys::PTRACE_CONT;
use super::tracer::TraceCtx;
use super::{Tid, mem};

/// The gadget's machine code (see the module documentation).
const CODE: [u8; 0x48] = [
    0x4d, 0x85, 0xe4, // 00 test r12, r12
    0x74, 0x3b, // 03 jz done
    0x48, 0x8b, 0x03, // 05 mov rax, [rbx]
    0x48, 0x8b, 0x7b, 0x08, // 08 mov rdi, [rbx+8]
    0x48, 0x8b, 0x73, 0x10, // 0c mov rsi, [rbx+16]
    0x48, 0x8b, 0x53, 0x18, // 10 mov rdx, [rbx+24]
    0x4c, 0x8b, 0x53, 0x20, // 14 mov r10, [rbx+32]
    0x4c, 0x8b, 0x43, 0x28, // 18 mov r8, [rbx+40]
    0x4c, 0x8b, 0x4b, 0x30, // 1c mov r9, [rbx+48]
    0x0f, 0x05, // 20 syscall
    0x48, 0x89, 0x43, 0x38, // 22 mov [rbx+56], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // 26 cmp rax, -4095
    0x72, 0x09, // 2c jb next
    0xf6, 0x43, 0x40, 0x01, // 2e test byte [rbx+64], 1
    0x75, 0x03, // 32 jnz next
    0xcc, // 34 fail: int3
    0xeb, 0xfd, // 35 jmp fail
    0x48, 0x83, 0xc3, 0x48, // 37 next: add rbx, 72
    0x49, 0xff, 0xcc, // 3b dec r12
    0xeb, 0xc0, // 3e jmp loop
    0xcc, // 40 done: int3
    0xeb, 0xfd, // 41 jmp done
    0x0f, 0x05, // 43 single: syscall
    0xcc, // 45 int3
    0xeb, 0xfb, // 46 jmp single
];
const FAIL_TRAP: u64 = 0x34;
const DONE_TRAP: u64 = 0x40;
const SINGLE_SYSCALL: u64 = 0x43;

const PAGE: u64 = 4096;

/// Bytes per table entry: `{nr, a0..a5, result, flags}`, nine u64.
pub const ENTRY_SIZE: u64 = 72;
const RESULT_OFF: usize = 56;
const FLAG_MAY_FAIL: u64 = 1;

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Sizes of a gadget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GadgetConfig {
    /// Table entries per `PTRACE_CONT`; longer batches run in several.
    pub entries: usize,
    /// Bytes of the data area.
    pub data_size: usize,
    /// Threads that may run the gadget (each gets its own stack).
    pub stacks: usize,
    /// Bytes per stack.
    pub stack_size: usize,
}

impl Default for GadgetConfig {
    /// 1024 entries (18 pages), 64 KiB of data, 8 stacks of 4 KiB: 43
    /// pages.
    fn default() -> GadgetConfig {
        GadgetConfig {
            entries: 1024,
            data_size: 64 * 1024,
            stacks: 8,
            stack_size: 4096,
        }
    }
}

impl GadgetConfig {
    /// Where everything lies for a gadget at `base`.
    pub fn layout(&self, base: u64) -> GadgetLayout {
        let table = base + PAGE;
        let data = table + page_up(self.entries as u64 * ENTRY_SIZE);
        let data_size = page_up(self.data_size as u64);
        let stacks = data + data_size;
        let stack_size = page_up(self.stack_size.max(1) as u64);
        let end = stacks + stack_size * self.stacks.max(1) as u64;
        GadgetLayout {
            base,
            size: end - base,
            code: base,
            table,
            entries: self.entries,
            data,
            data_size,
            stacks,
            stack_size,
            n_stacks: self.stacks.max(1),
        }
    }

    /// Total bytes of the region.
    pub fn size(&self) -> u64 {
        self.layout(0).size
    }
}

/// Addresses of a gadget's parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GadgetLayout {
    /// Start of the region.
    pub base: u64,
    /// Bytes of the region.
    pub size: u64,
    /// The code page.
    pub code: u64,
    /// The table.
    pub table: u64,
    /// Its capacity in entries.
    pub entries: usize,
    /// The data area.
    pub data: u64,
    /// Its size.
    pub data_size: u64,
    /// The first stack (lowest address).
    pub stacks: u64,
    /// Bytes per stack.
    pub stack_size: u64,
    /// Number of stacks.
    pub n_stacks: usize,
}

impl GadgetLayout {
    /// The address of the lone `syscall; int3` in the code page, usable
    /// with [`TraceCtx::syscall_at`] when the vDSO is not where it was.
    pub fn syscall_insn(&self) -> u64 {
        self.code + SINGLE_SYSCALL
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        self.base <= addr && addr < self.base + self.size
    }

    fn stack_top(&self, slot: usize) -> u64 {
        self.stacks + self.stack_size * (slot as u64 + 1) - 64
    }
}

/// One syscall of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The syscall number.
    pub nr: i64,
    /// Its six arguments (pointers into the gadget's data area come from
    /// [`Gadget::data`]).
    pub args: [u64; 6],
    /// Whether an error result is acceptable (the batch goes on); otherwise
    /// the batch stops at this entry.
    pub may_fail: bool,
}

impl Entry {
    /// A syscall that must succeed.
    pub const fn new(nr: i64, args: [u64; 6]) -> Entry {
        Entry {
            nr,
            args,
            may_fail: false,
        }
    }

    /// The same syscall, allowed to fail.
    pub const fn may_fail(self) -> Entry {
        Entry {
            may_fail: true,
            ..self
        }
    }
}

/// The first entry of a batch that failed without being marked
/// [`Entry::may_fail`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("batch entry {index} (syscall {}) failed: {}", entry.nr, nix::errno::Errno::from_raw(*errno))]
pub struct BatchError {
    /// Its index in the batch.
    pub index: usize,
    /// Its errno (positive).
    pub errno: i32,
    /// The entry.
    pub entry: Entry,
    /// Results of the entries before it (which did run: close what they
    /// opened).
    pub completed: Vec<i64>,
}

/// Failures of the gadget.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GadgetError {
    /// An entry failed; the batch stopped there.
    #[error(transparent)]
    Failed(#[from] BatchError),
    /// The thread exited or was killed during the batch (an `exit` entry
    /// does that on purpose).
    #[error("the thread is gone during the batch: {stop:?}")]
    Exited {
        /// [`Stop::Exited`] or [`Stop::Killed`].
        stop: Box<Stop>,
    },
    /// The data area is full.
    #[error("gadget data area full: {used} + {want} bytes > {size}")]
    DataFull {
        /// Bytes used.
        used: usize,
        /// Bytes asked for.
        want: usize,
        /// The area's size.
        size: usize,
    },
    /// More threads than stacks.
    #[error("no free gadget stack for tid {tid} (all {stacks} in use; see Gadget::release_thread)")]
    NoStack {
        /// The thread.
        tid: Tid,
        /// How many stacks there are.
        stacks: usize,
    },
    /// Mapping the region failed.
    #[error("mapping the gadget at {at:#x}+{size:#x}: {errno}")]
    Map {
        /// Where.
        at: u64,
        /// How much.
        size: u64,
        /// Why (`EEXIST`: something is mapped there).
        errno: nix::errno::Errno,
    },
    /// A ptrace or memory operation failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
}

/// A gadget mapped into one process. Plain data: it holds no ptrace state,
/// every operation takes the [`TraceCtx`]. Dropping it leaves the mapping
/// in place ([`Gadget::remove`] unmaps it).
#[derive(Debug)]
pub struct Gadget {
    pid: Tid,
    layout: GadgetLayout,
    data: Vec<u8>,
    stacks: Vec<Option<Tid>>,
}

fn check(r: i64, what: &str) -> Result<u64, PtraceError> {
    if (-4095..0).contains(&r) {
        return Err(PtraceError::Sys {
            what: what.to_string(),
            errno: nix::errno::Errno::from_raw(-r as i32),
        });
    }
    Ok(r as u64)
}

impl Gadget {
    /// Maps a gadget at `at` (page-aligned, free: the mapping uses
    /// `MAP_FIXED_NOREPLACE`) into the process of the stopped thread `tid`,
    /// through syscalls injected via its vDSO: one `mmap`, the code written
    /// with `process_vm_writev`, one `mprotect` making the code page r-x,
    /// and a `PR_SET_VMA_ANON_NAME` naming the region `[anon:sprout-gadget]`
    /// (where the kernel supports it).
    pub fn install(
        ctx: &mut TraceCtx,
        tid: Tid,
        at: u64,
        config: GadgetConfig,
    ) -> Result<Gadget, GadgetError> {
        if !at.is_multiple_of(PAGE) || config.entries == 0 {
            return Err(PtraceError::Invalid(format!(
                "gadget at {at:#x} with {} entries: need a page-aligned address and entries > 0",
                config.entries
            ))
            .into());
        }
        let pid = ctx.tgid(tid)?;
        let layout = config.layout(at);
        let size = layout.size;
        let r = ctx.syscall(
            tid,
            libc::SYS_mmap,
            [
                at,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
                u64::MAX,
                0,
            ],
        )?;
        if (-4095..0).contains(&r) {
            return Err(GadgetError::Map {
                at,
                size,
                errno: nix::errno::Errno::from_raw(-r as i32),
            });
        }
        let gadget = Gadget {
            pid,
            layout,
            data: Vec::new(),
            stacks: vec![None; layout.n_stacks],
        };
        if r as u64 != at {
            // A kernel without MAP_FIXED_NOREPLACE treats it as a hint.
            let _ = ctx.syscall(tid, libc::SYS_munmap, [r as u64, size, 0, 0, 0, 0]);
            return Err(GadgetError::Map {
                at,
                size,
                errno: nix::errno::Errno::EEXIST,
            });
        }
        let setup = (|| -> Result<(), PtraceError> {
            let name = b"sprout-gadget\0";
            mem::write_ranges(pid, &[(layout.code, &CODE[..]), (layout.data, &name[..])])?;
            check(
                ctx.syscall(
                    tid,
                    libc::SYS_mprotect,
                    [
                        layout.code,
                        PAGE,
                        (libc::PROT_READ | libc::PROT_EXEC) as u64,
                        0,
                        0,
                        0,
                    ],
                )?,
                "injected mprotect of the gadget's code page",
            )?;
            // PR_SET_VMA, PR_SET_VMA_ANON_NAME: a name for debugging and for
            // the dumper to recognise; optional (CONFIG_ANON_VMA_NAME).
            let _ = ctx.syscall(
                tid,
                libc::SYS_prctl,
                [0x53564d41, 0, layout.base, size, layout.data, 0],
            )?;
            Ok(())
        })();
        if let Err(e) = setup {
            let _ = ctx.syscall(tid, libc::SYS_munmap, [at, size, 0, 0, 0, 0]);
            return Err(e.into());
        }
        Ok(gadget)
    }

    /// The same gadget in a process forked from this one (its memory, so
    /// the gadget, is a copy at the same address).
    pub fn for_child(&self, child_pid: Tid) -> Gadget {
        Gadget {
            pid: child_pid,
            layout: self.layout,
            data: Vec::new(),
            stacks: vec![None; self.layout.n_stacks],
        }
    }

    /// The process it is mapped in.
    pub fn pid(&self) -> Tid {
        self.pid
    }

    /// Its addresses.
    pub fn layout(&self) -> &GadgetLayout {
        &self.layout
    }

    /// Copies `bytes` into the data area for the next [`Gadget::run`] and
    /// returns their address in the target (16-byte aligned). The area is
    /// written to the target by `run` and reset after it; the bytes stay in
    /// the target (readable with [`Gadget::read`], e.g. a buffer a syscall
    /// filled) until the next run overwrites them.
    pub fn data(&mut self, bytes: &[u8]) -> Result<u64, GadgetError> {
        let off = self.data.len().next_multiple_of(16);
        let size = self.layout.data_size as usize;
        if off + bytes.len() > size {
            return Err(GadgetError::DataFull {
                used: off,
                want: bytes.len(),
                size,
            });
        }
        self.data.resize(off, 0);
        self.data.extend_from_slice(bytes);
        Ok(self.layout.data + off as u64)
    }

    /// Reserves `len` zeroed bytes of the data area (an output buffer).
    pub fn data_zeroed(&mut self, len: usize) -> Result<u64, GadgetError> {
        self.data(&vec![0; len])
    }

    /// Bytes of the data area used for the next run.
    pub fn data_used(&self) -> usize {
        self.data.len()
    }

    /// Reads target memory (e.g. an output buffer in the data area).
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, GadgetError> {
        Ok(mem::read_vec(self.pid, addr, len)?)
    }

    /// Frees the stack of `tid` (a thread that exited or will not run the
    /// gadget again).
    pub fn release_thread(&mut self, tid: Tid) {
        for s in self.stacks.iter_mut() {
            if *s == Some(tid) {
                *s = None;
            }
        }
    }

    fn stack_for(&mut self, tid: Tid) -> Result<usize, GadgetError> {
        if let Some(i) = self.stacks.iter().position(|s| *s == Some(tid)) {
            return Ok(i);
        }
        match self.stacks.iter().position(|s| s.is_none()) {
            Some(i) => {
                self.stacks[i] = Some(tid);
                Ok(i)
            }
            None => Err(GadgetError::NoStack {
                tid,
                stacks: self.stacks.len(),
            }),
        }
    }

    /// Runs `entries` in the stopped thread `tid` of the gadget's process
    /// and returns every result (raw: `-errno` for failures of entries that
    /// may fail). One `PTRACE_CONT` per `entries` table capacity.
    ///
    /// The thread's registers and signal mask are saved and restored; while
    /// it runs it uses its own gadget stack, and every signal but `SIGTRAP`
    /// is blocked (restore-pitfalls §1.6). Signals and clone events that
    /// arrive meanwhile are set aside ([`TraceCtx::take_events`]; a thread
    /// created by an injected `clone` stops before running and must get its
    /// registers before it is resumed). The data area is reset afterwards,
    /// also on failure.
    pub fn run(
        &mut self,
        ctx: &mut TraceCtx,
        tid: Tid,
        entries: &[Entry],
    ) -> Result<Vec<i64>, GadgetError> {
        let data = std::mem::take(&mut self.data);
        let r = self.run_inner(ctx, tid, entries, &data);
        if let Err(GadgetError::Exited { .. }) = r {
            self.release_thread(tid);
        }
        r
    }

    fn run_inner(
        &mut self,
        ctx: &mut TraceCtx,
        tid: Tid,
        entries: &[Entry],
        data: &[u8],
    ) -> Result<Vec<i64>, GadgetError> {
        let tgid = ctx.tgid(tid)?;
        if tgid != self.pid {
            return Err(PtraceError::Invalid(format!(
                "tid {tid} belongs to pid {tgid}, the gadget to pid {}",
                self.pid
            ))
            .into());
        }
        let slot = self.stack_for(tid)?;
        if !data.is_empty() {
            mem::write_mem(self.pid, self.layout.data, data)?;
        }
        let (saved, saved_mask) = ctx.begin_injection(tid)?;
        let mut results = Vec::with_capacity(entries.len());
        let r = (|| -> Result<(), GadgetError> {
            for (ci, chunk) in entries.chunks(self.layout.entries).enumerate() {
                let mut table = Vec::with_capacity(chunk.len() * ENTRY_SIZE as usize);
                for e in chunk {
                    table.extend_from_slice(&(e.nr as u64).to_le_bytes());
                    for a in e.args {
                        table.extend_from_slice(&a.to_le_bytes());
                    }
                    table.extend_from_slice(&0u64.to_le_bytes());
                    let flags = if e.may_fail { FLAG_MAY_FAIL } else { 0 };
                    table.extend_from_slice(&flags.to_le_bytes());
                }
                mem::write_mem(self.pid, self.layout.table, &table)?;
                let mut regs = saved;
                regs.rip = self.layout.code;
                regs.rsp = self.layout.stack_top(slot);
                regs.rbx = self.layout.table;
                regs.r12 = chunk.len() as u64;
                regs.rax = 0;
                regs.orig_rax = u64::MAX;
                regs.eflags &= !(EFLAGS_TF | EFLAGS_DF);
                ctx.set_regs(tid, &regs)?;
                let (fail, done) = (
                    self.layout.code + FAIL_TRAP + 1,
                    self.layout.code + DONE_TRAP + 1,
                );
                let table_base = self.layout.table;
                let outcome =
                    ctx.drive(tid, PTRACE_CONT, "gadget run", |ctx, stop| match stop {
                        Stop::Signal(info) if info.signo() == libc::SIGTRAP => {
                            let r = ctx.get_regs(tid)?;
                            if r.rip == done {
                                Ok(Drive::Done(Ok(None)))
                            } else if r.rip == fail {
                                Ok(Drive::Done(Ok(Some(
                                    ((r.rbx - table_base) / ENTRY_SIZE) as usize,
                                ))))
                            } else {
                                Ok(Drive::Default)
                            }
                        }
                        Stop::Exited { .. } | Stop::Killed { .. } => Ok(Drive::Done(Err(*stop))),
                        // On its way out (PTRACE_O_TRACEEXIT): let it go.
                        Stop::Exit { .. } => Ok(Drive::Resume),
                        _ => Ok(Drive::Default),
                    })?;
                let failed_at = match outcome {
                    Ok(f) => f,
                    Err(stop) => {
                        return Err(GadgetError::Exited {
                            stop: Box::new(stop),
                        });
                    }
                };
                let ran = failed_at.map_or(chunk.len(), |i| i + 1);
                let raw = mem::read_vec(self.pid, self.layout.table, ran * ENTRY_SIZE as usize)?;
                results.extend(raw.chunks_exact(ENTRY_SIZE as usize).map(|e| {
                    i64::from_le_bytes(e[RESULT_OFF..RESULT_OFF + 8].try_into().expect("8 bytes"))
                }));
                if let Some(i) = failed_at {
                    let index = ci * self.layout.entries + i;
                    let errno = -results.pop().expect("the failed entry's result");
                    return Err(BatchError {
                        index,
                        errno: errno as i32,
                        entry: entries[index],
                        completed: std::mem::take(&mut results),
                    }
                    .into());
                }
            }
            Ok(())
        })();
        // Put registers and mask back (a no-op when the thread is gone); the
        // batch's own error, if any, is the one to report.
        let restored = ctx.end_injection(tid, &saved, saved_mask, Ok(()));
        r?;
        restored?;
        Ok(results)
    }

    /// Unmaps the gadget with a `munmap` injected through its own `syscall`
    /// instruction in [`InjectMode::CatchExit`]: the result is caught at the
    /// syscall-exit stop, before the thread would return into the page that
    /// just went away (restore-pitfalls §9.2). The thread is left in that
    /// syscall-exit stop with its saved registers after
    /// [`super::prepare_for_resume`] (see [`InjectMode::CatchExit`]).
    pub fn remove(self, ctx: &mut TraceCtx, tid: Tid) -> Result<(), GadgetError> {
        let r = ctx.syscall_at(
            tid,
            self.layout.syscall_insn(),
            InjectMode::CatchExit,
            libc::SYS_munmap,
            [self.layout.base, self.layout.size, 0, 0, 0, 0],
        )?;
        check(r, "injected munmap of the gadget")?;
        Ok(())
    }
}

/// `s` with its terminating NUL, as a path or name passed to an injected
/// syscall.
pub fn cstring(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// The lowest page-aligned address ≥ 4 GiB (else ≥ 64 KiB) where `size`
/// bytes, plus a free page on each side, are unmapped in **both** layouts
/// (the stub's and the dumped one, restore-pitfalls §10.7).
pub fn find_hole(maps_a: &[MapEntry], maps_b: &[MapEntry], size: u64) -> Option<u64> {
    const TASK_SIZE: u64 = 0x7fff_ffff_f000;
    let size = page_up(size);
    let mut busy: Vec<(u64, u64)> = maps_a
        .iter()
        .chain(maps_b)
        .filter(|m| m.start < TASK_SIZE)
        .map(|m| (m.start.saturating_sub(PAGE), m.end.saturating_add(PAGE)))
        .collect();
    busy.sort_unstable();
    for floor in [1u64 << 32, 0x10000] {
        let mut cand = floor;
        for &(s, e) in &busy {
            if e <= cand {
                continue;
            }
            if s >= cand + size {
                break;
            }
            cand = page_up(e);
        }
        if cand + size <= TASK_SIZE {
            return Some(cand);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptrace::procfs::parse_maps;

    #[test]
    fn layout_is_page_aligned() {
        let l = GadgetConfig::default().layout(0x1000_0000);
        assert_eq!(l.table, 0x1000_1000);
        assert_eq!(l.data % PAGE, 0);
        assert_eq!(l.stacks % PAGE, 0);
        assert_eq!(l.size, 43 * PAGE);
        assert!(l.stack_top(7) < l.base + l.size);
        assert_eq!(CODE[SINGLE_SYSCALL as usize..][..2], [0x0f, 0x05]);
        assert_eq!(CODE[FAIL_TRAP as usize], 0xcc);
        assert_eq!(CODE[DONE_TRAP as usize], 0xcc);
    }

    #[test]
    fn hole_free_in_both() {
        let a = parse_maps(b"100000000-100010000 rw-p 00000000 00:00 0\n").unwrap();
        let b = parse_maps(b"100012000-100020000 rw-p 00000000 00:00 0\n").unwrap();
        assert_eq!(find_hole(&a, &b, 0x3000), Some(0x100021000));
        // The one-page gap between them has no free page on each side.
        assert_eq!(find_hole(&a, &b, 0x1000), Some(0x100021000));
        let empty: Vec<MapEntry> = Vec::new();
        assert_eq!(find_hole(&empty, &empty, 5000), Some(1 << 32));
    }
}
