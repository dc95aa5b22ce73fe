//! Request slots for single-instance multi-concurrency: an instance serves
//! up to its function's concurrency at once. A request takes a slot on an
//! awake instance that has one free (the fullest first, so the others can
//! drain and be frozen or unloaded), else wakes a frozen instance, and only
//! when neither exists asks the caller to fork a new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::Key;
use crate::error::{PoolError, name};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease-{}", self.0)
    }
}

/// A request slot held on `instance`; thaw the instance first if `woke`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease<I> {
    pub id: LeaseId,
    pub instance: I,
    pub woke: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire<I> {
    Leased(Lease<I>),
    /// Every instance of the function is full: fork (or restore) one,
    /// [`SlotTable::add_instance`] it and acquire again.
    NoFreeSlot,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released<I> {
    pub instance: I,
    /// No request is left on the instance: it may be frozen or unloaded.
    pub idle: bool,
}

/// One instance as the slot table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSlots<F> {
    pub function: F,
    pub capacity: u32,
    pub leased: u32,
    pub frozen: bool,
}

impl<F> InstanceSlots<F> {
    pub fn free(&self) -> u32 {
        self.capacity - self.leased
    }
}

#[derive(Clone, Debug)]
pub struct SlotTable<F: Key, I: Key> {
    instances: BTreeMap<I, InstanceSlots<F>>,
    by_function: HashMap<F, BTreeSet<I>>,
    leases: HashMap<LeaseId, I>,
    next_lease: u64,
}

impl<F: Key, I: Key> Default for SlotTable<F, I> {
    fn default() -> Self {
        SlotTable {
            instances: BTreeMap::new(),
            by_function: HashMap::new(),
            leases: HashMap::new(),
            next_lease: 1,
        }
    }
}

