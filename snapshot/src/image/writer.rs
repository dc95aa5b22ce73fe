//! [`ImageWriter`]: creates an image directory, streams page data into
//! `pages.img` while hashing it chunk by chunk, and writes the manifest
//! last, atomically.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

use super::encoding::ChunkHash;
use super::error::{ImageError, Result};
use super::limits::*;
use super::manifest::{ChunkHashKind, ManifestBody, PagesIndex, encode_manifest};
use super::memory::PageRun;

const MANIFEST_TMP: &str = "manifest.json.tmp";

/// Where a piece of page data landed in `pages.img`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// Byte offset in `pages.img`, page aligned.
    pub offset: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

impl PageRef {
    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }

    /// The [`PageRun`] for these pages placed at page `page` of a VMA.
    pub fn run_at(&self, page: u64) -> PageRun {
        PageRun {
            page,
            count: self.pages(),
            offset: self.offset,
        }
    }
}

/// Writes one image directory.
///
/// Page data is appended in order; each append returns where it landed.
/// [`finish`](ImageWriter::finish) then writes the manifest. Nothing in the
/// directory is a valid image before `finish` returns: a writer dropped
/// without finishing, or after an error, removes what it wrote (and the
/// directory, if it created it).
///
/// Writes go through `write(2)` from a chunk-sized buffer that is hashed
/// while still in cache; the pages file is not written through a shared
/// mapping, where a full disk would raise SIGBUS instead of an error.
#[derive(Debug)]
pub struct ImageWriter {
    dir: PathBuf,
    dir_fd: OwnedFd,
    pages: File,
    created_dir: bool,
    chunk_size: u64,
    buf: Vec<u8>,
    filled: usize,
    chunks: Vec<ChunkHash>,
    written: u64,
    failed: bool,
    finished: bool,
}

fn check_owner(path: &Path, st: &nix::sys::stat::FileStat) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != 0 && st.st_uid != me {
        return Err(ImageError::BadPermissions {
            path: path.to_path_buf(),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            reason: "owned by neither root nor the caller",
        });
    }
    Ok(())
}

impl ImageWriter {
    /// Creates the image directory `dir` (mode 0700; its parent must
    /// exist) or takes an existing empty one (and sets it to 0700), with the
    /// default chunk size.
    pub fn create(dir: impl AsRef<Path>) -> Result<ImageWriter> {
        Self::with_chunk_size(dir, DEFAULT_CHUNK_BYTES)
    }

