//! Page data for the loader: the verified copy of `working-set.img` while
//! the working set loads, and whole chunks of `pages.img`, each checked
//! against its hash before any of its bytes are served, kept in a small
//! cache.
//!
//! The cache is a fixed set of chunk-sized slots in one anonymous mapping
//! populated when the first chunk is read ([`Arena`]: the kernel fills it
//! in bulk), so reading a chunk never page-faults fresh memory — a fault
//! per page of every chunk read cost as much as the read itself. Chunks are
//! read with `pread` into a slot (never served from a mapping of the file:
//! what was verified is what is served, and a file truncated meanwhile
//! gives an error, not `SIGBUS`). A load whose bytes `working-set.img`
//! holds never reads `pages.img`: a chunk it covers entirely is not read at
//! all, one it covers in part once, for its other pages.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

use crate::image::arena::Arena;
use crate::image::working_set_pages::PrefetchedPages;
use crate::image::{ChunkHash, Image, ImageError, limits::PAGES_FILE};

use super::PAGE;

/// Bytes of slots (at least two, at most 64 chunks).
const CACHE_BYTES: u64 = 2 << 20;

/// Verified chunks of one image's `pages.img`.
#[derive(Debug)]
pub(crate) struct Source {
    image: Arc<Image>,
    /// `working-set.img`, checked, until the working set is loaded.
    prefetched: Option<Arc<PrefetchedPages>>,
    /// Made when the first chunk is read, on the loader's thread
    /// (populating it takes a millisecond nobody need wait for).
    arena: Option<Arena>,
    chunk: usize,
    /// The chunk each slot holds.
    slots: Vec<Option<usize>>,
    /// Slots by use, most recent last.
    lru: Vec<usize>,
    /// Bytes read from the file.
    pub(crate) read_bytes: u64,
    /// Time spent reading and verifying chunks.
    pub(crate) read_time: Duration,
}

impl Source {
    pub(crate) fn new(image: Arc<Image>, prefetched: Option<Arc<PrefetchedPages>>) -> Source {
        let chunk = image
            .manifest()
            .pages
            .chunk_size
            .min(image.manifest().pages.size)
            .max(PAGE) as usize;
        let n = (CACHE_BYTES as usize / chunk).clamp(2, 64);
        Source {
            prefetched,
            arena: None,
            chunk,
            slots: vec![None; n],
            lru: (0..n).collect(),
            image,
            read_bytes: 0,
            read_time: Duration::ZERO,
        }
    }

    /// Whether `working-set.img` holds the `len` bytes at `off`.
    pub(crate) fn prefetched(&self, off: u64, len: u64) -> bool {
        self.prefetched.as_ref().is_some_and(|p| p.covers(off, len))
    }

    /// Lets `working-set.img`'s copy go (the working set is in).
    pub(crate) fn drop_prefetched(&mut self) {
        self.prefetched = None;
    }

    fn arena(&self) -> &Arena {
        self.arena.as_ref().expect("made before a chunk is read")
    }

    /// The image's digest (what a recorded working set is bound to).
    pub(crate) fn digest(&self) -> &crate::image::Sha256Digest {
        self.image.digest()
    }

    fn chunk_size(&self) -> u64 {
        self.image.manifest().pages.chunk_size
    }

    /// The `len` bytes at `pages.img` offset `off` (inside one extent of
    /// `working-set.img`, or inside one chunk): from `working-set.img`, or
    /// reading and verifying their chunk (and up to `ahead - 1` chunks
    /// after it) if it is not cached.
    pub(crate) fn bytes(
        &mut self,
        off: u64,
        len: usize,
        ahead: usize,
    ) -> Result<&[u8], ImageError> {
        if self.prefetched(off, len as u64) {
            let p = self.prefetched.as_ref().expect("checked above");
            return Ok(p.get(off, len as u64).expect("checked above"));
        }
        let chunk = self.chunk_size();
        let c = (off / chunk) as usize;
        let at = (off - c as u64 * chunk) as usize;
        let slot = self.slot_of(c, ahead)?;
        Ok(self.arena().slice(slot * self.chunk + at, len))
    }

    /// Copies the page at `pages.img` offset `off` into `dst` (one page).
    pub(crate) fn page(
        &mut self,
        off: u64,
        dst: &mut [u8],
        ahead: usize,
    ) -> Result<(), ImageError> {
        dst.copy_from_slice(self.bytes(off, PAGE as usize, ahead)?);
        Ok(())
    }

    /// Whether `[off, off+len)` lies in one extent of `working-set.img`
    /// or in one chunk ([`Source::bytes`] serves it in one piece).
    pub(crate) fn in_one_piece(&self, off: u64, len: u64) -> bool {
        let chunk = self.chunk_size();
        len > 0 && (self.prefetched(off, len) || off / chunk == (off + len - 1) / chunk)
    }

