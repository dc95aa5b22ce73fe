//! Restore: an image into a fresh sandbox.
//!
//! What the process was (memory, threads, fds, signal state) comes from the
//! image; what the sandbox is (namespaces, cgroup, mounts, user,
//! capabilities, seccomp, rlimits) comes from the bundle. In order:
//! 1. the image is opened, validated and checked against this host;
//! 2. the runtime makes the sandbox, and its first process execs a tiny
//!    static [`stub`] from a memfd. Where the bundle allows ([`direct`]),
//!    without the init helper: the process is cloned into its namespaces
//!    and cgroup while the image is read and the rootfs is built as a
//!    mount namespace beside it, which the tracer then moves it into.
//!    Otherwise as for a fresh start, the helper handing over at `start`;
//! 3. on the tracer thread, the stub is caught at its exec stop (before it
//!    runs an instruction), the files it will map are checked by content
//!    through its own root, a batch gadget is placed in a hole of both
//!    layouts, and [`memory`] rebuilds the address space and copies the
//!    pages in (verified chunk by chunk) — or, with
//!    [`MemoryLoading::Lazy`], leaves private anonymous memory to a
//!    [`Loader`] that serves it with userfaultfd ([`lazy`]);
//! 4. the process's mm fields, personality, umask, cwd and signal handlers;
//!    the other [`threads`] at their dumped tids with their per-thread
//!    kernel state; the file descriptors ([`crate::fds`]); timers; pending
//!    signals;
//! 5. the sandbox's [`creds`]: ids, capabilities, no_new_privs, then the
//!    seccomp filter — last, as at a fresh start (pitfalls §9);
//! 6. the gadget goes, each thread gets its dumped registers, extended
//!    state and signal mask, and (a lazy restore's working set loaded)
//!    all are let go.
//!
//! [`restore`] returns once the process runs and its memory is all in;
//! [`restore_with_loader`] returns once it runs, with the [`Loader`] of a
//! lazy restore still loading ([`Restored`]).

mod creds;
mod direct;
pub mod lazy;
mod memory;
mod privileges;
pub mod stub;
mod threads;

pub use lazy::{LoadReport, Loader, LoaderRemote, MemoryLoading, SuspendedLoader};

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use oci_spec::runtime::Process;
use sprout_runtime::seccomp::SeccompProgram;
use sprout_runtime::spec::Bundle;
use sprout_runtime::timing::Stages;
use sprout_runtime::{Container, CreateOptions, Runtime, Takeover};

use crate::image::{Host, Image, ImageError, ManifestBody, RlimitResource, WorkingSet};
use crate::ptrace::{
    Entry, Gadget, GadgetConfig, GadgetError, Options, PtraceError, Stop, Tid, TraceCtx, Tracer,
};

