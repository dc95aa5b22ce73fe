//! The rules of the format, checked on every manifest body before anything
//! uses it (and by the writer before it writes one).
//!
//! Counts are checked against [`limits`](super::limits) before the elements
//! are looked at; every sum and product of untrusted numbers is checked for
//! overflow.

use std::collections::{HashMap, HashSet};

use super::error::{ImageError, Result};
use super::fds::{FdObject, SockAddr, SocketFamily, SocketState, SocketType};
use super::host::{Host, VdsoAreaKind};
use super::limits::*;
use super::manifest::{ManifestBody, PagesIndex};
use super::memory::{Backing, PageRun, PageSpan, VmFlag};
use super::process::{PendingSignal, TimerNotify};
use super::thread::{SyscallRestart, Thread, USER_CS, USER_SS};
use crate::ptrace::{ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS};

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ImageError {
    ImageError::invalid(field, reason)
}

fn count(what: impl Into<String>, n: usize, max: usize) -> Result<()> {
    if n > max {
        Err(ImageError::limit(what, n as u64, max as u64))
    } else {
        Ok(())
    }
}

fn name(field: &str, s: &str, max: usize) -> Result<()> {
    count(format!("{field} length in bytes"), s.len(), max)?;
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// An absolute, normalized path: `/` or `/a/b`, no empty, `.` or `..`
/// component, no NUL, at most [`MAX_PATH_BYTES`].
pub(crate) fn path(field: &str, p: &str) -> Result<()> {
    count(format!("{field} length in bytes"), p.len(), MAX_PATH_BYTES)?;
    if p.contains('\0') {
        return Err(invalid(field, "path contains a NUL byte"));
    }
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    if p == "/" {
        return Ok(());
    }
    for c in p[1..].split('/') {
        match c {
            "" => return Err(invalid(field, format!("{p:?} has an empty component"))),
            "." | ".." => {
                return Err(invalid(field, format!("{p:?} has a {c:?} component")));
            }
            _ => {}
        }
    }
    Ok(())
}

fn user_addr(field: &str, v: u64) -> Result<()> {
    if v >= TASK_SIZE_MAX {
        return Err(invalid(
            field,
            format!("{v:#x} is not below the end of the user address space ({TASK_SIZE_MAX:#x})"),
        ));
    }
    Ok(())
}

fn aligned(field: &str, v: u64) -> Result<()> {
    if !v.is_multiple_of(PAGE_SIZE) {
        return Err(invalid(field, format!("{v:#x} is not page aligned")));
    }
    Ok(())
}

fn signal(field: &str, s: u8) -> Result<()> {
    if !(1..=MAX_SIGNAL).contains(&s) {
        return Err(invalid(
            field,
            format!("{s} is not a signal number (1..=64)"),
        ));
    }
    Ok(())
}

/// Checks a whole body.
pub(crate) fn body(b: &ManifestBody) -> Result<()> {
    name("producer", &b.producer, MAX_NAME_BYTES)?;
    host(&b.host)?;
    pages_index(&b.pages)?;
    count("threads", b.threads.len(), MAX_THREADS)?;
    count("vmas", b.vmas.len(), MAX_VMAS)?;
    count("files", b.files.len(), MAX_FILES)?;
    count("shared_memory", b.shared_memory.len(), MAX_SHARED_OBJECTS)?;
    count("fds", b.fds.len(), MAX_FDS)?;
    count("page runs", b.page_run_count(), MAX_PAGE_RUNS)?;
    count(
        "guard page spans",
        b.vmas.iter().map(|v| v.guard_pages.len()).sum(),
        MAX_PAGE_RUNS,
    )?;
    threads(&b.threads, &b.host)?;
    process(b)?;
    files(b)?;
    shared_memory(b)?;
    vmas(b)?;
    fds(b)?;
    stored_pages(b)
}

fn host(h: &Host) -> Result<()> {
    name("host.kernel_release", &h.kernel_release, MAX_NAME_BYTES)?;
    if h.kernel_release.is_empty() {
        return Err(invalid("host.kernel_release", "empty"));
    }
    if h.page_size != PAGE_SIZE {
        return Err(invalid(
            "host.page_size",
            format!(
                "{} (this format only has {PAGE_SIZE}-byte pages)",
                h.page_size
            ),
        ));
    }
    name("host.cpu.vendor", &h.cpu.vendor, MAX_NAME_BYTES)?;
    if h.cpu.xcr0 & 0b11 != 0b11 {
        return Err(invalid(
            "host.cpu.xcr0",
            format!(
                "{:#x}: x87 and SSE state must be enabled (XSAVE is required)",
                h.cpu.xcr0
            ),
        ));
    }
    let size = h.cpu.xstate_regset_size;
    if !(MIN_XSAVE_BYTES..=MAX_XSAVE_BYTES).contains(&size) {
        return Err(invalid(
            "host.cpu.xstate_regset_size",
            format!("{size} is outside {MIN_XSAVE_BYTES}..={MAX_XSAVE_BYTES}"),
        ));
    }
    if let Some(v) = &h.vdso {
        if let Some(id) = &v.build_id {
            count(
                "host.vdso.build_id length in bytes",
                id.0.len(),
                MAX_BUILD_ID_BYTES,
            )?;
        }
        count("host.vdso.areas", v.areas.len(), 3)?;
        let mut seen = HashSet::new();
        let mut next = 0u64;
        for (i, a) in v.areas.iter().enumerate() {
            let f = format!("host.vdso.areas[{i}]");
            if !seen.insert(a.kind) {
                return Err(invalid(f, format!("{} appears twice", a.kind.maps_name())));
            }
            if i == 0 && a.offset != 0 {
                return Err(invalid(f, "the first area must be at offset 0"));
            }
            if a.offset < next {
                return Err(invalid(f, "areas overlap or are out of order"));
            }
            aligned(&f, a.offset)?;
            aligned(&f, a.size)?;
            if a.size == 0 || a.size > 1 << 24 {
                return Err(invalid(
                    f,
                    format!("size {:#x} is not in 1 page..16 MiB", a.size),
                ));
            }
            next = a
                .offset
                .checked_add(a.size)
                .ok_or_else(|| invalid(&f, format!("offset {:#x} overflows", a.offset)))?;
        }
        if !seen.contains(&VdsoAreaKind::Vdso) {
            return Err(invalid("host.vdso.areas", "no [vdso] area"));
        }
    }
    Ok(())
}

fn pages_index(p: &PagesIndex) -> Result<()> {
    if p.file != PAGES_FILE {
        return Err(invalid(
            "pages.file",
            format!("{:?}: must be {PAGES_FILE:?}", p.file),
        ));
    }
    if p.size > MAX_PAGES_FILE_BYTES {
        return Err(ImageError::limit(
            "pages.size",
            p.size,
            MAX_PAGES_FILE_BYTES,
        ));
    }
    aligned("pages.size", p.size)?;
    chunking("pages", p.size, p.chunk_size, p.chunks.len())
}

/// The chunking of a checksummed file (`pages.img`, `working-set.img`) of
/// `size` bytes, its fields named `{prefix}.chunk_size` and
/// `{prefix}.chunks`: a chunk size that is a power of two within
/// [`MIN_CHUNK_BYTES`]..=[`MAX_CHUNK_BYTES`], at most [`MAX_CHUNKS`]
/// checksums, one per chunk.
pub(super) fn chunking(prefix: &str, size: u64, chunk_size: u64, chunks: usize) -> Result<()> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_size) {
        return Err(invalid(
            format!("{prefix}.chunk_size"),
            format!("{chunk_size} is not a power of two in {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}"),
        ));
    }
    count(format!("{prefix}.chunks"), chunks, MAX_CHUNKS)?;
    let want = size.div_ceil(chunk_size);
    if chunks as u64 != want {
        return Err(invalid(
            format!("{prefix}.chunks"),
            format!(
                "{chunks} checksums for {size} bytes in {chunk_size}-byte chunks (expected {want})"
            ),
        ));
    }
    Ok(())
}

