//! A sandbox's first process, made without the init helper: cloned
//! sharing the caller's memory (`CLONE_VM`, on a stack of its own), it
//! sets itself up with raw system calls, waits at a gate, and execs a
//! program given as an fd, which a tracer takes over.
//!
//! Why `CLONE_VM`: a plain fork of the caller (sprout's CLI or daemon,
//! with several threads and a few MiB of heap) copies its page tables and
//! write-protects its memory, flushing the TLB of every CPU running one of
//! its threads: 0.4–1 ms on this VM, where sharing the memory costs
//! nothing. Sharing it is safe because the child
//! - runs on its own stack and touches no memory but that stack and the
//!   [`ChildData`] the parent keeps alive (with the stack) until the child
//!   has exec'd or is reaped;
//! - never touches thread-local storage, which is the calling thread's:
//!   its system calls are made with the `syscall` instruction directly,
//!   so no libc wrapper writes `errno`, and nothing in it can panic;
//! - runs with every signal blocked, so no handler runs on its stack;
//! - has a file descriptor table of its own (no `CLONE_FILES`).
//!
//! The exec leaves the shared memory; the close-on-exec report pipe then
//! reads EOF, which is how [`Gated::open`] knows the stack is free.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::Pid;

use super::{
    CLONE_INTO_CGROUP, CLONE_PIDFD, CloneArgs, SpawnError, SpawnRequest, SpawnStep, Spawned,
    TAG_AT_GATE, finish_spawn, kill_and_reap, pipe_cloexec, read_record, step_failed,
};

/// What a gated child does itself before its exec, in this order, after
/// the joins: see [`spawn_gated`].
#[derive(Debug)]
pub struct GatedSteps {
    /// The program to exec, with `execveat(fd, "", AT_EMPTY_PATH)`.
    pub program: OwnedFd,
    /// v1 `tasks` files the child writes `0` to, moving itself in (see
    /// `Cgroup::open_v1_task_files` for why not the parent).
    pub task_files: Vec<OwnedFd>,
    /// Then unshare a cgroup namespace, rooted at the cgroup it is in.
    pub unshare_cgroup_ns: bool,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    /// Join a new session keyring of this name (failure ignored, as runc).
    pub keyring: Option<CString>,
}

/// Everything the child reads, as plain numbers and pointers into
/// memory owned by the same [`Gated`] (or the caller's frame, until the
/// child reports it waits at the gate).
struct ChildData {
    joins: Vec<(RawFd, i32)>,
    task_files: Vec<RawFd>,
    unshare_cgroup_ns: bool,
    hostname: Option<(*const libc::c_char, usize)>,
    domainname: Option<(*const libc::c_char, usize)>,
    keyring: *const libc::c_char,
    stdio: [RawFd; 3],
    pass: Vec<RawFd>,
    report: RawFd,
    gate: RawFd,
    program: RawFd,
}

/// The child's stack: an anonymous mapping of the caller's, unmapped once
/// the child has left the shared memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

const STACK_LEN: usize = 64 * 1024;

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ChildStack {
            base,
            len: STACK_LEN,
        })
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used: whoever owns the stack
        // drops it only after the child exec'd or was reaped.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// What must outlive the child's use of the shared memory.
struct Shared {
    _data: Box<ChildData>,
    _names: [Option<CString>; 3],
    _stack: ChildStack,
}

/// A child stopped at its gate, set up: see [`spawn_gated`]. Dropped
/// unopened, it is killed and reaped.
pub struct Gated {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    gate: Option<OwnedFd>,
    report: std::fs::File,
    shared: Option<Shared>,
    _program: OwnedFd,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated").field("pid", &self.pid).finish()
    }
}

