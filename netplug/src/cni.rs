//! CNI fill mode: a VPC's namespaces plumbed by standard CNI plugins
//! (bridge + host-local from a conflist), run inside the hub so that the
//! bridge plugin makes its bridge there, with host-local's data under
//! sprout's state root. Off the hot path: a take is the same either way.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::link::IFNAME;
use crate::subnet::Subnet;

/// Where Debian's containernetworking-plugins are.
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni";

/// What netplug reads from a conflist.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    pub bridge: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::CniConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks a conflist and points host-local at `data_dir`. The network
/// must have a `bridge` plugin with `host-local` IPAM on exactly one
/// subnet, and no `ipMasq` (netplug never touches the host's firewall).
pub fn prepare(path: &Path, mut conf: Value, data_dir: &Path) -> Result<(Value, CniNetwork)> {
    if conf["name"].as_str().is_none_or(str::is_empty) {
        return Err(bad(path, "missing \"name\""));
    }
    if conf["cniVersion"].as_str().is_none() {
        return Err(bad(path, "missing \"cniVersion\""));
    }
    let plugins = conf["plugins"].as_array_mut().ok_or_else(|| {
        bad(
            path,
            "missing \"plugins\" (a conflist, not a single network config)",
        )
    })?;
    let mut found = None;
    for p in plugins.iter_mut() {
        let ty = p["type"]
            .as_str()
            .ok_or_else(|| bad(path, "a plugin without \"type\""))?;
        if ty.contains('/') || ty.starts_with('.') {
            return Err(bad(path, format!("plugin type {ty:?} is not a plain name")));
        }
        if ty != "bridge" {
            continue;
        }
        if p["ipMasq"].as_bool() == Some(true) {
            return Err(bad(
                path,
                "ipMasq is not supported (it would need NAT rules)",
            ));
        }
        if p["ipam"]["type"].as_str() != Some("host-local") {
            return Err(bad(path, "the bridge plugin must use host-local IPAM"));
        }
        let ipam = &mut p["ipam"];
        let (subnet, gateway) = if let Some(s) = ipam["subnet"].as_str() {
            (s.to_string(), ipam["gateway"].as_str().map(str::to_string))
        } else {
            let ranges = ipam["ranges"]
                .as_array()
                .ok_or_else(|| bad(path, "ipam has neither subnet nor ranges"))?;
            let sets: Vec<&Value> = ranges
                .iter()
                .flat_map(|r| r.as_array().into_iter().flatten())
                .collect();
            if sets.len() != 1 {
                return Err(bad(path, "ipam must have exactly one range"));
            }
            let s = sets[0]["subnet"]
                .as_str()
                .ok_or_else(|| bad(path, "range without subnet"))?;
            (
                s.to_string(),
                sets[0]["gateway"].as_str().map(str::to_string),
            )
        };
        let subnet: Subnet = subnet.parse()?;
        let gateway = match gateway {
            Some(g) => g
                .parse()
                .map_err(|_| bad(path, format!("gateway {g:?} is not an IPv4 address")))?,
            None => subnet.first_host(),
        };
        ipam["dataDir"] = Value::String(data_dir.to_string_lossy().into_owned());
        let bridge = p["bridge"].as_str().unwrap_or("cni0").to_string();
        p["bridge"] = Value::String(bridge.clone());
        let mtu = p["mtu"].as_u64().unwrap_or(1500) as u32;
        found = Some(CniNetwork {
            bridge,
            subnet,
            gateway,
            mtu,
        });
    }
    let net = found.ok_or_else(|| bad(path, "no \"bridge\" plugin"))?;
    Ok((conf, net))
}

/// The outcome of an ADD.
#[derive(Debug, Clone)]
pub struct Added {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hub_veth: Option<String>,
}

#[derive(Clone, Copy)]
enum Cmd {
    Add,
    Del,
}

impl Cmd {
    fn as_str(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
        }
    }
}

