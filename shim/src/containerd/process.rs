//! One process of a task: the container's init or an exec'd process.
//!
//! Both are children of the shim (the runtime clones them, or has them
//! cloned with `CLONE_PARENT`), so their exit statuses come from
//! `waitid(P_PIDFD)` on a pidfd the shim watches: no `waitpid(-1)` reaper
//! that could steal the statuses the runtime waits for itself. The exit is
//! recorded as soon as it is reaped (`State`, `Wait` see it at once); its
//! event waits for the gate that `Start` opens after `TaskStart`, so a
//! fast process's exit never overtakes its start.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::error::{Result, ShimError};
use super::events::{Events, Exit};
use super::stdio::{ProcessIo, StdioPaths};
use crate::engine::ExitStatus;
use crate::pidfd;

pub struct Process {
    pub container_id: String,
    /// `None` for the init.
    pub exec_id: Option<String>,
    pub paths: StdioPaths,
    /// An exec's process spec, until it starts.
    pub spec: Mutex<Option<oci_spec::runtime::Process>>,
    pid: AtomicI32,
    started: AtomicBool,
    pidfd: Mutex<Option<OwnedFd>>,
    io: OnceLock<ProcessIo>,
    exit: watch::Sender<Option<Exit>>,
    /// Opened once the exit may be published (after `TaskStart`).
    gate: watch::Sender<bool>,
    /// Set once `TaskExit` went out (`TaskDelete` must follow it).
    exit_published: watch::Sender<bool>,
}

/// What `State` reports for a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStatus {
    Created,
    Running,
    Stopped(Exit),
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: Option<String>,
        paths: StdioPaths,
        spec: Option<oci_spec::runtime::Process>,
    ) -> Arc<Process> {
        Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id,
            paths,
            spec: Mutex::new(spec),
            pid: AtomicI32::new(0),
            started: AtomicBool::new(false),
            pidfd: Mutex::new(None),
            io: OnceLock::new(),
            exit: watch::channel(None).0,
            gate: watch::channel(false).0,
            exit_published: watch::channel(false).0,
        })
    }

    /// The exec id, or the container id for the init (the `id` of a
    /// `TaskExit`).
    pub fn process_id(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.container_id)
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire).max(0) as u32
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn status(&self) -> ProcessStatus {
        match self.exited() {
            Some(e) => ProcessStatus::Stopped(e),
            None if self.is_started() => ProcessStatus::Running,
            None => ProcessStatus::Created,
        }
    }

    pub fn io(&self) -> Option<&ProcessIo> {
        self.io.get()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        match rx.wait_for(|e| e.is_some()).await {
            Ok(e) => e.expect("waited for Some"),
            // The sender lives in `self`: unreachable while we borrow it.
            Err(_) => Exit {
                status: 255,
                at: SystemTime::now(),
            },
        }
    }

    /// Waits at most `timeout` for the exit.
    pub async fn wait_for(&self, timeout: Duration) -> Option<Exit> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// Lets the exit event go out (after `TaskStart`, or for a process
    /// that will never start).
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Waits (at most `timeout`) until `TaskExit` was published.
    pub async fn exit_published(&self, timeout: Duration) {
        let mut rx = self.exit_published.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| *p)).await;
    }

    /// Records the running process and its stdio.
    pub fn attach(&self, pid: i32, io: ProcessIo) -> Result<()> {
        let fd = pidfd::pidfd_open(pid).map_err(ShimError::io(format!("pidfd of {pid}")))?;
        self.pid.store(pid, Ordering::Release);
        *self.pidfd.lock().unwrap() = Some(fd);
        let _ = self.io.set(io);
        Ok(())
    }

    /// Watches for the exit of the attached process, the shim's child:
    /// its status comes from `waitid(P_PIDFD)`.
    pub fn watch_child(self: &Arc<Self>, events: Arc<Events>) -> Result<()> {
        let fd = self
            .pidfd
            .lock()
            .unwrap()
            .as_ref()
            .map(|fd| fd.try_clone())
            .transpose()
            .map_err(ShimError::io("dup of a pidfd"))?
            .ok_or_else(|| ShimError::FailedPrecondition("no process to watch".into()))?;
        self.watch_exit(events, async move {
            pidfd::exited(&fd).await;
            let status = match pidfd::try_reap_child(&fd) {
                Ok(Some(s)) => s,
                _ => pidfd::exit_info(&fd).unwrap_or(ExitStatus::Unknown),
            };
            Exit {
                status: status.code().unwrap_or(255) as u32,
                at: SystemTime::now(),
            }
        });
        Ok(())
    }

    /// Records the exit `exit` resolves to and publishes it once the gate
    /// is open.
    pub fn watch_exit(
        self: &Arc<Self>,
        events: Arc<Events>,
        exit: impl std::future::Future<Output = Exit> + Send + 'static,
    ) {
        let p = Arc::clone(self);
        tokio::spawn(async move {
            let exit = exit.await;
            tracing::debug!(
                container = %p.container_id,
                process = %p.process_id(),
                "exited with {}",
                exit.status
            );
            p.exit.send_replace(Some(exit));
            let mut gate = p.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            events
                .exit(&p.container_id, p.process_id(), p.pid(), exit)
                .await;
            p.exit_published.send_replace(true);
        });
    }

    /// Sends `signal` to the process itself; a finished process is "not
    /// found", as containerd expects.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let guard = self.pidfd.lock().unwrap();
        let gone =
            || ShimError::NotFound(format!("process {}: already finished", self.process_id()));
        if self.exited().is_some() {
            return Err(gone());
        }
        let Some(fd) = guard.as_ref() else {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} has not started",
                self.process_id()
            )));
        };
        match sprout_runtime::container::pidfd_kill(fd, signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(gone()),
            Err(e) => Err(ShimError::io(format!("signalling {}", self.process_id()))(
                e,
            )),
        }
    }
}
