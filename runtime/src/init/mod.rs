//! The container's init: the code that runs inside the new namespaces,
//! in a fresh exec of the `sprout-init` helper, and ends in `execve` of the
//! container's process.
//!
//! It receives one [`InitConfig`] over the channel and walks through small
//! steps; each failure is reported to the parent as an [`InitFailure`]
//! naming the step. The helper is single-threaded from its first
//! instruction, so forking hooks and changing credentials here is safe.

pub mod process;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{ContainerState, Hooks, LinuxPersonality, LinuxSeccomp, Process, State};
use serde::{Deserialize, Serialize};

use crate::channel::{InitChannel, InitMsg, ParentMsg};
use crate::console;
use crate::hooks::{self, HookKind};
use crate::rootfs::{self, RootfsConfig};
use crate::seccomp::SeccompProgram;
use crate::syscall::{CreateKind, LinuxSyscall, Syscall};
use process::{CapMasks, ExecPlan};

/// A failed init step, as reported to the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitFailure {
    pub step: String,
    pub message: String,
}

impl Display for InitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitMode {
    /// A new container: rootfs, then wait for `start`.
    Create,
    /// A new process in a running container's namespaces.
    Exec,
}

/// Everything the init needs, sent by the parent in one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub mode: InitMode,
    pub id: String,
    pub process: Process,
    /// Create mode only.
    pub rootfs: Option<RootfsConfig>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: BTreeMap<String, String>,
    pub hooks: Option<Hooks>,
    /// OCI state for the hooks the init runs; only `status` changes.
    pub state: State,
    pub seccomp: Option<LinuxSeccomp>,
    pub personality: Option<LinuxPersonality>,
    /// `exec.fifo`, opened read-write by the parent (create mode).
    pub exec_fifo_fd: Option<RawFd>,
    /// Connected `--console-socket` (terminal: true).
    pub console_socket_fd: Option<RawFd>,
    /// [`START_ERROR_FILE`], made empty by the parent (create mode): where
    /// a failure after `create` is reported for `start`.
    pub start_error_fd: Option<RawFd>,
    /// [`EXITS_FILE`], opened for appending (a holder's init).
    pub exits_fd: Option<RawFd>,
    pub preserve_fds: u32,
    /// v1 cgroup `tasks` files to write `0` to, before anything else (see
    /// `Cgroup::open_v1_task_files`); the unified hierarchy is joined at
    /// clone time (`CLONE_INTO_CGROUP`).
    pub cgroup_task_fds: Vec<RawFd>,
    /// Join this mount namespace first thing: an fd of a namespace file,
    /// or a pidfd (`join_mount_via_pidfd`). Joined here rather than before
    /// the exec, so the helper binary and its libraries were reachable.
    pub join_mount_fd: Option<RawFd>,
    pub join_mount_via_pidfd: bool,
    pub unshare_cgroup_ns: bool,
    /// `linux.timeOffsets` for a new time namespace (unshared here, so the
    /// offsets can be written before any process is inside).
    pub time_offsets: Option<BTreeMap<String, (i64, u32)>>,
    pub new_keyring: bool,
    /// In a new user namespace (setgroups may be denied there).
    pub user_namespace: bool,
    /// Ask the parent to run prestart/createRuntime hooks after the mounts.
    pub runtime_hooks: bool,
    /// Instead of the container's process, exec this program at `start`,
    /// before credentials, capabilities, no_new_privs and seccomp, for a
    /// tracer to take over (the restore stub).
    pub takeover: Option<TakeoverConfig>,
}

/// See [`InitConfig::takeover`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TakeoverConfig {
    /// The program, open (a memfd or an `O_PATH` fd): exec'd with
    /// `execveat(fd, "", AT_EMPTY_PATH)`, so it need not exist in the rootfs.
    pub exe_fd: RawFd,
    /// `RLIMIT_STACK` for the exec: it decides the new mm's `mmap_base`.
    pub rlimit_stack: Option<(u64, u64)>,
    /// Descriptors (numbers in the init) the program gets at 3, 4, ...
    pub inherit: Vec<RawFd>,
    /// Hold the pid namespace: the init forks, the child execs the program,
    /// and the init stays as the namespace's reaper (see [`reap_forever`]).
    pub holder: bool,
}