/// Why a restore failed. Nothing is left behind: the half-built process is
/// killed and the container deleted.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image is unreadable, corrupt, foreign or its files changed.
    #[error("image: {0}")]
    Image(#[from] ImageError),
    /// Preparing or managing the sandbox failed.
    #[error(transparent)]
    Runtime(#[from] sprout_runtime::Error),
    /// A ptrace operation failed.
    #[error("ptrace: {0}")]
    Ptrace(#[from] PtraceError),
    /// A gadget batch failed.
    #[error("{0}")]
    Gadget(#[from] GadgetError),
    /// A syscall injected into the process failed.
    #[error("injected {what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Injected {
        /// What it was for.
        what: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// A step's batch of injected syscalls stopped at a failing one.
    #[error("{what}: {error}")]
    Batch {
        /// The step.
        what: &'static str,
        /// Which syscall failed, with its errno.
        error: crate::ptrace::BatchError,
    },
    /// The image cannot be restored here or into this sandbox.
    #[error("{0}")]
    Incompatible(String),
    /// The image holds kernel state its process could only have made
    /// with a privilege the bundle does not give (the restorer, root,
    /// would make it on the process's behalf).
    #[error("the image's {what} needs {capability}, which the bundle's process does not have")]
    NeedsPrivilege {
        /// The fd, timer or memory that needs it.
        what: String,
        /// The capability (`CAP_…`).
        capability: &'static str,
    },
    /// The bundle's process section cannot be applied.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The sandbox's rootfs could not be built (a sandbox made without
    /// the init helper).
    #[error("bundle {bundle}: building the sandbox's rootfs: {source}")]
    Rootfs {
        /// The bundle.
        bundle: PathBuf,
        /// Why.
        #[source]
        source: sprout_runtime::rootfs::RootfsError,
    },
    /// The sandbox's init exited before it handed over.
    #[error("the sandbox's init exited before the restore: {0}")]
    InitExited(String),
    /// A syscall of the restorer failed.
    #[error("{what}: {source}")]
    Io {
        /// What it was for.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file descriptor could not be recreated.
    #[error("file descriptors: {0}")]
    Fd(#[from] crate::fds::FdError),
    /// A working set was asked of a restore that does not record one (or
    /// whose recording ended when its process did).
    #[error("this restore is not recording a working set (or its recording has ended)")]
    NotRecording,
}

/// Options of a restore that are not in the bundle.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    /// The restored process's stdin, stdout, stderr; `None` inherits.
    pub stdio: [Option<OwnedFd>; 3],
    /// Console socket for a bundle with `terminal: true`.
    pub console_socket: Option<PathBuf>,
    /// Write the process's pid here.
    pub pid_file: Option<PathBuf>,
    /// Do not give the container its own session keyring.
    pub no_new_keyring: bool,
    /// How the process's memory is loaded (default: all of it before the
    /// process runs).
    pub memory: MemoryLoading,
    /// Make the sandbox with the init helper, as a created container's,
    /// even where the bundle does not need it (see
    /// [`sprout_runtime::direct`]): for comparisons.
    pub init_helper: bool,
}

/// Stage timings and sizes of one restore.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// In a sandbox made without the init helper: prepare sandbox (id,
    /// cgroup, network namespace), clone, open image (what is left of it
    /// to wait for), rootfs wait, exec stop, sandbox (the rootfs entered),
    /// check files, map memory, fill memory, process state, threads,
    /// fds, timers and signals, credentials (and seccomp), resume. With
    /// the helper: open image, prepare sandbox, exec stub, exec stop, then
    /// the same from check files. A lazy restore adds read working set,
    /// userfaultfd and working set.
    pub stages: Vec<(&'static str, Duration)>,
    /// Bytes of page data copied in before the process ran (a lazy
    /// restore's working set included).
    pub pages_bytes: u64,
    /// How its memory is loaded.
    pub memory: MemoryReport,
}

/// How a restore loads the process's memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// A [`Loader`] loads private anonymous memory after the restore.
    pub lazy: bool,
    /// It records a working set ([`MemoryLoading::Record`]).
    pub recording: bool,
    /// Lazy loading was asked for, but the process may not create a
    /// userfaultfd (errno; `EPERM` in a user namespace without
    /// `CAP_SYS_PTRACE` and `vm.unprivileged_userfaultfd=0`): everything
    /// was loaded eagerly.
    pub eager_fallback: Option<i32>,
    /// Stored pages left to the loader (the working set's included).
    pub lazy_pages: u64,
    /// Stored pages of the working set, loaded before the process ran.
    pub working_set_pages: u64,
}

/// A restored container whose memory may still be loading.
///
/// Dropping it waits for its [`Loader`] (if any) to finish;
/// [`Restored::wait_loaded`] does so and tells how it went.
#[derive(Debug)]
pub struct Restored {
    /// The container, running.
    pub container: Container,
    /// Stage timings and sizes.
    pub report: RestoreReport,
    /// The loader of a lazy restore.
    pub loader: Option<Loader>,
}

impl Restored {
    /// The running `container`, with the `stages` of its restore and what
    /// rebuilding it gave: bytes copied, how memory loads, the loader.
    fn new(
        container: Container,
        stages: &Stages,
        (pages_bytes, memory, loader): (u64, MemoryReport, Option<Loader>),
    ) -> Restored {
        Restored {
            container,
            report: RestoreReport {
                stages: stages.stages().to_vec(),
                pages_bytes,
                memory,
            },
            loader,
        }
    }

    /// Waits until the process's memory is all loaded; `None` for an
    /// eager restore.
    pub fn wait_loaded(&mut self) -> Result<Option<LoadReport>, RestoreError> {
        self.loader.take().map(Loader::wait).transpose()
    }

    /// Ends the recording of a [`MemoryLoading::Record`] restore: the
    /// pages the process touched since it was restored.
    pub fn finish_recording(&self) -> Result<WorkingSet, RestoreError> {
        self.loader
            .as_ref()
            .ok_or(RestoreError::NotRecording)?
            .finish_recording()
    }
}

impl RestoreReport {
    /// Total time.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }
}

fn host() -> Result<&'static Host, ImageError> {
    static HOST: OnceLock<Host> = OnceLock::new();
    if let Some(h) = HOST.get() {
        return Ok(h);
    }
    let h = Host::current()?;
    Ok(HOST.get_or_init(|| h))
}

/// Restores the image at `image_dir` as container `id` in the sandbox the
/// bundle describes. All ptrace work runs on `tracer`'s thread. Returns
/// once the process runs with all its memory loaded (a lazy restore waits
/// for its loader).
pub fn restore(
    rt: &Runtime,
    tracer: &Tracer,
    id: &str,
    bundle: &Path,
    image_dir: &Path,
    opts: RestoreOptions,
) -> Result<(Container, RestoreReport), RestoreError> {
    loaded(restore_with_loader(
        rt, tracer, id, bundle, image_dir, opts,
    )?)
}

/// [`restore`] into a bundle the caller loaded with
/// [`sprout_runtime::spec::load_bundle`] and adjusted (netplug points
/// its network namespace at a pooled one).
pub fn restore_bundle(
    rt: &Runtime,
    tracer: &Tracer,
    id: &str,
    bundle: Bundle,
    image_dir: &Path,
    opts: RestoreOptions,
) -> Result<(Container, RestoreReport), RestoreError> {
    loaded(restore_bundle_with_loader(
        rt, tracer, id, bundle, image_dir, opts,
    )?)
}

/// Waits until the memory of `r` is loaded: the end of [`restore`] and
/// [`restore_bundle`].
fn loaded(mut r: Restored) -> Result<(Container, RestoreReport), RestoreError> {
    if r.report.memory.recording {
        // Nobody could end it: a recording here records nothing.
        let _ = r.finish_recording();
    }
    if let Err(e) = r.wait_loaded() {
        // The loader killed the process; nothing may be left.
        let Restored { container, .. } = r;
        let _ = container.delete(true);
        return Err(e);
    }
    let Restored {
        container, report, ..
    } = r;
    Ok((container, report))
}

/// [`restore`], returning as soon as the process runs: with
/// [`MemoryLoading::Lazy`] or [`MemoryLoading::Record`] its memory is
/// still being loaded by the returned [`Restored::loader`].
pub fn restore_with_loader(
    rt: &Runtime,
    tracer: &Tracer,
    id: &str,
    bundle: &Path,
    image_dir: &Path,
    opts: RestoreOptions,
) -> Result<Restored, RestoreError> {
    let bundle = sprout_runtime::spec::load_bundle(bundle).map_err(sprout_runtime::Error::from)?;
    restore_bundle_with_loader(rt, tracer, id, bundle, image_dir, opts)
}

/// [`restore_with_loader`] into a bundle the caller loaded (see
/// [`restore_bundle`]).
pub fn restore_bundle_with_loader(
    rt: &Runtime,
    tracer: &Tracer,
    id: &str,
    bundle: Bundle,
    image_dir: &Path,
    opts: RestoreOptions,
) -> Result<Restored, RestoreError> {
    if !opts.init_helper
        && opts.console_socket.is_none()
        && sprout_runtime::direct::helper_needed(&bundle).is_none()
    {
        return direct::restore(rt, tracer, id, bundle, image_dir, opts);
    }
    let stack_hard = bundle_stack_hard(&bundle);
    restore_with(tracer, image_dir, opts, stack_hard, |o| {
        rt.create_from_bundle(id, bundle, o)
    })
}

fn restore_with(
    tracer: &Tracer,
    image_dir: &Path,
    opts: RestoreOptions,
    bundle_stack_hard: Option<u64>,
    create: impl FnOnce(CreateOptions) -> Result<Container, sprout_runtime::Error>,
) -> Result<Restored, RestoreError> {
    let mut stages = Stages::new();
    let mut opts = opts;
    let (image, memory, prepared) = open_image(image_dir, std::mem::take(&mut opts.memory))?;
    opts.memory = memory;
    stages.mark("open image");
    let m = image.manifest();
    let rlimit_stack = exec_stack_limit(m, bundle_stack_hard);
    let mut container = create(CreateOptions {
        console_socket: opts.console_socket,
        pid_file: opts.pid_file,
        no_new_keyring: opts.no_new_keyring,
        stdio: opts.stdio,
        takeover: Some(Takeover {
            exe: stub::memfd().map_err(|source| RestoreError::Io {
                what: "creating the restore stub",
                source,
            })?,
            rlimit_stack,
            inherit: Vec::new(),
            holder: false,
        }),
        ..Default::default()
    })?;
    stages.mark("prepare sandbox");
    let result = restore_into(
        tracer,
        &mut container,
        image,
        opts.memory,
        prepared,
        &mut stages,
    );
    match result {
        Ok(rebuilt) => {
            container.finish_start();
            Ok(Restored::new(container, &stages, rebuilt))
        }
        Err(e) => {
            let _ = container.delete(true);
            Err(e)
        }
    }
}

/// Opens and checks the image at `image_dir` against this host and the
/// working set `memory` names, and starts reading what a lazy restore
/// loads first.
fn open_image(
    image_dir: &Path,
    memory: MemoryLoading,
) -> Result<(Image, MemoryLoading, lazy::Prepared), RestoreError> {
    let image = Image::open(image_dir)?;
    image.check_host(host()?)?;
    let memory = match memory {
        MemoryLoading::Lazy {
            working_set: Some(ws),
        } => {
            ws.check_against(&image)?;
            MemoryLoading::Lazy {
                working_set: Some(ws),
            }
        }
        MemoryLoading::LazyWithImageWorkingSet => MemoryLoading::Lazy {
            // One above the limits (a model's weights, say) only costs
            // the lazy path its head start: restored without it.
            working_set: match WorkingSet::load(&image) {
                Err(e @ ImageError::Limit { .. }) => {
                    tracing::warn!("restoring without the image's working set: {e}");
                    None
                }
                r => r?,
            },
        },
        other => other,
    };
    let prepared = lazy::prepare(&image, &memory)?;
    Ok((image, memory, prepared))
}

/// The (soft, hard) RLIMIT_STACK the spec gives its process, if it sets one.
fn stack_rlimit(process: &Process) -> Option<(u64, u64)> {
    process
        .rlimits()
        .iter()
        .flatten()
        .find(|r| r.typ() == oci_spec::runtime::PosixRlimitType::RlimitStack)
        .map(|r| (r.soft(), r.hard()))
}

/// The hard RLIMIT_STACK the bundle gives its process, if it sets one.
pub(crate) fn bundle_stack_hard(bundle: &Bundle) -> Option<u64> {
    bundle
        .spec
        .process()
        .as_ref()
        .and_then(stack_rlimit)
        .map(|(_, hard)| hard)
}

/// A process restored into a new pid namespace is its pid 1: the image's
/// process must have been pid 1 of its own, or its pid is wrong and
/// anything that kept it (a pid file, `getpid()` cached) lies.
pub(crate) fn check_pid(
    spec: &oci_spec::runtime::Spec,
    m: &ManifestBody,
) -> Result<(), RestoreError> {
    let new_pid_ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none());
    if new_pid_ns && m.process.pid != 1 {
        return Err(RestoreError::Incompatible(format!(
            "the image's process was pid {} of its pid namespace; a restored process is pid 1 of a new one",
            m.process.pid
        )));
    }
    Ok(())
}

/// The filesystem identity the image's files are opened with: the
/// bundle's user, unless it is root (whose opens stay root's).
pub(crate) fn fs_user_of(process: &Process) -> Option<crate::fds::FsUser> {
    let u = process.user();
    (u.uid() != 0).then(|| crate::fds::FsUser {
        uid: u.uid(),
        gid: u.gid(),
        groups: u.additional_gids().clone().unwrap_or_default(),
    })
}

/// Whether the bundle's process may set socket buffers above
/// `net.core.[rw]mem_max` itself (CAP_NET_ADMIN, effective).
pub(crate) fn may_force_socket_buffers(process: &Process) -> bool {
    process
        .capabilities()
        .as_ref()
        .and_then(|c| c.effective().as_ref())
        .is_some_and(|e| e.contains(&oci_spec::runtime::Capability::NetAdmin))
}

/// Refuses an image whose process holds kernel state that the process
/// of `spec`, with its capabilities, could not have made itself (see
/// `privileges`): the restorer is root until the end and would make it.
pub(crate) fn check_privileges(
    spec: &oci_spec::runtime::Spec,
    m: &ManifestBody,
) -> Result<(), RestoreError> {
    let process = spec.process().clone().unwrap_or_default();
    let sysctl = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    privileges::check(m, &process, sysctl)
}

/// What a sandbox imposes on the process released into it, from its
/// spec: [`SandboxRules`], owned.
pub(crate) struct SandboxSpec {
    process: Process,
    seccomp: Option<SeccompProgram>,
    stack_limit: Option<(u64, u64)>,
}

impl SandboxSpec {
    /// The process section (validated bundles have one), the seccomp
    /// profile compiled, the stack limit.
    pub(crate) fn of(spec: &oci_spec::runtime::Spec) -> Result<SandboxSpec, RestoreError> {
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| RestoreError::Sandbox("the bundle has no process section".into()))?;
        let seccomp = compile_seccomp(spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()))?;
        let stack_limit = stack_rlimit(&process);
        Ok(SandboxSpec {
            process,
            seccomp,
            stack_limit,
        })
    }

    /// The process section.
    pub(crate) fn process(&self) -> &Process {
        &self.process
    }

    /// As the release steps take it.
    pub(crate) fn rules(&self) -> SandboxRules<'_> {
        SandboxRules {
            process: &self.process,
            seccomp: self.seccomp.as_ref(),
            stack_limit: self.stack_limit,
        }
    }
}

