//! Starting a container's init: `clone3` straight into new namespaces, then
//! `execve` of the init helper.
//!
//! The caller may be multi-threaded (a test harness, tokio), so the child of
//! `clone3` is treated like the child of `fork` in such a process: between
//! the clone and the exec it makes only raw system calls on data prepared
//! beforehand: no allocation, no locks, no Rust std I/O.
//!
//! Two shapes:
//! - direct: one `clone3` with the new namespaces' flags; the child joins
//!   namespaces given by path (`setns`) and execs the helper, which is pid 1
//!   of the new pid namespace;
//! - via an intermediate: when a pid namespace is joined (a `setns` only
//!   affects children), the child joins, then `clone3(CLONE_PARENT)`s the
//!   real init, so that the init is still our child, reports its pid and exits.
//!
//! Failures before the exec come back over a close-on-exec pipe as
//! (step, errno) records; EOF means the exec happened.
//!
//! [`gated`] is the direct shape without the init helper, for a program a
//! tracer takes over (see [`crate::direct`]).

pub mod gated;

pub use gated::{Gated, GatedSteps, spawn_gated};

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::Pid;

/// Where the child was when it failed, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum SpawnStep {
    WaitIdMaps = 1,
    BecomeRootInUserNs = 2,
    JoinNamespace = 3,
    Stdio = 4,
    PassFd = 5,
    CloneInit = 6,
    Exec = 7,
    JoinCgroup = 8,
    UnshareCgroupNs = 9,
    SetNames = 10,
    ExecProgram = 11,
}

impl SpawnStep {
    fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::WaitIdMaps,
            2 => Self::BecomeRootInUserNs,
            3 => Self::JoinNamespace,
            4 => Self::Stdio,
            5 => Self::PassFd,
            6 => Self::CloneInit,
            7 => Self::Exec,
            8 => Self::JoinCgroup,
            9 => Self::UnshareCgroupNs,
            10 => Self::SetNames,
            11 => Self::ExecProgram,
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Self::WaitIdMaps => "waiting for the user namespace id maps",
            Self::BecomeRootInUserNs => "becoming root in the new user namespace",
            Self::JoinNamespace => "joining a namespace",
            Self::Stdio => "setting up stdio",
            Self::PassFd => "passing descriptors",
            Self::CloneInit => "cloning the init into the joined pid namespace",
            Self::Exec => "executing the init helper",
            Self::JoinCgroup => "joining the container's cgroups",
            Self::UnshareCgroupNs => "unsharing the cgroup namespace",
            Self::SetNames => "setting the hostname or domainname",
            Self::ExecProgram => "executing the program",
        }
    }
}

