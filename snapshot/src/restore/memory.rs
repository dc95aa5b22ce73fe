//! Rebuilding the address space in the stopped stub (pitfalls §4, §5, §10).
//!
//! Three gadget batches and one copy:
//! 1. open every mapped file (and the exe) inside the sandbox, make a memfd
//!    per shared-memory object;
//! 2. unmap the stub, move the vDSO family to its dumped addresses (parking
//!    it first if the two layouts overlap), map every VMA `MAP_FIXED`:
//!    anonymous memory stays anonymous (pitfalls §0.1), files are mapped
//!    from the sandbox's own copies, writable while they are filled;
//! 3. (after the pages are copied in) final protections, madvise flags,
//!    guard pages, closing the temporary fds.
//!
//! Page data is read from `pages.img` a chunk at a time, each chunk checked
//! against its hash, and written into the process with `process_vm_writev`
//! (shared-memory objects through their memfd: all of an object, however
//! many of its VMAs map which part of it).

use std::os::unix::fs::FileExt;

use crate::image::working_set_pages::PrefetchedPages;
use crate::image::{Backing, ChunkHash, Image, VmFlag, Vma};
use crate::ptrace::procfs::{MapEntry, MapKind};
use crate::ptrace::{Entry, Gadget, Tid, TraceCtx, cstring, mem};

use super::RestoreError;

const PAGE: u64 = 4096;
const MADV_GUARD_INSTALL: u64 = 102;
const MAP_DROPPABLE: u64 = 0x08;

/// Descriptors opened inside the target for the rebuild.
pub(super) struct Opened {
    /// Per `files[i]`.
    pub files: Vec<i32>,
    /// Per `shared_memory[i]`.
    pub shared: Vec<i32>,
    /// The exe, for `PR_SET_MM_MAP`; `None` if it could not be opened.
    pub exe: Option<i32>,
    /// The image's cwd, opened `O_PATH` in the rootfs, for `fchdir`.
    pub cwd: i32,
    /// The userfaultfd made for a lazy restore: its fd, or the errno of
    /// `userfaultfd()`; `None` if none was asked for.
    pub uffd: Option<Result<i32, i32>>,
}

fn is_vdso_family(b: &Backing) -> bool {
    matches!(b, Backing::Vdso | Backing::Vvar | Backing::VvarVclock)
}

/// The image's VMAs as maps entries, for finding a hole free in both
/// layouts.
pub(super) fn as_maps(vmas: &[Vma]) -> Vec<MapEntry> {
    vmas.iter()
        .map(|v| MapEntry {
            start: v.start,
            end: v.end,
            read: v.prot.read,
            write: v.prot.write,
            exec: v.prot.exec,
            shared: v.shared,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            kind: MapKind::Anon,
        })
        .collect()
}

fn results_ok(rs: &[i64], what: &'static str) -> Result<(), RestoreError> {
    if let Some(r) = rs.iter().find(|r| (-4095..0).contains(*r)) {
        return Err(RestoreError::Injected {
            what,
            errno: -*r as i32,
        });
    }
    Ok(())
}

