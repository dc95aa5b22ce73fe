//! `Host::current()` on this machine, checked against the kernel itself.

use sprout_snapshot::image::*;

use crate::common::*;

#[test]
fn host_current_reads_this_machine() {
    let h = Host::current().unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(h.kernel_release, release.trim());
    assert_eq!(h.page_size, 4096);
    assert!(!h.cpu.vendor.is_empty());
    assert_eq!(h.cpu.xcr0 & 0b11, 0b11, "x87 and SSE enabled");
    assert_eq!(h.cpu.xcr0 & !h.cpu.xcr0_supported, 0);
    // The regset size computed from the highest XCR0 component's CPUID(0xD)
    // offset and size equals CPUID(0xD,0).EBX, the size for the enabled
    // components.
    assert_eq!(h.cpu.xstate_regset_size, h.cpu.xsave_size);
    assert!(h.cpu.xsave_size <= h.cpu.xsave_size_max);
    // Deterministic.
    assert_eq!(Host::current().unwrap(), h);

    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let v = h.vdso.as_ref().expect("this kernel maps a vDSO");
    let kinds: Vec<_> = v.areas.iter().map(|a| a.kind).collect();
    assert!(kinds.contains(&VdsoAreaKind::Vdso));
    for k in [VdsoAreaKind::Vvar, VdsoAreaKind::VvarVclock] {
        assert_eq!(kinds.contains(&k), maps.contains(k.maps_name()), "{k:?}");
    }
    assert_eq!(v.areas[0].offset, 0);
    let vdso = v
        .areas
        .iter()
        .find(|a| a.kind == VdsoAreaKind::Vdso)
        .unwrap();
    assert!(vdso.size >= 4096 && vdso.size.is_multiple_of(4096));
    // x86 links the vDSO with --build-id.
    assert!(
        v.build_id.as_ref().is_some_and(|b| b.0.len() >= 16),
        "{:?}",
        v.build_id
    );
    assert_ne!(v.sha256.0, [0u8; 32]);
}

const NT_X86_XSTATE: libc::c_uint = 0x202;

/// The xstate regset of a real stopped child: its size must be what
/// `Host::current()` computed, and its contents must pass the format's
/// xsave validation.
#[test]
fn xstate_size_matches_ptrace_getregset_of_a_child() {
    let host = Host::current().unwrap();
    // SAFETY: the child only makes async-signal-safe system calls (ptrace,
    // getpid, kill, _exit) before exiting, so forking a multi-threaded test
    // harness is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; nothing here allocates or takes a lock.
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waitpid writes the status into our local.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    assert_eq!(r, pid);
    assert!(libc::WIFSTOPPED(status), "child did not stop: {status:#x}");
    let mut buf = vec![0u8; 64 << 10];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the child is our tracee in a ptrace-stop; the iovec points at
    // a live buffer of iov_len bytes that the kernel fills and shrinks
    // iov_len to the regset's size.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid,
            NT_X86_XSTATE as usize as *mut libc::c_void,
            (&mut iov as *mut libc::iovec).cast::<libc::c_void>(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: kill and waitpid on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, libc::__WALL);
    }
    assert_eq!(r, 0, "PTRACE_GETREGSET: {err}");
    assert_eq!(iov.iov_len, host.cpu.xstate_regset_size as usize);

    // The real area passes the format's checks when put in a thread record.
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let mut body = write_sample(&tmp.path().join("img"), &rootfs).body;
    body.threads[0].xsave = buf[..iov.iov_len].to_vec();
    parse_manifest(&manifest_of(&body)).unwrap();
}