impl Gated {
    /// Lets the child exec its program and waits until it has: returns
    /// then, or with the step and errno of a failed exec.
    pub fn open(mut self) -> Result<Spawned, SpawnError> {
        let gate = self.gate.take().expect("present until opened");
        // SAFETY: write of one byte from a valid buffer to our pipe end.
        if unsafe { libc::write(gate.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
            let e = io::Error::last_os_error();
            self.kill();
            return Err(SpawnError::Prepare(e));
        }
        // EOF: the exec closed the child's end (close-on-exec), after it
        // left the shared memory. A record: the exec failed.
        match read_record(&mut self.report) {
            Ok(None) => {}
            Ok(Some((tag, errno))) => {
                self.kill();
                return Err(step_failed(tag, errno));
            }
            Err(e) => {
                self.kill();
                return Err(e);
            }
        }
        self.shared = None;
        Ok(Spawned {
            pid: self.pid,
            pidfd: self.pidfd.try_clone().map_err(SpawnError::Prepare)?,
        })
    }

    /// Kills and reaps the child; then its stack can go.
    /// (Through the pidfd: a tracer may have reaped it already, and its
    /// pid been reused.)
    fn kill(&mut self) {
        let _ = crate::container::pidfd_kill(&self.pidfd, libc::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
        self.shared = None;
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        if self.gate.is_some() {
            // Never opened: the child must not outlive the attempt.
            self.kill();
        }
    }
}

/// Spawns a sandbox's first process without the init helper: cloned into
/// `req`'s new namespaces (and cgroup2 directory), it joins `req.joins`,
/// then does `steps` itself, takes its stdio, marks every other inherited
/// fd but `req.pass` close-on-exec, and waits at a gate. Returned then:
/// the caller can trace it, set its limits (`prlimit`) and
/// [`Gated::open`] the gate, and it execs `steps.program` with an empty
/// argv and environment. A pid namespace cannot be joined this way (it
/// needs the intermediate); `super::prepare_fds` must have been called on
/// `req`.
pub fn spawn_gated(mut req: SpawnRequest, steps: GatedSteps) -> Result<Gated, SpawnError> {
    if req.joins_pid_namespace || req.id_maps.is_some() {
        return Err(SpawnError::Prepare(io::Error::new(
            io::ErrorKind::Unsupported,
            "a gated child cannot join a pid namespace or map ids",
        )));
    }
    let (report_r, report_w) = pipe_cloexec().map_err(SpawnError::Prepare)?;
    let (gate_r, gate_w) = pipe_cloexec().map_err(SpawnError::Prepare)?;
    let stack = ChildStack::new().map_err(SpawnError::Prepare)?;
    let names = [steps.hostname, steps.domainname, steps.keyring];
    let as_name = |c: &Option<CString>| c.as_ref().map(|c| (c.as_ptr(), c.as_bytes().len()));
    let data = Box::new(ChildData {
        joins: req
            .joins
            .iter()
            .map(|j| (j.fd.as_raw_fd(), j.nstype))
            .collect(),
        task_files: steps.task_files.iter().map(|f| f.as_raw_fd()).collect(),
        unshare_cgroup_ns: steps.unshare_cgroup_ns,
        hostname: as_name(&names[0]),
        domainname: as_name(&names[1]),
        keyring: names[2].as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
        stdio: [0, 1, 2].map(|i| req.stdio[i].as_ref().map_or(-1, |f| f.as_raw_fd())),
        pass: req.pass.iter().map(|f| f.as_raw_fd()).collect(),
        report: report_w.as_raw_fd(),
        gate: gate_r.as_raw_fd(),
        program: steps.program.as_raw_fd(),
    });
    let cgroup_fd = req.cgroup.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: req.new_namespaces
            | libc::CLONE_VM as u64
            | CLONE_PIDFD
            | if cgroup_fd >= 0 { CLONE_INTO_CGROUP } else { 0 },
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        cgroup: cgroup_fd.max(0) as u64,
        ..Default::default()
    };

    // Every signal blocked across the clone: the child inherits the mask
    // and keeps it through the exec (its tracer gives the program its own).
    let all = SigSet::all();
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old))
        .map_err(|e| SpawnError::Prepare(e.into()))?;
    // SAFETY: see the module: the child runs `child_entry` on its own
    // stack with `data`, both kept alive by the returned `Gated` until it
    // has exec'd or is reaped.
    let ret = unsafe { clone3_into(&mut args, child_entry, &*data as *const ChildData) };
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(report_w);
    drop(gate_r);
    if ret < 0 {
        return Err(SpawnError::Clone(io::Error::from_raw_os_error(-ret as i32)));
    }
    let child = Pid::from_raw(ret as i32);
    let mut report = std::fs::File::from(report_r);
    let shared = Shared {
        _data: data,
        _names: names,
        _stack: stack,
    };
    match finish_spawn(child, pidfd, false, &mut req, None, &mut report, true) {
        Ok(spawned) => Ok(Gated {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            gate: Some(gate_w),
            report,
            shared: Some(shared),
            _program: steps.program,
        }),
        Err(e) => {
            // It failed a step: reap it, then free what it used.
            kill_and_reap(child);
            drop(shared);
            Err(e)
        }
    }
}

