//! The node memory budget, and whom to evict when a new instance does not
//! fit: Greedy-Dual as in FaaSCache (ASPLOS'21). An instance's priority is
//! `clock + frequency × cost / size` — the expected benefit per byte of
//! keeping it (how often its function is used, what a cold start costs,
//! what it occupies) — aged by a clock that rises to each evicted priority,
//! so instances untouched for long lose to fresh ones. Lowest goes first.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::Key;
use crate::error::{PoolError, name};

/// Why an instance wants memory: a request waiting for it may evict any
/// idle instance; a speculative pre-warm only ones worth less than itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Demand,
    PreWarm,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Admission<I> {
    /// Admitted once the listed instances are unloaded (they are already
    /// off the books).
    Admitted { evicted: Vec<I> },
    /// A pre-warm that would evict instances worth more than itself.
    NotWorthIt,
}

#[derive(Clone, Debug)]
struct Held<F> {
    function: F,
    bytes: u64,
    cost_secs: f64,
    priority: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct FunctionUse {
    frequency: u64,
    instances: u32,
}

#[derive(Clone, Debug)]
pub struct MemoryBudget<F: Key, I: Key> {
    limit: u64,
    used: u64,
    clock: f64,
    held: BTreeMap<I, Held<F>>,
    usage: HashMap<F, FunctionUse>,
}

impl<F: Key, I: Key> MemoryBudget<F, I> {
    pub fn new(limit_bytes: u64) -> Self {
        MemoryBudget {
            limit: limit_bytes,
            used: 0,
            clock: 0.0,
            held: BTreeMap::new(),
            usage: HashMap::new(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn priority(&self, instance: &I) -> Option<f64> {
        self.held.get(instance).map(|h| h.priority)
    }

    /// Books `bytes` for a new `instance` of `function`, whose cold start
    /// costs `cost`, evicting idle instances (`evictable`) by lowest
    /// priority when it does not fit. Nothing changes on `Err` or
    /// `NotWorthIt`.
    pub fn admit(
        &mut self,
        function: F,
        instance: I,
        bytes: u64,
        cost: Duration,
        purpose: Purpose,
        evictable: impl Fn(&I) -> bool,
    ) -> Result<Admission<I>, PoolError> {
        if self.held.contains_key(&instance) {
            return Err(PoolError::InstanceExists(name(&instance)));
        }
        let free = self.limit.saturating_sub(self.used);
        let mut evicted = Vec::new();
        if bytes > free {
            let mut candidates: Vec<(&I, &Held<F>)> =
                self.held.iter().filter(|(id, _)| evictable(id)).collect();
            let evictable_bytes: u64 = candidates.iter().map(|(_, h)| h.bytes).sum();
            if bytes > free + evictable_bytes {
                return Err(PoolError::OverBudget {
                    needed: bytes,
                    limit: self.limit,
                    free,
                    evictable: evictable_bytes,
                });
            }
            candidates.sort_by(|a, b| a.1.priority.total_cmp(&b.1.priority));
            let own = self.fresh_priority(&function, cost, bytes);
            let mut freed = free;
            for (id, h) in candidates {
                if freed >= bytes {
                    break;
                }
                if purpose == Purpose::PreWarm && h.priority >= own {
                    return Ok(Admission::NotWorthIt);
                }
                freed += h.bytes;
                evicted.push(id.clone());
            }
            for id in &evicted {
                let h = self.forget(id).expect("candidate is held");
                self.clock = self.clock.max(h.priority);
            }
        }
        let priority = self.fresh_priority(&function, cost, bytes);
        self.usage.entry(function.clone()).or_default().instances += 1;
        self.used += bytes;
        self.held.insert(
            instance,
            Held {
                function,
                bytes,
                cost_secs: cost.as_secs_f64(),
                priority,
            },
        );
        Ok(Admission::Admitted { evicted })
    }

    /// A request used `instance`: its function is worth more, and the
    /// instance's priority is refreshed at the current clock.
    pub fn touch(&mut self, instance: &I) -> Result<(), PoolError> {
        let held = self
            .held
            .get(instance)
            .ok_or_else(|| PoolError::UnknownInstance(name(instance)))?;
        let usage = self.usage.entry(held.function.clone()).or_default();
        usage.frequency += 1;
        let priority =
            self.clock + usage.frequency as f64 * held.cost_secs / held.bytes.max(1) as f64;
        self.held.get_mut(instance).expect("held above").priority = priority;
        Ok(())
    }

    /// Changes the limit. Nothing is evicted here: call
    /// [`MemoryBudget::shrink_to_fit`] when it fell below what is used.
    pub fn set_limit(&mut self, limit_bytes: u64) {
        self.limit = limit_bytes;
    }

    /// Evicts idle instances (`evictable`), lowest priority first, until
    /// the books fit the limit or nothing evictable is left; returns them
    /// (already off the books) for the caller to unload.
    pub fn shrink_to_fit(&mut self, evictable: impl Fn(&I) -> bool) -> Vec<I> {
        let mut candidates: Vec<(I, f64)> = self
            .held
            .iter()
            .filter(|(id, _)| evictable(id))
            .map(|(id, h)| (id.clone(), h.priority))
            .collect();
        candidates.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut evicted = Vec::new();
        for (id, _) in candidates {
            if self.used <= self.limit {
                break;
            }
            if let Some(h) = self.forget(&id) {
                self.clock = self.clock.max(h.priority);
                evicted.push(id);
            }
        }
        evicted
    }

    /// `instance` was unloaded (by the policy, a crash or a drain).
    pub fn remove(&mut self, instance: &I) -> Result<(), PoolError> {
        self.forget(instance)
            .map(drop)
            .ok_or_else(|| PoolError::UnknownInstance(name(instance)))
    }

    fn fresh_priority(&self, function: &F, cost: Duration, bytes: u64) -> f64 {
        let frequency = self.usage.get(function).map_or(0, |u| u.frequency);
        self.clock + frequency as f64 * cost.as_secs_f64() / bytes.max(1) as f64
    }

    fn forget(&mut self, instance: &I) -> Option<Held<F>> {
        let held = self.held.remove(instance)?;
        self.used -= held.bytes;
        if let Some(usage) = self.usage.get_mut(&held.function) {
            usage.instances -= 1;
            if usage.instances == 0 {
                // FaaSCache: frequency resets when the last container dies.
                self.usage.remove(&held.function);
            }
        }
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const COST: Duration = Duration::from_millis(200);

    fn admitted(a: Admission<&'static str>) -> Vec<&'static str> {
        match a {
            Admission::Admitted { evicted } => evicted,
            Admission::NotWorthIt => panic!("refused"),
        }
    }

    #[test]
    fn a_lowered_limit_evicts_idle_instances_by_priority() {
        let mut b: MemoryBudget<&str, &str> = MemoryBudget::new(300 * MB);
        for id in ["hot", "cold", "busy"] {
            b.admit(id, id, 100 * MB, COST, Purpose::Demand, |_| true)
                .unwrap();
        }
        for _ in 0..5 {
            b.touch(&"hot").unwrap();
        }
        b.set_limit(150 * MB);
        let evicted = b.shrink_to_fit(|id| *id != "busy");
        assert_eq!(evicted, ["cold", "hot"], "lowest priority first, busy kept");
        assert_eq!(b.used(), 100 * MB, "only the busy instance is left");
        assert!(b.used() <= b.limit());
        b.set_limit(50 * MB);
        assert!(b.shrink_to_fit(|id| *id != "busy").is_empty());
        assert_eq!(b.used(), 100 * MB, "a busy instance is never evicted");
    }

    #[test]
    fn fits_without_eviction_until_full() {
        let mut b: MemoryBudget<&str, &str> = MemoryBudget::new(300 * MB);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let ev = admitted(
                b.admit("f", id, 100 * MB, COST, Purpose::Demand, |_| true)
                    .unwrap(),
            );
            assert!(ev.is_empty());
            assert_eq!(b.used(), (i as u64 + 1) * 100 * MB);
        }
        assert_eq!(b.used(), b.limit());
    }

    #[test]
    fn evicts_lowest_expected_benefit_first_and_never_a_busy_instance() {
        let mut b: MemoryBudget<&str, &str> = MemoryBudget::new(400 * MB);
        // hot: used 10 times; cold: once; big: used 10 times but 4× the size.
        b.admit("hot", "hot-1", 100 * MB, COST, Purpose::Demand, |_| true)
            .unwrap();
        b.admit("cold", "cold-1", 100 * MB, COST, Purpose::Demand, |_| true)
            .unwrap();
        b.admit("big", "big-1", 200 * MB, COST, Purpose::Demand, |_| true)
            .unwrap();
        for _ in 0..10 {
            b.touch(&"hot-1").unwrap();
            b.touch(&"big-1").unwrap();
        }
        b.touch(&"cold-1").unwrap();
        // Priorities: hot 10·c/100, big 10·c/200 = 5·c/100, cold 1·c/100.
        let p = |id| b.priority(&id).unwrap();
        let (cold, big, hot) = (p("cold-1"), p("big-1"), p("hot-1"));
        assert!(cold < big && big < hot);

        let ev = admitted(
            b.admit("new", "new-1", 100 * MB, COST, Purpose::Demand, |_| true)
                .unwrap(),
        );
        assert_eq!(ev, vec!["cold-1"]);
        assert!(b.used() <= b.limit());
        // The clock rose to the evicted priority, so the newcomer starts above it.
        assert_eq!(b.priority(&"new-1"), Some(cold));

        // Needing 200 MB with "big-1" busy: evict new-1 (lowest) then hot-1.
        let ev = admitted(
            b.admit("other", "other-1", 200 * MB, COST, Purpose::Demand, |id| {
                *id != "big-1"
            })
            .unwrap(),
        );
        assert_eq!(ev, vec!["new-1", "hot-1"]);
        assert_eq!(b.used(), 400 * MB);
        assert!(b.priority(&"big-1").is_some());
    }

    #[test]
    fn over_budget_and_unworthy_pre_warm_change_nothing() {
        let mut b: MemoryBudget<&str, &str> = MemoryBudget::new(200 * MB);
        b.admit("hot", "hot-1", 200 * MB, COST, Purpose::Demand, |_| true)
            .unwrap();
        for _ in 0..5 {
            b.touch(&"hot-1").unwrap();
        }
        let err = b
            .admit("x", "x-1", 300 * MB, COST, Purpose::Demand, |_| true)
            .unwrap_err();
        assert_eq!(
            err,
            PoolError::OverBudget {
                needed: 300 * MB,
                limit: 200 * MB,
                free: 0,
                evictable: 200 * MB
            }
        );
        let busy = b
            .admit("x", "x-1", 100 * MB, COST, Purpose::Demand, |_| false)
            .unwrap_err();
        assert!(matches!(busy, PoolError::OverBudget { evictable: 0, .. }));
        // A never-used function's pre-warm is worth less than a used instance.
        let refused = b
            .admit("x", "x-1", 100 * MB, COST, Purpose::PreWarm, |_| true)
            .unwrap();
        assert_eq!(refused, Admission::NotWorthIt);
        assert_eq!(b.used(), 200 * MB);
        assert!(b.priority(&"hot-1").is_some());
        // On demand it goes through.
        let ev = admitted(
            b.admit("x", "x-1", 100 * MB, COST, Purpose::Demand, |_| true)
                .unwrap(),
        );
        assert_eq!(ev, vec!["hot-1"]);
        // "hot" lost its last instance: its frequency starts over.
        b.admit("hot", "hot-2", 100 * MB, COST, Purpose::Demand, |_| true)
            .unwrap();
        assert_eq!(b.priority(&"hot-2"), b.priority(&"x-1"));
        b.remove(&"hot-2").unwrap();
        assert_eq!(
            b.remove(&"hot-2"),
            Err(PoolError::UnknownInstance("hot-2".into()))
        );
        assert_eq!(b.used(), 100 * MB);
    }
}