/// In a holder's state directory: one line `PID STATUS` per child the
/// reaper collected (PID in the holder's pid namespace; STATUS the exit
/// code, or 128 + the signal), appended as they exit.
pub const EXITS_FILE: &str = "exits.log";

/// Name of the file in the state directory where the init leaves the error
/// of a step that failed after `create` returned (start hooks, exec).
pub const START_ERROR_FILE: &str = "start.error";

type StepResult<T> = Result<T, InitFailure>;

fn at<T, E: Display>(step: &str, r: Result<T, E>) -> StepResult<T> {
    r.map_err(|e| InitFailure {
        step: step.to_string(),
        message: e.to_string(),
    })
}

/// Entry point of the `sprout-init` binary: `sprout-init <channel-fd>`.
pub fn main() -> ! {
    // First thing: non-dumpable, so that no process of the container, which
    // may already share our pid namespace (`exec`, a created container
    // waiting for `start` with the container's user and capabilities), can
    // open /proc/PID/exe (this host binary, to overwrite once we have
    // exec'd: runc's CVE-2019-5736) or reach our descriptors through
    // /proc/PID/fd: that takes CAP_SYS_PTRACE now. Until this line our
    // capabilities are not a subset of theirs, which keeps them out just
    // the same. The exec of the container's process makes it dumpable
    // again, with the container's binary as its exe.
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        eprintln!(
            "sprout-init: PR_SET_DUMPABLE: {}",
            io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    let fd: Option<RawFd> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    let Some(fd) = fd else {
        eprintln!("sprout-init: this helper is started by sprout, not by hand");
        std::process::exit(2);
    };
    // SAFETY: the spawner passed our end of the channel at this number.
    let mut ch = unsafe { InitChannel::from_raw_fd(fd) };
    let cfg = match ch.recv() {
        Ok(ParentMsg::Bootstrap(cfg)) => cfg,
        _ => std::process::exit(2),
    };
    let failure = match cfg.mode {
        InitMode::Create => match create(&mut ch, &cfg) {
            Ok(never) => match never {},
            Err(f) => f,
        },
        InitMode::Exec => match exec(&cfg) {
            Ok(never) => match never {},
            Err(f) => f,
        },
    };
    let _ = ch.send(&InitMsg::Failed(failure));
    std::process::exit(1);
}

/// Moves this (single-threaded) process into its v1 cgroups.
fn join_cgroups(cfg: &InitConfig) -> StepResult<()> {
    for &fd in &cfg.cgroup_task_fds {
        // SAFETY: write/close on an fd the parent passed for this purpose.
        let r = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let err = io::Error::last_os_error();
        // SAFETY: as above; the fd is not used again.
        unsafe { libc::close(fd) };
        if r != 1 {
            return at("joining the cgroups", Err(err));
        }
    }
    Ok(())
}

fn join_mount_namespace(cfg: &InitConfig) -> StepResult<()> {
    let Some(fd) = cfg.join_mount_fd else {
        return Ok(());
    };
    let nstype = if cfg.join_mount_via_pidfd {
        libc::CLONE_NEWNS
    } else {
        0
    };
    // SAFETY: setns on an fd the parent passed; we are single-threaded.
    let r = unsafe { libc::setns(fd, nstype) };
    // SAFETY: the fd is ours and no longer needed.
    unsafe { libc::close(fd) };
    at(
        "joining the mount namespace",
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        },
    )
}

/// Marks every inherited descriptor above the preserved ones close-on-exec:
/// the container must not see what its spawner happened to have open.
fn close_inherited_on_exec(preserve_fds: u32) -> StepResult<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 + preserve_fds,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    at(
        "marking inherited fds close-on-exec",
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        },
    )
}

