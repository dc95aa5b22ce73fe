//! The address space: every VMA with its protections, flags and backing,
//! and the pages that must be stored (pitfalls §10).
//!
//! Stored: present or swapped pages of private anonymous memory (heap,
//! stack, anonymous mappings) and the pages of private file mappings that
//! were written (pagemap bit 61 clear: no longer the file's page cache).
//! Never stored: file pages never written (they come from the file at
//! restore), `MAP_DROPPABLE`/`MADV_WIPEONFORK` memory (recreated zeroed,
//! pitfalls §0.5), the vDSO family (moved from the restoring kernel's).

use std::collections::HashMap;

use crate::image::{
    Backing, FileRecord, ImageWriter, PageRun, PageSpan, Prot, SharedObject, VmFlag, Vma,
};
use crate::proc::{self, Pagemap};
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
        let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let file = std::fs::File::open(&link).map_err(|source| DumpError::Syscall {
            what: "opening a mapped file through /proc/PID/map_files",
            source,
        })?;
        let record = crate::image::file_record(&file, path)?;
        let i = self.records.len() as u32;
        self.records.push(record);
        self.index.insert(path.to_string(), i);
        Ok(i)
    }
}

fn vm_flags(names: &[String], m: &MapEntry) -> Result<Vec<VmFlag>, DumpError> {
    let mut out = Vec::new();
    for n in names {
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
            _ => continue,
        };
        out.push(f);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn unsupported(m: &MapEntry, what: &str) -> DumpError {
    DumpError::Unsupported(format!(
        "the mapping at {:#x}-{:#x} is {what}, which sprout cannot checkpoint",
        m.start, m.end
    ))
}

fn shared_object(shared: &mut Vec<SharedObject>, m: &MapEntry, name: &str) -> Backing {
    let object = shared.len() as u32;
    shared.push(SharedObject {
        size: m.end - m.start,
        name: name.to_string(),
        pages: Vec::new(),
    });
    Backing::SharedMemory { object, offset: 0 }
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

/// Dumps every VMA of `pid` (all threads stopped) into `writer`.
pub(super) fn dump_memory(
    writer: &mut ImageWriter,
    pid: Tid,
    maps: &[MapEntry],
    files: &mut Files,
    shared: &mut Vec<SharedObject>,
) -> Result<Vec<Vma>, DumpError> {
    let vmflags = proc::smaps_vmflags(pid)?;
    let pagemap = Pagemap::open(pid)?;
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
            vm_flags(
                vmflags.get(&m.start).map(Vec::as_slice).unwrap_or_default(),
                m,
            )?
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
                    if m.shared {
                        // memfd, shared /dev/zero, SysV shm: MAP_SHARED
                        // memory, kept as one shared object.
                        shared_object(shared, m, &path)
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
            MapKind::AnonNamed { shmem: true, name } => shared_object(shared, m, name),
            MapKind::Anon | MapKind::AnonNamed { .. } | MapKind::Special(_) => {
                if m.shared {
                    shared_object(shared, m, "/dev/zero (deleted)")
                } else {
                    Backing::Anonymous
                }
            }
        };
        let vdso_family = matches!(backing, Backing::Vdso | Backing::Vvar | Backing::VvarVclock);
        let store_pages = !vdso_family
            && !flags.contains(&VmFlag::Droppable)
            && !flags.contains(&VmFlag::WipeOnFork)
            // A shared file mapping keeps its data in the file.
            && (!m.shared || matches!(backing, Backing::SharedMemory { .. }));
        let entries = if vdso_family {
            Vec::new()
        } else {
            pagemap.range(m.start, m.end)?
        };
        let guard_pages: Vec<PageSpan> = runs(
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.guard())
                .map(|(i, _)| i as u64),
        )
        .into_iter()
        .map(|(page, count)| PageSpan { page, count })
        .collect();
        let mut pages = Vec::new();
        if store_pages {
            let file_backed = matches!(backing, Backing::File { .. });
            let wanted = entries.iter().enumerate().filter(|(_, e)| {
                if e.guard() {
                    return false;
                }
                if file_backed {
                    // Written (COW'd) pages are anonymous now.
                    (e.present() && !e.file_or_shared()) || e.swapped()
                } else {
                    e.present() || e.swapped()
                }
            });
            let page_runs = runs(wanted.map(|(i, _)| i as u64));
            let stored = store(writer, pid, m.start, &page_runs)?;
            if let Backing::SharedMemory { object, .. } = backing {
                shared[object as usize].pages = stored;
            } else {
                pages = stored;
            }
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
    Ok(vmas)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_of_pages() {
        assert_eq!(
            super::runs([0, 1, 2, 5, 6, 9].into_iter()),
            vec![(0, 3), (5, 2), (9, 1)]
        );
        assert!(super::runs(std::iter::empty()).is_empty());
    }
}