/// Batch 1: opens the files and makes the shared-memory objects (and,
/// with `uffd`, a userfaultfd for a lazy restore: it may be refused).
pub(super) fn open_files(
    ctx: &mut TraceCtx,
    pid: Tid,
    gadget: &mut Gadget,
    image: &Image,
    fs_user: Option<&crate::fds::FsUser>,
    uffd: bool,
) -> Result<Opened, RestoreError> {
    let m = image.manifest();
    // The image's paths resolve beneath the process's root, never through
    // a magic link, and never block (a FIFO): the opener is still root.
    let slash = gadget.data(b"/\0")?;
    let root = gadget.run(
        ctx,
        pid,
        &[Entry::new(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                slash,
                (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )],
    )?[0] as u64;
    let how = |flags: i32| crate::fds::open_how_in_root(flags | libc::O_CLOEXEC | libc::O_NONBLOCK);
    let (read_only, read_write, directory) = (
        gadget.data(&how(libc::O_RDONLY))?,
        gadget.data(&how(libc::O_RDWR))?,
        // openat2 takes nothing but O_CLOEXEC and O_DIRECTORY with O_PATH.
        gadget.data(&crate::fds::open_how_in_root(
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        ))?,
    );
    let in_root = |gadget: &mut Gadget, path: &str, how: u64| -> Result<Entry, RestoreError> {
        let p = gadget.data(&cstring(path))?;
        Ok(Entry::new(
            crate::fds::SYS_OPENAT2,
            [root, p, how, crate::fds::OPEN_HOW_SIZE, 0, 0],
        ))
    };
    let mut entries = Vec::new();
    // As the sandbox's user (a shared writable mapping of a file it may
    // not write would otherwise be the image's for the asking).
    let fs_ids = |uid: u32, gid: u32| {
        [
            Entry::new(libc::SYS_setfsgid, [gid as u64, 0, 0, 0, 0, 0]),
            Entry::new(libc::SYS_setfsuid, [uid as u64, 0, 0, 0, 0, 0]),
        ]
    };
    if let Some(u) = fs_user {
        let groups: Vec<u8> = u.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let g = gadget.data(&groups)?;
        entries.push(Entry::new(
            libc::SYS_setgroups,
            [u.groups.len() as u64, g, 0, 0, 0, 0],
        ));
        entries.extend(fs_ids(u.uid, u.gid));
    }
    let first_open = entries.len();
    for (i, f) in m.files.iter().enumerate() {
        // A writable shared mapping of the file needs it open for writing.
        let rw = m.vmas.iter().any(|v| {
            v.shared
                && v.prot.write
                && matches!(v.backing, Backing::File { file, .. } if file as usize == i)
        });
        entries.push(in_root(
            gadget,
            &f.path,
            if rw { read_write } else { read_only },
        )?);
    }
    for _ in &m.shared_memory {
        let name = gadget.data(b"sprout-shared\0")?;
        entries.push(Entry::new(
            libc::SYS_memfd_create,
            [name, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        ));
    }
    entries.push(in_root(gadget, &m.process.exe, read_only)?.may_fail());
    if uffd {
        entries.push(
            Entry::new(
                libc::SYS_userfaultfd,
                [(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64, 0, 0, 0, 0, 0],
            )
            .may_fail(),
        );
    }
    // The cwd, like every other path of the image: `fchdir` to it later.
    entries.push(in_root(gadget, &m.process.cwd, directory)?);
    entries.push(Entry::new(libc::SYS_close, [root, 0, 0, 0, 0, 0]));
    if fs_user.is_some() {
        entries.extend(fs_ids(0, 0));
    }
    let rs = gadget.run(ctx, pid, &entries)?;
    let rs = &rs[first_open..];
    let rs = &rs[..rs.len() - if fs_user.is_some() { 2 } else { 0 }];
    let nf = m.files.len();
    let ns = m.shared_memory.len();
    let exe_fd = rs[nf + ns];
    Ok(Opened {
        files: rs[..nf].iter().map(|&r| r as i32).collect(),
        shared: rs[nf..nf + ns].iter().map(|&r| r as i32).collect(),
        exe: (exe_fd >= 0).then_some(exe_fd as i32),
        cwd: rs[rs.len() - 2] as i32,
        uffd: uffd.then(|| {
            let r = rs[nf + ns + 1];
            if r >= 0 { Ok(r as i32) } else { Err(-r as i32) }
        }),
    })
}

/// Whether page data will be written into the VMA through its addresses
/// (it is mapped writable until then). Shared-memory objects are filled
/// through their memfd instead.
fn has_pages(v: &Vma) -> bool {
    !v.pages.is_empty()
}

fn initial_prot(v: &Vma) -> u64 {
    let mut p = v.prot.bits();
    if has_pages(v) {
        p |= libc::PROT_READ | libc::PROT_WRITE;
    }
    p as u64
}

/// Batch 2: the stub's mappings out, the dumped layout in.
pub(super) fn rebuild_layout(
    ctx: &mut TraceCtx,
    pid: Tid,
    gadget: &mut Gadget,
    image: &Image,
    opened: &Opened,
    stub_maps: &[MapEntry],
) -> Result<(), RestoreError> {
    let m = image.manifest();
    let layout = *gadget.layout();
    let mut entries = Vec::new();
    // The stub's own mappings (its code, its stack), all but the gadget and
    // the vDSO family, which moves.
    let is_family = |k: &MapKind| matches!(k, MapKind::Vdso | MapKind::Vvar | MapKind::VvarVclock);
    for s in stub_maps {
        if layout.contains(s.start) || is_family(&s.kind) || matches!(s.kind, MapKind::Vsyscall) {
            continue;
        }
        entries.push(Entry::new(
            libc::SYS_munmap,
            [s.start, s.end - s.start, 0, 0, 0, 0],
        ));
    }
    entries.extend(vdso_moves(stub_maps, &m.vmas, (layout.base, layout.size))?);
    // Shared-memory objects get their size before anything maps them.
    for (i, o) in m.shared_memory.iter().enumerate() {
        entries.push(Entry::new(
            libc::SYS_ftruncate,
            [opened.shared[i] as u64, o.size, 0, 0, 0, 0],
        ));
    }
    for v in &m.vmas {
        if is_vdso_family(&v.backing) {
            continue;
        }
        let len = v.end - v.start;
        let prot = initial_prot(v);
        let mut extra = 0u64;
        if v.has(VmFlag::GrowsDown) {
            extra |= libc::MAP_GROWSDOWN as u64;
        }
        if v.has(VmFlag::NoReserve) {
            extra |= libc::MAP_NORESERVE as u64;
        }
        let fixed = libc::MAP_FIXED as u64 | extra;
        let e = match v.backing {
            Backing::Anonymous | Backing::Heap | Backing::Stack => {
                let kind = if v.has(VmFlag::Droppable) {
                    MAP_DROPPABLE
                } else {
                    libc::MAP_PRIVATE as u64
                };
                Entry::new(
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        prot,
                        kind | libc::MAP_ANONYMOUS as u64 | fixed,
                        u64::MAX,
                        0,
                    ],
                )
            }
            Backing::File { file, offset } => {
                let kind = if v.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } as u64;
                let fd = opened.files[file as usize];
                Entry::new(
                    libc::SYS_mmap,
                    [v.start, len, prot, kind | fixed, fd as u64, offset],
                )
            }
            Backing::SharedMemory { object, offset } => {
                let fd = opened.shared[object as usize];
                Entry::new(
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        prot,
                        libc::MAP_SHARED as u64 | fixed,
                        fd as u64,
                        offset,
                    ],
                )
            }
            Backing::Vdso | Backing::Vvar | Backing::VvarVclock => unreachable!("skipped above"),
        };
        entries.push(e);
    }
    let rs = gadget.run(ctx, pid, &entries)?;
    results_ok(&rs, "rebuilding the address space")
}