fn unshare_late_namespaces(cfg: &InitConfig) -> StepResult<()> {
    if cfg.unshare_cgroup_ns {
        // Now that the parent has placed us in our cgroups, so the new
        // namespace is rooted at the container's cgroup.
        at(
            "unsharing the cgroup namespace",
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP),
        )?;
    }
    if let Some(offsets) = &cfg.time_offsets {
        at(
            "unsharing the time namespace",
            nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
                libc::CLONE_NEWTIME,
            )),
        )?;
        let text: String = offsets
            .iter()
            .map(|(clock, (secs, nanos))| format!("{clock} {secs} {nanos}\n"))
            .collect();
        // The exec of the container's process moves it into the namespace.
        at(
            "writing time offsets",
            std::fs::write("/proc/self/timens_offsets", text),
        )?;
    }
    Ok(())
}

fn hook_state(cfg: &InitConfig, status: ContainerState) -> Vec<u8> {
    let mut s = cfg.state.clone();
    s.set_status(status);
    serde_json::to_vec(&s).unwrap_or_default()
}

fn write_sysctls(sys: &dyn Syscall, sysctl: &BTreeMap<String, String>) -> StepResult<()> {
    for (key, value) in sysctl {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        at(
            &format!("sysctl {key}"),
            sys.write_proc_file(&path, value.as_bytes()),
        )?;
    }
    Ok(())
}

fn set_names(sys: &dyn Syscall, cfg: &InitConfig) -> StepResult<()> {
    if let Some(h) = cfg.hostname.as_deref().filter(|h| !h.is_empty()) {
        at("sethostname", sys.sethostname(h))?;
    }
    if let Some(d) = cfg.domainname.as_deref().filter(|d| !d.is_empty()) {
        at("setdomainname", sys.setdomainname(d))?;
    }
    Ok(())
}

fn setup_console(sys: &dyn Syscall, cfg: &InitConfig, bind_dev_console: bool) -> StepResult<()> {
    if !cfg.process.terminal().unwrap_or(false) {
        return Ok(());
    }
    let socket = cfg.console_socket_fd.ok_or_else(|| InitFailure {
        step: "console".into(),
        message: "terminal: true needs a console socket".into(),
    })?;
    // SAFETY: the parent passed this connected socket at this number.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    let size = cfg
        .process
        .console_size()
        .map(|b| (b.height() as u16, b.width() as u16));
    let pty = at("console", console::open_pty(size))?;
    if bind_dev_console {
        let target = at(
            "console",
            sys.resolve_in_root(Path::new("/"), Path::new("/dev/console"), CreateKind::File),
        )?;
        use std::os::fd::AsRawFd as _;
        at(
            "binding /dev/console",
            sys.bind_fd(pty.slave.as_raw_fd(), &target.path),
        )?;
    }
    use std::os::fd::AsRawFd;
    at(
        "console",
        console::send_fd(
            socket.as_raw_fd(),
            pty.master.as_raw_fd(),
            &pty.slave_path.to_string_lossy(),
        ),
    )?;
    drop(pty.master);
    at("console", console::become_tty(&pty.slave))
}

fn join_session_keyring(cfg: &InitConfig) {
    if !cfg.new_keyring {
        return;
    }
    let Ok(name) = std::ffi::CString::new(cfg.id.as_bytes()) else {
        return;
    };
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, name) with a valid C
    // string. Failure (keyrings disabled) is not fatal, as in runc.
    unsafe { libc::syscall(libc::SYS_keyctl, 1, name.as_ptr()) };
}

fn set_personality(p: Option<&LinuxPersonality>) -> StepResult<()> {
    let Some(p) = p else { return Ok(()) };
    let persona = match p.domain() {
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0,
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality takes a plain integer.
    let r = unsafe { libc::personality(persona) };
    at(
        "personality",
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        },
    )
}