/// The bundle's seccomp profile as BPF, applied last to a restored or
/// forked process.
fn compile_seccomp(
    profile: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<Option<SeccompProgram>, RestoreError> {
    profile
        .map(|s| SeccompProgram::compile(s).map_err(|e| RestoreError::Sandbox(e.to_string())))
        .transpose()
}

/// RLIMIT_STACK for the stub's exec. The image's soft limit places the
/// new mm's `mmap_base` (pitfalls §10.6), but the sandbox's init has
/// already applied the bundle's limits (or kept sprout's) and, without
/// CAP_SYS_RESOURCE, cannot raise the hard limit again: keep that hard
/// limit, and the image's soft limit below it. The bundle's own values are
/// set once the process is rebuilt ([`release`]).
pub(crate) fn exec_stack_limit(m: &ManifestBody, bundle_hard: Option<u64>) -> Option<(u64, u64)> {
    let (soft, hard) = m
        .process
        .rlimits
        .iter()
        .find(|r| r.resource == RlimitResource::Stack)
        .map(|r| (r.soft, r.hard))?;
    let sandbox_hard =
        bundle_hard.unwrap_or_else(|| own_rlimit(libc::RLIMIT_STACK).map_or(hard, |(_, max)| max));
    Some((soft.min(sandbox_hard), sandbox_hard))
}

/// This process's (soft, hard) limit of `resource`, which a sandbox
/// that sets none inherits; `None` if it cannot be read.
pub(crate) fn own_rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut own = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 reading our own limit into a valid struct.
    let r = unsafe { libc::prlimit64(0, resource, std::ptr::null(), &mut own) };
    (r == 0).then_some((own.rlim_cur, own.rlim_max))
}

