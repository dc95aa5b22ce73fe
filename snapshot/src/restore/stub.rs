//! The restore stub: a minimal static ELF, exec'd by the sandbox's init in
//! place of the container's process and caught by the restorer at its exec
//! stop, before it runs a single instruction.
//!
//! Why its own tiny ELF rather than a fork or a copy of sprout (pitfalls
//! §0.2): an exec gives a fresh mm with no rseq registration, no TLS and no
//! signal handlers, sized by the dumped `RLIMIT_STACK`; and having no libc
//! means nothing registers rseq or touches the address space we are about
//! to replace. Should it ever run, it only calls `pause()` in a loop.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;
const CODE_OFF: usize = EHDR + 2 * PHDR;

/// `mov eax, 34 (pause); syscall; jmp back to the mov`.
const CODE: [u8; 9] = [0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7];

/// The ELF file's bytes.
pub fn elf() -> Vec<u8> {
    let total = (CODE_OFF + CODE.len()) as u64;
    let mut b = Vec::with_capacity(total as usize);
    // ELF header.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    b.extend_from_slice(&(BASE + CODE_OFF as u64).to_le_bytes()); // e_entry
    b.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&(EHDR as u16).to_le_bytes());
    b.extend_from_slice(&(PHDR as u16).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // PT_LOAD, R+X, the whole file at BASE.
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&BASE.to_le_bytes());
    b.extend_from_slice(&BASE.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&0x1000u64.to_le_bytes());
    // PT_GNU_STACK, RW: a non-executable stack.
    b.extend_from_slice(&0x6474_e551u32.to_le_bytes());
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&[0; 48]);
    b.extend_from_slice(&CODE);
    debug_assert_eq!(b.len() as u64, total);
    b
}

/// A sealed memfd holding the stub, ready for `execveat(fd, "", AT_EMPTY_PATH)`.
pub fn memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static C string and flags; the result is
    // a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"sprout-restore-stub".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(&elf())?;
    let fd = OwnedFd::from(file);
    // Sealed so nothing can change the program between here and the exec.
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own fd with integer arguments.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::F_ADD_SEALS,
            seals,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn the_stub_is_a_valid_executable_that_pauses() {
        let fd = super::memfd().unwrap();
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Still running (paused), not crashed.
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
