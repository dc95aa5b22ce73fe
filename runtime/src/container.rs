//! The lifecycle: [`Runtime::create`] makes a container whose init waits
//! for [`Container::start`]; the other operations act on a container found
//! by id in the state root.
//!
//! A create, end to end (the steps inside the init are in [`crate::init`]):
//! validate the bundle, reserve the id, make the cgroup and apply limits,
//! make the exec fifo, clone the init into its namespaces (and cgroup),
//! place it in the v1 cgroups, send it its config, run prestart and
//! createRuntime hooks when it asks, and wait until it reports `Ready`.
//! Any failure undoes all of it.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::{ContainerState, LinuxDeviceCgroup, LinuxResources, Spec, State};
use serde::Serialize;

use crate::cgroups::{Cgroup, CgroupsPath, SavedCgroup};
use crate::channel::{self, InitMsg, ParentChannel, ParentMsg};
use crate::error::{Error, Result};
use crate::hooks::{self, HookKind};
use crate::init::{InitConfig, InitMode, START_ERROR_FILE};
use crate::namespaces::{self, NamespacePlan};
use crate::rootfs::{DEFAULT_DEVICES, RootfsConfig};
use crate::spawn::{self, SpawnRequest, Spawned};
use crate::spec::{self, Bundle};
use crate::state::{self, ContainerDir, ProcessId, SavedState, StateStore};
use crate::timing::Stages;

/// The OCI version sprout reports in states.
pub const OCI_VERSION: &str = "1.2.0";

/// A state root plus the init helper to start containers with.
#[derive(Debug, Clone)]
pub struct Runtime {
    store: StateStore,
    init_binary: PathBuf,
}

/// Builds a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    root: PathBuf,
    init_binary: Option<PathBuf>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/run/sprout"),
            init_binary: None,
        }
    }
}

impl RuntimeBuilder {
    /// The state root (default `/run/sprout`).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// The `sprout-init` helper. Default: `$SPROUT_INIT`, else
    /// `sprout-init` next to the running executable.
    pub fn init_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.init_binary = Some(path.into());
        self
    }

    pub fn build(self) -> Result<Runtime> {
        let init_binary = match self.init_binary {
            Some(p) => p,
            None => default_init_binary()?,
        };
        let meta = fs::metadata(&init_binary).map_err(|_| Error::InitBinary {
            path: init_binary.clone(),
            reason: "does not exist",
        })?;
        if !meta.is_file() {
            return Err(Error::InitBinary {
                path: init_binary,
                reason: "is not a file",
            });
        }
        Ok(Runtime {
            store: StateStore::open(&self.root)?,
            init_binary,
        })
    }
}

fn default_init_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SPROUT_INIT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(Error::io("locating the running executable"))?;
    Ok(exe.with_file_name("sprout-init"))
}

/// Options of `create` that are not in the bundle.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// Unix socket to send the pty master to (`terminal: true`).
    pub console_socket: Option<PathBuf>,
    /// Write the init's pid here once created.
    pub pid_file: Option<PathBuf>,
    /// Keep the caller's fds 3..3+N open in the container.
    pub preserve_fds: u32,
    /// chroot instead of pivot_root (for a rootfs on ramfs).
    pub no_pivot: bool,
    /// Do not give the container its own session keyring.
    pub no_new_keyring: bool,
    /// The container's stdin, stdout, stderr; `None` inherits the caller's.
    pub stdio: [Option<OwnedFd>; 3],
    /// Hand the sandbox over to another program at `start` (the restorer's
    /// stub) instead of exec'ing the bundle's process.
    pub takeover: Option<Takeover>,
}

/// A sandbox handed over at `start` to a program exec'd from a descriptor,
/// before the container's credentials, capabilities, no_new_privs and
/// seccomp filter are applied: a tracer (the restorer) applies them last,
/// after it has rebuilt the process. Everything else (namespaces, cgroup,
/// mounts, rlimits, LSM label of the exec) is set up as for any container.
#[derive(Debug)]
pub struct Takeover {
    /// The program, e.g. a memfd holding the restore stub.
    pub exe: OwnedFd,
    /// `RLIMIT_STACK` (soft, hard) for its exec, which sets the layout of
    /// the new address space (`mmap_base`).
    pub rlimit_stack: Option<(u64, u64)>,
    /// Descriptors the program gets at fd 3, 4, ... (e.g. a control socket).
    pub inherit: Vec<OwnedFd>,
    /// Make the sandbox a holder: its init forks the program and stays as
    /// the pid namespace's reaper, recording the exit status of every child
    /// in [`crate::init::EXITS_FILE`] in the state directory. The
    /// program (a template) is then not the namespace's init, so it can go
    /// while processes it forks with `CLONE_PARENT` live on.
    pub holder: bool,
}

