//! The daemon's state and operations: functions, templates, instances and
//! their events. The HTTP API ([`crate::http`]) and the side channel
//! ([`crate::side`]) are thin layers over the methods here.
//!
//! # State directory
//!
//! ```text
//! ROOT/sproutd.lock        flock held while this sproutd runs (holds its pid)
//! ROOT/functions.json      the function registry
//! ROOT/instances/ID.json   sproutd's record of each instance (its function)
//! ROOT/runtime/            sprout-runtime state root of the instances
//! ROOT/runtime/.netplug/   netplug's VPCs and pools (see [`crate::network`])
//! ROOT/engine/             the engine's own files
//! ```
//!
//! # Restart
//!
//! A record is written before an instance is forked and removed after it
//! is deleted. A new sproutd on the same root adopts every container of
//! the runtime root: it opens a pidfd of each live init (checked against
//! its start time), so exits are seen and the event stream goes on, and
//! the API manages them as before. Templates are not adopted: they die
//! with the sproutd that held them and are loaded again on demand. The
//! network namespaces instances hold from netplug's pools stay theirs;
//! netplug's gc gives back those whose instance is gone.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};
use sprout_runtime::{Container, ExecOptions, Runtime, Status};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock, mpsc, watch};

use crate::engine::{
    Engine, EngineContext, EngineError, ExitStatus, ForkRequest, InstanceExit, Stage, TemplateInfo,
};
use crate::error::ApiError;
use crate::events::{EventBus, EventKind};
use crate::network::{Attachment, Network};
use crate::pidfd;
use crate::proto::{
    EXEC_CAPTURE_LIMIT, ExecBody, ExecResult, ExitView, Forked, Info, InstanceView, StageView,
};
use crate::registry::{FunctionSpec, Registry, RegistryError};

mod relay;
mod warm;

use relay::Relay;
use warm::WarmPool;

/// How sproutd is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory.
    pub root: PathBuf,
    /// The HTTP API socket.
    pub socket: PathBuf,
    /// The side channel socket (fd passing); `None`: no side channel.
    pub side_socket: Option<PathBuf>,
    /// `sprout-init`; default `$SPROUT_INIT`, else next to the executable.
    pub init_binary: Option<PathBuf>,
    /// The warm pool's node memory budget in bytes; default a quarter of
    /// the machine's memory.
    pub memory_budget: Option<u64>,
    /// The cgroup under which pool instances are forked, one cgroup each
    /// (`<it>/<function>/<id>`); relative paths are under sproutd's own
    /// cgroup, as a relative `cgroupsPath` is.
    pub pool_cgroup: PathBuf,
}

impl Config {
    /// The default cgroup parent of pool instances.
    pub const DEFAULT_POOL_CGROUP: &str = "sproutd-pool";
}

/// Where things live under the state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub lock: PathBuf,
    pub functions: PathBuf,
    pub instances: PathBuf,
    pub runtime: PathBuf,
    pub engine: PathBuf,
    /// The warm pool's settings per function.
    pub pool: PathBuf,
    /// Output of pool instances not claimed with stdio of their own.
    pub logs: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            lock: root.join("sproutd.lock"),
            functions: root.join("functions.json"),
            instances: root.join("instances"),
            runtime: root.join("runtime"),
            engine: root.join("engine"),
            pool: root.join("pool"),
            logs: root.join("logs"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {root} is in use by another sproutd{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { root: PathBuf, pid: Option<i32> },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the instance runtime: {0}")]
    Runtime(#[from] sprout_runtime::Error),
    #[error("starting the engine: {0}")]
    Engine(#[from] EngineError),
    #[error("opening netplug: {0}")]
    Netplug(#[from] sprout_netplug::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// sproutd's record of an instance, `ROOT/instances/ID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceRecord {
    id: String,
    function: String,
    /// The bundle the fork asked for (the function's if none).
    bundle: PathBuf,
    created: String,
    /// The pooled network namespace it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<Attachment>,
    /// A warm-pool instance not (yet) claimed: deleted by the next sproutd.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pool: bool,
    /// The annotations of the claim that took it from the pool.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    claim_annotations: HashMap<String, String>,
}

/// An instance sproutd manages.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub function: String,
    pub bundle: PathBuf,
    pub pid: i32,
    pub stages: Vec<Stage>,
    /// Found in the state root at startup rather than forked by us.
    pub adopted: bool,
    /// The VPC namespace it holds, given back when it is deleted.
    pub network: Option<Attachment>,
    /// The output relay of a pool instance.
    relay: Mutex<Option<Relay>>,
    /// The annotations of the claim that took a pool instance, shown
    /// beside the fork's own (a pool hit does not rewrite its spec).
    claim_annotations: Mutex<HashMap<String, String>>,
    /// `Some` once it exited.
    exit: watch::Sender<Option<ExitStatus>>,
    /// Held for the whole of a delete; `true` once one succeeded. A
    /// second delete waits for the first and then finds it gone, so the
    /// namespace is given back and `Deleted` published once.
    deletion: tokio::sync::Mutex<bool>,
}

impl Instance {
    /// Its exit, now or later.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.subscribe()
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }
}

enum Slot {
    /// The id is taken by a fork in progress.
    Forking {
        function: String,
    },
    Live(Arc<Instance>),
}

type TemplateSlot = Arc<RwLock<Option<TemplateInfo>>>;

/// How long a dying instance gets before a delete gives up on it.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an exit seen by pidfd waits for the engine's report of its
/// status when sproutd cannot read it itself.
const STATUS_GRACE: Duration = Duration::from_secs(2);

pub struct Daemon {
    cfg: Config,
    paths: Paths,
    runtime: Runtime,
    engine: Arc<dyn Engine>,
    registry: Mutex<Registry>,
    templates: Mutex<HashMap<String, TemplateSlot>>,
    instances: Mutex<HashMap<String, Slot>>,
    /// Exit statuses reported by the engine, until the pidfd watcher of
    /// that instance takes them.
    reported: Mutex<HashMap<String, ExitStatus>>,
    /// Serializes changes of the instance records: an update (read,
    /// change, write) never writes back a record a delete removed.
    records: Mutex<()>,
    exit_rx: Mutex<Option<mpsc::UnboundedReceiver<InstanceExit>>>,
    events: EventBus,
    network: Network,
    /// netplug's refill task, from [`Daemon::start`] to shutdown.
    refill: Mutex<Option<tokio::task::JoinHandle<()>>>,
    warm: WarmPool,
    metrics: crate::metrics::Metrics,
    ops: Ops,
    /// Held for its flock.
    _lock: fs::File,
}

/// Operations that change state (forks, deletes, templates) in flight, so
/// a shutdown lets them finish instead of leaving half an instance.
#[derive(Default)]
struct Ops {
    count: AtomicUsize,
    closed: AtomicBool,
    idle: Notify,
}

struct OpGuard<'a>(&'a Ops);

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data
    // (every critical section is a map insert or remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("internal task failed: {e}")))?
}

