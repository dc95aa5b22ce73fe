//! [`Arena`]: memory that page data read from an image goes into,
//! populated when it is made.
//!
//! A buffer faulted in page by page while `pread` fills it costs about as
//! much as the read itself (a fault per 4 KiB); `MAP_POPULATE` has the
//! kernel fill the mapping in bulk first.

/// A private anonymous mapping, populated up front, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Arena {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by the arena; shared access goes through `&`
// (read only), writes through `&mut`, as for a `Vec<u8>`.
unsafe impl Send for Arena {}
// SAFETY: as above: `&Arena` only reads.
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` bytes of zeroed memory (none for 0), populated.
    pub(crate) fn new(len: usize) -> std::io::Result<Arena> {
        Arena::map(len, libc::MAP_POPULATE)
    }

    /// `len` bytes of zeroed memory, faulted in as it is written, and not
    /// inherited by a fork ([`Arena::dont_fork`]): for a reader on a thread
    /// of its own while the process forks (populating holds the process's
    /// `mmap_lock` a fork needs, and a fork would make populated pages copy
    /// on write).
    pub(crate) fn new_unshared(len: usize) -> std::io::Result<Arena> {
        Arena::map(len, 0)?.dont_fork()
    }

    fn map(len: usize, flags: i32) -> std::io::Result<Arena> {
        if len == 0 {
            return Ok(Arena {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len,
            });
        }
        // SAFETY: a fresh private anonymous mapping; nothing else uses it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arena {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Marks it `MADV_DONTFORK`: a child forked from this process does not
    /// get it (nor copies its populated pages on write meanwhile).
    fn dont_fork(self) -> std::io::Result<Arena> {
        if self.len > 0 {
            // SAFETY: advice on exactly the mapping this arena owns.
            if unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_DONTFORK) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(self)
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `len` bytes from `at`.
    pub(crate) fn slice(&self, at: usize, len: usize) -> &[u8] {
        assert!(at <= self.len && len <= self.len - at);
        // SAFETY: inside the mapping (or empty), which lives as long as
        // `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }

    /// `len` bytes from `at`, to write.
    pub(crate) fn slice_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        assert!(at <= self.len && len <= self.len - at);
        // SAFETY: inside the mapping (or empty), borrowed mutably through
        // `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly the mapping made in `new`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arenas_are_zeroed_writable_and_may_be_empty() {
        let mut a = Arena::new(3 * 4096).unwrap();
        assert!(a.slice(0, a.len()).iter().all(|&b| b == 0));
        a.slice_mut(4095, 2).copy_from_slice(&[1, 2]);
        assert_eq!(a.slice(4094, 4), [0, 1, 2, 0]);
        let e = Arena::new(0).unwrap();
        assert!(e.slice(0, 0).is_empty());
    }
}