/// A container's status, as the OCI state reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// OCI state as `sprout state` prints it (runc's field set).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
}

/// A container in the state root.
#[derive(Debug, Clone)]
pub struct Container {
    runtime: Runtime,
    state: SavedState,
}

/// Undoes whatever part of a create is done when dropped; a successful
/// create empties it first.
struct CreateGuard {
    dir: Option<ContainerDir>,
    cgroup: Option<Cgroup>,
    init: Option<Spawned>,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if let Some(init) = self.init.take() {
            let _ = pidfd_kill(&init.pidfd, libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(init.pid, None);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.remove();
        }
    }
}

/// A container id taken, with its cgroup, for a process started outside
/// the runtime; see [`Runtime::adopt`].
#[derive(Debug)]
pub struct Adoption {
    runtime: Runtime,
    bundle: Bundle,
    dir: Option<ContainerDir>,
    cgroup: Option<Cgroup>,
}

impl Adoption {
    /// The container's id.
    pub fn id(&self) -> &str {
        self.dir.as_ref().expect("present until finish").id()
    }

    /// The container's cgroup, made and limited; the process goes here.
    pub fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("present until finish")
    }

    /// The bundle the container was reserved for.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Records running process `pid` as the container, so that state,
    /// kill, pause, exec and delete work on it like on any other. On an
    /// error the reservation is kept: the caller stops the process first,
    /// then drops the adoption, which removes the cgroup (a cgroup with a
    /// live process cannot be) and the state directory.
    pub fn finish(&mut self, pid: i32) -> Result<Container> {
        let dir = self.dir.as_ref().expect("present until finish");
        let cgroup = self.cgroup.as_ref().expect("present until finish");
        let saved = SavedState {
            id: dir.id().to_string(),
            bundle: self.bundle.dir.clone(),
            rootfs: self.bundle.rootfs.clone(),
            created: state::rfc3339(SystemTime::now()),
            owner: owner_name(),
            init: ProcessId::of(pid),
            started: true,
            cgroup: cgroup.to_saved(),
            spec: self.bundle.spec.clone(),
            sprout_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        dir.save(&saved)?;
        // Recorded: the directory and the cgroup now belong to the container.
        self.dir = None;
        self.cgroup = None;
        Ok(Container {
            runtime: self.runtime.clone(),
            state: saved,
        })
    }
}

impl Drop for Adoption {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.remove();
        }
    }
}

/// Sends `sig` through a pidfd.
pub fn pidfd_kill(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Resources plus the device rules every container needs to work (its
/// /dev nodes and ptys), appended after the spec's own, as runc does.
/// Device access starts from deny-all whatever the spec says (runc's
/// emulator does too): a spec with no rules gets only the defaults, never
/// the host's every device.
fn effective_resources(spec: &Spec) -> LinuxResources {
    let linux = spec.linux().clone().unwrap_or_default();
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut devices = res.devices().clone().unwrap_or_default();
    let rule =
        |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| -> LinuxDeviceCgroup {
            serde_json::from_value(serde_json::json!({
                "allow": true, "type": typ, "major": major, "minor": minor, "access": access
            }))
            .expect("static device rule")
        };
    devices.push(rule("c", None, None, "m"));
    devices.push(rule("b", None, None, "m"));
    for (_, major, minor) in DEFAULT_DEVICES {
        devices.push(rule("c", Some(major as i64), Some(minor as i64), "rwm"));
    }
    devices.push(rule("c", Some(5), Some(1), "rwm")); // /dev/console
    devices.push(rule("c", Some(5), Some(2), "rwm")); // /dev/ptmx
    devices.push(rule("c", Some(136), None, "rwm")); // /dev/pts/*
    for d in linux.devices().iter().flatten() {
        let t = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => "b",
            _ => "c",
        };
        devices.push(rule(t, Some(d.major()), Some(d.minor()), "rwm"));
    }
    res.set_devices(Some(devices));
    res
}

pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, pid.to_string()).map_err(Error::io(format!("pid file {}", path.display())))?;
    fs::rename(&tmp, path).map_err(Error::io(format!("pid file {}", path.display())))
}

pub(crate) fn oom_score_adj(pid: i32, value: i32) -> Result<()> {
    match fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string()) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            let minimum = fs::read_to_string("/proc/self/oom_score_adj")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            Err(Error::OomScoreAdj {
                wanted: value,
                minimum,
            })
        }
        Err(e) => Err(Error::io("writing oom_score_adj")(e)),
    }
}