fn restore_into(
    tracer: &Tracer,
    container: &mut Container,
    image: Image,
    loading: MemoryLoading,
    prepared: lazy::Prepared,
    stages: &mut Stages,
) -> Result<(u64, MemoryReport, Option<Loader>), RestoreError> {
    let pid = container
        .pid()
        .ok_or_else(|| RestoreError::InitExited("no init process".into()))?;
    let spec = container.spec();
    let sandbox = SandboxSpec::of(spec)?;
    check_pid(spec, image.manifest())?;
    check_privileges(spec, image.manifest())?;

    tracer.run(move |ctx| {
        ctx.seize(
            pid,
            Options::EXITKILL | Options::TRACEEXEC | Options::TRACECLONE,
        )
    })?;
    // The init execs the stub: the exec stop waits for us on the tracer.
    container.release()?;
    stages.mark("exec stub");
    let job = RebuildJob {
        pid,
        image: Arc::new(image),
        sandbox,
        loading,
        prepared,
        rootfs: None,
    };
    job.run(tracer, stages)
}

/// What the tracer does from the stub's exec to the running process.
struct RebuildJob {
    pid: Tid,
    image: Arc<Image>,
    sandbox: SandboxSpec,
    loading: MemoryLoading,
    prepared: lazy::Prepared,
    /// For a sandbox made without the init helper: its rootfs, entered
    /// first.
    rootfs: Option<EnterRootfs>,
}

