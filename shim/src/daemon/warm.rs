//! The warm pool: instances forked ahead of demand, frozen, and handed
//! out on a claim (a whole instance as the caller's container) or by
//! request slot (a lease on an instance that serves up to its function's
//! concurrency at once).
//!
//! The decisions come from `sprout-pool` (no I/O there): per function a
//! [`Policy`] that learns idle times and concurrency and says how many
//! instances to hold, one [`SlotTable`] for the leases, one
//! [`MemoryBudget`] for the node. This module carries them out: forks,
//! freezes, thaws and deletes, on the request's task for a demand and on
//! the reconciler task for everything speculative (pre-warm, unload,
//! freezing idle instances).
//!
//! Pool instances are ordinary instances of the daemon (records, events,
//! exit watchers) plus a membership here. Each is forked into its own
//! cgroup under `<pool cgroup>/<function>/` from birth, with its output
//! going through a [`Relay`] so a claim can redirect it without touching
//! the process. A claim applies the caller's limits to that cgroup
//! (memory charges do not follow a process that moves, so it stays),
//! thaws it, redirects its output and hands it out.
//!
//! # Persistence
//!
//! `ROOT/pool/<function>.json` keeps a function's pool settings, the idle
//! times the policy learned from (seeded back after a restart), and the
//! measured fork cost and memory per instance. Pool instances themselves
//! are not kept across a restart: their output relay died with the old
//! sproutd, so the next one deletes them and the policy forks new ones.
//! Claimed instances are adopted like any instance.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use sprout_pool::{
    Acquire, Admission, Clock, LeaseId, MemoryBudget, MonotonicClock, Policy, PolicyConfig,
    PoolError, Purpose, SlotTable, Tier, Timestamp,
};
use tokio::sync::mpsc;

use sprout_runtime::cgroups::{Cgroup, CgroupsPath};

use super::relay::Relay;
use super::{Daemon, Instance, blocking, lock};
use crate::engine::{ForkRequest, Stage};
use crate::error::ApiError;
use crate::proto::{
    BudgetView, ClaimBody, Claimed, DrainResult, FunctionPoolView, LeaseView, PlanView, PolicyBody,
    PolicyStrategy, PolicyView, PoolInstanceView, PoolView, PrewarmResult, Released, StageView,
    StartCounts, StartPath,
};
use crate::registry::FunctionSpec;
use sprout_snapshot::profile::WriteSet;

/// An idle, thawed pool instance is frozen after this long without a
/// request (a busy function does not pay a freeze per request).
const FREEZE_AFTER: Duration = Duration::from_millis(500);
/// Memory booked per instance until one was measured.
const DEFAULT_INSTANCE_BYTES: u64 = 16 << 20;
/// Fork cost assumed until one was measured (Greedy-Dual's `cost`).
const DEFAULT_FORK_COST: Duration = Duration::from_millis(10);
/// How long a drain waits for pool forks in flight.
const DRAIN_FORKS_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle times kept per function (persisted, seeded into the policy).
const IDLE_HISTORY: usize = 1024;
/// How long after a claim the pool is refilled (see `wake_after_claim`).
const REFILL_DELAY: Duration = Duration::from_millis(10);
/// The fewest pages a write set recorded at an instance's end must hold
/// to be kept (the Python function's first request writes ~400).
const MIN_KILLED_WRITE_SET: u64 = 16;
/// Default node memory budget of the pool when none is configured: a
/// quarter of the machine's memory.
fn default_budget() -> u64 {
    let total = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(4 << 20);
    total * 1024 / 4
}

/// What sproutd holds of the pool. One lock: every critical section is
/// bookkeeping, never a syscall on an instance.
pub(crate) struct WarmPool {
    state: Mutex<PoolState>,
    clock: MonotonicClock,
    wake: mpsc::UnboundedSender<String>,
    wake_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    next_id: AtomicU64,
    dir: PathBuf,
    cgroup_parent: PathBuf,
    parents: Mutex<CgroupParents>,
    /// One save at a time: saves share a temporary file per function.
    save_lock: Mutex<()>,
    /// sproutd is stopping: nothing new is forked.
    stopping: AtomicBool,
}

/// The cgroups pool instances are forked under, made by sproutd itself:
/// an instance's cgroup then creates only its own directory, so deleting
/// one never touches the parents its siblings live in.
#[derive(Default)]
struct CgroupParents {
    top: Option<Cgroup>,
    functions: HashMap<String, Cgroup>,
}

struct PoolState {
    budget: MemoryBudget<String, String>,
    slots: SlotTable<String, String>,
    functions: HashMap<String, FunctionPool>,
    members: HashMap<String, Member>,
    leases: HashMap<LeaseId, LeaseRecord>,
}

struct FunctionPool {
    settings: PolicyView,
    policy: Policy<String>,
    concurrency: u32,
    starts: StartCounts,
    bytes_per_instance: u64,
    fork_cost: Duration,
    /// No pre-warming until the next request or pre-warm (after a drain).
    drained: bool,
    /// Pool forks of this function in flight (a drain waits for them).
    forking: u32,
    /// Reconciles of this function under way (the reconciler's, a
    /// pre-warm's), e.g. destroying the instances they unload: a drain
    /// waits for them, so that when it answers no pool instance of the
    /// function is left, not even a dying one.
    reconciling: u32,
    /// End of the last request while none is in flight.
    last_finish: Option<Timestamp>,
    idle_history: VecDeque<f64>,
    /// When the reconciler should look at this function again.
    review_at: Option<Instant>,
    /// The pages a first request writes, recorded from one instance.
    write_set: Option<Arc<WriteSet>>,
}

#[derive(Clone, Debug)]
struct Member {
    function: String,
    role: Role,
    /// Record its write set after its first request: it was forked
    /// without one and its function has none yet.
    record: bool,
}

#[derive(Clone, Debug)]
enum Role {
    /// In the pool: frozen, idle or serving leases.
    Pool { idle_since: Option<Instant> },
    /// Handed out by a claim; `reusable` if it can go back to the pool.
    Claimed { since: Instant, reusable: bool },
    /// Its claim has ended and a release is putting it back or deleting
    /// it: a second release of it is refused, not run twice.
    Releasing,
}

impl Role {
    /// Claimed, or on its way back from a claim: busy for the policy's
    /// sizing (a reconcile must not replace it while it is released).
    fn is_handed_out(&self) -> bool {
        matches!(self, Role::Claimed { .. } | Role::Releasing)
    }
}

#[derive(Clone, Debug)]
struct LeaseRecord {
    function: String,
    instance: String,
    since: Instant,
}

/// `ROOT/pool/<function>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    settings: PolicyView,
    #[serde(default)]
    idle_s: Vec<f64>,
    #[serde(default)]
    bytes_per_instance: u64,
    #[serde(default)]
    fork_cost_us: u64,
    /// Validated when read (an untrusted file like any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_set: Option<WriteSet>,
}

const PERSIST_VERSION: u32 = 1;

fn policy_config(s: &PolicyView) -> PolicyConfig {
    match s.strategy {
        PolicyStrategy::Hybrid => PolicyConfig::hybrid(),
        PolicyStrategy::Fixed => PolicyConfig::fixed(Duration::from_secs(s.keep_alive_s)),
        PolicyStrategy::None => PolicyConfig::no_pool(),
    }
}

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::OverBudget { .. } => {
            ApiError::conflict(format!("the pool's memory budget: {e}"))
        }
        PoolError::UnknownFunction(_)
        | PoolError::UnknownInstance(_)
        | PoolError::UnknownLease(_) => ApiError::not_found(e.to_string()),
        e => ApiError::internal(format!("pool bookkeeping: {e}")),
    }
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Standard => "standard",
        Tier::Histogram => "histogram",
        Tier::TimeSeries => "time_series",
        Tier::Periodic => "periodic",
        Tier::Fixed => "fixed",
        Tier::NoPool => "no_pool",
    }
}