fn mkfifo(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Io {
        what: "exec fifo path".into(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: valid C string and mode.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        return Err(Error::io("creating the exec fifo")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn open_rdwr_cloexec(path: &Path) -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io(format!("opening {}", path.display())))?;
    Ok(f.into())
}

/// A file in the state directory the init writes into through the fd
/// (close-on-exec) it is handed: empty, or appended to.
fn create_report_file(path: &Path, append: bool) -> Result<OwnedFd> {
    let mut o = fs::OpenOptions::new();
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    let f = o
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    Ok(f.into())
}

/// How a new init gets into its cgroup without the parent writing its
/// pid into v1 `cgroup.procs` (which costs an RCU grace period; see
/// `Cgroup::open_v1_task_files`): cloned straight into the unified
/// hierarchy, and moving itself into the v1 ones.
pub(crate) struct Placement {
    pub clone_into: Option<OwnedFd>,
    pub task_files: Vec<OwnedFd>,
}

impl Placement {
    pub fn new(cgroup: &Cgroup) -> std::result::Result<Self, crate::cgroups::CgroupError> {
        Ok(Self {
            clone_into: cgroup.unified_dir_fd(),
            task_files: cgroup.open_v1_task_files()?,
        })
    }

    /// Completes the placement from the parent where the clone could not.
    pub fn finish(
        cloned_into_unified: bool,
        cgroup: &Cgroup,
        pid: i32,
    ) -> std::result::Result<(), crate::cgroups::CgroupError> {
        if cloned_into_unified {
            Ok(())
        } else {
            cgroup.add_process_unified(pid)
        }
    }
}

fn cgroup_err(id: &str) -> impl FnOnce(crate::cgroups::CgroupError) -> Error {
    let id = id.to_string();
    move |source| Error::Cgroup { id, source }
}

impl Runtime {
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    pub fn init_binary(&self) -> &Path {
        &self.init_binary
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Creates a container from a bundle; its process waits for `start`.
    pub fn create(&self, id: &str, bundle_dir: &Path, opts: CreateOptions) -> Result<Container> {
        spec::validate_id(id).map_err(|reason| Error::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        let mut stages = Stages::new();
        let bundle = spec::load_bundle(bundle_dir)?;
        if let Some(p) = bundle.spec.process() {
            spec::check_lsm_available(p)?;
        }
        stages.mark("validate");
        let dir = self.store.create(id)?;
        let c = self.create_in(dir, bundle, opts, &mut stages)?;
        stages.log("create", id);
        Ok(c)
    }

    /// Like [`create`](Self::create), from a bundle the caller loaded with
    /// [`spec::load_bundle`] and adjusted (netplug points the network
    /// namespace at a pooled one this way). Validated again here.
    pub fn create_from_bundle(
        &self,
        id: &str,
        bundle: Bundle,
        opts: CreateOptions,
    ) -> Result<Container> {
        spec::validate_id(id).map_err(|reason| Error::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        let mut stages = Stages::new();
        spec::validate(&bundle.spec)?;
        if let Some(p) = bundle.spec.process() {
            spec::check_lsm_available(p)?;
        }
        stages.mark("validate");
        let dir = self.store.create(id)?;
        let c = self.create_in(dir, bundle, opts, &mut stages)?;
        stages.log("create", id);
        Ok(c)
    }

    fn create_in(
        &self,
        dir: ContainerDir,
        bundle: Bundle,
        mut opts: CreateOptions,
        stages: &mut Stages,
    ) -> Result<Container> {
        let id = dir.id().to_string();
        let spec = &bundle.spec;
        let linux = spec.linux().clone().unwrap_or_default();
        let process = spec.process().clone().expect("validated");
        let mut guard = CreateGuard {
            dir: Some(dir),
            cgroup: None,
            init: None,
        };

        let cgroup = guard.cgroup.insert(Self::prepare_cgroup(&id, spec)?);

        let dir = guard.dir.as_ref().expect("set above");
        let fifo_path = dir.exec_fifo();
        stages.mark("cgroup");
        mkfifo(&fifo_path)?;
        let fifo = open_rdwr_cloexec(&fifo_path)?;
        // The init reports a failure after `create` (and a holder the exit
        // statuses it reaps) into files made here: it never holds a
        // directory of the host, which the container's own paths (its cwd,
        // its executable) could reach through /proc/self/fd (runc's
        // CVE-2024-21626).
        let start_error = create_report_file(&dir.path().join(START_ERROR_FILE), false)?;
        let holder = opts.takeover.as_ref().is_some_and(|t| t.holder);
        let exits = holder
            .then(|| create_report_file(&dir.path().join(crate::init::EXITS_FILE), true))
            .transpose()?;

        let terminal = process.terminal().unwrap_or(false);
        let console = match (&opts.console_socket, terminal) {
            (Some(path), true) => Some(OwnedFd::from(UnixStream::connect(path).map_err(
                |source| Error::ConsoleSocket {
                    path: path.clone(),
                    source,
                },
            )?)),
            (None, true) => {
                return Err(Error::Spec(spec::SpecError::InvalidField {
                    field: "process.terminal".into(),
                    reason: "terminal: true needs a --console-socket".into(),
                }));
            }
            _ => None,
        };

        let ns: NamespacePlan = namespaces::plan(linux.namespaces().as_deref().unwrap_or_default())
            .map_err(|e| {
                Error::Spec(spec::SpecError::InvalidField {
                    field: "linux.namespaces".into(),
                    reason: e.to_string(),
                })
            })?;
        let (parent_ch, init_ch) = channel::pair().map_err(Error::io("channel socketpair"))?;
        let mut pass = vec![init_ch.into_fd(), fifo, start_error];
        let exits_index = exits.is_some().then_some(pass.len());
        pass.extend(exits);
        let console_index = console.is_some().then_some(pass.len());
        if let Some(c) = console {
            pass.push(c);
        }
        let mount_index = ns.join_mount.is_some().then_some(pass.len());
        if let Some(m) = ns.join_mount {
            pass.push(m);
        }
        let takeover_index = opts.takeover.as_ref().map(|_| pass.len());
        let rlimit_stack = opts.takeover.as_ref().and_then(|t| t.rlimit_stack);
        let mut inherit_indices = Vec::new();
        if let Some(t) = opts.takeover.take() {
            pass.push(t.exe);
            for fd in t.inherit {
                inherit_indices.push(pass.len());
                pass.push(fd);
            }
        }
        let placement = Placement::new(cgroup).map_err(cgroup_err(&id))?;
        let cloned_into_unified = placement.clone_into.is_some();
        let tasks = pass.len()..pass.len() + placement.task_files.len();
        pass.extend(placement.task_files);
        let mut req = SpawnRequest {
            new_namespaces: ns.clone_flags,
            joins: ns.joins,
            joins_pid_namespace: ns.joins_pid,
            stdio: std::mem::take(&mut opts.stdio),
            pass,
            preserve_fds: opts.preserve_fds,
            cgroup: placement.clone_into,
            id_maps: ns.new_user.then(|| {
                (
                    namespaces::id_map_text(linux.uid_mappings().as_deref().unwrap_or_default()),
                    namespaces::id_map_text(linux.gid_mappings().as_deref().unwrap_or_default()),
                )
            }),
        };
        let fds = spawn::prepare_fds(&mut req).map_err(Error::io("preparing descriptors"))?;
        let argv = vec!["sprout-init".to_string(), fds[0].to_string()];
        let spawned = guard
            .init
            .insert(spawn::spawn(&self.init_binary, &argv, req)?);
        let (pid, init_pid) = (spawned.pid.as_raw(), spawned.pid);
        stages.mark("spawn");

        if let Some(adj) = process.oom_score_adj() {
            oom_score_adj(pid, adj)?;
        }
        Placement::finish(cloned_into_unified, cgroup, pid).map_err(cgroup_err(&id))?;

        let mut oci_state = State::default();
        oci_state.set_version(OCI_VERSION.into());
        oci_state.set_id(id.clone());
        oci_state.set_status(ContainerState::Creating);
        oci_state.set_pid(Some(pid));
        oci_state.set_bundle(bundle.dir.clone());
        oci_state.set_annotations(spec.annotations().clone());

        let has_runtime_hooks = spec.hooks().as_ref().is_some_and(|h| {
            !HookKind::Prestart.of(h).is_empty() || !HookKind::CreateRuntime.of(h).is_empty()
        });
        let time_offsets = ns.new_time.then(|| {
            linux
                .time_offsets()
                .iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (v.secs().unwrap_or(0), v.nanosecs().unwrap_or(0)),
                    )
                })
                .collect()
        });
        let config = InitConfig {
            mode: InitMode::Create,
            id: id.clone(),
            process: process.clone(),
            rootfs: Some(RootfsConfig::for_bundle(&bundle, opts.no_pivot)),
            hostname: spec.hostname().clone(),
            domainname: spec.domainname().clone(),
            sysctl: linux
                .sysctl()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            hooks: spec.hooks().clone(),
            state: oci_state.clone(),
            seccomp: linux.seccomp().clone(),
            personality: linux.personality().clone(),
            exec_fifo_fd: Some(fds[1]),
            start_error_fd: Some(fds[2]),
            exits_fd: exits_index.map(|i| fds[i]),
            console_socket_fd: console_index.map(|i| fds[i]),
            preserve_fds: opts.preserve_fds,
            join_mount_fd: mount_index.map(|i| fds[i]),
            cgroup_task_fds: fds[tasks].to_vec(),
            join_mount_via_pidfd: false,
            unshare_cgroup_ns: ns.new_cgroup,
            time_offsets,
            new_keyring: !opts.no_new_keyring,
            user_namespace: ns.new_user,
            runtime_hooks: has_runtime_hooks,
            takeover: takeover_index.map(|i| crate::init::TakeoverConfig {
                exe_fd: fds[i],
                rlimit_stack,
                inherit: inherit_indices.iter().map(|&j| fds[j]).collect(),
                holder,
            }),
        };
        let mut ch: ParentChannel = parent_ch;
        ch.send(&ParentMsg::Bootstrap(Box::new(config)))?;
        let state_json = serde_json::to_vec(&oci_state).unwrap_or_default();
        loop {
            match ch.recv() {
                Ok(InitMsg::RunRuntimeHooks) => {
                    hooks::run(HookKind::Prestart, spec.hooks().as_ref(), &state_json)?;
                    hooks::run(HookKind::CreateRuntime, spec.hooks().as_ref(), &state_json)?;
                    ch.send(&ParentMsg::RuntimeHooksDone)?;
                }
                Ok(InitMsg::Ready) => {
                    stages.mark("init setup");
                    break;
                }
                Ok(InitMsg::Failed(f)) => return Err(Error::Init(f)),
                Err(channel::ChannelError::Closed) => {
                    let status = nix::sys::wait::waitpid(init_pid, None)
                        .map(|s| format!("{s:?}"))
                        .unwrap_or_else(|e| e.to_string());
                    guard.init = None;
                    return Err(Error::InitDied { status });
                }
                Err(e) => return Err(e.into()),
            }
        }

        let saved = SavedState {
            id: id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::rfc3339(SystemTime::now()),
            owner: owner_name(),
            init: ProcessId::of(pid),
            started: false,
            cgroup: cgroup.to_saved(),
            spec: bundle.spec.clone(),
            sprout_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let dir = guard.dir.as_ref().expect("set above");
        dir.save(&saved)?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        stages.mark("save");
        // Success: keep everything; the directory lock goes with `dir`.
        guard.init = None;
        guard.cgroup = None;
        drop(guard.dir.take());
        Ok(Container {
            runtime: self.clone(),
            state: saved,
        })
    }

    /// Creates container `id`'s cgroup (its `cgroupsPath`, or its id
    /// under the caller's own cgroup) and applies the spec's limits with
    /// the device rules every container needs.
    pub fn prepare_cgroup(id: &str, spec: &Spec) -> Result<Cgroup> {
        let linux = spec.linux().clone().unwrap_or_default();
        let cg_path = match linux.cgroups_path() {
            Some(p) if !p.as_os_str().is_empty() => CgroupsPath::parse(p),
            _ => CgroupsPath::parse(Path::new(id)),
        }
        .map_err(cgroup_err(id))?;
        let cgroup = Cgroup::create(&cg_path).map_err(cgroup_err(id))?;
        if let Err(e) = cgroup.apply(&effective_resources(spec)) {
            let _ = cgroup.destroy();
            return Err(cgroup_err(id)(e));
        }
        Ok(cgroup)
    }

    /// Reserves container `id` for a process started outside this
    /// runtime (an instance forked from a template): its state directory
    /// is made (so the id is taken) and its cgroup created with the
    /// bundle's limits. The process is then put in [`Adoption::cgroup`]
    /// and recorded with [`Adoption::finish`]; dropping the adoption
    /// unfinished removes both.
    pub fn adopt(&self, id: &str, bundle: Bundle) -> Result<Adoption> {
        spec::validate_id(id).map_err(|reason| Error::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        let dir = self.store.create(id)?;
        let cgroup = match Self::prepare_cgroup(id, &bundle.spec) {
            Ok(c) => c,
            Err(e) => {
                let _ = dir.remove();
                return Err(e);
            }
        };
        Ok(Adoption {
            runtime: self.clone(),
            bundle,
            dir: Some(dir),
            cgroup: Some(cgroup),
        })
    }

    /// Finds a container by id.
    pub fn container(&self, id: &str) -> Result<Container> {
        spec::validate_id(id).map_err(|reason| Error::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        Ok(Container {
            runtime: self.clone(),
            state: self.store.read(id)?,
        })
    }

    /// All containers in the state root.
    pub fn list(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for id in self.store.ids()? {
            // A container deleted while we list is simply not listed.
            if let Ok(c) = self.container(&id) {
                out.push(c);
            }
        }
        Ok(out)
    }
}

fn owner_name() -> String {
    // SAFETY: geteuid is always safe.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        "root".into()
    } else {
        uid.to_string()
    }
}

/// How long `delete --force` and `kill` waiters give a dying process.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the process behind `pidfd` has exited (POLLIN on a pidfd),
/// up to `timeout` (`None`: for ever): `Ok(true)` once it has exited.
pub fn wait_pidfd(pidfd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            None => -1,
        };
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Container {
    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub(crate) fn runtime_init_binary(&self) -> &Path {
        &self.runtime.init_binary
    }

    /// The state root of the runtime it belongs to.
    pub fn runtime_root(&self) -> &Path {
        self.runtime.root()
    }

    pub fn saved(&self) -> &SavedState {
        &self.state
    }

    pub fn spec(&self) -> &Spec {
        &self.state.spec
    }

    pub fn bundle(&self) -> &Path {
        &self.state.bundle
    }

    /// The init's pid while it lives.
    pub fn pid(&self) -> Option<i32> {
        self.state.init.filter(|p| p.is_alive()).map(|p| p.pid)
    }

    pub fn cgroup(&self) -> Cgroup {
        Cgroup::from_saved(&self.state.cgroup)
    }

    pub fn saved_cgroup(&self) -> &SavedCgroup {
        &self.state.cgroup
    }

    pub fn status(&self) -> Status {
        if !self.state.init.is_some_and(|p| p.is_alive()) {
            return Status::Stopped;
        }
        if self
            .runtime
            .store
            .root()
            .join(&self.state.id)
            .join(state::EXEC_FIFO)
            .exists()
        {
            return Status::Created;
        }
        if self.cgroup().is_frozen().unwrap_or(false) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    pub fn oci_state(&self) -> OciState {
        let status = self.status();
        OciState {
            oci_version: OCI_VERSION.into(),
            id: self.state.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.state.init.map_or(0, |p| p.pid)
            },
            status: status.as_str().into(),
            bundle: self.state.bundle.clone(),
            rootfs: self.state.rootfs.clone(),
            created: self.state.created.clone(),
            owner: self.state.owner.clone(),
            annotations: self.state.spec.annotations().clone().unwrap_or_default(),
        }
    }

    fn hook_state(&self, status: ContainerState) -> Vec<u8> {
        let mut s = State::default();
        s.set_version(OCI_VERSION.into());
        s.set_id(self.state.id.clone());
        s.set_status(status);
        s.set_pid(self.state.init.map(|p| p.pid));
        s.set_bundle(self.state.bundle.clone());
        s.set_annotations(self.state.spec.annotations().clone());
        serde_json::to_vec(&s).unwrap_or_default()
    }

    fn lock(&self) -> Result<ContainerDir> {
        Ok(self.runtime.store.open_container(&self.state.id)?)
    }

    fn wrong(&self, status: Status, action: &'static str) -> Error {
        Error::WrongStatus {
            id: self.state.id.clone(),
            status: status.as_str(),
            action,
        }
    }

    /// An open pidfd for the init, checked to be the same process.
    fn init_pidfd(&self) -> Option<OwnedFd> {
        let init = self.state.init?;
        let fd = spawn::pidfd_open(init.pid).ok()?;
        // Checked after opening: a pidfd pins the process, so a pid reused
        // between the check and the open cannot slip through.
        init.is_alive().then_some(fd)
    }

    /// Lets a created container's process run: [`Container::release`]
    /// then [`Container::finish_start`].
    pub fn start(&mut self) -> Result<()> {
        self.release()?;
        self.finish_start();
        Ok(())
    }

    /// The first half of `start`: lets the init exec the container's
    /// process (or the takeover program) and waits until it has. A
    /// restorer that traces the init does its work between this and
    /// [`Container::finish_start`].
    pub fn release(&mut self) -> Result<()> {
        let mut stages = Stages::new();
        let dir = self.lock()?;
        let status = self.status();
        if status != Status::Created {
            return Err(self.wrong(status, "start it (only a created container can be started)"));
        }
        let fifo_path = dir.exec_fifo();
        let fifo = fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(&fifo_path);
        let outcome = match fifo {
            Ok(mut fifo) => {
                fifo.write_all(&[0])
                    .map_err(Error::io("signalling start"))?;
                // The init holds the fifo open until its exec (or exit):
                // POLLERR on our end means it has let go.
                let mut pfd = libc::pollfd {
                    fd: fifo.as_raw_fd(),
                    events: 0,
                    revents: 0,
                };
                loop {
                    // SAFETY: poll on one valid pollfd.
                    let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                    if r > 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        break;
                    }
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                Err("the container's init is gone".to_string())
            }
            Err(e) => return Err(Error::io("opening the exec fifo")(e)),
        };
        let _ = fs::remove_file(&fifo_path);
        let error_file = dir.path().join(START_ERROR_FILE);
        let report = fs::read_to_string(&error_file);
        let _ = fs::remove_file(&error_file);
        if let Ok(msg) = report
            && !msg.is_empty()
        {
            return Err(Error::StartFailed {
                id: self.state.id.clone(),
                reason: msg,
            });
        }
        if let Err(reason) = outcome {
            return Err(Error::StartFailed {
                id: self.state.id.clone(),
                reason,
            });
        }
        self.state.started = true;
        drop(dir);
        stages.mark("exec");
        stages.log("start", &self.state.id);
        Ok(())
    }

    /// The second half of `start`: the poststart hooks. Their failures are
    /// warnings (the spec's rule): the process already runs.
    pub fn finish_start(&self) {
        if let Err(e) = hooks::run(
            HookKind::Poststart,
            self.state.spec.hooks().as_ref(),
            &self.hook_state(ContainerState::Running),
        ) {
            tracing::warn!(container = %self.state.id, "{e}");
        }
    }

    /// Sends a signal to the init, or with `all` to every process of the
    /// container. As with runc, `all` also reaches what is left of a
    /// stopped container (containerd's shim kills an exited init's
    /// children that way when the pid namespace is shared), and a SIGKILL
    /// thaws a paused container, since a task frozen by the v1 freezer does
    /// not die until thawed.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let status = self.status();
        if all {
            self.cgroup()
                .kill_all(signal)
                .map_err(cgroup_err(&self.state.id))?;
        } else {
            let fd = self
                .init_pidfd()
                .ok_or_else(|| self.wrong(Status::Stopped, "signal it (container not running)"))?;
            pidfd_kill(&fd, signal).map_err(Error::io(format!("signalling {}", self.state.id)))?;
        }
        if signal == libc::SIGKILL && status == Status::Paused {
            self.cgroup().thaw().map_err(cgroup_err(&self.state.id))?;
        }
        Ok(())
    }

    /// Removes the container. A running or paused one needs `force`; a
    /// created one is killed (runc's behaviour).
    pub fn delete(self, force: bool) -> Result<()> {
        let mut stages = Stages::new();
        let dir = self.lock()?;
        let status = self.status();
        let cgroup = self.cgroup();
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(self.wrong(status, "delete it without --force"));
            }
            // The init is gone, but with a shared pid namespace its
            // children may live on in the cgroup: kill them, as runc does.
            Status::Stopped => {
                if cgroup.procs().is_ok_and(|p| !p.is_empty()) {
                    let _ = cgroup.kill_all(libc::SIGKILL);
                }
            }
            _ => {
                let pidfd = self.init_pidfd();
                let _ = cgroup.kill_all(libc::SIGKILL);
                if let Some(fd) = &pidfd {
                    let _ = pidfd_kill(fd, libc::SIGKILL);
                }
                if status == Status::Paused {
                    let _ = cgroup.thaw();
                }
                if let Some(fd) = &pidfd
                    && !wait_pidfd(fd, Some(DEATH_TIMEOUT)).unwrap_or(false)
                {
                    return Err(Error::io(format!("killing container {}", self.state.id))(
                        io::Error::from_raw_os_error(libc::ETIMEDOUT),
                    ));
                }
            }
        }
        // Reap the init if it was our child (a library caller that never
        // waited); ECHILD otherwise, which is fine.
        if let Some(init) = self.state.init {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(init.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        stages.mark("stop");
        if let Err(e) = hooks::run(
            HookKind::Poststop,
            self.state.spec.hooks().as_ref(),
            &self.hook_state(ContainerState::Stopped),
        ) {
            tracing::warn!(container = %self.state.id, "{e}");
        }
        stages.mark("poststop");
        cgroup.destroy().map_err(cgroup_err(&self.state.id))?;
        stages.mark("cgroup");
        dir.remove()?;
        stages.mark("state");
        stages.log("delete", &self.state.id);
        Ok(())
    }

    /// Freezes a running container. A created one is refused: its init
    /// waits on the exec fifo, and frozen there it could neither be
    /// started (start would wait forever for the fifo) nor resumed (its
    /// status stays `created`).
    pub fn pause(&self) -> Result<()> {
        let _dir = self.lock()?;
        let status = self.status();
        if status != Status::Running {
            return Err(self.wrong(status, "pause it (it is not running)"));
        }
        self.cgroup().freeze().map_err(cgroup_err(&self.state.id))
    }

    pub fn resume(&self) -> Result<()> {
        let _dir = self.lock()?;
        let status = self.status();
        if status != Status::Paused {
            return Err(self.wrong(status, "resume it (it is not paused)"));
        }
        self.cgroup().thaw().map_err(cgroup_err(&self.state.id))
    }

    /// Changes the resources of a live container and remembers them.
    /// Device rules stay as created (runc's update ignores them too):
    /// containerd's CRI sends the spec's whole resources, and re-applying
    /// that list would drop the default rules added at create.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        let resources = without_devices(resources);
        let dir = self.lock()?;
        let saved = dir.load()?;
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong(status, "update it"));
        }
        Cgroup::from_saved(&saved.cgroup)
            .apply(&resources)
            .map_err(cgroup_err(&self.state.id))?;
        self.remember_resources(&dir, saved, &resources)
    }

    /// The first half of [`Container::update`] for a hot path (a warm
    /// pool's claim): writes `resources` to the cgroup and nothing else.
    /// The state still shows the old ones until
    /// [`Container::record_resources`] is called with the same value.
    pub fn apply_resources(&self, resources: &LinuxResources) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong(status, "update it"));
        }
        self.cgroup()
            .apply(&without_devices(resources))
            .map_err(cgroup_err(&self.state.id))
    }

    /// The second half of [`Container::update`]: records in the state
    /// resources already applied with [`Container::apply_resources`].
    pub fn record_resources(&mut self, resources: &LinuxResources) -> Result<()> {
        let dir = self.lock()?;
        let saved = dir.load()?;
        self.remember_resources(&dir, saved, &without_devices(resources))
    }

    fn remember_resources(
        &mut self,
        dir: &ContainerDir,
        mut saved: SavedState,
        resources: &LinuxResources,
    ) -> Result<()> {
        let mut linux = saved.spec.linux().clone().unwrap_or_default();
        let merged = merge_resources(linux.resources().clone().unwrap_or_default(), resources);
        linux.set_resources(Some(merged));
        saved.spec.set_linux(Some(linux));
        dir.save(&saved)?;
        self.state = saved;
        Ok(())
    }

    pub fn stats(&self) -> Result<crate::cgroups::Stats> {
        self.cgroup().stats().map_err(cgroup_err(&self.state.id))
    }

    /// Pids of every process in the container.
    pub fn processes(&self) -> Result<Vec<i32>> {
        if self.status() == Status::Stopped {
            return Ok(Vec::new());
        }
        self.cgroup().procs().map_err(cgroup_err(&self.state.id))
    }

    /// Waits for the init to exit. Its exit code is known only when the
    /// caller is its parent (or subreaper); otherwise `None`.
    pub fn wait(&self) -> Result<Option<i32>> {
        let Some(init) = self.state.init else {
            return Ok(None);
        };
        wait_for_exit(init.pid, self.init_pidfd().as_ref())
    }
}

