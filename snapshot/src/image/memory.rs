//! The address space: VMAs, the runs of their pages stored in `pages.img`,
//! the files they map and shared-memory objects.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::encoding::{HexBytes, Sha256Digest, hex};
use super::limits::PAGE_SIZE;

/// One mapping of the dumped address space (a line of `/proc/PID/maps`
/// with its smaps `VmFlags`). `[vsyscall]`, above the user address space,
/// is not recorded. Protection keys are not either: a VMA with a non-zero
/// key makes the dump fail (pitfalls §10.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vma {
    /// First address, page aligned, at least [`MIN_MAP_ADDR`](super::limits::MIN_MAP_ADDR).
    #[serde(with = "hex")]
    pub start: u64,
    /// End address (exclusive), page aligned, above `start`, at most
    /// [`TASK_SIZE_MAX`](super::limits::TASK_SIZE_MAX). VMAs are sorted by
    /// address and do not overlap.
    #[serde(with = "hex")]
    pub end: u64,
    /// Protection, spelled as in maps: `"r-x"`.
    pub prot: Prot,
    /// `MAP_SHARED` (maps shows `s`). Only file and shared-memory backings
    /// may be shared.
    pub shared: bool,
    /// smaps `VmFlags` the restorer replays (pitfalls §10.2), each at most
    /// once. Flags the restorer cannot replay (`ht`, `ss`, `io`, `pf`, …)
    /// make the dump fail; a reader refuses them as unknown.
    pub flags: Vec<VmFlag>,
    /// What backs the mapping.
    pub backing: Backing,
    /// Runs of this VMA's pages stored in `pages.img`, sorted by page, not
    /// overlapping, inside the VMA. Pages not listed read as zero for
    /// anonymous memory and as the file's contents for file mappings (pages
    /// of private file mappings never written are not stored). Empty for
    /// vDSO-family, shared, `dp` and `wf` VMAs.
    pub pages: Vec<PageRun>,
    /// Guard pages installed with `MADV_GUARD_INSTALL` (glibc ≥ 2.42 thread
    /// stacks; pagemap bit 58 or `PAGE_IS_GUARD`): page-table markers, not
    /// VMAs, re-installed by the restorer (pitfalls §10.3). Sorted, not
    /// overlapping, inside the VMA, disjoint from `pages`.
    pub guard_pages: Vec<PageSpan>,
}

impl Vma {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the VMA is empty (never true in a valid image).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// Whether the VMA has `flag`.
    pub fn has(&self, flag: VmFlag) -> bool {
        self.flags.contains(&flag)
    }

    /// Whether a lazy restore may leave its stored pages to the loader
    /// (userfaultfd): private anonymous memory (missing mode serves
    /// anonymous, shmem and hugetlb memory only, so private file mappings
    /// are filled up front), not locked (`mlock` populates it at once), not
    /// droppable or wiped on fork, with pages.
    pub fn loads_lazily(&self) -> bool {
        matches!(
            self.backing,
            Backing::Anonymous | Backing::Heap | Backing::Stack
        ) && !self.shared
            && !self.pages.is_empty()
            && !self.has(VmFlag::Locked)
            && !self.has(VmFlag::Droppable)
            && !self.has(VmFlag::WipeOnFork)
    }
}

/// Memory protection of a VMA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prot {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
}

impl Prot {
    /// `PROT_*` bits for `mmap`/`mprotect`.
    pub fn bits(self) -> i32 {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
            | (if self.exec { libc::PROT_EXEC } else { 0 })
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x')
        )
    }
}

impl std::str::FromStr for Prot {
    type Err = String;
    fn from_str(s: &str) -> Result<Prot, String> {
        let b = s.as_bytes();
        let bit = |i: usize, ch: u8| match b.get(i) {
            Some(&c) if c == ch => Ok(true),
            Some(b'-') => Ok(false),
            _ => Err(format!(
                "{s:?}: expected protection as \"rwx\" with - for absent bits"
            )),
        };
        if b.len() != 3 {
            return Err(format!("{s:?}: expected 3 characters such as \"r-x\""));
        }
        Ok(Prot {
            read: bit(0, b'r')?,
            write: bit(1, b'w')?,
            exec: bit(2, b'x')?,
        })
    }
}

