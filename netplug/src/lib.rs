//! sprout netplug: pools of pre-plugged network namespaces per VPC,
//! handed to sandboxes by fd.
//!
//! A VPC is a bridge with a subnet and a gateway address in netplug's own
//! hub network namespace (never the host's). Per VPC, a pool keeps
//! namespaces ready to use: `lo` up, `eth0` (a veth whose peer is a port
//! of the bridge) up with its address, a default route via the gateway.
//! [`Netplug::take`] hands one out as an fd plus its address and path in
//! microseconds; [`Netplug::give_back`] scrubs and reuses it or destroys
//! it; [`Netplug::spawn_refill`] keeps every pool at its target size in
//! the background. All of it is recorded under `<sprout root>/.netplug/`
//! (see [`state`]) so that any process — the `sprout` CLI, a pool holder,
//! `sproutd` — can take from the same pools, and [`Netplug::gc`]
//! reconciles after a crash.
//!
//! Links, addresses and routes are set over netlink ([`link`]); the
//! isolation rules between VPCs are an nftables table in the hub
//! ([`nft`]); a VPC can instead be plumbed by CNI plugins ([`cni`]).

pub mod cni;
mod error;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;
pub mod state;
mod subnet;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtnetlink::Handle;

pub use error::{Error, Result};
pub use nft::DropCounter;
pub use state::{Counters, FillMode, GiveBackPolicy, NsRecord, Owner, ProcRef, Vpc};
pub use subnet::Subnet;

use state::{Building, Claim, HubConfig, Layout, LeaseRecord};

/// Container annotation asking for a namespace of a VPC's pool.
pub const VPC_ANNOTATION: &str = "io.sprout.vpc";
/// Annotation recording the lease a container holds (set by sprout).
pub const LEASE_ANNOTATION: &str = "io.sprout.netplug.lease";

#[derive(Debug, Clone)]
pub struct Options {
    /// sprout's state root (netplug keeps its state in `.netplug/`).
    pub root: PathBuf,
    /// Applies to every VPC; a VPC's own policy can also ask for destroy.
    pub give_back: GiveBackPolicy,
    /// Directory of the CNI plugin binaries.
    pub cni_path: PathBuf,
    /// How often the refill task looks at the pools when nothing wakes it.
    pub refill_interval: Duration,
}

impl Options {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Options {
            root: root.into(),
            give_back: GiveBackPolicy::Reuse,
            cni_path: PathBuf::from(cni::DEFAULT_CNI_PATH),
            refill_interval: Duration::from_secs(1),
        }
    }
}

/// How a VPC's namespaces are plumbed, as asked at creation.
#[derive(Debug, Clone)]
pub enum VpcPlumbing {
    /// netplug's own netlink plumbing on `subnet` (gateway: the first
    /// host unless given).
    Native {
        subnet: Subnet,
        gateway: Option<Ipv4Addr>,
    },
    /// CNI plugins from the conflist at this path; subnet, gateway and
    /// bridge come from it.
    Cni { conflist: PathBuf },
}

#[derive(Debug, Clone)]
pub struct VpcConfig {
    pub name: String,
    pub plumbing: VpcPlumbing,
    pub mtu: u32,
    /// Namespaces the refill task keeps ready.
    pub pool_size: usize,
    pub give_back: GiveBackPolicy,
}

/// A namespace handed out by [`Netplug::take`]. Dropping it does not give
/// it back: call [`Netplug::give_back`] with its id.
#[derive(Debug)]
pub struct Lease {
    pub id: String,
    pub vpc: String,
    /// The namespace, to `setns` into.
    pub fd: OwnedFd,
    /// Its bind-mounted file, for joining by path (OCI `linux.namespaces`).
    pub path: PathBuf,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// One VPC's pool, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    pub vpc: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub mode: &'static str,
    pub target: usize,
    pub ready: usize,
    pub leased: usize,
    pub counters: Counters,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub hub: Option<PathBuf>,
    pub forwarding: bool,
    pub pools: Vec<PoolStatus>,
    pub drops: Vec<DropCounter>,
}

/// What [`Netplug::gc`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Leases of dead owners, reclaimed.
    pub reclaimed: Vec<String>,
    /// Namespaces torn down: half-built, broken, or of gone VPCs.
    pub destroyed: Vec<String>,
    /// Leftovers with no record (namespace files, hub links, addresses).
    pub orphans: Vec<String>,
    /// Items gc could not clean up, with why; it went on with the rest
    /// and they stay for the next gc.
    pub failed: Vec<String>,
}

/// Whether opening a pooled namespace failed because it is gone (its
/// mount point left bare or removed), not for a reason of the opener's.
fn is_gone(e: &Error) -> bool {
    matches!(e, Error::Sys { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData))
}

impl GcReport {
    /// Keeps `r`'s error in `failed` (what gc was doing first); whether
    /// the step worked.
    fn step(&mut self, what: impl FnOnce() -> String, r: Result<()>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                let what = what();
                tracing::warn!("gc: {what}: {e}");
                self.failed.push(format!("{what}: {e}"));
                false
            }
        }
    }
}

struct Hub {
    fd: OwnedFd,
    ino: u64,
    nl: Handle,
}

struct Ready {
    rec: NsRecord,
    fd: OwnedFd,
}

/// netplug: the hub, the VPCs and their pools, shared through the state
/// directory with every other process that uses them. Its netlink
/// connections run on the tokio runtime it is first used on: use one
/// `Netplug` per runtime (or [`BlockingNetplug`] from plain threads).
pub struct Netplug {
    layout: Layout,
    opts: Options,
    hub: Mutex<Option<Arc<Hub>>>,
    pools: Mutex<HashMap<String, VecDeque<Ready>>>,
    deltas: Mutex<HashMap<String, Counters>>,
    wake: tokio::sync::Notify,
    /// Taken before the state `flock`, so tasks of one process queue
    /// here instead of blocking a runtime thread on each other's flock.
    local: tokio::sync::Mutex<()>,
    /// Taken before the builds `flock`, in the same mode (shared by
    /// builders, exclusive for gc and VPC deletion), for the same reason.
    local_builds: tokio::sync::RwLock<()>,
}

/// Held while a namespace is built: builders share it (a take that
/// makes one on the spot never waits for the refill task's builds, nor
/// for a slow CNI plugin), gc and VPC deletion hold it alone (so every
/// building record they see was left by a builder that died or gave up).
struct BuildGuard<G> {
    _local: G,
    _file: state::FileLock,
}

fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 32 {
        return Err(bad("must be 1 to 32 characters"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad("must start with a letter or digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("may only contain letters, digits, '-' and '_'"));
    }
    Ok(())
}

const NS_SYSCTLS: &[(&str, &str)] = &[
    // IPv4 only: no link-local IPv6 chatter between sandboxes and the hub.
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
];

/// The hub's own: a packet from a bridge must come from an address routed
/// back through that bridge (strict reverse-path filtering), or a sandbox
/// could spoof another VPC's address and have the hub answer into that
/// VPC; and ARP is answered only for addresses of the bridge asked on.
const HUB_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/conf/all/rp_filter", "1"),
    ("net/ipv4/conf/default/rp_filter", "1"),
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/default/arp_ignore", "1"),
];

impl Netplug {
    /// Opens netplug's state under `opts.root` (creating the directory).
    /// Nothing is reconciled: a process that holds pools calls
    /// [`gc`](Self::gc) once at start.
    pub fn open(opts: Options) -> Result<Arc<Self>> {
        let layout = Layout::new(&opts.root);
        state::mkdirs(layout.dir())?;
        state::mkdirs(&layout.leases_dir())?;
        Ok(Arc::new(Netplug {
            layout,
            opts,
            hub: Mutex::new(None),
            pools: Mutex::new(HashMap::new()),
            deltas: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            local: tokio::sync::Mutex::new(()),
            local_builds: tokio::sync::RwLock::new(()),
        }))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    async fn lock(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, state::FileLock)> {
        let g = self.local.lock().await;
        let f = state::FileLock::acquire(&self.layout.lock())?;
        Ok((g, f))
    }

    async fn builds_shared(&self) -> Result<BuildGuard<tokio::sync::RwLockReadGuard<'_, ()>>> {
        let g = self.local_builds.read().await;
        let f = state::FileLock::acquire_shared(&self.layout.builds_lock())?;
        Ok(BuildGuard {
            _local: g,
            _file: f,
        })
    }

    /// Waits for every build in progress (of any process) to end and
    /// keeps new ones from starting. Taken before [`lock`](Self::lock).
    async fn builds_exclusive(&self) -> Result<BuildGuard<tokio::sync::RwLockWriteGuard<'_, ()>>> {
        let g = self.local_builds.write().await;
        let f = state::FileLock::acquire(&self.layout.builds_lock())?;
        Ok(BuildGuard {
            _local: g,
            _file: f,
        })
    }

    fn count(&self, vpc: &str, f: impl FnOnce(&mut Counters)) {
        let mut d = self.deltas.lock().expect("poisoned");
        f(d.entry(vpc.to_string()).or_default());
    }

    /// Adds this process's counters to the persisted ones.
    pub fn flush_stats(&self) -> Result<()> {
        let deltas = std::mem::take(&mut *self.deltas.lock().expect("poisoned"));
        if deltas.values().all(Counters::is_zero) {
            return Ok(());
        }
        state::mkdirs(&self.layout.dir().join("stats"))?;
        let _l = state::FileLock::acquire(&self.layout.stats_lock())?;
        for (vpc, d) in deltas {
            if !self.layout.vpc(&vpc).exists() {
                continue;
            }
            let path = self.layout.stats(&vpc);
            let mut c: Counters = state::read_json_opt(&path)?.unwrap_or_default();
            c.add(&d);
            state::write_json(&path, &c)?;
        }
        Ok(())
    }

    fn hub_config(&self) -> Result<HubConfig> {
        Ok(state::read_json_opt(&self.layout.hub_config())?.unwrap_or_default())
    }

    /// The hub, opened (or, with `create`, made) if needed.
    fn hub(&self, create: bool) -> Result<Option<Arc<Hub>>> {
        let path = self.layout.hub_ns();
        let on_disk = netns::is_ns_file(&path)
            .then(|| {
                std::fs::metadata(&path)
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            })
            .flatten();
        let mut cached = self.hub.lock().expect("poisoned");
        if let (Some(h), Some(ino)) = (cached.as_ref(), on_disk)
            && h.ino == ino
        {
            return Ok(Some(h.clone()));
        }
        *cached = None;
        let (fd, nl) = if on_disk.is_some() {
            let fd = netns::open_ns(&path)?;
            // A hub made before these settings gets them too (once per
            // process: the hub is cached from here). Not a reason to fail
            // an open (a read-only /proc/sys): said, and left.
            let hardened = netns::run_in(fd.as_fd(), || {
                HUB_SYSCTLS.iter().try_for_each(|(k, v)| {
                    let now = std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
                    if now.trim() == *v {
                        Ok(())
                    } else {
                        netns::write_sysctl(k, v)
                    }
                })
            });
            if let Err(e) | Ok(Err(e)) = hardened.map_err(|e| std::io::Error::other(e.to_string()))
            {
                tracing::warn!("could not harden the hub (rp_filter, arp_ignore): {e}");
            }
            let sock = netns::netlink_socket_in(fd.as_fd())?;
            (fd, link::connect(sock))
        } else if create {
            state::mkdirs(&self.layout.ns_dir())?;
            netns::prepare_ns_dir(&self.layout.ns_dir())?;
            // A mount point left by a hub that is gone (the node rebooted,
            // or the mount namespace that held the mounts ended): an empty
            // file that would make every create fail with EEXIST.
            state::remove_file(&path)?;
            let forwarding = if self.hub_config()?.forwarding {
                "1"
            } else {
                "0"
            };
            let mut sysctls = NS_SYSCTLS.to_vec();
            sysctls.extend(HUB_SYSCTLS);
            sysctls.push(("net/ipv4/ip_forward", forwarding));
            let ns = netns::create(&path, &sysctls)?;
            (ns.fd, link::connect(ns.netlink))
        } else {
            return Ok(None);
        };
        let ino = netns::ns_inode(fd.as_fd()).map_err(Error::sys("hub namespace"))?;
        let hub = Arc::new(Hub { fd, ino, nl });
        *cached = Some(hub.clone());
        Ok(Some(hub))
    }

    /// The hub namespace's file, if there is a hub (it exists while any
    /// VPC does).
    pub fn hub_path(&self) -> Option<PathBuf> {
        let p = self.layout.hub_ns();
        netns::is_ns_file(&p).then_some(p)
    }

    async fn teardown_hub(&self) -> Result<()> {
        *self.hub.lock().expect("poisoned") = None;
        netns::remove(&self.layout.hub_ns())?;
        netns::release_ns_dir(&self.layout.ns_dir())?;
        let _ = std::fs::remove_dir(self.layout.ns_dir());
        Ok(())
    }

    /// IPv4 forwarding in the hub (off unless asked for; the CNI bridge
    /// plugin turns it on for a gateway). Isolation between VPCs does not
    /// depend on it.
    pub async fn set_forwarding(&self, on: bool) -> Result<()> {
        let _l = self.lock().await?;
        state::write_json(&self.layout.hub_config(), &HubConfig { forwarding: on })?;
        if let Some(hub) = self.hub(false)? {
            netns::run_in(hub.fd.as_fd(), || {
                netns::write_sysctl("net/ipv4/ip_forward", if on { "1" } else { "0" })
            })?
            .map_err(Error::sys("setting forwarding in the hub"))?;
        }
        Ok(())
    }

    /// Every VPC, by name.
    pub fn vpcs(&self) -> Result<Vec<Vpc>> {
        state::list(&self.layout.vpcs_dir(), ".json")?
            .iter()
            .map(|n| state::read_json(&self.layout.vpc(n)))
            .collect()
    }

    pub fn vpc(&self, name: &str) -> Result<Vpc> {
        validate_name(name)?;
        state::read_json_opt(&self.layout.vpc(name))?
            .ok_or_else(|| Error::NoSuchVpc(name.to_string()))
    }

    fn apply_rules(&self, hub: &Hub, vpcs: &[Vpc]) -> Result<()> {
        let rules: Vec<nft::VpcRule> = vpcs
            .iter()
            .map(|v| nft::VpcRule {
                vpc: v.name.clone(),
                bridge: v.bridge.clone(),
                gateway: v.gateway,
            })
            .collect();
        nft::apply(hub.fd.as_fd(), &rules)
    }

    /// Creates a VPC: its bridge in the hub (and the hub, for the first
    /// VPC), its isolation rules. Its pool fills through the refill task
    /// or [`fill`](Self::fill).
    pub async fn create_vpc(&self, cfg: VpcConfig) -> Result<Vpc> {
        validate_name(&cfg.name)?;
        if !(576..=65535).contains(&cfg.mtu) {
            return Err(Error::InvalidMtu(cfg.mtu));
        }
        let _l = self.lock().await?;
        if self.layout.vpc(&cfg.name).exists() {
            return Err(Error::VpcExists(cfg.name));
        }
        let others = self.vpcs()?;
        let (subnet, gateway, bridge, mtu, fill) = match &cfg.plumbing {
            VpcPlumbing::Native { subnet, gateway } => {
                let gateway = gateway.unwrap_or(subnet.first_host());
                if !subnet.is_host(gateway) {
                    return Err(Error::InvalidGateway {
                        gateway,
                        subnet: *subnet,
                    });
                }
                let used: HashSet<&str> = others.iter().map(|v| v.bridge.as_str()).collect();
                let bridge = (0..)
                    .map(|i| format!("npbr{i}"))
                    .find(|b| !used.contains(b.as_str()))
                    .expect("a free name");
                (*subnet, gateway, bridge, cfg.mtu, FillMode::Native)
            }
            VpcPlumbing::Cni { conflist } => {
                let text = std::fs::read(conflist).map_err(Error::io(conflist))?;
                let conf: serde_json::Value =
                    serde_json::from_slice(&text).map_err(|e| Error::CniConfig {
                        path: conflist.clone(),
                        reason: e.to_string(),
                    })?;
                let data_dir = self.layout.cni_dir(&cfg.name).join("ipam");
                let (conf, net) = cni::prepare(conflist, conf, &data_dir)?;
                (
                    net.subnet,
                    net.gateway,
                    net.bridge,
                    net.mtu,
                    FillMode::Cni { conflist: conf },
                )
            }
        };
        for o in &others {
            if o.subnet.overlaps(&subnet) {
                return Err(Error::Overlap {
                    vpc: cfg.name.clone(),
                    subnet,
                    other: o.name.clone(),
                    other_subnet: o.subnet,
                });
            }
            if o.bridge == bridge {
                return Err(Error::BridgeInUse {
                    vpc: cfg.name.clone(),
                    bridge,
                    other: o.name.clone(),
                });
            }
        }
        let vpc = Vpc {
            name: cfg.name.clone(),
            subnet,
            gateway,
            mtu,
            bridge,
            pool_size: cfg.pool_size,
            give_back: cfg.give_back,
            fill,
        };
        let made_hub = self.hub_path().is_none();
        let result = async {
            let hub = self.hub(true)?.expect("created");
            if vpc.fill == FillMode::Native {
                link::ensure_bridge(
                    &hub.nl,
                    &vpc.bridge,
                    vpc.mtu,
                    vpc.gateway,
                    vpc.subnet.prefix(),
                )
                .await?;
            }
            let mut all = others.clone();
            all.push(vpc.clone());
            self.apply_rules(&hub, &all)?;
            state::mkdirs(&self.layout.vpcs_dir())?;
            state::mkdirs(&self.layout.ready_dir(&vpc.name))?;
            state::write_json(&self.layout.vpc(&vpc.name), &vpc)
        }
        .await;
        if let Err(e) = result {
            if let Ok(Some(hub)) = self.hub(false) {
                let _ = link::delete_link(&hub.nl, &vpc.bridge).await;
                let _ = self.apply_rules(&hub, &others);
            }
            let _ = std::fs::remove_dir(self.layout.ready_dir(&vpc.name));
            if made_hub && others.is_empty() {
                let _ = self.teardown_hub().await;
            }
            return Err(e);
        }
        self.wake.notify_one();
        Ok(vpc)
    }

    /// Deletes a VPC and everything it made: its namespaces (ready, and
    /// leased to owners that are gone), addresses, bridge, rules, stats;
    /// the hub too with the last VPC. Refused while a live sandbox holds
    /// one of its namespaces, unless `force` (such a sandbox keeps its
    /// namespace, unplugged). Waits for builds in progress to end.
    pub async fn delete_vpc(&self, name: &str, force: bool) -> Result<()> {
        let vpc = self.vpc(name)?;
        let _b = self.builds_exclusive().await?;
        let _l = self.lock().await?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for l in state::list_leases(&self.layout)? {
            if l.ns.vpc != vpc.name {
                continue;
            }
            if l.owner.is_alive(&self.layout) {
                live.push(format!("{} held by {}", l.ns.id, l.owner));
            }
            dead.push(l);
        }
        if !live.is_empty() && !force {
            return Err(Error::VpcBusy {
                vpc: vpc.name,
                leases: live.join(", "),
            });
        }
        self.pools.lock().expect("poisoned").remove(&vpc.name);
        let hub = self.hub(false)?;
        for l in dead {
            self.destroy(&vpc, hub.as_deref(), &l.ns.id, Some(&l.ns))
                .await?;
            state::remove_lease(&self.layout, &l.ns.id)?;
        }
        for b in self.building_records()? {
            if b.vpc == vpc.name {
                self.destroy(&vpc, hub.as_deref(), &b.id, None).await?;
                state::remove_file(&self.layout.building(&b.id))?;
            }
        }
        let me = Owner::this_process();
        for id in state::list(&self.layout.ready_dir(&vpc.name), ".json")? {
            let Some(rec) = state::read_json_opt::<NsRecord>(&self.layout.ready(&vpc.name, &id))?
            else {
                continue;
            };
            if let Claim::Won = state::claim(&self.layout, &rec, &me)? {
                self.destroy(&vpc, hub.as_deref(), &rec.id, Some(&rec))
                    .await?;
                state::remove_lease(&self.layout, &rec.id)?;
            }
        }
        // Takes hold no lock: one may have claimed a ready namespace since
        // the leases were listed (our claim of it lost). No ready one is
        // left and none can be built meanwhile, so this look is the last.
        if !force {
            let late: Vec<String> = state::list_leases(&self.layout)?
                .into_iter()
                .filter(|l| l.ns.vpc == vpc.name && l.owner.is_alive(&self.layout))
                .map(|l| format!("{} held by {}", l.ns.id, l.owner))
                .collect();
            if !late.is_empty() {
                return Err(Error::VpcBusy {
                    vpc: vpc.name,
                    leases: late.join(", "),
                });
            }
        }
        if let Some(hub) = &hub {
            link::delete_link(&hub.nl, &vpc.bridge).await?;
        }
        ipam::Ipam::new(&self.layout.ipam_dir(&vpc.name)).destroy()?;
        for dir in [
            self.layout.cni_dir(&vpc.name),
            self.layout.ready_dir(&vpc.name),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(dir)(e)),
            }
        }
        state::remove_file(&self.layout.stats(&vpc.name))?;
        self.deltas.lock().expect("poisoned").remove(&vpc.name);
        state::remove_file(&self.layout.vpc(&vpc.name))?;
        let rest = self.vpcs()?;
        if rest.is_empty() {
            self.teardown_hub().await?;
        } else if let Some(hub) = &hub {
            self.apply_rules(hub, &rest)?;
        }
        Ok(())
    }

    fn building_records(&self) -> Result<Vec<Building>> {
        let mut out = Vec::new();
        for id in state::list(&self.layout.building_dir(), ".json")? {
            if let Some(b) = state::read_json_opt(&self.layout.building(&id))? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Makes one namespace of `vpc` and records it as ready. Holds the
    /// builds lock, shared, while it works: builds of every process run
    /// side by side (the namespace, its address and records are its
    /// own), and none waits for another.
    async fn build(&self, vpc: &Vpc) -> Result<(NsRecord, OwnedFd)> {
        let t0 = Instant::now();
        let _b = self.builds_shared().await?;
        if !self.layout.vpc(&vpc.name).exists() {
            return Err(Error::NoSuchVpc(vpc.name.clone()));
        }
        let id = state::new_id();
        let cni = matches!(vpc.fill, FillMode::Cni { .. });
        state::mkdirs(&self.layout.building_dir())?;
        state::write_json(
            &self.layout.building(&id),
            &Building {
                id: id.clone(),
                vpc: vpc.name.clone(),
                builder: ProcRef::this_process(),
                cni,
            },
        )?;
        let hub = self
            .hub(false)?
            .ok_or_else(|| Error::NoSuchVpc(vpc.name.clone()))?;
        let made = self.build_parts(vpc, &hub, &id).await;
        let made = match made {
            Ok((rec, fd)) => state::mkdirs(&self.layout.ready_dir(&vpc.name))
                .and_then(|()| state::write_json(&self.layout.ready(&vpc.name, &id), &rec))
                .map(|()| (rec, fd)),
            Err(e) => Err(e),
        };
        match made {
            Ok(r) => {
                state::remove_file(&self.layout.building(&id))?;
                let us = t0.elapsed().as_micros() as u64;
                self.count(&vpc.name, |c| {
                    c.built += 1;
                    c.build_us += us;
                });
                Ok(r)
            }
            Err(e) => {
                if let Err(e2) = self.destroy(vpc, Some(&hub), &id, None).await {
                    tracing::warn!(vpc = %vpc.name, ns = %id, "cleaning up a failed build: {e2}");
                } else {
                    let _ = state::remove_file(&self.layout.building(&id));
                }
                Err(e)
            }
        }
    }

    async fn build_parts(&self, vpc: &Vpc, hub: &Hub, id: &str) -> Result<(NsRecord, OwnedFd)> {
        let path = self.layout.ns(id);
        match &vpc.fill {
            FillMode::Native => {
                let ip = ipam::Ipam::new(&self.layout.ipam_dir(&vpc.name)).allocate(vpc, id)?;
                let ns = netns::create(&path, NS_SYSCTLS)?;
                let inside = link::connect(ns.netlink);
                let veth = state::hub_veth_name(id);
                link::add_veth_into(&hub.nl, &veth, &vpc.bridge, ns.fd.as_raw_fd(), vpc.mtu)
                    .await?;
                link::configure_inside(&inside, ip, vpc.subnet.prefix(), vpc.gateway).await?;
                Ok((
                    NsRecord {
                        id: id.to_string(),
                        vpc: vpc.name.clone(),
                        address: ip,
                        prefix: vpc.subnet.prefix(),
                        gateway: vpc.gateway,
                        mtu: vpc.mtu,
                        hub_veth: Some(veth),
                        cni: false,
                    },
                    ns.fd,
                ))
            }
            FillMode::Cni { conflist } => {
                let ns = netns::create(&path, NS_SYSCTLS)?;
                drop(ns.netlink);
                let hub_fd = hub.fd.try_clone().map_err(Error::sys("dup hub fd"))?;
                let (cni_path, conf, idc, p) = (
                    self.opts.cni_path.clone(),
                    conflist.clone(),
                    id.to_string(),
                    path.clone(),
                );
                let (added, result) = tokio::task::spawn_blocking(move || {
                    cni::add(&cni_path, hub_fd.as_fd(), &conf, &idc, &p)
                })
                .await
                .expect("CNI task")?;
                let results = self.layout.cni_dir(&vpc.name).join("results");
                state::mkdirs(&results)?;
                state::write_json(&results.join(format!("{id}.json")), &result)?;
                Ok((
                    NsRecord {
                        id: id.to_string(),
                        vpc: vpc.name.clone(),
                        address: added.address,
                        prefix: added.prefix,
                        gateway: added.gateway.unwrap_or(vpc.gateway),
                        mtu: vpc.mtu,
                        hub_veth: added.hub_veth,
                        cni: true,
                    },
                    ns.fd,
                ))
            }
        }
    }

    /// Tears down namespace `id` of `vpc`, whatever of it exists: its
    /// plumbing (hub veth, or CNI DEL), its file, its address. Records
    /// are the caller's to remove.
    async fn destroy(
        &self,
        vpc: &Vpc,
        hub: Option<&Hub>,
        id: &str,
        rec: Option<&NsRecord>,
    ) -> Result<()> {
        let path = self.layout.ns(id);
        match (&vpc.fill, hub) {
            (FillMode::Native, Some(hub)) => {
                link::delete_link(&hub.nl, &state::hub_veth_name(id)).await?
            }
            (FillMode::Cni { conflist }, Some(hub)) => {
                let results = self
                    .layout
                    .cni_dir(&vpc.name)
                    .join("results")
                    .join(format!("{id}.json"));
                let prev: Option<serde_json::Value> = state::read_json_opt(&results).ok().flatten();
                let hub_fd = hub.fd.try_clone().map_err(Error::sys("dup hub fd"))?;
                let (cni_path, conf, idc, p) = (
                    self.opts.cni_path.clone(),
                    conflist.clone(),
                    id.to_string(),
                    path.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    cni::del(&cni_path, hub_fd.as_fd(), &conf, &idc, &p, prev.as_ref())
                })
                .await
                .expect("CNI task")?;
                if let Some(v) = rec.and_then(|r| r.hub_veth.as_deref()) {
                    link::delete_link(&hub.nl, v).await?;
                }
                state::remove_file(&results)?;
            }
            (_, None) => {}
        }
        netns::remove(&path)?;
        let ipam = ipam::Ipam::new(&self.layout.ipam_dir(&vpc.name));
        match rec {
            Some(r) if !r.cni => ipam.release(r.address, id)?,
            _ => {
                for (ip, holder) in ipam.allocations()? {
                    if holder == id {
                        ipam.release(ip, id)?;
                    }
                }
            }
        }
        self.count(&vpc.name, |c| c.destroyed += 1);
        Ok(())
    }

    fn lease_of(&self, rec: NsRecord, fd: OwnedFd) -> Lease {
        self.count(&rec.vpc, |c| c.takes += 1);
        self.wake.notify_one();
        Lease {
            path: self.layout.ns(&rec.id),
            id: rec.id,
            vpc: rec.vpc,
            fd,
            address: rec.address,
            prefix: rec.prefix,
            gateway: rec.gateway,
            mtu: rec.mtu,
        }
    }

    /// Takes a ready namespace of `vpc` for `owner`: from this process's
    /// pre-opened ones, else any other process's on disk, else (a miss,
    /// counted) one made on the spot.
    pub async fn take(&self, vpc: &str, owner: &Owner) -> Result<Lease> {
        if let Some(l) = self.try_take(vpc, owner)? {
            return Ok(l);
        }
        let v = self.vpc(vpc)?;
        self.count(vpc, |c| c.misses += 1);
        let (rec, fd) = self.build(&v).await?;
        match state::claim(&self.layout, &rec, owner)? {
            Claim::Won => Ok(self.lease_of(rec, fd)),
            // Someone else took the one just made: a ready one all the
            // same, so try once more.
            Claim::Lost => match self.try_take(vpc, owner)? {
                Some(l) => Ok(l),
                None => Box::pin(self.take(vpc, owner)).await,
            },
        }
    }

    /// The non-blocking part of [`take`](Self::take): `None` if no ready
    /// namespace could be claimed.
    pub fn try_take(&self, vpc: &str, owner: &Owner) -> Result<Option<Lease>> {
        // The name becomes a path (ready/<vpc>/): "../ready/other" would
        // hand out another VPC's namespace.
        validate_name(vpc)?;
        loop {
            let next = self
                .pools
                .lock()
                .expect("poisoned")
                .get_mut(vpc)
                .and_then(VecDeque::pop_front);
            let Some(r) = next else { break };
            if let Claim::Won = state::claim(&self.layout, &r.rec, owner)? {
                return Ok(Some(self.lease_of(r.rec, r.fd)));
            }
        }
        for id in state::list(&self.layout.ready_dir(vpc), ".json")? {
            let Some(rec) = state::read_json_opt::<NsRecord>(&self.layout.ready(vpc, &id))? else {
                continue;
            };
            if let Claim::Won = state::claim(&self.layout, &rec, owner)? {
                match netns::open_ns(&self.layout.ns(&id)) {
                    Ok(fd) => return Ok(Some(self.lease_of(rec, fd))),
                    // Broken (e.g. unmounted by hand): out of the pool,
                    // to the next gc, which tears it down. Still ours, it
                    // would stay leased for as long as we live.
                    Err(e) if is_gone(&e) => {
                        tracing::warn!(ns = %id, "ready namespace unusable, left to gc: {e}");
                        if let Err(e) = state::abandon_lease(&self.layout, &id, &owner.process) {
                            tracing::warn!(ns = %id, "leaving it to gc: {e}");
                        }
                    }
                    // Not the namespace's fault (e.g. out of fds): back to
                    // ready, and the error to the taker.
                    Err(e) => {
                        let lease = state::read_lease(&self.layout, &id)?
                            .ok_or_else(|| Error::NoSuchLease(id.clone()))?;
                        state::lease_to_ready(&self.layout, &lease)?;
                        return Err(e);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Gives lease `id` back: scrubbed and returned to its pool, or
    /// destroyed (policy, or if it cannot be scrubbed).
    pub async fn give_back(&self, id: &str) -> Result<()> {
        self.give_back_checked(id, None).await
    }

    /// [`give_back`](Self::give_back) of a lease that must be held by
    /// `container`, checked under the lock: a give-back that waited for
    /// the lock while the namespace went back and was taken again must not
    /// take it from its new holder.
    async fn give_back_checked(&self, id: &str, container: Option<&str>) -> Result<()> {
        let _l = self.lock().await?;
        let lease: LeaseRecord = state::read_lease(&self.layout, id)?
            .ok_or_else(|| Error::NoSuchLease(id.to_string()))?;
        if let Some(container) = container
            && lease.owner.container.as_deref() != Some(container)
        {
            return Err(Error::NotOwner {
                lease: id.to_string(),
                holder: lease.owner.to_string(),
                claimed: format!("container {container}"),
            });
        }
        self.count(&lease.ns.vpc, |c| c.give_backs += 1);
        self.reclaim(lease).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Returns a lease that no sandbox ever joined straight to its pool,
    /// without scrubbing (e.g. a start that failed before it used the
    /// namespace, or a benchmark).
    pub async fn give_back_unused(&self, lease: Lease) -> Result<()> {
        let _l = self.lock().await?;
        let rec: LeaseRecord = state::read_lease(&self.layout, &lease.id)?
            .ok_or_else(|| Error::NoSuchLease(lease.id.clone()))?;
        if rec.owner.may_reconfigure {
            // Whatever ran before the failure may have changed it.
            drop(lease);
            self.reclaim(rec).await?;
            self.wake.notify_one();
            return Ok(());
        }
        state::lease_to_ready(&self.layout, &rec)?;
        self.pools
            .lock()
            .expect("poisoned")
            .entry(rec.ns.vpc.clone())
            .or_default()
            .push_back(Ready {
                rec: rec.ns,
                fd: lease.fd,
            });
        Ok(())
    }

    /// [`give_back`](Self::give_back), checking that the lease is held by
    /// container `container` (as recorded when it was taken).
    pub async fn give_back_from(&self, id: &str, container: &str) -> Result<()> {
        self.give_back_checked(id, Some(container)).await
    }

    /// Records that container `container`, holding lease `id`, now runs a
    /// process that may reconfigure the namespace (an exec with more
    /// privilege than its first process): it is destroyed, not reused,
    /// when given back.
    pub async fn note_may_reconfigure(&self, id: &str, container: &str) -> Result<()> {
        let _l = self.lock().await?;
        let lease: LeaseRecord = state::read_lease(&self.layout, id)?
            .ok_or_else(|| Error::NoSuchLease(id.to_string()))?;
        if lease.owner.container.as_deref() != Some(container) {
            return Err(Error::NotOwner {
                lease: id.to_string(),
                holder: lease.owner.to_string(),
                claimed: format!("container {container}"),
            });
        }
        if lease.owner.may_reconfigure {
            return Ok(());
        }
        state::set_owner(&self.layout, id, &lease.owner.reconfiguring(true))
    }

    /// Reuses or destroys a leased namespace; caller holds the lock.
    async fn reclaim(&self, lease: LeaseRecord) -> Result<()> {
        let rec = lease.ns.clone();
        let vpc: Option<Vpc> = state::read_json_opt(&self.layout.vpc(&rec.vpc))?;
        let hub = self.hub(false)?;
        let reuse = self.opts.give_back == GiveBackPolicy::Reuse
            && !lease.owner.may_reconfigure
            && vpc
                .as_ref()
                .is_some_and(|v| v.give_back == GiveBackPolicy::Reuse);
        if reuse && let Some(fd) = self.scrubbed(&rec).await {
            state::lease_to_ready(&self.layout, &lease)?;
            self.count(&rec.vpc, |c| c.reused += 1);
            self.pools
                .lock()
                .expect("poisoned")
                .entry(rec.vpc.clone())
                .or_default()
                .push_back(Ready { rec, fd });
            return Ok(());
        }
        let vpc = vpc.unwrap_or_else(|| Vpc {
            name: rec.vpc.clone(),
            subnet: Subnet::new(Ipv4Addr::new(0, 0, 0, 0), 8).expect("valid"),
            gateway: rec.gateway,
            mtu: rec.mtu,
            bridge: String::new(),
            pool_size: 0,
            give_back: GiveBackPolicy::Destroy,
            fill: FillMode::Native,
        });
        self.destroy(&vpc, hub.as_deref(), &rec.id, Some(&rec))
            .await?;
        state::remove_lease(&self.layout, &rec.id)
    }

    /// Scrubs a namespace for reuse; its fd if that worked.
    async fn scrubbed(&self, rec: &NsRecord) -> Option<OwnedFd> {
        let path = self.layout.ns(&rec.id);
        let fd = netns::open_ns(&path).ok()?;
        // A scan of /proc: off the async threads.
        let users = match fd.try_clone() {
            Ok(ns) => tokio::task::spawn_blocking(move || netns::users_of(ns.as_fd()))
                .await
                .unwrap_or_else(|e| {
                    Err(Error::sys("looking for users of a namespace")(
                        std::io::Error::other(e.to_string()),
                    ))
                }),
            Err(e) => Err(Error::sys("duplicating a namespace fd")(e)),
        };
        match users {
            Ok(users) if users.is_empty() => {}
            Ok(users) => {
                tracing::warn!(ns = %rec.id, "still in use ({}), destroying it", users.join(", "));
                return None;
            }
            Err(e) => {
                tracing::warn!(ns = %rec.id, "cannot tell whether it is in use, destroying it: {e}");
                return None;
            }
        }
        let sock = netns::netlink_socket_in(fd.as_fd()).ok()?;
        let h = link::connect(sock);
        match link::scrub(&h, rec.address, rec.prefix, rec.gateway, rec.mtu).await {
            Ok(true) => Some(fd),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(ns = %rec.id, "scrubbing failed, destroying: {e}");
                None
            }
        }
    }

    /// Reconciles the state with the kernel and with the living: leases
    /// whose owner is gone are reclaimed, half-built and broken namespaces
    /// torn down, and namespace files, hub links and addresses that no
    /// record accounts for removed. Run at the start of a pool holder and
    /// by `sprout netplug gc`.
    pub async fn gc(&self) -> Result<GcReport> {
        let _b = self.builds_exclusive().await?;
        let _l = self.lock().await?;
        let mut report = GcReport::default();
        let vpcs: HashMap<String, Vpc> = self
            .vpcs()?
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        // The VPCs' own plumbing first: the hub, native bridges, rules
        // (made again if something removed them).
        let hub = self.hub(!vpcs.is_empty())?;
        if let Some(h) = &hub {
            let mut all: Vec<Vpc> = vpcs.values().cloned().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            for v in all.iter().filter(|v| v.fill == FillMode::Native) {
                link::ensure_bridge(&h.nl, &v.bridge, v.mtu, v.gateway, v.subnet.prefix()).await?;
            }
            self.apply_rules(h, &all)?;
        }
        let placeholder = |name: &str| Vpc {
            name: name.to_string(),
            subnet: Subnet::new(Ipv4Addr::new(0, 0, 0, 0), 8).expect("valid"),
            gateway: Ipv4Addr::UNSPECIFIED,
            mtu: 1500,
            bridge: String::new(),
            pool_size: 0,
            give_back: GiveBackPolicy::Destroy,
            fill: FillMode::Native,
        };
        let vpc_or = |name: &str| vpcs.get(name).cloned().unwrap_or_else(|| placeholder(name));

        let mut failed_builds: Vec<String> = Vec::new();
        // Builders hold the builds lock (shared) while they build, so
        // every building record seen here was left by a builder that died
        // or was cancelled.
        for b in self.building_records()? {
            // A builder that died between writing the ready record and
            // removing its building record finished its namespace: it is
            // ready or already leased, never a half-built one to destroy.
            let finished = self.layout.ready(&b.vpc, &b.id).exists()
                || state::read_lease(&self.layout, &b.id).is_ok_and(|l| l.is_some());
            if finished {
                state::remove_file(&self.layout.building(&b.id))?;
                continue;
            }
            let r = async {
                self.destroy(&vpc_or(&b.vpc), hub.as_deref(), &b.id, None)
                    .await?;
                state::remove_file(&self.layout.building(&b.id))
            }
            .await;
            if report.step(|| format!("half-built namespace {}", b.id), r) {
                report.destroyed.push(b.id);
            } else {
                // Still recorded: what it has is not an orphan to sweep.
                failed_builds.push(b.id);
            }
        }
        // Leases of dead owners.
        for l in state::list_leases(&self.layout)? {
            let id = l.ns.id.clone();
            if l.owner.is_alive(&self.layout) {
                continue;
            }
            let r = self.reclaim(l).await;
            if report.step(|| format!("lease {id} of a gone owner"), r) {
                report.reclaimed.push(id);
            }
        }
        // Ready namespaces: still mounted and plugged? Of a live VPC?
        let links = match &hub {
            Some(h) => link::links(&h.nl).await?,
            None => Vec::new(),
        };
        let me = Owner::this_process();
        for vpc_name in state::list(&self.layout.dir().join("ready"), "")? {
            for id in state::list(&self.layout.ready_dir(&vpc_name), ".json")? {
                let Some(rec) =
                    state::read_json_opt::<NsRecord>(&self.layout.ready(&vpc_name, &id))?
                else {
                    continue;
                };
                let vpc = vpcs.get(&vpc_name);
                let bridge = vpc.and_then(|v| links.iter().find(|l| l.name == v.bridge));
                let plugged = match (&rec.hub_veth, bridge) {
                    (Some(v), Some(b)) => links
                        .iter()
                        .any(|l| &l.name == v && l.controller == Some(b.index)),
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                if vpc.is_some() && plugged && netns::is_ns_file(&self.layout.ns(&id)) {
                    continue;
                }
                if let Claim::Won = state::claim(&self.layout, &rec, &me)? {
                    let r = async {
                        self.destroy(&vpc_or(&vpc_name), hub.as_deref(), &id, Some(&rec))
                            .await?;
                        state::remove_lease(&self.layout, &id)
                    }
                    .await;
                    if report.step(|| format!("broken namespace {id}"), r) {
                        report.destroyed.push(id);
                    } else {
                        // Not ours to keep: the next gc tries again.
                        let _ = state::abandon_lease(&self.layout, &id, &me.process);
                    }
                }
            }
            if !vpcs.contains_key(&vpc_name) {
                let _ = std::fs::remove_dir(self.layout.ready_dir(&vpc_name));
            }
        }
        // Records a writer died half-way through writing.
        for p in state::remove_stale_temp_files(self.layout.dir(), &self.layout.ns_dir())? {
            report
                .orphans
                .push(format!("temporary file {}", p.display()));
        }
        // Orphans. Ready is listed before leases: a take moves a record
        // from ready to leases (link, then unlink) while we look.
        let mut known: HashSet<String> = HashSet::new();
        let mut veths: HashSet<String> = HashSet::new();
        for id in failed_builds {
            veths.insert(state::hub_veth_name(&id));
            known.insert(id);
        }
        for vpc_name in state::list(&self.layout.dir().join("ready"), "")? {
            for id in state::list(&self.layout.ready_dir(&vpc_name), ".json")? {
                if let Some(r) =
                    state::read_json_opt::<NsRecord>(&self.layout.ready(&vpc_name, &id))?
                {
                    veths.extend(r.hub_veth);
                }
                known.insert(id);
            }
        }
        for l in state::list_leases(&self.layout)? {
            known.insert(l.ns.id);
            veths.extend(l.ns.hub_veth);
        }
        for id in state::list(&self.layout.ns_dir(), "")? {
            if id != "hub" && !known.contains(&id) {
                let r = netns::remove(&self.layout.ns(&id));
                if report.step(|| format!("orphan namespace {id}"), r) {
                    report.orphans.push(format!("namespace {id}"));
                }
            }
        }
        if let Some(h) = &hub {
            let bridges: HashMap<u32, &str> = links
                .iter()
                .filter(|l| vpcs.values().any(|v| v.bridge == l.name))
                .map(|l| (l.index, l.name.as_str()))
                .collect();
            for l in &links {
                let ours = l.controller.is_some_and(|c| bridges.contains_key(&c))
                    || (l.name.len() == 12
                        && l.name.starts_with("np")
                        && l.name[2..].bytes().all(|b| b.is_ascii_hexdigit()));
                if ours && !veths.contains(&l.name) {
                    let r = link::delete_link(&h.nl, &l.name).await;
                    if report.step(|| format!("orphan hub link {}", l.name), r) {
                        report.orphans.push(format!("hub link {}", l.name));
                    }
                }
            }
        }
        for vpc_name in state::list(&self.layout.dir().join("ipam"), "")? {
            let ipam = ipam::Ipam::new(&self.layout.ipam_dir(&vpc_name));
            for (ip, holder) in ipam.allocations()? {
                if !known.contains(&holder) {
                    let r = ipam.release(ip, &holder);
                    if report.step(|| format!("orphan address {ip} of {vpc_name}"), r) {
                        report.orphans.push(format!("address {ip} of {vpc_name}"));
                    }
                }
            }
        }
        for v in vpcs.values() {
            if let (FillMode::Cni { conflist }, Some(h)) = (&v.fill, &hub) {
                let net = conflist["name"].as_str().unwrap_or_default();
                let dir = self.layout.cni_dir(&v.name).join("ipam").join(net);
                for name in state::list(&dir, "")? {
                    if name.parse::<Ipv4Addr>().is_err() {
                        continue;
                    }
                    let holder = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
                    let holder = holder.lines().next().unwrap_or_default().trim().to_string();
                    if !holder.is_empty() && !known.contains(&holder) {
                        let hub_fd = h.fd.try_clone().map_err(Error::sys("dup hub fd"))?;
                        let (cni_path, conf, p) = (
                            self.opts.cni_path.clone(),
                            conflist.clone(),
                            self.layout.ns(&holder),
                        );
                        let idc = holder.clone();
                        let r = tokio::task::spawn_blocking(move || {
                            cni::del(&cni_path, hub_fd.as_fd(), &conf, &idc, &p, None)
                        })
                        .await
                        .expect("CNI task");
                        if let Err(e) = r {
                            tracing::warn!(vpc = %v.name, "CNI DEL of orphan {holder}: {e}");
                        }
                        report
                            .orphans
                            .push(format!("CNI address {name} of {}", v.name));
                    }
                }
            }
        }
        drop(_l);
        self.flush_stats()?;
        Ok(report)
    }

    /// Makes namespaces until every pool is at its target size; returns
    /// how many were made. What the refill task does each round. The
    /// VPCs fill side by side, so one whose builds are slow or failing
    /// (a stuck CNI plugin) holds up no other; the first error is
    /// returned once every VPC had its turn.
    pub async fn fill(&self) -> Result<usize> {
        let vpcs = self.vpcs()?;
        let results = futures::future::join_all(vpcs.iter().map(|v| self.fill_vpc(v))).await;
        let mut total = 0;
        let mut first_err = None;
        for (vpc, (made, err)) in vpcs.iter().zip(results) {
            total += made;
            if let Some(e) = err {
                tracing::warn!(vpc = %vpc.name, "refill: {e}");
                first_err.get_or_insert(e);
            }
        }
        self.flush_stats()?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Fills one VPC's pool: how many were made, and the error that
    /// stopped it, if one did.
    async fn fill_vpc(&self, vpc: &Vpc) -> (usize, Option<Error>) {
        let have = match state::list(&self.layout.ready_dir(&vpc.name), ".json") {
            Ok(r) => r.len(),
            Err(e) => return (0, Some(e)),
        };
        let t0 = Instant::now();
        let mut made = 0;
        let mut err = None;
        for _ in have..vpc.pool_size {
            match self.build(vpc).await {
                Ok((rec, fd)) => {
                    self.pools
                        .lock()
                        .expect("poisoned")
                        .entry(vpc.name.clone())
                        .or_default()
                        .push_back(Ready { rec, fd });
                    made += 1;
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if made > 0 {
            let us = t0.elapsed().as_micros() as u64;
            self.count(&vpc.name, |c| {
                c.refilled += made as u64;
                c.last_refill_us = us;
                c.last_refill_at = state::now_unix();
            });
        }
        (made, err)
    }

    /// The refill loop: fills the pools, then waits for a take, a give
    /// back or a VPC change (or the interval) and fills again. Never
    /// blocks `take`, which only pops what is ready. Runs until dropped.
    pub async fn refill(self: Arc<Self>) {
        loop {
            if let Err(e) = self.fill().await {
                tracing::warn!("netplug refill: {e}");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.opts.refill_interval) => {}
            }
        }
    }

    /// Spawns [`refill`](Self::refill) on the current tokio runtime.
    pub fn spawn_refill(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().refill())
    }

    /// Pools, counters, drop counters.
    pub fn status(&self) -> Result<Status> {
        let mut leased: HashMap<String, usize> = HashMap::new();
        for l in state::list_leases(&self.layout)? {
            *leased.entry(l.ns.vpc).or_default() += 1;
        }
        let deltas = self.deltas.lock().expect("poisoned").clone();
        let mut pools = Vec::new();
        for v in self.vpcs()? {
            let mut counters: Counters =
                state::read_json_opt(&self.layout.stats(&v.name))?.unwrap_or_default();
            if let Some(d) = deltas.get(&v.name) {
                counters.add(d);
            }
            pools.push(PoolStatus {
                ready: state::list(&self.layout.ready_dir(&v.name), ".json")?.len(),
                leased: leased.get(&v.name).copied().unwrap_or(0),
                target: v.pool_size,
                mode: match v.fill {
                    FillMode::Native => "native",
                    FillMode::Cni { .. } => "cni",
                },
                vpc: v.name,
                subnet: v.subnet,
                gateway: v.gateway,
                bridge: v.bridge,
                counters,
            });
        }
        let hub = self.hub(false)?;
        let drops = match &hub {
            Some(h) => nft::counters(h.fd.as_fd())?,
            None => Vec::new(),
        };
        Ok(Status {
            hub: self.hub_path(),
            forwarding: self.hub_config()?.forwarding,
            pools,
            drops,
        })
    }

    /// Changes a VPC's pool target size.
    pub async fn set_pool_size(&self, name: &str, size: usize) -> Result<()> {
        let _l = self.lock().await?;
        let mut v = self.vpc(name)?;
        v.pool_size = size;
        state::write_json(&self.layout.vpc(name), &v)?;
        self.wake.notify_one();
        Ok(())
    }
}

impl Drop for Netplug {
    fn drop(&mut self) {
        if let Err(e) = self.flush_stats() {
            tracing::warn!("netplug stats: {e}");
        }
    }
}

/// [`Netplug`] with its own single-threaded tokio runtime, for callers
/// without one (the CLI, tests, benches).
pub struct BlockingNetplug {
    np: Arc<Netplug>,
    rt: tokio::runtime::Runtime,
}

impl BlockingNetplug {
    pub fn open(opts: Options) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::sys("tokio runtime"))?;
        Ok(BlockingNetplug {
            np: Netplug::open(opts)?,
            rt,
        })
    }

    pub fn inner(&self) -> &Arc<Netplug> {
        &self.np
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn create_vpc(&self, cfg: VpcConfig) -> Result<Vpc> {
        self.rt.block_on(self.np.create_vpc(cfg))
    }
    pub fn delete_vpc(&self, name: &str, force: bool) -> Result<()> {
        self.rt.block_on(self.np.delete_vpc(name, force))
    }
    pub fn vpcs(&self) -> Result<Vec<Vpc>> {
        self.np.vpcs()
    }
    pub fn take(&self, vpc: &str, owner: &Owner) -> Result<Lease> {
        match self.np.try_take(vpc, owner)? {
            Some(l) => Ok(l),
            None => self.rt.block_on(self.np.take(vpc, owner)),
        }
    }
    pub fn give_back(&self, id: &str) -> Result<()> {
        self.rt.block_on(self.np.give_back(id))
    }
    pub fn give_back_unused(&self, lease: Lease) -> Result<()> {
        self.rt.block_on(self.np.give_back_unused(lease))
    }
    pub fn give_back_from(&self, id: &str, container: &str) -> Result<()> {
        self.rt.block_on(self.np.give_back_from(id, container))
    }
    pub fn note_may_reconfigure(&self, id: &str, container: &str) -> Result<()> {
        self.rt
            .block_on(self.np.note_may_reconfigure(id, container))
    }
    pub fn fill(&self) -> Result<usize> {
        self.rt.block_on(self.np.fill())
    }
    pub fn gc(&self) -> Result<GcReport> {
        self.rt.block_on(self.np.gc())
    }
    pub fn status(&self) -> Result<Status> {
        self.rt.block_on(async { self.np.status() })
    }
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        self.rt.block_on(self.np.set_forwarding(on))
    }
    pub fn set_pool_size(&self, name: &str, size: usize) -> Result<()> {
        self.rt.block_on(self.np.set_pool_size(name, size))
    }
    pub fn hub_path(&self) -> Option<PathBuf> {
        self.np.hub_path()
    }
    pub fn layout(&self) -> &Layout {
        self.np.layout()
    }

    /// Holds the pools until `until` completes: reconciles (handing the
    /// report to `started`), then refills in the background.
    pub fn serve<F: std::future::Future>(
        &self,
        started: impl FnOnce(&GcReport),
        until: F,
    ) -> Result<GcReport> {
        self.rt.block_on(async {
            let report = self.np.gc().await?;
            started(&report);
            let task = self.np.spawn_refill();
            until.await;
            task.abort();
            Ok(report)
        })
    }
}

impl BlockingNetplug {
    /// [`serve`](Self::serve) until SIGINT or SIGTERM.
    pub fn serve_until_terminated(&self, started: impl FnOnce(&GcReport)) -> Result<GcReport> {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = self
            .rt
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                ))
            })
            .map_err(Error::sys("signal handlers"))?;
        self.serve(started, async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
}

/// Is `path` inside netplug's namespace directory of state root `root`?
pub fn is_pooled_path(root: &Path, path: &Path) -> bool {
    path.starts_with(Layout::new(root).ns_dir())
}
