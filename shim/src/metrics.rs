//! sproutd's metrics for `GET /metrics`: a thread-safe registry of what
//! happened (starts by path and their stage timings, claims, lease waits,
//! evictions, crashed warm instances replaced), with no I/O, rendered
//! together with what is true at scrape time ([`Gauges`], filled by the
//! caller: pool sizes, memory budget, netns pools, per-instance usage) as
//! Prometheus text format 0.0.4 ([`text::CONTENT_TYPE`]).
//!
//! Every metric is named `sprout_*`. Instance series are labelled `id`,
//! not `instance`, which Prometheus sets on every scraped series itself.

pub mod text;

#[cfg(test)]
mod check;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sprout_runtime::cgroups::Stats;

use crate::proto::{StartCounts, StartPath};
use text::{Exposition, HistogramSample, Kind};

/// Upper bounds of every duration histogram, in nanoseconds: 50 µs
/// doubling up to 13.1 s (19 buckets, then `+Inf`). A pool hit lands in
/// the first few, a cold restore of a large image in the last few.
pub const BUCKET_BOUNDS_NS: [u64; 19] = {
    let mut b = [0u64; 19];
    let mut i = 0;
    while i < b.len() {
        b[i] = 50_000 << i;
        i += 1;
    }
    b
};

/// Observations of durations, counted per bucket.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations in bucket `i` only (`≤ BUCKET_BOUNDS_NS[i]`, above
    /// the bound before); those above the last bound are in `count` only.
    per_bucket: [u64; BUCKET_BOUNDS_NS.len()],
    sum_ns: u128,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let ns = d.as_nanos();
        if let Some(i) = BUCKET_BOUNDS_NS.iter().position(|&b| ns <= b as u128) {
            self.per_bucket[i] += 1;
        }
        self.sum_ns += ns;
        self.count += 1;
    }

    /// `(bound in seconds, observations at or below it)`, ascending.
    fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        BUCKET_BOUNDS_NS
            .iter()
            .zip(self.per_bucket)
            .map(|(&bound, n)| {
                total += n;
                (bound as f64 / 1e9, total)
            })
            .collect()
    }

    fn write(&self, e: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let buckets = self.cumulative();
        e.histogram(
            name,
            labels,
            &HistogramSample {
                buckets: &buckets,
                sum: self.sum_ns as f64 / 1e9,
                count: self.count,
            },
        );
    }
}

fn path_index(path: StartPath) -> usize {
    StartPath::ALL
        .iter()
        .position(|&p| p == path)
        .expect("StartPath::ALL lists every path")
}

/// Everything recorded for one function.
#[derive(Debug, Clone, Default)]
struct FunctionSeries {
    /// By [`StartPath::ALL`]'s order.
    starts: [Histogram; StartPath::ALL.len()],
    stages: BTreeMap<String, Histogram>,
    claims: Histogram,
    lease_waits: Histogram,
    evictions: u64,
    replaced_crashes: u64,
}

impl FunctionSeries {
    fn start_counts(&self) -> StartCounts {
        let mut c = StartCounts::default();
        for (path, h) in StartPath::ALL.iter().zip(&self.starts) {
            match path {
                StartPath::PoolHit => c.pool_hit = h.count,
                StartPath::Fork => c.fork = h.count,
                StartPath::Restore => c.restore = h.count,
                StartPath::Cold => c.cold = h.count,
            }
        }
        c
    }
}

