//! `working-set.img`: the pages a lazy restore with a working set loads
//! before the process runs, copied out of `pages.img` back to back (REAP,
//! FaaSnap). [`WorkingSetPages`], its index, is the `pages` field of
//! `working-set.json` ([`working_set`](super::working_set)); see the
//! [module docs](super) for where both sit in an image.
//!
//! Why: a working set's pages are scattered over `pages.img`. Loading them
//! from a cold image meant reading and checking every chunk that holds one
//! of them, and reading those chunks again later for their other pages.
//! Stored contiguously they take one sequential read of just their bytes,
//! started as soon as the image is open (on a thread of its own),
//! so that on a cold image the IO overlaps the sandbox's preparation, and
//! the loader never reads a chunk of `pages.img` this file covers.
//!
//! # Contents
//!
//! `extents` are byte ranges of `pages.img` (`{"offset": <page aligned>,
//! "pages": <count ≥ 1>}`), sorted, not overlapping, inside `pages.img`;
//! the file is exactly their bytes in that order, nothing else. The writer
//! ([`super::WorkingSet::save`]) puts in:
//! - the stored pages of the working set's ranges;
//! - every stored page a lazy restore fills before the process runs anyway:
//!   those of VMAs not loaded lazily ([`Vma::loads_lazily`](super::Vma::loads_lazily)) and of
//!   shared-memory objects;
//! - nothing else: ranges that touch are joined, but no gap between two
//!   ranges is filled in. Every page here is read before the process runs;
//!   joining across gaps of up to 4 pages (as the loader joins runs of a
//!   working set read from `pages.img`) stored 40 % more pages for the
//!   bench's function, which met 0 or 1 fault in its first request either
//!   way.
//!
//! # Checks
//!
//! Checked in chunks like `pages.img`: `chunk_size` (a power of two,
//! 64 KiB..=64 MiB), `hash` (`"xxh3-64"`), `chunks` (one hash per chunk,
//! the last chunk may be short); the list of hashes and extents is covered
//! by `working-set.json`'s SHA-256, itself bound to the image's digest.
//! XXH3, not SHA-256, per chunk, for the reason `pages.img` uses it: the
//! check is on the restore's path (a few MiB in a fraction of a
//! millisecond), and protects against corruption, not against whoever can
//! rewrite the image (and its checksums).
//!
//! A restorer opens the file with the checks of the image's own files and
//! its exact recorded size, and checks every chunk before any byte of it is
//! used; a missing, truncated, corrupt or mismatched file is refused
//! ([`ImageError::Io`], [`ImageError::Truncated`],
//! [`ImageError::WorkingSetChunkCorrupt`], [`ImageError::Invalid`]) before
//! the restored process runs. [`verify`](super::verify) also compares every
//! extent with `pages.img`. Without a `working-set.img` (a `working-set.json`
//! of version 1, or none) an image restores as before: its working set, if
//! any, is loaded from `pages.img`.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, PosixFadviseAdvice, openat, posix_fadvise};
use nix::sys::stat::{Mode, fstat};
use serde::{Deserialize, Serialize};

use super::arena::Arena;
use super::encoding::ChunkHash;
use super::error::{ImageError, Result};
use super::limits::{PAGE_SIZE, PAGES_FILE};
use super::manifest::ChunkHashKind;
use super::reader::Image;
use super::working_set::{MAX_WORKING_SET_RANGES, WORKING_SET_FILE, WorkingSet};

/// File name of the working set's pages inside the image directory.
pub const WORKING_SET_PAGES_FILE: &str = "working-set.img";
/// Chunk size the writer uses: the reader reads a chunk at a time, and on
/// a cold file small sequential reads keep up with the kernel's readahead
/// best (4 MiB in 64 KiB reads: 2.5 ms; in 256 KiB reads: 3 ms; in 1 MiB
/// reads: 3.7 ms).
pub const WORKING_SET_CHUNK_BYTES: u64 = 64 << 10;
/// Largest `working-set.img`: it is read whole into the restorer's memory
/// before the process runs, so it is bounded far below `pages.img` (a
/// first request's pages are megabytes).
pub const MAX_WORKING_SET_PAGES_BYTES: u64 = 1 << 30;

