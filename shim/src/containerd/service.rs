//! The task service (containerd's `containerd.task.v2.Task`): every RPC,
//! dispatched to the task it names. Task requests carry no namespace; a
//! shim serves one containerd address and namespace (its socket is keyed
//! by both, see [`super::start`]), so the container id is a safe key.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::{CheckpointOptions, ProcessDetails};
use containerd_shim::protos::shim::shim::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::shim_async::Task as TaskService;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use sprout_runtime::{CreateOptions, Runtime};
use sprout_snapshot::ptrace::Tracer;
use tokio::sync::Notify;

use super::error::{Result, ShimError};
use super::events::{Events, Exit, timestamp};
use super::mounts::{self, RootfsMount};
use super::process::{Process, ProcessStatus};
use super::stdio::{ContainerStdio, PreparedIo, StdioPaths};
use super::task::{Task, TemplateTask};
use super::template::{Sproutd, TemplateSpec};

/// What the shim reports as its version in `Connect`.
pub fn version() -> String {
    format!(
        "sprout {} (shim protocol {})",
        env!("CARGO_PKG_VERSION"),
        super::SHIM_PROTOCOL
    )
}

/// The shim's state: the runtime it runs containers with, its tasks, and
/// the way out once containerd shuts it down.
pub struct Shim {
    runtime: Runtime,
    /// containerd's namespace this shim serves.
    namespace: String,
    events: Arc<Events>,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// Ids whose `Create` is under way: not tasks yet, but the shim must
    /// not exit under them, nor create one twice.
    creating: Mutex<HashSet<String>>,
    /// Where console sockets are made.
    console_dir: PathBuf,
    tracer: OnceLock<Arc<Tracer>>,
    exit: Notify,
    exiting: AtomicBool,
}

/// A `Create` under way (see [`Shim::begin_create`]).
struct Creating<'a> {
    shim: &'a Shim,
    id: String,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.shim.creating.lock().unwrap().remove(&self.id);
    }
}

impl Shim {
    pub fn new(runtime: Runtime, namespace: &str, events: Events, state_root: &Path) -> Arc<Shim> {
        Arc::new(Shim {
            runtime,
            namespace: namespace.to_string(),
            events: Arc::new(events),
            tasks: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            console_dir: state_root.join("console"),
            tracer: OnceLock::new(),
            exit: Notify::new(),
            exiting: AtomicBool::new(false),
        })
    }

    /// Resolves once containerd has shut down the shim's last task.
    pub async fn wait_for_exit(&self) {
        loop {
            let notified = self.exit.notified();
            if self.exiting.load(Ordering::Acquire) && self.tasks.lock().unwrap().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Whether no task is left and none is being created (a `Create` may
    /// race a last `Shutdown`).
    pub fn is_idle(&self) -> bool {
        let tasks = self.tasks.lock().unwrap();
        tasks.is_empty() && self.creating.lock().unwrap().is_empty()
    }

    /// Marks `id` as being created until the guard drops; refuses an id
    /// that is a task or being created already.
    fn begin_create(&self, id: &str) -> Result<Creating<'_>> {
        let tasks = self.tasks.lock().unwrap();
        if tasks.contains_key(id) || !self.creating.lock().unwrap().insert(id.to_string()) {
            return Err(ShimError::AlreadyExists(format!("task {id:?}")));
        }
        Ok(Creating {
            shim: self,
            id: id.to_string(),
        })
    }

    fn task(&self, id: &str) -> Result<Arc<Task>> {
        self.tasks
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("task {id:?}")))
    }