/// Record tag for "the init's pid" from the intermediate.
const TAG_PID: i32 = 100;
/// Record tag for "set up, waiting at the gate" from a gated child.
const TAG_AT_GATE: i32 = 101;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("init helper path {0:?} contains a NUL byte")]
    BadPath(std::path::PathBuf),
    #[error("preparing to clone: {0}")]
    Prepare(#[source] io::Error),
    #[error("clone3 failed: {0}")]
    Clone(#[source] io::Error),
    #[error("container init: {} failed: {}", .step.describe(), io::Error::from_raw_os_error(*.errno))]
    Child { step: SpawnStep, errno: i32 },
    #[error("container init: {joined} namespace {path}: {source}")]
    OpenNamespace {
        joined: String,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container init: child reported garbage on the setup pipe")]
    Protocol,
    #[error("writing id maps of pid {pid}: {file}: {source}")]
    IdMap {
        pid: i32,
        file: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A namespace to join in the child, by an fd opened beforehand.
#[derive(Debug)]
pub struct NamespaceJoin {
    pub fd: OwnedFd,
    /// `CLONE_NEW*` type for `setns`; 0 with a pidfd means "the ones in
    /// `pidfd_flags`".
    pub nstype: i32,
}

/// What to spawn and how.
#[derive(Debug, Default)]
pub struct SpawnRequest {
    /// `CLONE_NEW*` flags of namespaces created by the clone.
    pub new_namespaces: u64,
    /// Namespaces joined before the exec, in order (user first).
    pub joins: Vec<NamespaceJoin>,
    /// Whether a pid namespace is among the joins: the init must then be a
    /// child of the joining process.
    pub joins_pid_namespace: bool,
    /// Descriptors for the init's 0, 1, 2; `None` inherits the caller's.
    pub stdio: [Option<OwnedFd>; 3],
    /// Descriptors the init receives, in this order; their numbers in the
    /// init are returned by [`prepare_fds`].
    pub pass: Vec<OwnedFd>,
    /// The caller's fds 3..3+N stay where they are (runc's --preserve-fds).
    pub preserve_fds: u32,
    /// A cgroup2 directory to start the init in (`CLONE_INTO_CGROUP`).
    pub cgroup: Option<OwnedFd>,
    /// With a new user namespace: uid_map and gid_map contents the parent
    /// writes while the child waits, before it execs as root in the ns.
    pub id_maps: Option<(String, String)>,
}

/// A spawned init.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

// clone3's argument block (linux/sched.h), spelled out so its layout is
// visible here rather than depending on which libc target defines it.
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub(crate) flags: u64,
    pub(crate) pidfd: u64,
    pub(crate) child_tid: u64,
    pub(crate) parent_tid: u64,
    pub(crate) exit_signal: u64,
    pub(crate) stack: u64,
    pub(crate) stack_size: u64,
    pub(crate) tls: u64,
    pub(crate) set_tid: u64,
    pub(crate) set_tid_size: u64,
    pub(crate) cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_PARENT: u64 = 0x8000;
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Everything the child touches, as plain numbers and pointers into
/// storage owned by the parent's stack frame.
struct ChildPlan {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    joins: Vec<(RawFd, i32)>,
    stdio: [RawFd; 3],
    pass: Vec<RawFd>,
    report: RawFd,
    idmap_wait: RawFd,
    via_intermediate: bool,
    grandchild_flags: u64,
    cgroup: RawFd,
}

/// Moves every descriptor the init receives above the preserved range, so
/// that nothing collides with 0..3+preserve_fds, and returns their numbers.
fn lift_fd(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd; the result is owned here.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The fd numbers the passed descriptors will have in the init, given the
/// lifted copies. Exposed so the caller can put them on the init's argv.
pub fn prepare_fds(req: &mut SpawnRequest) -> io::Result<Vec<RawFd>> {
    let min = 3 + req.preserve_fds as RawFd + 16;
    let mut lifted = Vec::with_capacity(req.pass.len());
    for fd in &req.pass {
        lifted.push(lift_fd(fd, min)?);
    }
    let numbers = lifted.iter().map(|f| f.as_raw_fd()).collect();
    req.pass = lifted;
    for slot in req.stdio.iter_mut() {
        if let Some(fd) = slot.take() {
            *slot = Some(lift_fd(&fd, min)?);
        }
    }
    Ok(numbers)
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Spawns the init helper. `prepare_fds` must have been called on `req`.
pub fn spawn(
    init_binary: &Path,
    argv: &[String],
    mut req: SpawnRequest,
) -> Result<Spawned, SpawnError> {
    let path = CString::new(init_binary.as_os_str().as_bytes())
        .map_err(|_| SpawnError::BadPath(init_binary.to_path_buf()))?;
    let argv_c: Vec<CString> = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| SpawnError::BadPath(init_binary.to_path_buf()))
        })
        .collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let envp_p: Vec<*const libc::c_char> = vec![std::ptr::null()];

    let (report_r, report_w) = pipe_cloexec().map_err(SpawnError::Prepare)?;
    let idmap_pipe = if req.id_maps.is_some() {
        Some(pipe_cloexec().map_err(SpawnError::Prepare)?)
    } else {
        None
    };

    let via_intermediate = req.joins_pid_namespace;
    let cgroup_fd = req.cgroup.as_ref().map_or(-1, |f| f.as_raw_fd());
    let cgroup_flags = if cgroup_fd >= 0 { CLONE_INTO_CGROUP } else { 0 };
    let plan = ChildPlan {
        path: path.as_ptr(),
        argv: argv_p.as_ptr(),
        envp: envp_p.as_ptr(),
        joins: req
            .joins
            .iter()
            .map(|j| (j.fd.as_raw_fd(), j.nstype))
            .collect(),
        stdio: [0, 1, 2].map(|i| req.stdio[i].as_ref().map_or(-1, |f| f.as_raw_fd())),
        pass: req.pass.iter().map(|f| f.as_raw_fd()).collect(),
        report: report_w.as_raw_fd(),
        idmap_wait: idmap_pipe.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        via_intermediate,
        grandchild_flags: cgroup_flags,
        cgroup: cgroup_fd,
    };

    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: req.new_namespaces
            | if via_intermediate {
                0
            } else {
                CLONE_PIDFD | cgroup_flags
            },
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: if via_intermediate {
            0
        } else {
            cgroup_fd.max(0) as u64
        },
        ..Default::default()
    };

    // Block every signal across the clone: the child must not run the
    // caller's handlers before it execs; the init resets its mask itself.
    let all = SigSet::all();
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old))
        .map_err(|e| SpawnError::Prepare(e.into()))?;
    // SAFETY: clone3 with a valid, fully initialised argument block; no
    // CLONE_VM, so the child gets a copy of this address space and runs
    // `child_main`, which only makes async-signal-safe raw system calls.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: we are the freshly cloned child; see `child_main`.
        unsafe { child_main(&plan) }
    }
    let clone_err = io::Error::last_os_error();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(report_w);
    if ret < 0 {
        return Err(SpawnError::Clone(clone_err));
    }
    let child = Pid::from_raw(ret as i32);

    let result = finish_spawn(
        child,
        pidfd,
        via_intermediate,
        &mut req,
        idmap_pipe,
        &mut std::fs::File::from(report_r),
        false,
    );
    if result.is_err() {
        // The child failed before or at exec; reap it so nothing is left.
        kill_and_reap(child);
    }
    result
}