/// Takes the state directory's lock; fails if another sproutd holds it.
fn take_lock(paths: &Paths) -> Result<fs::File, DaemonError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&paths.lock)
        .map_err(io_err(format!("lock file {}", paths.lock.display())))?;
    // SAFETY: flock on a valid fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(DaemonError::Locked {
                root: paths.root.clone(),
                pid: s.trim().parse().ok(),
            });
        }
        return Err(io_err("locking the state directory")(e));
    }
    f.set_len(0)
        .and_then(|_| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io_err("writing the lock file"))?;
    Ok(f)
}

fn mkdir(p: &Path) -> Result<(), DaemonError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(io_err(format!("creating {}", p.display())))
}

/// The engine's view of a configuration.
pub fn engine_context(cfg: &Config) -> Result<EngineContext, DaemonError> {
    let paths = Paths::new(&cfg.root);
    Ok(EngineContext {
        runtime_root: paths.runtime,
        engine_dir: paths.engine,
        init_binary: resolve_init_binary(cfg)?,
    })
}

fn resolve_init_binary(cfg: &Config) -> Result<PathBuf, DaemonError> {
    if let Some(p) = &cfg.init_binary {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("SPROUT_INIT") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(io_err("locating the running executable"))?;
    Ok(exe.with_file_name("sprout-init"))
}

impl Daemon {
    /// Takes the state directory (refusing one another sproutd holds),
    /// loads the registry and starts the engine `make_engine` builds.
    pub fn open(
        cfg: Config,
        make_engine: impl FnOnce(&EngineContext) -> Result<Arc<dyn Engine>, EngineError>,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let paths = Paths::new(&cfg.root);
        mkdir(&paths.root)?;
        let lock_file = take_lock(&paths)?;
        for d in [
            &paths.instances,
            &paths.runtime,
            &paths.engine,
            &paths.pool,
            &paths.logs,
        ] {
            mkdir(d)?;
        }
        let registry = Registry::open(&paths.functions)?;
        let network = Network::open(&paths.runtime)?;
        let ctx = engine_context(&cfg)?;
        let runtime = Runtime::builder()
            .root(&paths.runtime)
            .init_binary(&ctx.init_binary)
            .build()?;
        let engine = make_engine(&ctx)?;
        let (tx, rx) = mpsc::unbounded_channel();
        engine.set_exit_sink(tx);
        let warm = WarmPool::new(
            paths.pool.clone(),
            cfg.pool_cgroup.clone(),
            cfg.memory_budget,
        );
        for f in registry.list() {
            warm.register(f);
        }
        Ok(Arc::new(Daemon {
            cfg,
            paths,
            runtime,
            engine,
            registry: Mutex::new(registry),
            templates: Mutex::new(HashMap::new()),
            instances: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            records: Mutex::new(()),
            exit_rx: Mutex::new(Some(rx)),
            events: EventBus::default(),
            network,
            refill: Mutex::new(None),
            warm,
            metrics: crate::metrics::Metrics::new(),
            ops: Ops::default(),
            _lock: lock_file,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    pub fn info(&self) -> Info {
        Info {
            name: "sproutd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            engine: self.engine.name().into(),
            root: self.paths.root.clone(),
            socket: self.cfg.socket.clone(),
            side_socket: self.cfg.side_socket.clone(),
            netplug_root: self.network.root().to_path_buf(),
            pid: std::process::id() as i32,
        }
    }

    /// Adopts the instances of the state root, starts taking the engine's
    /// exit reports, reconciles netplug's leases and starts filling its
    /// pools. Called once by [`crate::server::serve`], before the sockets
    /// open.
    pub async fn start(self: &Arc<Self>) -> Result<(), DaemonError> {
        if let Some(mut rx) = lock(&self.exit_rx).take() {
            let d = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(exit) = rx.recv().await {
                    let Some(d) = d.upgrade() else { break };
                    tracing::debug!(container = %exit.id, pid = exit.pid, status = ?exit.status, "engine reported an exit");
                    if exit.status.is_known() {
                        lock(&d.reported).insert(exit.id, exit.status);
                    }
                }
            });
        }
        self.adopt()?;
        self.start_reconciler();
        let refill = self.network.start().await;
        if let Some(old) = lock(&self.refill).replace(refill) {
            old.abort();
        }
        Ok(())
    }

    /// Stops filling netplug's pools (sproutd stops).
    pub fn stop_refill(&self) {
        if let Some(t) = lock(&self.refill).take() {
            t.abort();
        }
    }

    /// Starts a state-changing operation; refused once shutting down.
    fn op(&self) -> Result<OpGuard<'_>, ApiError> {
        self.ops.count.fetch_add(1, Ordering::AcqRel);
        let guard = OpGuard(&self.ops);
        if self.ops.closed.load(Ordering::Acquire) {
            return Err(ApiError::new(503, "sproutd is shutting down"));
        }
        Ok(guard)
    }

    /// Runs the tail of the current operation on a blocking thread after
    /// its answer, still counted as in flight: a drain waits for it too.
    fn finish_blocking(self: &Arc<Self>, work: impl FnOnce(&Daemon) + Send + 'static) {
        self.ops.count.fetch_add(1, Ordering::AcqRel);
        let daemon = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _op = OpGuard(&daemon.ops);
            work(&daemon);
        });
    }

    /// Refuses new state-changing operations and waits (up to `timeout`)
    /// for those in flight.
    pub async fn drain(&self, timeout: Duration) {
        self.ops.closed.store(true, Ordering::Release);
        let wait = async {
            loop {
                let idle = self.ops.idle.notified();
                if self.ops.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(
                in_flight = self.ops.count.load(Ordering::Acquire),
                "shutting down with operations still in flight"
            );
        }
    }

    /// Tells the engine sproutd stops (after [`Daemon::drain`]).
    pub async fn shutdown_engine(&self) {
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }

    // ---- functions -------------------------------------------------

    pub async fn add_function(&self, f: FunctionSpec) -> Result<FunctionSpec, ApiError> {
        let _op = self.op()?;
        let f = blocking(move || {
            f.validate().map_err(ApiError::bad_request)?;
            Ok(f)
        })
        .await?;
        if let Some(vpc) = &f.vpc {
            self.network.check_vpc(vpc).map_err(|e| {
                ApiError::new(e.status, format!("function {:?}: {}", f.name, e.message))
            })?;
        }
        let mut reg = lock(&self.registry);
        if reg.contains(&f.name) {
            return Err(ApiError::conflict(format!(
                "function {:?} already exists",
                f.name
            )));
        }
        reg.insert(f.clone())?;
        self.warm.register(&f);
        tracing::info!(function = %f.name, image = %f.image.display(), bundle = %f.bundle.display(), "function added");
        Ok(f)
    }

    pub fn function(&self, name: &str) -> Result<FunctionSpec, ApiError> {
        lock(&self.registry)
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::unknown_function(name))
    }

    pub fn functions(&self) -> Vec<FunctionSpec> {
        lock(&self.registry).list().cloned().collect()
    }

    /// The loaded template of a function, if any (alive, and not being
    /// loaded or dropped right now).
    pub fn template(&self, name: &str) -> Option<TemplateInfo> {
        let slot = lock(&self.templates).get(name).cloned()?;
        let info = slot.try_read().ok().and_then(|g| g.clone())?;
        self.engine.has_template(name).then_some(info)
    }

    /// Instance ids of a function.
    pub fn instances_of(&self, function: &str) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.instances)
            .iter()
            .filter(|(_, s)| match s {
                Slot::Forking { function: f } => f == function,
                Slot::Live(i) => i.function == function,
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Removes a function that has no instances but its idle pool ones
    /// (those are destroyed), dropping its template.
    pub async fn remove_function(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let _op = self.op()?;
        self.function(name)?;
        let in_use = |ids: Vec<String>| {
            if ids.is_empty() {
                return Ok(());
            }
            Err(ApiError::conflict(format!(
                "function {name:?} has {} instance(s) ({}): delete them first",
                ids.len(),
                ids.join(", ")
            )))
        };
        // Refused before the pool is drained: a refusal changes nothing.
        let mut ids = self.instances_of(name);
        ids.retain(|id| !self.warm.is_idle_pool_member(id));
        in_use(ids)?;
        self.drain_pool(name, false).await?;
        let slot = self.template_slot(name);
        let mut tmpl = slot.write().await;
        in_use(self.instances_of(name))?;
        if tmpl.is_some() {
            self.engine_drop_template(name).await?;
            *tmpl = None;
        }
        lock(&self.registry).remove(name)?;
        lock(&self.templates).remove(name);
        let parents = self.warm.unregister(name);
        warm::remove_parents(parents).await;
        self.metrics.forget(name);
        tracing::info!(function = %name, "function removed");
        Ok(())
    }

    // ---- templates -------------------------------------------------

    fn template_slot(&self, name: &str) -> TemplateSlot {
        lock(&self.templates)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Loads the function's template (a no-op if it is loaded).
    pub async fn load_template(&self, name: &str) -> Result<TemplateInfo, ApiError> {
        let _op = self.op()?;
        let f = self.function(name)?;
        let slot = self.template_slot(name);
        let mut g = slot.write().await;
        if let Some(t) = &*g
            && self.engine.has_template(name)
        {
            return Ok(t.clone());
        }
        // Not loaded, or it died (killed from outside): the engine forgets
        // a dead one and restores a new one.
        let engine = self.engine.clone();
        let started = Instant::now();
        let info = blocking(move || Ok(engine.load_template(&f)?)).await?;
        tracing::info!(function = %name, pid = info.pid, us = started.elapsed().as_micros() as u64, "template loaded");
        *g = Some(info.clone());
        Ok(info)
    }

    pub async fn drop_template(&self, name: &str) -> Result<(), ApiError> {
        let _op = self.op()?;
        self.function(name)?;
        let slot = self.template_slot(name);
        let mut g = slot.write().await;
        if g.is_none() {
            return Err(ApiError::not_found(format!(
                "function {name:?} has no loaded template"
            )));
        }
        self.engine_drop_template(name).await?;
        *g = None;
        tracing::info!(function = %name, "template dropped");
        Ok(())
    }

    /// Drops the function's template in the engine; one the engine has
    /// already forgotten (it died) is dropped too.
    async fn engine_drop_template(&self, name: &str) -> Result<(), ApiError> {
        let engine = self.engine.clone();
        let n = name.to_string();
        blocking(move || match engine.drop_template(&n) {
            Ok(()) | Err(EngineError::NoTemplate(_)) => Ok(()),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// A read guard on a loaded template: held across a fork so the
    /// template is not dropped under it.
    async fn loaded_template(
        &self,
        f: &FunctionSpec,
    ) -> Result<OwnedRwLockReadGuard<Option<TemplateInfo>>, ApiError> {
        let slot = self.template_slot(&f.name);
        // Loaded, or loaded now; a template that dies as soon as it is
        // loaded is not loaded again forever.
        for _ in 0..3 {
            let g = slot.clone().read_owned().await;
            if g.is_some() && self.engine.has_template(&f.name) {
                return Ok(g);
            }
            drop(g);
            self.load_template(&f.name).await?;
        }
        Err(ApiError::conflict(format!(
            "the template of function {:?} keeps dying as it is loaded",
            f.name
        )))
    }

    // ---- instances -------------------------------------------------

    /// Forks an instance of `function` (loading its template first if
    /// needed). The instance is running when this returns. It joins a
    /// namespace from the pool of `vpc` if given, else of the function's
    /// VPC, unless `req` brings a network namespace of its own.
    pub async fn fork(
        self: &Arc<Self>,
        function: &str,
        mut req: ForkRequest,
        vpc: Option<String>,
    ) -> Result<Arc<Instance>, ApiError> {
        let _op = self.op()?;
        let id = req.id.clone();
        sprout_runtime::spec::validate_id(&id)
            .map_err(|r| ApiError::bad_request(format!("invalid instance id {id:?}: {r}")))?;
        let f = self.function(function)?;
        if let Some(b) = &req.bundle
            && !b.is_absolute()
        {
            return Err(ApiError::bad_request(format!(
                "bundle {} must be an absolute path",
                b.display()
            )));
        }
        // A VPC the request names that does not exist is the request's
        // fault (400); the function's own, a state conflict (409).
        let vpc = match (vpc, req.netns.is_some()) {
            (Some(v), true) => {
                return Err(ApiError::bad_request(format!(
                    "instance {id:?}: give a VPC ({v:?}) or a network namespace, not both"
                )));
            }
            (Some(v), false) => Some((v, 400)),
            (None, true) => None,
            (None, false) => f.vpc.clone().map(|v| (v, 409)),
        };
        // Only sproutd records leases.
        req.annotations.remove(sprout_netplug::LEASE_ANNOTATION);
        let reservation = self.reserve(&id, function)?;
        let lease = match &vpc {
            Some((v, unknown)) => {
                let bundle = req.bundle.clone().unwrap_or_else(|| f.bundle.clone());
                let may_reconfigure = blocking(move || {
                    let b = sprout_runtime::spec::load_bundle(&bundle).map_err(|e| {
                        ApiError::bad_request(format!("bundle {}: {e}", bundle.display()))
                    })?;
                    let process = b.spec.process().clone().unwrap_or_default();
                    Ok(sprout_runtime::spec::may_reconfigure_network(
                        &b.spec, &process,
                    ))
                })
                .await?;
                Some(self.network.take(v, &id, *unknown, may_reconfigure).await?)
            }
            None => None,
        };
        let network = lease.as_ref().map(Attachment::of);
        if let (Some(l), Some(a)) = (&lease, &network) {
            match l.fd.try_clone() {
                Ok(fd) => req.netns = Some(fd),
                Err(e) => {
                    let err = ApiError::internal(format!("duplicating the netns fd: {e}"));
                    self.network.give_back_unused(lease.expect("taken")).await;
                    return Err(err);
                }
            }
            req.annotations.extend(a.annotations());
        }
        let forked = self.fork_reserved(f, req, reservation, network).await;
        if forked.is_err()
            && let Some(l) = lease
        {
            // No instance ran in it: straight back to the pool.
            self.network.give_back_unused(l).await;
        }
        forked
    }

    /// The part of [`Daemon::fork`] after the id is reserved and the
    /// network namespace taken.
    async fn fork_reserved(
        self: &Arc<Self>,
        f: FunctionSpec,
        req: ForkRequest,
        mut reservation: Reservation<'_>,
        network: Option<Attachment>,
    ) -> Result<Arc<Instance>, ApiError> {
        let id = req.id.clone();
        let function = f.name.clone();
        let record = InstanceRecord {
            id: id.clone(),
            function: function.clone(),
            bundle: req.bundle.clone().unwrap_or_else(|| f.bundle.clone()),
            created: sprout_runtime::state::rfc3339(SystemTime::now()),
            network,
            pool: self.warm.is_pool_member(&id),
            claim_annotations: HashMap::new(),
        };
        self.write_record(&record)
            .map_err(|e| ApiError::internal(format!("instance record of {id:?}: {e}")))?;
        reservation.record = true;

        let template = self.loaded_template(&f).await?;
        let engine = self.engine.clone();
        let started = Instant::now();
        let mut info = blocking(move || Ok(engine.fork(&f, req)?)).await?;
        drop(template);
        let pidfd = match info.pidfd.take() {
            Some(fd) => Some(fd),
            None => self.open_init_pidfd(&id, info.pid),
        };
        let inst = Arc::new(Instance {
            id: id.clone(),
            function: function.clone(),
            bundle: record.bundle,
            pid: info.pid,
            stages: info.stages,
            adopted: false,
            network: record.network,
            relay: Mutex::new(None),
            claim_annotations: Mutex::default(),
            exit: watch::Sender::new(None),
            deletion: tokio::sync::Mutex::new(false),
        });
        lock(&self.instances).insert(id.clone(), Slot::Live(inst.clone()));
        reservation.disarm();
        let (vpc, address) = match &inst.network {
            Some(a) => (a.vpc.as_str(), Some(a.address)),
            None => ("", None),
        };
        tracing::info!(container = %id, function = %function, pid = info.pid, vpc, address = ?address, us = started.elapsed().as_micros() as u64, "instance forked");
        self.events
            .publish(EventKind::Created, &id, &function, Some(info.pid), None);
        self.events
            .publish(EventKind::Started, &id, &function, Some(info.pid), None);
        match pidfd {
            Some(fd) => self.watch(inst.clone(), fd),
            None => {
                // Gone before we could look: its status may still come
                // from the engine.
                let d = self.clone();
                let i = inst.clone();
                tokio::spawn(async move {
                    let status = d.reported_status(&i.id, None).await;
                    d.finish(&i, status);
                });
            }
        }
        Ok(inst)
    }

    /// A pidfd of an instance's init `pid`, if that pid is still it: our
    /// own child (its pid stays until we reap it), or a process whose
    /// start time is the one the runtime recorded.
    fn open_init_pidfd(&self, id: &str, pid: i32) -> Option<OwnedFd> {
        let fd = pidfd::pidfd_open(pid).ok()?;
        // Checked after opening: the pidfd pins what the check sees.
        let ours = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                rest.split(' ').nth(1)?.parse::<u32>().ok()
            })
            == Some(std::process::id());
        if ours {
            return Some(fd);
        }
        let init = self.runtime.container(id).ok()?.saved().init?;
        (init.pid == pid && init.is_alive()).then_some(fd)
    }

    fn reserve<'a>(&'a self, id: &str, function: &str) -> Result<Reservation<'a>, ApiError> {
        let mut m = lock(&self.instances);
        if m.contains_key(id) || self.runtime.store().root().join(id).exists() {
            return Err(ApiError::conflict(format!(
                "instance {id:?} already exists"
            )));
        }
        m.insert(
            id.to_string(),
            Slot::Forking {
                function: function.to_string(),
            },
        );
        Ok(Reservation {
            daemon: self,
            id: id.to_string(),
            record: false,
            armed: true,
        })
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.paths.instances.join(format!("{id}.json"))
    }

    fn write_record(&self, r: &InstanceRecord) -> io::Result<()> {
        let data = serde_json::to_vec(r).map_err(io::Error::other)?;
        // Records describe live instances only: no flush to disk (a
        // machine crash takes the instances too), which keeps two fsyncs
        // off every fork and claim.
        crate::registry::write_atomic_volatile(&self.record_path(&r.id), &data)
    }

    /// Marks an instance's record as a pool instance or not (claimed).
    /// Records that the instance `id` went back into the pool.
    fn record_returned(&self, id: &str) {
        self.update_record(id, |r| {
            r.pool = true;
            r.claim_annotations.clear();
            true
        });
    }

    /// Records that a claim took the pool instance `id`: no longer a pool
    /// instance, and the claim's annotations.
    fn record_claimed(&self, id: &str, annotations: HashMap<String, String>) {
        self.update_record(id, |r| {
            r.pool = false;
            r.claim_annotations = annotations;
            true
        });
    }

    /// Rewrites the instance's record if `change` says it changed it.
    fn update_record(&self, id: &str, change: impl FnOnce(&mut InstanceRecord) -> bool) {
        let _one = lock(&self.records);
        let path = self.record_path(id);
        let r = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::from_slice::<InstanceRecord>(&d).map_err(|e| e.to_string()));
        match r {
            Ok(mut r) => {
                if change(&mut r)
                    && let Err(e) = self.write_record(&r)
                {
                    tracing::warn!(container = %id, "updating the instance record: {e}");
                }
            }
            Err(e) => tracing::warn!(container = %id, "reading the instance record: {e}"),
        }
    }

    fn remove_record(&self, id: &str) {
        let _one = lock(&self.records);
        if let Err(e) = fs::remove_file(self.record_path(id))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(container = %id, "removing the instance record: {e}");
        }
    }

    /// Watches an instance's init until it exits, then records and
    /// publishes its status; also publishes its OOM kills meanwhile.
    fn watch(self: &Arc<Self>, inst: Arc<Instance>, pidfd: OwnedFd) {
        let d = self.clone();
        tokio::spawn(async move {
            let oom = d.watch_oom(&inst);
            pidfd::exited(&pidfd).await;
            let status = match pidfd::try_reap_child(&pidfd) {
                Ok(Some(s)) => s,
                _ => d.reported_status(&inst.id, Some(&pidfd)).await,
            };
            if let Some(h) = oom {
                h.abort();
            }
            d.finish(&inst, status);
        });
    }

    /// The status of an exited instance that is not our child: from the
    /// engine's report, or the kernel's pidfd info once someone reaped it.
    async fn reported_status(&self, id: &str, pidfd: Option<&OwnedFd>) -> ExitStatus {
        let deadline = Instant::now() + STATUS_GRACE;
        loop {
            if let Some(s) = lock(&self.reported).remove(id) {
                return s;
            }
            if let Some(fd) = pidfd {
                if let Ok(Some(s)) = pidfd::try_reap_child(fd) {
                    return s;
                }
                if let Some(s) = pidfd::exit_info(fd) {
                    return s;
                }
            }
            if Instant::now() >= deadline {
                return ExitStatus::Unknown;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn finish(self: &Arc<Self>, inst: &Instance, status: ExitStatus) {
        lock(&self.reported).remove(&inst.id);
        inst.exit.send_replace(Some(status));
        self.pool_instance_exited(&inst.id);
        self.events.publish(
            EventKind::Exited,
            &inst.id,
            &inst.function,
            Some(inst.pid),
            Some(status.into()),
        );
    }

    fn watch_oom(self: &Arc<Self>, inst: &Arc<Instance>) -> Option<tokio::task::JoinHandle<()>> {
        let c = self.runtime.container(&inst.id).ok()?;
        let watcher = match c.cgroup().oom_watcher() {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(container = %inst.id, "no OOM events: {e}");
                return None;
            }
        };
        struct W(sprout_runtime::cgroups::OomWatcher);
        impl AsRawFd for W {
            fn as_raw_fd(&self) -> RawFd {
                self.0.as_fd().as_raw_fd()
            }
        }
        // SAFETY: the watcher is owned by the AsyncFd and its fd (eventfd
        // or inotify) is fixed at creation and closed only when dropped.
        let mut afd =
            unsafe { AsyncFd::register_with_interest(W(watcher), Interest::READABLE) }.ok()?;
        let d = self.clone();
        let (id, function) = (inst.id.clone(), inst.function.clone());
        Some(tokio::spawn(async move {
            use sprout_runtime::cgroups::OomEvent;
            loop {
                let Ok(mut guard) = afd.readable_mut().await else {
                    return;
                };
                // Readable: the wait returns at once (its 1 ms timeout
                // only covers a spurious wakeup).
                let r = guard.get_inner_mut().0.wait(Some(Duration::from_millis(1)));
                guard.clear_ready();
                match r {
                    Ok(Some(OomEvent::Oom { .. })) => {
                        d.events.publish(EventKind::Oom, &id, &function, None, None)
                    }
                    Ok(None) => {}
                    Ok(Some(OomEvent::CgroupRemoved)) | Err(_) => return,
                }
            }
        }))
    }

    /// A live (not being forked) instance.
    pub fn instance(&self, id: &str) -> Result<Arc<Instance>, ApiError> {
        match lock(&self.instances).get(id) {
            Some(Slot::Live(i)) => Ok(i.clone()),
            Some(Slot::Forking { .. }) => Err(ApiError::conflict(format!(
                "instance {id:?} is being forked"
            ))),
            None => Err(ApiError::unknown_instance(id)),
        }
    }

    fn container(&self, id: &str) -> Result<(Arc<Instance>, Container), ApiError> {
        let inst = self.instance(id)?;
        let c = self.runtime.container(id).map_err(|e| match e {
            sprout_runtime::Error::State(sprout_runtime::state::StateError::NotFound(_)) => {
                ApiError::not_found(format!(
                    "instance {id:?} is no longer in the runtime state root (deleted outside sproutd?)"
                ))
            }
            e => e.into(),
        })?;
        Ok((inst, c))
    }

    pub async fn view(&self, id: &str) -> Result<InstanceView, ApiError> {
        let inst = self.instance(id)?;
        let rt = self.runtime.clone();
        blocking(move || Ok(view_of(&rt, &inst))).await
    }

    pub async fn list(&self, function: Option<&str>) -> Result<Vec<InstanceView>, ApiError> {
        let mut insts: Vec<Arc<Instance>> = lock(&self.instances)
            .values()
            .filter_map(|s| match s {
                Slot::Live(i) if function.is_none_or(|f| f == i.function) => Some(i.clone()),
                _ => None,
            })
            .collect();
        insts.sort_by(|a, b| a.id.cmp(&b.id));
        let rt = self.runtime.clone();
        blocking(move || Ok(insts.iter().map(|i| view_of(&rt, i)).collect())).await
    }

    pub async fn pause(&self, id: &str) -> Result<(), ApiError> {
        let (inst, c) = self.container(id)?;
        blocking(move || Ok(c.pause()?)).await?;
        self.events
            .publish(EventKind::Paused, id, &inst.function, Some(inst.pid), None);
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<(), ApiError> {
        let (inst, c) = self.container(id)?;
        blocking(move || Ok(c.resume()?)).await?;
        self.events
            .publish(EventKind::Resumed, id, &inst.function, Some(inst.pid), None);
        Ok(())
    }

    pub async fn kill(self: &Arc<Self>, id: &str, signal: i32, all: bool) -> Result<(), ApiError> {
        let (_, c) = self.container(id)?;
        if matches!(signal, libc::SIGKILL | libc::SIGTERM | libc::SIGINT) {
            self.record_before_end(id).await;
        }
        tracing::info!(container = %id, signal, all, "kill");
        blocking(move || Ok(c.kill(signal, all)?)).await
    }

    pub async fn stats(&self, id: &str) -> Result<serde_json::Value, ApiError> {
        let (_, c) = self.container(id)?;
        blocking(move || {
            let s = c.stats()?;
            serde_json::to_value(s).map_err(|e| ApiError::internal(e.to_string()))
        })
        .await
    }

    /// Deletes an instance; a live one only with `force` (it is killed).
    pub async fn delete(self: &Arc<Self>, id: &str, force: bool) -> Result<(), ApiError> {
        let _op = self.op()?;
        let inst = self.instance(id)?;
        let mut deleted = inst.deletion.lock().await;
        if *deleted {
            return Err(ApiError::unknown_instance(id));
        }
        if force {
            self.record_before_end(id).await;
        }
        let c = match self.runtime.container(id) {
            Ok(c) => Some(c),
            Err(sprout_runtime::Error::State(sprout_runtime::state::StateError::NotFound(_))) => {
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(c) = c {
            let mut exit = inst.exit_watch();
            if exit.borrow().is_none() {
                let status = {
                    let c = c.clone();
                    blocking(move || Ok(c.status())).await?
                };
                if !force && matches!(status, Status::Running | Status::Paused) {
                    return Err(ApiError::conflict(format!(
                        "instance {id:?} is {}: kill it first or delete with force",
                        status.as_str()
                    )));
                }
                // Kill it and let the watcher see it die and reap it,
                // before the runtime's delete could reap it first.
                let k = c.clone();
                let _ = blocking(move || Ok(k.kill(libc::SIGKILL, true)?)).await;
                let died = tokio::time::timeout(DEATH_TIMEOUT, exit.wait_for(|s| s.is_some()));
                if !matches!(died.await, Ok(Ok(_))) {
                    return Err(ApiError::internal(format!(
                        "instance {id:?} did not die within {}s of SIGKILL",
                        DEATH_TIMEOUT.as_secs()
                    )));
                }
            }
            // A delete racing this one (the pool replacing a dead instance
            // while a client deletes it) may have removed the state first.
            blocking(move || match c.delete(true) {
                Err(sprout_runtime::Error::State(sprout_runtime::state::StateError::NotFound(
                    _,
                ))) => Ok(()),
                r => Ok(r?),
            })
            .await?;
        }
        // Nothing of the instance runs in its namespace any more.
        if let Some(a) = &inst.network {
            self.network.give_back(a, id).await;
        }
        self.remove_record(id);
        self.forget_pool_instance(id);
        let _ = fs::remove_file(self.log_path(id));
        lock(&self.instances).remove(id);
        lock(&self.reported).remove(id);
        *deleted = true;
        self.events
            .publish(EventKind::Deleted, id, &inst.function, Some(inst.pid), None);
        Ok(())
    }

    /// Runs a process in an instance; waits for it and returns its output
    /// (unless sent to files) and exit code, or with `detach` its pid.
    pub async fn exec(&self, id: &str, body: ExecBody) -> Result<ExecResult, ApiError> {
        if body.args.is_empty() {
            return Err(ApiError::bad_request("exec: args must not be empty"));
        }
        for p in [&body.stdin, &body.stdout, &body.stderr]
            .into_iter()
            .flatten()
        {
            if !p.is_absolute() {
                return Err(ApiError::bad_request(format!(
                    "exec: {} must be an absolute path",
                    p.display()
                )));
            }
        }
        let (_, c) = self.container(id)?;
        let process = exec_process(&c, &body);
        if let Some(lease) = crate::network::lease_to_mark_before_exec(&c, &process) {
            self.network.note_may_reconfigure(&lease, id).await?;
        }
        tracing::info!(container = %id, args = ?body.args, "exec");
        blocking(move || exec_blocking(&c, process, body)).await
    }

    // ---- restart ---------------------------------------------------

    fn adopt(self: &Arc<Self>) -> Result<(), DaemonError> {
        let mut records: HashMap<String, InstanceRecord> = HashMap::new();
        let entries = fs::read_dir(&self.paths.instances).map_err(io_err(format!(
            "reading {}",
            self.paths.instances.display()
        )))?;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            // The record names its own file: an id that is not its file's
            // name (`../functions`, say) is never used to remove one.
            let named = |r: &InstanceRecord| {
                sprout_runtime::spec::validate_id(&r.id).is_ok()
                    && path.file_stem() == Some(std::ffi::OsStr::new(&r.id))
            };
            match fs::read(&path).map_err(|e| e.to_string()).and_then(|d| {
                serde_json::from_slice::<InstanceRecord>(&d).map_err(|e| e.to_string())
            }) {
                Ok(r) if named(&r) => {
                    records.insert(r.id.clone(), r);
                }
                Ok(r) => tracing::warn!(
                    "ignoring instance record {}: it names the instance {:?}",
                    path.display(),
                    r.id
                ),
                Err(e) => tracing::warn!("ignoring instance record {}: {e}", path.display()),
            }
        }
        let mut adopted = 0;
        let mut stale_pool = Vec::new();
        for c in self.runtime.list()? {
            let id = c.id().to_string();
            let (function, bundle, network, claim_annotations) = match records.remove(&id) {
                Some(r) => {
                    if r.pool {
                        stale_pool.push(id.clone());
                    }
                    (r.function, r.bundle, r.network, r.claim_annotations)
                }
                None => {
                    tracing::warn!(container = %id, "adopting a container sproutd has no record of");
                    let network = c
                        .spec()
                        .annotations()
                        .as_ref()
                        .and_then(Attachment::from_annotations);
                    (
                        String::new(),
                        c.bundle().to_path_buf(),
                        network,
                        HashMap::new(),
                    )
                }
            };
            self.adopt_one(c, function, bundle, network, claim_annotations);
            adopted += 1;
        }
        // Records of instances that never came to be (a fork cut short) or
        // were deleted outside sproutd.
        for id in records.keys() {
            tracing::info!(container = %id, "dropping the record of a vanished instance");
            self.remove_record(id);
        }
        if adopted > 0 {
            tracing::info!(count = adopted, "adopted instances from the state root");
        }
        self.destroy_stale_pool_instances(stale_pool);
        Ok(())
    }

    fn adopt_one(
        self: &Arc<Self>,
        c: Container,
        function: String,
        bundle: PathBuf,
        network: Option<Attachment>,
        claim_annotations: HashMap<String, String>,
    ) {
        let init = c.saved().init;
        // Opened first, checked second: a pidfd pins the process, so a
        // reused pid cannot slip in between.
        let pidfd = init.and_then(|p| pidfd::pidfd_open(p.pid).ok().filter(|_| p.is_alive()));
        let inst = Arc::new(Instance {
            id: c.id().to_string(),
            function,
            bundle,
            pid: init.map_or(0, |p| p.pid),
            stages: Vec::new(),
            adopted: true,
            network,
            relay: Mutex::new(None),
            claim_annotations: Mutex::new(claim_annotations),
            exit: watch::Sender::new(if pidfd.is_some() {
                None
            } else {
                Some(ExitStatus::Unknown)
            }),
            deletion: tokio::sync::Mutex::new(false),
        });
        tracing::info!(container = %inst.id, function = %inst.function, pid = inst.pid, alive = pidfd.is_some(), vpc = ?inst.network.as_ref().map(|a| &a.vpc), "adopted instance");
        lock(&self.instances).insert(inst.id.clone(), Slot::Live(inst.clone()));
        if let Some(fd) = pidfd {
            self.watch(inst, fd);
        }
    }
}

/// Undoes a reservation (and its record) unless disarmed.
struct Reservation<'a> {
    daemon: &'a Daemon,
    id: String,
    record: bool,
    armed: bool,
}

impl Reservation<'_> {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.record {
            self.daemon.remove_record(&self.id);
        }
        let mut m = lock(&self.daemon.instances);
        if matches!(m.get(&self.id), Some(Slot::Forking { .. })) {
            m.remove(&self.id);
        }
    }
}