impl<F: Key, I: Key> SlotTable<F, I> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new instance of `function` with `capacity` request slots.
    pub fn add_instance(
        &mut self,
        function: F,
        instance: I,
        capacity: u32,
        frozen: bool,
    ) -> Result<(), PoolError> {
        if capacity == 0 {
            return Err(PoolError::ZeroSlots(name(&function)));
        }
        if self.instances.contains_key(&instance) {
            return Err(PoolError::InstanceExists(name(&instance)));
        }
        self.by_function
            .entry(function.clone())
            .or_default()
            .insert(instance.clone());
        self.instances.insert(
            instance,
            InstanceSlots {
                function,
                capacity,
                leased: 0,
                frozen,
            },
        );
        Ok(())
    }

    /// Drops an idle instance from the table (it was unloaded or crashed
    /// while idle); refused while it holds leases.
    pub fn remove_instance(&mut self, instance: &I) -> Result<InstanceSlots<F>, PoolError> {
        let slots = self
            .instances
            .get(instance)
            .ok_or_else(|| PoolError::UnknownInstance(name(instance)))?;
        if slots.leased > 0 {
            return Err(PoolError::InstanceBusy {
                instance: name(instance),
                leases: slots.leased,
            });
        }
        let slots = self.instances.remove(instance).expect("checked above");
        if let Some(set) = self.by_function.get_mut(&slots.function) {
            set.remove(instance);
            if set.is_empty() {
                self.by_function.remove(&slots.function);
            }
        }
        Ok(slots)
    }

    /// Drops an instance that is gone (it crashed, or was destroyed while
    /// serving), with its leases; returns them, which are void now.
    pub fn remove_gone(&mut self, instance: &I) -> Result<Vec<LeaseId>, PoolError> {
        let slots = self
            .instances
            .remove(instance)
            .ok_or_else(|| PoolError::UnknownInstance(name(instance)))?;
        if let Some(set) = self.by_function.get_mut(&slots.function) {
            set.remove(instance);
            if set.is_empty() {
                self.by_function.remove(&slots.function);
            }
        }
        let void: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, i)| *i == instance)
            .map(|(l, _)| *l)
            .collect();
        for l in &void {
            self.leases.remove(l);
        }
        Ok(void)
    }

    /// The instance a lease is on.
    pub fn lease_instance(&self, lease: LeaseId) -> Option<&I> {
        self.leases.get(&lease)
    }

    pub fn acquire(&mut self, function: &F) -> Acquire<I> {
        let Some(ids) = self.by_function.get(function) else {
            return Acquire::NoFreeSlot;
        };
        let mut awake: Option<(&I, u32)> = None;
        let mut frozen: Option<&I> = None;
        for id in ids {
            let s = &self.instances[id];
            if s.free() == 0 {
                continue;
            }
            if s.frozen {
                frozen = frozen.or(Some(id));
            } else if awake.is_none_or(|(_, leased)| s.leased > leased) {
                awake = Some((id, s.leased));
            }
        }
        let Some(instance) = awake.map(|(id, _)| id).or(frozen).cloned() else {
            return Acquire::NoFreeSlot;
        };
        let slots = self.instances.get_mut(&instance).expect("listed instance");
        let woke = slots.frozen;
        slots.frozen = false;
        slots.leased += 1;
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        self.leases.insert(id, instance.clone());
        Acquire::Leased(Lease { id, instance, woke })
    }

    pub fn release(&mut self, lease: LeaseId) -> Result<Released<I>, PoolError> {
        let instance = self
            .leases
            .remove(&lease)
            .ok_or(PoolError::UnknownLease(lease.0))?;
        let slots = self.instances.get_mut(&instance).expect("leased instance");
        slots.leased -= 1;
        let idle = slots.leased == 0;
        Ok(Released { instance, idle })
    }

    /// Marks an idle instance frozen: the next request must wake it.
    pub fn freeze(&mut self, instance: &I) -> Result<(), PoolError> {
        let slots = self
            .instances
            .get_mut(instance)
            .ok_or_else(|| PoolError::UnknownInstance(name(instance)))?;
        if slots.leased > 0 {
            return Err(PoolError::InstanceBusy {
                instance: name(instance),
                leases: slots.leased,
            });
        }
        slots.frozen = true;
        Ok(())
    }

    pub fn get(&self, instance: &I) -> Option<&InstanceSlots<F>> {
        self.instances.get(instance)
    }

    /// The instances of `function`, in id order.
    pub fn instances_of<'a>(
        &'a self,
        function: &F,
    ) -> impl Iterator<Item = (&'a I, &'a InstanceSlots<F>)> + 'a {
        self.by_function
            .get(function)
            .into_iter()
            .flatten()
            .map(|id| (id, &self.instances[id]))
    }

    pub fn instance_count(&self, function: &F) -> usize {
        self.by_function.get(function).map_or(0, BTreeSet::len)
    }

    /// Instances of `function` that serve at least one request.
    pub fn busy_count(&self, function: &F) -> usize {
        self.instances_of(function)
            .filter(|(_, s)| s.leased > 0)
            .count()
    }

    pub fn leases_held(&self) -> usize {
        self.leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(a: Acquire<&'static str>) -> Lease<&'static str> {
        match a {
            Acquire::Leased(l) => l,
            Acquire::NoFreeSlot => panic!("expected a lease"),
        }
    }

    #[test]
    fn a_gone_instance_takes_its_leases_with_it() {
        let mut t: SlotTable<&str, &str> = SlotTable::new();
        t.add_instance("fn", "a", 2, false).unwrap();
        t.add_instance("fn", "b", 2, false).unwrap();
        let l1 = leased(t.acquire(&"fn"));
        let l2 = leased(t.acquire(&"fn"));
        assert_eq!(l1.instance, l2.instance, "fills one instance first");
        assert_eq!(t.lease_instance(l1.id), Some(&l1.instance));
        let void = t.remove_gone(&l1.instance).unwrap();
        assert_eq!(void.len(), 2);
        assert_eq!(t.leases_held(), 0);
        assert!(t.release(l1.id).is_err(), "a void lease cannot be released");
        assert_eq!(t.instance_count(&"fn"), 1);
        assert!(t.remove_gone(&l1.instance).is_err());
    }

    #[test]
    fn fills_awake_instances_before_waking_or_forking() {
        let mut t: SlotTable<&str, &str> = SlotTable::new();
        assert_eq!(t.acquire(&"fn"), Acquire::NoFreeSlot);
        t.add_instance("fn", "a", 3, false).unwrap();
        t.add_instance("fn", "b", 3, true).unwrap();
        t.add_instance("other", "z", 3, false).unwrap();

        // Three requests fill awake "a" before frozen "b" is touched.
        let first: Vec<_> = (0..3).map(|_| leased(t.acquire(&"fn"))).collect();
        assert!(first.iter().all(|l| l.instance == "a" && !l.woke));
        // The fourth wakes "b"; the next ones fill it.
        let fourth = leased(t.acquire(&"fn"));
        assert_eq!((fourth.instance, fourth.woke), ("b", true));
        for _ in 0..2 {
            let l = leased(t.acquire(&"fn"));
            assert_eq!((l.instance, l.woke), ("b", false));
        }
        // All six slots taken: the caller must fork. Other functions' slots don't count.
        assert_eq!(t.acquire(&"fn"), Acquire::NoFreeSlot);
        assert_eq!(t.leases_held(), 6);

        // Releasing one on "a" frees a slot there; "a" is not idle yet.
        let r = t.release(first[0].id).unwrap();
        assert_eq!(
            r,
            Released {
                instance: "a",
                idle: false
            }
        );
        assert_eq!(leased(t.acquire(&"fn")).instance, "a");
    }

    #[test]
    fn prefers_the_fullest_awake_instance() {
        let mut t: SlotTable<&str, &str> = SlotTable::new();
        t.add_instance("fn", "a", 4, false).unwrap();
        t.add_instance("fn", "b", 4, false).unwrap();
        let on_a: Vec<_> = (0..4).map(|_| leased(t.acquire(&"fn"))).collect();
        assert!(on_a.iter().all(|l| l.instance == "a"));
        assert_eq!(leased(t.acquire(&"fn")).instance, "b");
        // a: 4 → 0 leases, b: 1. New requests go to b, so a can drain.
        for l in &on_a {
            t.release(l.id).unwrap();
        }
        for _ in 0..3 {
            assert_eq!(leased(t.acquire(&"fn")).instance, "b");
        }
        // b is full now; a takes the overflow.
        assert_eq!(leased(t.acquire(&"fn")).instance, "a");
    }

    #[test]
    fn release_remove_and_freeze_bookkeeping() {
        let mut t: SlotTable<&str, &str> = SlotTable::new();
        t.add_instance("fn", "a", 1, false).unwrap();
        assert_eq!(
            t.add_instance("fn", "a", 1, false),
            Err(PoolError::InstanceExists("a".into()))
        );
        assert_eq!(
            t.add_instance("fn", "c", 0, false),
            Err(PoolError::ZeroSlots("fn".into()))
        );
        let l = leased(t.acquire(&"fn"));
        assert_eq!(
            t.remove_instance(&"a"),
            Err(PoolError::InstanceBusy {
                instance: "a".into(),
                leases: 1
            })
        );
        assert!(matches!(
            t.freeze(&"a"),
            Err(PoolError::InstanceBusy { .. })
        ));
        assert_eq!(t.busy_count(&"fn"), 1);
        assert_eq!(
            t.release(l.id).unwrap(),
            Released {
                instance: "a",
                idle: true
            }
        );
        assert_eq!(t.release(l.id), Err(PoolError::UnknownLease(l.id.0)));
        t.freeze(&"a").unwrap();
        assert!(t.get(&"a").unwrap().frozen);
        assert!(leased(t.acquire(&"fn")).woke);
        let l2 = t.leases.keys().next().copied().unwrap();
        t.release(l2).unwrap();
        assert_eq!(t.remove_instance(&"a").unwrap().function, "fn");
        assert_eq!(t.instance_count(&"fn"), 0);
        assert_eq!(
            t.remove_instance(&"a"),
            Err(PoolError::UnknownInstance("a".into()))
        );
        assert_eq!(t.acquire(&"fn"), Acquire::NoFreeSlot);
    }
}