/// `mremap`s of the vDSO family from the stub's addresses to the dumped
/// ones, keeping their relative layout (pitfalls §4.3); via a parking
/// place if a target overlaps a current range.
fn vdso_moves(
    stub: &[MapEntry],
    vmas: &[Vma],
    layout_gadget: (u64, u64),
) -> Result<Vec<Entry>, RestoreError> {
    let kind_of = |b: &Backing| match b {
        Backing::Vdso => Some(MapKind::Vdso),
        Backing::Vvar => Some(MapKind::Vvar),
        Backing::VvarVclock => Some(MapKind::VvarVclock),
        _ => None,
    };
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (from, len, to)
    let mut unmaps = Vec::new();
    for s in stub
        .iter()
        .filter(|s| matches!(s.kind, MapKind::Vdso | MapKind::Vvar | MapKind::VvarVclock))
    {
        match vmas
            .iter()
            .find(|v| kind_of(&v.backing).as_ref() == Some(&s.kind))
        {
            Some(v) => {
                if v.end - v.start != s.end - s.start {
                    return Err(RestoreError::Incompatible(format!(
                        "the image's {:?} is {} bytes, this kernel's {} bytes",
                        s.kind,
                        v.end - v.start,
                        s.end - s.start
                    )));
                }
                if v.start != s.start {
                    moves.push((s.start, s.end - s.start, v.start));
                }
            }
            None => unmaps.push(Entry::new(
                libc::SYS_munmap,
                [s.start, s.end - s.start, 0, 0, 0, 0],
            )),
        }
    }
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let overlap = moves.iter().any(|&(_, len, to)| {
        moves
            .iter()
            .any(|&(from, flen, _)| to < from + flen && from < to + len)
    });
    let mut out = unmaps;
    if !overlap {
        for (from, len, to) in moves {
            out.push(Entry::new(libc::SYS_mremap, [from, len, len, flags, to, 0]));
        }
        return Ok(out);
    }
    // Park the family in a hole free in both layouts (and not the
    // gadget's), then move it to its targets.
    let lo = moves.iter().map(|m| m.0).min().unwrap_or(0);
    let hi = moves.iter().map(|m| m.0 + m.1).max().unwrap_or(0);
    let span = hi - lo;
    let mut taken = stub.to_vec();
    taken.push(MapEntry {
        start: layout_gadget.0,
        end: layout_gadget.0 + layout_gadget.1,
        ..stub[0].clone()
    });
    let park = crate::ptrace::find_hole(&taken, &as_maps(vmas), span)
        .ok_or_else(|| RestoreError::Incompatible("no room to move the vDSO aside".into()))?;
    for &(from, len, _) in &moves {
        out.push(Entry::new(
            libc::SYS_mremap,
            [from, len, len, flags, park + (from - lo), 0],
        ));
    }
    for &(from, len, to) in &moves {
        out.push(Entry::new(
            libc::SYS_mremap,
            [park + (from - lo), len, len, flags, to, 0],
        ));
    }
    Ok(out)
}