/// The registry. Share it (`Arc<Metrics>`) between whoever records and
/// whoever scrapes; each call holds a lock for a few map lookups only.
#[derive(Debug, Default)]
pub struct Metrics {
    functions: Mutex<BTreeMap<String, FunctionSeries>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, FunctionSeries>> {
        // A panic while holding the lock leaves counts, never a broken
        // invariant: go on with them.
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with(&self, function: &str, f: impl FnOnce(&mut FunctionSeries)) {
        let mut fs = self.lock();
        match fs.get_mut(function) {
            Some(s) => f(s),
            None => f(fs.entry(function.to_string()).or_default()),
        }
    }

    /// A start of an instance of `function` by `path`, `total` from the
    /// request to the instance running, with the start's stages (their
    /// names as the engine or the pool reports them).
    pub fn record_start(
        &self,
        function: &str,
        path: StartPath,
        total: Duration,
        stages: &[(String, Duration)],
    ) {
        self.with(function, |s| {
            s.starts[path_index(path)].observe(total);
            for (stage, d) in stages {
                match s.stages.get_mut(stage) {
                    Some(h) => h.observe(*d),
                    None => s.stages.entry(stage.clone()).or_default().observe(*d),
                }
            }
        });
    }

    /// A claim, from its arrival to the instance running.
    pub fn record_claim(&self, function: &str, elapsed: Duration) {
        self.with(function, |s| s.claims.observe(elapsed));
    }

    /// A lease request, from its arrival to the slot being usable.
    pub fn record_lease_wait(&self, function: &str, elapsed: Duration) {
        self.with(function, |s| s.lease_waits.observe(elapsed));
    }

    /// A warm instance evicted (by the policy or the memory budget).
    pub fn record_eviction(&self, function: &str) {
        self.with(function, |s| s.evictions += 1);
    }

    /// A warm instance found dead and replaced.
    pub fn record_replaced_crash(&self, function: &str) {
        self.with(function, |s| s.replaced_crashes += 1);
    }

    /// The starts recorded for `function`, by path.
    pub fn start_counts(&self, function: &str) -> StartCounts {
        self.lock()
            .get(function)
            .map(FunctionSeries::start_counts)
            .unwrap_or_default()
    }

    /// Drops everything recorded for `function` (once it is removed), so
    /// the registry does not grow with every name ever registered.
    pub fn forget(&self, function: &str) {
        self.lock().remove(function);
    }

    /// The whole exposition: the recorded series and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let fs = self.lock().clone();
        let mut e = Exposition::new();
        // Every function known from either side gets its start counters,
        // zeros included, so rates work from its first start on.
        let mut names: Vec<&str> = fs.keys().map(String::as_str).collect();
        names.extend(gauges.functions.iter().map(|f| f.function.as_str()));
        names.sort_unstable();
        names.dedup();
        render_recorded(&mut e, &fs, &names);
        render_pool(&mut e, gauges);
        render_netns(&mut e, &gauges.netns_pools);
        render_instances(&mut e, &gauges.instances);
        e.finish()
    }
}

fn render_recorded(e: &mut Exposition, fs: &BTreeMap<String, FunctionSeries>, names: &[&str]) {
    let none = FunctionSeries::default();
    let series = |name: &str| fs.get(name).unwrap_or(&none);

    e.family(
        "sprout_starts_total",
        Kind::Counter,
        "Instance starts by path: pool_hit (warm from the pool), fork (from a loaded \
         template), restore (template restored first), cold.",
    );
    for &f in names {
        let s = series(f);
        for (path, h) in StartPath::ALL.iter().zip(&s.starts) {
            e.sample(
                "sprout_starts_total",
                &[("function", f), ("path", path.as_str())],
                h.count,
            );
        }
    }

    e.family(
        "sprout_start_seconds",
        Kind::Histogram,
        "Time from a start request to the instance running, by path.",
    );
    for &f in names {
        for (path, h) in StartPath::ALL.iter().zip(&series(f).starts) {
            if h.count > 0 {
                h.write(
                    e,
                    "sprout_start_seconds",
                    &[("function", f), ("path", path.as_str())],
                );
            }
        }
    }

    e.family(
        "sprout_start_stage_seconds",
        Kind::Histogram,
        "Time of each stage of a start.",
    );
    for &f in names {
        for (stage, h) in &series(f).stages {
            h.write(
                e,
                "sprout_start_stage_seconds",
                &[("function", f), ("stage", stage)],
            );
        }
    }

    e.family(
        "sprout_claim_seconds",
        Kind::Histogram,
        "Time from a claim's arrival to its instance running.",
    );
    for &f in names {
        let h = &series(f).claims;
        if h.count > 0 {
            h.write(e, "sprout_claim_seconds", &[("function", f)]);
        }
    }

    e.family(
        "sprout_lease_wait_seconds",
        Kind::Histogram,
        "Time from a lease request's arrival to its request slot being usable.",
    );
    for &f in names {
        let h = &series(f).lease_waits;
        if h.count > 0 {
            h.write(e, "sprout_lease_wait_seconds", &[("function", f)]);
        }
    }

    e.family(
        "sprout_cold_start_ratio",
        Kind::Gauge,
        "Starts that were not pool hits over all starts, of functions with starts.",
    );
    for &f in names {
        let counts = series(f).start_counts();
        if counts != StartCounts::default() {
            e.sample(
                "sprout_cold_start_ratio",
                &[("function", f)],
                counts.cold_ratio(),
            );
        }
    }

    e.family(
        "sprout_pool_evictions_total",
        Kind::Counter,
        "Warm instances evicted by the policy or the memory budget.",
    );
    for &f in names {
        e.sample(
            "sprout_pool_evictions_total",
            &[("function", f)],
            series(f).evictions,
        );
    }

    e.family(
        "sprout_pool_replaced_crashes_total",
        Kind::Counter,
        "Warm instances found dead and replaced.",
    );
    for &f in names {
        e.sample(
            "sprout_pool_replaced_crashes_total",
            &[("function", f)],
            series(f).replaced_crashes,
        );
    }
}