fn view_of(rt: &Runtime, inst: &Instance) -> InstanceView {
    let (status, pid, created, mut annotations) = match rt.container(&inst.id) {
        Ok(c) => {
            let s = c.oci_state();
            (s.status, s.pid, s.created, s.annotations)
        }
        Err(_) => ("stopped".into(), 0, String::new(), HashMap::new()),
    };
    annotations.extend(lock(&inst.claim_annotations).clone());
    // The runtime reads "stopped" from /proc a moment before our watcher
    // may have recorded the exit; and an exit we saw is final.
    let exit = inst.exit_status();
    let status = if exit.is_some() {
        "stopped".to_string()
    } else {
        status
    };
    InstanceView {
        id: inst.id.clone(),
        function: inst.function.clone(),
        status,
        pid: if exit.is_some() { 0 } else { pid },
        bundle: inst.bundle.clone(),
        created,
        stages: inst.stages.iter().map(StageView::from).collect(),
        exit: exit.map(ExitView::from),
        adopted: inst.adopted,
        vpc: inst.network.as_ref().map(|a| a.vpc.clone()),
        address: inst.network.as_ref().map(|a| a.address),
        lease: inst.network.as_ref().map(|a| a.lease.clone()),
        annotations,
    }
}

// ---- exec ------------------------------------------------------------