/// A rootfs built beside the stub (see `sprout_runtime::direct`): the
/// stub receives it from `socket` (its fd number) and enters it.
pub(crate) struct EnterRootfs {
    pub socket: i32,
    pub plan: crate::sandbox::RootfsPlan,
}

impl RebuildJob {
    /// Runs on `tracer`; a failure kills the process.
    fn run(
        self,
        tracer: &Tracer,
        stages: &mut Stages,
    ) -> Result<(u64, MemoryReport, Option<Loader>), RestoreError> {
        let RebuildJob {
            pid,
            image,
            sandbox,
            loading,
            mut prepared,
            rootfs,
        } = self;
        let (rebuilt, inner) = tracer.run(move |ctx| {
            let mut inner = Stages::new();
            let mut started = None;
            let r = rebuild(
                ctx,
                pid,
                &image,
                &sandbox.rules(),
                rootfs.as_ref(),
                &loading,
                &mut prepared,
                &mut started,
                &mut inner,
            );
            if let Err(e) = r {
                let _ = ctx.kill(pid);
                // The loader ends with the process; if it failed, its failure
                // (a corrupt chunk met by a fault) is what broke the restore.
                if let Some(s) = started
                    && let Err(cause) = s.loader.wait()
                {
                    return Err(cause);
                }
                return Err(e);
            }
            r.map(|b| (b, inner.stages().to_vec()))
        })?;
        stages.append(&inner);
        Ok(rebuilt)
    }
}

/// Waits for the stub's exec, then lets `execve` finish: at the exec event
/// the thread is still inside the syscall, and resuming it from there would
/// overwrite `rax` (an injected syscall's number) with execve's result. At
/// the syscall-exit stop no instruction of the stub has run yet.
fn wait_for_exec(ctx: &mut TraceCtx, pid: Tid) -> Result<(), RestoreError> {
    loop {
        match ctx.wait(pid)? {
            Stop::Exec { .. } => {
                ctx.cont_syscall(pid, 0)?;
                return match ctx.wait(pid)? {
                    Stop::Syscall => Ok(()),
                    other => Err(RestoreError::Incompatible(format!(
                        "the stub stopped with {other:?} after its exec"
                    ))),
                };
            }
            // A signal for the init before its exec (SIGCHLD of a hook):
            // deliver it as if we were not there.
            Stop::Signal(info) => ctx.cont(pid, info.signo())?,
            Stop::Exited { code } => {
                return Err(RestoreError::InitExited(format!("exit code {code}")));
            }
            Stop::Killed { signal, .. } => {
                return Err(RestoreError::InitExited(format!(
                    "killed by signal {signal}"
                )));
            }
            _ => ctx.cont(pid, 0)?,
        }
    }
}

/// Every mapped file, as the new sandbox sees it, must hold the dumped
/// content: file-backed memory comes from it.
pub(crate) fn check_files(pid: Tid, m: &ManifestBody) -> Result<(), RestoreError> {
    let root =
        std::fs::File::open(format!("/proc/{pid}/root")).map_err(|source| RestoreError::Io {
            what: "opening the sandbox's root",
            source,
        })?;
    // Read once, at the first file on an overlay (a container manager's
    // rootfs): its files are cached by the layers' device.
    let mut layers = None;
    for f in &m.files {
        let fd = crate::image::open_in_root(&root, &f.path, nix::fcntl::OFlag::O_RDONLY)?;
        let on = crate::image::on_overlay(&fd)
            .then(|| &*layers.get_or_insert_with(|| crate::image::LayerDevices::of_process(pid)));
        crate::image::file_matches_on(&fd, f, on)?;
    }
    // The cwd too: a fork enters it by path (chdir, before this check;
    // a refusal kills the child before it runs anything).
    crate::image::open_in_root(
        &root,
        &m.process.cwd,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
    )?;
    Ok(())
}