/// The labels take effect at the exec. The parent checked that the host
/// has the LSM (`spec::check_lsm_available`): nothing under the
/// container's /sys decides whether a label is applied.
fn apply_lsm_labels(process: &Process) -> StepResult<()> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
            "/proc/self/attr/apparmor/exec"
        } else {
            "/proc/self/attr/exec"
        };
        at(
            "apparmor",
            crate::syscall::write_on_procfs(Path::new(attr), format!("exec {profile}").as_bytes()),
        )?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        at(
            "selinux",
            crate::syscall::write_on_procfs(Path::new("/proc/self/attr/exec"), label.as_bytes()),
        )?;
    }
    Ok(())
}

fn set_io_priority(process: &Process) -> StepResult<()> {
    let Some(prio) = process.io_priority() else {
        return Ok(());
    };
    use oci_spec::runtime::IOPriorityClass::*;
    let class = match prio.class() {
        IoprioClassRt => 1,
        IoprioClassBe => 2,
        IoprioClassIdle => 3,
    };
    let value = (class << 13) | (prio.priority() & 0xff);
    // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, value).
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, value) };
    at(
        "ioPriority",
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        },
    )
}

/// Limits and labels that the exec'd program inherits: rlimits,
/// personality, I/O priority, the LSM label of the exec.
fn apply_process_limits(cfg: &InitConfig) -> StepResult<()> {
    let p = &cfg.process;
    at(
        "rlimits",
        process::apply_rlimits(&LinuxSyscall, p.rlimits().as_deref().unwrap_or_default()),
    )?;
    set_personality(cfg.personality.as_ref())?;
    set_io_priority(p)?;
    apply_lsm_labels(p)
}

/// What the init execs once `start` comes.
enum Next {
    Process(ExecPlan, Option<SeccompProgram>),
    Takeover(TakeoverConfig),
}

/// The credential steps shared by create and exec: bounding set, early
/// seccomp (without no_new_privs it needs CAP_SYS_ADMIN, so before the
/// user switch), user, capabilities, no_new_privs, cwd, executable lookup.
/// Returns the exec plan and the filter still to install (with
/// no_new_privs: as late as possible, right before the exec).
fn become_container_process(cfg: &InitConfig) -> StepResult<(ExecPlan, Option<SeccompProgram>)> {
    let p = &cfg.process;
    let sys = LinuxSyscall;
    apply_process_limits(cfg)?;
    let masks = at(
        "capabilities",
        CapMasks::from_spec(p.capabilities().as_ref()),
    )?;
    let nnp = p.no_new_privileges().unwrap_or(false);
    let seccomp = match &cfg.seccomp {
        Some(s) => Some(at("seccomp", SeccompProgram::compile(s))?),
        None => None,
    };
    at("capabilities", process::drop_bounding(masks.bounding))?;
    let late_seccomp = if nnp {
        seccomp
    } else {
        if let Some(s) = &seccomp {
            at("seccomp", s.install())?;
        }
        None
    };
    at("user", process::set_user(p, true))?;
    at("capabilities", process::set_capabilities(&masks))?;
    if nnp {
        at("noNewPrivileges", process::set_no_new_privs())?;
    }
    enter_cwd(&sys, p.cwd())?;
    let path = at("exec", process::resolve_executable(p))?;
    let plan = at("exec", ExecPlan::new(&path, p))?;
    Ok((plan, late_seccomp))
}

/// Enters the process's working directory and checks it is beneath the
/// container's root: a path through a magic link such as
/// `/proc/self/fd/N` (a descriptor the caller passed on, say) would leave
/// the container's process outside it (runc's CVE-2024-21626). The
/// kernel reports such a directory as unreachable to `getcwd`.
fn enter_cwd(sys: &dyn Syscall, cwd: &Path) -> StepResult<()> {
    let step = || format!("cwd {}", cwd.display());
    at(&step(), sys.chdir(cwd))?;
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(InitFailure {
            step: step(),
            message: "the working directory is outside the container's root".into(),
        }),
    }
}