fn pipe() -> io::Result<(fs::File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How long a FIFO named as an instance's stdio may wait for its other
/// end to be opened.
pub const FIFO_PEER_WAIT: Duration = Duration::from_secs(5);

/// Opens stdin (read) or an output file (append, created 0600), never
/// blocking a thread for good on a FIFO whose other end nobody opens: a
/// FIFO waits at most [`FIFO_PEER_WAIT`] for its peer; then an output
/// fails, and stdin is whatever came (EOF after it). (An output FIFO is
/// not opened read-write: a reader that goes away must make the writes
/// fail, not block the instance once the pipe is full.)
pub fn open_stdio(path: Option<&Path>, write: bool) -> io::Result<OwnedFd> {
    let path = path.unwrap_or(Path::new("/dev/null"));
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut o = fs::OpenOptions::new();
    if write {
        o.append(true).create(true).mode(0o600);
    } else {
        o.read(true);
    }
    let f = match o
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // A FIFO without a reader: pinned, then waited for.
        Err(e) if write && e.raw_os_error() == Some(libc::ENXIO) => {
            let pin = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(path)
                .map_err(named)?;
            return open_fifo_end(pin.into(), true, FIFO_PEER_WAIT).map_err(named);
        }
        Err(e) => return Err(named(e)),
    };
    if !write && f.metadata().map_err(named)?.file_type().is_fifo() {
        // A read end opened before any writer reads EOF at once. This one
        // stays open (a writer waiting in its open has been let through
        // and may write already) until the blocking one has a writer.
        let pin = f.try_clone().map_err(named)?;
        match open_fifo_end(pin.into(), false, FIFO_PEER_WAIT) {
            Ok(fd) => return Ok(fd),
            // No writer came, or one came, wrote and went before the
            // blocking open (its bytes are in the pipe, which `f` kept):
            // `f` it is, at EOF after whatever was written.
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => return Err(named(e)),
        }
    }
    // Blocking again, as a process expects its stdio.
    nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(if write {
            nix::fcntl::OFlag::O_APPEND
        } else {
            nix::fcntl::OFlag::empty()
        }),
    )
    .map_err(|e| named(e.into()))?;
    Ok(f.into())
}