/// What is true at scrape time; the caller fills it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub functions: Vec<FunctionGauges>,
    pub budget: BudgetGauges,
    pub netns_pools: Vec<NetnsPoolGauges>,
    pub instances: Vec<InstanceGauges>,
}

/// A function's pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionGauges {
    pub function: String,
    /// Warm instances, frozen, without leases.
    pub frozen: u64,
    /// Thawed instances without leases.
    pub idle: u64,
    /// Instances serving at least one lease or claimed.
    pub busy: u64,
    /// Leases held on the function's instances.
    pub leases: u64,
    /// Instances the policy wants loaded now.
    pub target: u64,
    /// The memory the budget books per instance.
    pub bytes_per_instance: u64,
}

/// The node memory budget of the pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetGauges {
    pub limit_bytes: u64,
    pub used_bytes: u64,
}

/// A VPC's pool of network namespaces (netplug's `PoolStatus`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetnsPoolGauges {
    pub vpc: String,
    /// Plugged namespaces waiting to be taken.
    pub ready: u64,
    /// Namespaces taken by instances.
    pub leased: u64,
    /// The pool's target size.
    pub target: u64,
    /// Namespaces handed out since the VPC was made (a counter).
    pub takes: u64,
    /// Takes that found the pool empty (a counter).
    pub misses: u64,
}

/// One instance's resource usage, labelled by its id and function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceGauges {
    pub id: String,
    pub function: String,
    pub usage: InstanceUsage,
}

/// What an instance's cgroup has used (see [`instance_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceUsage {
    /// CPU time of all its processes, user and system, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory charged to its cgroup now (on cgroup v1 page cache
    /// included, as `memory.usage_in_bytes` counts it).
    pub memory_bytes: u64,
    /// Page faults served without I/O.
    pub minor_faults: u64,
    /// Page faults that had to read from storage.
    pub major_faults: u64,
}

impl InstanceUsage {
    /// From the runtime's cgroup statistics: `memory.stat`'s `pgfault`
    /// (all faults) and `pgmajfault`. On v1 the `total_` keys count the
    /// instance's child cgroups too, so they are preferred; v2's keys are
    /// hierarchical already.
    pub fn from_stats(st: &Stats) -> Self {
        let raw = |key: &str| {
            st.memory
                .raw
                .get(&format!("total_{key}"))
                .or_else(|| st.memory.raw.get(key))
                .copied()
                .unwrap_or(0)
        };
        let (faults, major) = (raw("pgfault"), raw("pgmajfault"));
        Self {
            cpu_ns: st.cpu.usage.total,
            memory_bytes: st.memory.usage.usage,
            minor_faults: faults.saturating_sub(major),
            major_faults: major,
        }
    }
}

/// The usage of `container`'s cgroup now; `None` when its statistics
/// cannot be read (the container is gone or its cgroup with it).
pub fn instance_usage(container: &sprout_runtime::Container) -> Option<InstanceUsage> {
    match container.stats() {
        Ok(st) => Some(InstanceUsage::from_stats(&st)),
        Err(e) => {
            tracing::debug!(container = %container.id(), "no usage for the metrics: {e}");
            None
        }
    }
}

