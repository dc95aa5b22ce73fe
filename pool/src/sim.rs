//! Replays a trace through policies, the way sproutd would drive them:
//! each request takes a slot ([`SlotTable`]) on a loaded instance or
//! starts one cold; after every event the function's [`Plan`] is applied
//! (pre-warm up to the target, unload idle instances above it, the one
//! idle longest first), under an optional [`MemoryBudget`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use crate::breakdown::rate_class;
use crate::budget::{Admission, MemoryBudget, Purpose};
use crate::error::PoolError;
use crate::idle::Tier;
use crate::policy::{Plan, Policy, PolicyConfig};
use crate::slots::{Acquire, LeaseId, SlotTable};
use crate::time::Timestamp;
use crate::trace::{FunctionSpec, Invocation, Trace};

const MB: u64 = 1 << 20;

/// A cold start's latency: restoring the function's image, assumed to grow
/// with its memory (50 ms + 0.25 ms/MB; ours, not from the traces). It
/// delays the request and is the "cost" Greedy-Dual weighs.
pub fn cold_start_cost(memory_mb: f64) -> Duration {
    Duration::from_secs_f64(0.050 + memory_mb * 0.000_25)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Finish {
        function: u32,
        lease: LeaseId,
        ran: Duration,
    },
    Review {
        function: u32,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct FunctionCounts {
    invocations: u64,
    cold: u64,
    idle_mb_secs: f64,
    /// When the function's last request finished, while none is in flight.
    idle_since: Option<Timestamp>,
    idle_times: RunningStats,
    /// Idle periods by the tier that set their windows, in [`TIERS`] order.
    periods_by_tier: [u64; TIERS.len()],
}

const TIERS: [Tier; 6] = [
    Tier::Standard,
    Tier::Histogram,
    Tier::TimeSeries,
    Tier::Periodic,
    Tier::Fixed,
    Tier::NoPool,
];

/// Welford's running mean and variance.
#[derive(Clone, Copy, Debug, Default)]
struct RunningStats {
    n: u64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    fn record(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Coefficient of variation; `None` below two samples or a zero mean.
    fn cv(&self) -> Option<f64> {
        (self.n >= 2 && self.mean > 0.0).then(|| (self.m2 / self.n as f64).sqrt() / self.mean)
    }
}

/// One function's results under one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionOutcome {
    pub function: u32,
    pub invocations: u64,
    pub cold_starts: u64,
    /// MB-seconds its instances spent loaded with no request.
    pub idle_mb_secs: f64,
    /// Its idle times (last finish to next arrival) as the policy saw them.
    pub idle_times: u64,
    pub idle_time_mean_secs: f64,
    pub idle_time_cv: Option<f64>,
    /// The tier that set the windows of most of its idle periods.
    pub main_tier: Option<Tier>,
}

impl FunctionOutcome {
    pub fn cold_pct(&self) -> f64 {
        100.0 * ratio(self.cold_starts, self.invocations)
    }
}

/// One policy's results over a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub label: String,
    pub invocations: u64,
    pub cold_starts: u64,
    /// Requests refused because the budget held only busy instances.
    pub dropped: u64,
    /// Functions invoked at least once.
    pub functions: usize,
    /// Per-function cold-start percentages' 50th and 75th percentiles.
    pub p50_cold_pct: f64,
    pub p75_cold_pct: f64,
    /// The 75th percentile per app (all its functions' requests together),
    /// the paper's unit.
    pub p75_app_cold_pct: f64,
    /// Seconds instances spent loaded with no request, and × their memory.
    pub idle_instance_secs: f64,
    pub idle_gb_secs: f64,
    pub peak_memory_mb: f64,
    /// Which rule set the windows of how many idle periods.
    pub idle_periods_by_tier: BTreeMap<Tier, u64>,
    /// Idle GB-seconds by the tier the function was in when they accrued.
    pub idle_gb_secs_by_tier: BTreeMap<Tier, f64>,
    /// Per-function cold-start % p75 by how often the function was invoked:
    /// at most hourly, at most once a minute, more often.
    pub p75_cold_pct_by_rate: [f64; 3],
    /// Functions in each of those classes.
    pub functions_by_rate: [usize; 3],
    /// Idle GB-seconds spent on each of those classes.
    pub idle_gb_secs_by_rate: [f64; 3],
    /// Every function's own results, by function id.
    pub per_function: Vec<FunctionOutcome>,
}

impl Report {
    pub fn cold_ratio(&self) -> f64 {
        ratio(self.cold_starts, self.invocations)
    }
}

pub(crate) fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Nearest-rank percentile of unsorted values; 0 when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

/// One policy replaying one trace.
pub struct Simulator<'t> {
    label: String,
    functions: &'t [FunctionSpec],
    policy: Policy<u32>,
    slots: SlotTable<u32, u64>,
    budget: Option<MemoryBudget<u32, u64>>,
    events: BinaryHeap<Reverse<(Timestamp, u64, Event)>>,
    seq: u64,
    review_at: Vec<Option<Timestamp>>,
    idle_since: BTreeMap<u64, Timestamp>,
    next_instance: u64,
    counts: Vec<FunctionCounts>,
    dropped: u64,
    idle_instance_secs: f64,
    idle_mb_secs: f64,
    used_mb: f64,
    peak_mb: f64,
    tiers: BTreeMap<Tier, u64>,
    idle_mb_secs_by_tier: BTreeMap<Tier, f64>,
    days: f64,
}