impl FunctionPool {
    fn new(f: &FunctionSpec, saved: Option<Persisted>) -> Result<Self, PoolError> {
        let settings = saved
            .as_ref()
            .map(|p| p.settings.clone())
            .unwrap_or_default();
        let mut policy = Policy::new(policy_config(&settings))?;
        policy.register(f.name.clone(), f.concurrency)?;
        if let Some(bytes) = saved
            .as_ref()
            .map(|p| p.bytes_per_instance)
            .filter(|b| *b > 0)
        {
            policy.set_memory(&f.name, bytes)?;
        }
        let mut idle_history = VecDeque::new();
        for s in saved.iter().flat_map(|p| &p.idle_s) {
            if s.is_finite() && *s >= 0.0 {
                policy.record_idle(&f.name, Duration::from_secs_f64(*s))?;
                idle_history.push_back(*s);
            }
        }
        while idle_history.len() > IDLE_HISTORY {
            idle_history.pop_front();
        }
        Ok(FunctionPool {
            settings,
            policy,
            concurrency: f.concurrency,
            starts: StartCounts::default(),
            bytes_per_instance: saved
                .as_ref()
                .map(|p| p.bytes_per_instance)
                .filter(|b| *b > 0)
                .unwrap_or(DEFAULT_INSTANCE_BYTES),
            fork_cost: saved
                .as_ref()
                .map(|p| Duration::from_micros(p.fork_cost_us))
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_FORK_COST),
            drained: false,
            forking: 0,
            reconciling: 0,
            last_finish: None,
            idle_history,
            review_at: None,
            write_set: saved.and_then(|p| p.write_set).map(Arc::new),
        })
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            version: PERSIST_VERSION,
            settings: self.settings.clone(),
            idle_s: self.idle_history.iter().copied().collect(),
            bytes_per_instance: self.bytes_per_instance,
            fork_cost_us: self.fork_cost.as_micros() as u64,
            write_set: self.write_set.as_deref().cloned(),
        }
    }

    /// A request arrives: the policy learns the idle time that ended.
    fn arrive(&mut self, name: &str, now: Timestamp) -> Result<(), PoolError> {
        if self.policy.in_flight(&name.to_string())? == 0
            && let Some(end) = self.last_finish.take()
        {
            self.idle_history.push_back((now - end).as_secs_f64());
            if self.idle_history.len() > IDLE_HISTORY {
                self.idle_history.pop_front();
            }
        }
        self.drained = false;
        self.policy.on_arrival(&name.to_string(), now)
    }

    fn finish(&mut self, name: &str, now: Timestamp, ran: Duration) -> Result<(), PoolError> {
        self.policy.on_finish(&name.to_string(), now, ran)?;
        if self.policy.in_flight(&name.to_string())? == 0 {
            self.last_finish = Some(now);
        }
        Ok(())
    }
}

/// How many instances a function should have loaded now.
struct Sizing {
    plan: sprout_pool::Plan,
    /// The policy's target, at least the busy instances plus `min_warm`.
    target: u32,
    /// Pool instances plus claimed ones (busy, out of the slot table).
    loaded: u32,
    /// Fork up to the target now (else only unload above it).
    pre_warm: bool,
}

impl PoolState {
    fn sizing(&self, name: &str, now: Timestamp) -> Result<Sizing, ApiError> {
        let key = name.to_string();
        let fp = self
            .functions
            .get(name)
            .ok_or_else(|| ApiError::unknown_function(name))?;
        let claimed = self
            .members
            .values()
            .filter(|m| m.function == key && m.role.is_handed_out())
            .count() as u32;
        let busy = claimed + self.slots.busy_count(&key) as u32;
        let loaded = self.slots.instance_count(&key) as u32 + claimed;
        let plan = fp.policy.plan(&key, now).map_err(pool_error)?;
        // `min_warm` idle instances on top of the busy ones; nothing new
        // after a drain until the next request.
        let floor = if fp.drained {
            0
        } else {
            busy + fp.settings.min_warm
        };
        Ok(Sizing {
            plan,
            target: plan.target.max(floor),
            loaded,
            pre_warm: !fp.drained && (plan.pre_warm || floor > loaded),
        })
    }

    fn function(&mut self, name: &str) -> Result<&mut FunctionPool, ApiError> {
        self.functions
            .get_mut(name)
            .ok_or_else(|| ApiError::unknown_function(name))
    }

    /// Takes instances chosen for destruction out of the books at once,
    /// so no claim or lease can pick them while they are being deleted;
    /// returns those that were still idle (a lease may have come).
    fn take_idle(&mut self, ids: Vec<String>) -> Vec<String> {
        ids.into_iter()
            .filter(|id| {
                let taken = self.slots.remove_instance(id).is_ok();
                if taken {
                    let _ = self.budget.remove(id);
                }
                taken
            })
            .collect()
    }

    fn warm_count(&self, function: &str) -> u32 {
        self.slots
            .instances_of(&function.to_string())
            .filter(|(_, s)| s.frozen && s.leased == 0)
            .count() as u32
    }
}

impl WarmPool {
    pub(crate) fn new(dir: PathBuf, cgroup_parent: PathBuf, budget: Option<u64>) -> Self {
        let (wake, wake_rx) = mpsc::unbounded_channel();
        // Ids of one pool never repeat (a counter); random bits keep two
        // pools started in the same microsecond (two sproutds on one host,
        // whose instances' cgroups share names) from counting alike.
        let mut random = [0u8; 4];
        // SAFETY: getrandom writes at most random.len() bytes into it.
        let _ = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
            ^ (u64::from(u32::from_ne_bytes(random)) << 24);
        WarmPool {
            state: Mutex::new(PoolState {
                budget: MemoryBudget::new(budget.unwrap_or_else(default_budget)),
                slots: SlotTable::new(),
                functions: HashMap::new(),
                members: HashMap::new(),
                leases: HashMap::new(),
            }),
            clock: MonotonicClock::new(),
            wake,
            wake_rx: Mutex::new(Some(wake_rx)),
            next_id: AtomicU64::new(seed),
            dir,
            cgroup_parent,
            parents: Mutex::new(CgroupParents::default()),
            save_lock: Mutex::new(()),
            stopping: AtomicBool::new(false),
        }
    }

    /// `<pool cgroup>/<function>`, made on first use.
    fn ensure_parent(&self, function: &str) -> Result<PathBuf, ApiError> {
        let path = self.cgroup_parent.join(function);
        let mut p = lock(&self.parents);
        if p.functions.contains_key(function) {
            return Ok(path);
        }
        let make = |path: &std::path::Path| -> Result<Cgroup, ApiError> {
            let cp = CgroupsPath::parse(path)
                .map_err(|e| ApiError::internal(format!("pool cgroup {}: {e}", path.display())))?;
            Cgroup::create(&cp)
                .map_err(|e| ApiError::internal(format!("pool cgroup {}: {e}", path.display())))
        };
        if p.top.is_none() {
            p.top = Some(make(&self.cgroup_parent)?);
        }
        let cg = make(&path)?;
        p.functions.insert(function.to_string(), cg);
        Ok(path)
    }

    /// Takes the function's parent cgroup (no instance of it is left
    /// there) out of the books, and the top one when no function has one
    /// any more: removed by [`remove_parents`], off the async workers
    /// (removing waits for cgroups still emptying).
    fn take_parents(&self, function: &str) -> Vec<Cgroup> {
        let mut p = lock(&self.parents);
        let mut out: Vec<Cgroup> = p.functions.remove(function).into_iter().collect();
        if p.functions.is_empty() {
            out.extend(p.top.take());
        }
        out
    }

    fn file(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.json"))
    }

    fn save(&self, function: &str, p: &Persisted) {
        let _one = lock(&self.save_lock);
        let data = serde_json::to_vec_pretty(p).expect("serializable");
        if let Err(e) = crate::registry::write_atomic(&self.file(function), &data) {
            tracing::warn!(function = %function, "saving the pool settings: {e}");
        }
    }

    fn save_function(&self, function: &str) {
        let p = lock(&self.state)
            .functions
            .get(function)
            .map(FunctionPool::persisted);
        if let Some(p) = p {
            self.save(function, &p);
        }
    }

    /// Adds a registered function (at startup or when it is added).
    pub(crate) fn register(&self, f: &FunctionSpec) {
        let saved = match fs::read(self.file(&f.name)) {
            Ok(data) => match serde_json::from_slice::<Persisted>(&data) {
                Ok(p) if p.version == PERSIST_VERSION => Some(p),
                Ok(p) => {
                    tracing::warn!(function = %f.name, version = p.version, "ignoring pool settings of another version");
                    None
                }
                Err(e) => {
                    tracing::warn!(function = %f.name, "ignoring unreadable pool settings: {e}");
                    None
                }
            },
            Err(_) => None,
        };
        match FunctionPool::new(f, saved) {
            Ok(fp) => {
                lock(&self.state).functions.insert(f.name.clone(), fp);
            }
            Err(e) => tracing::warn!(function = %f.name, "no pool for the function: {e}"),
        }
    }

    /// Forgets a removed function (its instances are gone already);
    /// returns its pool cgroups for [`remove_parents`].
    pub(crate) fn unregister(&self, function: &str) -> Vec<Cgroup> {
        lock(&self.state).functions.remove(function);
        let _ = fs::remove_file(self.file(function));
        self.take_parents(function)
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn wake(&self, function: &str) {
        let _ = self.wake.send(function.to_string());
    }

    /// Wakes the reconciler [`REFILL_DELAY`] after a claim: the refill's
    /// fork would otherwise take a core from the claimed instance's first
    /// request (on this 2-core VM, a whole one).
    fn wake_after_claim(&self, function: &str) {
        let (wake, function) = (self.wake.clone(), function.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_DELAY).await;
            let _ = wake.send(function);
        });
    }

    fn new_id(&self, function: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{function}-w{n:x}")
    }

    /// Is `id` an idle pool instance: not claimed, serving no lease (one
    /// being forked for the pool included)?
    pub(crate) fn is_idle_pool_member(&self, id: &str) -> bool {
        let st = lock(&self.state);
        matches!(
            st.members.get(id),
            Some(Member {
                role: Role::Pool { .. },
                ..
            })
        ) && st.slots.get(&id.to_string()).is_none_or(|s| s.leased == 0)
    }

    /// Is `id` a pool instance (not claimed)?
    pub(crate) fn is_pool_member(&self, id: &str) -> bool {
        matches!(
            lock(&self.state).members.get(id),
            Some(Member {
                role: Role::Pool { .. },
                ..
            })
        )
    }
}

