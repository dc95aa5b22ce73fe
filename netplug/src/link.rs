//! Links, addresses and routes over netlink (rtnetlink), for the hub and
//! for the inside of a pooled namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteProtocol};
use rtnetlink::sys::TokioSocket;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::error::{Error, Result, netlink_errno};

/// The interface name inside a pooled namespace.
pub const IFNAME: &str = "eth0";

/// A netlink connection over `socket` (made in the namespace to talk
/// to); its driver runs as a task of the current tokio runtime and ends
/// when the last handle is dropped.
pub fn connect(socket: OwnedFd) -> Handle {
    // SAFETY: into_raw_fd hands over ownership of a valid netlink socket.
    let sock =
        unsafe { <TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(sock);
    tokio::spawn(conn);
    handle
}

#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub controller: Option<u32>,
    pub up: bool,
}

fn info(m: &rtnetlink::packet_route::link::LinkMessage) -> LinkInfo {
    let mut name = String::new();
    let mut controller = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Controller(c) => controller = Some(*c),
            _ => {}
        }
    }
    LinkInfo {
        index: m.header.index,
        name,
        controller,
        up: m.header.flags.contains(LinkFlags::Up),
    }
}

pub async fn links(h: &Handle) -> Result<Vec<LinkInfo>> {
    let mut out = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(Error::netlink("listing links"))?
    {
        out.push(info(&m));
    }
    Ok(out)
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkInfo>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(info)),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up {name}"))(e)),
    }
}

async fn index_of(h: &Handle, name: &str, op: &str) -> Result<u32> {
    link_by_name(h, name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| Error::LinkMissing {
            op: op.to_string(),
            name: name.to_string(),
        })
}

pub async fn set_up(h: &Handle, name: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_name(name).up().build())
        .execute()
        .await
        .map_err(Error::netlink(format!("setting {name} up")))
}

/// Deletes a link by name; a missing one is fine.
pub async fn delete_link(h: &Handle, name: &str) -> Result<()> {
    let Some(l) = link_by_name(h, name).await? else {
        return Ok(());
    };
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(Error::netlink(format!("deleting {name}"))(e)),
    }
}

/// A bridge `name` with address `gateway/prefix`, up. An existing bridge
/// of that name is reused (and given the address if it lacks it).
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    mtu: u32,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<()> {
    if link_by_name(h, name).await?.is_none() {
        h.link()
            .add(LinkBridge::new(name).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(Error::netlink(format!("creating bridge {name}")))?;
    }
    let index = index_of(h, name, "bridge address").await?;
    match h
        .address()
        .add(index, IpAddr::V4(gateway), prefix)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => {
            return Err(Error::netlink(format!(
                "adding {gateway}/{prefix} to {name}"
            ))(e));
        }
    }
    set_up(h, name).await
}

/// A veth pair made from the hub: `hub_name` in the hub, a port of
/// `bridge`, up; its peer `eth0` created straight inside namespace
/// `peer_ns`.
pub async fn add_veth_into(
    hub: &Handle,
    hub_name: &str,
    bridge: &str,
    peer_ns: RawFd,
    mtu: u32,
) -> Result<()> {
    let bridge_index = index_of(hub, bridge, "veth").await?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(IFNAME)
        .mtu(mtu)
        .setns_by_fd(peer_ns)
        .build();
    let msg = LinkVeth::new(hub_name, IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .build();
    hub.link()
        .add(msg)
        .execute()
        .await
        .map_err(Error::netlink(format!("creating veth {hub_name}")))
}

/// Inside a new namespace: `lo` up, `eth0` up with `address/prefix`,
/// default route via `gateway`.
pub async fn configure_inside(
    h: &Handle,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<()> {
    set_up(h, "lo").await?;
    let eth0 = index_of(h, IFNAME, "configuring eth0").await?;
    h.address()
        .add(eth0, IpAddr::V4(address), prefix)
        .replace()
        .execute()
        .await
        .map_err(Error::netlink(format!("adding {address}/{prefix} to eth0")))?;
    set_up(h, IFNAME).await?;
    default_route(h, eth0, gateway).await
}

async fn default_route(h: &Handle, eth0: u32, gateway: Ipv4Addr) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(eth0)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(Error::netlink(format!("default route via {gateway}")))
}

/// Puts a given-back namespace back the way netplug made it: links other
/// than `lo` and `eth0` deleted, `eth0` holding only its address, routes
/// of the main table other than the kernel's and the default one
/// removed. `false` if it cannot be (its `eth0` is gone).
pub async fn scrub(
    h: &Handle,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<bool> {
    let all = links(h).await?;
    let Some(eth0) = all.iter().find(|l| l.name == IFNAME).map(|l| l.index) else {
        return Ok(false);
    };
    for l in &all {
        if l.name != "lo" && l.name != IFNAME {
            match h.link().del(l.index).execute().await {
                Ok(()) => {}
                Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => {}
                // Some links (e.g. tunnels' fallback devices) cannot be
                // deleted: the namespace is not reusable.
                Err(_) => return Ok(false),
            }
        }
    }
    h.link()
        .set(LinkUnspec::new_with_index(eth0).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(Error::netlink("resetting eth0"))?;
    set_up(h, "lo").await?;
    let mut addrs = h.address().get().set_link_index_filter(eth0).execute();
    let mut extra = Vec::new();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(Error::netlink("listing addresses"))?
    {
        let ours = a.header.prefix_len == prefix
            && a.attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address));
        let v4 = a
            .attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(_))));
        if v4 && !ours {
            extra.push(a);
        }
    }
    for a in extra {
        h.address()
            .del(a)
            .execute()
            .await
            .map_err(Error::netlink("removing an address"))?;
    }
    h.address()
        .add(eth0, IpAddr::V4(address), prefix)
        .replace()
        .execute()
        .await
        .map_err(Error::netlink("restoring eth0's address"))?;
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut stale = Vec::new();
    while let Some(r) = routes
        .try_next()
        .await
        .map_err(Error::netlink("listing routes"))?
    {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(r.header.table as u32);
        if table == 254
            && r.header.protocol != RouteProtocol::Kernel
            && r.header.destination_prefix_length != 0
        {
            stale.push(r);
        }
    }
    for r in stale {
        h.route()
            .del(r)
            .execute()
            .await
            .map_err(Error::netlink("removing a route"))?;
    }
    default_route(h, eth0, gateway).await?;
    Ok(true)
}