impl<'t> Simulator<'t> {
    pub fn new(
        label: impl Into<String>,
        trace: &'t Trace,
        config: PolicyConfig,
        budget_mb: Option<u64>,
    ) -> Result<Self, PoolError> {
        let mut policy = Policy::new(config)?;
        for f in &trace.functions {
            policy.register(f.id, f.slots)?;
            policy.set_memory(&f.id, (f.memory_mb * MB as f64) as u64)?;
        }
        Ok(Simulator {
            label: label.into(),
            functions: &trace.functions,
            policy,
            slots: SlotTable::new(),
            budget: budget_mb.map(|mb| MemoryBudget::new(mb * MB)),
            events: BinaryHeap::new(),
            seq: 0,
            review_at: vec![None; trace.functions.len()],
            idle_since: BTreeMap::new(),
            next_instance: 0,
            counts: vec![FunctionCounts::default(); trace.functions.len()],
            dropped: 0,
            idle_instance_secs: 0.0,
            idle_mb_secs: 0.0,
            used_mb: 0.0,
            peak_mb: 0.0,
            tiers: BTreeMap::new(),
            idle_mb_secs_by_tier: BTreeMap::new(),
            days: trace.config.days,
        })
    }

    pub fn arrive(&mut self, inv: &Invocation) -> Result<(), PoolError> {
        self.advance_to(inv.start)?;
        let (f, now) = (inv.function, inv.start);
        let spec = &self.functions[f as usize];
        let (lease, cold) = match self.slots.acquire(&f) {
            Acquire::Leased(lease) => (lease, false),
            Acquire::NoFreeSlot => {
                let Some(instance) = self.load(f, now, Purpose::Demand)? else {
                    self.dropped += 1;
                    return Ok(());
                };
                self.idle_since.remove(&instance);
                match self.slots.acquire(&f) {
                    Acquire::Leased(lease) => (lease, true),
                    Acquire::NoFreeSlot => unreachable!("a fresh instance has free slots"),
                }
            }
        };
        self.end_idle(lease.instance, now);
        if let Some(b) = self.budget.as_mut() {
            b.touch(&lease.instance)?;
        }
        self.policy.on_arrival(&f, now)?;
        let counts = &mut self.counts[f as usize];
        if let Some(since) = counts.idle_since.take() {
            counts.idle_times.record((now - since).as_secs_f64());
        }
        counts.invocations += 1;
        counts.cold += u64::from(cold);
        let delay = if cold {
            cold_start_cost(spec.memory_mb)
        } else {
            Duration::ZERO
        };
        self.push(
            now + delay + inv.duration,
            Event::Finish {
                function: f,
                lease: lease.id,
                ran: inv.duration,
            },
        );
        self.reconcile(f, now)
    }