fn pending(field: &str, list: &[PendingSignal]) -> Result<()> {
    count(field, list.len(), MAX_PENDING_SIGNALS)?;
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        signal(&format!("{f}.signo"), p.signo)?;
        if p.siginfo.len() != SIGINFO_BYTES {
            return Err(invalid(
                format!("{f}.siginfo"),
                format!("{} bytes, a siginfo_t has {SIGINFO_BYTES}", p.siginfo.len()),
            ));
        }
        let si_signo = i32::from_le_bytes(p.siginfo[..4].try_into().expect("4 bytes"));
        if si_signo != i32::from(p.signo) {
            return Err(invalid(
                format!("{f}.siginfo"),
                format!("si_signo {si_signo} differs from signo {}", p.signo),
            ));
        }
    }
    Ok(())
}

/// xstate components a restore cannot re-create on a fresh thread: AMX
/// tile config and data (pitfalls §2.4).
const XFEATURES_REFUSED: u64 = (1 << 17) | (1 << 18);

fn xsave(field: &str, x: &[u8], h: &Host) -> Result<()> {
    let want = h.cpu.xstate_regset_size as usize;
    if x.len() != want {
        return Err(invalid(
            field,
            format!("{} bytes, the image's host has {want}-byte xstate", x.len()),
        ));
    }
    let u64_at = |o: usize| u64::from_le_bytes(x[o..o + 8].try_into().expect("8 bytes"));
    let mxcsr = u32::from_le_bytes(x[24..28].try_into().expect("4 bytes"));
    if mxcsr & 0xffff_0000 != 0 {
        return Err(invalid(
            field,
            format!("MXCSR {mxcsr:#x} has reserved bits set"),
        ));
    }
    let xstate_bv = u64_at(512);
    if xstate_bv & !h.cpu.xcr0 != 0 {
        return Err(invalid(
            field,
            format!(
                "xstate_bv {xstate_bv:#x} has components outside XCR0 {:#x}",
                h.cpu.xcr0
            ),
        ));
    }
    if xstate_bv & XFEATURES_REFUSED != 0 {
        return Err(invalid(field, "AMX tile state cannot be restored"));
    }
    if u64_at(520) != 0 {
        return Err(invalid(field, "xcomp_bv must be 0 (standard format)"));
    }
    if x[528..576].iter().any(|&b| b != 0) {
        return Err(invalid(field, "reserved header bytes must be 0"));
    }
    Ok(())
}

