//! The seam between sproutd and the template engine.
//!
//! sproutd owns the registry of functions, the API, the event stream and
//! the bookkeeping of instances; an [`Engine`] owns templates and the
//! ptrace work of turning a template into an instance. The real engine
//! (restore once per node, fork per instance) lives in `sprout-snapshot`;
//! [`crate::fake::FakeEngine`] stands in for it in tests.
//!
//! # The contract
//!
//! - **Blocking.** Every method may block (ptrace on the engine's tracer
//!   thread, file I/O, waiting for a child). sproutd never calls them from
//!   an async task: always from `tokio::task::spawn_blocking`, so several
//!   calls may run at once on different threads. An engine that must
//!   serialize (one tracer thread) does so itself.
//! - **Order.** [`Engine::set_exit_sink`] is called once, before any other
//!   method. sproutd calls [`Engine::load_template`] for a function before
//!   the first [`Engine::fork`] of it and never loads one function twice at
//!   once; it calls [`Engine::drop_template`] only for a loaded template,
//!   and never while a fork of that function is in progress.
//! - **What an instance is.** When `fork` returns `Ok`, the instance is an
//!   ordinary container in sproutd's runtime state root
//!   ([`EngineContext::runtime_root`]) under `req.id`, with status
//!   `running`: `sprout_runtime::Runtime::container(id)` finds it, and
//!   from then on sproutd (not the engine) pauses, resumes, kills, execs
//!   into, reads stats of and deletes it through `sprout_runtime`. The
//!   instance must not depend on the template staying alive: dropping the
//!   template (or losing it when sproutd dies) leaves instances running.
//! - **Only instances in the runtime root.** sproutd treats every
//!   container of the runtime root as an instance (and adopts them all
//!   after a restart). The engine's own containers, such as the holder
//!   sandbox a template lives in, belong in a runtime rooted under
//!   [`EngineContext::engine_dir`].
//! - **One cgroup per instance.** With a bundle of its own (`req.bundle`)
//!   an instance gets that bundle's `cgroupsPath`; with the function's
//!   bundle (shared by all its instances) the engine derives a path unique
//!   to the instance from it and the id (the fake engine uses
//!   `<cgroupsPath>-<id>`). The runtime's delete removes the directories
//!   the instance's create made, so instances must not share a parent
//!   they created.
//! - **Errors leave nothing.** When `fork` or `load_template` returns
//!   `Err`, nothing of that instance or template may remain: no state
//!   directory, cgroup, mount, namespace or process. The error's message is
//!   shown to the API client as is, so it names the problem (the function,
//!   the file, the field).
//! - **File descriptors.** Every fd in a [`ForkRequest`] is owned by the
//!   request: the engine installs what it needs into the instance and
//!   closes its own copies before returning, on success and on error.
//!   sproutd keeps no copy. The instance is the only holder afterwards.
//! - **Exits.** sproutd watches every instance's init with a pidfd
//!   ([`InstanceInfo::pidfd`], else one it opens) and reads the exit
//!   status itself when it can: from `waitid` for its own child, or from
//!   `PIDFD_INFO_EXIT` (Linux 6.15+) once the init's parent reaped it. An
//!   engine whose instances are not sproutd's children (`CLONE_PARENT` to
//!   a reaper) should also report each exit it reaps through the
//!   [`ExitSink`]: when the pidfd fires and sproutd cannot read the status
//!   itself, it waits up to 2 s for such a report, then records the status
//!   as unknown. Reports for ids sproutd does not know are ignored.
//! - **Stages.** [`InstanceInfo::stages`] and the template's load time are
//!   shown by the API (`"stages": [{"name": "clone", "us": 310}, ...]`);
//!   name the steps of a start the way the design lists them (netns,
//!   cgroup, clone, memory, threads, fds, ...).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use sprout_snapshot::profile::WriteSet;

use crate::registry::FunctionSpec;

/// What an engine is given when sproutd starts.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// The sprout-runtime state root where instances must be created.
    pub runtime_root: PathBuf,
    /// A directory private to the engine, kept across sproutd restarts
    /// (file-hash caches, control sockets).
    pub engine_dir: PathBuf,
    /// The `sprout-init` helper the runtime uses.
    pub init_binary: PathBuf,
}

/// The template engine. See the module documentation for the contract.
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs and `GET /` ("sfork", "fake", ...).
    fn name(&self) -> &'static str;

    /// Gives the engine the channel on which it reports instance exits it
    /// observes (see "Exits" above). Called once, before anything else.
    /// Engines whose instances are sproutd's own children may ignore it.
    fn set_exit_sink(&self, sink: ExitSink) {
        let _ = sink;
    }

    /// Restores the function's image into a template (once per node and
    /// function; again if the one loaded has died). Blocking; may take as
    /// long as a restore.
    fn load_template(&self, f: &FunctionSpec) -> Result<TemplateInfo, EngineError>;

    /// Whether the function's template is loaded and its process alive
    /// (one killed from outside is not). Cheap and non-blocking: sproutd
    /// asks before every fork, and loads the template again when not.
    fn has_template(&self, function: &str) -> bool;

    /// Drops the function's template. Its instances live on.
    fn drop_template(&self, function: &str) -> Result<(), EngineError>;

    /// Forks an instance of `f`'s loaded template as container `req.id`
    /// in the runtime root, running, with `req`'s stdio. Blocking.
    /// `Err(EngineError::NoTemplate)` if the template is not loaded.
    fn fork(&self, f: &FunctionSpec, req: ForkRequest) -> Result<InstanceInfo, EngineError>;

    /// The pages instance `pid` of `function` has written since its fork
    /// (after its first request: that request's write set), for later
    /// forks to copy up front ([`ForkRequest::populate`]). `Ok(None)`: the
    /// engine does not record. Reads `/proc` only; the instance may be
    /// frozen.
    fn record_write_set(&self, function: &str, pid: i32) -> Result<Option<WriteSet>, EngineError> {
        let _ = (function, pid);
        Ok(None)
    }

    /// sproutd is stopping (SIGTERM; not called on a crash): release the
    /// templates. Instances must live on; the next sproutd adopts them.
    /// Called once, after the calls in flight have returned (or a 60 s
    /// wait for them ran out). Blocking.
    fn shutdown(&self) {}
}

