//! The pool library's errors: misuse of its bookkeeping by the caller
//! (unknown names, double releases) and settings that make no sense.

use std::fmt::Display;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    #[error("invalid pool setting {setting}: {reason}")]
    InvalidConfig {
        setting: &'static str,
        reason: &'static str,
    },
    #[error("function {0} is already registered")]
    FunctionExists(String),
    #[error("unknown function {0}")]
    UnknownFunction(String),
    #[error("function {0}: an instance needs at least one request slot")]
    ZeroSlots(String),
    #[error("function {0}: a request finished but none was in flight")]
    NothingInFlight(String),
    #[error("instance {0} is already registered")]
    InstanceExists(String),
    #[error("unknown instance {0}")]
    UnknownInstance(String),
    #[error("instance {instance} still serves {leases} request(s)")]
    InstanceBusy { instance: String, leases: u32 },
    #[error("unknown request lease {0}")]
    UnknownLease(u64),
    #[error(
        "{needed} bytes do not fit the memory budget of {limit} bytes: {free} free and {evictable} held by idle instances"
    )]
    OverBudget {
        needed: u64,
        limit: u64,
        free: u64,
        evictable: u64,
    },
}

pub(crate) fn name(key: &impl Display) -> String {
    key.to_string()
}