fn thread(f: &str, t: &Thread, h: &Host) -> Result<()> {
    if t.tid <= 0 {
        return Err(invalid(
            format!("{f}.tid"),
            format!("{} is not a tid", t.tid),
        ));
    }
    name(&format!("{f}.comm"), &t.comm, MAX_COMM_BYTES)?;
    let r = &t.regs;
    if r.cs != USER_CS {
        return Err(invalid(
            format!("{f}.regs.cs"),
            format!(
                "{:#x}: only 64-bit user code ({USER_CS:#x}) can be restored",
                r.cs
            ),
        ));
    }
    if r.ss != USER_SS {
        return Err(invalid(
            format!("{f}.regs.ss"),
            format!("{:#x}, expected {USER_SS:#x}", r.ss),
        ));
    }
    user_addr(&format!("{f}.regs.rip"), r.rip)?;
    user_addr(&format!("{f}.regs.fs_base"), r.fs_base)?;
    user_addr(&format!("{f}.regs.gs_base"), r.gs_base)?;
    xsave(&format!("{f}.xsave"), &t.xsave, h)?;
    pending(&format!("{f}.pending"), &t.pending)?;
    if let Some(s) = &t.sigaltstack {
        const SS_ONSTACK: u32 = 1;
        const SS_AUTODISARM: u32 = 1 << 31;
        if s.flags & !(SS_ONSTACK | SS_AUTODISARM) != 0 {
            return Err(invalid(
                format!("{f}.sigaltstack.flags"),
                format!("{:#x}", s.flags),
            ));
        }
        if s.size < 2048 {
            return Err(invalid(
                format!("{f}.sigaltstack.size"),
                "below MINSIGSTKSZ (2048)",
            ));
        }
        match s.sp.checked_add(s.size) {
            Some(end) if end <= TASK_SIZE_MAX => {}
            _ => {
                return Err(invalid(
                    format!("{f}.sigaltstack"),
                    "stack does not lie in the user address space",
                ));
            }
        }
    }
    if let Some(r) = &t.rseq {
        if !r.ptr.is_multiple_of(32) {
            return Err(invalid(
                format!("{f}.rseq.ptr"),
                format!("{:#x} is not 32-byte aligned", r.ptr),
            ));
        }
        if !(32..=1024).contains(&r.len) {
            return Err(invalid(
                format!("{f}.rseq.len"),
                format!("{} is outside 32..=1024", r.len),
            ));
        }
        user_addr(
            &format!("{f}.rseq.ptr"),
            r.ptr.saturating_add(u64::from(r.len)),
        )?;
    }
    if let Some(l) = &t.robust_list {
        if l.len != 24 {
            return Err(invalid(
                format!("{f}.robust_list.len"),
                format!("{}, expected 24", l.len),
            ));
        }
        user_addr(&format!("{f}.robust_list.head"), l.head)?;
    }
    user_addr(&format!("{f}.clear_child_tid"), t.clear_child_tid)?;
    let syscall_nr = |nr: u64| -> Result<()> {
        if nr >= 1024 {
            return Err(invalid(
                format!("{f}.syscall.nr"),
                format!("{nr} is not an x86_64 syscall"),
            ));
        }
        if r.orig_rax != nr {
            return Err(invalid(
                format!("{f}.regs.orig_rax"),
                format!(
                    "{:#x} differs from the interrupted syscall {nr}",
                    r.orig_rax
                ),
            ));
        }
        Ok(())
    };
    match t.syscall {
        SyscallRestart::NotInSyscall => {}
        SyscallRestart::Restart { nr, code } => {
            syscall_nr(nr)?;
            if let Some(c) = code
                && ![ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND].contains(&c)
            {
                return Err(invalid(
                    format!("{f}.syscall.code"),
                    format!("{c}: not -ERESTARTSYS, -ERESTARTNOINTR or -ERESTARTNOHAND"),
                ));
            }
            if r.rax != nr {
                return Err(invalid(
                    format!("{f}.regs.rax"),
                    format!(
                        "{:#x}: a restarted syscall must have rax = nr ({nr})",
                        r.rax
                    ),
                ));
            }
        }
        SyscallRestart::Eintr { nr } => {
            syscall_nr(nr)?;
            if r.rax != (-libc::EINTR) as i64 as u64 {
                return Err(invalid(
                    format!("{f}.regs.rax"),
                    format!("{:#x}: an interrupted syscall must return -EINTR", r.rax),
                ));
            }
        }
    }
    Ok(())
}

fn threads(list: &[Thread], h: &Host) -> Result<()> {
    if list.is_empty() {
        return Err(invalid("threads", "an image has at least one thread"));
    }
    let mut tids = HashSet::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let f = format!("threads[{i}]");
        thread(&f, t, h)?;
        if !tids.insert(t.tid) {
            return Err(invalid(
                format!("{f}.tid"),
                format!("tid {} appears twice", t.tid),
            ));
        }
    }
    Ok(())
}

