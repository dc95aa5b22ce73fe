//! One container of the shim: its runtime handle, its init and exec'd
//! processes, its rootfs mounts and its OOM watch. A plain container runs
//! through the `runtime` library in this process; a template container is
//! started by sproutd at `Start` ([`super::template`]: claimed from the
//! function's warm pool or forked), which then also handles its kill,
//! pause, resume and delete, addressed by the instance id sproutd gave. Runtime calls block (they
//! fork, wait on fifos, write cgroup files), so each runs on tokio's
//! blocking pool.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sprout_runtime::cgroups::{OomEvent, OomWatcher};
use sprout_runtime::{Container, ExecOptions, Status};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::error::{Result, ShimError};
use super::events::{Events, Exit};
use super::mounts;
use super::process::{Process, ProcessStatus};
use super::stdio::{ContainerStdio, PreparedIo, StdioPaths};
use super::template::{InstanceLink, Sproutd, TemplateSpec};

/// How long `Delete` waits for an exit it caused, or for `TaskExit` to go
/// out before `TaskDelete`.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// A template container's link to sproutd.
pub struct TemplateTask {
    pub spec: TemplateSpec,
    pub sproutd: Sproutd,
    /// The stdio made at `Create`, handed to the instance at `Start`.
    pending_io: Mutex<Option<(PreparedIo, ContainerStdio)>>,
    /// sproutd's id of the instance, once started (also in the bundle's
    /// [`InstanceLink`]).
    instance: Mutex<Option<String>>,
}

impl TemplateTask {
    pub fn new(spec: TemplateSpec, sproutd: Sproutd, io: (PreparedIo, ContainerStdio)) -> Self {
        Self {
            spec,
            sproutd,
            pending_io: Mutex::new(Some(io)),
            instance: Mutex::new(None),
        }
    }

    /// sproutd's id of the started instance.
    fn instance(&self, task: &str) -> Result<String> {
        self.instance
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition(format!("task {task} has not started")))
    }
}

pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    /// The runtime's handle; a template container has one once forked.
    container: Mutex<Option<Container>>,
    template: Option<TemplateTask>,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The shim mounted `<bundle>/rootfs` (containerd sent mounts).
    pub mounted_rootfs: bool,
    /// Made by a restore: already running at `Create`.
    pub restored: bool,
    oom: Mutex<Option<JoinHandle<()>>>,
}