/// Where a run of stored pages goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    /// An address of the process (`process_vm_writev`).
    Memory(u64),
    /// Shared-memory object `.0` at byte `.1`, through its memfd: all of
    /// the object, mapped once, twice or (that part) not at all.
    Object(usize, u64),
}

impl Dest {
    fn advance(self, n: u64) -> Dest {
        match self {
            Dest::Memory(a) => Dest::Memory(a + n),
            Dest::Object(o, off) => Dest::Object(o, off + n),
        }
    }
}

/// The memfds of the shared-memory objects, opened from here through
/// /proc/PID/fd.
fn object_files(opened: &Opened, pid: Tid) -> Result<Vec<std::fs::File>, RestoreError> {
    opened
        .shared
        .iter()
        .map(|&fd| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/fd/{fd}"))
                .map_err(|source| RestoreError::Io {
                    what: "opening a restored shared memory object",
                    source,
                })
        })
        .collect()
}

/// Copies every stored page into the process (but those of the VMAs
/// `skip` names: a lazy restore's loader has them): those `prefetched`
/// (`working-set.img`, checked) holds from it, the others chunk by chunk,
/// each chunk verified against its hash first. Returns the bytes copied.
pub(super) fn fill(
    pid: Tid,
    image: &Image,
    opened: &Opened,
    skip: impl Fn(&Vma) -> bool,
    prefetched: Option<&PrefetchedPages>,
) -> Result<u64, RestoreError> {
    let m = image.manifest();
    // (pages-file offset, destination, length), in file order.
    let mut runs: Vec<(u64, Dest, u64)> = Vec::new();
    for v in m.vmas.iter().filter(|v| !skip(v)) {
        for r in &v.pages {
            runs.push((r.offset, Dest::Memory(r.addr(v.start)), r.len()));
        }
    }
    for (i, o) in m.shared_memory.iter().enumerate() {
        for r in &o.pages {
            runs.push((r.offset, Dest::Object(i, r.page * PAGE), r.len()));
        }
    }
    let objects = object_files(opened, pid)?;
    runs.sort_unstable();
    let mut copied = 0u64;
    if let Some(p) = prefetched {
        copied += fill_prefetched(pid, &objects, &mut runs, p)?;
    }
    let chunk = m.pages.chunk_size;
    let file = image.pages_file();
    let mut verified = vec![false; m.pages.chunks.len()];
    // A window of whole chunks read from the file, into one buffer
    // populated up front (faulting it page by page as reads fill it costs
    // as much as the reads) and small enough to stay in cache between the
    // read, the check and the copy out.
    let window_chunks = ((1u64 << 20) / chunk).max(1);
    let mut arena =
        crate::image::arena::Arena::new((window_chunks * chunk).min(m.pages.size) as usize)
            .map_err(|source| RestoreError::Io {
                what: "allocating the page window",
                source,
            })?;
    let mut buf_len = 0usize;
    let mut buf_start = u64::MAX;
    let mut pending: Vec<(u64, usize, usize)> = Vec::new(); // (addr, buf offset, len)
    let flush = |pending: &mut Vec<(u64, usize, usize)>, buf: &[u8]| -> Result<(), RestoreError> {
        let ranges: Vec<(u64, &[u8])> = pending
            .iter()
            .map(|&(a, o, l)| (a, &buf[o..o + l]))
            .collect();
        mem::write_ranges(pid, &ranges)?;
        pending.clear();
        Ok(())
    };
    for (i, &(mut off, mut dest, mut len)) in runs.iter().enumerate() {
        while len > 0 {
            let in_window =
                buf_start != u64::MAX && off >= buf_start && off < buf_start + buf_len as u64;
            if !in_window {
                flush(&mut pending, arena.slice(0, buf_len))?;
                let first_chunk = off / chunk;
                buf_start = first_chunk * chunk;
                // Through the runs that follow closely (within a chunk of
                // the data needed so far), up to the largest window: no
                // chunk is read that no run needs (a lazy restore fills
                // only a few scattered runs here).
                let cap = buf_start + window_chunks * chunk;
                let mut needed = off + len;
                for r in &runs[i + 1..] {
                    if r.0 >= cap || r.0 >= needed.next_multiple_of(chunk) + chunk {
                        break;
                    }
                    needed = needed.max(r.0 + r.2);
                }
                let end = needed
                    .min(cap)
                    .div_ceil(chunk)
                    .saturating_mul(chunk)
                    .min(m.pages.size);
                buf_len = (end - buf_start) as usize;
                file.read_exact_at(arena.slice_mut(0, buf_len), buf_start)
                    .map_err(|source| RestoreError::Io {
                        what: "reading pages.img",
                        source,
                    })?;
                let buf = arena.slice(0, buf_len);
                for c in first_chunk..first_chunk + (end - buf_start).div_ceil(chunk) {
                    let ci = c as usize;
                    if !verified[ci] {
                        let s = (c * chunk - buf_start) as usize;
                        let e = ((c + 1) * chunk - buf_start).min(buf.len() as u64) as usize;
                        let found = ChunkHash::of(&buf[s..e]);
                        if found != m.pages.chunks[ci] {
                            return Err(RestoreError::Image(
                                crate::image::ImageError::ChunkCorrupt {
                                    index: c,
                                    offset: c * chunk,
                                    len: (e - s) as u64,
                                    expected: m.pages.chunks[ci].0,
                                    actual: found.0,
                                },
                            ));
                        }
                        verified[ci] = true;
                    }
                }
            }
            let buf = arena.slice(0, buf_len);
            let bo = (off - buf_start) as usize;
            let n = len.min(buf.len() as u64 - bo as u64);
            match dest {
                Dest::Memory(addr) => {
                    pending.push((addr, bo, n as usize));
                    if pending.len() >= mem::IOV_MAX {
                        flush(&mut pending, buf)?;
                    }
                }
                Dest::Object(o, at) => {
                    objects[o]
                        .write_all_at(&buf[bo..bo + n as usize], at)
                        .map_err(|source| RestoreError::Io {
                            what: "filling a restored shared memory object",
                            source,
                        })?;
                }
            }
            off += n;
            dest = dest.advance(n);
            len -= n;
            copied += n;
        }
    }
    flush(&mut pending, arena.slice(0, buf_len))?;
    Ok(copied)
}

