//! Instances in VPCs: sproutd's side of netplug.
//!
//! An instance of a function registered with a `vpc` joins a network
//! namespace from that VPC's netplug pool: sproutd takes a lease for the
//! instance before the fork, hands the namespace's fd to the engine, and
//! gives the lease back when the instance is deleted (or, unused, when
//! the fork fails).
//!
//! netplug's state lives in sproutd's **runtime root**
//! (`ROOT/runtime/.netplug`), the state root of the instances. That is
//! what makes leases survive a crash: netplug counts a lease taken for
//! container `ID` as held while its taker lives *or* `ID` still has state
//! in that root. So when sproutd dies, the leases of its running
//! instances stay held; the next sproutd runs netplug's `gc`, which gives
//! back only the leases whose instance is gone, and adopts the rest with
//! the instances. VPCs are made with `sprout --root ROOT/runtime vpc
//! create ...`; sproutd keeps their pools filled.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sprout_netplug::{
    Error as NetplugError, LEASE_ANNOTATION, Lease, Netplug, Options, Owner, VPC_ANNOTATION,
};

use crate::error::ApiError;

/// The lease of the pooled network namespace container `c` holds, if
/// running `process` in it means marking that lease not reusable:
/// `process` could reconfigure the namespace beyond what a scrub undoes
/// ([`sprout_runtime::spec::may_reconfigure_network`]). Every exec path
/// (the CLI, sproutd, the containerd shim) asks this first and marks the
/// lease with `note_may_reconfigure` before the process starts.
pub fn lease_to_mark_before_exec(
    c: &sprout_runtime::Container,
    process: &oci_spec::runtime::Process,
) -> Option<String> {
    let lease = c
        .spec()
        .annotations()
        .as_ref()?
        .get(sprout_netplug::LEASE_ANNOTATION)?;
    sprout_runtime::spec::may_reconfigure_network(c.spec(), process).then(|| lease.clone())
}

/// The annotation that records an instance's address (`ADDR/PREFIX`), as
/// `sprout create --vpc` records it.
pub const ADDRESS_ANNOTATION: &str = "io.sprout.netplug.address";

/// The pooled namespace an instance holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub vpc: String,
    /// netplug's id of the namespace: the lease to give back.
    pub lease: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Attachment {
    pub fn of(lease: &Lease) -> Self {
        Self {
            vpc: lease.vpc.clone(),
            lease: lease.id.clone(),
            address: lease.address,
            prefix: lease.prefix,
        }
    }

    /// The annotations that record it in the instance's state, so that
    /// the CLI (`sprout --root ROOT/runtime delete ID`) gives the lease
    /// back too.
    pub fn annotations(&self) -> [(String, String); 3] {
        [
            (VPC_ANNOTATION.into(), self.vpc.clone()),
            (LEASE_ANNOTATION.into(), self.lease.clone()),
            (
                ADDRESS_ANNOTATION.into(),
                format!("{}/{}", self.address, self.prefix),
            ),
        ]
    }

    /// Read back from an instance's annotations (an instance adopted
    /// without sproutd's record of it).
    pub fn from_annotations(a: &HashMap<String, String>) -> Option<Self> {
        let (addr, prefix) = a.get(ADDRESS_ANNOTATION)?.split_once('/')?;
        Some(Self {
            vpc: a.get(VPC_ANNOTATION)?.clone(),
            lease: a.get(LEASE_ANNOTATION)?.clone(),
            address: addr.parse().ok()?,
            prefix: prefix.parse().ok()?,
        })
    }
}

/// sproutd's netplug.
pub struct Network {
    np: Arc<Netplug>,
    root: PathBuf,
}

/// The status of a netplug error: `unknown` for a VPC that does not exist
/// (400 when the request named it, 409 when the function did), 409 for a
/// full subnet, 500 for a failure of the node.
fn status_of(e: &NetplugError, unknown: u16) -> u16 {
    match e {
        NetplugError::NoSuchVpc(_) | NetplugError::InvalidName { .. } => unknown,
        NetplugError::SubnetExhausted { .. } => 409,
        _ => 500,
    }
}

impl Network {
    /// Opens netplug's state in `runtime_root` (creating `.netplug/`).
    /// CNI-mode VPCs find their plugins in `$SPROUT_CNI_PATH`, as the
    /// CLI does.
    pub fn open(runtime_root: &Path) -> Result<Self, NetplugError> {
        let mut opts = Options::new(runtime_root);
        if let Some(p) = std::env::var_os("SPROUT_CNI_PATH") {
            opts.cni_path = p.into();
        }
        Ok(Self {
            np: Netplug::open(opts)?,
            root: runtime_root.to_path_buf(),
        })
    }