/// `clone3(args)`; the child calls `entry(data)` on the stack `args`
/// names. Returns the child's pid or -errno.
///
/// # Safety
/// `args` must name a stack that stays mapped while the child runs on it,
/// and `entry` must never return nor touch the caller's thread state.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into(
    args: &mut CloneArgs,
    entry: unsafe extern "C" fn(*const ChildData) -> !,
    data: *const ChildData,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract. In the child (rax = 0) the kernel has
    // switched to the new stack, 16-byte aligned at its top, so the `call`
    // gives `entry` a standard frame; r12 and r13 survive `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") data,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// A system call by the `syscall` instruction: no libc, no `errno`.
/// Returns the result or -errno.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn raw(nr: libc::c_long, a: [usize; 5]) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for system call `nr`.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Writes a (tag, value) record to the report pipe, from the child.
unsafe fn report_record(report: RawFd, tag: i32, value: i32) {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&tag.to_le_bytes());
    rec[4..].copy_from_slice(&value.to_le_bytes());
    // SAFETY: a write from this stack's buffer.
    unsafe {
        raw(
            libc::SYS_write,
            [report as usize, rec.as_ptr() as usize, 8, 0, 0],
        )
    };
}

/// Reports `step` with the errno of `ret` (negative) and exits.
unsafe fn fail(report: RawFd, step: SpawnStep, ret: isize) -> ! {
    // SAFETY: a record from the child, then its exit_group.
    unsafe {
        report_record(report, step as i32, -(ret as i32));
        raw(libc::SYS_exit_group, [127, 0, 0, 0, 0]);
    }
    // exit_group does not return.
    loop {
        std::hint::spin_loop();
    }
}