fn render_pool(e: &mut Exposition, g: &Gauges) {
    e.family(
        "sprout_pool_instances",
        Kind::Gauge,
        "A function's pool instances by state: frozen (warm), idle (thawed, no lease), busy.",
    );
    for f in &g.functions {
        for (state, n) in [("frozen", f.frozen), ("idle", f.idle), ("busy", f.busy)] {
            e.sample(
                "sprout_pool_instances",
                &[("function", &f.function), ("state", state)],
                n,
            );
        }
    }
    let per_function = |e: &mut Exposition, name, help, value: fn(&FunctionGauges) -> u64| {
        e.family(name, Kind::Gauge, help);
        for f in &g.functions {
            e.sample(name, &[("function", &f.function)], value(f));
        }
    };
    per_function(
        e,
        "sprout_pool_leases",
        "Leases held on a function's instances.",
        |f| f.leases,
    );
    per_function(
        e,
        "sprout_pool_target_instances",
        "Instances the policy wants loaded for a function now.",
        |f| f.target,
    );
    per_function(
        e,
        "sprout_pool_instance_bytes",
        "Memory the budget books per instance of a function.",
        |f| f.bytes_per_instance,
    );
    per_function(
        e,
        "sprout_pool_held_bytes",
        "Memory the budget books for a function's pool instances.",
        |f| {
            f.bytes_per_instance
                .saturating_mul(f.frozen + f.idle + f.busy)
        },
    );
    e.family(
        "sprout_pool_budget_bytes",
        Kind::Gauge,
        "The node memory budget of the warm pool.",
    );
    e.sample("sprout_pool_budget_bytes", &[], g.budget.limit_bytes);
    e.family(
        "sprout_pool_budget_used_bytes",
        Kind::Gauge,
        "Memory booked against the node budget.",
    );
    e.sample("sprout_pool_budget_used_bytes", &[], g.budget.used_bytes);
}

fn render_netns(e: &mut Exposition, pools: &[NetnsPoolGauges]) {
    e.family(
        "sprout_netns_pool_namespaces",
        Kind::Gauge,
        "Network namespaces of a VPC's pool: ready (plugged, waiting) or leased \
         (taken by instances).",
    );
    for p in pools {
        for (state, n) in [("ready", p.ready), ("leased", p.leased)] {
            e.sample(
                "sprout_netns_pool_namespaces",
                &[("vpc", &p.vpc), ("state", state)],
                n,
            );
        }
    }
    let per_vpc = |e: &mut Exposition, name, kind, help, value: fn(&NetnsPoolGauges) -> u64| {
        e.family(name, kind, help);
        for p in pools {
            e.sample(name, &[("vpc", &p.vpc)], value(p));
        }
    };
    per_vpc(
        e,
        "sprout_netns_pool_target",
        Kind::Gauge,
        "Target size of a VPC's namespace pool.",
        |p| p.target,
    );
    per_vpc(
        e,
        "sprout_netns_takes_total",
        Kind::Counter,
        "Namespaces handed out from a VPC's pool.",
        |p| p.takes,
    );
    per_vpc(
        e,
        "sprout_netns_misses_total",
        Kind::Counter,
        "Takes that found a VPC's pool empty and made a namespace on the spot.",
        |p| p.misses,
    );
}

fn instance_labels(i: &InstanceGauges) -> [(&'static str, &str); 2] {
    [("id", &i.id), ("function", &i.function)]
}

fn render_instances(e: &mut Exposition, instances: &[InstanceGauges]) {
    e.family(
        "sprout_instance_cpu_seconds_total",
        Kind::Counter,
        "CPU time used by an instance's processes.",
    );
    for i in instances {
        e.sample(
            "sprout_instance_cpu_seconds_total",
            &instance_labels(i),
            i.usage.cpu_ns as f64 / 1e9,
        );
    }
    e.family(
        "sprout_instance_memory_bytes",
        Kind::Gauge,
        "Memory charged to an instance's cgroup.",
    );
    for i in instances {
        e.sample(
            "sprout_instance_memory_bytes",
            &instance_labels(i),
            i.usage.memory_bytes,
        );
    }
    e.family(
        "sprout_instance_page_faults_total",
        Kind::Counter,
        "Page faults of an instance's processes: minor (no I/O) or major (read from storage).",
    );
    for i in instances {
        for (kind, n) in [
            ("minor", i.usage.minor_faults),
            ("major", i.usage.major_faults),
        ] {
            let [id, function] = instance_labels(i);
            e.sample(
                "sprout_instance_page_faults_total",
                &[id, function, ("kind", kind)],
                n,
            );
        }
    }
}

#[cfg(test)]
mod tests;
