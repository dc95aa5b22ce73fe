//! `sprout vpc …`, `sprout netplug …`, and the runtime hook: a container
//! whose config asks for a VPC (`--vpc NAME` or the `io.sprout.vpc`
//! annotation) takes a pre-plugged namespace from netplug's pool before
//! it is created, joins it by path, and gives it back when deleted.
//! Without a daemon: the CLI claims a ready namespace in the state
//! directory itself.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Process};

use sprout::netplug::{
    self, BlockingNetplug, GiveBackPolicy, LEASE_ANNOTATION, Options, Owner, VPC_ANNOTATION,
    VpcConfig, VpcPlumbing,
};
use sprout::runtime::spec::Bundle;
use sprout::runtime::{Container, CreateOptions, Runtime};

use super::GlobalOpts;

/// The annotation recording a container's address in its VPC
/// (`ADDR/PREFIX`).
pub const ADDRESS_ANNOTATION: &str = "io.sprout.netplug.address";
use super::lifecycle::Format;

#[derive(Debug, Subcommand)]
pub enum VpcCommand {
    /// Create a VPC: a bridge with a subnet and gateway in netplug's hub,
    /// isolated from every other VPC, and a pool of namespaces plugged
    /// into it.
    Create(VpcCreateArgs),
    /// Delete a VPC and everything it made (refused while a live
    /// container holds one of its namespaces).
    Delete {
        /// Also take back namespaces live containers hold (they lose
        /// their network).
        #[arg(short = 'f', long)]
        force: bool,
        /// VPC name.
        name: String,
    },
    /// List VPCs.
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Args)]
pub struct VpcCreateArgs {
    /// VPC name (letters, digits, '-', '_').
    pub name: String,
    /// Subnet, e.g. 198.18.0.0/24 (netplug's own plumbing).
    #[arg(long, required_unless_present = "cni", conflicts_with = "cni")]
    pub subnet: Option<String>,
    /// Gateway address on the VPC's bridge (default: the first host).
    #[arg(long, conflicts_with = "cni")]
    pub gateway: Option<Ipv4Addr>,
    /// Fill the pool with CNI plugins (bridge + host-local) from this
    /// conflist instead; subnet and bridge come from it.
    #[arg(long)]
    pub cni: Option<PathBuf>,
    /// MTU of the bridge and of every namespace's eth0.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Namespaces kept ready (by `netplug fill` or `netplug serve`).
    #[arg(long, default_value_t = 0)]
    pub pool: usize,
    /// Destroy given-back namespaces instead of scrubbing them for reuse.
    #[arg(long)]
    pub destroy_on_give_back: bool,
}

#[derive(Debug, Subcommand)]
pub enum NetplugCommand {
    /// Pools (sizes, takes, misses, refill times) and the isolation
    /// rules' drop counters.
    Status {
        #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Reconcile: reclaim namespaces no live container holds, remove
    /// half-made ones and leftovers no record accounts for.
    Gc,
    /// Fill every pool to its target size now.
    Fill,
    /// Hold the pools: reconcile (printing what it did as `gc` does, then
    /// "serving"), then keep them filled until SIGINT or SIGTERM (what
    /// sproutd does for its own root).
    Serve,
    /// IPv4 forwarding in the hub (off by default).
    Forwarding {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

fn open(g: &GlobalOpts) -> Result<BlockingNetplug> {
    let mut opts = Options::new(&g.root);
    if let Ok(p) = std::env::var("SPROUT_CNI_PATH") {
        opts.cni_path = p.into();
    }
    Ok(BlockingNetplug::open(opts)?)
}

pub fn vpc(g: &GlobalOpts, c: VpcCommand) -> Result<u8> {
    let np = open(g)?;
    match c {
        VpcCommand::Create(a) => {
            let plumbing = match (a.subnet, a.cni) {
                (_, Some(conflist)) => VpcPlumbing::Cni { conflist },
                (Some(s), None) => VpcPlumbing::Native {
                    subnet: s.parse()?,
                    gateway: a.gateway,
                },
                (None, None) => anyhow::bail!("give --subnet or --cni"),
            };
            let v = np.create_vpc(VpcConfig {
                name: a.name,
                plumbing,
                mtu: a.mtu,
                pool_size: a.pool,
                give_back: if a.destroy_on_give_back {
                    GiveBackPolicy::Destroy
                } else {
                    GiveBackPolicy::Reuse
                },
            })?;
            println!(
                "{} {} gateway {} bridge {}",
                v.name, v.subnet, v.gateway, v.bridge
            );
        }
        VpcCommand::Delete { name, force } => np.delete_vpc(&name, force)?,
        VpcCommand::List { format } => {
            let vpcs = np.vpcs()?;
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&vpcs)?)?,
                Format::Table => {
                    writeln!(
                        out,
                        "{:<20} {:<18} {:<15} {:<8} {:<6} {:<5} MODE",
                        "NAME", "SUBNET", "GATEWAY", "BRIDGE", "MTU", "POOL"
                    )?;
                    for v in vpcs {
                        let mode = match v.fill {
                            netplug::FillMode::Native => "native",
                            netplug::FillMode::Cni { .. } => "cni",
                        };
                        writeln!(
                            out,
                            "{:<20} {:<18} {:<15} {:<8} {:<6} {:<5} {mode}",
                            v.name,
                            v.subnet.to_string(),
                            v.gateway.to_string(),
                            v.bridge,
                            v.mtu,
                            v.pool_size
                        )?;
                    }
                }
            }
        }
    }
    Ok(0)
}