/// Runs a blocking runtime call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl Task {
    pub fn new(
        id: &str,
        container: Option<Container>,
        template: Option<TemplateTask>,
        bundle: PathBuf,
        init: Arc<Process>,
        mounted_rootfs: bool,
        restored: bool,
    ) -> Arc<Task> {
        Arc::new(Task {
            id: id.to_string(),
            bundle,
            container: Mutex::new(container),
            template,
            init,
            execs: Mutex::new(HashMap::new()),
            mounted_rootfs,
            restored,
            oom: Mutex::new(None),
        })
    }

    /// A copy of the runtime handle for a blocking call.
    pub fn container(&self) -> Result<Container> {
        self.container.lock().unwrap().clone().ok_or_else(|| {
            ShimError::FailedPrecondition(format!("task {} has not started", self.id))
        })
    }

    pub fn is_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id:?} of task {}", self.id)))
    }

    pub fn exec_processes(&self) -> Vec<Arc<Process>> {
        self.execs.lock().unwrap().values().cloned().collect()
    }

    /// `Start` of the init: lets the container's process run.
    pub async fn start(&self, events: &Arc<Events>) -> Result<u32> {
        if self.init.is_started() {
            return Err(ShimError::FailedPrecondition(format!(
                "task {} is already started",
                self.id
            )));
        }
        if let Some(t) = &self.template {
            self.start_instance(t, events).await?;
        } else if !self.restored {
            let mut c = self.container()?;
            let started = blocking(move || {
                c.start()?;
                Ok(c)
            })
            .await;
            match started {
                Ok(c) => *self.container.lock().unwrap() = Some(c),
                Err(e) => {
                    // The init is gone; its exit may be reported now.
                    self.init.open_gate();
                    return Err(e);
                }
            }
        }
        self.init.mark_started();
        let pid = self.init.pid();
        events.start(&self.id, pid).await;
        self.init.open_gate();
        Ok(pid)
    }

    /// A template container's start: sproutd claims or forks the
    /// instance with the stdio made at `Create` (its exit comes on the side
    /// connection), and the container is mapped to it before anything else
    /// can fail.
    async fn start_instance(&self, t: &TemplateTask, events: &Arc<Events>) -> Result<()> {
        let (prepared, stdio) = t.pending_io.lock().unwrap().take().ok_or_else(|| {
            ShimError::FailedPrecondition(format!("task {} is already started", self.id))
        })?;
        let fds: Vec<_> = stdio.fds.into_iter().flatten().collect();
        let (spec, sproutd, bundle) = (t.spec.clone(), t.sproutd.clone(), self.bundle.clone());
        let started = blocking(move || {
            let started = sproutd.start(&spec, &bundle, &fds)?;
            let link_write = std::time::Instant::now();
            if let Err(e) = started.link.write(&bundle) {
                // Unmapped, nobody could find it again.
                let _ = sproutd.delete(&started.link.instance, true);
                return Err(e);
            }
            Ok((started, link_write.elapsed()))
        })
        .await;
        let (started, link_write) = match started {
            Ok(s) => s,
            Err(e) => {
                // It will never run: its exit is the failure.
                self.init.watch_exit(Arc::clone(events), async {
                    Exit {
                        status: 255,
                        at: std::time::SystemTime::now(),
                    }
                });
                self.init.open_gate();
                return Err(e);
            }
        };
        let InstanceLink {
            instance,
            function,
            path,
        } = started.link.clone();
        // The timings split a template start at the shim
        // (benches/containerd.rs): the side request's round trip, sproutd's
        // own time and stages, then the link's write.
        tracing::info!(
            task = %self.id,
            instance = %instance,
            function = %function,
            path = %path.map_or("fork request", |p| p.as_str()),
            pid = started.pid,
            request_us = started.request.as_micros() as u64,
            sproutd_us = started.sproutd_us.map_or(-1, |us| us as i64),
            stages = %started.stages_text(),
            link_us = link_write.as_micros() as u64,
            "instance started"
        );
        *t.instance.lock().unwrap() = Some(instance.clone());
        let pid = started.pid;
        self.init.watch_exit(Arc::clone(events), async move {
            tokio::task::spawn_blocking(move || started.wait())
                .await
                .unwrap_or(Exit {
                    status: 255,
                    at: std::time::SystemTime::now(),
                })
        });
        let (sproutd, id) = (t.sproutd.clone(), instance.clone());
        let attached = async {
            let container = blocking(move || Ok(sproutd.runtime()?.container(&id)?)).await?;
            *self.container.lock().unwrap() = Some(container);
            let io = prepared.connect().await?;
            self.init.attach(pid, io)
        }
        .await;
        if let Err(e) = attached {
            // It runs but cannot be served: it goes, and its exit (on the
            // side connection) ends the task.
            let sproutd = t.sproutd.clone();
            let _ = blocking(move || sproutd.delete(&instance, true)).await;
            self.init.open_gate();
            return Err(e);
        }
        Ok(())
    }

    /// `Exec`: records the process; it runs at `Start`.
    pub fn add_exec(
        &self,
        exec_id: &str,
        paths: StdioPaths,
        spec: oci_spec::runtime::Process,
    ) -> Result<()> {
        if self.init.exited().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "task {} has stopped: cannot exec in it",
                self.id
            )));
        }
        let mut execs = self.execs.lock().unwrap();
        if execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id:?} of task {}",
                self.id
            )));
        }
        execs.insert(
            exec_id.to_string(),
            Process::new(&self.id, Some(exec_id.to_string()), paths, Some(spec)),
        );
        Ok(())
    }

    /// `Start` of an exec'd process.
    pub async fn start_exec(
        &self,
        exec_id: &str,
        events: &Arc<Events>,
        console_dir: &std::path::Path,
    ) -> Result<u32> {
        let p = self.process(exec_id)?;
        let spec = p.spec.lock().unwrap().take().ok_or_else(|| {
            ShimError::FailedPrecondition(format!("exec {exec_id:?} is already started"))
        })?;
        let (prepared, stdio) = PreparedIo::new(&p.paths, console_dir)?;
        let c = self.container()?;
        let spawned = blocking(move || {
            // An instance in a VPC namespace (the lease is in its
            // annotations; netplug's state shares the runtime's root).
            if let Some(lease) = crate::network::lease_to_mark_before_exec(&c, &spec) {
                sprout_netplug::BlockingNetplug::open(sprout_netplug::Options::new(
                    c.runtime_root(),
                ))?
                .note_may_reconfigure(&lease, c.id())?;
            }
            let e = c.exec(
                spec,
                ExecOptions {
                    console_socket: stdio.console_socket,
                    stdio: stdio.fds,
                    ..Default::default()
                },
            )?;
            Ok(e.pid)
        })
        .await;
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                // It never ran: drop it, as runc's shim does.
                self.execs.lock().unwrap().remove(exec_id);
                return Err(e);
            }
        };
        let io = prepared.connect().await?;
        p.attach(pid, io)?;
        p.watch_child(Arc::clone(events))?;
        p.mark_started();
        events.exec_started(&self.id, exec_id, pid as u32).await;
        p.open_gate();
        Ok(pid as u32)
    }

    /// `Kill`.
    pub async fn kill(
        &self,
        exec_id: &str,
        signal: u32,
        all: bool,
        events: &Arc<Events>,
    ) -> Result<()> {
        let signal = signal as i32;
        if !exec_id.is_empty() {
            return self.process(exec_id)?.signal(signal);
        }
        if self.init.exited().is_some() && !all {
            return Err(ShimError::NotFound(format!(
                "task {}: process already finished",
                self.id
            )));
        }
        if let Some(t) = &self.template {
            if !self.init.is_started() {
                // Nothing runs yet: the task ends here.
                self.init.watch_exit(Arc::clone(events), async move {
                    Exit {
                        status: 128 + signal as u32,
                        at: std::time::SystemTime::now(),
                    }
                });
                self.init.open_gate();
                return Ok(());
            }
            let (sproutd, instance) = (t.sproutd.clone(), t.instance(&self.id)?);
            return blocking(move || sproutd.kill(&instance, signal, all)).await;
        }
        if !self.init.is_started() {
            // A created task that is killed exits without a start.
            self.init.open_gate();
        }
        let c = self.container()?;
        blocking(move || {
            c.kill(signal, all).map_err(|e| match e {
                sprout_runtime::Error::WrongStatus { id, .. } => {
                    ShimError::NotFound(format!("task {id}: process already finished"))
                }
                other => other.into(),
            })
        })
        .await
    }

    pub async fn pause(&self) -> Result<()> {
        if let Some(t) = &self.template {
            self.container()?;
            let (sproutd, instance) = (t.sproutd.clone(), t.instance(&self.id)?);
            return blocking(move || sproutd.pause(&instance)).await;
        }
        let c = self.container()?;
        blocking(move || Ok(c.pause()?)).await
    }

    pub async fn resume(&self) -> Result<()> {
        if let Some(t) = &self.template {
            self.container()?;
            let (sproutd, instance) = (t.sproutd.clone(), t.instance(&self.id)?);
            return blocking(move || sproutd.resume(&instance)).await;
        }
        let c = self.container()?;
        blocking(move || Ok(c.resume()?)).await
    }

    /// The runtime's status of the init (paused or running), checked
    /// against the exit the shim recorded.
    pub async fn init_status(&self) -> Result<(ProcessStatus, bool)> {
        let status = self.init.status();
        if status != ProcessStatus::Running {
            return Ok((status, false));
        }
        let c = self.container()?;
        let rt = blocking(move || Ok(c.status())).await?;
        match rt {
            Status::Paused => Ok((status, true)),
            // The process has just exited: the watcher is about to record it.
            Status::Stopped => match self.init.wait_for(Duration::from_secs(1)).await {
                Some(e) => Ok((ProcessStatus::Stopped(e), false)),
                None => Ok((status, false)),
            },
            _ => Ok((status, false)),
        }
    }

    pub async fn pids(&self) -> Result<Vec<i32>> {
        if !self.init.is_started() && self.is_template() {
            return Ok(Vec::new());
        }
        let c = self.container()?;
        blocking(move || Ok(c.processes()?)).await
    }

    pub async fn stats(
        &self,
    ) -> Result<containerd_shim::protos::protobuf::well_known_types::any::Any> {
        let c = self.container()?;
        blocking(move || {
            let stats = c.stats()?;
            Ok(super::metrics::to_any(&stats, c.cgroup().layout()))
        })
        .await
    }

    pub async fn update(&self, resources: oci_spec::runtime::LinuxResources) -> Result<()> {
        let mut c = self.container()?;
        let c = blocking(move || {
            c.update(&resources)?;
            Ok(c)
        })
        .await?;
        *self.container.lock().unwrap() = Some(c);
        Ok(())
    }

    /// `Delete` of an exec'd process: it must have exited (or never run).
    pub async fn delete_exec(&self, exec_id: &str) -> Result<(u32, Exit)> {
        let p = self.process(exec_id)?;
        let exit = match p.status() {
            ProcessStatus::Running => {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {exec_id:?} is running: kill it first"
                )));
            }
            ProcessStatus::Stopped(e) => {
                p.exit_published(EXIT_WAIT).await;
                e
            }
            ProcessStatus::Created => Exit {
                status: 0,
                at: std::time::SystemTime::now(),
            },
        };
        if let Some(io) = p.io() {
            io.shutdown();
        }
        self.execs.lock().unwrap().remove(exec_id);
        Ok((p.pid(), exit))
    }

    /// `Delete` of the init: the container goes, with its rootfs mounts.
    /// A running task must be killed first; a created one is killed here.
    pub async fn delete(&self, events: &Arc<Events>) -> Result<Exit> {
        if self.init.exited().is_none() && !self.init.is_started() && self.is_template() {
            // Never forked: nothing runs, nothing is in sproutd.
            self.kill("", libc::SIGKILL as u32, false, events).await?;
        }
        if self.init.exited().is_none() {
            if self.init.is_started() {
                let (_, paused) = self.init_status().await?;
                if self.init.exited().is_none() {
                    return Err(ShimError::FailedPrecondition(format!(
                        "task {} is {}: kill it before deleting",
                        self.id,
                        if paused { "paused" } else { "running" }
                    )));
                }
            } else {
                self.init.open_gate();
                let c = self.container()?;
                let _ = blocking(move || Ok(c.kill(libc::SIGKILL, true)?)).await;
                if self.init.wait_for(EXIT_WAIT).await.is_none() {
                    return Err(ShimError::FailedPrecondition(format!(
                        "task {}: its process did not die",
                        self.id
                    )));
                }
            }
        }
        let exit = self.init.exited().expect("exited above");
        self.init.exit_published(EXIT_WAIT).await;
        if let Some(h) = self.oom.lock().unwrap().take() {
            h.abort();
        }
        if let Some(t) = &self.template {
            // Mapped once started (a start that failed after the claim
            // removed its instance already). It has exited: forced, in case
            // sproutd has not seen that yet (a restarted sproutd learns it
            // from its own watch, a moment after the shim's pidfd).
            if let Ok(instance) = t.instance(&self.id) {
                let sproutd = t.sproutd.clone();
                blocking(move || sproutd.delete(&instance, true)).await?;
            }
        } else {
            let c = self.container()?;
            blocking(move || Ok(c.delete(true)?)).await?;
        }
        if self.mounted_rootfs {
            mounts::unmount_rootfs(&self.bundle.join("rootfs"));
        }
        for p in std::iter::once(&self.init).chain(self.exec_processes().iter()) {
            if let Some(io) = p.io() {
                io.shutdown();
            }
        }
        Ok(exit)
    }

    /// Publishes `TaskOOM` whenever the container's cgroup has an OOM kill.
    pub fn watch_oom(self: &Arc<Self>, events: Arc<Events>) {
        let Ok(c) = self.container() else {
            return;
        };
        let watcher = match c.cgroup().oom_watcher() {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(task = %self.id, "no OOM events: {e}");
                return;
            }
        };
        // SAFETY: the watcher's fd belongs to the watcher, which the
        // AsyncFd owns for its whole life.
        let Ok(mut afd) = (unsafe { AsyncFd::register(Watched(watcher)) }) else {
            return;
        };
        let id = self.id.clone();
        let handle = tokio::spawn(async move {
            loop {
                let Ok(mut ready) = afd.readable_mut().await else {
                    return;
                };
                match ready.get_inner_mut().0.wait(Some(Duration::from_millis(1))) {
                    Ok(Some(OomEvent::Oom { .. })) => events.oom(&id).await,
                    Ok(Some(OomEvent::CgroupRemoved)) | Err(_) => return,
                    Ok(None) => ready.clear_ready(),
                }
            }
        });
        *self.oom.lock().unwrap() = Some(handle);
    }
}

/// An [`OomWatcher`] for tokio's reactor.
struct Watched(OomWatcher);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}
