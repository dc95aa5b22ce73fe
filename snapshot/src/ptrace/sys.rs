//! Raw `ptrace(2)` and `waitpid(2)` calls.
//!
//! Private to the `ptrace` module: every caller outside goes through
//! [`super::TraceCtx`], which only exists on the tracer thread.

use std::ffi::c_void;

use nix::errno::Errno;

use super::error::PtraceError;
use super::{Result, Tid};

pub(super) const PTRACE_PEEKDATA: u32 = 2;
pub(super) const PTRACE_POKEDATA: u32 = 5;
pub(super) const PTRACE_CONT: u32 = 7;
pub(super) const PTRACE_SINGLESTEP: u32 = 9;
pub(super) const PTRACE_DETACH: u32 = 17;
pub(super) const PTRACE_SYSCALL: u32 = 24;
pub(super) const PTRACE_SETOPTIONS: u32 = 0x4200;
pub(super) const PTRACE_GETEVENTMSG: u32 = 0x4201;
pub(super) const PTRACE_GETSIGINFO: u32 = 0x4202;
pub(super) const PTRACE_SETSIGINFO: u32 = 0x4203;
pub(super) const PTRACE_GETREGSET: u32 = 0x4204;
pub(super) const PTRACE_SETREGSET: u32 = 0x4205;
pub(super) const PTRACE_SEIZE: u32 = 0x4206;
pub(super) const PTRACE_INTERRUPT: u32 = 0x4207;
pub(super) const PTRACE_PEEKSIGINFO: u32 = 0x4209;
pub(super) const PTRACE_GETSIGMASK: u32 = 0x420a;
pub(super) const PTRACE_SETSIGMASK: u32 = 0x420b;
pub(super) const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;
pub(super) const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;

pub(super) const NT_PRSTATUS: usize = 1;
pub(super) const NT_X86_XSTATE: usize = 0x202;

/// `PTRACE_EVENT_*` (status >> 16).
pub(super) const PTRACE_EVENT_FORK: i32 = 1;
pub(super) const PTRACE_EVENT_VFORK: i32 = 2;
pub(super) const PTRACE_EVENT_CLONE: i32 = 3;
pub(super) const PTRACE_EVENT_EXEC: i32 = 4;
pub(super) const PTRACE_EVENT_VFORK_DONE: i32 = 5;
pub(super) const PTRACE_EVENT_EXIT: i32 = 6;
pub(super) const PTRACE_EVENT_SECCOMP: i32 = 7;
pub(super) const PTRACE_EVENT_STOP: i32 = 128;

fn name(request: u32) -> &'static str {
    match request {
        PTRACE_PEEKDATA => "PTRACE_PEEKDATA",
        PTRACE_POKEDATA => "PTRACE_POKEDATA",
        PTRACE_CONT => "PTRACE_CONT",
        PTRACE_SINGLESTEP => "PTRACE_SINGLESTEP",
        PTRACE_DETACH => "PTRACE_DETACH",
        PTRACE_SYSCALL => "PTRACE_SYSCALL",
        PTRACE_SETOPTIONS => "PTRACE_SETOPTIONS",
        PTRACE_GETEVENTMSG => "PTRACE_GETEVENTMSG",
        PTRACE_GETSIGINFO => "PTRACE_GETSIGINFO",
        PTRACE_SETSIGINFO => "PTRACE_SETSIGINFO",
        PTRACE_GETREGSET => "PTRACE_GETREGSET",
        PTRACE_SETREGSET => "PTRACE_SETREGSET",
        PTRACE_SEIZE => "PTRACE_SEIZE",
        PTRACE_INTERRUPT => "PTRACE_INTERRUPT",
        PTRACE_PEEKSIGINFO => "PTRACE_PEEKSIGINFO",
        PTRACE_GETSIGMASK => "PTRACE_GETSIGMASK",
        PTRACE_SETSIGMASK => "PTRACE_SETSIGMASK",
        PTRACE_GET_SYSCALL_INFO => "PTRACE_GET_SYSCALL_INFO",
        PTRACE_GET_RSEQ_CONFIGURATION => "PTRACE_GET_RSEQ_CONFIGURATION",
        _ => "ptrace",
    }
}

/// One `ptrace(request, tid, addr, data)`; returns the kernel's non-negative
/// result.
///
/// # Safety
/// `addr` and `data` must be what `request` expects: null, an integer, or a
/// pointer to memory of the size the request reads or writes, valid for the
/// duration of the call.
pub(super) unsafe fn ptrace(request: u32, tid: Tid, addr: usize, data: usize) -> Result<i64> {
    // SAFETY: forwarded to the caller's contract; the variadic arguments are
    // passed as the kernel's (pid_t, void *, void *).
    let r = unsafe { libc::ptrace(request, tid, addr as *mut c_void, data as *mut c_void) };
    if r < 0 {
        return Err(PtraceError::Ptrace {
            request: name(request),
            tid,
            errno: Errno::last(),
        });
    }
    Ok(r)
}

/// A request whose `addr` and `data` are plain integers (no memory).
pub(super) fn ptrace_int(request: u32, tid: Tid, addr: usize, data: usize) -> Result<i64> {
    debug_assert!(matches!(
        request,
        PTRACE_CONT
            | PTRACE_SINGLESTEP
            | PTRACE_DETACH
            | PTRACE_SYSCALL
            | PTRACE_SETOPTIONS
            | PTRACE_SEIZE
            | PTRACE_INTERRUPT
            | PTRACE_POKEDATA
    ));
    // SAFETY: these requests read no memory of ours through addr/data
    // (POKEDATA writes `data` as a value into the tracee).
    unsafe { ptrace(request, tid, addr, data) }
}

/// `PTRACE_PEEKDATA`: one word of the tracee's memory.
pub(super) fn peek(tid: Tid, addr: u64) -> Result<u64> {
    Errno::clear();
    // SAFETY: PEEKDATA returns the word; addr is a tracee address, data unused.
    let r = unsafe {
        libc::ptrace(
            PTRACE_PEEKDATA,
            tid,
            addr as *mut c_void,
            std::ptr::null_mut::<c_void>(),
        )
    };
    if r == -1 {
        let e = Errno::last();
        if e != Errno::from_raw(0) {
            return Err(PtraceError::Ptrace {
                request: "PTRACE_PEEKDATA",
                tid,
                errno: e,
            });
        }
    }
    Ok(r as u64)
}

/// `PTRACE_GETREGSET`/`SETREGSET` through one iovec; returns the length the
/// kernel used.
///
/// # Safety
/// `buf` must be valid for `len` bytes (written for GETREGSET).
pub(super) unsafe fn regset(
    request: u32,
    tid: Tid,
    note: usize,
    buf: *mut u8,
    len: usize,
) -> Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.cast(),
        iov_len: len,
    };
    // SAFETY: iov points at the caller's buffer of len bytes; the kernel
    // updates iov_len on GETREGSET.
    unsafe { ptrace(request, tid, note, &mut iov as *mut libc::iovec as usize)? };
    Ok(iov.iov_len)
}

/// A raw `waitpid` status.
pub(super) type RawStatus = i32;

/// `waitpid(tid, &status, __WALL | extra)`, retried on `EINTR`. `Ok(None)`
/// only with `WNOHANG` when nothing is there yet.
pub(super) fn waitpid(tid: Tid, extra: i32) -> Result<Option<RawStatus>> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer for the call.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | extra) };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(PtraceError::Wait { tid, errno: e });
        }
        if r == 0 {
            return Ok(None);
        }
        return Ok(Some(status));
    }
}

/// The calling thread's kernel tid.
pub(super) fn gettid() -> Tid {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}