fn gadget_config(m: &ManifestBody, seccomp: Option<&SeccompProgram>) -> GadgetConfig {
    let paths: usize = m.files.iter().map(|f| f.path.len() + 1).sum::<usize>()
        + m.process.exe.len()
        + m.process.cwd.len()
        + 2;
    let filters: usize = seccomp.map_or(0, |s| s.bpf_programs().map(|p| p.len() * 8 + 32).sum());
    let signals: usize = m
        .threads
        .iter()
        .map(|t| t.pending.len() * 128)
        .sum::<usize>()
        + m.process.pending.len() * 128;
    // One tid and one clone_args per created thread (one batch); a
    // sigevent, an id and an itimerspec per POSIX timer.
    let threads = m.threads.len().saturating_sub(1) * 112;
    let timers = m.process.posix_timers.len() * 112;
    let need =
        paths + filters + signals + threads + timers + m.process.sigactions.len() * 32 + 16 * 1024;
    GadgetConfig {
        entries: 1024,
        data_size: need.max(64 * 1024).next_multiple_of(4096),
        stacks: m.threads.len() + 1,
        stack_size: 8192,
    }
}

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// mm fields, personality, umask, cwd, signal handlers (pitfalls §5, §7.2).
fn process_entries(
    gadget: &mut Gadget,
    m: &ManifestBody,
    exe_fd: Option<i32>,
    cwd_fd: i32,
) -> Result<Vec<Entry>, RestoreError> {
    let p = &m.process;
    let mut e = Vec::new();
    // The dumped words end with the AT_NULL pair.
    let auxv_bytes = le(&p.mm.auxv);
    let auxv_ptr = gadget.data(&auxv_bytes)?;
    let mm = &p.mm;
    let mut map = le(&[
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_ptr,
    ]);
    map.extend((auxv_bytes.len() as u32).to_le_bytes());
    map.extend(exe_fd.unwrap_or(-1).to_le_bytes());
    let map_ptr = gadget.data(&map)?;
    // PR_SET_MM, PR_SET_MM_MAP
    e.push(Entry::new(
        libc::SYS_prctl,
        [35, 14, map_ptr, map.len() as u64, 0, 0],
    ));
    e.push(Entry::new(
        libc::SYS_personality,
        [p.personality as u64, 0, 0, 0, 0, 0],
    ));
    e.push(Entry::new(libc::SYS_umask, [p.umask as u64, 0, 0, 0, 0, 0]));
    // Opened in the rootfs with the other paths (never by path as root:
    // /proc/PID/root/... would put the process's cwd outside it).
    e.push(Entry::new(libc::SYS_fchdir, [cwd_fd as u64, 0, 0, 0, 0, 0]));
    e.push(Entry::new(libc::SYS_close, [cwd_fd as u64, 0, 0, 0, 0, 0]));
    for a in &p.sigactions {
        let act = gadget.data(&le(&[a.handler, a.flags, a.restorer, a.mask]))?;
        e.push(Entry::new(
            libc::SYS_rt_sigaction,
            [a.signal as u64, act, 0, 8, 0, 0],
        ));
    }
    if let Some(fd) = exe_fd {
        e.push(Entry::new(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]));
    }
    Ok(e)
}

fn run_checked(
    ctx: &mut TraceCtx,
    gadget: &mut Gadget,
    tid: Tid,
    entries: &[Entry],
    what: &'static str,
) -> Result<(), RestoreError> {
    threads::run_on(ctx, gadget, tid, entries, what)
}

/// What the sandbox imposes on the process being released: from the
/// bundle, applied last (pitfalls §9).
pub(crate) struct SandboxRules<'a> {
    pub process: &'a Process,
    pub seccomp: Option<&'a SeccompProgram>,
    /// The bundle's RLIMIT_STACK, if it sets one (the stub was exec'd with
    /// the image's, for the layout).
    pub stack_limit: Option<(u64, u64)>,
}

#[allow(clippy::too_many_arguments)]
fn rebuild(
    ctx: &mut TraceCtx,
    pid: Tid,
    image: &Arc<Image>,
    rules: &SandboxRules<'_>,
    rootfs: Option<&EnterRootfs>,
    loading: &MemoryLoading,
    prepared: &mut lazy::Prepared,
    started: &mut Option<lazy::Started>,
    stages: &mut Stages,
) -> Result<(u64, MemoryReport, Option<Loader>), RestoreError> {
    wait_for_exec(ctx, pid)?;
    stages.mark("exec stop");
    let fs_user = fs_user_of(rules.process);
    let (mut gadget, mut bytes, memory) = rebuild_memory_with(
        ctx,
        pid,
        image,
        rules.seccomp,
        fs_user.as_ref(),
        rootfs,
        loading,
        prepared,
        started,
        stages,
    )?;
    // From here the loader (if any) serves whatever the process, or the
    // kernel on its behalf, touches.
    let threads = release_until_resume(
        ctx,
        pid,
        &mut gadget,
        image,
        rules,
        &crate::fds::RestoreOptions {
            fs_user,
            force_socket_buffers: may_force_socket_buffers(rules.process),
            ..Default::default()
        },
        stages,
    )?;
    if let Some(s) = started {
        s.loader.wait_prefetched();
        bytes += memory.working_set_pages * 4096;
        stages.mark("working set");
        if s.loader.is_finished() {
            // Done already (the working set held everything), or failed.
            let s = started.take().expect("a started loader");
            s.loader.wait()?;
        }
    }
    resume(ctx, &threads, stages)?;
    Ok((bytes, memory, started.take().map(|s| s.loader)))
}