impl Serialize for Prot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Prot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Prot;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a protection string such as \"r-x\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Prot, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// smaps `VmFlags` that a restore replays, by their two-letter smaps names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VmFlag {
    /// `gd`: grows down (`MAP_GROWSDOWN`).
    #[serde(rename = "gd")]
    GrowsDown,
    /// `lo`: locked (`mlock`).
    #[serde(rename = "lo")]
    Locked,
    /// `nr`: no swap reservation (`MAP_NORESERVE`).
    #[serde(rename = "nr")]
    NoReserve,
    /// `dp`: droppable (`MAP_DROPPABLE`): recreated zero-filled, never from
    /// the image (vDSO getrandom state, pitfalls §0.5).
    #[serde(rename = "dp")]
    Droppable,
    /// `sr`: `MADV_SEQUENTIAL`.
    #[serde(rename = "sr")]
    SeqRead,
    /// `rr`: `MADV_RANDOM`.
    #[serde(rename = "rr")]
    RandRead,
    /// `dc`: `MADV_DONTFORK`.
    #[serde(rename = "dc")]
    DontCopy,
    /// `dd`: `MADV_DONTDUMP`.
    #[serde(rename = "dd")]
    DontDump,
    /// `mg`: `MADV_MERGEABLE`.
    #[serde(rename = "mg")]
    Mergeable,
    /// `hg`: `MADV_HUGEPAGE`.
    #[serde(rename = "hg")]
    HugePage,
    /// `nh`: `MADV_NOHUGEPAGE`.
    #[serde(rename = "nh")]
    NoHugePage,
    /// `wf`: `MADV_WIPEONFORK`: recreated zero-filled, never from the image.
    #[serde(rename = "wf")]
    WipeOnFork,
}

/// What backs a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backing {
    /// Private anonymous memory. Restored anonymous and filled from the
    /// pages file; never mapped `MAP_PRIVATE` from it (pitfalls §0.1).
    Anonymous,
    /// A file of the rootfs: `files[file]` from byte `offset`. Pages of a
    /// private mapping written since it was mapped are stored; the rest come
    /// from the file.
    File {
        /// Index into [`ManifestBody::files`](super::ManifestBody::files).
        file: u32,
        /// File offset of `start`, page aligned.
        #[serde(with = "hex")]
        offset: u64,
    },
    /// `[heap]`: anonymous, between `start_brk` and `brk`.
    Heap,
    /// `[stack]`: the main thread's stack, anonymous.
    Stack,
    /// `[vdso]`: moved from the restoring kernel's, never stored.
    Vdso,
    /// `[vvar]`: moved with the vDSO.
    Vvar,
    /// `[vvar_vclock]`: moved with the vDSO.
    VvarVclock,
    /// `MAP_SHARED` anonymous memory, shmem or memfd (pitfalls §10.4):
    /// `shared_memory[object]` from byte `offset`. Several VMAs may map one
    /// object; its pages are stored with the object.
    SharedMemory {
        /// Index into [`ManifestBody::shared_memory`](super::ManifestBody::shared_memory).
        object: u32,
        /// Offset into the object of `start`, page aligned.
        #[serde(with = "hex")]
        offset: u64,
    },
}

/// A run of consecutive pages stored contiguously in `pages.img`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRun {
    /// First page, counted from the start of the VMA (or shared object).
    pub page: u64,
    /// Number of pages, at least 1.
    pub count: u64,
    /// Byte offset of the first page in `pages.img`, page aligned; the run
    /// lies inside the file. Runs may share file data (a writer may
    /// deduplicate).
    pub offset: u64,
}

impl PageRun {
    /// Length in bytes (saturating; exact in a validated image).
    pub fn len(&self) -> u64 {
        self.count.saturating_mul(PAGE_SIZE)
    }

    /// Whether the run holds no page (never true in a valid image).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Address of the run's first page inside a VMA starting at `vma_start`.
    pub fn addr(&self, vma_start: u64) -> u64 {
        vma_start.saturating_add(self.page.saturating_mul(PAGE_SIZE))
    }
}

/// A run of pages of a VMA, counted from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageSpan {
    /// First page.
    pub page: u64,
    /// Number of pages, at least 1.
    pub count: u64,
}

/// A file mapped by some VMA, identified by content, not by inode: the
/// restoring rootfs is another copy of the same files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Absolute, normalized path inside the container's rootfs (no `.` or
    /// `..` components, no `//`, no NUL, at most 4095 bytes); opened with
    /// [`open_in_root`](super::open_in_root).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents, checked by
    /// [`file_matches`](super::file_matches).
    pub sha256: Sha256Digest,
    /// ELF build-id, if the file has one. Informational (error messages,
    /// debugging); `sha256` decides.
    pub build_id: Option<HexBytes>,
}

/// A shared-memory object (`MAP_SHARED|MAP_ANONYMOUS`, shmem, memfd)
/// mapped by one or more VMAs (pitfalls §10.4), identified at dump by the
/// device and inode of its shmem file. A restorer maps one memfd at every
/// VMA that names it, so writes through one show through the others;
/// templates refuse images that have any (fork would share it between
/// instances). System V segments are refused at dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedObject {
    /// Size in bytes, page aligned, above 0.
    pub size: u64,
    /// memfd name or `/dev/zero`, informational.
    pub name: String,
    /// Its pages stored in `pages.img`, counted from the object's start:
    /// every page that held data, whichever VMAs mapped it (or none).
    pub pages: Vec<PageRun>,
}
