//! The userfaultfd ABI (x86_64, `<linux/userfaultfd.h>`): the ioctls the
//! loader uses on a userfaultfd it took from the restored process, and its
//! messages.
//!
//! Every ioctl acts on the address space the userfaultfd was created in
//! (the restored process's), whichever process issues it.

use std::os::fd::{AsRawFd, OwnedFd};

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: u64 = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
/// `_IOR(0xaa, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
/// `_IOR(0xaa, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 = 0x8010_aa02;
/// `_IOWR(0xaa, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: u64 = 0xc028_aa03;
/// `_IOWR(0xaa, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;

const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// `UFFD_FEATURE_EVENT_FORK`: a fork of the process hands a new
/// userfaultfd for the child's address space to the reader.
pub(super) const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP`: `mremap` of registered memory is reported.
pub(super) const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE`: `MADV_DONTNEED`/`MADV_REMOVE`/`MADV_FREE`
/// of registered memory is reported (before the pages go).
pub(super) const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_EVENT_UNMAP`: `munmap` (and `MAP_FIXED` over, `brk` and
/// `mremap` shrinking) of registered memory is reported.
pub(super) const FEATURE_EVENT_UNMAP: u64 = 1 << 6;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const PAGEFAULT_FLAG_WRITE: u64 = 1;

/// Size of a `struct uffd_msg`.
pub(super) const MSG_SIZE: usize = 32;

/// One message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Msg {
    /// A thread (or the kernel on its behalf) touched a missing page.
    Fault {
        /// Page-aligned address.
        addr: u64,
        /// A write access.
        write: bool,
    },
    /// The process forked; the child's address space has this new
    /// userfaultfd (installed in the reader's fd table).
    Fork {
        /// The new fd.
        fd: i32,
    },
    /// `[from, from+len)` moved to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// The pages of `[start, end)` were dropped (they read as zeros next).
    Remove {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// `[start, end)` was unmapped.
    Unmap {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// An event this build does not know (never requested).
    Unknown(u8),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Msg {
    /// Decodes one `struct uffd_msg`.
    pub(super) fn parse(b: &[u8; MSG_SIZE]) -> Msg {
        // event (u8), 7 reserved bytes, then the 24-byte union.
        match b[0] {
            EVENT_PAGEFAULT => Msg::Fault {
                addr: u64_at(b, 16) & !(super::PAGE - 1),
                write: u64_at(b, 8) & PAGEFAULT_FLAG_WRITE != 0,
            },
            EVENT_FORK => Msg::Fork {
                fd: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as i32,
            },
            EVENT_REMAP => Msg::Remap {
                from: u64_at(b, 8),
                to: u64_at(b, 16),
                len: u64_at(b, 24),
            },
            EVENT_REMOVE => Msg::Remove {
                start: u64_at(b, 8),
                end: u64_at(b, 16),
            },
            EVENT_UNMAP => Msg::Unmap {
                start: u64_at(b, 8),
                end: u64_at(b, 16),
            },
            other => Msg::Unknown(other),
        }
    }
}

/// What one `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fill {
    /// This many bytes from the start were filled (all, or a prefix before
    /// the kernel stopped: call again for the rest).
    Done(u64),
    /// The first page is already present (`EEXIST`).
    Exists,
    /// An mm change (an event not read yet) is in progress (`EAGAIN`):
    /// read the events, then retry.
    Again,
    /// The first page is not in memory registered with this userfaultfd
    /// (`ENOENT`: unmapped, or the range spans two mappings).
    NotRegistered,
    /// The address space is gone (`ESRCH`: the process exited or exec'd).
    Gone,
}

/// A userfaultfd, open in this process.
#[derive(Debug)]
pub(super) struct Uffd(OwnedFd);

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

