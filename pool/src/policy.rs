//! The warm-pool policy: per function, it watches arrivals and completions
//! and answers "how many instances should be loaded now, and when should I
//! ask again". It holds no instances and does no I/O; the caller (sproutd,
//! or the trace replayer) loads and unloads to match the answer, and
//! passes the time in.

use std::collections::HashMap;
use std::time::Duration;

use crate::Key;
use crate::concurrency::{ConcurrencyConfig, ConcurrencyModel};
use crate::error::{PoolError, name};
use crate::idle::{HybridConfig, IdleContext, IdleModel, Tier, Windows};
use crate::peak::PeakWindow;
use crate::time::Timestamp;

/// Which keep-alive rule the policy applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// Hybrid histogram for 0 ↔ 1, concurrency prediction for 1 → n.
    Hybrid(HybridConfig),
    /// Keep each instance for this long after its last request (the
    /// industry baseline: 10 min on AWS Lambda and OpenWhisk, 20 on Azure).
    FixedKeepAlive(Duration),
    /// Unload every instance as soon as it is idle.
    NoPool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyConfig {
    pub strategy: Strategy,
    pub concurrency: ConcurrencyConfig,
}

impl PolicyConfig {
    pub fn hybrid() -> Self {
        Self::with(Strategy::Hybrid(HybridConfig::default()))
    }

    pub fn fixed(keep_alive: Duration) -> Self {
        Self::with(Strategy::FixedKeepAlive(keep_alive))
    }

    pub fn no_pool() -> Self {
        Self::with(Strategy::NoPool)
    }

