//! The address space: every VMA with its protections, flags and backing,
//! and the pages that must be stored (pitfalls §10).
//!
//! Stored: present or swapped pages of private anonymous memory (heap,
//! stack, anonymous mappings) and the pages of private file mappings that
//! were written (pagemap bit 61 clear: no longer the file's page cache).
//! Never stored: file pages never written (they come from the file at
//! restore), `MAP_DROPPABLE`/`MADV_WIPEONFORK` memory (recreated zeroed,
//! pitfalls §0.5), the vDSO family (moved from the restoring kernel's).
//! Shared memory (memfd, shmem, `MAP_SHARED|MAP_ANONYMOUS`) is stored per
//! object, not per VMA: every VMA that maps one object names the same
//! record, so the restore maps one memfd at all of them (pitfalls §10.4).
//!
//! Refused, naming the mapping: hugetlb, shadow stacks, device memory,
//! System V shared memory (its segment belongs to the IPC namespace, which
//! a restore does not bring along) and memory tagged with a protection key
//! (pitfalls §10.8).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::image::{
    Backing, FileRecord, ImageWriter, PageRun, PageSpan, Prot, SharedObject, VmFlag, Vma,
};
use crate::proc::{self, Pagemap, SmapsVma};
use crate::ptrace::procfs::{MapEntry, MapKind};
use crate::ptrace::{self, Tid};

use super::DumpError;

const PAGE: u64 = 4096;

/// The mapped files, deduplicated by path.
#[derive(Default)]
pub(super) struct Files {
    pub records: Vec<FileRecord>,
    index: HashMap<String, u32>,
}

impl Files {
    /// The index of the file mapped at `m` (opened through the process's
    /// own view of it, /proc/PID/map_files, so a bind mount that only
    /// exists inside the container is followed).
    fn index_of(&mut self, pid: Tid, m: &MapEntry, path: &str) -> Result<u32, DumpError> {
        if let Some(&i) = self.index.get(path) {
            return Ok(i);
        }
        let link = map_files_link(pid, m);
        let file = open_mapped_file(&link, m)?;
        let record = crate::image::file_record(&file, path)?;
        let i = self.records.len() as u32;
        self.records.push(record);
        self.index.insert(path.to_string(), i);
        Ok(i)
    }
}