/// Opens one end of the FIFO `pin` holds (the write end if `write`) once
/// a peer has the other open, waiting at most `wait`. Both opens go
/// through `pin` (`/proc/self/fd/N`), never the path again: a FIFO removed
/// or replaced meanwhile cannot strand the thread. The blocking open runs
/// on a thread of its own, which owns `pin` until its open returns; after
/// `wait` we open the other end ourselves, which lets it return.
fn open_fifo_end(pin: OwnedFd, write: bool, wait: Duration) -> io::Result<OwnedFd> {
    let end = |write: bool, extra: libc::c_int| {
        let mut o = fs::OpenOptions::new();
        if write {
            o.append(true);
        } else {
            o.read(true);
        }
        o.custom_flags(libc::O_CLOEXEC | extra);
        o
    };
    // The other end, opened without waiting, lets the thread's open return.
    let unblocker = fs::File::from(pin.try_clone()?);
    let (tx, rx) = std::sync::mpsc::channel();
    let blocking = end(write, 0);
    std::thread::spawn(move || {
        let r = blocking
            .open(format!("/proc/self/fd/{}", pin.as_raw_fd()))
            .map(OwnedFd::from);
        drop(pin);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(wait) {
        Ok(r) => r,
        Err(_) => {
            let other = end(!write, libc::O_NONBLOCK)
                .open(format!("/proc/self/fd/{}", unblocker.as_raw_fd()));
            let _ = rx.recv_timeout(Duration::from_secs(1));
            drop(other);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nobody opened the FIFO's other end within {wait:?}"),
            ))
        }
    }
}

