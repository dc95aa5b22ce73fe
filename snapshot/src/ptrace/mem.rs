//! Other processes' memory and kernel objects, from the tracer's side.
//!
//! These calls need no ptrace stop and may run on any thread (they check
//! `PTRACE_MODE_ATTACH_REALCREDS` or `_READ_`, which root passes).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::error::PtraceError;
use super::{Result, Tid};

/// `IOV_MAX`: the most iovecs one `process_vm_readv`/`writev` takes.
pub const IOV_MAX: usize = 1024;

fn sys_err(what: String) -> PtraceError {
    PtraceError::Sys {
        what,
        errno: Errno::last(),
    }
}

/// Reads `buf.len()` bytes at `addr` of process `pid`.
pub fn read_mem(pid: Tid, addr: u64, buf: &mut [u8]) -> Result<()> {
    read_ranges(pid, &mut [(addr, buf)])
}

/// Reads `len` bytes at `addr` of process `pid` into a new vector.
pub fn read_vec(pid: Tid, addr: u64, len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0; len];
    read_mem(pid, addr, &mut v)?;
    Ok(v)
}

/// Writes `data` at `addr` of process `pid` (the pages must be writable
/// for the target; see [`super::TraceCtx::poke`] for read-only ones).
pub fn write_mem(pid: Tid, addr: u64, data: &[u8]) -> Result<()> {
    write_ranges(pid, &[(addr, data)])
}