pub fn netplug(g: &GlobalOpts, c: NetplugCommand) -> Result<u8> {
    let np = open(g)?;
    match c {
        NetplugCommand::Status { format } => {
            let s = np.status()?;
            let mut out = std::io::stdout().lock();
            if format == Format::Json {
                writeln!(out, "{}", serde_json::to_string(&s)?)?;
                return Ok(0);
            }
            match &s.hub {
                Some(h) => writeln!(
                    out,
                    "hub {} forwarding {}",
                    h.display(),
                    if s.forwarding { "on" } else { "off" }
                )?,
                None => writeln!(out, "no hub (no VPC)")?,
            }
            writeln!(
                out,
                "{:<20} {:<6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>8} {:>10} {:>12}",
                "VPC",
                "MODE",
                "TARGET",
                "READY",
                "LEASED",
                "TAKES",
                "MISSES",
                "REFILLED",
                "BUILD(ms)",
                "REFILL(ms)"
            )?;
            for p in &s.pools {
                let c = &p.counters;
                let build = if c.built > 0 {
                    c.build_us as f64 / c.built as f64 / 1000.0
                } else {
                    0.0
                };
                writeln!(
                    out,
                    "{:<20} {:<6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>8} {:>10.2} {:>12.2}",
                    p.vpc,
                    p.mode,
                    p.target,
                    p.ready,
                    p.leased,
                    c.takes,
                    c.misses,
                    c.refilled,
                    build,
                    c.last_refill_us as f64 / 1000.0
                )?;
            }
            for d in &s.drops {
                writeln!(
                    out,
                    "drops {} {}: {} packets, {} bytes",
                    d.vpc, d.hook, d.packets, d.bytes
                )?;
            }
        }
        NetplugCommand::Gc => {
            let r = np.gc()?;
            print_gc(&r);
            // Everything else was cleaned up; what failed is named above.
            if !r.failed.is_empty() {
                return Ok(1);
            }
        }
        NetplugCommand::Fill => {
            let n = np.fill()?;
            println!("made {n}");
        }
        NetplugCommand::Serve => {
            // What the start-up reconciliation did, then "serving": the
            // pools are held from here on.
            np.serve_until_terminated(|r| {
                print_gc(r);
                println!("serving");
                let _ = std::io::stdout().flush();
            })?;
        }
        NetplugCommand::Forwarding { state } => np.set_forwarding(state == "on")?,
    }
    Ok(0)
}

/// One line per thing reconciliation did (`netplug gc`, and `netplug
/// serve` at start).
fn print_gc(r: &netplug::GcReport) {
    for id in &r.reclaimed {
        println!("reclaimed {id}");
    }
    for id in &r.destroyed {
        println!("destroyed {id}");
    }
    for o in &r.orphans {
        println!("removed {o}");
    }
    for f in &r.failed {
        eprintln!("sprout: gc could not clean up {f}");
    }
}

/// Creates a container; with a VPC (`vpc`, else the config's
/// `io.sprout.vpc` annotation) it first takes a namespace from that
/// VPC's pool and joins it by path, recording the lease in the
/// container's annotations so that delete gives it back.
pub fn create_container(
    g: &GlobalOpts,
    rt: &Runtime,
    id: &str,
    bundle_dir: &Path,
    vpc: Option<&str>,
    opts: CreateOptions,
) -> Result<Container> {
    with_vpc(g, id, bundle_dir, vpc, |bundle| {
        Ok(rt.create_from_bundle(id, bundle, opts)?)
    })
}

