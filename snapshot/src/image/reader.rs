//! [`Image`]: an opened, validated image directory.

use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

use super::encoding::{ChunkHash, Sha256Digest};
use super::error::{ImageError, Result};
use super::host::Host;
use super::limits::*;
use super::manifest::{ManifestBody, parse_manifest_with_digest, read_manifest};

/// An image directory, opened and validated.
///
/// [`open`](Image::open) checks the directory's type, owner and mode, then
/// reads, checksums and validates the manifest, then checks that the pages
/// file has exactly the recorded size — all before anything else can see
/// the manifest. Page contents are checked by
/// [`verify_pages`](Image::verify_pages), the host by
/// [`check_host`](Image::check_host); a restorer calls both before it
/// changes anything.
#[derive(Debug)]
pub struct Image {
    dir: PathBuf,
    dir_fd: OwnedFd,
    manifest_len: u64,
    body: ManifestBody,
    digest: Sha256Digest,
    pages: File,
}

fn check_file(path: &Path, st: &FileStat, dir: bool) -> Result<()> {
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let mode = st.st_mode & 0o7777;
    let bad = |reason| {
        Err(ImageError::BadPermissions {
            path: path.to_path_buf(),
            mode,
            uid: st.st_uid,
            reason,
        })
    };
    if dir && kind != SFlag::S_IFDIR {
        return bad("not a directory");
    }
    if !dir && kind != SFlag::S_IFREG {
        return bad("not a regular file");
    }
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != 0 && st.st_uid != me {
        return bad("owned by neither root nor the caller");
    }
    if dir && mode & 0o077 != 0 {
        return bad("image directory must be mode 0700 (no access for group or others)");
    }
    if !dir && mode & 0o022 != 0 {
        return bad("writable by group or others");
    }
    Ok(())
}

/// Opens `name` in the image directory as a regular file that only its
/// owner (root or the caller) can write; no symlink, no FIFO.
pub(super) fn open_member(
    dir_fd: &OwnedFd,
    dir: &Path,
    name: &str,
) -> Result<(File, FileStat, PathBuf)> {
    let path = dir.join(name);
    // O_NONBLOCK: a FIFO planted under the name must not block the open;
    // it is then refused as not a regular file.
    let fd = openat(
        dir_fd,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(ImageError::errno(&path, "open"))?;
    let st = fstat(&fd).map_err(ImageError::errno(&path, "stat"))?;
    check_file(&path, &st, false)?;
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty())).map_err(ImageError::errno(&path, "fcntl"))?;
    Ok((File::from(fd), st, path))
}

impl Image {
    /// Opens and validates the image in `dir` (see [`Image`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Image> {
        let dir = dir.as_ref().to_path_buf();
        let dir_fd = nix::fcntl::open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(ImageError::errno(&dir, "open image directory"))?;
        let st = fstat(&dir_fd).map_err(ImageError::errno(&dir, "stat"))?;
        check_file(&dir, &st, true)?;

        let (manifest, st, manifest_path) = open_member(&dir_fd, &dir, MANIFEST_FILE)?;
        let bytes = read_manifest(manifest, &manifest_path, st.st_size as u64)?;
        let (body, digest) = parse_manifest_with_digest(&bytes)?;