/// The VmFlags the restorer replays, after refusing what it cannot
/// rebuild: a protection key, hugetlb, a shadow stack, device memory.
fn vma_attributes(smaps: Option<&SmapsVma>, m: &MapEntry) -> Result<Vec<VmFlag>, DumpError> {
    let Some(smaps) = smaps else {
        return Ok(Vec::new());
    };
    if smaps.protection_key != 0 {
        // Restoring it needs the same keys from pkey_alloc, pkey_mprotect
        // and PKRU; not supported (CRIU refuses too).
        return Err(unsupported(
            m,
            &format!(
                "tagged with memory protection key {} (pkey_mprotect)",
                smaps.protection_key
            ),
        ));
    }
    let mut out = Vec::new();
    for n in &smaps.vmflags {
        let f = match n.as_str() {
            "gd" => VmFlag::GrowsDown,
            "lo" => VmFlag::Locked,
            "nr" => VmFlag::NoReserve,
            "dp" => VmFlag::Droppable,
            "sr" => VmFlag::SeqRead,
            "rr" => VmFlag::RandRead,
            "dc" => VmFlag::DontCopy,
            "dd" => VmFlag::DontDump,
            "mg" => VmFlag::Mergeable,
            "hg" => VmFlag::HugePage,
            "nh" => VmFlag::NoHugePage,
            "wf" => VmFlag::WipeOnFork,
            "ht" => return Err(unsupported(m, "hugetlb memory")),
            "ss" => return Err(unsupported(m, "a shadow stack")),
            "io" | "pf" => return Err(unsupported(m, "device (VM_IO/PFNMAP) memory")),
            // A lazily restored process still loading: its missing pages
            // are not present yet and would be dumped as zeros.
            "um" | "uw" | "ui" => {
                return Err(unsupported(
                    m,
                    "registered with userfaultfd (memory still being loaded lazily; checkpoint once loading is done)",
                ));
            }
            _ => continue,
        };
        out.push(f);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The mapping's file as the process sees it (a bind mount only its
/// mount namespace has included).
fn map_files_link(pid: Tid, m: &MapEntry) -> String {
    format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)
}

/// Every mapped file is hashed whole: their sizes together (each file
/// once) must stay within the one-file limit too, looked at before any is
/// hashed (a stat through /proc/PID/map_files opens nothing).
fn check_mapped_total(pid: Tid, maps: &[MapEntry]) -> Result<(), DumpError> {
    use std::os::unix::fs::MetadataExt;
    let limit = crate::image::limits::MAX_MAPPED_FILE_BYTES;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for m in maps {
        if !matches!(m.kind, MapKind::File { deleted: false, .. }) {
            continue;
        }
        let link = map_files_link(pid, m);
        let Ok(meta) = std::fs::metadata(&link) else {
            continue;
        };
        // One over the limit alone is named by `open_mapped_file`.
        if meta.is_file() && meta.len() <= limit && seen.insert((meta.dev(), meta.ino())) {
            total = total.saturating_add(meta.len());
        }
        if total > limit {
            return Err(DumpError::Unsupported(format!(
                "the process maps files of more than {limit} bytes in all, which a checkpoint would hash whole"
            )));
        }
    }
    Ok(())
}

/// A mapped file, opened through `link` (`/proc/PID/map_files/...`) only
/// once it is known to be a regular file of a size we hash: the process
/// chooses what it maps, and a device's open may block, a sparse file of
/// exabytes would be hashed for ever.
fn open_mapped_file(link: &str, m: &MapEntry) -> Result<std::fs::File, DumpError> {
    use std::os::unix::fs::OpenOptionsExt;
    let syscall = |what| move |source| DumpError::Syscall { what, source };
    let pin = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(link)
        .map_err(syscall("opening a mapped file through /proc/PID/map_files"))?;
    let meta = pin
        .metadata()
        .map_err(syscall("looking at a mapped file"))?;
    if !meta.is_file() {
        return Err(unsupported(
            m,
            "a mapping of a file that is not a regular file",
        ));
    }
    let limit = crate::image::limits::MAX_MAPPED_FILE_BYTES;
    if meta.len() > limit {
        return Err(unsupported(
            m,
            &format!(
                "a mapping of a file of {} bytes (a checkpoint hashes mapped files whole, up to {limit})",
                meta.len()
            ),
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pin)
        ))
        .map_err(syscall("opening a mapped file"))
}

fn unsupported(m: &MapEntry, what: &str) -> DumpError {
    DumpError::Unsupported(format!(
        "the mapping at {:#x}-{:#x} is {what}, which sprout cannot checkpoint",
        m.start, m.end
    ))
}

/// The `shmget` key of a System V shared memory attachment: the kernel
/// names the segment's file `/SYSV%08x` on its internal shm mount.
fn sysv_key(path: &str) -> Option<&str> {
    let key = path.strip_prefix("/SYSV")?;
    (key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}

/// Shared-memory objects by identity (device and inode of their shmem
/// file): two VMAs of one memfd or of one `MAP_SHARED|MAP_ANONYMOUS` region
/// (a ring buffer mapped twice, an `mremap` with old size 0) are one
/// object, restored as one memfd mapped at both.
#[derive(Default)]
pub(super) struct SharedObjects {
    /// The image's records.
    pub records: Vec<SharedObject>,
    index: HashMap<(u32, u32, u64), u32>,
    /// Each object, opened through /proc/PID/map_files, for its contents.
    files: Vec<std::fs::File>,
}

impl SharedObjects {
    /// The backing of `m`, a VMA of shared memory; the object is recorded
    /// the first time one of its VMAs is seen.
    fn backing(&mut self, pid: Tid, m: &MapEntry, name: &str) -> Result<Backing, DumpError> {
        let end = m.offset + (m.end - m.start);
        let key = (m.dev_major, m.dev_minor, m.inode);
        if let Some(&object) = self.index.get(&key) {
            let o = &mut self.records[object as usize];
            o.size = o.size.max(end);
            return Ok(Backing::SharedMemory {
                object,
                offset: m.offset,
            });
        }
        let link = map_files_link(pid, m);
        let file = std::fs::File::open(&link).map_err(|source| DumpError::Syscall {
            what: "opening shared memory through /proc/PID/map_files",
            source,
        })?;
        let size = file
            .metadata()
            .map_err(|source| DumpError::Syscall {
                what: "fstat of a shared memory object",
                source,
            })?
            .len()
            .next_multiple_of(PAGE)
            .max(end);
        let object = self.records.len() as u32;
        self.records.push(SharedObject {
            size,
            name: name.to_string(),
            pages: Vec::new(),
        });
        self.files.push(file);
        self.index.insert(key, object);
        Ok(Backing::SharedMemory {
            object,
            offset: m.offset,
        })
    }

    /// Stores every object's data: the page ranges its file holds data in
    /// (`SEEK_DATA`/`SEEK_HOLE`, swapped pages included), whether this
    /// process has them mapped right now or not, once however many VMAs
    /// map them.
    fn store(&mut self, writer: &mut ImageWriter) -> Result<(), DumpError> {
        for (o, file) in self.records.iter_mut().zip(&self.files) {
            let mut stored = Vec::new();
            for (start, end) in data_ranges(file, o.size)? {
                let r = writer
                    .append_pages(end - start, |off, dst| file.read_exact_at(dst, start + off))?;
                stored.push(PageRun {
                    page: start / PAGE,
                    count: (end - start) / PAGE,
                    offset: r.offset,
                });
            }
            o.pages = stored;
        }
        Ok(())
    }
}

/// The page-aligned `[start, end)` ranges of `file` below `size` that hold
/// data, merged where they touch.
fn data_ranges(file: &std::fs::File, size: u64) -> Result<Vec<(u64, u64)>, DumpError> {
    let seek = |pos: u64, whence: i32| -> Result<Option<u64>, DumpError> {
        // SAFETY: lseek on an fd we own; it only moves our own offset.
        let r = unsafe { libc::lseek(file.as_raw_fd(), pos as i64, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None); // nothing at or after pos
        }
        Err(DumpError::Syscall {
            what: "finding the data of a shared memory object (SEEK_DATA)",
            source: e,
        })
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(size);
        let (start, end) = (data / PAGE * PAGE, hole.next_multiple_of(PAGE).min(size));
        if start >= end {
            break;
        }
        match out.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
        pos = end;
    }
    Ok(out)
}

/// Whether `/proc/kpageflags` flags frame `pfn` as a zero page
/// (`KPF_ZERO_PAGE`, set for the zero page and the huge zero page).
fn kpage_is_zero(pfn: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    const KPF_ZERO_PAGE: u64 = 1 << 24;
    let f = std::fs::File::open("/proc/kpageflags")?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, pfn * 8)?;
    Ok(u64::from_le_bytes(b) & KPF_ZERO_PAGE != 0)
}

/// The frames of the kernel's shared zero pages (the 4 KiB one and the
/// 512 of the huge one), as this process's pagemap shows them for memory
/// it reads without writing. Empty where they cannot be told (no frame
/// numbers without CAP_SYS_ADMIN): then nothing is skipped.
struct ZeroPages {
    small: Option<u64>,
    huge: Option<u64>,
}

impl ZeroPages {
    fn find() -> ZeroPages {
        const HUGE: usize = 2 << 20;
        let Ok(pagemap) = Pagemap::open(std::process::id() as i32) else {
            return ZeroPages {
                small: None,
                huge: None,
            };
        };
        // A read of fresh private anonymous memory maps the zero page; in
        // an aligned 2 MiB region that may use huge pages, the huge one.
        let probe = |len: usize, huge: bool| -> Option<u64> {
            // SAFETY: a fresh private anonymous mapping of our own, read
            // (volatile: the read is the point) and unmapped here.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len * 2,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    return None;
                }
                let aligned = (p as usize).next_multiple_of(len);
                if huge {
                    libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
                }
                std::ptr::read_volatile(aligned as *const u8);
                let e = pagemap
                    .range(aligned as u64, aligned as u64 + 4096)
                    .ok()
                    .and_then(|v| v.first().copied());
                libc::munmap(p, len * 2);
                e.filter(|e| e.present() && e.pfn() != 0).map(|e| e.pfn())
            }
        };
        // Only a frame the kernel flags as a zero page counts: without
        // the huge zero page (use_zero_page=0) the probe got a real
        // zeroed page, freed with the probe and free for anyone's data.
        let zero = |pfn: u64| kpage_is_zero(pfn).unwrap_or(false);
        let small = probe(4096, false).filter(|&pfn| zero(pfn));
        let huge = probe(HUGE, true).filter(|&pfn| Some(pfn) != small && zero(pfn));
        ZeroPages { small, huge }
    }

    fn contains(&self, pfn: u64) -> bool {
        Some(pfn) == self.small || self.huge.is_some_and(|h| (h..h + 512).contains(&pfn))
    }
}