/// Loads the bundle at `bundle_dir` for container `id` and hands it to
/// `create`. With a VPC (`vpc`, else the config's `io.sprout.vpc`
/// annotation) it first takes a namespace of that VPC's pool, points the
/// bundle's network namespace at it and records the lease in the
/// annotations (so that [`delete_container`] gives it back); if `create`
/// fails, the lease is given back at once. What `create`, `run` and
/// `restore` share.
pub fn with_vpc<T>(
    g: &GlobalOpts,
    id: &str,
    bundle_dir: &Path,
    vpc: Option<&str>,
    create: impl FnOnce(Bundle) -> Result<T>,
) -> Result<T> {
    let mut bundle = sprout::runtime::spec::load_bundle(bundle_dir)?;
    let mut annotations = bundle.spec.annotations().clone().unwrap_or_default();
    // Only sprout records leases.
    annotations.remove(LEASE_ANNOTATION);
    let vpc = vpc
        .map(str::to_string)
        .or_else(|| annotations.get(VPC_ANNOTATION).cloned());
    let Some(vpc) = vpc else {
        bundle.spec.set_annotations(Some(annotations));
        return create(bundle);
    };
    let t0 = Instant::now();
    let np = open(g)?;
    let process = bundle.spec.process().clone().unwrap_or_default();
    let may_reconfigure = sprout::runtime::spec::may_reconfigure_network(&bundle.spec, &process);
    let lease = np
        .take(&vpc, &Owner::container(id).reconfiguring(may_reconfigure))
        .with_context(|| format!("network namespace from VPC {vpc}"))?;
    tracing::debug!(container = id, vpc = %vpc, ns = %lease.id, address = %lease.address, "netplug take {}µs", t0.elapsed().as_micros());
    let joined = join_lease(&mut bundle, annotations, &vpc, &lease);
    match joined.and_then(|()| create(bundle)) {
        Ok(c) => Ok(c),
        Err(e) => {
            if let Err(e2) = np.give_back(&lease.id) {
                tracing::warn!(container = id, "giving back {}: {e2}", lease.id);
            }
            Err(e)
        }
    }
}

/// Points `bundle`'s network namespace at `lease`'s and records the lease
/// in its annotations.
fn join_lease(
    bundle: &mut Bundle,
    mut annotations: HashMap<String, String>,
    vpc: &str,
    lease: &netplug::Lease,
) -> Result<()> {
    annotations.insert(LEASE_ANNOTATION.to_string(), lease.id.clone());
    annotations.insert(VPC_ANNOTATION.to_string(), vpc.to_string());
    annotations.insert(
        ADDRESS_ANNOTATION.into(),
        format!("{}/{}", lease.address, lease.prefix),
    );
    bundle.spec.set_annotations(Some(annotations));
    let mut linux = bundle.spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    namespaces.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(lease.path.clone())
            .build()
            .context("network namespace entry")?,
    );
    linux.set_namespaces(Some(namespaces));
    bundle.spec.set_linux(Some(linux));
    Ok(())
}

/// Before container `c` runs `process`: if that process could
/// reconfigure the pooled network namespace the container holds, the
/// namespace is marked to be destroyed rather than reused when it is
/// given back.
pub fn before_exec(g: &GlobalOpts, c: &Container, process: &Process) -> Result<()> {
    if let Some(lease) = sprout::shim::network::lease_to_mark_before_exec(c, process) {
        open(g)?
            .note_may_reconfigure(&lease, c.id())
            .with_context(|| format!("marking network namespace {lease} as not reusable"))?;
    }
    Ok(())
}

/// Deletes a container, then gives back the namespace it took (if any).
/// A give-back that fails is logged: the lease's owner is gone, so
/// `sprout netplug gc` (or the next pool holder start) reclaims it.
pub fn delete_container(g: &GlobalOpts, c: Container, force: bool) -> Result<()> {
    let id = c.id().to_string();
    let lease = c
        .spec()
        .annotations()
        .as_ref()
        .and_then(|a| a.get(LEASE_ANNOTATION).cloned());
    c.delete(force)?;
    if let Some(lease) = lease {
        let t0 = Instant::now();
        match open(g).and_then(|np| Ok(np.give_back_from(&lease, &id)?)) {
            Ok(()) => {
                tracing::debug!(container = %id, ns = %lease, "netplug give back {}µs", t0.elapsed().as_micros())
            }
            Err(e) => {
                tracing::warn!(container = %id, "giving back network namespace {lease}: {e:#}")
            }
        }
    }
    Ok(())
}