        let (pages, st, pages_path) = open_member(&dir_fd, &dir, PAGES_FILE)?;
        let actual = st.st_size as u64;
        if actual < body.pages.size {
            return Err(ImageError::Truncated {
                file: pages_path,
                expected: body.pages.size,
                actual,
            });
        }
        if actual > body.pages.size {
            return Err(ImageError::invalid(
                "pages.size",
                format!(
                    "pages.img has {actual} bytes, the manifest records {}: trailing data",
                    body.pages.size
                ),
            ));
        }
        Ok(Image {
            dir,
            dir_fd,
            manifest_len: bytes.len() as u64,
            body,
            digest,
            pages,
        })
    }

    /// The manifest body, validated.
    pub fn manifest(&self) -> &ManifestBody {
        &self.body
    }

    /// SHA-256 of the manifest body: the image's identity (a working set
    /// names the image it was recorded from by it).
    pub fn digest(&self) -> &Sha256Digest {
        &self.digest
    }

    /// Opens the member `name` of the image directory with the checks
    /// [`Image::open`] applies to its own files.
    pub(super) fn open_member(&self, name: &str) -> Result<(File, FileStat, PathBuf)> {
        open_member(&self.dir_fd, &self.dir, name)
    }

    /// Opens the optional member `name` of the image directory with the
    /// checks [`Image::open`] applies to its own files; `None` if absent.
    pub(super) fn open_optional_member(&self, name: &str) -> Result<Option<(File, FileStat)>> {
        match open_member(&self.dir_fd, &self.dir, name) {
            Ok((f, st, _)) => Ok(Some((f, st))),
            Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Size of `manifest.json` in bytes.
    pub fn manifest_len(&self) -> u64 {
        self.manifest_len
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image directory, opened.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir_fd.as_fd()
    }

    /// `pages.img`, opened read-only: to `pread`, `mmap`, or pass into the
    /// restored process for an injected `preadv`. Offsets are those of the
    /// manifest's [`PageRun`](super::PageRun)s.
    pub fn pages_file(&self) -> &File {
        &self.pages
    }

    /// Checks every chunk of `pages.img` against its recorded hash; names
    /// the first corrupt chunk. Large files are checked on all CPUs.
    pub fn verify_pages(&self) -> Result<()> {
        let n = self.body.pages.chunks.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(4);
        if threads <= 1 || self.body.pages.size < 8 << 20 {
            return self.verify_chunks(0..n);
        }
        let per = n.div_ceil(threads);
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let range = (t * per).min(n)..((t + 1) * per).min(n);
                    s.spawn(move || self.verify_chunks(range))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("chunk verification does not panic"))
                .collect()
        });
        results.into_iter().collect()
    }

    /// Checks chunks `range` of `pages.img` (a lazy restorer checks the
    /// chunks it is about to load).
    pub fn verify_chunks(&self, range: Range<usize>) -> Result<()> {
        let idx = &self.body.pages;
        let range = range.start.min(idx.chunks.len())..range.end.min(idx.chunks.len());
        let mut buf = vec![0u8; idx.chunk_size.min(idx.size) as usize];
        for i in range {
            let (offset, len) = idx.chunk_range(i);
            let data = &mut buf[..len as usize];
            if let Err(e) = self.pages.read_exact_at(data, offset) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    let actual = fstat(&self.pages).map_or(0, |s| s.st_size as u64);
                    return Err(ImageError::Truncated {
                        file: self.dir.join(PAGES_FILE),
                        expected: idx.size,
                        actual,
                    });
                }
                return Err(ImageError::io(self.dir.join(PAGES_FILE), "read")(e));
            }
            let actual = ChunkHash::of(data);
            if actual != idx.chunks[i] {
                return Err(ImageError::ChunkCorrupt {
                    index: i as u64,
                    offset,
                    len,
                    expected: idx.chunks[i].0,
                    actual: actual.0,
                });
            }
        }
        Ok(())
    }

    /// Checks that this image can be restored on `host`
    /// ([`Host::check_compatible`]), and that the host's `vm.mmap_min_addr`
    /// lets every VMA and `mm` address be mapped.
    pub fn check_host(&self, host: &Host) -> Result<()> {
        self.body.host.check_compatible(host)?;
        let m = &self.body.process.mm;
        let lowest = self
            .body
            .vmas
            .first()
            .map(|v| v.start)
            .into_iter()
            .chain([
                m.start_code,
                m.start_data,
                m.start_brk,
                m.start_stack,
                m.arg_start,
                m.env_start,
            ])
            .min()
            .unwrap_or(u64::MAX);
        if lowest < host.mmap_min_addr {
            return Err(ImageError::Foreign {
                field: "vm.mmap_min_addr",
                image: format!("below the lowest address {lowest:#x}"),
                host: format!("{:#x}", host.mmap_min_addr),
            });
        }
        Ok(())
    }
}