/// Copies the runs `prefetched` holds from it and takes them out of
/// `runs`. Returns the bytes copied.
fn fill_prefetched(
    pid: Tid,
    objects: &[std::fs::File],
    runs: &mut Vec<(u64, Dest, u64)>,
    prefetched: &PrefetchedPages,
) -> Result<u64, RestoreError> {
    let mut to_memory: Vec<(u64, &[u8])> = Vec::new();
    let mut copied = 0u64;
    let mut result = Ok(());
    runs.retain(|&(off, dest, len)| {
        let Some(data) = prefetched.get(off, len) else {
            return true;
        };
        match dest {
            Dest::Memory(addr) => to_memory.push((addr, data)),
            Dest::Object(o, at) => {
                if let Err(source) = objects[o].write_all_at(data, at) {
                    result = Err(RestoreError::Io {
                        what: "filling a restored shared memory object",
                        source,
                    });
                }
            }
        }
        copied += len;
        false
    });
    result?;
    mem::write_ranges(pid, &to_memory)?;
    Ok(copied)
}

fn madvice(flag: VmFlag) -> Option<u64> {
    Some(match flag {
        VmFlag::SeqRead => libc::MADV_SEQUENTIAL,
        VmFlag::RandRead => libc::MADV_RANDOM,
        VmFlag::DontCopy => libc::MADV_DONTFORK,
        VmFlag::DontDump => libc::MADV_DONTDUMP,
        VmFlag::Mergeable => libc::MADV_MERGEABLE,
        VmFlag::HugePage => libc::MADV_HUGEPAGE,
        VmFlag::NoHugePage => libc::MADV_NOHUGEPAGE,
        VmFlag::WipeOnFork => libc::MADV_WIPEONFORK,
        _ => return None,
    } as u64)
}