/// The child, on its own stack, sharing the caller's memory: see the
/// module for what it may touch.
unsafe extern "C" fn child_entry(data: *const ChildData) -> ! {
    // SAFETY: (the whole function) raw system calls on descriptors and
    // pointers in `data`, which the parent keeps alive and unchanged while
    // this runs, and on buffers of this stack.
    unsafe {
        let d = &*data;
        let report = d.report;
        let check = |ret: isize, step: SpawnStep| {
            if ret < 0 {
                fail(report, step, ret);
            }
        };
        for &(fd, nstype) in &d.joins {
            check(
                raw(libc::SYS_setns, [fd as usize, nstype as usize, 0, 0, 0]),
                SpawnStep::JoinNamespace,
            );
        }
        for &fd in &d.task_files {
            // Single-threaded: `0` moves this process, without the global
            // lock a write of our pid from the parent would take.
            let r = raw(
                libc::SYS_write,
                [fd as usize, b"0".as_ptr() as usize, 1, 0, 0],
            );
            check(r, SpawnStep::JoinCgroup);
            raw(libc::SYS_close, [fd as usize, 0, 0, 0, 0]);
        }
        if d.unshare_cgroup_ns {
            check(
                raw(
                    libc::SYS_unshare,
                    [libc::CLONE_NEWCGROUP as usize, 0, 0, 0, 0],
                ),
                SpawnStep::UnshareCgroupNs,
            );
        }
        for (name, nr) in [
            (d.hostname, libc::SYS_sethostname),
            (d.domainname, libc::SYS_setdomainname),
        ] {
            if let Some((p, n)) = name {
                check(raw(nr, [p as usize, n, 0, 0, 0]), SpawnStep::SetNames);
            }
        }
        if !d.keyring.is_null() {
            // KEYCTL_JOIN_SESSION_KEYRING; keyrings may be disabled: fine.
            raw(libc::SYS_keyctl, [1, d.keyring as usize, 0, 0, 0]);
        }
        for (target, &src) in d.stdio.iter().enumerate() {
            if src >= 0 {
                check(
                    raw(libc::SYS_dup2, [src as usize, target, 0, 0, 0]),
                    SpawnStep::Stdio,
                );
            }
        }
        let r = raw(
            libc::SYS_close_range,
            [
                3,
                u32::MAX as usize,
                libc::CLOSE_RANGE_CLOEXEC as usize,
                0,
                0,
            ],
        );
        check(r, SpawnStep::PassFd);
        for &fd in &d.pass {
            check(
                raw(
                    libc::SYS_fcntl,
                    [fd as usize, libc::F_SETFD as usize, 0, 0, 0],
                ),
                SpawnStep::PassFd,
            );
        }
        let (gate, program) = (d.gate, d.program);
        report_record(report, TAG_AT_GATE, 0);
        let mut b = 0u8;
        if raw(
            libc::SYS_read,
            [gate as usize, &mut b as *mut u8 as usize, 1, 0, 0],
        ) != 1
        {
            // The parent gave up (closed the gate): nobody waits for us.
            raw(libc::SYS_exit_group, [127, 0, 0, 0, 0]);
        }
        static EMPTY: [usize; 1] = [0];
        let r = raw(
            libc::SYS_execveat,
            [
                program as usize,
                c"".as_ptr() as usize,
                EMPTY.as_ptr() as usize,
                EMPTY.as_ptr() as usize,
                libc::AT_EMPTY_PATH as usize,
            ],
        );
        fail(report, SpawnStep::ExecProgram, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::{NamespaceJoin, prepare_fds};

    fn steps(program: &str) -> GatedSteps {
        GatedSteps {
            program: std::fs::File::open(program).unwrap().into(),
            task_files: Vec::new(),
            unshare_cgroup_ns: false,
            hostname: None,
            domainname: None,
            keyring: None,
        }
    }

    fn exit_status(pid: Pid) -> nix::sys::wait::WaitStatus {
        nix::sys::wait::waitpid(pid, None).unwrap()
    }

    #[test]
    fn a_gated_child_waits_then_execs_its_program() {
        // A pipe passed in must be kept across the exec (no
        // close-on-exec), which /proc shows while the child waits.
        let (r, _w) = pipe_cloexec().unwrap();
        let mut req = SpawnRequest {
            pass: vec![r],
            ..Default::default()
        };
        let passed = prepare_fds(&mut req).unwrap();
        let gated = spawn_gated(req, steps("/bin/true")).unwrap();
        let pid = gated.pid;
        // At the gate: set up, not exec'd (still a copy of this program).
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, std::fs::read_link("/proc/self/exe").unwrap());
        let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", passed[0])).unwrap();
        let octal = flags
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim();
        let cloexec = u32::from_str_radix(octal, 8).unwrap() & libc::O_CLOEXEC as u32;
        assert_eq!(cloexec, 0, "a passed fd is kept across the exec");
        let spawned = gated.open().unwrap();
        assert_eq!(
            exit_status(spawned.pid),
            nix::sys::wait::WaitStatus::Exited(spawned.pid, 0)
        );
    }

    #[test]
    fn a_step_that_fails_is_reported_and_the_child_reaped() {
        // setns on a file that is no namespace fails with EINVAL.
        let not_a_namespace: OwnedFd = std::fs::File::open("/bin/true").unwrap().into();
        let req = SpawnRequest {
            joins: vec![NamespaceJoin {
                fd: not_a_namespace,
                nstype: libc::CLONE_NEWNET,
            }],
            ..Default::default()
        };
        match spawn_gated(req, steps("/bin/true")) {
            Err(SpawnError::Child {
                step: SpawnStep::JoinNamespace,
                errno,
            }) => assert_eq!(errno, libc::EINVAL),
            other => panic!("expected a failed join, got {other:?}"),
        }
    }

    #[test]
    fn an_unopened_gate_kills_and_reaps_the_child() {
        let gated = spawn_gated(SpawnRequest::default(), steps("/bin/true")).unwrap();
        let pid = gated.pid;
        drop(gated);
        // Reaped: no such child any more.
        assert_eq!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        );
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_reported() {
        // A directory opened for reading is no program: execveat fails.
        let mut s = steps("/bin/true");
        s.program = std::fs::File::open("/").unwrap().into();
        let gated = spawn_gated(SpawnRequest::default(), s).unwrap();
        match gated.open() {
            Err(SpawnError::Child {
                step: SpawnStep::ExecProgram,
                errno,
            }) => assert_eq!(errno, libc::EACCES),
            other => panic!("expected a failed exec, got {other:?}"),
        }
    }
}
