//! Isolation between VPCs: an nftables table in the hub (never the host's
//! own namespace), written and read over nf_tables netlink from a socket
//! made inside the hub — no `nft` process. The whole table is replaced in
//! one batch (one kernel transaction):
//!
//! ```text
//! table inet sprout_netplug {
//!   set bridges  { type ifname; elements = { every VPC bridge } }
//!   set gateways { type ipv4_addr; elements = { every VPC gateway } }
//!   chain forward { type filter hook forward priority 0; policy accept;
//!     iifname "B" oifname @bridges oifname != "B" counter drop  # per VPC
//!   }
//!   chain input { type filter hook input priority 0; policy accept;
//!     iifname "B" ip daddr @gateways ip daddr != G counter drop  # per VPC
//!   }
//! }
//! ```
//!
//! Forward covers sandbox-to-sandbox traffic across VPCs (when the hub
//! forwards); input covers a sandbox reaching another VPC's gateway,
//! which is an address local to the hub. Each rule carries the comment
//! `vpc NAME HOOK` (in nft's own format, so `nft list` shows it too), by
//! which [`counters`] finds its counter again.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::netns;

pub const TABLE: &str = "sprout_netplug";

/// What the rules need to know of a VPC.
#[derive(Debug, Clone)]
pub struct VpcRule {
    pub vpc: String,
    pub bridge: String,
    pub gateway: Ipv4Addr,
}

/// A drop rule's counter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DropCounter {
    pub vpc: String,
    /// "forward" or "input".
    pub hook: String,
    pub packets: u64,
    pub bytes: u64,
}

// nf_tables netlink attribute numbers (linux/netfilter/nf_tables.h); the
// message types and values come from libc.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
/// nft's type ids for set keys (only nft reads them, to print).
const NFT_TYPE_IPADDR: u32 = 7;
const NFT_TYPE_IFNAME: u32 = 41;
/// nft's rule userdata tag for a comment.
const UDATA_RULE_COMMENT: u8 = 0;
/// nft's set userdata tag for the key's byte order (1 host, 2 network):
/// how nft prints the elements.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const IFNAMSIZ: usize = 16;