pub(super) const TMP_FILE: &str = "working-set.img.tmp";

/// A byte range of `pages.img`, whole pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extent {
    /// Offset in `pages.img`, page aligned.
    pub offset: u64,
    /// Number of pages, at least 1.
    pub pages: u64,
}

impl Extent {
    /// Length in bytes (saturating; exact in a validated index).
    pub fn bytes(&self) -> u64 {
        self.pages.saturating_mul(PAGE_SIZE)
    }

    /// End offset (exclusive; exact in a validated index).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.bytes())
    }
}

/// Index of `working-set.img`: its size, chunk hashes, and which bytes of
/// `pages.img` it holds (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingSetPages {
    /// Always `working-set.img`; never used as a path.
    pub file: String,
    /// Exact size of the file in bytes: the extents' total.
    pub size: u64,
    /// Chunk size in bytes: a power of two within
    /// [`MIN_CHUNK_BYTES`](super::limits::MIN_CHUNK_BYTES)..=
    /// [`MAX_CHUNK_BYTES`](super::limits::MAX_CHUNK_BYTES).
    pub chunk_size: u64,
    /// Hash function of `chunks`.
    pub hash: ChunkHashKind,
    /// Hash of each chunk, in order: `ceil(size / chunk_size)` entries.
    pub chunks: Vec<ChunkHash>,
    /// The ranges of `pages.img` the file holds, in order.
    pub extents: Vec<Extent>,
}

fn invalid(field: impl AsRef<str>, reason: impl Into<String>) -> ImageError {
    ImageError::invalid(
        format!("{WORKING_SET_FILE} pages.{}", field.as_ref()),
        reason,
    )
}