/// Batch 3 entries: final protections, madvise flags, locks, guard pages,
/// and closing the temporary fds (but the exe's, still needed).
pub(super) fn finish_entries(image: &Image, opened: &Opened) -> Vec<Entry> {
    let m = image.manifest();
    let mut entries = Vec::new();
    for v in &m.vmas {
        if is_vdso_family(&v.backing) {
            continue;
        }
        let len = v.end - v.start;
        if initial_prot(v) != v.prot.bits() as u64 {
            entries.push(Entry::new(
                libc::SYS_mprotect,
                [v.start, len, v.prot.bits() as u64, 0, 0, 0],
            ));
        }
        for &f in &v.flags {
            if let Some(advice) = madvice(f) {
                // Advice the kernel refuses here (KSM off, THP off) changes
                // performance only.
                entries.push(
                    Entry::new(libc::SYS_madvise, [v.start, len, advice, 0, 0, 0]).may_fail(),
                );
            }
            if f == VmFlag::Locked {
                entries.push(Entry::new(libc::SYS_mlock, [v.start, len, 0, 0, 0, 0]).may_fail());
            }
        }
        for g in &v.guard_pages {
            entries.push(Entry::new(
                libc::SYS_madvise,
                [
                    v.start + g.page * PAGE,
                    g.count * PAGE,
                    MADV_GUARD_INSTALL,
                    0,
                    0,
                    0,
                ],
            ));
        }
    }
    for &fd in opened.files.iter().chain(&opened.shared) {
        entries.push(Entry::new(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]));
    }
    entries
}