fn process(b: &ManifestBody) -> Result<()> {
    let p = &b.process;
    if p.pid <= 0 || p.pid != b.threads[0].tid {
        return Err(invalid(
            "process.pid",
            format!(
                "{} is not the first thread's tid ({})",
                p.pid, b.threads[0].tid
            ),
        ));
    }
    if p.umask > 0o777 {
        return Err(invalid("process.umask", format!("{:#o}", p.umask)));
    }
    path("process.cwd", &p.cwd)?;
    path("process.exe", &p.exe)?;
    count(
        "process.credentials.groups",
        p.credentials.groups.len(),
        MAX_GROUPS,
    )?;
    count("process.rlimits", p.rlimits.len(), 16)?;
    let mut seen = HashSet::new();
    for (i, r) in p.rlimits.iter().enumerate() {
        if !seen.insert(r.resource) {
            return Err(invalid(
                format!("process.rlimits[{i}]"),
                format!("{:?} appears twice", r.resource),
            ));
        }
        if r.soft > r.hard {
            return Err(invalid(
                format!("process.rlimits[{i}]"),
                "soft limit above hard limit",
            ));
        }
    }
    let m = &p.mm;
    for (n, v) in [
        ("start_code", m.start_code),
        ("end_code", m.end_code),
        ("start_data", m.start_data),
        ("end_data", m.end_data),
        ("start_brk", m.start_brk),
        ("brk", m.brk),
        ("start_stack", m.start_stack),
        ("arg_start", m.arg_start),
        ("arg_end", m.arg_end),
        ("env_start", m.env_start),
        ("env_end", m.env_end),
    ] {
        if !(MIN_MAP_ADDR..TASK_SIZE_MAX).contains(&v) {
            return Err(invalid(
                format!("process.mm.{n}"),
                format!("{v:#x} is outside [{MIN_MAP_ADDR:#x}, {TASK_SIZE_MAX:#x})"),
            ));
        }
    }
    for (n, ok) in [
        ("end_code", m.start_code < m.end_code),
        ("end_data", m.start_data <= m.end_data),
        ("brk", m.start_brk <= m.brk),
        ("arg_end", m.arg_start <= m.arg_end),
        ("env_end", m.env_start <= m.env_end),
    ] {
        if !ok {
            return Err(invalid(format!("process.mm.{n}"), "below its start"));
        }
    }
    count("process.mm.auxv words", m.auxv.len(), MAX_AUXV_WORDS)?;
    if m.auxv.len() < 2 || !m.auxv.len().is_multiple_of(2) || m.auxv[m.auxv.len() - 2..] != [0, 0] {
        return Err(invalid(
            "process.mm.auxv",
            "expected (type, value) pairs ending with the AT_NULL pair",
        ));
    }
    count(
        "process.sigactions",
        p.sigactions.len(),
        MAX_SIGNAL as usize,
    )?;
    let mut sigs = HashSet::new();
    for (i, a) in p.sigactions.iter().enumerate() {
        let f = format!("process.sigactions[{i}].signal");
        signal(&f, a.signal)?;
        if a.signal == libc::SIGKILL as u8 || a.signal == libc::SIGSTOP as u8 {
            return Err(invalid(f, "SIGKILL and SIGSTOP have no handlers"));
        }
        if !sigs.insert(a.signal) {
            return Err(invalid(f, format!("signal {} appears twice", a.signal)));
        }
    }
    pending("process.pending", &p.pending)?;
    count(
        "process.posix_timers",
        p.posix_timers.len(),
        MAX_POSIX_TIMERS,
    )?;
    let tids: HashSet<i32> = b.threads.iter().map(|t| t.tid).collect();
    let mut ids = HashSet::new();
    for (i, t) in p.posix_timers.iter().enumerate() {
        let f = format!("process.posix_timers[{i}]");
        if t.id < 0 || !ids.insert(t.id) {
            return Err(invalid(
                format!("{f}.id"),
                format!("{} is negative or appears twice", t.id),
            ));
        }
        if ![0, 1, 2, 3, 7, 8, 9, 11].contains(&t.clock) {
            return Err(invalid(
                format!("{f}.clock"),
                format!("{} is not a timer clock", t.clock),
            ));
        }
        if t.overrun < 0 {
            return Err(invalid(format!("{f}.overrun"), "negative"));
        }
        match t.notify {
            TimerNotify::None => {}
            TimerNotify::Signal => signal(&format!("{f}.signo"), t.signo)?,
            TimerNotify::Thread { tid } => {
                signal(&format!("{f}.signo"), t.signo)?;
                if !tids.contains(&tid) {
                    return Err(invalid(
                        format!("{f}.notify.tid"),
                        format!("{tid} is no thread of the image"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn files(b: &ManifestBody) -> Result<()> {
    let mut paths = HashSet::with_capacity(b.files.len());
    for (i, file) in b.files.iter().enumerate() {
        let f = format!("files[{i}]");
        path(&format!("{f}.path"), &file.path)?;
        if !paths.insert(file.path.as_str()) {
            return Err(invalid(
                format!("{f}.path"),
                format!("{:?} appears twice", file.path),
            ));
        }
        if let Some(id) = &file.build_id {
            count(
                format!("{f}.build_id length in bytes"),
                id.0.len(),
                MAX_BUILD_ID_BYTES,
            )?;
        }
        // A restore hashes the rootfs's file of this size whole.
        if file.size > MAX_MAPPED_FILE_BYTES {
            return Err(invalid(
                format!("{f}.size"),
                format!("{} is more than {MAX_MAPPED_FILE_BYTES}", file.size),
            ));
        }
    }
    Ok(())
}

/// The pages the runs describe, all together, are bounded like the
/// pages file itself ([`MAX_PAGES_FILE_BYTES`]): runs may share stored
/// data (a writer may deduplicate), so without this a small crafted image
/// could describe 2^35 pages and make the restorer's per-page books (the
/// lazy loader's bitmap) gigabytes big.
fn stored_pages(b: &ManifestBody) -> Result<()> {
    let runs = b
        .vmas
        .iter()
        .flat_map(|v| v.pages.iter())
        .chain(b.shared_memory.iter().flat_map(|o| o.pages.iter()));
    let mut total = 0u64;
    for r in runs {
        total = total.saturating_add(r.count);
    }
    let max = MAX_PAGES_FILE_BYTES / PAGE_SIZE;
    if total > max {
        return Err(invalid(
            "pages",
            format!("the runs describe {total} pages; at most {max} are restored"),
        ));
    }
    Ok(())
}

/// Checks a list of page runs of an object `pages` pages long.
fn runs(field: &str, list: &[PageRun], pages: u64, file_size: u64) -> Result<()> {
    let mut next = 0u64;
    for (i, r) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if r.count == 0 {
            return Err(invalid(format!("{f}.count"), "a run has at least one page"));
        }
        let end = r
            .page
            .checked_add(r.count)
            .filter(|&e| e <= pages)
            .ok_or_else(|| {
                invalid(
                    &f,
                    format!(
                        "pages {}+{} lie outside the mapping's {pages} pages",
                        r.page, r.count
                    ),
                )
            })?;
        if r.page < next {
            return Err(invalid(&f, "runs overlap or are not sorted by page"));
        }
        next = end;
        aligned(&format!("{f}.offset"), r.offset)?;
        match r
            .count
            .checked_mul(PAGE_SIZE)
            .and_then(|len| r.offset.checked_add(len))
        {
            Some(e) if e <= file_size => {}
            _ => {
                return Err(invalid(
                    format!("{f}.offset"),
                    format!(
                        "{} pages at byte {} run past the end of pages.img ({file_size} bytes)",
                        r.count, r.offset
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks a VMA's guard-page spans: sorted, disjoint, inside the VMA, and
/// disjoint from its stored pages.
fn guards(f: &str, v: &super::memory::Vma) -> Result<()> {
    let field = format!("{f}.guard_pages");
    if v.guard_pages.is_empty() {
        return Ok(());
    }
    if matches!(
        v.backing,
        Backing::Vdso | Backing::Vvar | Backing::VvarVclock
    ) {
        return Err(invalid(
            field,
            "guard pages cannot be installed in this mapping",
        ));
    }
    let pages = v.page_count();
    let mut next = 0u64;
    let mut stored = v.pages.iter().peekable();
    for (i, &PageSpan { page, count }) in v.guard_pages.iter().enumerate() {
        let g = format!("{field}[{i}]");
        if count == 0 {
            return Err(invalid(
                format!("{g}.count"),
                "a span has at least one page",
            ));
        }
        let end = page
            .checked_add(count)
            .filter(|&e| e <= pages)
            .ok_or_else(|| {
                invalid(
                    &g,
                    format!("pages {page}+{count} lie outside the mapping's {pages} pages"),
                )
            })?;
        if page < next {
            return Err(invalid(&g, "spans overlap or are not sorted by page"));
        }
        next = end;
        while stored
            .next_if(|r| r.page.saturating_add(r.count) <= page)
            .is_some()
        {}
        if stored.peek().is_some_and(|r| r.page < end) {
            return Err(invalid(&g, "a guard page cannot also be a stored page"));
        }
    }
    Ok(())
}

fn shared_memory(b: &ManifestBody) -> Result<()> {
    for (i, o) in b.shared_memory.iter().enumerate() {
        let f = format!("shared_memory[{i}]");
        name(&format!("{f}.name"), &o.name, MAX_NAME_BYTES)?;
        aligned(&format!("{f}.size"), o.size)?;
        if o.size == 0 || o.size > TASK_SIZE_MAX {
            return Err(invalid(
                format!("{f}.size"),
                format!("{:#x} is out of range", o.size),
            ));
        }
        runs(
            &format!("{f}.pages"),
            &o.pages,
            o.size / PAGE_SIZE,
            b.pages.size,
        )?;
    }
    Ok(())
}

fn vmas(b: &ManifestBody) -> Result<()> {
    let mut prev_end = 0u64;
    let mut specials: HashMap<&'static str, usize> = HashMap::new();
    let mut vdso_family: Vec<(VdsoAreaKind, u64, u64)> = Vec::new();
    for (i, v) in b.vmas.iter().enumerate() {
        let f = format!("vmas[{i}]");
        aligned(&format!("{f}.start"), v.start)?;
        aligned(&format!("{f}.end"), v.end)?;
        if v.start >= v.end {
            return Err(invalid(
                &f,
                format!("start {:#x} is not below end {:#x}", v.start, v.end),
            ));
        }
        if v.start < MIN_MAP_ADDR || v.end > TASK_SIZE_MAX {
            return Err(invalid(
                &f,
                format!(
                    "{:#x}-{:#x} is outside the user address space [{MIN_MAP_ADDR:#x}, {TASK_SIZE_MAX:#x})",
                    v.start, v.end
                ),
            ));
        }
        if v.start < prev_end {
            return Err(invalid(
                &f,
                format!(
                    "{:#x}-{:#x} overlaps or precedes the previous VMA (ending {prev_end:#x})",
                    v.start, v.end
                ),
            ));
        }
        prev_end = v.end;
        let mut flags = HashSet::new();
        for fl in &v.flags {
            if !flags.insert(*fl) {
                return Err(invalid(
                    format!("{f}.flags"),
                    format!("{fl:?} appears twice"),
                ));
            }
        }
        let len = v.end - v.start;
        let mut may_store = !v.shared && !v.has(VmFlag::Droppable) && !v.has(VmFlag::WipeOnFork);
        let special =
            |k: &'static str, specials: &mut HashMap<&'static str, usize>| -> Result<()> {
                if let Some(j) = specials.insert(k, i) {
                    return Err(invalid(
                        &f,
                        format!("a second {k} (the first is vmas[{j}])"),
                    ));
                }
                Ok(())
            };
        match v.backing {
            Backing::Anonymous => {}
            Backing::Heap => special("[heap]", &mut specials)?,
            Backing::Stack => special("[stack]", &mut specials)?,
            Backing::File { file, offset } => {
                if file as usize >= b.files.len() {
                    return Err(invalid(
                        format!("{f}.backing.file"),
                        format!(
                            "{file} is not an index into files ({} entries)",
                            b.files.len()
                        ),
                    ));
                }
                aligned(&format!("{f}.backing.offset"), offset)?;
                if offset.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
                    return Err(invalid(
                        format!("{f}.backing.offset"),
                        "offset + length overflows",
                    ));
                }
            }
            Backing::SharedMemory { object, offset } => {
                let Some(o) = b.shared_memory.get(object as usize) else {
                    return Err(invalid(
                        format!("{f}.backing.object"),
                        format!(
                            "{object} is not an index into shared_memory ({} entries)",
                            b.shared_memory.len()
                        ),
                    ));
                };
                aligned(&format!("{f}.backing.offset"), offset)?;
                if offset.checked_add(len).is_none_or(|e| e > o.size) {
                    return Err(invalid(
                        format!("{f}.backing.offset"),
                        "mapping runs past the end of its shared object",
                    ));
                }
                if !v.shared {
                    return Err(invalid(
                        format!("{f}.shared"),
                        "shared memory must be mapped shared",
                    ));
                }
                may_store = false;
            }
            Backing::Vdso | Backing::Vvar | Backing::VvarVclock => {
                let kind = match v.backing {
                    Backing::Vdso => VdsoAreaKind::Vdso,
                    Backing::Vvar => VdsoAreaKind::Vvar,
                    _ => VdsoAreaKind::VvarVclock,
                };
                special(kind.maps_name(), &mut specials)?;
                vdso_family.push((kind, v.start, v.end));
                may_store = false;
            }
        }
        if v.shared
            && !matches!(
                v.backing,
                Backing::File { .. } | Backing::SharedMemory { .. }
            )
        {
            return Err(invalid(
                format!("{f}.shared"),
                "only file and shared-memory mappings can be shared",
            ));
        }
        if !v.pages.is_empty() && !may_store {
            return Err(invalid(
                format!("{f}.pages"),
                "this mapping's pages are never stored (vDSO, shared, droppable or wipe-on-fork)",
            ));
        }
        runs(
            &format!("{f}.pages"),
            &v.pages,
            len / PAGE_SIZE,
            b.pages.size,
        )?;
        guards(&f, v)?;
    }
    let want: Vec<(VdsoAreaKind, u64, u64)> = b
        .host
        .vdso
        .iter()
        .flat_map(|v| v.areas.iter().map(|a| (a.kind, a.offset, a.size)))
        .collect();
    let base = vdso_family.first().map_or(0, |&(_, s, _)| s);
    let got: Vec<(VdsoAreaKind, u64, u64)> = vdso_family
        .iter()
        .map(|&(k, s, e)| (k, s - base, e - s))
        .collect();
    // A process may have unmapped its vDSO; if it has one, it is the whole
    // family, laid out as on its host.
    if !got.is_empty() && got != want {
        return Err(invalid(
            "vmas",
            format!(
                "vDSO mappings {got:?} (kind, offset, size) differ from host.vdso.areas {want:?}"
            ),
        ));
    }
    const AT_SYSINFO_EHDR: u64 = 33;
    let auxv = &b.process.mm.auxv;
    let ehdr = auxv
        .chunks_exact(2)
        .find(|p| p[0] == AT_SYSINFO_EHDR)
        .map(|p| p[1]);
    let vdso_start = vdso_family
        .iter()
        .find(|(k, _, _)| *k == VdsoAreaKind::Vdso)
        .map(|&(_, s, _)| s);
    if ehdr.is_some() && ehdr != vdso_start {
        return Err(invalid(
            "process.mm.auxv",
            format!("AT_SYSINFO_EHDR {ehdr:x?} is not the [vdso] VMA's start {vdso_start:x?}"),
        ));
    }
    Ok(())
}

fn fds(b: &ManifestBody) -> Result<()> {
    let numbers: HashMap<i32, &FdObject> = b.fds.iter().map(|f| (f.fd, &f.object)).collect();
    let mut prev: Option<i32> = None;
    let mut pipes: HashMap<u64, (u32, bool)> = HashMap::new();
    let mut pairs: HashMap<u64, usize> = HashMap::new();
    let allowed_flags = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DIRECT
        | libc::O_NOATIME
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_ASYNC
        | libc::O_LARGEFILE;
    for (i, fd) in b.fds.iter().enumerate() {
        let f = format!("fds[{i}]");
        if !(0..MAX_FD_NUMBER).contains(&fd.fd) {
            return Err(invalid(
                format!("{f}.fd"),
                format!("{} is outside 0..{MAX_FD_NUMBER}", fd.fd),
            ));
        }
        if prev.is_some_and(|p| p >= fd.fd) {
            return Err(invalid(
                format!("{f}.fd"),
                format!(
                    "{} is not above the previous fd (fds are sorted, unique)",
                    fd.fd
                ),
            ));
        }
        prev = Some(fd.fd);
        if fd.flags & !allowed_flags != 0 {
            return Err(invalid(
                format!("{f}.flags"),
                format!("{:#o} has flags outside {allowed_flags:#o}", fd.flags),
            ));
        }
        match &fd.object {
            FdObject::Stdio { .. }
            | FdObject::Tty
            | FdObject::Device { .. }
            | FdObject::Signalfd { .. } => {}
            FdObject::Dup { of } => match numbers.get(of) {
                _ if *of == fd.fd => {
                    return Err(invalid(
                        format!("{f}.object.of"),
                        "an fd cannot duplicate itself",
                    ));
                }
                None => {
                    return Err(invalid(
                        format!("{f}.object.of"),
                        format!("fd {of} is not in the image"),
                    ));
                }
                Some(FdObject::Dup { .. }) => {
                    return Err(invalid(
                        format!("{f}.object.of"),
                        format!("fd {of} is itself a dup"),
                    ));
                }
                Some(_) => {}
            },
            FdObject::File { path: p, .. } => path(&format!("{f}.object.path"), p)?,
            FdObject::Pipe {
                pipe,
                capacity,
                data,
                ..
            } => {
                if !capacity.is_power_of_two() || *capacity < 4096 {
                    return Err(invalid(
                        format!("{f}.object.capacity"),
                        format!("{capacity} is not a power of two ≥ 4096"),
                    ));
                }
                count(
                    format!("{f}.object.data length in bytes"),
                    data.len(),
                    MAX_QUEUED_BYTES,
                )?;
                if data.len() > *capacity as usize {
                    return Err(invalid(
                        format!("{f}.object.data"),
                        "more bytes than the pipe holds",
                    ));
                }
                let e = pipes.entry(*pipe).or_insert((*capacity, false));
                if e.0 != *capacity {
                    return Err(invalid(
                        format!("{f}.object.capacity"),
                        "differs from another end of the same pipe",
                    ));
                }
                if !data.is_empty() {
                    if e.1 {
                        return Err(invalid(
                            format!("{f}.object.data"),
                            "another fd of this pipe already carries its data",
                        ));
                    }
                    e.1 = true;
                }
            }
            FdObject::Eventfd { count: c, .. } => {
                if *c == u64::MAX {
                    return Err(invalid(
                        format!("{f}.object.count"),
                        "0xffffffffffffffff is not a valid eventfd count",
                    ));
                }
            }
            FdObject::Epoll { targets } => {
                count(
                    format!("{f}.object.targets"),
                    targets.len(),
                    MAX_EPOLL_TARGETS,
                )?;
                let mut seen = HashSet::with_capacity(targets.len());
                for (j, t) in targets.iter().enumerate() {
                    let g = format!("{f}.object.targets[{j}].tfd");
                    if t.tfd == fd.fd || !numbers.contains_key(&t.tfd) {
                        return Err(invalid(
                            g,
                            format!("{} is not another fd of the image", t.tfd),
                        ));
                    }
                    if !seen.insert(t.tfd) {
                        return Err(invalid(g, format!("{} is registered twice", t.tfd)));
                    }
                }
            }
            FdObject::Timerfd {
                clock,
                settime_flags,
                ..
            } => {
                if ![0, 1, 7, 8, 9].contains(clock) {
                    return Err(invalid(
                        format!("{f}.object.clock"),
                        format!("{clock} is not a timerfd clock"),
                    ));
                }
                if settime_flags & !3 != 0 {
                    return Err(invalid(
                        format!("{f}.object.settime_flags"),
                        format!("{settime_flags:#x}"),
                    ));
                }
            }
            FdObject::Socket(s) => {
                let g = format!("{f}.object");
                let inet = matches!(s.family, SocketFamily::Inet | SocketFamily::Inet6);
                let ok_proto = match (s.family, s.socket_type) {
                    (SocketFamily::Unix, _) => s.protocol == 0,
                    (_, SocketType::Stream) => [0, libc::IPPROTO_TCP].contains(&s.protocol),
                    (_, SocketType::Dgram) => [0, libc::IPPROTO_UDP].contains(&s.protocol),
                    (_, SocketType::Seqpacket) => false,
                };
                if !ok_proto {
                    return Err(invalid(
                        format!("{g}.protocol"),
                        format!(
                            "{:?} {:?} socket with protocol {}",
                            s.family, s.socket_type, s.protocol
                        ),
                    ));
                }
                let tcp = inet && s.socket_type == SocketType::Stream;
                match &s.state {
                    SocketState::Unbound => {
                        if s.local.is_some() {
                            return Err(invalid(
                                format!("{g}.local"),
                                "an unbound socket has no address",
                            ));
                        }
                    }
                    SocketState::Bound => {
                        if s.local.is_none() {
                            return Err(invalid(
                                format!("{g}.local"),
                                "a bound socket needs its address",
                            ));
                        }
                    }
                    SocketState::Listening { backlog } => {
                        if s.socket_type == SocketType::Dgram {
                            return Err(invalid(
                                format!("{g}.state"),
                                "a datagram socket cannot listen",
                            ));
                        }
                        if *backlog > i32::MAX as u32 {
                            return Err(invalid(
                                format!("{g}.state.backlog"),
                                format!("{backlog}"),
                            ));
                        }
                        if s.local.is_none() {
                            return Err(invalid(
                                format!("{g}.local"),
                                "a listening socket needs its address",
                            ));
                        }
                    }
                    SocketState::Pair { pair, queued } => {
                        if s.family != SocketFamily::Unix {
                            return Err(invalid(
                                format!("{g}.state"),
                                "only AF_UNIX sockets come in pairs",
                            ));
                        }
                        let n = pairs.entry(*pair).or_insert(0);
                        *n += 1;
                        if *n > 2 {
                            return Err(invalid(
                                format!("{g}.state.pair"),
                                format!("pair {pair} has more than two ends"),
                            ));
                        }
                        count(
                            format!("{g}.state.queued"),
                            queued.len(),
                            MAX_QUEUED_MESSAGES,
                        )?;
                        if s.socket_type == SocketType::Stream && queued.len() > 1 {
                            return Err(invalid(
                                format!("{g}.state.queued"),
                                "a stream queues one byte string",
                            ));
                        }
                        let bytes = queued
                            .iter()
                            .map(Vec::len)
                            .fold(0usize, usize::saturating_add);
                        count(
                            format!("{g}.state.queued length in bytes"),
                            bytes,
                            MAX_QUEUED_BYTES,
                        )?;
                    }
                }
                match &s.local {
                    None => {}
                    Some(SockAddr::Inet { addr }) => {
                        let fam_ok = match s.family {
                            SocketFamily::Inet => addr.is_ipv4(),
                            SocketFamily::Inet6 => addr.is_ipv6(),
                            SocketFamily::Unix => false,
                        };
                        if !fam_ok {
                            return Err(invalid(
                                format!("{g}.local"),
                                format!("{addr} does not match family {:?}", s.family),
                            ));
                        }
                    }
                    Some(SockAddr::UnixPath { path: p }) => {
                        if s.family != SocketFamily::Unix {
                            return Err(invalid(
                                format!("{g}.local"),
                                "a path address needs an AF_UNIX socket",
                            ));
                        }
                        count(
                            format!("{g}.local.path length in bytes"),
                            p.len(),
                            MAX_UNIX_PATH_BYTES,
                        )?;
                        path(&format!("{g}.local.path"), p)?;
                    }
                    Some(SockAddr::UnixAbstract { name: n }) => {
                        if s.family != SocketFamily::Unix {
                            return Err(invalid(
                                format!("{g}.local"),
                                "an abstract address needs an AF_UNIX socket",
                            ));
                        }
                        count(
                            format!("{g}.local.name length in bytes"),
                            n.len(),
                            MAX_UNIX_PATH_BYTES,
                        )?;
                    }
                }
                let o = &s.options;
                if o.v6only && s.family != SocketFamily::Inet6 {
                    return Err(invalid(
                        format!("{g}.options.v6only"),
                        "only for AF_INET6 sockets",
                    ));
                }
                if (o.nodelay || o.defer_accept != 0) && !tcp {
                    return Err(invalid(
                        format!("{g}.options"),
                        "nodelay and defer_accept are TCP options",
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::path;

    #[test]
    fn paths() {
        for ok in [
            "/",
            "/a",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/a/.b/c..d",
        ] {
            path("p", ok).unwrap();
        }
        for bad in [
            "",
            "a",
            "/a/",
            "//a",
            "/a//b",
            "/../etc/passwd",
            "/a/./b",
            "/a/..",
            "/a\0b",
        ] {
            assert!(path("p", bad).is_err(), "accepted {bad:?}");
        }
        assert!(path("p", &format!("/{}", "a".repeat(4095))).is_err());
        path("p", &format!("/{}", "a".repeat(4094))).unwrap();
    }
}