/// Output of an exec'd process, read on a thread of its own.
#[derive(Default)]
struct Captured {
    data: Vec<u8>,
    truncated: bool,
}

/// How long output may still come after the exec'd process exited (a
/// child it left behind may hold the pipe open forever).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Reads `r` to its end on a thread, keeping the first
/// `EXEC_CAPTURE_LIMIT` bytes; `done` gets a message at the end.
fn spawn_capture(mut r: fs::File, done: std::sync::mpsc::Sender<()>) -> Arc<Mutex<Captured>> {
    let out = Arc::new(Mutex::new(Captured::default()));
    let o = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut c = lock(&o);
                    let room = EXEC_CAPTURE_LIMIT - c.data.len();
                    if n > room {
                        c.truncated = true;
                    }
                    c.data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    out
}

/// The process an exec runs: the instance's own, with what `body` sets.
fn exec_process(c: &Container, body: &ExecBody) -> Process {
    let mut process = c.spec().process().clone().unwrap_or_default();
    process.set_args(Some(body.args.clone()));
    if let Some(env) = &body.env {
        process.set_env(Some(env.clone()));
    }
    if let Some(cwd) = &body.cwd {
        process.set_cwd(cwd.into());
    }
    if let Some(u) = body.user {
        let mut user = process.user().clone();
        user.set_uid(u.uid);
        user.set_gid(u.gid);
        user.set_additional_gids(None);
        process.set_user(user);
    }
    process.set_terminal(Some(false));
    process.set_console_size(None);
    process
}