    /// The one ptrace thread checkpoints and restores run on.
    fn tracer(&self) -> Result<Arc<Tracer>> {
        if let Some(t) = self.tracer.get() {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(
            Tracer::spawn("sprout-tracer").map_err(ShimError::io("starting the tracer thread"))?,
        );
        Ok(Arc::clone(self.tracer.get_or_init(|| t)))
    }

    async fn create(&self, req: CreateTaskRequest) -> Result<u32> {
        let id = req.id.clone();
        let _creating = self.begin_create(&id)?;
        let bundle = PathBuf::from(&req.bundle);
        let rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let mounted = mounts::mount_rootfs(&rootfs, &bundle.join("rootfs"))?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let template = self.template_of(&bundle, &id)?;
        let (prepared, stdio) = PreparedIo::new(&paths, &self.console_dir)?;
        let restored = !req.checkpoint.is_empty();
        let task = match template {
            Some(t) => {
                if paths.terminal {
                    return Err(ShimError::InvalidArgument(format!(
                        "task {id}: a template container (function {:?}) gets stdio, not a terminal",
                        t.function
                    )));
                }
                if restored {
                    return Err(ShimError::InvalidArgument(format!(
                        "task {id}: a template container cannot be created from a checkpoint"
                    )));
                }
                // sproutd is not asked here: an unknown function fails the
                // start request, before anything runs, with sproutd's
                // message; a round trip at Create would lengthen every
                // template start (benches/containerd.rs).
                let sproutd = Sproutd::from_env();
                let init = Process::new(&id, None, paths.clone(), None);
                Task::new(
                    &id,
                    None,
                    Some(TemplateTask::new(t, sproutd, (prepared, stdio))),
                    bundle,
                    init,
                    !rootfs.is_empty(),
                    false,
                )
            }
            None => {
                let container = self
                    .create_container(&id, &bundle, &req.checkpoint, stdio)
                    .await?;
                let pid = container.saved().init.map_or(0, |p| p.pid);
                let init = Process::new(&id, None, paths.clone(), None);
                let attached = match prepared.connect().await {
                    Ok(io) => init
                        .attach(pid, io)
                        .and_then(|()| init.watch_child(Arc::clone(&self.events))),
                    Err(e) => Err(e),
                };
                if let Err(e) = attached {
                    let c = container.clone();
                    let _ = tokio::task::spawn_blocking(move || c.delete(true)).await;
                    return Err(e);
                }
                let task = Task::new(
                    &id,
                    Some(container),
                    None,
                    bundle,
                    init,
                    !rootfs.is_empty(),
                    restored,
                );
                task.watch_oom(Arc::clone(&self.events));
                task
            }
        };
        mounted.keep();
        let pid = task.init.pid();
        let is_template = task.is_template();
        self.tasks.lock().unwrap().insert(id.clone(), task);
        self.events
            .create(&id, &req.bundle, &req.rootfs, &paths, &req.checkpoint, pid)
            .await;
        tracing::info!(task = %id, pid, restored, template = is_template, "created");
        Ok(pid)
    }

    /// The template a container is forked from, per its spec.
    fn template_of(&self, bundle: &Path, id: &str) -> Result<Option<TemplateSpec>> {
        let path = bundle.join("config.json");
        let text =
            std::fs::read(&path).map_err(ShimError::io(format!("reading {}", path.display())))?;
        let spec =
            sprout_runtime::spec::parse_spec(&text, &path).map_err(sprout_runtime::Error::from)?;
        Ok(TemplateSpec::of(&spec, &self.namespace, id))
    }

    /// A plain container: created by the runtime, or restored from a
    /// checkpoint (containerd's unpacked `ctr c restore` image).
    async fn create_container(
        &self,
        id: &str,
        bundle: &Path,
        checkpoint: &str,
        stdio: ContainerStdio,
    ) -> Result<sprout_runtime::Container> {
        let rt = self.runtime.clone();
        let tracer = if checkpoint.is_empty() {
            None
        } else {
            Some(self.tracer()?)
        };
        let (id, bundle, checkpoint) =
            (id.to_string(), bundle.to_path_buf(), checkpoint.to_string());
        tokio::task::spawn_blocking(move || -> Result<_> {
            match tracer {
                Some(tracer) => {
                    let (c, report) = sprout_snapshot::restore::restore(
                        &rt,
                        &tracer,
                        &id,
                        &bundle,
                        Path::new(&checkpoint),
                        sprout_snapshot::restore::RestoreOptions {
                            stdio: stdio.fds,
                            console_socket: stdio.console_socket,
                            ..Default::default()
                        },
                    )?;
                    tracing::info!(task = %id, "restored in {:?}", report.total());
                    Ok(c)
                }
                None => Ok(rt.create(
                    &id,
                    &bundle,
                    CreateOptions {
                        console_socket: stdio.console_socket,
                        stdio: stdio.fds,
                        ..Default::default()
                    },
                )?),
            }
        })
        .await?
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let task = self.task(&req.id)?;
        let (pid, exit) = if req.exec_id.is_empty() {
            let exit = task.delete(&self.events).await?;
            self.tasks.lock().unwrap().remove(&req.id);
            self.events.delete(&req.id, task.init.pid(), exit).await;
            tracing::info!(task = %req.id, status = exit.status, "deleted");
            (task.init.pid(), exit)
        } else {
            task.delete_exec(&req.exec_id).await?
        };
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let task = self.task(&req.id)?;
        let p = task.process(&req.exec_id)?;
        let (status, paused) = if req.exec_id.is_empty() {
            task.init_status().await?
        } else {
            (p.status(), false)
        };
        let (status, exit) = match status {
            ProcessStatus::Created => (TaskStatus::CREATED, None),
            ProcessStatus::Running if paused => (TaskStatus::PAUSED, None),
            ProcessStatus::Running => (TaskStatus::RUNNING, None),
            ProcessStatus::Stopped(e) => (TaskStatus::STOPPED, Some(e)),
        };
        Ok(StateResponse {
            id: p.process_id().to_string(),
            bundle: task.bundle.to_string_lossy().into_owned(),
            pid: p.pid(),
            status: status.into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: MessageField::from_option(exit.map(|e| timestamp(e.at))),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn checkpoint(&self, req: &CheckpointTaskRequest) -> Result<()> {
        let task = self.task(&req.id)?;
        if task.is_template() {
            return Err(ShimError::Unimplemented(
                "checkpointing a template container (checkpoint the function's own image instead)",
            ));
        }
        let opts = match req.options.as_ref() {
            Some(any) if any.type_url.ends_with("CheckpointOptions") => {
                CheckpointOptions::parse_from_bytes(&any.value)
                    .map_err(|e| ShimError::InvalidArgument(format!("checkpoint options: {e}")))?
            }
            _ => CheckpointOptions::default(),
        };
        if opts.open_tcp || opts.external_unix_sockets {
            return Err(ShimError::InvalidArgument(
                "sprout's checkpoint does not take established TCP connections or external unix sockets".into(),
            ));
        }
        if req.path.is_empty() {
            return Err(ShimError::InvalidArgument(
                "checkpoint: no image path".into(),
            ));
        }
        let tracer = self.tracer()?;
        let c = task.container()?;
        let image = PathBuf::from(&req.path);
        let leave_running = !opts.exit;
        tokio::task::spawn_blocking(move || -> Result<()> {
            // containerd pauses first; ptrace needs the process thawed
            // (the dump freezes it its own way and lets it go as it was).
            let paused = c.status() == sprout_runtime::Status::Paused;
            if paused {
                c.resume()?;
            }
            let dumped = sprout_snapshot::dump::checkpoint(
                &tracer,
                &c,
                &image,
                &sprout_snapshot::dump::CheckpointOptions { leave_running },
            );
            // As it was: paused again unless the dump killed it. The
            // dump's error, if any, is the one to report.
            if paused
                && (leave_running || dumped.is_err())
                && let Err(e) = c.pause()
            {
                if dumped.is_ok() {
                    return Err(e.into());
                }
                tracing::warn!(task = %c.id(), "pausing again after a failed checkpoint: {e}");
            }
            let report = dumped?;
            tracing::info!(
                task = %c.id(),
                "checkpointed: {} threads, {} bytes of pages",
                report.threads,
                report.pages_bytes
            );
            Ok(())
        })
        .await??;
        self.events.checkpointed(&req.id, &req.path).await;
        Ok(())
    }
}

/// The ttrpc face of [`Shim`].
#[derive(Clone)]
pub struct Service(pub Arc<Shim>);

fn spec_json<T: serde::de::DeserializeOwned>(any: &MessageField<Any>, what: &str) -> Result<T> {
    let any = any
        .as_ref()
        .ok_or_else(|| ShimError::InvalidArgument(format!("{what}: missing")))?;
    serde_json::from_slice(&any.value)
        .map_err(|e| ShimError::InvalidArgument(format!("{what}: {e}")))
}

type Rpc<T> = ttrpc::Result<T>;

#[async_trait]
impl TaskService for Service {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> Rpc<StateResponse> {
        Ok(self.0.state(&req).await?)
    }

    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> Rpc<CreateTaskResponse> {
        let id = req.id.clone();
        let pid = self.0.create(req).await.inspect_err(|e| {
            tracing::warn!(task = %id, "create failed: {e}");
        })?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> Rpc<StartResponse> {
        // Its time splits containerd's share of a start from the shim's (benches/containerd.rs).
        tracing::debug!(task = %req.id, exec = %req.exec_id, "start received");
        let task = self.0.task(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            task.start(&self.0.events).await?
        } else {
            task.start_exec(&req.exec_id, &self.0.events, &self.0.console_dir)
                .await?
        };
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> Rpc<DeleteResponse> {
        Ok(self.0.delete(&req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> Rpc<PidsResponse> {
        let task = self.0.task(&req.id)?;
        let execs: HashMap<u32, String> = task
            .exec_processes()
            .iter()
            .filter(|p| p.pid() != 0)
            .map(|p| (p.pid(), p.process_id().to_string()))
            .collect();
        let processes = task
            .pids()
            .await?
            .into_iter()
            .map(|pid| {
                let pid = pid as u32;
                let info = execs.get(&pid).and_then(|exec_id| {
                    let details = ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    Some(Any {
                        type_url: "containerd.runc.v1.ProcessDetails".into(),
                        value: details.write_to_bytes().ok()?,
                        ..Default::default()
                    })
                });
                ProcessInfo {
                    pid,
                    info: MessageField::from_option(info),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> Rpc<Empty> {
        self.0.task(&req.id)?.pause().await?;
        self.0.events.paused(&req.id).await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> Rpc<Empty> {
        self.0.task(&req.id)?.resume().await?;
        self.0.events.resumed(&req.id).await;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> Rpc<Empty> {
        self.0.checkpoint(&req).await.inspect_err(|e| {
            tracing::warn!(task = %req.id, "checkpoint failed: {e}");
        })?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> Rpc<Empty> {
        self.0
            .task(&req.id)?
            .kill(&req.exec_id, req.signal, req.all, &self.0.events)
            .await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> Rpc<Empty> {
        let task = self.0.task(&req.id)?;
        let spec: oci_spec::runtime::Process = spec_json(&req.spec, "exec process spec")?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        task.add_exec(&req.exec_id, paths, spec)?;
        self.0.events.exec_added(&req.id, &req.exec_id).await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> Rpc<Empty> {
        let p = self.0.task(&req.id)?.process(&req.exec_id)?;
        match p.io() {
            Some(io) => io.resize(req.width, req.height)?,
            None => {
                return Err(ShimError::FailedPrecondition(format!(
                    "process {} has not started",
                    p.process_id()
                ))
                .into());
            }
        }
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> Rpc<Empty> {
        let p = self.0.task(&req.id)?.process(&req.exec_id)?;
        if req.stdin
            && let Some(io) = p.io()
        {
            io.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> Rpc<Empty> {
        let task = self.0.task(&req.id)?;
        let resources: oci_spec::runtime::LinuxResources =
            spec_json(&req.resources, "update resources")?;
        task.update(resources).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> Rpc<WaitResponse> {
        let p = self.0.task(&req.id)?.process(&req.exec_id)?;
        let Exit { status, at } = p.wait().await;
        Ok(WaitResponse {
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> Rpc<StatsResponse> {
        let stats = self.0.task(&req.id)?.stats().await?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> Rpc<ConnectResponse> {
        let task_pid = self.0.task(&req.id).map_or(0, |t| t.init.pid());
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: version(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> Rpc<Empty> {
        // containerd sends this after each task's delete; the shim stays
        // while it serves other tasks of its group.
        if self.0.is_idle() {
            self.0.exiting.store(true, Ordering::Release);
            self.0.exit.notify_waiters();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_under_way_keeps_the_shim_and_its_id() {
        let dir = std::env::temp_dir().join(format!("sprout-shim-idle-{}", std::process::id()));
        // Any existing file will do as the init helper: nothing is started.
        let runtime = Runtime::builder()
            .root(dir.join("runtime"))
            .init_binary("/bin/true")
            .build()
            .unwrap();
        let shim = Shim::new(runtime, "default", Events::new(None, "default"), &dir);
        assert!(shim.is_idle());
        let creating = shim.begin_create("c1").unwrap();
        assert!(
            !shim.is_idle(),
            "a Shutdown now would exit under the Create"
        );
        assert!(matches!(
            shim.begin_create("c1"),
            Err(ShimError::AlreadyExists(_))
        ));
        shim.begin_create("c2").unwrap();
        drop(creating);
        assert!(shim.is_idle());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