    /// The netplug state root (`sprout --root` of `vpc create`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reconciles after a restart (leases of instances that are gone are
    /// given back, half-built namespaces torn down), then keeps every pool
    /// filled in the background until the returned task is aborted.
    pub async fn start(&self) -> tokio::task::JoinHandle<()> {
        match self.np.gc().await {
            Ok(r) => {
                if !(r.reclaimed.is_empty() && r.destroyed.is_empty() && r.orphans.is_empty()) {
                    tracing::info!(reclaimed = ?r.reclaimed, destroyed = ?r.destroyed, orphans = ?r.orphans, "netplug reconciled");
                }
                if !r.failed.is_empty() {
                    tracing::warn!(failed = ?r.failed, "netplug gc left what it could not clean up");
                }
            }
            // Not fatal: functions without a VPC work regardless, and the
            // next gc (or `sprout netplug gc`) tries again.
            Err(e) => tracing::warn!("netplug gc: {e}"),
        }
        self.np.spawn_refill()
    }

    fn unknown_vpc(&self, e: NetplugError, unknown: u16) -> ApiError {
        let status = status_of(&e, unknown);
        let hint = if matches!(e, NetplugError::NoSuchVpc(_)) {
            format!(
                " (sproutd's VPCs are those of netplug root {0}: `sprout --root {0} vpc create NAME --subnet CIDR`)",
                self.root.display()
            )
        } else {
            String::new()
        };
        ApiError::new(status, format!("{e}{hint}"))
    }

    /// Checks that `vpc` exists (a function that names it is added).
    /// netplug's pools and counters (for metrics).
    pub fn status(&self) -> Result<sprout_netplug::Status, NetplugError> {
        self.np.status()
    }

    pub fn check_vpc(&self, vpc: &str) -> Result<(), ApiError> {
        self.np
            .vpc(vpc)
            .map(drop)
            .map_err(|e| self.unknown_vpc(e, 400))
    }

    /// Takes a namespace of `vpc` for instance `id`. `unknown` is the
    /// status of a VPC that does not exist.
    /// `may_reconfigure`: the instance can change the namespace beyond
    /// what a scrub undoes, so it is destroyed when given back.
    pub async fn take(
        &self,
        vpc: &str,
        id: &str,
        unknown: u16,
        may_reconfigure: bool,
    ) -> Result<Lease, ApiError> {
        self.np
            .take(vpc, &Owner::container(id).reconfiguring(may_reconfigure))
            .await
            .map_err(|e| match status_of(&e, unknown) {
                500 => ApiError::internal(format!("network namespace from VPC {vpc}: {e}")),
                _ => self.unknown_vpc(e, unknown),
            })
    }

    /// Records that instance `id` now runs a process that may reconfigure
    /// its namespace `lease` (see [`Network::take`]).
    pub async fn note_may_reconfigure(&self, lease: &str, id: &str) -> Result<(), ApiError> {
        self.np.note_may_reconfigure(lease, id).await.map_err(|e| {
            ApiError::internal(format!(
                "recording that instance {id:?} may reconfigure its network namespace: {e}"
            ))
        })
    }

    /// Returns the lease of a fork that failed, unscrubbed (no instance
    /// ran in it).
    pub async fn give_back_unused(&self, lease: Lease) {
        let id = lease.id.clone();
        if let Err(e) = self.np.give_back_unused(lease).await {
            tracing::warn!(ns = %id, "giving back an unused network namespace: {e}");
        }
    }

    /// Gives back the namespace of deleted instance `id`: scrubbed and
    /// reused, or destroyed. A lease already given back (by `sprout
    /// delete`, or a gc) is fine; another failure is logged, and the next
    /// sproutd start reclaims the lease.
    pub async fn give_back(&self, a: &Attachment, id: &str) {
        match self.np.give_back_from(&a.lease, id).await {
            Ok(()) => {
                tracing::debug!(container = %id, ns = %a.lease, vpc = %a.vpc, "network namespace given back")
            }
            Err(NetplugError::NoSuchLease(_)) => {
                tracing::debug!(container = %id, ns = %a.lease, "network namespace already given back")
            }
            Err(e) => {
                tracing::warn!(container = %id, ns = %a.lease, "giving back the network namespace: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_round_trips_through_annotations() {
        let a = Attachment {
            vpc: "blue".into(),
            lease: "0123456789".into(),
            address: Ipv4Addr::new(198, 18, 0, 7),
            prefix: 24,
        };
        let map: HashMap<String, String> = a.annotations().into_iter().collect();
        assert_eq!(map[ADDRESS_ANNOTATION], "198.18.0.7/24");
        assert_eq!(Attachment::from_annotations(&map), Some(a));
        assert_eq!(Attachment::from_annotations(&HashMap::new()), None);
    }

    #[test]
    fn statuses() {
        let unknown = NetplugError::NoSuchVpc("x".into());
        assert_eq!(status_of(&unknown, 400), 400);
        assert_eq!(status_of(&unknown, 409), 409);
        let busy = NetplugError::VpcBusy {
            vpc: "x".into(),
            leases: String::new(),
        };
        assert_eq!(status_of(&busy, 400), 500);
    }
}