/// From the stopped stub to the dumped address space, mm map, personality,
/// umask, cwd and signal handlers: everything a fork of it inherits. Leaves
/// the batch gadget installed for what follows. Loads all memory (a
/// template forks it: every page must be in).
pub(crate) fn rebuild_memory(
    ctx: &mut TraceCtx,
    pid: Tid,
    image: &Image,
    seccomp: Option<&SeccompProgram>,
    fs_user: Option<&crate::fds::FsUser>,
    stages: &mut Stages,
) -> Result<(Gadget, u64), RestoreError> {
    let (gadget, opened) = rebuild_layout(ctx, pid, image, seccomp, fs_user, None, false, stages)?;
    let bytes = memory::fill(pid, image, &opened, |_| false, None)?;
    stages.mark("fill memory");
    let gadget = finish_memory(ctx, pid, gadget, image, &opened, None, stages)?;
    Ok((gadget, bytes))
}

/// [`rebuild_memory`], leaving private anonymous memory to a loader when
/// `loading` is lazy (and the process may create a userfaultfd); what
/// `working-set.img` holds comes from it.
#[allow(clippy::too_many_arguments)]
fn rebuild_memory_with(
    ctx: &mut TraceCtx,
    pid: Tid,
    image: &Arc<Image>,
    seccomp: Option<&SeccompProgram>,
    fs_user: Option<&crate::fds::FsUser>,
    rootfs: Option<&EnterRootfs>,
    loading: &MemoryLoading,
    prepared: &mut lazy::Prepared,
    started: &mut Option<lazy::Started>,
    stages: &mut Stages,
) -> Result<(Gadget, u64, MemoryReport), RestoreError> {
    let (gadget, opened) = rebuild_layout(
        ctx,
        pid,
        image,
        seccomp,
        fs_user,
        rootfs,
        loading.is_lazy(),
        stages,
    )?;
    let reading = prepared.has_pages();
    let prefetched = prepared.take_pages()?;
    if reading {
        stages.mark("read working set");
    }
    let mut report = MemoryReport::default();
    match opened.uffd {
        Some(Ok(fd)) => {
            let s = lazy::start(image, pid, fd, loading, prefetched.clone())?;
            report.lazy = true;
            report.recording = matches!(loading, MemoryLoading::Record);
            report.lazy_pages = s.lazy_pages;
            report.working_set_pages = s.working_set_pages;
            *started = Some(s);
            stages.mark("userfaultfd");
        }
        Some(Err(errno)) => {
            tracing::warn!(
                "lazy loading refused ({}): loading all memory before the process runs",
                std::io::Error::from_raw_os_error(errno)
            );
            report.eager_fallback = Some(errno);
        }
        None => {}
    }
    let lazy = started.is_some();
    let bytes = memory::fill(
        pid,
        image,
        &opened,
        |v| lazy && lazy::is_lazy(v),
        prefetched.as_deref(),
    )?;
    drop(prefetched);
    stages.mark("fill memory");
    let uffd_fd = opened.uffd.and_then(Result::ok);
    let gadget = finish_memory(ctx, pid, gadget, image, &opened, uffd_fd, stages)?;
    Ok((gadget, bytes, report))
}

/// Up to the mapped layout: gadget installed, the rootfs entered (a
/// sandbox made without the init helper), files checked, fds opened in
/// the target (and a userfaultfd asked for, with `uffd`), the stub's
/// mappings replaced by the image's.
#[allow(clippy::too_many_arguments)]
fn rebuild_layout(
    ctx: &mut TraceCtx,
    pid: Tid,
    image: &Image,
    seccomp: Option<&SeccompProgram>,
    fs_user: Option<&crate::fds::FsUser>,
    rootfs: Option<&EnterRootfs>,
    uffd: bool,
    stages: &mut Stages,
) -> Result<(Gadget, memory::Opened), RestoreError> {
    let m = image.manifest();
    let stub_maps = crate::ptrace::procfs::read_maps(pid)?;
    let config = gadget_config(m, seccomp);
    let at = crate::ptrace::find_hole(&stub_maps, &memory::as_maps(&m.vmas), config.size())
        .ok_or_else(|| {
            RestoreError::Incompatible(
                "no hole for the restorer's gadget in the image's address space".into(),
            )
        })?;
    let mut gadget = Gadget::install(ctx, pid, at, config)?;
    if let Some(r) = rootfs {
        let mnt_ns = crate::sandbox::receive_fds(ctx, &mut gadget, pid, r.socket, 1)?[0];
        crate::sandbox::enter_rootfs(ctx, pid, &mut gadget, &r.plan, mnt_ns, &[], &[r.socket])?;
        stages.mark("sandbox");
    }
    check_files(pid, m)?;
    stages.mark("check files");
    let opened = memory::open_files(ctx, pid, &mut gadget, image, fs_user, uffd)?;
    memory::rebuild_layout(ctx, pid, &mut gadget, image, &opened, &stub_maps)?;
    stages.mark("map memory");
    Ok((gadget, opened))
}

/// After the fill: final protections and advice, the temporary fds closed
/// (the userfaultfd's copy in the target too), mm fields and the rest of
/// the process state.
fn finish_memory(
    ctx: &mut TraceCtx,
    pid: Tid,
    mut gadget: Gadget,
    image: &Image,
    opened: &memory::Opened,
    uffd_fd: Option<i32>,
    stages: &mut Stages,
) -> Result<Gadget, RestoreError> {
    let m = image.manifest();
    let mut e = memory::finish_entries(image, opened);
    if let Some(fd) = uffd_fd {
        e.push(Entry::new(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]));
    }
    e.extend(process_entries(&mut gadget, m, opened.exe, opened.cwd)?);
    run_checked(ctx, &mut gadget, pid, &e, "restoring process state")?;
    stages.mark("process state");
    Ok(gadget)
}