/// Kills our child `child` and collects its exit.
fn kill_and_reap(child: Pid) {
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
}

/// One (tag, value) record from the child's report pipe; `None` at EOF.
fn read_record(file: &mut std::fs::File) -> Result<Option<(i32, i32)>, SpawnError> {
    let mut rec = [0u8; 8];
    match read_full(file, &mut rec) {
        Ok(0) => Ok(None),
        Ok(8) => Ok(Some((
            i32::from_le_bytes(rec[..4].try_into().unwrap()),
            i32::from_le_bytes(rec[4..].try_into().unwrap()),
        ))),
        Ok(_) => Err(SpawnError::Protocol),
        Err(e) => Err(SpawnError::Prepare(e)),
    }
}

/// A (step, errno) record: the child failed that step.
fn step_failed(tag: i32, errno: i32) -> SpawnError {
    match SpawnStep::from_code(tag) {
        Some(step) => SpawnError::Child { step, errno },
        None => SpawnError::Protocol,
    }
}

/// Reads the child's records from its report pipe `file`: until EOF (it
/// exec'd), or with `gated` until it waits at its gate (the caller keeps
/// reading `file` for the exec's outcome).
fn finish_spawn(
    child: Pid,
    pidfd: RawFd,
    via_intermediate: bool,
    req: &mut SpawnRequest,
    idmap_pipe: Option<(OwnedFd, OwnedFd)>,
    file: &mut std::fs::File,
    gated: bool,
) -> Result<Spawned, SpawnError> {
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd here; without
    // it `pidfd` is still -1 and we open one below.
    let mut pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    if let (Some((maps_uid, maps_gid)), Some((r, w))) = (req.id_maps.as_ref(), idmap_pipe) {
        drop(r);
        write_id_maps(child.as_raw(), maps_uid, maps_gid)?;
        nix::unistd::write(&w, &[1]).map_err(|e| SpawnError::Prepare(e.into()))?;
    }
    let mut init_pid = child;
    let read = (|| loop {
        let (tag, value) = match read_record(file)? {
            // A gated child cannot have exec'd yet: it died.
            None if gated => return Err(SpawnError::Protocol),
            None => return Ok(()),
            Some(r) => r,
        };
        if tag == TAG_PID && via_intermediate {
            init_pid = Pid::from_raw(value);
        } else if tag == TAG_AT_GATE && gated {
            return Ok(());
        } else {
            return Err(step_failed(tag, value));
        }
    })();
    if let Err(e) = read {
        // The init the intermediate reported is our child too (cloned
        // with CLONE_PARENT): the caller reaps only the intermediate.
        if init_pid != child {
            kill_and_reap(init_pid);
        }
        return Err(e);
    }
    if via_intermediate {
        // The init, cloned with CLONE_PARENT, is our child too. The
        // intermediate exits right after reporting; it is reaped last, so
        // that on an error here the caller still kills and reaps a pid of
        // ours (a reaped one could be someone else's by then).
        if init_pid == child {
            return Err(SpawnError::Protocol);
        }
        match pidfd_open(init_pid.as_raw()) {
            Ok(fd) => pidfd = Some(fd),
            Err(e) => {
                kill_and_reap(init_pid);
                return Err(SpawnError::Prepare(e));
            }
        }
        let _ = nix::sys::wait::waitpid(child, None);
    }
    Ok(Spawned {
        pid: init_pid,
        pidfd: pidfd.ok_or(SpawnError::Protocol)?,
    })
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn write_id_maps(pid: i32, uid: &str, gid: &str) -> Result<(), SpawnError> {
    for (file, contents) in [("uid_map", uid), ("gid_map", gid)] {
        std::fs::write(format!("/proc/{pid}/{file}"), contents)
            .map_err(|source| SpawnError::IdMap { pid, file, source })?;
    }
    Ok(())
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the result is a new owned fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reports a failed step and exits. Async-signal-safe.
unsafe fn child_fail(report: RawFd, step: SpawnStep) -> ! {
    // SAFETY: errno location is per-thread and valid in the child.
    let errno = unsafe { *libc::__errno_location() };
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&(step as i32).to_le_bytes());
    rec[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: raw write and _exit are async-signal-safe.
    unsafe {
        libc::write(report, rec.as_ptr().cast(), 8);
        libc::_exit(127)
    }
}

/// The child after `clone3`. Only raw system calls from here to `execve`.
unsafe fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY: (the whole function) every call is a raw, async-signal-safe
    // system call on descriptors and pointers prepared by the parent, which
    // stay valid because the child has its own copy of the parent's memory.
    unsafe {
        if plan.idmap_wait >= 0 {
            let mut b = 0u8;
            if libc::read(plan.idmap_wait, (&mut b as *mut u8).cast(), 1) != 1 {
                child_fail(plan.report, SpawnStep::WaitIdMaps);
            }
            // Root in the new user namespace keeps its capabilities across
            // the exec of the init helper.
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                child_fail(plan.report, SpawnStep::BecomeRootInUserNs);
            }
        }
        for &(fd, nstype) in &plan.joins {
            if libc::setns(fd, nstype) != 0 {
                child_fail(plan.report, SpawnStep::JoinNamespace);
            }
        }
        for (target, &src) in plan.stdio.iter().enumerate() {
            if src >= 0 && libc::dup2(src, target as i32) < 0 {
                child_fail(plan.report, SpawnStep::Stdio);
            }
        }
        for &fd in &plan.pass {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                child_fail(plan.report, SpawnStep::PassFd);
            }
        }
        if plan.via_intermediate {
            // The init waits until we have reported its pid (one byte on
            // `reported` after the record): otherwise, on a busy host, its
            // own failure could reach the caller first, which would then
            // not know the pid of a child it must reap. Without the byte
            // (we died first) it exits: nobody would track it.
            let mut reported = [-1i32; 2];
            if libc::pipe2(reported.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                child_fail(plan.report, SpawnStep::CloneInit);
            }
            // With CLONE_PARENT clone3 wants exit_signal 0: the child
            // inherits ours (SIGCHLD), as a sibling of ours.
            let mut args = CloneArgs {
                flags: CLONE_PARENT | plan.grandchild_flags,
                exit_signal: 0,
                cgroup: plan.cgroup.max(0) as u64,
                ..Default::default()
            };
            let pid = libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            );
            if pid < 0 {
                child_fail(plan.report, SpawnStep::CloneInit);
            }
            if pid > 0 {
                let mut rec = [0u8; 8];
                rec[..4].copy_from_slice(&TAG_PID.to_le_bytes());
                rec[4..].copy_from_slice(&(pid as i32).to_le_bytes());
                if libc::write(plan.report, rec.as_ptr().cast(), 8) == 8 {
                    libc::write(reported[1], [1u8].as_ptr().cast(), 1);
                }
                libc::_exit(0);
            }
            libc::close(reported[1]);
            let mut byte = 0u8;
            let n = loop {
                let n = libc::read(reported[0], (&mut byte as *mut u8).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            libc::close(reported[0]);
            if n != 1 {
                libc::_exit(127);
            }
        }
        libc::execve(plan.path, plan.argv, plan.envp);
        child_fail(plan.report, SpawnStep::Exec)
    }
}
