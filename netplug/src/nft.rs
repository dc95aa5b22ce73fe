//! Isolation between VPCs: an nftables table in the hub (never the host's
//! own namespace), applied with the `nft` binary run inside the hub and
//! given the whole table as JSON in one transaction.
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
//! which is an address local to the hub.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::error::{Error, Result};

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

fn table() -> Value {
    json!({"family": "inet", "name": TABLE})
}

/// The whole table as an nft JSON transaction (replacing any previous).
pub fn ruleset(vpcs: &[VpcRule]) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
        json!({"add": {"table": table()}}),
    ];
    let mut bridges =
        json!({"family": "inet", "table": TABLE, "name": "bridges", "type": "ifname"});
    let mut gateways =
        json!({"family": "inet", "table": TABLE, "name": "gateways", "type": "ipv4_addr"});
    if !vpcs.is_empty() {
        bridges["elem"] = vpcs.iter().map(|v| json!(v.bridge)).collect();
        gateways["elem"] = vpcs.iter().map(|v| json!(v.gateway.to_string())).collect();
    }
    cmds.push(json!({"add": {"set": bridges}}));
    cmds.push(json!({"add": {"set": gateways}}));
    for hook in ["forward", "input"] {
        cmds.push(json!({"add": {"chain": {
            "family": "inet", "table": TABLE, "name": hook,
            "type": "filter", "hook": hook, "prio": 0, "policy": "accept"
        }}}));
    }
    let meta = |key: &str| json!({"meta": {"key": key}});
    let is = |op: &str, left: Value, right: Value| json!({"match": {"op": op, "left": left, "right": right}});
    let daddr = json!({"payload": {"protocol": "ip", "field": "daddr"}});
    for v in vpcs {
        cmds.push(json!({"add": {"rule": {
            "family": "inet", "table": TABLE, "chain": "forward",
            "comment": format!("vpc {} forward", v.vpc),
            "expr": [
                is("==", meta("iifname"), json!(v.bridge)),
                is("==", meta("oifname"), json!("@bridges")),
                is("!=", meta("oifname"), json!(v.bridge)),
                {"counter": {"packets": 0, "bytes": 0}},
                {"drop": null}
            ]
        }}}));
        cmds.push(json!({"add": {"rule": {
            "family": "inet", "table": TABLE, "chain": "input",
            "comment": format!("vpc {} input", v.vpc),
            "expr": [
                is("==", meta("iifname"), json!(v.bridge)),
                is("==", daddr.clone(), json!("@gateways")),
                is("!=", daddr.clone(), json!(v.gateway.to_string())),
                {"counter": {"packets": 0, "bytes": 0}},
                {"drop": null}
            ]
        }}}));
    }
    json!({"nftables": cmds})
}

fn nft(hub: BorrowedFd<'_>, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    let fd = hub.as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child only calls setns(2), which
    // is async-signal-safe; fd stays open in the parent during spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(Error::NftSpawn)?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(data).map_err(Error::NftSpawn)?;
    }
    let out = child.wait_with_output().map_err(Error::NftSpawn)?;
    if !out.status.success() {
        return Err(Error::NftFailed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Installs the isolation table for `vpcs` in the hub.
pub fn apply(hub: BorrowedFd<'_>, vpcs: &[VpcRule]) -> Result<()> {
    let rules = serde_json::to_vec(&ruleset(vpcs)).expect("json");
    nft(hub, &["-j", "-f", "-"], Some(&rules)).map(|_| ())
}

/// The drop counters, per VPC and hook.
pub fn counters(hub: BorrowedFd<'_>) -> Result<Vec<DropCounter>> {
    let out = nft(hub, &["-j", "list", "table", "inet", TABLE], None)?;
    parse_counters(&out)
}

fn parse_counters(out: &[u8]) -> Result<Vec<DropCounter>> {
    let v: Value = serde_json::from_slice(out).map_err(Error::NftOutput)?;
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(comment) = rule["comment"].as_str() else {
            continue;
        };
        let Some(rest) = comment.strip_prefix("vpc ") else {
            continue;
        };
        let Some((vpc, hook)) = rest.rsplit_once(' ') else {
            continue;
        };
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let Some(c) = e.get("counter") {
                found.push(DropCounter {
                    vpc: vpc.to_string(),
                    hook: hook.to_string(),
                    packets: c["packets"].as_u64().unwrap_or(0),
                    bytes: c["bytes"].as_u64().unwrap_or(0),
                });
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_a_drop_per_vpc_and_hook() {
        let r = ruleset(&[
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
        ]);
        let text = r.to_string();
        assert_eq!(text.matches("\"drop\"").count(), 4);
        assert!(text.contains("vpc a input") && text.contains("vpc b forward"));
        assert!(text.contains("\"hook\":\"input\"") && text.contains("\"hook\":\"forward\""));
    }

    #[test]
    fn counters_parse() {
        let out = br#"{"nftables":[{"metainfo":{}},{"rule":{"chain":"forward","comment":"vpc my-vpc forward","expr":[{"match":{}},{"counter":{"packets":3,"bytes":180}},{"drop":null}]}}]}"#;
        let c = parse_counters(out).unwrap();
        assert_eq!(
            c,
            vec![DropCounter {
                vpc: "my-vpc".into(),
                hook: "forward".into(),
                packets: 3,
                bytes: 180
            }]
        );
    }
}
