//! Cold images: dropping an image's files from the page cache, and
//! checking how much of them is resident (`mincore`).
//!
//! A restore right after the checkpoint, or after another restore of the
//! same image, reads `pages.img` from memory; a node that has not touched
//! the image since boot (or since memory pressure evicted it) reads it from
//! disk. Benches and tests make the second case on purpose with
//! [`evict_page_cache`] and prove it with [`resident_fraction`].

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nix::fcntl::{OFlag, PosixFadviseAdvice, open, posix_fadvise};
use nix::sys::stat::Mode;

use super::error::{ImageError, Result};
use super::limits::{MANIFEST_FILE, PAGES_FILE};
use super::working_set::WORKING_SET_FILE;
use super::working_set_pages::WORKING_SET_PAGES_FILE;

fn open_file(path: &Path) -> Result<Option<File>> {
    match open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(ImageError::errno(path, "open")(e)),
    }
}

/// Drops the files of the image in `dir` (`manifest.json`, `pages.img`,
/// `working-set.json` and `working-set.img` if present) from the page cache: each is first
/// written back (`fdatasync`: dirty pages cannot be dropped), then
/// `posix_fadvise(POSIX_FADV_DONTNEED)`. Pages another process has mapped
/// or locked stay; [`resident_fraction`] tells what is left.
pub fn evict_page_cache(dir: &Path) -> Result<()> {
    for name in [
        MANIFEST_FILE,
        PAGES_FILE,
        WORKING_SET_FILE,
        WORKING_SET_PAGES_FILE,
    ] {
        let path = dir.join(name);
        let Some(file) = open_file(&path)? else {
            if name == WORKING_SET_FILE || name == WORKING_SET_PAGES_FILE {
                continue;
            }
            return Err(ImageError::Io {
                path,
                op: "open",
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        nix::unistd::fdatasync(file.as_fd()).map_err(ImageError::errno(&path, "fdatasync"))?;
        posix_fadvise(file.as_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
            .map_err(ImageError::errno(&path, "posix_fadvise(DONTNEED)"))?;
    }
    Ok(())
}

/// The fraction (0.0..=1.0) of the pages of `pages.img` in the image
/// directory `dir` that are in the page cache.
pub fn resident_fraction(dir: &Path) -> Result<f64> {
    file_resident_fraction(&dir.join(PAGES_FILE))
}

/// The fraction (0.0..=1.0) of the pages of the file at `path` that are in
/// the page cache, by `mincore` over a read-only mapping of it (mapping
/// does not read anything in). An empty file counts as fully resident.
pub fn file_resident_fraction(path: &Path) -> Result<f64> {
    let file = open_file(path)?.ok_or_else(|| ImageError::Io {
        path: path.to_path_buf(),
        op: "open",
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let len = file.metadata().map_err(ImageError::io(path, "stat"))?.len();
    if len == 0 {
        return Ok(1.0);
    }
    let page = super::limits::PAGE_SIZE as usize;
    let pages = (len as usize).div_ceil(page);
    // SAFETY: a fresh read-only shared mapping of a file we hold open; it
    // is only passed to mincore and unmapped below, never dereferenced.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(ImageError::io(path, "mmap")(std::io::Error::last_os_error()));
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` maps `len` bytes; `vec` has one byte per page of it.
    let r = unsafe { libc::mincore(addr, len as usize, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(addr, len as usize) };
    if r != 0 {
        return Err(ImageError::io(path, "mincore")(err));
    }
    let resident = vec.iter().filter(|&&b| b & 1 != 0).count();
    Ok(resident as f64 / pages as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_empties_the_cache_and_a_read_fills_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![0x5au8; 1 << 20];
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{}").unwrap();
        std::fs::write(dir.path().join(PAGES_FILE), &data).unwrap();
        // Freshly written: resident.
        assert!(resident_fraction(dir.path()).unwrap() > 0.9);
        evict_page_cache(dir.path()).unwrap();
        assert!(resident_fraction(dir.path()).unwrap() < 0.1);
        let back = std::fs::read(dir.path().join(PAGES_FILE)).unwrap();
        assert_eq!(back, data);
        assert!(resident_fraction(dir.path()).unwrap() > 0.9);
        assert!(evict_page_cache(&dir.path().join("nothing")).is_err());
    }
}