fn exec_blocking(c: &Container, process: Process, body: ExecBody) -> Result<ExecResult, ApiError> {
    let stdio_err = |e: io::Error| ApiError::bad_request(format!("exec stdio: {e}"));
    let stdin = open_stdio(body.stdin.as_deref(), false).map_err(stdio_err)?;
    let mut readers: [Option<fs::File>; 2] = [None, None];
    let mut outs: [Option<OwnedFd>; 2] = [None, None];
    for (i, path) in [&body.stdout, &body.stderr].into_iter().enumerate() {
        if path.is_some() || body.detach {
            outs[i] = Some(open_stdio(path.as_deref(), true).map_err(stdio_err)?);
        } else {
            let (r, w) = pipe().map_err(|e| ApiError::internal(format!("exec pipe: {e}")))?;
            readers[i] = Some(r);
            outs[i] = Some(w);
        }
    }
    let [out, err] = outs;
    let proc = c.exec(
        process,
        ExecOptions {
            stdio: [Some(stdin), out, err],
            ..Default::default()
        },
    )?;
    let pid = proc.pid;
    if body.detach {
        // Reap it when it exits; nobody waits for its status.
        let id = c.id().to_string();
        std::thread::spawn(move || {
            let s = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            tracing::debug!(container = %id, pid, "detached exec ended: {s:?}");
        });
        return Ok(ExecResult {
            pid,
            ..Default::default()
        });
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let captures: Vec<Option<Arc<Mutex<Captured>>>> = readers
        .into_iter()
        .map(|r| r.map(|r| spawn_capture(r, done_tx.clone())))
        .collect();
    drop(done_tx);
    let status = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break ExitStatus::Exited(code),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                break ExitStatus::Signaled(sig as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "waiting for exec pid {pid}: {e}"
                )));
            }
        }
    };
    let deadline = Instant::now() + OUTPUT_GRACE;
    for _ in captures.iter().flatten() {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            tracing::debug!(container = %c.id(), pid, "exec output still open after the process exited; returning what came");
            break;
        }
    }
    let mut truncated = false;
    let mut text = |c: &Option<Arc<Mutex<Captured>>>| {
        c.as_ref().map(|c| {
            let c = lock(c);
            truncated |= c.truncated;
            String::from_utf8_lossy(&c.data).into_owned()
        })
    };
    let (stdout, stderr) = (text(&captures[0]), text(&captures[1]));
    Ok(ExecResult {
        pid,
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        truncated,
    })
}