/// From a process with the dumped memory (a restored stub or a fresh fork
/// of a template), single-threaded and stopped, to the running process:
/// its other threads, fds, timers, pending signals, then the sandbox's
/// credentials and seccomp, the gadget's removal by the caller's choice
/// (it is still needed in a template), final registers, detach.
pub(crate) fn release(
    ctx: &mut TraceCtx,
    pid: Tid,
    gadget: &mut Gadget,
    image: &Image,
    rules: &SandboxRules<'_>,
    fd_opts: &crate::fds::RestoreOptions,
    stages: &mut Stages,
) -> Result<(), RestoreError> {
    let threads = release_until_resume(ctx, pid, gadget, image, rules, fd_opts, stages)?;
    resume(ctx, &threads, stages)
}

/// Lets the (already rebuilt) threads `host_tids` run.
fn resume(ctx: &mut TraceCtx, host_tids: &[Tid], stages: &mut Stages) -> Result<(), RestoreError> {
    for &h in host_tids {
        ctx.detach(h, 0)?;
    }
    stages.mark("resume");
    Ok(())
}

/// Installs the sandbox's seccomp filter on every thread (TSYNC, from
/// `pid`). The filter applies to every syscall from then on, ours
/// included: it is suspended for the tracees until they are released
/// (pitfalls §9.1b), so the credentials and the gadget's removal still go
/// through.
fn install_seccomp(
    ctx: &mut TraceCtx,
    gadget: &mut Gadget,
    pid: Tid,
    host_tids: &[Tid],
    program: &SeccompProgram,
) -> Result<(), RestoreError> {
    for &h in host_tids {
        let opts = ctx.options(h).unwrap_or(Options::NONE);
        ctx.set_options(h, Options(opts.0 | Options::SUSPEND_SECCOMP.0))?;
    }
    let e = creds::seccomp_entries(gadget, program)?;
    run_checked(ctx, gadget, pid, &e, "installing the seccomp filter")
}

/// [`release`] but the detach: returns the host tids of the threads, each
/// stopped with its final state installed.
fn release_until_resume(
    ctx: &mut TraceCtx,
    pid: Tid,
    gadget: &mut Gadget,
    image: &Image,
    rules: &SandboxRules<'_>,
    fd_opts: &crate::fds::RestoreOptions,
    stages: &mut Stages,
) -> Result<Vec<Tid>, RestoreError> {
    let m = image.manifest();
    let host_tids = threads::create_threads(ctx, pid, gadget, &m.threads)?;
    for (t, &h) in m.threads.iter().zip(&host_tids) {
        let e = threads::per_thread_entries(gadget, t)?;
        run_checked(ctx, gadget, h, &e, "restoring per-thread state")?;
    }
    stages.mark("threads");
    crate::fds::restore_fds_with(ctx, pid, gadget, &m.fds, fd_opts)?;
    stages.mark("fds");
    let own_pid = threads::ns_tid(pid, pid).ok_or_else(|| {
        RestoreError::Incompatible(format!("no pid namespace pid for process {pid}"))
    })?;
    let mut e = threads::timer_entries(gadget, m)?;
    e.extend(threads::queue_signals(gadget, m, own_pid)?);
    run_checked(ctx, gadget, pid, &e, "restoring timers and pending signals")?;
    for (t, &h) in m.threads.iter().zip(&host_tids) {
        if !t.pending.is_empty() {
            let e = threads::queue_thread_signals(gadget, m, t, own_pid)?;
            run_checked(ctx, gadget, h, &e, "restoring a thread's pending signals")?;
        }
    }
    stages.mark("timers and signals");

    // While the process still has our ids: once it has the sandbox's, a
    // prlimit from here needs CAP_SYS_RESOURCE.
    if let Some((soft, hard)) = rules.stack_limit {
        let lim = libc::rlimit64 {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: prlimit64 setting another process's limit from a valid
        // struct.
        if unsafe { libc::prlimit64(pid, libc::RLIMIT_STACK, &lim, std::ptr::null_mut()) } < 0 {
            return Err(RestoreError::Io {
                what: "setting the bundle's RLIMIT_STACK",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // With no_new_privs the filter goes in last, as late as possible.
    // Without it the kernel wants CAP_SYS_ADMIN for a filter, which the
    // sandbox's capabilities usually lack: then it goes in first, while
    // the process still has ours (runc's order).
    let nnp = rules.process.no_new_privileges().unwrap_or(false);
    if !nnp && let Some(program) = rules.seccomp {
        install_seccomp(ctx, gadget, pid, &host_tids, program)?;
    }
    for &h in &host_tids {
        let e = creds::entries(gadget, rules.process)?;
        run_checked(ctx, gadget, h, &e, "applying the sandbox's credentials")?;
    }
    if nnp && let Some(program) = rules.seccomp {
        install_seccomp(ctx, gadget, pid, &host_tids, program)?;
    }
    stages.mark("credentials");
    let g = std::mem::replace(gadget, gadget.for_child(pid));
    g.remove(ctx, pid)?;
    for (t, &h) in m.threads.iter().zip(&host_tids) {
        threads::install_final_state(ctx, h, t)?;
    }
    Ok(host_tids)
}