    /// As [`create`](ImageWriter::create), with a chunk size: a power of two
    /// within [`MIN_CHUNK_BYTES`]..=[`MAX_CHUNK_BYTES`].
    pub fn with_chunk_size(dir: impl AsRef<Path>, chunk_size: u64) -> Result<ImageWriter> {
        let dir = dir.as_ref().to_path_buf();
        if !chunk_size.is_power_of_two()
            || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_size)
        {
            return Err(ImageError::invalid(
                "chunk_size",
                format!(
                    "{chunk_size} is not a power of two in {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}"
                ),
            ));
        }
        let created_dir = match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(ImageError::io(&dir, "create image directory"))?;
                true
            }
            Err(e) => return Err(ImageError::io(&dir, "stat")(e)),
            Ok(m) if m.is_dir() => {
                let mut entries =
                    fs::read_dir(&dir).map_err(ImageError::io(&dir, "read directory"))?;
                if entries.next().is_some() {
                    return Err(ImageError::NotEmpty { path: dir });
                }
                false
            }
            Ok(m) => {
                use std::os::unix::fs::MetadataExt as _;
                return Err(ImageError::BadPermissions {
                    path: dir,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    reason: "exists and is not a directory",
                });
            }
        };
        let cleanup = |e: ImageError| {
            if created_dir {
                let _ = fs::remove_dir(&dir);
            }
            e
        };
        let dir_fd = nix::fcntl::open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(ImageError::errno(&dir, "open image directory"))
        .map_err(cleanup)?;
        let st = fstat(&dir_fd)
            .map_err(ImageError::errno(&dir, "stat"))
            .map_err(cleanup)?;
        check_owner(&dir, &st).map_err(cleanup)?;
        fchmod(&dir_fd, Mode::from_bits_truncate(0o700))
            .map_err(ImageError::errno(&dir, "chmod 0700"))
            .map_err(cleanup)?;
        let pages_path = dir.join(PAGES_FILE);
        let pages = openat(
            &dir_fd,
            PAGES_FILE,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(ImageError::errno(&pages_path, "create"))
        .map_err(cleanup)?;
        Ok(ImageWriter {
            dir,
            dir_fd,
            pages: File::from(pages),
            created_dir,
            chunk_size,
            buf: vec![0u8; chunk_size as usize],
            filled: 0,
            chunks: Vec::new(),
            written: 0,
            failed: false,
            finished: false,
        })
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of page data appended so far: the offset the next append gets.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Appends `data` (whole pages) to `pages.img`.
    pub fn write_pages(&mut self, data: &[u8]) -> Result<PageRef> {
        self.append_pages(data.len() as u64, |off, dst| {
            let off = off as usize;
            dst.copy_from_slice(&data[off..off + dst.len()]);
            Ok(())
        })
    }

    /// Appends `len` bytes (whole pages) produced by `fill`, without an
    /// intermediate buffer of the caller's: `fill(offset, dst)` is called
    /// with consecutive pieces of the data (`offset` counts from the start
    /// of this append; a piece is at most one chunk) and must fill all of
    /// `dst`, e.g. with `process_vm_readv` from the dumped process or
    /// `read_exact` from an fd. An error from `fill` fails the append and
    /// the writer.
    pub fn append_pages(
        &mut self,
        len: u64,
        mut fill: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<PageRef> {
        self.usable()?;
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(ImageError::invalid(
                "page data",
                format!("{len} bytes is not a whole number of pages"),
            ));
        }
        let start = self.written;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= MAX_PAGES_FILE_BYTES)
            .ok_or_else(|| {
                ImageError::limit(
                    "pages.img size in bytes",
                    start.saturating_add(len),
                    MAX_PAGES_FILE_BYTES,
                )
            })?;
        let mut done = 0u64;
        while done < len {
            let room = self.buf.len() - self.filled;
            let n = room.min(usize::try_from(len - done).unwrap_or(usize::MAX));
            let piece = &mut self.buf[self.filled..self.filled + n];
            if let Err(e) = fill(done, piece) {
                self.failed = true;
                return Err(ImageError::io(
                    self.dir.join(PAGES_FILE),
                    "produce page data",
                )(e));
            }
            self.filled += n;
            done += n as u64;
            if self.filled == self.buf.len() {
                self.flush_chunk()?;
            }
        }
        self.written = end;
        Ok(PageRef { offset: start, len })
    }

    fn usable(&self) -> Result<()> {
        if self.failed {
            return Err(ImageError::invalid(
                "image writer",
                format!(
                    "{}: an earlier write failed; the image is incomplete",
                    self.dir.display()
                ),
            ));
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<()> {
        let data = &self.buf[..self.filled];
        self.chunks.push(ChunkHash::of(data));
        if let Err(e) = self.pages.write_all(data) {
            self.failed = true;
            return Err(ImageError::io(self.dir.join(PAGES_FILE), "write")(e));
        }
        self.filled = 0;
        Ok(())
    }

    /// Completes the image: flushes and fsyncs `pages.img`, fills in
    /// `body.pages`, validates the body by the rules every reader applies,
    /// writes `manifest.json` through a temporary file and a rename, and
    /// fsyncs the directory. On error nothing of the image is left.
    pub fn finish(mut self, mut body: ManifestBody) -> Result<()> {
        self.usable()?;
        if self.filled > 0 {
            self.flush_chunk()?;
        }
        let pages_path = self.dir.join(PAGES_FILE);
        self.pages
            .sync_all()
            .map_err(ImageError::io(&pages_path, "fsync"))?;
        body.pages = PagesIndex {
            file: PAGES_FILE.to_string(),
            size: self.written,
            chunk_size: self.chunk_size,
            hash: ChunkHashKind::Xxh3_64,
            chunks: std::mem::take(&mut self.chunks),
        };
        let bytes = encode_manifest(&body)?;
        let tmp_path = self.dir.join(MANIFEST_TMP);
        let tmp = openat(
            &self.dir_fd,
            MANIFEST_TMP,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(ImageError::errno(&tmp_path, "create"))?;
        let mut tmp = File::from(tmp);
        tmp.write_all(&bytes)
            .map_err(ImageError::io(&tmp_path, "write"))?;
        tmp.sync_all().map_err(ImageError::io(&tmp_path, "fsync"))?;
        renameat2(
            &self.dir_fd,
            MANIFEST_TMP,
            &self.dir_fd,
            MANIFEST_FILE,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(ImageError::errno(
            self.dir.join(MANIFEST_FILE),
            "rename into place",
        ))?;
        self.finished = true;
        fsync(&self.dir_fd).map_err(ImageError::errno(&self.dir, "fsync"))?;
        Ok(())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = unlinkat(&self.dir_fd, PAGES_FILE, UnlinkatFlags::NoRemoveDir);
        let _ = unlinkat(&self.dir_fd, MANIFEST_TMP, UnlinkatFlags::NoRemoveDir);
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}