/// Builds the answer to a fork.
pub fn forked(inst: &Instance) -> Forked {
    Forked {
        id: inst.id.clone(),
        function: inst.function.clone(),
        pid: inst.pid,
        stages: inst.stages.iter().map(StageView::from).collect(),
        vpc: inst.network.as_ref().map(|a| a.vpc.clone()),
        address: inst.network.as_ref().map(|a| a.address),
    }
}

#[cfg(test)]
mod stdio_tests {
    use std::io::{Read, Write};

    use super::*;

    fn fifo(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let p = dir.path().join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    fn pin(p: &Path) -> OwnedFd {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(p)
            .unwrap()
            .into()
    }

    fn status_flags(fd: &OwnedFd) -> nix::fcntl::OFlag {
        nix::fcntl::OFlag::from_bits_truncate(
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap(),
        )
    }

    #[test]
    fn an_output_fifo_waits_for_its_reader_but_not_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(&dir, "out");
        let err = open_fifo_end(pin(&p), true, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let reader_path = p.clone();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut s = String::new();
            fs::File::open(&reader_path)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        });
        let fd = open_stdio(Some(&p), true).unwrap();
        assert!(!status_flags(&fd).contains(nix::fcntl::OFlag::O_NONBLOCK));
        fs::File::from(fd).write_all(b"hello").unwrap();
        assert_eq!(reader.join().unwrap(), "hello");
    }

    #[test]
    fn a_stdin_fifo_waits_for_its_writer_but_not_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(&dir, "in");
        let err = open_fifo_end(pin(&p), false, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let writer_path = p.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut w = fs::OpenOptions::new()
                .write(true)
                .open(&writer_path)
                .unwrap();
            w.write_all(b"x\n").unwrap();
        });
        let fd = open_stdio(Some(&p), false).unwrap();
        assert!(!status_flags(&fd).contains(nix::fcntl::OFlag::O_NONBLOCK));
        let mut s = String::new();
        fs::File::from(fd).read_to_string(&mut s).unwrap();
        writer.join().unwrap();
        assert_eq!(s, "x\n");
    }
}
