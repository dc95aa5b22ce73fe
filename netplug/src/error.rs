//! netplug's errors: one variant per thing that can go wrong, each naming
//! the object (VPC, namespace, file) it concerns.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::subnet::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netplug state {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("netplug state {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid VPC name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid subnet {text:?}: {reason}")]
    InvalidSubnet { text: String, reason: &'static str },
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    InvalidGateway { gateway: Ipv4Addr, subnet: Subnet },
    #[error("invalid MTU {0}: must be between 576 and 65535")]
    InvalidMtu(u32),
    #[error("VPC {0} already exists")]
    VpcExists(String),
    #[error("no VPC named {0}")]
    NoSuchVpc(String),
    #[error("subnet {subnet} of VPC {vpc} overlaps subnet {other_subnet} of VPC {other}")]
    Overlap {
        vpc: String,
        subnet: Subnet,
        other: String,
        other_subnet: Subnet,
    },
    #[error("bridge {bridge} of VPC {vpc} is already used by VPC {other}")]
    BridgeInUse {
        vpc: String,
        bridge: String,
        other: String,
    },
    #[error("subnet {subnet} of VPC {vpc} is exhausted: all {hosts} host addresses are in use")]
    SubnetExhausted {
        vpc: String,
        subnet: Subnet,
        hosts: u32,
    },
    #[error(
        "VPC {vpc} still has namespaces leased to live sandboxes ({leases}); delete them first"
    )]
    VpcBusy { vpc: String, leases: String },
    #[error("no lease {0}")]
    NoSuchLease(String),
    #[error("lease {lease} is held by {holder}, not by {claimed}")]
    NotOwner {
        lease: String,
        holder: String,
        claimed: String,
    },
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("netlink: {op}: {name} not found")]
    LinkMissing { op: String, name: String },
    #[error("{op}: {source}")]
    Sys { op: String, source: io::Error },
    #[error("nftables in the hub: {op}: {source}")]
    Nftables { op: String, source: io::Error },
    #[error("CNI config {path}: {reason}")]
    CniConfig { path: PathBuf, reason: String },
    #[error("CNI plugin {plugin} ({command}): {message}")]
    CniPlugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("running CNI plugin {path}: {source}")]
    CniSpawn { path: PathBuf, source: io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn sys(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let op = op.into();
        move |source| Error::Sys { op, source }
    }

    pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let op = op.into();
        move |source| Error::Netlink { op, source }
    }
}

/// The errno of a netlink error answer, if that is what `e` is.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