const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`.
const NFGEN_LEN: usize = 4;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message being built: header, `nfgenmsg`, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    /// A message of the nf_tables subsystem.
    fn nft(op: libc::c_int, flags: libc::c_int, seq: u32) -> Self {
        let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | op as u16;
        Msg::new(
            ty,
            (libc::NLM_F_REQUEST | flags) as u16,
            seq,
            libc::NFPROTO_INET as u8,
            0,
        )
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(ty, &b)
    }

    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.attr(ty | NLA_F_NESTED, &[]);
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// `NFTA_DATA_VALUE` inside attribute `ty`.
    fn value(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.nest(ty, |m| {
            m.attr(NFTA_DATA_VALUE, data);
        })
    }

    /// One expression of a rule's list.
    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Self)) -> &mut Self {
        self.nest(NFTA_LIST_ELEM, |m| {
            m.str(NFTA_EXPR_NAME, name);
            m.nest(NFTA_EXPR_DATA, f);
        })
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// An interface name as nf_tables compares it: NUL-padded to IFNAMSIZ.
fn ifname(name: &str) -> [u8; IFNAMSIZ] {
    let mut b = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

// Register 1 (16 bytes) holds what each rule compares.
const REG: u32 = libc::NFT_REG_1 as u32;

fn meta(m: &mut Msg, key: libc::c_int) {
    m.expr("meta", |m| {
        m.be32(NFTA_META_DREG, REG).be32(NFTA_META_KEY, key as u32);
    });
}

fn cmp(m: &mut Msg, op: libc::c_int, data: &[u8]) {
    m.expr("cmp", |m| {
        m.be32(NFTA_CMP_SREG, REG)
            .be32(NFTA_CMP_OP, op as u32)
            .value(NFTA_CMP_DATA, data);
    });
}

fn lookup(m: &mut Msg, set: &Set) {
    m.expr("lookup", |m| {
        m.str(NFTA_LOOKUP_SET, set.name)
            .be32(NFTA_LOOKUP_SREG, REG)
            .be32(NFTA_LOOKUP_SET_ID, set.id);
    });
}

fn counter_and_drop(m: &mut Msg) {
    m.expr("counter", |m| {
        m.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes())
            .attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
    });
    m.expr("immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, libc::NFT_REG_VERDICT as u32)
            .nest(NFTA_IMMEDIATE_DATA, |m| {
                m.nest(NFTA_DATA_VERDICT, |m| {
                    m.be32(NFTA_VERDICT_CODE, libc::NF_DROP as u32);
                });
            });
    });
}

/// nft's rule userdata: one comment TLV (value NUL-terminated).
fn comment(text: &str) -> Vec<u8> {
    let mut b = vec![UDATA_RULE_COMMENT, (text.len() + 1) as u8];
    b.extend_from_slice(text.as_bytes());
    b.push(0);
    b
}

fn parse_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

/// A named set of the table, referred to in its batch by id.
struct Set {
    name: &'static str,
    id: u32,
    key_type: u32,
    key_len: u32,
    key_byteorder: u32,
}

const BRIDGES: Set = Set {
    name: "bridges",
    id: 1,
    key_type: NFT_TYPE_IFNAME,
    key_len: IFNAMSIZ as u32,
    key_byteorder: 1,
};
const GATEWAYS: Set = Set {
    name: "gateways",
    id: 2,
    key_type: NFT_TYPE_IPADDR,
    key_len: 4,
    key_byteorder: 2,
};

static SEQ: AtomicU32 = AtomicU32::new(1);

/// A batch: messages between BATCH_BEGIN and BATCH_END, applied by the
/// kernel as one transaction. Each asks for an acknowledgement, and says
/// what it does (for errors).
struct Batch {
    buf: Vec<u8>,
    ops: Vec<(u32, String)>,
}

impl Batch {
    fn new() -> Self {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let begin = Msg::new(
            libc::NFNL_MSG_BATCH_BEGIN as u16,
            libc::NLM_F_REQUEST as u16,
            seq,
            libc::AF_UNSPEC as u8,
            libc::NFNL_SUBSYS_NFTABLES as u16,
        );
        Batch {
            buf: begin.finish(),
            ops: Vec::new(),
        }
    }

    fn push(
        &mut self,
        what: impl Into<String>,
        op: libc::c_int,
        flags: libc::c_int,
        f: impl FnOnce(&mut Msg),
    ) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut m = Msg::nft(op, flags | libc::NLM_F_ACK, seq);
        f(&mut m);
        self.buf.extend_from_slice(&m.finish());
        self.ops.push((seq, what.into()));
    }

    fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let end = Msg::new(
            libc::NFNL_MSG_BATCH_END as u16,
            libc::NLM_F_REQUEST as u16,
            seq,
            libc::AF_UNSPEC as u8,
            libc::NFNL_SUBSYS_NFTABLES as u16,
        );
        self.buf.extend_from_slice(&end.finish());
        (self.buf, self.ops)
    }
}

/// The batch that replaces the whole table with the rules for `vpcs`.
fn ruleset(vpcs: &[VpcRule]) -> Batch {
    let mut b = Batch::new();
    let create = libc::NLM_F_CREATE;
    let table = |m: &mut Msg| {
        m.str(NFTA_TABLE_NAME, TABLE);
    };
    // Add first, so that the delete finds a table whether or not one
    // was there.
    b.push("adding the table", libc::NFT_MSG_NEWTABLE, create, table);
    b.push("deleting the old table", libc::NFT_MSG_DELTABLE, 0, table);
    b.push("adding the table", libc::NFT_MSG_NEWTABLE, create, table);
    for set in [&BRIDGES, &GATEWAYS] {
        b.push(
            format!("adding set {}", set.name),
            libc::NFT_MSG_NEWSET,
            create,
            |m| {
                m.str(NFTA_SET_TABLE, TABLE)
                    .str(NFTA_SET_NAME, set.name)
                    .be32(NFTA_SET_FLAGS, 0)
                    .be32(NFTA_SET_KEY_TYPE, set.key_type)
                    .be32(NFTA_SET_KEY_LEN, set.key_len)
                    .be32(NFTA_SET_ID, set.id)
                    .attr(NFTA_SET_USERDATA, &{
                        let mut u = vec![UDATA_SET_KEYBYTEORDER, 4];
                        u.extend_from_slice(&set.key_byteorder.to_ne_bytes());
                        u
                    });
            },
        );
        let keys: Vec<Vec<u8>> = vpcs
            .iter()
            .map(|v| {
                if set.name == BRIDGES.name {
                    ifname(&v.bridge).to_vec()
                } else {
                    v.gateway.octets().to_vec()
                }
            })
            .collect();
        if keys.is_empty() {
            continue;
        }
        b.push(
            format!("adding the elements of set {}", set.name),
            libc::NFT_MSG_NEWSETELEM,
            create,
            |m| {
                m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
                    .str(NFTA_SET_ELEM_LIST_SET, set.name)
                    .be32(NFTA_SET_ELEM_LIST_SET_ID, set.id)
                    .nest(NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                        for k in &keys {
                            m.nest(NFTA_LIST_ELEM, |m| {
                                m.value(NFTA_SET_ELEM_KEY, k);
                            });
                        }
                    });
            },
        );
    }
    for (chain, hook) in [("forward", NF_INET_FORWARD), ("input", NF_INET_LOCAL_IN)] {
        b.push(
            format!("adding chain {chain}"),
            libc::NFT_MSG_NEWCHAIN,
            create,
            |m| {
                m.str(NFTA_CHAIN_TABLE, TABLE)
                    .str(NFTA_CHAIN_NAME, chain)
                    .nest(NFTA_CHAIN_HOOK, |m| {
                        m.be32(NFTA_HOOK_HOOKNUM, hook).be32(NFTA_HOOK_PRIORITY, 0);
                    })
                    .be32(NFTA_CHAIN_POLICY, libc::NF_ACCEPT as u32)
                    .str(NFTA_CHAIN_TYPE, "filter");
            },
        );
    }
    let rule_flags = libc::NLM_F_CREATE | libc::NLM_F_APPEND;
    for v in vpcs {
        let bridge = ifname(&v.bridge);
        for chain in ["forward", "input"] {
            let name = format!("vpc {} {chain}", v.vpc);
            b.push(
                format!("adding rule {name}"),
                libc::NFT_MSG_NEWRULE,
                rule_flags,
                |m| {
                    m.str(NFTA_RULE_TABLE, TABLE)
                        .str(NFTA_RULE_CHAIN, chain)
                        .nest(NFTA_RULE_EXPRESSIONS, |m| {
                            meta(m, libc::NFT_META_IIFNAME);
                            cmp(m, libc::NFT_CMP_EQ, &bridge);
                            if chain == "forward" {
                                meta(m, libc::NFT_META_OIFNAME);
                                lookup(m, &BRIDGES);
                                cmp(m, libc::NFT_CMP_NEQ, &bridge);
                            } else {
                                // `ip daddr` in an inet table: IPv4 only.
                                meta(m, libc::NFT_META_NFPROTO);
                                cmp(m, libc::NFT_CMP_EQ, &[libc::NFPROTO_IPV4 as u8]);
                                m.expr("payload", |m| {
                                    m.be32(NFTA_PAYLOAD_DREG, REG)
                                        .be32(
                                            NFTA_PAYLOAD_BASE,
                                            libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                                        )
                                        .be32(NFTA_PAYLOAD_OFFSET, 16)
                                        .be32(NFTA_PAYLOAD_LEN, 4);
                                });
                                lookup(m, &GATEWAYS);
                                cmp(m, libc::NFT_CMP_NEQ, &v.gateway.octets());
                            }
                            counter_and_drop(m);
                        })
                        .attr(NFTA_RULE_USERDATA, &comment(&name));
                },
            );
        }
    }
    b
}

/// A NETLINK_NETFILTER socket inside the hub.
fn socket_in(hub: BorrowedFd<'_>) -> Result<OwnedFd> {
    let op = "nf_tables netlink socket in the hub";
    netns::run_in(hub, || {
        // SAFETY: plain socket(2); the fd is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })?
    .map_err(|source| Error::Nftables {
        op: op.into(),
        source,
    })
}

fn send(sock: &OwnedFd, buf: &[u8], op: &str) -> Result<()> {
    // SAFETY: buf is valid for buf.len() bytes; the kernel is the
    // destination of an unbound netlink socket's send.
    let n = unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(Error::Nftables {
            op: op.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Receives one datagram; `None` if none is queued (`dontwait`).
fn recv(sock: &OwnedFd, buf: &mut [u8], dontwait: bool, op: &str) -> Result<Option<usize>> {
    let flags = if dontwait { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock if dontwait => return Ok(None),
            _ => {
                return Err(Error::Nftables {
                    op: op.into(),
                    source: e,
                });
            }
        }
    }
}

/// The netlink messages in a datagram: (type, seq, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((ty, seq, payload))
    })
}

/// The errno of an NLMSG_ERROR payload (0: an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(libc::EPROTO)
}

/// Attributes in `buf`: (type without flags, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((ty, value))
    })
}

fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

fn be64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// Installs the isolation table for `vpcs` in the hub, in one
/// transaction.
pub fn apply(hub: BorrowedFd<'_>, vpcs: &[VpcRule]) -> Result<()> {
    let sock = socket_in(hub)?;
    let (buf, ops) = ruleset(vpcs).finish();
    send(&sock, &buf, "sending the isolation rules")?;
    // nfnetlink handles a batch within the send: every answer is queued.
    let mut acked = 0;
    let mut rbuf = vec![0u8; 64 * 1024];
    while let Some(n) = recv(&sock, &mut rbuf, true, "reading the acknowledgements")? {
        for (ty, seq, payload) in messages(&rbuf[..n]) {
            if ty != libc::NLMSG_ERROR as u16 {
                continue;
            }
            let code = error_code(payload);
            if code != 0 {
                let op = ops
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map_or("the isolation rules", |(_, w)| w.as_str());
                return Err(Error::Nftables {
                    op: op.to_string(),
                    source: io::Error::from_raw_os_error(code),
                });
            }
            acked += 1;
        }
    }
    if acked != ops.len() {
        return Err(Error::Nftables {
            op: format!(
                "the isolation rules: {acked} of {} changes acknowledged",
                ops.len()
            ),
            source: io::Error::from_raw_os_error(libc::EPROTO),
        });
    }
    Ok(())
}

/// The drop counters, per VPC and hook (none without the table).
pub fn counters(hub: BorrowedFd<'_>) -> Result<Vec<DropCounter>> {
    let op = "listing the isolation rules";
    let sock = socket_in(hub)?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut m = Msg::nft(libc::NFT_MSG_GETRULE, libc::NLM_F_DUMP, seq);
    m.str(NFTA_RULE_TABLE, TABLE);
    send(&sock, &m.finish(), op)?;
    let mut found = Vec::new();
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(&sock, &mut rbuf, false, op)?.unwrap_or(0);
        for (ty, _, payload) in messages(&rbuf[..n]) {
            if ty == libc::NLMSG_DONE as u16 {
                return Ok(found);
            }
            if ty == libc::NLMSG_ERROR as u16 {
                return match error_code(payload) {
                    0 => Ok(found),
                    libc::ENOENT => Ok(Vec::new()),
                    code => Err(Error::Nftables {
                        op: op.into(),
                        source: io::Error::from_raw_os_error(code),
                    }),
                };
            }
            found.extend(parse_rule(payload.get(NFGEN_LEN..).unwrap_or_default()));
        }
        if n == 0 {
            return Ok(found);
        }
    }
}

/// The drop counter of one rule's attributes, if it is one of ours.
fn parse_rule(rule: &[u8]) -> Option<DropCounter> {
    let name = parse_comment(attr(rule, NFTA_RULE_USERDATA)?)?;
    let (vpc, hook) = name.strip_prefix("vpc ")?.rsplit_once(' ')?;
    let exprs = attr(rule, NFTA_RULE_EXPRESSIONS)?;
    attrs(exprs)
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .find_map(|(_, e)| {
            let name = attr(e, NFTA_EXPR_NAME)?;
            if name.split(|&b| b == 0).next() != Some(b"counter") {
                return None;
            }
            let data = attr(e, NFTA_EXPR_DATA)?;
            Some(DropCounter {
                vpc: vpc.to_string(),
                hook: hook.to_string(),
                packets: attr(data, NFTA_COUNTER_PACKETS).map_or(0, be64),
                bytes: attr(data, NFTA_COUNTER_BYTES).map_or(0, be64),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpcs() -> Vec<VpcRule> {
        vec![
            VpcRule {
                vpc: "a".into(),
                bridge: "npbr0".into(),
                gateway: Ipv4Addr::new(198, 18, 0, 1),
            },
            VpcRule {
                vpc: "b".into(),
                bridge: "npbr1".into(),
                gateway: Ipv4Addr::new(198, 19, 0, 1),
            },
        ]
    }

    #[test]
    fn the_batch_is_framed_and_has_a_drop_per_vpc_and_hook() {
        let (buf, ops) = ruleset(&vpcs()).finish();
        let msgs: Vec<_> = messages(&buf).collect();
        // begin, ops, end; every op is a message of the batch.
        assert_eq!(msgs.len(), ops.len() + 2);
        assert_eq!(msgs[0].0, libc::NFNL_MSG_BATCH_BEGIN as u16);
        assert_eq!(msgs.last().unwrap().0, libc::NFNL_MSG_BATCH_END as u16);
        let rule_ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWRULE as u16;
        let rules: Vec<_> = msgs.iter().filter(|m| m.0 == rule_ty).collect();
        assert_eq!(rules.len(), 4);
        let names: Vec<String> = rules
            .iter()
            .map(|(_, _, p)| {
                parse_comment(attr(&p[NFGEN_LEN..], NFTA_RULE_USERDATA).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "vpc a forward",
                "vpc a input",
                "vpc b forward",
                "vpc b input"
            ]
        );
        let total: usize = msgs.iter().map(|m| align(m.2.len() + NLMSG_HDRLEN)).sum();
        assert_eq!(total, buf.len());
        assert!(ops.iter().any(|(_, w)| w == "adding rule vpc b input"));
    }

    #[test]
    fn nested_attributes_have_their_lengths() {
        let mut m = Msg::nft(libc::NFT_MSG_NEWRULE, 0, 7);
        m.nest(NFTA_RULE_EXPRESSIONS, |m| {
            m.expr("counter", |m| {
                m.attr(NFTA_COUNTER_BYTES, &180u64.to_be_bytes())
                    .attr(NFTA_COUNTER_PACKETS, &3u64.to_be_bytes());
            });
        })
        .attr(NFTA_RULE_USERDATA, &comment("vpc my-vpc forward"));
        let buf = m.finish();
        let (_, seq, payload) = messages(&buf).next().unwrap();
        assert_eq!(seq, 7);
        assert_eq!(
            parse_rule(&payload[NFGEN_LEN..]),
            Some(DropCounter {
                vpc: "my-vpc".into(),
                hook: "forward".into(),
                packets: 3,
                bytes: 180
            })
        );
    }

    #[test]
    fn interface_names_are_padded() {
        assert_eq!(&ifname("npbr0")[..6], b"npbr0\0");
        assert_eq!(ifname("npbr0").len(), IFNAMSIZ);
    }
}