    fn with(strategy: Strategy) -> Self {
        PolicyConfig {
            strategy,
            concurrency: ConcurrencyConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), PoolError> {
        if let Strategy::Hybrid(h) = &self.strategy {
            h.validate()?;
        }
        let c = &self.concurrency;
        if c.stable_window.is_zero() || c.panic_window.is_zero() {
            return Err(PoolError::InvalidConfig {
                setting: "stable_window/panic_window",
                reason: "must be positive",
            });
        }
        if !(c.target_utilisation > 0.0 && c.target_utilisation <= 1.0) {
            return Err(PoolError::InvalidConfig {
                setting: "target_utilisation",
                reason: "must lie in (0, 1]",
            });
        }
        if !(c.panic_threshold >= 1.0 && c.panic_threshold.is_finite()) {
            return Err(PoolError::InvalidConfig {
                setting: "panic_threshold",
                reason: "must be a finite number of at least 1",
            });
        }
        Ok(())
    }
}

/// The policy's answer for one function at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Instances to hold loaded now, busy ones included: load (pre-warm)
    /// up to it, unload idle instances above it. Busy instances are never
    /// asked to go, so the target is at least the instances in use.
    pub target: u32,
    /// Whether to load up to the target; when false the target only caps
    /// what is kept (a fixed keep-alive never loads ahead of a request).
    pub pre_warm: bool,
    /// The rule behind the target.
    pub tier: Tier,
    /// When the target changes if nothing else happens; ask again then.
    pub review_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
struct FunctionState {
    slots: u32,
    in_flight: u32,
    invocations: u64,
    /// Set when the last in-flight request finished.
    idle_since: Option<Timestamp>,
    /// When the current (or last) busy period started.
    busy_since: Option<Timestamp>,
    /// One instance's memory, when the caller said.
    memory_mb: Option<f64>,
    /// Decided when the function went idle, applied until it is busy again.
    windows: Windows,
    idle: Option<IdleModel>,
    concurrency: ConcurrencyModel,
    peak_need: Option<PeakWindow>,
}

impl FunctionState {
    fn busy_need(&self) -> u32 {
        self.in_flight.div_ceil(self.slots)
    }
}

/// Per-function keep-alive decisions; see the crate docs for the loop.
#[derive(Clone, Debug)]
pub struct Policy<F: Key> {
    config: PolicyConfig,
    functions: HashMap<F, FunctionState>,
}

impl<F: Key> Policy<F> {
    pub fn new(config: PolicyConfig) -> Result<Self, PoolError> {
        config.validate()?;
        Ok(Policy {
            config,
            functions: HashMap::new(),
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Starts learning a function whose instances serve up to `slots`
    /// requests at once.
    pub fn register(&mut self, function: F, slots: u32) -> Result<(), PoolError> {
        if slots == 0 {
            return Err(PoolError::ZeroSlots(name(&function)));
        }
        if self.functions.contains_key(&function) {
            return Err(PoolError::FunctionExists(name(&function)));
        }
        let state = FunctionState {
            slots,
            in_flight: 0,
            invocations: 0,
            idle_since: None,
            busy_since: None,
            memory_mb: None,
            windows: self.first_windows(),
            idle: match &self.config.strategy {
                Strategy::Hybrid(h) => Some(IdleModel::new(h)),
                _ => None,
            },
            concurrency: ConcurrencyModel::new(self.config.concurrency),
            peak_need: match self.config.strategy {
                Strategy::FixedKeepAlive(k) => Some(PeakWindow::new(k)),
                _ => None,
            },
        };
        self.functions.insert(function, state);
        Ok(())
    }

    /// Forgets a function and everything learned about it.
    pub fn remove(&mut self, function: &F) -> Result<(), PoolError> {
        self.functions
            .remove(function)
            .map(drop)
            .ok_or_else(|| PoolError::UnknownFunction(name(function)))
    }

    pub fn contains(&self, function: &F) -> bool {
        self.functions.contains_key(function)
    }

    /// A request for `function` arrived. Ends an idle period, which the
    /// hybrid strategy records as one idle time.
    pub fn on_arrival(&mut self, function: &F, now: Timestamp) -> Result<(), PoolError> {
        let state = self.state_mut(function)?;
        if state.in_flight == 0 {
            state.busy_since = Some(now);
            if let Some(idle) = state.idle.as_mut() {
                if let Some(since) = state.idle_since.take() {
                    idle.record(now - since);
                }
                idle.record_start(now);
            }
        }
        state.in_flight += 1;
        state.invocations += 1;
        state.concurrency.record_arrival(now);
        let need = state.busy_need();
        if let Some(p) = state.peak_need.as_mut() {
            p.set(now, need);
        }
        Ok(())
    }

    /// A request for `function` finished after running for `ran`. When it
    /// was the last one in flight the function is idle from `now`, and its
    /// windows for this idle period are decided.
    pub fn on_finish(
        &mut self,
        function: &F,
        now: Timestamp,
        ran: Duration,
    ) -> Result<(), PoolError> {
        let strategy = self.config.strategy;
        let state = self.state_mut(function)?;
        if state.in_flight == 0 {
            return Err(PoolError::NothingInFlight(name(function)));
        }
        state.in_flight -= 1;
        state.concurrency.record_duration(ran);
        let need = state.busy_need();
        if let Some(p) = state.peak_need.as_mut() {
            p.set(now, need);
        }
        if state.in_flight == 0 {
            state.idle_since = Some(now);
            let context = IdleContext {
                memory_mb: state.memory_mb,
                busy_for: state.busy_since.map(|start| now - start),
            };
            state.windows = match (&strategy, &state.idle) {
                (Strategy::Hybrid(h), Some(idle)) => idle.windows_for(h, &context),
                _ => Self::fixed_windows(&strategy),
            };
        }
        Ok(())
    }

    /// Tells the policy how much memory one instance of `function` holds,
    /// which the memory economy weighs (until told, it assumes its
    /// `assumed_memory_mb`). Applies from the function's next idle period.
    pub fn set_memory(&mut self, function: &F, bytes: u64) -> Result<(), PoolError> {
        let state = self.state_mut(function)?;
        state.memory_mb = Some(bytes as f64 / (1024.0 * 1024.0));
        Ok(())
    }

    /// The windows the function's current (or next) idle period follows.
    /// Seeds the idle-time history with an idle time seen before (an
    /// orchestrator restarting with the history it persisted), as if a
    /// request had arrived after it. No effect on strategies without one.
    pub fn record_idle(&mut self, function: &F, idle: Duration) -> Result<(), PoolError> {
        let strategy = self.config.strategy;
        let state = self.state_mut(function)?;
        if let (Strategy::Hybrid(h), Some(model)) = (&strategy, state.idle.as_mut()) {
            model.record(idle);
            let context = IdleContext {
                memory_mb: state.memory_mb,
                busy_for: None,
            };
            state.windows = model.windows_for(h, &context);
        }
        Ok(())
    }

    pub fn windows(&self, function: &F) -> Result<Windows, PoolError> {
        Ok(self.state(function)?.windows)
    }

    /// Requests of `function` currently in flight.
    pub fn in_flight(&self, function: &F) -> Result<u32, PoolError> {
        Ok(self.state(function)?.in_flight)
    }

    /// How many instances `function` should have loaded at `now`.
    pub fn plan(&self, function: &F, now: Timestamp) -> Result<Plan, PoolError> {
        let state = self.state(function)?;
        Ok(match self.config.strategy {
            Strategy::NoPool => Plan {
                target: state.busy_need(),
                pre_warm: false,
                tier: Tier::NoPool,
                review_at: None,
            },
            Strategy::FixedKeepAlive(_) => {
                let peak = state.peak_need.as_ref();
                Plan {
                    target: peak.map_or(0, |p| p.peak(now)).max(state.busy_need()),
                    pre_warm: false,
                    tier: Tier::Fixed,
                    review_at: peak.and_then(|p| p.next_drop(now)),
                }
            }
            Strategy::Hybrid(_) => Self::hybrid_plan(state, now),
        })
    }

    fn hybrid_plan(state: &FunctionState, now: Timestamp) -> Plan {
        let tier = state.windows.tier;
        let desired = state.concurrency.desired_instances(now, state.slots);
        let scale_down = state.concurrency.next_scale_down(now, state.slots);
        let Some(since) = state.idle_since.filter(|_| state.in_flight == 0) else {
            // Busy (or never invoked): what is in use, plus what the arrival
            // rate says will be.
            let target = if state.invocations == 0 {
                0
            } else {
                desired.max(state.busy_need())
            };
            return Plan {
                target,
                pre_warm: true,
                tier,
                review_at: scale_down,
            };
        };
        let load_at = since + state.windows.pre_warm;
        let unload_at = since + state.windows.keep_alive_until;
        if now >= unload_at {
            return Plan {
                target: 0,
                pre_warm: true,
                tier,
                review_at: None,
            };
        }
        if now < load_at {
            return Plan {
                target: 0,
                pre_warm: true,
                tier,
                review_at: Some(load_at),
            };
        }
        Plan {
            target: desired.max(1),
            pre_warm: true,
            tier,
            review_at: Some(scale_down.map_or(unload_at, |t| t.min(unload_at))),
        }
    }

    fn first_windows(&self) -> Windows {
        match &self.config.strategy {
            Strategy::Hybrid(h) => IdleModel::new(h).windows(h),
            other => Self::fixed_windows(other),
        }
    }

    fn fixed_windows(strategy: &Strategy) -> Windows {
        match strategy {
            Strategy::FixedKeepAlive(k) => Windows {
                tier: Tier::Fixed,
                pre_warm: Duration::ZERO,
                keep_alive_until: *k,
            },
            _ => Windows {
                tier: Tier::NoPool,
                pre_warm: Duration::ZERO,
                keep_alive_until: Duration::ZERO,
            },
        }
    }

    fn state(&self, function: &F) -> Result<&FunctionState, PoolError> {
        self.functions
            .get(function)
            .ok_or_else(|| PoolError::UnknownFunction(name(function)))
    }

    fn state_mut(&mut self, function: &F) -> Result<&mut FunctionState, PoolError> {
        self.functions
            .get_mut(function)
            .ok_or_else(|| PoolError::UnknownFunction(name(function)))
    }
}