/// Counts a reconcile of a function while it lives.
struct Reconciling<'a> {
    daemon: &'a Daemon,
    name: &'a str,
}

impl<'a> Reconciling<'a> {
    /// Counted under the lock the stop's wait reads, with `stopping`
    /// checked there too: a reconciliation either is seen by the stop or
    /// sees it (`None`).
    fn start(daemon: &'a Daemon, name: &'a str) -> Option<Self> {
        let mut st = lock(&daemon.warm.state);
        if daemon.warm.stopping.load(Ordering::Acquire) {
            return None;
        }
        if let Some(f) = st.functions.get_mut(name) {
            f.reconciling = f.reconciling.saturating_add(1);
        }
        drop(st);
        Some(Reconciling { daemon, name })
    }

    fn count(daemon: &Daemon, name: &str, delta: i32) {
        if let Some(f) = lock(&daemon.warm.state).functions.get_mut(name) {
            f.reconciling = f.reconciling.saturating_add_signed(delta);
        }
    }
}

impl Drop for Reconciling<'_> {
    fn drop(&mut self) {
        Self::count(self.daemon, self.name, -1);
    }
}

/// Steps of a pool hit, for the answer and the metrics.
struct Steps {
    at: Instant,
    stages: Vec<Stage>,
}

impl Steps {
    fn since(at: Instant) -> Self {
        Steps {
            at,
            stages: Vec::new(),
        }
    }

    fn done(&mut self, name: &str) {
        let now = Instant::now();
        self.stages.push(Stage::new(name, now - self.at));
        self.at = now;
    }
}

impl Daemon {
    // ---- views ----------------------------------------------------

    fn function_pool_view(&self, st: &PoolState, name: &str) -> Option<FunctionPoolView> {
        let fp = st.functions.get(name)?;
        let now = self.warm.now();
        let sizing = st.sizing(name, now).ok();
        let plan = sizing.as_ref().map(|s| s.plan);
        let instances: Vec<PoolInstanceView> = st
            .slots
            .instances_of(&name.to_string())
            .map(|(id, s)| {
                let inst = self.instance(id).ok();
                PoolInstanceView {
                    id: id.clone(),
                    pid: inst.as_ref().map_or(0, |i| i.pid),
                    state: if s.leased > 0 {
                        "busy"
                    } else if s.frozen {
                        "frozen"
                    } else {
                        "idle"
                    }
                    .into(),
                    leases: s.leased,
                    capacity: s.capacity,
                    address: inst.and_then(|i| i.network.as_ref().map(|a| a.address)),
                }
            })
            .collect();
        Some(FunctionPoolView {
            function: name.to_string(),
            policy: fp.settings.clone(),
            plan: PlanView {
                target: sizing.as_ref().map_or(0, |s| s.target),
                pre_warm: sizing.as_ref().is_some_and(|s| s.pre_warm),
                tier: plan.map_or("standard", |p| tier_name(p.tier)).into(),
                review_in_ms: plan
                    .and_then(|p| p.review_at)
                    .map(|at| (at - now).as_millis() as u64),
            },
            warm: st.warm_count(name),
            leases: instances.iter().map(|i| i.leases).sum(),
            in_flight: fp.policy.in_flight(&name.to_string()).unwrap_or(0),
            instances,
            starts: fp.starts.clone(),
            bytes_per_instance: fp.bytes_per_instance,
            write_set_pages: fp.write_set.as_ref().map_or(0, |w| w.pages()),
        })
    }

    pub fn pool_view(&self, name: &str) -> Result<FunctionPoolView, ApiError> {
        self.function(name)?;
        let st = lock(&self.warm.state);
        self.function_pool_view(&st, name)
            .ok_or_else(|| ApiError::unknown_function(name))
    }

    pub fn pool_overview(&self) -> PoolView {
        let st = lock(&self.warm.state);
        let mut names: Vec<&String> = st.functions.keys().collect();
        names.sort();
        PoolView {
            budget: BudgetView {
                limit_bytes: st.budget.limit(),
                used_bytes: st.budget.used(),
            },
            functions: names
                .into_iter()
                .filter_map(|n| self.function_pool_view(&st, n))
                .collect(),
        }
    }

    /// `/metrics`: counters and histograms kept as things happen, gauges
    /// read now (pool sizes, budget, netns pools, every instance's usage).
    pub async fn metrics_text(self: &Arc<Self>) -> Result<String, ApiError> {
        use crate::metrics::{
            BudgetGauges, FunctionGauges, Gauges, InstanceGauges, NetnsPoolGauges, instance_usage,
        };
        let (functions, budget) = {
            let st = lock(&self.warm.state);
            let now = self.warm.now();
            let mut names: Vec<&String> = st.functions.keys().collect();
            names.sort();
            let functions = names
                .into_iter()
                .map(|name| {
                    let fp = &st.functions[name];
                    let mut g = FunctionGauges {
                        function: name.clone(),
                        bytes_per_instance: fp.bytes_per_instance,
                        target: st.sizing(name, now).map_or(0, |s| s.target) as u64,
                        ..Default::default()
                    };
                    for (_, s) in st.slots.instances_of(name) {
                        g.leases += s.leased as u64;
                        match (s.leased > 0, s.frozen) {
                            (true, _) => g.busy += 1,
                            (false, true) => g.frozen += 1,
                            (false, false) => g.idle += 1,
                        }
                    }
                    g.busy += st
                        .members
                        .values()
                        .filter(|m| &m.function == name && m.role.is_handed_out())
                        .count() as u64;
                    g
                })
                .collect();
            let budget = BudgetGauges {
                limit_bytes: st.budget.limit(),
                used_bytes: st.budget.used(),
            };
            (functions, budget)
        };
        let netns_pools = match self.network.status() {
            Ok(s) => s
                .pools
                .into_iter()
                .map(|p| NetnsPoolGauges {
                    vpc: p.vpc,
                    ready: p.ready as u64,
                    leased: p.leased as u64,
                    target: p.target as u64,
                    takes: p.counters.takes,
                    misses: p.counters.misses,
                })
                .collect(),
            Err(e) => {
                tracing::debug!("netplug status for metrics: {e}");
                Vec::new()
            }
        };
        let insts: Vec<(String, String)> = lock(&self.instances)
            .values()
            .filter_map(|s| match s {
                super::Slot::Live(i) if i.exit_status().is_none() => {
                    Some((i.id.clone(), i.function.clone()))
                }
                _ => None,
            })
            .collect();
        let rt = self.runtime.clone();
        let instances = blocking(move || {
            Ok(insts
                .into_iter()
                .filter_map(|(id, function)| {
                    let c = rt.container(&id).ok()?;
                    Some(InstanceGauges {
                        usage: instance_usage(&c)?,
                        id,
                        function,
                    })
                })
                .collect::<Vec<_>>())
        })
        .await?;
        Ok(self.metrics.render(&Gauges {
            functions,
            budget,
            netns_pools,
            instances,
        }))
    }

    // ---- settings -------------------------------------------------

    pub async fn set_policy(
        self: &Arc<Self>,
        name: &str,
        body: PolicyBody,
    ) -> Result<FunctionPoolView, ApiError> {
        let f = self.function(name)?;
        if body.strategy == Some(PolicyStrategy::Fixed) || body.keep_alive_s.is_some() {
            let k = body.keep_alive_s.unwrap_or(600);
            if k == 0 || k > 7 * 24 * 3600 {
                return Err(ApiError::bad_request(format!(
                    "keep_alive_s {k} must be between 1 and 604800 (a week)"
                )));
            }
        }
        if let Some(n) = body.min_warm {
            self.check_min_warm(n)?;
        }
        {
            let mut st = lock(&self.warm.state);
            let fp = st.function(name)?;
            let mut s = fp.settings.clone();
            if let Some(v) = body.strategy {
                s.strategy = v;
            }
            if let Some(v) = body.keep_alive_s {
                s.keep_alive_s = v;
            }
            if let Some(v) = body.min_warm {
                s.min_warm = v;
            }
            if let Some(v) = body.reuse {
                s.reuse = v;
            }
            if s.strategy != fp.settings.strategy || s.keep_alive_s != fp.settings.keep_alive_s {
                // A new policy learns from the history the old one saw.
                let mut policy = Policy::new(policy_config(&s)).map_err(pool_error)?;
                policy
                    .register(name.to_string(), f.concurrency)
                    .map_err(pool_error)?;
                for idle in &fp.idle_history {
                    policy
                        .record_idle(&name.to_string(), Duration::from_secs_f64(*idle))
                        .map_err(pool_error)?;
                }
                fp.policy = policy;
            }
            fp.settings = s;
            tracing::info!(function = %name, policy = ?fp.settings, "pool policy set");
        }
        self.warm.save_function(name);
        self.warm.wake(name);
        self.pool_view(name)
    }

    fn check_min_warm(&self, n: u32) -> Result<(), ApiError> {
        const MAX_WARM: u32 = 10_000;
        if n > MAX_WARM {
            return Err(ApiError::bad_request(format!(
                "{n} warm instances is more than the {MAX_WARM} a pool holds per function"
            )));
        }
        Ok(())
    }