fn create(ch: &mut InitChannel, cfg: &InitConfig) -> StepResult<Infallible> {
    let sys = LinuxSyscall;
    join_cgroups(cfg)?;
    join_mount_namespace(cfg)?;
    close_inherited_on_exec(cfg.preserve_fds)?;
    unshare_late_namespaces(cfg)?;
    let rootfs_cfg = cfg.rootfs.as_ref().ok_or_else(|| InitFailure {
        step: "rootfs".into(),
        message: "create without a rootfs".into(),
    })?;
    at("rootfs", rootfs::prepare(&sys, rootfs_cfg))?;
    if cfg.runtime_hooks {
        at("runtime hooks", ch.send(&InitMsg::RunRuntimeHooks))?;
        match at("runtime hooks", ch.recv())? {
            ParentMsg::RuntimeHooksDone => {}
            other => {
                return Err(InitFailure {
                    step: "runtime hooks".into(),
                    message: format!("unexpected message {other:?}"),
                });
            }
        }
    }
    at(
        "createContainer hooks",
        hooks::run(
            HookKind::CreateContainer,
            cfg.hooks.as_ref(),
            &hook_state(cfg, ContainerState::Creating),
        ),
    )?;
    at("entering the rootfs", rootfs::enter(&sys, rootfs_cfg))?;
    write_sysctls(&sys, &cfg.sysctl)?;
    at("rootfs", rootfs::finish(&sys, rootfs_cfg))?;
    set_names(&sys, cfg)?;
    setup_console(&sys, cfg, true)?;
    join_session_keyring(cfg);
    let next = match &cfg.takeover {
        None => {
            let (plan, late_seccomp) = become_container_process(cfg)?;
            Next::Process(plan, late_seccomp)
        }
        Some(t) => {
            apply_process_limits(cfg)?;
            if let Some((soft, hard)) = t.rlimit_stack {
                at(
                    "RLIMIT_STACK",
                    sys.setrlimit(libc::RLIMIT_STACK as i32, soft, hard),
                )?;
            }
            Next::Takeover(t.clone())
        }
    };
    let fifo = cfg.exec_fifo_fd.ok_or_else(|| InitFailure {
        step: "start".into(),
        message: "no exec fifo".into(),
    })?;
    at("ready", ch.send(&InitMsg::Ready))?;
    // The parent's `create` is done. What fails from here on is reported in
    // the state directory (and on stderr) for `start` to pick up.
    let err = wait_and_exec(cfg, fifo, next);
    report_start_error(cfg, &err);
    std::process::exit(1)
}

/// Blocks until `start` writes to the exec fifo, then runs the
/// startContainer hooks and execs the container's process.
fn wait_and_exec(cfg: &InitConfig, fifo: RawFd, next: Next) -> InitFailure {
    // Never closed here: `start` takes the fifo's close as "done" and then
    // looks for the error file, so on failure the fd must stay open until
    // `report_start_error` has written it (the exit closes it).
    // SAFETY: the parent passed the fifo, opened read-write, at this number.
    let mut fifo = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fifo) });
    let mut byte = [0u8; 1];
    loop {
        match fifo.read(&mut byte) {
            Ok(1) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return InitFailure {
                    step: "waiting for start".into(),
                    message: e.to_string(),
                };
            }
        }
    }
    if let Err(e) = hooks::run(
        HookKind::StartContainer,
        cfg.hooks.as_ref(),
        &hook_state(cfg, ContainerState::Created),
    ) {
        return InitFailure {
            step: "startContainer hooks".into(),
            message: e.to_string(),
        };
    }
    // The fifo (close-on-exec) closes with the exec: that is how `start`
    // learns the process is running.
    match next {
        Next::Process(plan, late_seccomp) => {
            plan.prepare();
            if let Some(s) = late_seccomp
                && let Err(e) = s.install()
            {
                return InitFailure {
                    step: "seccomp".into(),
                    message: e.to_string(),
                };
            }
            let err = plan.exec();
            InitFailure {
                step: "exec".into(),
                message: format!("{:?}: {err}", plan.path()),
            }
        }
        Next::Takeover(t) => {
            if t.holder {
                // SAFETY: fork in the single-threaded init.
                match unsafe { libc::fork() } {
                    -1 => {
                        return InitFailure {
                            step: "forking the holder's program".into(),
                            message: io::Error::last_os_error().to_string(),
                        };
                    }
                    0 => {}
                    _ => reap_forever(cfg.exits_fd),
                }
            }
            process::reset_signals();
            let exe_fd = match place_inherited(t.exe_fd, &t.inherit) {
                Ok(fd) => fd,
                Err(err) => {
                    return InitFailure {
                        step: "handing descriptors to the takeover program".into(),
                        message: err.to_string(),
                    };
                }
            };
            let empty: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: execveat on the fd the parent passed, with an empty
            // path (AT_EMPTY_PATH) and empty, NULL-terminated argv/envp.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    exe_fd,
                    c"".as_ptr(),
                    empty.as_ptr(),
                    empty.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
            InitFailure {
                step: "exec of the takeover program".into(),
                message: io::Error::last_os_error().to_string(),
            }
        }
    }
}