    /// The slot holding chunk `c`, read (with up to `ahead - 1` chunks
    /// after it not cached yet) into the least recently used slots.
    fn slot_of(&mut self, c: usize, ahead: usize) -> Result<usize, ImageError> {
        if let Some(slot) = self.slots.iter().position(|s| *s == Some(c)) {
            self.touch(slot);
            return Ok(slot);
        }
        if self.arena.is_none() {
            let arena = Arena::new(self.slots.len() * self.chunk).map_err(ImageError::io(
                self.image.dir().join(PAGES_FILE),
                "allocate the loader's chunk cache for",
            ))?;
            self.arena = Some(arena);
        }
        let total = self.image.manifest().pages.chunks.len();
        let ahead = ahead.clamp(1, self.slots.len() / 2).min(total - c);
        let mut first = None;
        for k in c..c + ahead {
            if k > c && self.slots.contains(&Some(k)) {
                break;
            }
            let slot = self.lru[0];
            // Taken before it is filled: a failed read leaves it empty.
            self.slots[slot] = None;
            self.read_into(k, slot)?;
            self.slots[slot] = Some(k);
            self.touch(slot);
            first.get_or_insert(slot);
        }
        // The chunk asked for is the most recently used one.
        let slot = first.expect("at least one chunk read");
        self.touch(slot);
        Ok(slot)
    }

    fn touch(&mut self, slot: usize) {
        if let Some(i) = self.lru.iter().position(|&s| s == slot) {
            self.lru.remove(i);
        }
        self.lru.push(slot);
    }

    /// Reads chunk `c` into `slot` and verifies it.
    fn read_into(&mut self, c: usize, slot: usize) -> Result<(), ImageError> {
        let t0 = Instant::now();
        let r = self.read_into_untimed(c, slot);
        self.read_time += t0.elapsed();
        r
    }

    fn read_into_untimed(&mut self, c: usize, slot: usize) -> Result<(), ImageError> {
        let image = Arc::clone(&self.image);
        let idx = &image.manifest().pages;
        let (off, len) = idx.chunk_range(c);
        let chunk = self.chunk;
        let data = self
            .arena
            .as_mut()
            .expect("made before a chunk is read")
            .slice_mut(slot * chunk, len as usize);
        let mut done = 0usize;
        while done < data.len() {
            // SAFETY: pread into the unfilled rest of a slot of our arena.
            let n = unsafe {
                libc::pread(
                    image.pages_file().as_raw_fd(),
                    data[done..].as_mut_ptr().cast(),
                    data.len() - done,
                    (off + done as u64) as libc::off_t,
                )
            };
            if n == 0 {
                let actual = image.pages_file().metadata().map_or(0, |m| m.len());
                return Err(ImageError::Truncated {
                    file: image.dir().join(PAGES_FILE),
                    expected: idx.size,
                    actual,
                });
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ImageError::Io {
                    path: image.dir().join(PAGES_FILE),
                    op: "read",
                    source: e,
                });
            }
            done += n as usize;
        }
        self.read_bytes += len;
        let found = ChunkHash::of(data);
        let expected = idx.chunks[c];
        if found != expected {
            return Err(ImageError::ChunkCorrupt {
                index: c as u64,
                offset: off,
                len,
                expected: expected.0,
                actual: found.0,
            });
        }
        Ok(())
    }

    /// The fd of `pages.img`.
    pub(crate) fn pages_fd(&self) -> std::os::fd::RawFd {
        self.image.pages_file().as_raw_fd()
    }

    /// The fd of the image directory.
    pub(crate) fn dir_fd(&self) -> std::os::fd::RawFd {
        self.image.dir_fd().as_raw_fd()
    }
}

/// Asks the kernel to start reading the chunks of `pages.img` that hold
/// `spans` (byte ranges, sorted) in the background, one request per run of
/// adjacent chunks: on a cold image the IO then overlaps the rest of the
/// restore, on a warm one it costs a walk of the page cache.
pub(crate) fn read_ahead(image: &Image, spans: impl IntoIterator<Item = (u64, u64)>) {
    let chunk = image.manifest().pages.chunk_size.max(1);
    let advise = |s: u64, e: u64| {
        if e > s {
            let _ = posix_fadvise(
                image.pages_file().as_fd(),
                s as i64,
                (e - s) as i64,
                PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
    };
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in spans {
        let (a, b) = (a / chunk * chunk, b.div_ceil(chunk) * chunk);
        cur = match cur {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                advise(s, e);
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((s, e)) = cur {
        advise(s, e);
    }
}