    pub async fn set_budget(self: &Arc<Self>, limit_bytes: u64) -> Result<PoolView, ApiError> {
        if limit_bytes < 1 << 20 {
            return Err(ApiError::bad_request(format!(
                "a memory budget of {limit_bytes} bytes is below 1 MiB"
            )));
        }
        let evicted = {
            let mut st = lock(&self.warm.state);
            st.budget.set_limit(limit_bytes);
            let st = &mut *st;
            let slots = &st.slots;
            let evicted = st
                .budget
                .shrink_to_fit(|id| slots.get(id).is_some_and(|s| s.leased == 0));
            for id in &evicted {
                let _ = st.slots.remove_instance(id);
            }
            evicted
        };
        tracing::info!(
            limit_bytes,
            evicted = evicted.len(),
            "pool memory budget set"
        );
        for id in evicted {
            self.destroy_pool_instance(&id, "evicted: the memory budget shrank")
                .await;
        }
        Ok(self.pool_overview())
    }

    // ---- pre-warm and drain --------------------------------------

    /// Holds at least `count` warm instances from now on, forking what is
    /// missing now. Refused (409) when the budget cannot hold them; those
    /// that fit stay.
    pub async fn prewarm(
        self: &Arc<Self>,
        name: &str,
        count: u32,
    ) -> Result<PrewarmResult, ApiError> {
        let _op = self.op()?;
        self.function(name)?;
        self.check_min_warm(count)?;
        {
            let mut st = lock(&self.warm.state);
            let fp = st.function(name)?;
            fp.settings.min_warm = count;
            fp.drained = false;
        }
        self.warm.save_function(name);
        let forked = self.reconcile(name).await?;
        let warm = {
            let st = lock(&self.warm.state);
            st.slots
                .instances_of(&name.to_string())
                .filter(|(_, s)| s.leased == 0)
                .count() as u32
        };
        if warm < count {
            let st = lock(&self.warm.state);
            return Err(ApiError::conflict(format!(
                "pre-warm of {count} instance(s) of {name:?}: {warm} fit in the pool's memory budget (limit {} bytes, {} used, {} per instance)",
                st.budget.limit(),
                st.budget.used(),
                st.functions.get(name).map_or(0, |f| f.bytes_per_instance)
            )));
        }
        Ok(PrewarmResult { forked, warm })
    }