/// Puts `inherit` at fds 3, 4, ... (not close-on-exec) and returns where
/// the program's fd is then. Everything is first copied above the target
/// range, close-on-exec, so no dup2 overwrites a source still needed.
fn place_inherited(exe_fd: RawFd, inherit: &[RawFd]) -> io::Result<RawFd> {
    let above = 3 + inherit.len() as RawFd;
    let high = |fd: RawFd| -> io::Result<RawFd> {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor of this process.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let exe = high(exe_fd)?;
    let copies = inherit
        .iter()
        .map(|&fd| high(fd))
        .collect::<io::Result<Vec<_>>>()?;
    for (i, &fd) in copies.iter().enumerate() {
        // SAFETY: dup2 of a descriptor of this process onto 3+i; the
        // target is below every copy, so no copy is overwritten.
        if unsafe { libc::dup2(fd, 3 + i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(exe)
}

/// The holder's init, forever: reaps every child (the takeover program, and
/// the template's instances, which are cloned with CLONE_PARENT so they are
/// its children) and appends each exit status to [`EXITS_FILE`] (`exits`,
/// opened for appending by the parent), where the node daemon reads it,
/// also after a restart. A holder outlives its template, so instances
/// outlive their template.
fn reap_forever(exits: Option<RawFd>) -> ! {
    // Nothing of the init's is needed any more: its end of the channel,
    // the exec fifo (which `start` watches for the exec), stdio.
    // SAFETY: close on this process's own descriptors, keeping the exits
    // file; sigprocmask with a valid set.
    unsafe {
        let keep = exits.unwrap_or(-1);
        for fd in 0..1024 {
            if fd != keep {
                libc::close(fd);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
            if pid > 0 {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    continue;
                };
                if let Some(fd) = exits {
                    // One write of one line: O_APPEND keeps lines whole.
                    let line = format!("{pid} {code}\n");
                    libc::write(fd, line.as_ptr().cast(), line.len());
                }
                continue;
            }
            // No child has exited: wait for the next SIGCHLD.
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&set, &mut info);
        }
    }
}

fn report_start_error(cfg: &InitConfig, failure: &InitFailure) {
    eprintln!("sprout-init: {failure}");
    if let Some(fd) = cfg.start_error_fd {
        let msg = failure.to_string();
        // SAFETY: a write to the report file the parent passed at this
        // number, from a live buffer of its length.
        unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
    }
}

fn exec(cfg: &InitConfig) -> StepResult<Infallible> {
    let sys = LinuxSyscall;
    join_cgroups(cfg)?;
    join_mount_namespace(cfg)?;
    close_inherited_on_exec(cfg.preserve_fds)?;
    setup_console(&sys, cfg, false)?;
    let (plan, late_seccomp) = become_container_process(cfg)?;
    plan.prepare();
    if let Some(s) = late_seccomp {
        at("seccomp", s.install())?;
    }
    // On success the channel (close-on-exec) closes: the parent sees EOF.
    let err = plan.exec();
    Err(InitFailure {
        step: "exec".into(),
        message: format!("{:?}: {err}", plan.path()),
    })
}
