//! sprout's warm pool, as a library with no I/O: an orchestrator (sproutd)
//! embeds it and does the loading, freezing and unloading it decides.
//!
//! The loop, per function:
//! - [`Policy`] sees each request arrive and finish (time passed in, see
//!   [`time`]) and learns the function's idle times (the hybrid histogram
//!   of "Serverless in the Wild", [`idle`], with a periodic tier and a
//!   memory economy of ours) and concurrency
//!   ([`concurrency`]). [`Policy::plan`] answers how many instances to hold
//!   loaded now and when to ask again: that is when to pre-warm and when
//!   to unload.
//! - [`SlotTable`] leases request slots on instances that serve several
//!   requests at once, filling instances before waking or forking more.
//! - [`MemoryBudget`] keeps the node under its memory limit and picks
//!   whom to evict by expected benefit (Greedy-Dual).
//!
//! [`trace`] generates Azure-Functions-shaped synthetic traces, [`sim`]
//! replays one through a policy and [`replay`] through several at once,
//! [`breakdown`] groups the results by class of function (the
//! `sprout-pool-sim` binary prints the comparison).

pub mod breakdown;
pub mod budget;
pub mod concurrency;
pub mod economy;
mod error;
pub mod forecast;
pub mod histogram;
pub mod idle;
mod peak;
pub mod periodic;
pub mod policy;
pub mod replay;
pub mod rng;
pub mod sample;
pub mod sim;
pub mod slots;
pub mod time;
pub mod trace;

use std::fmt::{Debug, Display};
use std::hash::Hash;

pub use budget::{Admission, MemoryBudget, Purpose};
pub use concurrency::ConcurrencyConfig;
pub use economy::EconomyConfig;
pub use error::PoolError;
pub use idle::{HybridConfig, IdleContext, Tier, Windows};
pub use policy::{Plan, Policy, PolicyConfig, Strategy};
pub use slots::{Acquire, Lease, LeaseId, Released, SlotTable};
pub use time::{Clock, FakeClock, MonotonicClock, Timestamp};

/// What names functions and instances: a container id, a function name,
/// or a plain number in the simulator. `Ord` keeps choices deterministic.
pub trait Key: Clone + Eq + Hash + Ord + Debug + Display {}

impl<T: Clone + Eq + Hash + Ord + Debug + Display> Key for T {}