impl WorkingSetPages {
    /// The rules every index follows, whoever made it.
    pub(super) fn validate(&self) -> Result<()> {
        if self.file != WORKING_SET_PAGES_FILE {
            return Err(invalid(
                "file",
                format!("{:?}: must be {WORKING_SET_PAGES_FILE:?}", self.file),
            ));
        }
        if !self.size.is_multiple_of(PAGE_SIZE) {
            return Err(invalid(
                "size",
                format!("{} is not a whole number of pages", self.size),
            ));
        }
        if self.size > MAX_WORKING_SET_PAGES_BYTES {
            return Err(ImageError::limit(
                format!("{WORKING_SET_PAGES_FILE} size"),
                self.size,
                MAX_WORKING_SET_PAGES_BYTES,
            ));
        }
        super::validate::chunking(
            &format!("{WORKING_SET_FILE} pages"),
            self.size,
            self.chunk_size,
            self.chunks.len(),
        )?;
        if self.extents.len() > MAX_WORKING_SET_RANGES {
            return Err(ImageError::limit(
                format!("{WORKING_SET_FILE} pages.extents"),
                self.extents.len() as u64,
                MAX_WORKING_SET_RANGES as u64,
            ));
        }
        let mut prev_end = 0u64;
        let mut total = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            let field = format!("extents[{i}]");
            if !e.offset.is_multiple_of(PAGE_SIZE) {
                return Err(invalid(
                    field,
                    format!("offset {} is not page aligned", e.offset),
                ));
            }
            if e.pages == 0 {
                return Err(invalid(field, "an extent of 0 pages"));
            }
            let end = e
                .pages
                .checked_mul(PAGE_SIZE)
                .and_then(|l| e.offset.checked_add(l))
                .ok_or_else(|| invalid(&field, "offset + pages overflows"))?;
            if e.offset < prev_end {
                return Err(invalid(
                    field,
                    format!(
                        "offset {} is not above the previous extent's end {prev_end}",
                        e.offset
                    ),
                ));
            }
            prev_end = end;
            total = total.saturating_add(end - e.offset);
        }
        if total != self.size {
            return Err(invalid(
                "size",
                format!(
                    "{} bytes, the extents hold {total} bytes of pages.img",
                    self.size
                ),
            ));
        }
        Ok(())
    }

    /// Checks that every extent lies inside `image`'s `pages.img`.
    pub(super) fn check_against(&self, image: &Image) -> Result<()> {
        let size = image.manifest().pages.size;
        match self.extents.iter().position(|e| e.end() > size) {
            Some(i) => Err(invalid(
                format!("extents[{i}]"),
                format!(
                    "ends at byte {}, beyond pages.img's {size} bytes",
                    self.extents[i].end()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Byte range `(offset, len)` of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> (u64, u64) {
        let off = (index as u64).saturating_mul(self.chunk_size);
        (off, self.chunk_size.min(self.size.saturating_sub(off)))
    }

    /// Opens `working-set.img` of `image` (checked as the image's own
    /// files are) and checks its size.
    pub(crate) fn open(&self, image: &Image) -> Result<PagesFile> {
        let (file, st, path) = image.open_member(WORKING_SET_PAGES_FILE)?;
        self.check_size(&path, st.st_size as u64)?;
        Ok(PagesFile {
            file,
            path,
            index: self.clone(),
        })
    }

    /// Checks that the file at `path` has the recorded size.
    fn check_size(&self, path: &Path, actual: u64) -> Result<()> {
        if actual < self.size {
            return Err(ImageError::Truncated {
                file: path.to_path_buf(),
                expected: self.size,
                actual,
            });
        }
        if actual > self.size {
            return Err(ImageError::invalid(
                WORKING_SET_PAGES_FILE,
                format!(
                    "{actual} bytes, {WORKING_SET_FILE} records {}: trailing data",
                    self.size
                ),
            ));
        }
        Ok(())
    }
}

/// `working-set.img`, open, with the recorded size: ready to read.
#[derive(Debug)]
pub(crate) struct PagesFile {
    file: File,
    path: PathBuf,
    index: WorkingSetPages,
}

impl PagesFile {
    /// Reads the whole file, checking each chunk against its hash.
    pub(crate) fn read(self) -> Result<PrefetchedPages> {
        let t0 = Instant::now();
        let idx = &self.index;
        // The sandbox's init is forked while this is read.
        let mut data = Arena::new_unshared(idx.size as usize)
            .map_err(ImageError::io(&self.path, "allocate memory for"))?;
        // All of it, in order, a chunk at a time: the kernel reads ahead
        // (ever larger windows, asynchronously) while chunks are copied and
        // checked. Measured on a cold 4 MiB file in 256 KiB reads: 3 ms,
        // against 5.5 ms in one pread and 4.5-7 ms after
        // POSIX_FADV_WILLNEED of it all.
        let _ = posix_fadvise(
            self.file.as_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        for i in 0..idx.chunks.len() {
            let (off, len) = idx.chunk_range(i);
            let buf = data.slice_mut(off as usize, len as usize);
            if let Err(e) = self.file.read_exact_at(buf, off) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    let actual = fstat(&self.file).map_or(0, |s| s.st_size as u64);
                    return Err(ImageError::Truncated {
                        file: self.path,
                        expected: idx.size,
                        actual,
                    });
                }
                return Err(ImageError::io(&self.path, "read")(e));
            }
            let actual = ChunkHash::of(buf);
            if actual != idx.chunks[i] {
                return Err(ImageError::WorkingSetChunkCorrupt {
                    index: i as u64,
                    offset: off,
                    len,
                    expected: idx.chunks[i].0,
                    actual: actual.0,
                });
            }
        }
        let mut at = 0usize;
        let extents = idx
            .extents
            .iter()
            .map(|e| {
                let x = (e.offset, e.end(), at);
                at += e.bytes() as usize;
                x
            })
            .collect();
        Ok(PrefetchedPages {
            data,
            extents,
            read_time: t0.elapsed(),
        })
    }

    /// [`PagesFile::read`] on a thread of its own: the restore goes on
    /// meanwhile and takes the pages with [`PendingPages::wait`].
    pub(crate) fn read_in_background(self) -> PendingPages {
        let path = self.path.clone();
        let thread = std::thread::Builder::new()
            .name("sprout-ws-read".into())
            .spawn(move || self.read())
            .ok();
        PendingPages { path, thread }
    }
}

/// [`PagesFile::read`] under way on a thread of its own
/// ([`PagesFile::read_in_background`]). Dropped before it is waited for,
/// it waits for the read to end (no thread outlives it).
#[derive(Debug)]
pub(crate) struct PendingPages {
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<Result<PrefetchedPages>>>,
}

impl PendingPages {
    /// The pages, checked, once read; or why not.
    pub(crate) fn wait(mut self) -> Result<PrefetchedPages> {
        match self.thread.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Err(ImageError::io(&self.path, "read on a thread of its own")(
                std::io::Error::other("no thread could be started"),
            )),
        }
    }
}

impl Drop for PendingPages {
    fn drop(&mut self) {
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// The contents of `working-set.img`, every chunk checked: copies of the
/// `pages.img` bytes of its extents.
#[derive(Debug)]
pub(crate) struct PrefetchedPages {
    data: Arena,
    /// `(pages.img offset, end, offset in data)` per extent, sorted.
    extents: Vec<(u64, u64, usize)>,
    read_time: Duration,
}

impl PrefetchedPages {
    /// The `len` bytes at `pages.img` offset `offset`, if one extent holds
    /// all of them.
    pub(crate) fn get(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let i = self.extents.partition_point(|e| e.1 <= offset);
        let &(start, end, at) = self.extents.get(i)?;
        (start <= offset && len <= end - offset).then(|| {
            self.data
                .slice(at + (offset - start) as usize, len as usize)
        })
    }

    /// Whether one extent holds the `len` bytes at `offset`.
    pub(crate) fn covers(&self, offset: u64, len: u64) -> bool {
        self.get(offset, len).is_some()
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// How long reading and checking it took.
    pub(crate) fn read_time(&self) -> Duration {
        self.read_time
    }

    /// The extents it holds, as `(offset, end)` in `pages.img`.
    pub(crate) fn extents(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.extents.iter().map(|&(s, e, _)| (s, e))
    }
}

/// The `pages.img` extents a lazy restore with `ws` loads before the
/// process runs (see the [module docs](self)).
pub(crate) fn extents_for(image: &Image, ws: &WorkingSet) -> Vec<Extent> {
    let m = image.manifest();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let ranges = ws.ranges();
    for v in &m.vmas {
        if !v.loads_lazily() {
            spans.extend(v.pages.iter().map(|r| (r.offset, r.offset + r.len())));
            continue;
        }
        let from = ranges.partition_point(|r| r.end() <= v.start);
        for wr in ranges[from..].iter().take_while(|r| r.start < v.end) {
            let first = v
                .pages
                .partition_point(|r| r.addr(v.start) + r.len() <= wr.start);
            for r in v.pages[first..]
                .iter()
                .take_while(|r| r.addr(v.start) < wr.end())
            {
                let a = r.addr(v.start);
                let (s, e) = (a.max(wr.start), (a + r.len()).min(wr.end()));
                if s < e {
                    spans.push((r.offset + (s - a), r.offset + (e - a)));
                }
            }
        }
    }
    for o in &m.shared_memory {
        spans.extend(o.pages.iter().map(|r| (r.offset, r.offset + r.len())));
    }
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter()
        .map(|(s, e)| Extent {
            offset: s,
            pages: (e - s) / PAGE_SIZE,
        })
        .collect()
}

/// Writes `working-set.img.tmp` into the image directory (`dir_fd`): the
/// bytes of `extents` of `image`'s `pages.img`, each chunk of it checked
/// as it is read; fsynced. Its index. The caller renames it into place or
/// removes it.
pub(super) fn write_tmp(
    image: &Image,
    dir_fd: BorrowedFd<'_>,
    dir: &Path,
    extents: Vec<Extent>,
) -> Result<WorkingSetPages> {
    let tmp_path = dir.join(TMP_FILE);
    let file = openat(
        dir_fd,
        TMP_FILE,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(ImageError::errno(&tmp_path, "create"))?;
    let mut out = ChunkedWriter {
        file: File::from(file),
        path: &tmp_path,
        buf: vec![0u8; WORKING_SET_CHUNK_BYTES as usize],
        filled: 0,
        chunks: Vec::new(),
        size: 0,
    };
    let mut pages = PagesReader::new(image);
    for e in &extents {
        let mut off = e.offset;
        while off < e.end() {
            let (chunk_start, data) = pages.chunk_at(off)?;
            let upto = e.end().min(chunk_start + data.len() as u64);
            out.write(&data[(off - chunk_start) as usize..(upto - chunk_start) as usize])?;
            off = upto;
        }
    }
    let (chunks, size) = out.finish()?;
    Ok(WorkingSetPages {
        file: WORKING_SET_PAGES_FILE.into(),
        size,
        chunk_size: WORKING_SET_CHUNK_BYTES,
        hash: ChunkHashKind::Xxh3_64,
        chunks,
        extents,
    })
}

/// Chunks of `pages.img`, read whole and checked, the last one kept.
struct PagesReader<'a> {
    image: &'a Image,
    buf: Vec<u8>,
    chunk: Option<usize>,
}

impl<'a> PagesReader<'a> {
    fn new(image: &'a Image) -> PagesReader<'a> {
        PagesReader {
            image,
            buf: Vec::new(),
            chunk: None,
        }
    }

    /// The checked chunk holding `pages.img` offset `off`: its offset and
    /// bytes.
    fn chunk_at(&mut self, off: u64) -> Result<(u64, &[u8])> {
        let idx = &self.image.manifest().pages;
        let c = (off / idx.chunk_size) as usize;
        let (start, len) = idx.chunk_range(c);
        if self.chunk != Some(c) {
            self.chunk = None;
            self.buf.resize(len as usize, 0);
            let path = || self.image.dir().join(PAGES_FILE);
            self.image
                .pages_file()
                .read_exact_at(&mut self.buf, start)
                .map_err(|e| ImageError::io(path(), "read")(e))?;
            let actual = ChunkHash::of(&self.buf);
            if actual != idx.chunks[c] {
                return Err(ImageError::ChunkCorrupt {
                    index: c as u64,
                    offset: start,
                    len,
                    expected: idx.chunks[c].0,
                    actual: actual.0,
                });
            }
            self.chunk = Some(c);
        }
        Ok((start, &self.buf))
    }
}

/// Appends data to a file in chunks, hashing each.
struct ChunkedWriter<'a> {
    file: File,
    path: &'a Path,
    buf: Vec<u8>,
    filled: usize,
    chunks: Vec<ChunkHash>,
    size: u64,
}

impl ChunkedWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(self.buf.len() - self.filled);
            self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        use std::io::Write as _;
        let data = &self.buf[..self.filled];
        self.chunks.push(ChunkHash::of(data));
        self.file
            .write_all(data)
            .map_err(ImageError::io(self.path, "write"))?;
        self.size += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    /// Flushes, fsyncs; the chunk hashes and size.
    fn finish(mut self) -> Result<(Vec<ChunkHash>, u64)> {
        if self.filled > 0 {
            self.flush()?;
        }
        self.file
            .sync_all()
            .map_err(ImageError::io(self.path, "fsync"))?;
        Ok((self.chunks, self.size))
    }
}

/// Checks that `pages` (read and checked) holds the bytes of `pages.img`
/// at each of its extents ([`verify`](super::verify)).
pub(super) fn matches_pages_file(image: &Image, pages: &PrefetchedPages) -> Result<()> {
    let mut reader = PagesReader::new(image);
    for (i, (start, end)) in pages.extents().enumerate() {
        let mut off = start;
        while off < end {
            let (chunk_start, data) = reader.chunk_at(off)?;
            let upto = end.min(chunk_start + data.len() as u64);
            let want = &data[(off - chunk_start) as usize..(upto - chunk_start) as usize];
            if pages.get(off, upto - off) != Some(want) {
                return Err(ImageError::invalid(
                    WORKING_SET_PAGES_FILE,
                    format!(
                        "extent {i} differs from pages.img in bytes {off}..{upto} of pages.img"
                    ),
                ));
            }
            off = upto;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(extents: &[(u64, u64)]) -> WorkingSetPages {
        let extents: Vec<Extent> = extents
            .iter()
            .map(|&(offset, pages)| Extent { offset, pages })
            .collect();
        let size = extents.iter().map(|e| e.bytes()).sum::<u64>();
        WorkingSetPages {
            file: WORKING_SET_PAGES_FILE.into(),
            size,
            chunk_size: 64 << 10,
            hash: ChunkHashKind::Xxh3_64,
            chunks: vec![ChunkHash(0); size.div_ceil(64 << 10) as usize],
            extents,
        }
    }

    #[test]
    fn indexes_follow_the_rules() {
        index(&[(0, 2), (0x4000, 20), (0x100000, 1)])
            .validate()
            .unwrap();
        index(&[]).validate().unwrap();
        let cases: [(WorkingSetPages, &str); 6] = [
            (index(&[(0x1000, 2), (0x2000, 1)]), "previous extent"),
            (index(&[(0x1001, 1)]), "page aligned"),
            (index(&[(0x1000, 0)]), "0 pages"),
            (
                WorkingSetPages {
                    size: 0x2000,
                    ..index(&[(0, 1)])
                },
                "extents hold",
            ),
            (
                WorkingSetPages {
                    chunks: vec![],
                    ..index(&[(0, 1)])
                },
                "expected 1",
            ),
            (
                WorkingSetPages {
                    file: "../pages.img".into(),
                    ..index(&[(0, 1)])
                },
                "must be",
            ),
        ];
        for (ix, want) in cases {
            match ix.validate() {
                Err(ImageError::Invalid { field, reason }) => assert!(
                    field.starts_with("working-set.json pages.") && reason.contains(want),
                    "{field}: {reason}"
                ),
                other => panic!("{ix:?}: {other:?}"),
            }
        }
        let huge = index(&[(!0xfff, 2)]);
        assert!(huge.validate().is_err());
        // Read whole before the process runs: bounded.
        let big = index(&[(0, (MAX_WORKING_SET_PAGES_BYTES / PAGE_SIZE) + 1)]);
        assert!(
            matches!(big.validate(), Err(ImageError::Limit { .. })),
            "{:?}",
            big.validate()
        );
        index(&[(0, MAX_WORKING_SET_PAGES_BYTES / PAGE_SIZE)])
            .validate()
            .unwrap();
    }

    #[test]
    fn prefetched_pages_answer_by_pages_file_offset() {
        let mut data = Arena::new(3 * 4096).unwrap();
        for (i, b) in data.slice_mut(0, 3 * 4096).iter_mut().enumerate() {
            *b = (i / 4096) as u8 + 1;
        }
        let p = PrefetchedPages {
            data,
            extents: vec![(0x10000, 0x12000, 0), (0x20000, 0x21000, 0x2000)],
            read_time: Duration::ZERO,
        };
        assert_eq!(p.get(0x11000, 4096).unwrap()[0], 2);
        assert_eq!(p.get(0x10000, 0x2000).unwrap().len(), 0x2000);
        assert_eq!(p.get(0x20000, 4096).unwrap()[4095], 3);
        // Across the end of an extent, between extents, past the last.
        assert!(p.get(0x11000, 0x2000).is_none());
        assert!(p.get(0x12000, 4096).is_none());
        assert!(p.get(0x21000, 4096).is_none());
        assert!(p.covers(0x10000, 4096) && !p.covers(0xf000, 4096));
        assert_eq!(p.len(), 3 * 4096);
    }
}