fn ioctl(fd: &OwnedFd, req: u64, arg: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: every caller passes a request number with the size of the
    // #[repr(C)] struct `arg` points at, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Wraps an fd that is a userfaultfd.
    pub(super) fn new(fd: OwnedFd) -> Uffd {
        Uffd(fd)
    }

    /// The fd.
    pub(super) fn fd(&self) -> &OwnedFd {
        &self.0
    }

    /// `UFFDIO_API` with `features` (once per userfaultfd; a userfaultfd
    /// handed over by a fork event comes initialized).
    pub(super) fn api(&self, features: u64) -> std::io::Result<()> {
        #[repr(C)]
        struct Api {
            api: u64,
            features: u64,
            ioctls: u64,
        }
        let mut a = Api {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        ioctl(&self.0, UFFDIO_API, (&mut a as *mut Api).cast())
    }

    /// `UFFDIO_REGISTER` of `[start, start+len)` for missing faults.
    pub(super) fn register(&self, start: u64, len: u64) -> std::io::Result<()> {
        #[repr(C)]
        struct Register {
            range: Range,
            mode: u64,
            ioctls: u64,
        }
        let mut r = Register {
            range: Range { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&self.0, UFFDIO_REGISTER, (&mut r as *mut Register).cast())
    }

    /// `UFFDIO_UNREGISTER` of `[start, start+len)`.
    pub(super) fn unregister(&self, start: u64, len: u64) -> std::io::Result<()> {
        let mut r = Range { start, len };
        ioctl(&self.0, UFFDIO_UNREGISTER, (&mut r as *mut Range).cast())
    }

    /// `UFFDIO_WAKE`: wakes the threads waiting on a fault in the range
    /// (one whose page another fill already resolved, or that went away).
    pub(super) fn wake(&self, start: u64, len: u64) -> std::io::Result<()> {
        let mut r = Range { start, len };
        ioctl(&self.0, UFFDIO_WAKE, (&mut r as *mut Range).cast())
    }

    /// `UFFDIO_COPY` of `src` to `dst` (page aligned, whole pages), waking
    /// the threads that wait on a filled page.
    pub(super) fn copy(&self, dst: u64, src: &[u8]) -> std::io::Result<Fill> {
        #[repr(C)]
        struct Copy {
            dst: u64,
            src: u64,
            len: u64,
            mode: u64,
            copy: i64,
        }
        let mut c = Copy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        let r = ioctl(&self.0, UFFDIO_COPY, (&mut c as *mut Copy).cast());
        fill_outcome(r, c.copy)
    }

    /// `UFFDIO_ZEROPAGE` of `[start, start+len)`: maps the zero page (a
    /// write then copies it as for any anonymous page).
    pub(super) fn zeropage(&self, start: u64, len: u64) -> std::io::Result<Fill> {
        #[repr(C)]
        struct Zero {
            range: Range,
            mode: u64,
            zeropage: i64,
        }
        let mut z = Zero {
            range: Range { start, len },
            mode: 0,
            zeropage: 0,
        };
        let r = ioctl(&self.0, UFFDIO_ZEROPAGE, (&mut z as *mut Zero).cast());
        fill_outcome(r, z.zeropage)
    }

    /// Reads the pending messages (non-blocking: the fd is `O_NONBLOCK`)
    /// into `out`; returns how many were read.
    pub(super) fn read(&self, out: &mut Vec<Msg>) -> std::io::Result<usize> {
        let mut buf = [0u8; MSG_SIZE * 64];
        // SAFETY: reading into a local buffer of its length.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize / MSG_SIZE;
        for m in buf.chunks_exact(MSG_SIZE).take(n) {
            out.push(Msg::parse(m.try_into().expect("32 bytes")));
        }
        Ok(n)
    }
}

/// The outcome of a fill from the ioctl's result and the count it wrote
/// back (bytes filled, or `-errno`).
fn fill_outcome(r: std::io::Result<()>, count: i64) -> std::io::Result<Fill> {
    if count > 0 {
        // All of it (r is Ok), or a prefix (r is EAGAIN): either way the
        // caller continues after it.
        return Ok(Fill::Done(count as u64));
    }
    let errno = match &r {
        Ok(()) => return Ok(Fill::Done(0)),
        Err(e) => e.raw_os_error().unwrap_or(0),
    };
    match errno {
        libc::EEXIST => Ok(Fill::Exists),
        libc::EAGAIN => Ok(Fill::Again),
        libc::ENOENT => Ok(Fill::NotRegistered),
        libc::ESRCH => Ok(Fill::Gone),
        _ => Err(r.expect_err("an error")),
    }
}

/// Creates a userfaultfd for this process (tests: the restorer injects the
/// syscall into the restored process instead).
#[cfg(test)]
pub(super) fn own() -> std::io::Result<Uffd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(Uffd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | (UFFD_API << 8) | nr
    }

    #[test]
    fn request_numbers_match_the_kernel_encoding() {
        assert_eq!(UFFDIO_API, ioc(3, 0x3f, 24));
        assert_eq!(UFFDIO_REGISTER, ioc(3, 0x00, 32));
        assert_eq!(UFFDIO_UNREGISTER, ioc(2, 0x01, 16));
        assert_eq!(UFFDIO_WAKE, ioc(2, 0x02, 16));
        assert_eq!(UFFDIO_COPY, ioc(3, 0x03, 40));
        assert_eq!(UFFDIO_ZEROPAGE, ioc(3, 0x04, 32));
    }

    #[test]
    fn messages_decode() {
        let mut b = [0u8; MSG_SIZE];
        b[0] = EVENT_PAGEFAULT;
        b[8..16].copy_from_slice(&1u64.to_le_bytes());
        b[16..24].copy_from_slice(&0x7f00_0000_1234u64.to_le_bytes());
        assert_eq!(
            Msg::parse(&b),
            Msg::Fault {
                addr: 0x7f00_0000_1000,
                write: true
            }
        );
        b[0] = EVENT_REMAP;
        b[24..32].copy_from_slice(&0x3000u64.to_le_bytes());
        assert_eq!(
            Msg::parse(&b),
            Msg::Remap {
                from: 1,
                to: 0x7f00_0000_1234,
                len: 0x3000
            }
        );
        b[0] = EVENT_FORK;
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(Msg::parse(&b), Msg::Fork { fd: 7 });
        b[0] = 0x77;
        assert_eq!(Msg::parse(&b), Msg::Unknown(0x77));
    }

    /// The whole protocol on this process's own memory: a registered page
    /// is missing until filled; a second fill finds it; removal is
    /// reported; unregistering makes memory ordinary again.
    #[test]
    fn copy_zeropage_and_events_on_own_memory() {
        let u = match own() {
            Ok(u) => u,
            // Without CAP_SYS_PTRACE and vm.unprivileged_userfaultfd.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return,
            Err(e) => panic!("userfaultfd: {e}"),
        };
        u.api(FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP | FEATURE_EVENT_REMAP)
            .unwrap();
        let len = 4 * 4096usize;
        // SAFETY: a fresh anonymous mapping, unmapped at the end.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        u.register(p, len as u64).unwrap();
        let data = vec![0xabu8; 2 * 4096];
        assert_eq!(u.copy(p, &data).unwrap(), Fill::Done(8192));
        assert_eq!(u.copy(p, &data).unwrap(), Fill::Exists);
        assert_eq!(u.zeropage(p + 8192, 4096).unwrap(), Fill::Done(4096));
        // SAFETY: reading pages this test filled.
        let (a, z) = unsafe {
            (
                std::ptr::read_volatile(p as *const u8),
                std::ptr::read_volatile((p + 8192) as *const u8),
            )
        };
        assert_eq!((a, z), (0xab, 0));
        let mut msgs = Vec::new();
        assert_eq!(u.read(&mut msgs).unwrap(), 0);
        // The removal is reported on another thread's read while madvise
        // waits for it.
        let t = std::thread::spawn(move || {
            // SAFETY: dropping pages of our own mapping.
            unsafe { libc::madvise(p as *mut _, 4096, libc::MADV_DONTNEED) }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while msgs.is_empty() && std::time::Instant::now() < deadline {
            u.read(&mut msgs).unwrap();
        }
        assert_eq!(t.join().unwrap(), 0);
        assert_eq!(
            msgs,
            [Msg::Remove {
                start: p,
                end: p + 4096
            }]
        );
        u.unregister(p, len as u64).unwrap();
        // SAFETY: an ordinary anonymous page again: reads zero.
        assert_eq!(unsafe { std::ptr::read_volatile(p as *const u8) }, 0);
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(p as *mut _, len) };
    }
}