/// One fork.
#[derive(Debug, Default)]
pub struct ForkRequest {
    /// The container id (validated by sproutd with the runtime's rules and
    /// not in use).
    pub id: String,
    /// The bundle whose sandbox the instance gets (namespaces, mounts,
    /// cgroupsPath, user, capabilities, seccomp, rlimits). Its rootfs must
    /// hold the same files as the function's, by content. `None`: the
    /// function's own bundle.
    pub bundle: Option<PathBuf>,
    /// The instance's fds 0, 1 and 2. `None` is `/dev/null`.
    pub stdio: [Option<OwnedFd>; 3],
    /// A connected unix socket: for a bundle with `process.terminal: true`
    /// the engine makes the instance's pty and sends its master over this
    /// socket with `SCM_RIGHTS`, as runc does on `--console-socket`.
    pub console_socket: Option<OwnedFd>,
    /// A network namespace for the instance to join instead of the one its
    /// bundle describes (a pooled netns from netplug, a pod's netns).
    pub netns: Option<OwnedFd>,
    /// OCI annotations recorded in the instance's state.
    pub annotations: HashMap<String, String>,
    /// Limits for the instance's cgroup, replacing the function's.
    pub resources: Option<LinuxResources>,
    /// The instance's cgroup, replacing the one derived from the bundle
    /// (pool instances get one under the pool's parent).
    pub cgroups_path: Option<PathBuf>,
    /// A recorded write set to copy before the instance runs (pre-warmed
    /// instances: the copies cost the fork what they save the request).
    pub populate: Option<Arc<WriteSet>>,
}

/// A forked instance.
#[derive(Debug)]
pub struct InstanceInfo {
    pub id: String,
    /// The instance's init (pid 1 of its pid namespace), in sproutd's pid
    /// namespace.
    pub pid: i32,
    /// A pidfd of that init, opened while it could not have been reaped
    /// yet. An engine whose instances are not sproutd's children should
    /// return one (an instance that exits at once could otherwise be
    /// reaped, and its pid reused, before sproutd opens its own); `None`:
    /// sproutd opens one from `pid` (safe for its own children, which
    /// stay until sproutd reaps them).
    pub pidfd: Option<OwnedFd>,
    /// How long each step of the fork took, in order.
    pub stages: Vec<Stage>,
}

/// A loaded template.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    pub function: String,
    /// The template process (0 for an engine without one).
    pub pid: i32,
    pub load_time: Duration,
}

/// One step of a start and its duration.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub elapsed: Duration,
}

impl Stage {
    pub fn new(name: impl Into<String>, elapsed: Duration) -> Self {
        Self {
            name: name.into(),
            elapsed,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Gone, but nobody could read its status (an adopted instance on a
    /// kernel without `PIDFD_INFO_EXIT`, reaped by someone else).
    Unknown,
}

impl ExitStatus {
    /// From a raw `wait` status.
    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFEXITED(status) {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Unknown
        }
    }

    /// The shell's exit code: the code, or 128 + signal.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(c),
            ExitStatus::Signaled(s) => Some(128 + s),
            ExitStatus::Unknown => None,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signaled(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_known(self) -> bool {
        self != ExitStatus::Unknown
    }
}

/// An instance's exit, as an engine reports it.
#[derive(Debug, Clone)]
pub struct InstanceExit {
    pub id: String,
    pub pid: i32,
    pub status: ExitStatus,
    pub at: SystemTime,
}

/// Where an engine reports exits. `send` never blocks and may be called
/// from any thread; an error means sproutd is shutting down.
pub type ExitSink = tokio::sync::mpsc::UnboundedSender<InstanceExit>;

/// Why an engine call failed. The variant picks the API's status code;
/// the message is shown to the client.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No template is loaded for this function (409).
    #[error("function {0:?} has no loaded template")]
    NoTemplate(String),
    /// The request cannot work: a bundle whose rootfs differs from the
    /// function's, a corrupt or foreign image, a bad field (400).
    #[error("{0}")]
    Invalid(String),
    /// This engine cannot do that (501).
    #[error("{0}")]
    Unsupported(String),
    /// From the runtime; its kind picks the status (a duplicate id is 409,
    /// a bad bundle 400, anything else 500).
    #[error(transparent)]
    Runtime(#[from] sprout_runtime::Error),
    /// Loading a template or forking from it failed; the kind of failure
    /// picks the status (a bad bundle or image is 400).
    #[error(transparent)]
    Template(#[from] sprout_snapshot::template::TemplateError),
    /// Recording an instance's write set failed (500).
    #[error("recording the write set: {0}")]
    Profile(#[from] sprout_snapshot::profile::ProfileError),
    /// A system call of the engine failed (500).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_from_wait_status() {
        assert_eq!(ExitStatus::from_wait_status(3 << 8), ExitStatus::Exited(3));
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus::Signaled(9));
        assert_eq!(ExitStatus::Signaled(9).code(), Some(137));
        assert_eq!(ExitStatus::Exited(0).code(), Some(0));
        assert_eq!(ExitStatus::Unknown.code(), None);
    }
}