    /// Runs every event up to `end` and closes the books there.
    pub fn finish(mut self, end: Timestamp) -> Result<Report, PoolError> {
        self.advance_to(end)?;
        let open = std::mem::take(&mut self.idle_since);
        for (instance, since) in open {
            self.charge_idle(instance, since, end);
        }
        let mut cold_pct: Vec<f64> = self
            .counts
            .iter()
            .filter(|c| c.invocations > 0)
            .map(|c| 100.0 * ratio(c.cold, c.invocations))
            .collect();
        let mut apps: BTreeMap<u32, FunctionCounts> = BTreeMap::new();
        for (c, spec) in self.counts.iter().zip(self.functions) {
            let app = apps.entry(spec.app).or_default();
            app.invocations += c.invocations;
            app.cold += c.cold;
        }
        let mut app_cold_pct: Vec<f64> = apps
            .values()
            .filter(|c| c.invocations > 0)
            .map(|c| 100.0 * ratio(c.cold, c.invocations))
            .collect();
        let mut by_rate: [Vec<f64>; 3] = Default::default();
        let mut idle_by_rate = [0.0; 3];
        for c in self.counts.iter() {
            let class = rate_class(c.invocations, self.days);
            idle_by_rate[class] += c.idle_mb_secs / 1024.0;
            if c.invocations > 0 {
                by_rate[class].push(100.0 * ratio(c.cold, c.invocations));
            }
        }
        let per_function = self
            .counts
            .iter()
            .zip(self.functions)
            .map(|(c, spec)| FunctionOutcome {
                function: spec.id,
                invocations: c.invocations,
                cold_starts: c.cold,
                idle_mb_secs: c.idle_mb_secs,
                idle_times: c.idle_times.n,
                idle_time_mean_secs: c.idle_times.mean,
                idle_time_cv: c.idle_times.cv(),
                main_tier: c
                    .periods_by_tier
                    .iter()
                    .zip(TIERS)
                    .filter(|(n, _)| **n > 0)
                    .max_by_key(|(n, _)| **n)
                    .map(|(_, t)| t),
            })
            .collect();
        Ok(Report {
            per_function,
            functions_by_rate: by_rate.each_ref().map(Vec::len),
            idle_gb_secs_by_rate: idle_by_rate,
            p75_cold_pct_by_rate: by_rate.map(|mut v| percentile(&mut v, 0.75)),
            idle_gb_secs_by_tier: self
                .idle_mb_secs_by_tier
                .into_iter()
                .map(|(t, mb)| (t, mb / 1024.0))
                .collect(),
            label: self.label,
            invocations: self.counts.iter().map(|c| c.invocations).sum(),
            cold_starts: self.counts.iter().map(|c| c.cold).sum(),
            dropped: self.dropped,
            functions: cold_pct.len(),
            p50_cold_pct: percentile(&mut cold_pct, 0.50),
            p75_cold_pct: percentile(&mut cold_pct, 0.75),
            p75_app_cold_pct: percentile(&mut app_cold_pct, 0.75),
            idle_instance_secs: self.idle_instance_secs,
            idle_gb_secs: self.idle_mb_secs / 1024.0,
            peak_memory_mb: self.peak_mb,
            idle_periods_by_tier: self.tiers,
        })
    }