fn exec(
    cni_path: &Path,
    hub: BorrowedFd<'_>,
    cmd: Cmd,
    plugin_conf: &Value,
    container_id: &str,
    netns: &Path,
) -> Result<Value> {
    let ty = plugin_conf["type"].as_str().unwrap_or_default();
    let bin: PathBuf = cni_path.join(ty);
    let fd = hub.as_raw_fd();
    let mut c = Command::new(&bin);
    c.env_clear()
        .env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", cni_path)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child only calls setns(2), which
    // is async-signal-safe; fd stays open in the parent during spawn.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawn_err = |source| Error::CniSpawn {
        path: bin.clone(),
        source,
    };
    let mut child = c.spawn().map_err(spawn_err)?;
    let input = serde_json::to_vec(plugin_conf).expect("json");
    if let Some(mut w) = child.stdin.take() {
        w.write_all(&input).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let message = parsed
            .as_ref()
            .and_then(|v| {
                v["msg"].as_str().map(|m| match v["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{m}: {d}"),
                    _ => m.to_string(),
                })
            })
            .unwrap_or_else(|| {
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            });
        return Err(Error::CniPlugin {
            plugin: ty.to_string(),
            command: cmd.as_str(),
            message,
        });
    }
    Ok(parsed.unwrap_or(Value::Null))
}

fn plugin_conf(conf: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut p = plugin.clone();
    p["cniVersion"] = conf["cniVersion"].clone();
    p["name"] = conf["name"].clone();
    if let Some(prev) = prev {
        p["prevResult"] = prev.clone();
    }
    p
}

/// Runs the conflist's plugins in order (ADD) for namespace `netns`.
pub fn add(
    cni_path: &Path,
    hub: BorrowedFd<'_>,
    conf: &Value,
    id: &str,
    netns: &Path,
) -> Result<(Added, Value)> {
    let mut prev: Option<Value> = None;
    for plugin in conf["plugins"].as_array().into_iter().flatten() {
        let input = plugin_conf(conf, plugin, prev.as_ref());
        let r = exec(cni_path, hub, Cmd::Add, &input, id, netns)?;
        prev = Some(r);
    }
    let result = prev.unwrap_or(Value::Null);
    let ip = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| {
            let (a, p) = i["address"].as_str()?.split_once('/')?;
            Some((
                a.parse::<Ipv4Addr>().ok()?,
                p.parse::<u8>().ok()?,
                i["gateway"].as_str().and_then(|g| g.parse().ok()),
            ))
        })
        .ok_or_else(|| Error::CniPlugin {
            plugin: "bridge".into(),
            command: "ADD",
            message: format!("result has no IPv4 address: {result}"),
        })?;
    let bridge = conf["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["type"] == "bridge")
        .and_then(|p| p["bridge"].as_str())
        .unwrap_or_default();
    let hub_veth = result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
        .filter_map(|i| i["name"].as_str())
        .find(|n| *n != bridge)
        .map(str::to_string);
    Ok((
        Added {
            address: ip.0,
            prefix: ip.1,
            gateway: ip.2,
            hub_veth,
        },
        result,
    ))
}

/// Runs the plugins in reverse order (DEL); errors of each are collected
/// and the first returned after all have run.
pub fn del(
    cni_path: &Path,
    hub: BorrowedFd<'_>,
    conf: &Value,
    id: &str,
    netns: &Path,
    prev: Option<&Value>,
) -> Result<()> {
    let mut first_err = None;
    let plugins: Vec<&Value> = conf["plugins"].as_array().into_iter().flatten().collect();
    for plugin in plugins.into_iter().rev() {
        let input = plugin_conf(conf, plugin, prev);
        if let Err(e) = exec(cni_path, hub, Cmd::Del, &input, id, netns) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_points_host_local_at_our_dir() {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "n",
            "plugins": [{"type": "bridge", "bridge": "cnibr7", "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.30.0/24"}]]}}]
        });
        let (c, net) = prepare(Path::new("c.conflist"), conf, Path::new("/x/ipam")).unwrap();
        assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/x/ipam");
        assert_eq!(net.bridge, "cnibr7");
        assert_eq!(net.subnet.to_string(), "198.18.30.0/24");
        assert_eq!(net.gateway, Ipv4Addr::new(198, 18, 30, 1));
    }

    #[test]
    fn prepare_refuses_masquerade_and_foreign_ipam() {
        for p in [
            serde_json::json!({"type": "bridge", "ipMasq": true, "ipam": {"type": "host-local", "subnet": "198.18.1.0/24"}}),
            serde_json::json!({"type": "bridge", "ipam": {"type": "dhcp"}}),
            serde_json::json!({"type": "../bin/sh"}),
        ] {
            let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [p]});
            assert!(prepare(Path::new("c"), conf, Path::new("/d")).is_err());
        }
    }
}