    /// Destroys the function's pool instances (with `force` also those
    /// serving leases) and stops pre-warming it until the next request or
    /// pre-warm.
    pub async fn drain_pool(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<DrainResult, ApiError> {
        let _op = self.op()?;
        self.function(name)?;
        {
            let mut st = lock(&self.warm.state);
            let fp = st.function(name)?;
            fp.settings.min_warm = 0;
            fp.drained = true;
        }
        // A pool fork already under way ends in the pool: wait for it, so
        // the drain sees it; and for instances the reconciler is
        // destroying, so that none is left once the drain answers.
        let deadline = Instant::now() + DRAIN_FORKS_TIMEOUT;
        while lock(&self.warm.state)
            .functions
            .get(name)
            .is_some_and(|f| f.forking > 0 || f.reconciling > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (idle, busy) = {
            let mut st = lock(&self.warm.state);
            let mut idle = Vec::new();
            let mut busy = Vec::new();
            for (id, s) in st.slots.instances_of(&name.to_string()) {
                if s.leased == 0 {
                    idle.push(id.clone())
                } else {
                    busy.push(id.clone())
                }
            }
            let idle = st.take_idle(idle);
            (idle, busy)
        };
        self.warm.save_function(name);
        let mut destroyed = 0;
        for id in idle.iter().chain(busy.iter().filter(|_| force)) {
            self.destroy_pool_instance(id, "drained").await;
            destroyed += 1;
        }
        tracing::info!(function = %name, destroyed, busy = busy.len(), force, "pool drained");
        Ok(DrainResult {
            destroyed,
            busy: if force { 0 } else { busy.len() as u32 },
        })
    }

    // ---- claims ---------------------------------------------------

    /// Hands out an instance of `name` as the caller's: a warm one from
    /// the pool (limits applied, thawed, output redirected), else a fresh
    /// fork. A bundle that names its own `cgroupsPath` always gets a fresh
    /// fork placed there. `stdio` (the side channel's fds) replaces
    /// `body`'s stdout/stderr files.
    pub async fn claim(
        self: &Arc<Self>,
        name: &str,
        body: ClaimBody,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<Claimed, ApiError> {
        let _op = self.op()?;
        self.refuse_when_stopping()?;
        let started = Instant::now();
        self.function(name)?;
        let own_cgroup = match &body.bundle {
            Some(b) => bundle_names_cgroup(b)?,
            None => false,
        };
        // The claimant's output files, opened before anything leaves the
        // pool: one that cannot be opened is the request's fault, not an
        // instance's. Off the async workers: a FIFO's open waits for its
        // reader.
        let outputs = if stdio.is_none() && (body.stdout.is_some() || body.stderr.is_some()) {
            let (out, err) = (body.stdout.clone(), body.stderr.clone());
            Some(
                blocking(move || Ok([open_output(out.as_ref())?, open_output(err.as_ref())?]))
                    .await?,
            )
        } else {
            None
        };
        {
            let mut st = lock(&self.warm.state);
            let now = self.warm.now();
            st.function(name)?.arrive(name, now).map_err(pool_error)?;
        }
        let claimed = self
            .claim_arrived(name, own_cgroup, &body, stdio, outputs, started)
            .await;
        if claimed.is_err() {
            // The arrival did not become a request.
            self.finish_request(name, Duration::ZERO);
        }
        claimed
    }

    /// [`Daemon::claim`] once the request is counted: a pool hit, else a
    /// fork. `outputs` are the claimant's stdout and stderr files when it
    /// named them (and passed no fds).
    async fn claim_arrived(
        self: &Arc<Self>,
        name: &str,
        own_cgroup: bool,
        body: &ClaimBody,
        stdio: Option<[OwnedFd; 3]>,
        outputs: Option<[OwnedFd; 2]>,
        started: Instant,
    ) -> Result<Claimed, ApiError> {
        // Warm instances, one after another, until one is handed out.
        while !own_cgroup && body.bundle.is_none() {
            // Before anything leaves the pool: a failure here (out of fds)
            // must not strand a picked instance.
            let output = outputs_clone(&stdio, &outputs)?;
            let mut dead = Vec::new();
            let picked = self.pick_for_claim(name, &mut dead);
            for id in dead {
                self.destroy_pool_instance(&id, "killed while warm").await;
            }
            let Some((id, frozen)) = picked else { break };
            let mut steps = Steps::since(started);
            steps.done("pick");
            match self.hand_out(&id, frozen, body, output, steps).await {
                Ok(steps) => {
                    let claimed = match self.claimed(&id, StartPath::PoolHit, started, steps) {
                        Ok(c) => c,
                        Err(e) => {
                            self.abandon_claimed(&id).await;
                            return Err(e);
                        }
                    };
                    self.record_claim(&id, body.resources.clone(), body.annotations.clone());
                    self.warm.wake_after_claim(name);
                    return Ok(claimed);
                }
                Err(e) => {
                    // Half handed out: it goes, without ending the claim's
                    // request, which goes on.
                    lock(&self.warm.state).members.remove(&id);
                    self.destroy_pool_instance(&id, "failed to hand out").await;
                    if e.status < 500 {
                        // The request's fault (limits the kernel refuses):
                        // another instance would fare no better.
                        return Err(e);
                    }
                    tracing::warn!(container = %id, "a warm instance could not be handed out, trying another: {}", e.message);
                }
            }
        }
        // A miss: a fork of the caller's own, with its stdio directly.
        let id = self.warm.new_id(name);
        let [stdin, stdout, stderr] = match (stdio, outputs) {
            (Some(fds), _) => fds.map(Some),
            (None, Some([out, err])) => [None, Some(out), Some(err)],
            (None, None) => [None, Some(open_output(None)?), Some(open_output(None)?)],
        };
        let path = self.start_path(name);
        let req = ForkRequest {
            id: id.clone(),
            bundle: body.bundle.clone(),
            stdio: [stdin, stdout, stderr],
            annotations: body.annotations.clone(),
            resources: body.resources.clone(),
            cgroups_path: if own_cgroup || body.bundle.is_some() {
                None
            } else {
                Some(self.warm.ensure_parent(name)?.join(&id))
            },
            ..Default::default()
        };
        let inst = self.fork(name, req, None).await?;
        {
            let mut st = lock(&self.warm.state);
            let record = st
                .functions
                .get(name)
                .is_some_and(|f| f.write_set.is_none());
            st.members.insert(
                id.clone(),
                Member {
                    function: name.to_string(),
                    role: Role::Claimed {
                        since: Instant::now(),
                        reusable: false,
                    },
                    record,
                },
            );
        }
        self.note_fork(name, path, &inst);
        let stages = inst.stages.clone();
        let claimed = match self.claimed(
            &id,
            path,
            started,
            Steps {
                at: started,
                stages,
            },
        ) {
            Ok(c) => c,
            Err(e) => {
                self.abandon_claimed(&id).await;
                return Err(e);
            }
        };
        self.warm.wake_after_claim(name);
        Ok(claimed)
    }

    /// A claimed instance whose claim failed after all: out of the books
    /// and deleted, never left claimed with no claimant.
    async fn abandon_claimed(self: &Arc<Self>, id: &str) {
        lock(&self.warm.state).members.remove(id);
        if let Err(e) = self.delete(id, true).await
            && e.status != 404
        {
            tracing::warn!(container = %id, "deleting an instance whose claim failed: {}", e.message);
        }
    }

    /// Takes an idle pool instance of `name` out of the pool for a claim:
    /// an awake one first (no thaw), else a frozen one.
    /// Instances found dead or doomed on the way go into `dead`.
    fn pick_for_claim(&self, name: &str, dead: &mut Vec<String>) -> Option<(String, bool)> {
        let mut st = lock(&self.warm.state);
        let key = name.to_string();
        let mut pick: Option<(String, bool)> = None;
        for (id, s) in st.slots.instances_of(&key) {
            if s.leased > 0 {
                continue;
            }
            let alive = self
                .instance(id)
                .is_ok_and(|i| i.exit_status().is_none() && !doomed(i.pid));
            if !alive {
                dead.push(id.clone());
                continue;
            }
            if pick.as_ref().is_none_or(|(_, frozen)| *frozen && !s.frozen) {
                pick = Some((id.clone(), s.frozen));
            }
        }
        let (id, frozen) = pick?;
        st.slots.remove_instance(&id).ok()?;
        let _ = st.budget.remove(&id);
        if let Some(m) = st.members.get_mut(&id) {
            m.role = Role::Claimed {
                since: Instant::now(),
                reusable: true,
            };
        }
        drop(st);
        Some((id, frozen))
    }

    /// The claim's steps on a picked instance: limits, thaw, output
    /// (`output`: the claimant's stdout and stderr, if it gave any).
    /// The limits are only written to the cgroup here; the instance's
    /// state records them after the answer ([`Daemon::record_limits`]).
    /// A 4xx error is the request's fault.
    async fn hand_out(
        self: &Arc<Self>,
        id: &str,
        frozen: bool,
        body: &ClaimBody,
        output: Option<[OwnedFd; 2]>,
        mut steps: Steps,
    ) -> Result<Steps, ApiError> {
        let inst = self.instance(id)?;
        let c = self.runtime.container(id)?;
        if let Some(r) = &body.resources {
            c.apply_resources(r).map_err(|e| {
                ApiError::bad_request(format!("the claim's limits cannot be applied: {e}"))
            })?;
            steps.done("limits");
        }
        if frozen {
            thaw(&c)?;
            steps.done("thaw");
        }
        // In memory now (the shim's delete action looks instances up by
        // them), on disk after the answer.
        lock(&inst.claim_annotations).clone_from(&body.annotations);
        let relay = lock(&inst.relay).clone();
        if let Some(relay) = relay {
            if let Some([out, err]) = output {
                relay.redirect(out, err);
            }
            steps.done("stdio");
        }
        Ok(steps)
    }

    /// Records a pool hit on disk, off the claim's path (rewriting the
    /// two records took half of a claim): the instance's record no longer
    /// marks it a pool instance (a restarted sproutd would delete it) and
    /// keeps the claim's annotations, and its runtime state gets the
    /// claim's limits, already in force. A crash
    /// of sproutd in between costs the claimant its instance; a release or
    /// delete in between leaves nothing to record.
    fn record_claim(
        self: &Arc<Self>,
        id: &str,
        resources: Option<LinuxResources>,
        annotations: HashMap<String, String>,
    ) {
        let id = id.to_string();
        self.finish_blocking(move |daemon| {
            let claimed = matches!(
                lock(&daemon.warm.state).members.get(&id),
                Some(Member {
                    role: Role::Claimed { .. },
                    ..
                })
            );
            if !claimed {
                // Already released (back into the pool, or destroyed).
                return;
            }
            daemon.record_claimed(&id, annotations);
            if let Some(r) = resources
                && let Err(e) = daemon
                    .runtime
                    .container(&id)
                    .and_then(|mut c| c.record_resources(&r))
            {
                tracing::debug!(container = %id, "claim limits not recorded: {e}");
            }
        });
    }

    fn claimed(
        &self,
        id: &str,
        path: StartPath,
        started: Instant,
        steps: Steps,
    ) -> Result<Claimed, ApiError> {
        let inst = self.instance(id)?;
        let elapsed = started.elapsed();
        {
            let mut st = lock(&self.warm.state);
            if let Ok(fp) = st.function(&inst.function) {
                fp.starts.add(path);
            }
        }
        self.metrics.record_claim(&inst.function, elapsed);
        self.metrics.record_start(
            &inst.function,
            path,
            elapsed,
            &steps
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.elapsed))
                .collect::<Vec<_>>(),
        );
        tracing::info!(container = %id, function = %inst.function, path = path.as_str(), us = elapsed.as_micros() as u64, "instance claimed");
        Ok(Claimed {
            id: id.to_string(),
            function: inst.function.clone(),
            pid: inst.pid,
            path,
            claim_us: elapsed.as_micros() as u64,
            stages: steps.stages.iter().map(StageView::from).collect(),
            vpc: inst.network.as_ref().map(|a| a.vpc.clone()),
            address: inst.network.as_ref().map(|a| a.address),
        })
    }

    /// Gives back a claimed instance: to the pool if it came from there,
    /// is alive and the function allows reuse; otherwise destroyed.
    pub async fn release(self: &Arc<Self>, id: &str) -> Result<Released, ApiError> {
        let _op = self.op()?;
        let inst = self.instance(id)?;
        // Claimed -> Releasing in one step: of two releases racing, one
        // ends the claim and the other is refused.
        let (function, since, reusable) = match lock(&self.warm.state).members.get_mut(id) {
            Some(m) => match m.role {
                Role::Claimed { since, reusable } => {
                    m.role = Role::Releasing;
                    (m.function.clone(), since, reusable)
                }
                Role::Releasing => {
                    return Err(ApiError::conflict(format!(
                        "instance {id:?} is being released already"
                    )));
                }
                Role::Pool { .. } => {
                    return Err(ApiError::conflict(format!(
                        "instance {id:?} is in the pool, not claimed"
                    )));
                }
            },
            None => {
                return Err(ApiError::conflict(format!(
                    "instance {id:?} was not claimed (fork it and delete it instead)"
                )));
            }
        };
        self.finish_request(&function, since.elapsed());
        self.record_first_request(id).await;
        let reuse = reusable
            && inst.exit_status().is_none()
            && lock(&self.warm.state)
                .functions
                .get(&function)
                .is_some_and(|f| f.settings.reuse);
        if reuse && self.return_to_pool(&inst).await.is_ok() {
            tracing::info!(container = %id, function = %function, "claimed instance back in the pool");
            self.warm.wake(&function);
            return Ok(Released {
                id: id.to_string(),
                reused: true,
            });
        }
        lock(&self.warm.state).members.remove(id);
        match self.delete(id, true).await {
            // Deleted meanwhile by another caller: released all the same.
            Err(e) if e.status == 404 => {}
            r => r?,
        }
        self.warm.wake(&function);
        Ok(Released {
            id: id.to_string(),
            reused: false,
        })
    }

    /// A released instance goes back: output to its log, frozen, booked.
    async fn return_to_pool(self: &Arc<Self>, inst: &Arc<Instance>) -> Result<(), ApiError> {
        let id = inst.id.clone();
        let relay = lock(&inst.relay).clone();
        if let Some(r) = relay {
            let log = self.log_path(&id);
            r.redirect(open_output(Some(&log))?, open_output(Some(&log))?);
        }
        let c = self.runtime.container(&id)?;
        blocking(move || Ok(c.pause()?)).await?;
        let mut st = lock(&self.warm.state);
        let st = &mut *st;
        // Still this release's, and alive: it may have died during the
        // pause (the exit watcher skips a releasing instance) or been
        // deleted meanwhile; the caller then destroys it.
        let releasing = st
            .members
            .get(&id)
            .is_some_and(|m| matches!(m.role, Role::Releasing));
        // Once sproutd stops, nothing goes back into the pool its stop is
        // deleting (the caller deletes this one).
        if !releasing || inst.exit_status().is_some() || self.warm.stopping.load(Ordering::Acquire)
        {
            return Err(ApiError::conflict(format!(
                "instance {id:?} exited or went while it was being returned"
            )));
        }
        let fp = st.function(&inst.function)?;
        let (bytes, cost, slots) = (fp.bytes_per_instance, fp.fork_cost, fp.concurrency);
        // Only free room takes a returned instance back: it evicts nobody.
        match st.budget.admit(
            inst.function.clone(),
            id.clone(),
            bytes,
            cost,
            Purpose::PreWarm,
            |_| false,
        ) {
            Ok(Admission::Admitted { .. }) => {}
            Ok(Admission::NotWorthIt) | Err(_) => {
                return Err(ApiError::conflict("no room in the pool's memory budget"));
            }
        }
        st.slots
            .add_instance(inst.function.clone(), id.clone(), slots, true)
            .map_err(pool_error)?;
        if let Some(m) = st.members.get_mut(&id) {
            m.role = Role::Pool {
                idle_since: Some(Instant::now()),
            };
        }
        lock(&inst.claim_annotations).clear();
        self.record_returned(&id);
        Ok(())
    }

    // ---- leases ---------------------------------------------------

    /// A request slot on an instance of `name`: on an awake instance with
    /// room first, else a frozen one (thawed), else a new fork.
    pub async fn acquire_lease(self: &Arc<Self>, name: &str) -> Result<LeaseView, ApiError> {
        let _op = self.op()?;
        self.refuse_when_stopping()?;
        let started = Instant::now();
        self.function(name)?;
        {
            let mut st = lock(&self.warm.state);
            let now = self.warm.now();
            st.function(name)?.arrive(name, now).map_err(pool_error)?;
        }
        let mut path = StartPath::PoolHit;
        let mut stages: Vec<Stage> = Vec::new();
        for _ in 0..8 {
            let acquired = {
                let mut st = lock(&self.warm.state);
                let a = st.slots.acquire(&name.to_string());
                if let Acquire::Leased(l) = &a {
                    st.leases.insert(
                        l.id,
                        LeaseRecord {
                            function: name.to_string(),
                            instance: l.instance.clone(),
                            since: Instant::now(),
                        },
                    );
                    if let Some(m) = st.members.get_mut(&l.instance) {
                        m.role = Role::Pool { idle_since: None };
                    }
                    let _ = st.budget.touch(&l.instance);
                }
                a
            };
            match acquired {
                Acquire::Leased(l) => {
                    let usable = self
                        .instance(&l.instance)
                        .is_ok_and(|i| i.exit_status().is_none() && !doomed(i.pid));
                    if !usable {
                        self.void_lease(l.id);
                        self.destroy_pool_instance(&l.instance, "killed while warm")
                            .await;
                        continue;
                    }
                    if l.woke {
                        let t = Instant::now();
                        let thawed = self
                            .runtime
                            .container(&l.instance)
                            .map_err(ApiError::from)
                            .and_then(|c| thaw(&c));
                        if let Err(e) = thawed {
                            tracing::warn!(container = %l.instance, "thawing for a lease failed: {}", e.message);
                            self.void_lease(l.id);
                            self.destroy_pool_instance(&l.instance, "failed to thaw")
                                .await;
                            continue;
                        }
                        stages.push(Stage::new("thaw", t.elapsed()));
                    }
                    let inst = self.instance(&l.instance)?;
                    let elapsed = started.elapsed();
                    {
                        let mut st = lock(&self.warm.state);
                        if let Ok(fp) = st.function(name) {
                            fp.starts.add(path);
                        }
                    }
                    self.metrics.record_lease_wait(name, elapsed);
                    if path == StartPath::PoolHit {
                        self.metrics.record_start(
                            name,
                            path,
                            elapsed,
                            &stages
                                .iter()
                                .map(|s| (s.name.clone(), s.elapsed))
                                .collect::<Vec<_>>(),
                        );
                    }
                    tracing::debug!(container = %l.instance, function = %name, lease = %l.id, path = path.as_str(), "lease acquired");
                    return Ok(LeaseView {
                        lease: l.id.to_string(),
                        function: name.to_string(),
                        instance: l.instance.clone(),
                        pid: inst.pid,
                        address: inst.network.as_ref().map(|a| a.address),
                        path,
                        us: elapsed.as_micros() as u64,
                    });
                }
                Acquire::NoFreeSlot => {
                    path = self.start_path(name);
                    match self.fork_pool_instance(name, Purpose::Demand, false).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => {
                            self.finish_request(name, Duration::ZERO);
                            return Err(ApiError::conflict(format!(
                                "every instance of {name:?} is full and the pool's memory budget has no room for another"
                            )));
                        }
                        Err(e) => {
                            self.finish_request(name, Duration::ZERO);
                            return Err(e);
                        }
                    }
                }
            }
        }
        self.finish_request(name, Duration::ZERO);
        Err(ApiError::new(
            503,
            format!("no slot of {name:?} could be leased: instances kept failing"),
        ))
    }