/// The exit code of a process we may be the parent of: 128+signal for a
/// signal death, as shells report it.
pub(crate) fn wait_for_exit(pid: i32, pidfd: Option<&OwnedFd>) -> Result<Option<i32>> {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECHILD) => {
                if let Some(fd) = pidfd {
                    wait_pidfd(fd, None).map_err(Error::io("waiting for the container"))?;
                }
                return Ok(None);
            }
            Err(e) => return Err(Error::io("waiting for the container")(e.into())),
        }
    }
}

/// The resources an update applies: all but the device rules.
fn without_devices(resources: &LinuxResources) -> LinuxResources {
    let mut r = resources.clone();
    r.set_devices(None);
    r
}

/// `update` semantics: fields given replace the saved ones, others stay.
fn merge_resources(mut base: LinuxResources, new: &LinuxResources) -> LinuxResources {
    let j = |v: &LinuxResources| serde_json::to_value(v).unwrap_or_default();
    let (mut b, n) = (j(&base), j(new));
    fn merge(b: &mut serde_json::Value, n: &serde_json::Value) {
        match (b, n) {
            (serde_json::Value::Object(b), serde_json::Value::Object(n)) => {
                for (k, v) in n {
                    merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, n) => *b = n.clone(),
        }
    }
    merge(&mut b, &n);
    if let Ok(m) = serde_json::from_value(b) {
        base = m;
    }
    base
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_merges_fields() {
        let base: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 100, "reservation": 50}, "pids": {"limit": 10}
        }))
        .unwrap();
        let new: LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": 200}})).unwrap();
        let m = merge_resources(base, &new);
        assert_eq!(m.memory().as_ref().unwrap().limit(), Some(200));
        assert_eq!(m.memory().as_ref().unwrap().reservation(), Some(50));
        assert_eq!(m.pids().as_ref().unwrap().limit(), 10);
    }

    #[test]
    fn default_device_rules_follow_a_deny_all() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}
        }))
        .unwrap();
        let r = effective_resources(&spec);
        let d = r.devices().as_ref().unwrap();
        assert!(!d[0].allow());
        assert!(
            d.iter()
                .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3))
        );
        // No rules at all: the defaults alone (apply_v1 and the v2
        // program deny the rest).
        let spec: Spec =
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        let r = effective_resources(&spec);
        let d = r.devices().as_ref().unwrap();
        assert!(d.iter().all(|r| r.allow()));
        assert!(
            d.iter()
                .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3))
        );
        assert!(
            !d.iter()
                .any(|r| r.major() == Some(1) && r.minor() == Some(11))
        );
    }
}