/// Reads many ranges of process `pid`, each remote range into its own
/// buffer, in as few `process_vm_readv` calls as `IOV_MAX` allows. Fails
/// (naming the first range not read) unless every byte was read.
pub fn read_ranges(pid: Tid, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
    for chunk in ranges.chunks_mut(IOV_MAX) {
        let mut done = 0usize; // ranges of this chunk fully transferred
        while done < chunk.len() {
            let local: Vec<libc::iovec> = chunk[done..]
                .iter_mut()
                .map(|(_, b)| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = chunk[done..]
                .iter()
                .map(|(a, b)| libc::iovec {
                    iov_base: *a as usize as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: every local iovec points at a live mutable buffer of
            // its length; remote iovecs are addresses in the other process,
            // which the kernel checks.
            let n = unsafe {
                libc::process_vm_readv(
                    pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            let (addr, len) = (chunk[done].0, chunk[done].1.len());
            if n < 0 {
                return Err(sys_err(format!(
                    "process_vm_readv(pid {pid}, {addr:#x}+{len})"
                )));
            }
            let advanced = advance(chunk[done..].iter().map(|(_, b)| b.len()), n as usize);
            if advanced == 0 {
                return Err(PtraceError::Sys {
                    what: format!("process_vm_readv(pid {pid}, {addr:#x}+{len}): short read"),
                    errno: Errno::EFAULT,
                });
            }
            done += advanced;
        }
    }
    Ok(())
}

/// How many whole ranges `n` transferred bytes cover. The kernel transfers
/// whole iovec elements only when it stops early, except for a range that
/// spans a fault (then the count ends mid-range, and that range is retried
/// and fails on its own).
fn advance(lens: impl Iterator<Item = usize>, mut n: usize) -> usize {
    let mut k = 0;
    for l in lens {
        if n < l {
            break;
        }
        n -= l;
        k += 1;
    }
    k
}

/// Writes many ranges into process `pid` with as few `process_vm_writev`
/// calls as `IOV_MAX` allows. Fails unless every byte was written.
pub fn write_ranges(pid: Tid, ranges: &[(u64, &[u8])]) -> Result<()> {
    for chunk in ranges.chunks(IOV_MAX) {
        let mut done = 0usize;
        while done < chunk.len() {
            let local: Vec<libc::iovec> = chunk[done..]
                .iter()
                .map(|(_, b)| libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = chunk[done..]
                .iter()
                .map(|(a, b)| libc::iovec {
                    iov_base: *a as usize as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: local iovecs point at live buffers of their length,
            // which the kernel only reads; remote addresses are checked by
            // the kernel.
            let n = unsafe {
                libc::process_vm_writev(
                    pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            let (addr, len) = (chunk[done].0, chunk[done].1.len());
            if n < 0 {
                return Err(sys_err(format!(
                    "process_vm_writev(pid {pid}, {addr:#x}+{len})"
                )));
            }
            let advanced = advance(chunk[done..].iter().map(|(_, b)| b.len()), n as usize);
            if advanced == 0 {
                return Err(PtraceError::Sys {
                    what: format!("process_vm_writev(pid {pid}, {addr:#x}+{len}): short write"),
                    errno: Errno::EFAULT,
                });
            }
            done += advanced;
        }
    }
    Ok(())
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: Tid) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(sys_err(format!("pidfd_open({pid})")));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_getfd(pidfd, targetfd, 0)`: a duplicate of the target's fd
/// `targetfd` in this process. It shares the open file description (and so
/// the file offset) with the target: never read or seek through it
/// (restore-pitfalls §8.1).
pub fn pidfd_getfd(pidfd: &OwnedFd, targetfd: RawFd) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), targetfd, 0) };
    if fd < 0 {
        return Err(sys_err(format!("pidfd_getfd(fd {targetfd})")));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `KCMP_FILE`: compare two file descriptors.
pub const KCMP_FILE: i32 = 0;
/// `KCMP_VM`: compare address spaces.
pub const KCMP_VM: i32 = 1;
/// `KCMP_FILES`: compare fd tables.
pub const KCMP_FILES: i32 = 2;
/// `KCMP_FS`: compare fs info (root, cwd, umask).
pub const KCMP_FS: i32 = 3;
/// `KCMP_SIGHAND`: compare signal handler tables.
pub const KCMP_SIGHAND: i32 = 4;
/// `KCMP_IO`: compare I/O contexts.
pub const KCMP_IO: i32 = 5;
/// `KCMP_SYSVSEM`: compare SysV semaphore undo lists.
pub const KCMP_SYSVSEM: i32 = 6;
/// `KCMP_EPOLL_TFD`: is `idx2` (a pointer to `struct kcmp_epoll_slot`) a
/// target of epoll fd `idx1`.
pub const KCMP_EPOLL_TFD: i32 = 7;

/// `kcmp(pid1, pid2, type, idx1, idx2)`: `Ordering::Equal` when both name
/// the same kernel object. (The kernel's order between different objects is
/// scrambled, but consistent, so it may be used for sorting.)
pub fn kcmp(pid1: Tid, pid2: Tid, kind: i32, idx1: u64, idx2: u64) -> Result<std::cmp::Ordering> {
    // SAFETY: plain syscall; idx2 is only dereferenced by the kernel for
    // KCMP_EPOLL_TFD, where the caller passes a valid pointer.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2) };
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        3 => Err(PtraceError::Sys {
            what: format!("kcmp({pid1}, {pid2}, {kind}): objects not ordered"),
            errno: Errno::EINVAL,
        }),
        _ => Err(sys_err(format!(
            "kcmp({pid1}, {pid2}, {kind}, {idx1}, {idx2})"
        ))),
    }
}

/// `get_robust_list(tid)`: the thread's robust futex list head and its
/// length (restore-pitfalls §6.4: restore with an injected
/// `set_robust_list` in that thread).
pub fn get_robust_list(tid: Tid) -> Result<(u64, usize)> {
    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: the kernel writes one pointer to head and one size_t to len.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut libc::size_t,
        )
    };
    if r < 0 {
        return Err(sys_err(format!("get_robust_list({tid})")));
    }
    Ok((head, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_counts_whole_ranges() {
        assert_eq!(advance([4, 4, 4].into_iter(), 12), 3);
        assert_eq!(advance([4, 4, 4].into_iter(), 8), 2);
        assert_eq!(advance([4, 4, 4].into_iter(), 6), 1);
        assert_eq!(advance([4, 4, 4].into_iter(), 0), 0);
    }

    #[test]
    fn own_memory_and_robust_list() {
        let me = std::process::id() as Tid;
        let src = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut dst = [0u8; 8];
        read_mem(me, src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(src, dst);
        let target = [0u8; 4];
        write_mem(me, target.as_ptr() as u64, &[9, 9, 9, 9]).unwrap();
        // SAFETY: the kernel wrote the bytes behind the compiler's back.
        assert_eq!(unsafe { std::ptr::read_volatile(&target) }, [9, 9, 9, 9]);
        // Many ranges, more than IOV_MAX.
        let bufs: Vec<[u8; 8]> = (0..3000u64).map(|i| i.to_le_bytes()).collect();
        let mut outs = vec![[0u8; 8]; 3000];
        let mut ranges: Vec<(u64, &mut [u8])> = bufs
            .iter()
            .zip(outs.iter_mut())
            .map(|(b, o)| (b.as_ptr() as u64, &mut o[..]))
            .collect();
        read_ranges(me, &mut ranges).unwrap();
        assert_eq!(bufs, outs);
        assert!(read_mem(me, 8, &mut dst).is_err());
        let (head, len) = get_robust_list(me).unwrap();
        assert!(head != 0 && len == 24, "{head:#x} {len}");
        let fd = pidfd_open(me).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        let dup = pidfd_getfd(&fd, null.as_raw_fd()).unwrap();
        assert_eq!(
            kcmp(
                me,
                me,
                KCMP_FILE,
                null.as_raw_fd() as u64,
                dup.as_raw_fd() as u64
            )
            .unwrap(),
            std::cmp::Ordering::Equal
        );
        assert_eq!(
            kcmp(me, me, KCMP_VM, 0, 0).unwrap(),
            std::cmp::Ordering::Equal
        );
    }
}