    /// Gives a request slot back.
    pub async fn release_lease(self: &Arc<Self>, lease: &str) -> Result<(), ApiError> {
        let id = lease
            .strip_prefix("lease-")
            .and_then(|n| n.parse::<u64>().ok())
            .map(LeaseId)
            .ok_or_else(|| ApiError::bad_request(format!("{lease:?} is not a lease (lease-N)")))?;
        let (record, drained_busy, released_idle) = {
            let mut st = lock(&self.warm.state);
            let record = st
                .leases
                .remove(&id)
                .ok_or_else(|| ApiError::not_found(format!("unknown lease {lease:?}")))?;
            let released = st.slots.release(id).map_err(pool_error)?;
            let now = Instant::now();
            let drained = st
                .functions
                .get(&record.function)
                .is_some_and(|f| f.drained);
            if released.idle
                && let Some(m) = st.members.get_mut(&released.instance)
            {
                m.role = Role::Pool {
                    idle_since: Some(now),
                };
            }
            // Out of the pool in the same step, so that no lease taken
            // while the write set is recorded lands on an instance about
            // to be destroyed.
            let drained_busy = released.idle
                && drained
                && !st.take_idle(vec![released.instance.clone()]).is_empty();
            (record, drained_busy, released.idle)
        };
        self.finish_request(&record.function, record.since.elapsed());
        if released_idle {
            self.record_first_request(&record.instance).await;
        }
        if drained_busy {
            self.destroy_pool_instance(&record.instance, "drained")
                .await;
        }
        self.warm.wake(&record.function);
        Ok(())
    }

    /// Records the write set of an instance that has served its first
    /// request, if it is the one chosen to (forked without a profile while
    /// its function has none): later pre-warmed forks copy those pages up
    /// front.
    async fn record_first_request(self: &Arc<Self>, id: &str) {
        self.record_write_set_of(id, 1).await;
    }

    /// Before the instance `id` is killed or deleted: records its write
    /// set if it is the one chosen to. Instances claimed through
    /// containerd are never released, only killed and deleted, so this
    /// is where their function learns its write set. One that dies
    /// before it served a request wrote next to nothing: a set under
    /// [`MIN_KILLED_WRITE_SET`] pages is not kept, and the next instance
    /// records instead.
    pub(super) async fn record_before_end(self: &Arc<Self>, id: &str) {
        // One that already exited has no memory left to read.
        if self.instance(id).is_ok_and(|i| i.exit_status().is_none()) {
            self.record_write_set_of(id, MIN_KILLED_WRITE_SET).await;
        }
    }

    async fn record_write_set_of(self: &Arc<Self>, id: &str, min_pages: u64) {
        let function = {
            let mut st = lock(&self.warm.state);
            let Some(m) = st.members.get_mut(id) else {
                return;
            };
            if !std::mem::take(&mut m.record) {
                return;
            }
            let function = m.function.clone();
            if st
                .functions
                .get(&function)
                .is_none_or(|f| f.write_set.is_some())
            {
                return;
            }
            function
        };
        let Ok(inst) = self.instance(id) else { return };
        let engine = self.engine.clone();
        let (f, pid) = (function.clone(), inst.pid);
        match blocking(move || Ok(engine.record_write_set(&f, pid)?)).await {
            Ok(Some(ws)) if ws.pages() < min_pages => {
                // Too little to be a request's; every later instance forked
                // without a write set is a recorder too.
                tracing::debug!(container = %id, pages = ws.pages(), "write set too small to keep");
            }
            Ok(Some(ws)) if !ws.is_empty() => {
                let pages = ws.pages();
                {
                    let mut st = lock(&self.warm.state);
                    if let Some(fp) = st.functions.get_mut(&function)
                        && fp.write_set.is_none()
                    {
                        fp.write_set = Some(Arc::new(ws));
                    }
                }
                self.warm.save_function(&function);
                tracing::info!(container = %id, function = %function, pages, "write set of the first request recorded");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(container = %id, function = %function, "recording the write set: {}", e.message)
            }
        }
    }

    fn void_lease(&self, lease: LeaseId) {
        let mut st = lock(&self.warm.state);
        st.leases.remove(&lease);
        let _ = st.slots.release(lease);
    }

    fn finish_request(&self, function: &str, ran: Duration) {
        let mut st = lock(&self.warm.state);
        let now = self.warm.now();
        if let Ok(fp) = st.function(function)
            && let Err(e) = fp.finish(function, now, ran)
        {
            tracing::debug!(function = %function, "pool bookkeeping: {e}");
        }
    }

    // ---- forks and destroys --------------------------------------

    fn start_path(&self, name: &str) -> StartPath {
        if self.template(name).is_some() {
            StartPath::Fork
        } else {
            StartPath::Restore
        }
    }