    fn advance_to(&mut self, until: Timestamp) -> Result<(), PoolError> {
        while let Some(Reverse((at, _, _))) = self.events.peek() {
            if *at > until {
                break;
            }
            let Some(Reverse((at, _, event))) = self.events.pop() else {
                break;
            };
            match event {
                Event::Finish {
                    function,
                    lease,
                    ran,
                } => {
                    self.policy.on_finish(&function, at, ran)?;
                    let released = self.slots.release(lease)?;
                    if released.idle {
                        self.idle_since.insert(released.instance, at);
                    }
                    if self.policy.in_flight(&function)? == 0 {
                        let tier = self.policy.windows(&function)?.tier;
                        *self.tiers.entry(tier).or_default() += 1;
                        let counts = &mut self.counts[function as usize];
                        counts.idle_since = Some(at);
                        if let Some(i) = TIERS.iter().position(|t| *t == tier) {
                            counts.periods_by_tier[i] += 1;
                        }
                    }
                    self.reconcile(function, at)?;
                }
                Event::Review { function } => {
                    if self.review_at[function as usize] == Some(at) {
                        self.review_at[function as usize] = None;
                        self.reconcile(function, at)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies the function's plan: load up to it, unload idle instances above it.
    fn reconcile(&mut self, f: u32, now: Timestamp) -> Result<(), PoolError> {
        let plan: Plan = self.policy.plan(&f, now)?;
        let loaded = self.slots.instance_count(&f) as u32;
        if plan.pre_warm && plan.target > loaded {
            for _ in loaded..plan.target {
                if self.load(f, now, Purpose::PreWarm)?.is_none() {
                    break;
                }
            }
        } else if plan.target < loaded {
            let mut idle: Vec<(Timestamp, u64)> = self
                .slots
                .instances_of(&f)
                .filter(|(_, s)| s.leased == 0)
                .map(|(id, _)| (self.idle_since[id], *id))
                .collect();
            idle.sort();
            let excess = (loaded - plan.target) as usize;
            for (_, instance) in idle.into_iter().take(excess) {
                self.unload(instance, now)?;
            }
        }
        if let Some(at) = plan.review_at.filter(|at| *at > now)
            && self.review_at[f as usize].is_none_or(|scheduled| at < scheduled || scheduled <= now)
        {
            self.review_at[f as usize] = Some(at);
            self.push(at, Event::Review { function: f });
        }
        Ok(())
    }

    /// Loads an instance, idle from `now`; `None` when the budget refuses.
    fn load(&mut self, f: u32, now: Timestamp, purpose: Purpose) -> Result<Option<u64>, PoolError> {
        let spec = &self.functions[f as usize];
        let instance = self.next_instance;
        if let Some(budget) = self.budget.as_mut() {
            let bytes = (spec.memory_mb * MB as f64) as u64;
            let slots = &self.slots;
            let admitted = budget.admit(
                f,
                instance,
                bytes,
                cold_start_cost(spec.memory_mb),
                purpose,
                |id| slots.get(id).is_some_and(|s| s.leased == 0),
            );
            match admitted {
                Ok(Admission::Admitted { evicted }) => {
                    for victim in evicted {
                        self.drop_instance(victim, now)?;
                    }
                }
                Ok(Admission::NotWorthIt) | Err(PoolError::OverBudget { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        self.next_instance += 1;
        self.slots
            .add_instance(f, instance, spec.slots, purpose == Purpose::PreWarm)?;
        self.idle_since.insert(instance, now);
        self.used_mb += spec.memory_mb;
        self.peak_mb = self.peak_mb.max(self.used_mb);
        Ok(Some(instance))
    }

    fn unload(&mut self, instance: u64, now: Timestamp) -> Result<(), PoolError> {
        if let Some(b) = self.budget.as_mut() {
            b.remove(&instance)?;
        }
        self.drop_instance(instance, now)
    }

    /// Takes an idle instance out of the slot table and charges its idle time.
    fn drop_instance(&mut self, instance: u64, now: Timestamp) -> Result<(), PoolError> {
        self.end_idle(instance, now);
        let slots = self.slots.remove_instance(&instance)?;
        self.used_mb -= self.functions[slots.function as usize].memory_mb;
        Ok(())
    }

    fn end_idle(&mut self, instance: u64, now: Timestamp) {
        if let Some(since) = self.idle_since.remove(&instance) {
            self.charge_idle(instance, since, now);
        }
    }

    fn charge_idle(&mut self, instance: u64, since: Timestamp, until: Timestamp) {
        let secs = (until - since).as_secs_f64();
        let function = self.slots.get(&instance).map_or(0, |s| s.function);
        let mb_secs = secs * self.functions[function as usize].memory_mb;
        self.idle_instance_secs += secs;
        self.idle_mb_secs += mb_secs;
        self.counts[function as usize].idle_mb_secs += mb_secs;
        if let Ok(w) = self.policy.windows(&function) {
            *self.idle_mb_secs_by_tier.entry(w.tier).or_default() += mb_secs;
        }
    }

    fn push(&mut self, at: Timestamp, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }
}