/// Consecutive page indices as (first, count) runs.
fn runs(pages: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        match out.last_mut() {
            Some((first, count)) if *first + *count == p => *count += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

/// Copies the given page runs of `[start, ...)` from the process into the
/// pages file.
fn store(
    writer: &mut ImageWriter,
    pid: Tid,
    start: u64,
    page_runs: &[(u64, u64)],
) -> Result<Vec<PageRun>, DumpError> {
    let mut out = Vec::with_capacity(page_runs.len());
    for &(page, count) in page_runs {
        let addr = start + page * PAGE;
        let r = writer.append_pages(count * PAGE, |off, dst| {
            ptrace::mem::read_mem(pid, addr + off, dst)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })?;
        out.push(PageRun {
            page,
            count,
            offset: r.offset,
        });
    }
    Ok(out)
}

/// Dumps every VMA of `pid` (all threads stopped) into `writer`, and the
/// contents of the shared-memory objects they map into `shared`.
pub(super) fn dump_memory(
    writer: &mut ImageWriter,
    pid: Tid,
    maps: &[MapEntry],
    files: &mut Files,
    shared: &mut SharedObjects,
) -> Result<Vec<Vma>, DumpError> {
    check_mapped_total(pid, maps)?;
    let smaps = proc::smaps(pid)?;
    let pagemap = Pagemap::open(pid)?;
    let zero_pages = ZeroPages::find();
    let mut vmas = Vec::with_capacity(maps.len());
    for m in maps {
        let prot = Prot {
            read: m.read,
            write: m.write,
            exec: m.exec,
        };
        // The vDSO family is the kernel's (vvar is VM_IO|VM_PFNMAP): its
        // flags are not the process's to replay.
        let kernel_owned = matches!(
            m.kind,
            MapKind::Vdso | MapKind::Vvar | MapKind::VvarVclock | MapKind::Vsyscall
        );
        let flags = if kernel_owned {
            Vec::new()
        } else {
            vma_attributes(smaps.get(&m.start), m)?
        };
        let backing = match &m.kind {
            MapKind::Vsyscall => continue,
            MapKind::Vdso => Backing::Vdso,
            MapKind::Vvar => Backing::Vvar,
            MapKind::VvarVclock => Backing::VvarVclock,
            MapKind::Heap => Backing::Heap,
            MapKind::Stack => Backing::Stack,
            MapKind::File { path, deleted } => {
                let path = path.to_string_lossy().into_owned();
                if *deleted {
                    if let Some(key) = sysv_key(&path).filter(|_| m.shared) {
                        return Err(unsupported(
                            m,
                            &format!(
                                "System V shared memory (shmget key 0x{key}, shmid {})",
                                m.inode
                            ),
                        ));
                    }
                    if m.shared {
                        // memfd, shared /dev/zero: MAP_SHARED memory whose
                        // only handle is the mapping, kept as an object.
                        shared.backing(pid, m, &path)?
                    } else {
                        return Err(unsupported(m, &format!("a deleted file ({path})")));
                    }
                } else {
                    Backing::File {
                        file: files.index_of(pid, m, &path)?,
                        offset: m.offset,
                    }
                }
            }
            MapKind::AnonNamed { shmem: true, name } => shared.backing(pid, m, name)?,
            MapKind::Anon | MapKind::AnonNamed { .. } | MapKind::Special(_) => {
                if m.shared {
                    shared.backing(pid, m, "/dev/zero (deleted)")?
                } else {
                    Backing::Anonymous
                }
            }
        };
        let vdso_family = matches!(backing, Backing::Vdso | Backing::Vvar | Backing::VvarVclock);
        // Shared memory is stored per object (below); a shared file mapping
        // keeps its data in the file.
        let store_pages = !vdso_family
            && !m.shared
            && !flags.contains(&VmFlag::Droppable)
            && !flags.contains(&VmFlag::WipeOnFork);
        let file_backed = matches!(backing, Backing::File { .. });
        // Only guard and stored pages are kept: the entries of a VMA are
        // read a window at a time (see `Pagemap::for_each`).
        let (mut guards, mut wanted) = (Vec::new(), Vec::new());
        if !vdso_family {
            pagemap.for_each(m.start, m.end, |i, e| {
                if e.guard() {
                    guards.push(i);
                    return;
                }
                let keep = if file_backed {
                    // Written (COW'd) pages are anonymous now.
                    (e.present() && !e.file_or_shared()) || e.swapped()
                } else {
                    // The shared zero page (a read of never-written
                    // memory) reads back as zeros without being stored: a
                    // process that reads a page in each of terabytes of
                    // memory must not make a terabyte image.
                    (e.present() && !zero_pages.contains(e.pfn())) || e.swapped()
                };
                if store_pages && keep {
                    wanted.push(i);
                }
            })?;
        }
        let guard_pages: Vec<PageSpan> = runs(guards.into_iter())
            .into_iter()
            .map(|(page, count)| PageSpan { page, count })
            .collect();
        let mut pages = Vec::new();
        if store_pages {
            let page_runs = runs(wanted.into_iter());
            pages = store(writer, pid, m.start, &page_runs)?;
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot,
            shared: m.shared,
            flags,
            backing,
            pages,
            guard_pages,
        });
    }
    shared.store(writer)?;
    Ok(vmas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(line: &str) -> MapEntry {
        crate::ptrace::procfs::parse_maps(line.as_bytes())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn runs_of_pages() {
        assert_eq!(
            runs([0, 1, 2, 5, 6, 9].into_iter()),
            vec![(0, 3), (5, 2), (9, 1)]
        );
        assert!(runs(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_protection_key_is_refused_naming_the_mapping() {
        let m = map("7f0000000000-7f0000004000 rw-p 00000000 00:00 0\n");
        let tagged = SmapsVma {
            vmflags: vec!["rd".into(), "wr".into()],
            protection_key: 2,
        };
        let err = vma_attributes(Some(&tagged), &m).unwrap_err().to_string();
        assert!(err.contains("0x7f0000000000-0x7f0000004000"), "{err}");
        assert!(err.contains("protection key 2"), "{err}");
        let plain = SmapsVma {
            vmflags: vec![
                "rd".into(),
                "wr".into(),
                "wf".into(),
                "gd".into(),
                "wf".into(),
            ],
            protection_key: 0,
        };
        assert_eq!(
            vma_attributes(Some(&plain), &m).unwrap(),
            vec![VmFlag::GrowsDown, VmFlag::WipeOnFork]
        );
        let huge = SmapsVma {
            vmflags: vec!["ht".into()],
            protection_key: 0,
        };
        assert!(
            vma_attributes(Some(&huge), &m)
                .unwrap_err()
                .to_string()
                .contains("hugetlb")
        );
    }

    #[test]
    fn system_v_segments_are_recognized_by_name() {
        assert_eq!(sysv_key("/SYSV0000abcd"), Some("0000abcd"));
        assert_eq!(sysv_key("/SYSV00000000"), Some("00000000"));
        assert_eq!(sysv_key("/memfd:SYSV00000000"), None);
        assert_eq!(sysv_key("/SYSV123"), None);
        assert_eq!(sysv_key("/SYSVzzzzzzzz"), None);
    }

    #[test]
    fn data_ranges_skip_holes() {
        // SAFETY: memfd_create with a static name; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"ranges".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd owned by nothing else.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(16 * PAGE).unwrap();
        file.write_all_at(&[1; 10], 2 * PAGE + 5).unwrap();
        file.write_all_at(&[2; 4096 * 2], 3 * PAGE).unwrap();
        file.write_all_at(&[3], 9 * PAGE).unwrap();
        assert_eq!(
            data_ranges(&file, 16 * PAGE).unwrap(),
            vec![(2 * PAGE, 5 * PAGE), (9 * PAGE, 10 * PAGE)]
        );
        assert_eq!(
            data_ranges(&file, 4 * PAGE).unwrap(),
            vec![(2 * PAGE, 4 * PAGE)]
        );
    }
}