    fn note_fork(&self, name: &str, path: StartPath, inst: &Instance) {
        let total: Duration = inst.stages.iter().map(|s| s.elapsed).sum();
        self.metrics.record_start(
            name,
            path,
            total,
            &inst
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.elapsed))
                .collect::<Vec<_>>(),
        );
        let mut st = lock(&self.warm.state);
        if let Ok(fp) = st.function(name) {
            // A moving average, so one slow fork does not skew eviction.
            fp.fork_cost = (fp.fork_cost * 3 + total) / 4;
        }
    }

    /// Forks one pool instance of `name` if the budget admits it; counted
    /// in the function's `forking` while under way (a drain waits for it).
    /// A pre-warm fork of a drained function does not start (`None`).
    async fn fork_pool_instance(
        self: &Arc<Self>,
        name: &str,
        purpose: Purpose,
        frozen: bool,
    ) -> Result<Option<String>, ApiError> {
        // Checked and counted under one lock: a drain either sees this
        // fork under way and waits for it, or this fork sees the drain.
        // (A refill decides to fork before it gets here, across awaits.)
        if let Some(f) = lock(&self.warm.state).functions.get_mut(name) {
            if purpose == Purpose::PreWarm && f.drained {
                return Ok(None);
            }
            f.forking += 1;
        }
        let r = self.fork_pool_instance_counted(name, purpose, frozen).await;
        if let Some(f) = lock(&self.warm.state).functions.get_mut(name) {
            f.forking = f.forking.saturating_sub(1);
        }
        r
    }

    /// Forks one pool instance of `name` if the budget admits it (evicting
    /// idle instances of others as it says); frozen for a pre-warm.
    /// `Ok(None)`: the budget said no.
    async fn fork_pool_instance_counted(
        self: &Arc<Self>,
        name: &str,
        purpose: Purpose,
        frozen: bool,
    ) -> Result<Option<String>, ApiError> {
        self.refuse_when_stopping()?;
        let id = self.warm.new_id(name);
        let parent = self.warm.ensure_parent(name)?;
        // Made first: nothing to undo in the books if it fails (the
        // relay thread ends when the pipes close).
        let log = self.log_path(&id);
        let (relay, stdio) = Relay::start(&id, &log)
            .map_err(|e| ApiError::internal(format!("output relay of {id:?}: {e}")))?;
        let admitted = {
            let mut st = lock(&self.warm.state);
            let st = &mut *st;
            let fp = st.function(name)?;
            let (bytes, cost, concurrency) = (fp.bytes_per_instance, fp.fork_cost, fp.concurrency);
            let slots = &st.slots;
            match st
                .budget
                .admit(name.to_string(), id.clone(), bytes, cost, purpose, |i| {
                    slots.get(i).is_some_and(|s| s.leased == 0)
                }) {
                Ok(Admission::Admitted { evicted }) => {
                    for v in &evicted {
                        let _ = st.slots.remove_instance(v);
                    }
                    Ok(Some((evicted, concurrency)))
                }
                Ok(Admission::NotWorthIt) | Err(PoolError::OverBudget { .. }) => Ok(None),
                Err(e) => Err(pool_error(e)),
            }
        };
        // Only a pre-warm copies the write set: the copies cost the fork
        // what they save the first request, so they pay only off the
        // request's path.
        let (populate, has_write_set) = {
            let st = lock(&self.warm.state);
            let ws = st.functions.get(name).and_then(|f| f.write_set.clone());
            let has = ws.is_some();
            (ws.filter(|_| purpose == Purpose::PreWarm), has)
        };
        let (evicted, concurrency) = match admitted {
            Ok(Some(a)) => a,
            refused => {
                // The relay's thread ends with the pipes dropped here.
                drop((relay, stdio));
                let _ = fs::remove_file(&log);
                return refused.map(|_| None);
            }
        };
        for v in evicted {
            self.metrics.record_eviction(name);
            self.destroy_pool_instance(&v, "evicted for another instance")
                .await;
        }
        let path = self.start_path(name);
        let req = ForkRequest {
            id: id.clone(),
            stdio: stdio.map(Some),
            cgroups_path: Some(parent.join(&id)),
            populate: populate.clone(),
            ..Default::default()
        };
        lock(&self.warm.state).members.insert(
            id.clone(),
            Member {
                function: name.to_string(),
                role: Role::Pool {
                    idle_since: Some(Instant::now()),
                },
                record: populate.is_none() && !has_write_set,
            },
        );
        let inst = match self.fork(name, req, None).await {
            Ok(i) => i,
            Err(e) => {
                let mut st = lock(&self.warm.state);
                st.members.remove(&id);
                let _ = st.budget.remove(&id);
                drop(st);
                let _ = fs::remove_file(&log);
                return Err(e);
            }
        };
        *lock(&inst.relay) = Some(relay);
        self.note_fork(name, path, &inst);
        if frozen {
            let c = self.runtime.container(&id)?;
            if let Err(e) = blocking(move || Ok(c.pause()?)).await {
                self.destroy_pool_instance(&id, "failed to freeze").await;
                return Err(e);
            }
        }
        let measured = self.instance_memory(&id);
        let mut st = lock(&self.warm.state);
        if inst.exit_status().is_some() {
            // Died at once: the exit watcher found no membership to clean.
            drop(st);
            self.destroy_pool_instance(&id, "exited right after its fork")
                .await;
            return Err(ApiError::internal(format!(
                "pool instance {id:?} of {name:?} exited right after its fork"
            )));
        }
        st.slots
            .add_instance(name.to_string(), id.clone(), concurrency, frozen)
            .map_err(pool_error)?;
        if let (Some(bytes), Ok(fp)) = (measured, st.function(name)) {
            fp.bytes_per_instance = bytes.max(1 << 20);
            // The memory economy (opt-in) weighs keep-alive by real size.
            fp.policy
                .set_memory(&name.to_string(), fp.bytes_per_instance)
                .map_err(pool_error)?;
        }
        tracing::info!(container = %id, function = %name, frozen, ?purpose, "pool instance ready");
        Ok(Some(id))
    }

    /// What the instance's memory cgroup is charged now.
    fn instance_memory(&self, id: &str) -> Option<u64> {
        let c = self.runtime.container(id).ok()?;
        crate::metrics::instance_usage(&c)
            .map(|u| u.memory_bytes)
            .filter(|b| *b > 0)
    }

    /// 503 once sproutd stops: its shutdown is deleting the pool, so
    /// nothing may be taken from it or added to it.
    fn refuse_when_stopping(&self) -> Result<(), ApiError> {
        if self.warm.stopping.load(Ordering::Acquire) {
            return Err(ApiError::new(503, "sproutd is shutting down"));
        }
        Ok(())
    }

    /// Deletes a pool instance and every trace of it in the pool.
    async fn destroy_pool_instance(self: &Arc<Self>, id: &str, why: &str) {
        self.forget_pool_instance(id);
        tracing::info!(container = %id, why, "destroying pool instance");
        if let Err(e) = self.delete(id, true).await
            && e.status != 404
        {
            tracing::warn!(container = %id, "deleting pool instance: {}", e.message);
        }
    }

    /// Drops `id` from the pool's books (it is gone or going). Its leases
    /// are void.
    pub(super) fn forget_pool_instance(&self, id: &str) -> Option<String> {
        let mut st = lock(&self.warm.state);
        let member = st.members.remove(id);
        // Requests that end with it: its claim, or the leases it served
        // (void now; their holders' give-back finds nothing). Its slots and
        // budget go even without a member (a fork that finished after it
        // was forgotten).
        let mut ended: Vec<Instant> = Vec::new();
        if let Ok(void) = st.slots.remove_gone(&id.to_string()) {
            for l in void {
                ended.extend(st.leases.remove(&l).map(|r| r.since));
            }
        }
        let _ = st.budget.remove(&id.to_string());
        let m = member?;
        if let Role::Claimed { since, .. } = m.role {
            ended.push(since);
        }
        let now = self.warm.now();
        if let Ok(fp) = st.function(&m.function) {
            for since in ended {
                let _ = fp.finish(&m.function, now, since.elapsed());
            }
        }
        Some(m.function)
    }

    /// An instance exited: a pool instance is dropped and replaced (the
    /// reconciler forks again if the policy wants it).
    pub(super) fn pool_instance_exited(self: &Arc<Self>, id: &str) {
        if !self.warm.is_pool_member(id) {
            return;
        }
        let Some(function) = self.forget_pool_instance(id) else {
            return;
        };
        self.metrics.record_replaced_crash(&function);
        tracing::warn!(container = %id, function = %function, "pool instance exited; replacing it");
        let d = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = d.delete(&id, true).await
                && e.status != 404
            {
                tracing::warn!(container = %id, "deleting exited pool instance: {}", e.message);
            }
            d.warm.wake(&function);
        });
    }

    pub(super) fn log_path(&self, id: &str) -> PathBuf {
        self.paths.logs.join(format!("{id}.log"))
    }

    // ---- the reconciler -------------------------------------------

    /// Starts the task that carries out the policy's plans.
    pub(super) fn start_reconciler(self: &Arc<Self>) {
        let Some(mut rx) = lock(&self.warm.wake_rx).take() else {
            return;
        };
        let d = Arc::downgrade(self);
        let names: Vec<String> = lock(&self.warm.state).functions.keys().cloned().collect();
        tokio::spawn(async move {
            let mut timers: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
            let mut pending: Vec<String> = names;
            loop {
                for name in pending.drain(..) {
                    let Some(d) = d.upgrade() else { return };
                    if d.ops.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Err(e) = d.reconcile(&name).await
                        && e.status != 404
                    {
                        tracing::warn!(function = %name, "pool reconcile: {}", e.message);
                    }
                    if let Some(at) = lock(&d.warm.state)
                        .functions
                        .get(&name)
                        .and_then(|f| f.review_at)
                    {
                        timers.push(Reverse((at, name.clone())));
                    }
                }
                let next = timers.peek().map(|Reverse((at, _))| *at);
                let sleep = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(name) => {
                            pending.push(name);
                            while let Ok(n) = rx.try_recv() {
                                if !pending.contains(&n) {
                                    pending.push(n);
                                }
                            }
                        }
                        None => return,
                    },
                    _ = sleep => {
                        let now = Instant::now();
                        while let Some(Reverse((at, _))) = timers.peek() {
                            if *at > now {
                                break;
                            }
                            let Reverse((_, name)) = timers.pop().expect("peeked");
                            if !pending.contains(&name) {
                                pending.push(name);
                            }
                        }
                    }
                }
            }
        });
    }

    /// Brings one function's pool to its plan: forks up to the target
    /// (or `min_warm`), unloads idle instances above it (longest idle
    /// first), freezes instances idle for [`FREEZE_AFTER`]. Returns how
    /// many it forked.
    pub(super) async fn reconcile(self: &Arc<Self>, name: &str) -> Result<u32, ApiError> {
        let Some(_reconciling) = Reconciling::start(self, name) else {
            return Ok(0);
        };
        let (to_fork, victims, to_freeze) = {
            let mut st = lock(&self.warm.state);
            let now = self.warm.now();
            let key = name.to_string();
            let sizing = st.sizing(name, now)?;
            let mut idle: Vec<(Instant, String, bool)> = st
                .slots
                .instances_of(&key)
                .filter(|(_, s)| s.leased == 0)
                .map(|(id, s)| {
                    let since = match st.members.get(id) {
                        Some(Member {
                            role:
                                Role::Pool {
                                    idle_since: Some(t),
                                },
                            ..
                        }) => *t,
                        _ => Instant::now(),
                    };
                    (since, id.clone(), s.frozen)
                })
                .collect();
            idle.sort();
            let Sizing {
                plan,
                target,
                loaded,
                pre_warm,
            } = sizing;
            let fp = st.function(name)?;
            let to_fork = if pre_warm && target > loaded {
                target - loaded
            } else {
                0
            };
            let mut victims = Vec::new();
            if target < loaded {
                let excess = (loaded - target) as usize;
                victims = idle
                    .iter()
                    .take(excess)
                    .map(|(_, id, _)| id.clone())
                    .collect();
            }
            let instant_now = Instant::now();
            let mut to_freeze = Vec::new();
            let mut next_freeze: Option<Instant> = None;
            for (since, id, frozen) in &idle {
                if *frozen || victims.contains(id) {
                    continue;
                }
                let due = *since + FREEZE_AFTER;
                if due <= instant_now {
                    to_freeze.push(id.clone());
                } else {
                    next_freeze = Some(next_freeze.map_or(due, |n| n.min(due)));
                }
            }
            let review = plan
                .review_at
                .filter(|at| *at > now)
                .map(|at| instant_now + (at - now));
            fp.review_at = match (review, next_freeze) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let victims = st.take_idle(victims);
            (to_fork, victims, to_freeze)
        };
        for id in victims {
            self.destroy_pool_instance(&id, "unloaded by the policy")
                .await;
        }
        for id in to_freeze {
            // Marked frozen first: a lease that comes while the freezer
            // works sees `woke` and thaws it (thawing is idempotent); one
            // that came before the pause took effect is found below.
            if lock(&self.warm.state).slots.freeze(&id).is_err() {
                continue;
            }
            let Ok(c) = self.runtime.container(&id) else {
                continue;
            };
            let c2 = c.clone();
            let frozen = blocking(move || {
                c2.cgroup()
                    .freeze()
                    .map_err(|e| ApiError::internal(e.to_string()))
            })
            .await;
            let leased = lock(&self.warm.state)
                .slots
                .get(&id)
                .is_none_or(|s| s.leased > 0 || !s.frozen);
            if frozen.is_err() || leased {
                let _ = thaw(&c);
            }
        }
        let mut forked = 0;
        for _ in 0..to_fork {
            match self.fork_pool_instance(name, Purpose::PreWarm, true).await {
                Ok(Some(_)) => forked += 1,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(function = %name, "pre-warm fork failed: {}", e.message);
                    break;
                }
            }
        }
        if forked > 0 {
            self.warm.save_function(name);
        }
        Ok(forked)
    }

    /// sproutd stops: the pool instances nobody claimed are deleted (the
    /// next sproutd could not use them: their output relay dies with this
    /// one), and the pool's cgroups with them. Claimed ones live on.
    pub async fn shutdown_pool(self: &Arc<Self>) {
        self.warm.stopping.store(true, Ordering::Release);
        // No claim or lease starts from here (they check `stopping`);
        // forks and reconciliations under way end first, so that what
        // they add to the pool is seen below rather than left frozen.
        let deadline = Instant::now() + DRAIN_FORKS_TIMEOUT;
        while lock(&self.warm.state)
            .functions
            .values()
            .any(|f| f.forking > 0 || f.reconciling > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ids: Vec<String> = lock(&self.warm.state)
            .members
            .iter()
            .filter(|(_, m)| matches!(m.role, Role::Pool { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.destroy_pool_instance(id, "sproutd stops").await;
        }
        let functions: Vec<String> = lock(&self.warm.state).functions.keys().cloned().collect();
        let claimed: Vec<String> = lock(&self.warm.state)
            .members
            .values()
            .map(|m| m.function.clone())
            .collect();
        let parents: Vec<Cgroup> = functions
            .iter()
            .filter(|f| !claimed.contains(f))
            .flat_map(|f| self.warm.take_parents(f))
            .collect();
        remove_parents(parents).await;
        if !ids.is_empty() {
            tracing::info!(count = ids.len(), "deleted the pool's instances");
        }
    }

    /// Pool instances found at startup: their relay died with the old
    /// sproutd, so they are deleted (the policy forks new ones).
    pub(super) fn destroy_stale_pool_instances(self: &Arc<Self>, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let d = self.clone();
        tokio::spawn(async move {
            for id in ids {
                tracing::info!(container = %id, "deleting a pool instance of the previous sproutd");
                if let Err(e) = d.delete(&id, true).await
                    && e.status != 404
                {
                    tracing::warn!(container = %id, "deleting a stale pool instance: {}", e.message);
                }
            }
        });
    }
}

/// Removes pool cgroups (a function's, the pool's top one, in that
/// order) on a blocking thread: a directory still emptying is waited for
/// up to the runtime's deadline, which must not stall an async worker.
pub(super) async fn remove_parents(parents: Vec<Cgroup>) {
    if parents.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for cg in parents {
            if let Err(e) = cg.destroy() {
                tracing::warn!("removing a pool cgroup: {e}");
            }
        }
    })
    .await;
}

/// Thaws an instance's cgroup; a no-op when it is not frozen (a claim or
/// lease may race the reconciler's freeze).
fn thaw(c: &sprout_runtime::Container) -> Result<(), ApiError> {
    c.cgroup()
        .thaw()
        .map_err(|e| ApiError::internal(format!("thawing {}: {e}", c.id())))
}

/// Is a SIGKILL pending for `pid`? A frozen task that was killed stays
/// frozen (v1 freezer) and would die the moment a claim thaws it: such an
/// instance is never handed out.
fn doomed(pid: i32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let kill_bit = 1u64 << (libc::SIGKILL - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|mask| mask & kill_bit != 0)
}

/// Does the bundle at `dir` name a `cgroupsPath` of its own?
fn bundle_names_cgroup(dir: &std::path::Path) -> Result<bool, ApiError> {
    if !dir.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "bundle {} must be an absolute path",
            dir.display()
        )));
    }
    let b = sprout_runtime::spec::load_bundle(dir)
        .map_err(|e| ApiError::bad_request(format!("bundle {}: {e}", dir.display())))?;
    Ok(b.spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .is_some_and(|p| !p.as_os_str().is_empty()))
}

fn open_output(path: Option<&PathBuf>) -> Result<OwnedFd, ApiError> {
    if let Some(p) = path
        && !p.is_absolute()
    {
        return Err(ApiError::bad_request(format!(
            "{} must be an absolute path",
            p.display()
        )));
    }
    super::open_stdio(path.map(PathBuf::as_path), true)
        .map_err(|e| ApiError::bad_request(format!("opening an output file: {e}")))
}

/// A copy of the claimant's stdout and stderr (passed fds, or the files
/// it named) for one hand-out attempt: a failed attempt drops its copy,
/// the next gets another.
fn outputs_clone(
    stdio: &Option<[OwnedFd; 3]>,
    files: &Option<[OwnedFd; 2]>,
) -> Result<Option<[OwnedFd; 2]>, ApiError> {
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| ApiError::internal(format!("duplicating a stdio fd: {e}")))
    };
    Ok(match (stdio, files) {
        (Some([_, out, err]), _) | (None, Some([out, err])) => Some([dup(out)?, dup(err)?]),
        (None, None) => None,
    })
}
