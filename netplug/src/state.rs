//! netplug's on-disk state under `<sprout root>/.netplug/`, the source of
//! truth shared by every process that uses the pools (the CLI, a pool
//! holder, `sproutd`):
//!
//! ```text
//! lock                  flock: hub and VPC changes, give-backs, gc
//! builds.lock           flock: shared by builders, exclusive for gc and
//!                       VPC deletion
//! stats.lock            flock: read-modify-write of stats/
//! hub.json              hub settings (forwarding)
//! ns/                   a bind mount of itself with shared propagation
//!   hub                 the hub network namespace (nsfs bind mount)
//!   <id>                one pooled network namespace each
//! vpcs/<vpc>.json       a VPC
//! ready/<vpc>/<id>.json a namespace ready to take
//! building/<id>.json    a namespace being made, with its builder's pid
//! leases/<id>.<pid>.<start>.json
//!                       a namespace handed out, to that process
//! owners/<id>.json      the container a lease was taken for
//! ipam/<vpc>/<address>  an address in use; the file holds the namespace id
//! stats/<vpc>.json      counters
//! cni/<vpc>/            host-local's data directory (CNI fill mode)
//! ```
//!
//! Every record moves between `building/`, `ready/` and `leases/` by
//! creating the new record before removing the old one, so at every
//! moment a namespace has at least one record; anything (namespace file,
//! hub veth, address) whose id has none is an orphan for `gc`. A take
//! claims a ready namespace with one `rename(2)` of its ready record into
//! `leases/`, under a name that says which process took it: the source
//! exists only once, so exactly one claimer wins, and the lease is never
//! without an owner. A take for a container then records the container in
//! `owners/`, before the taking process can exit.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::subnet::Subnet;

/// Paths of netplug's state.
#[derive(Debug, Clone)]
pub struct Layout {
    /// sprout's state root (containers live in `<root>/<id>/`).
    root: PathBuf,
    dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            dir: root.join(".netplug"),
        }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn builds_lock(&self) -> PathBuf {
        self.dir.join("builds.lock")
    }
    pub fn stats_lock(&self) -> PathBuf {
        self.dir.join("stats.lock")
    }
    pub fn hub_config(&self) -> PathBuf {
        self.dir.join("hub.json")
    }
    pub fn ns_dir(&self) -> PathBuf {
        self.dir.join("ns")
    }
    pub fn hub_ns(&self) -> PathBuf {
        self.dir.join("ns/hub")
    }
    pub fn ns(&self, id: &str) -> PathBuf {
        self.dir.join("ns").join(id)
    }
    pub fn vpcs_dir(&self) -> PathBuf {
        self.dir.join("vpcs")
    }
    pub fn vpc(&self, name: &str) -> PathBuf {
        self.dir.join("vpcs").join(format!("{name}.json"))
    }
    pub fn ready_dir(&self, vpc: &str) -> PathBuf {
        self.dir.join("ready").join(vpc)
    }
    pub fn ready(&self, vpc: &str, id: &str) -> PathBuf {
        self.ready_dir(vpc).join(format!("{id}.json"))
    }
    pub fn building_dir(&self) -> PathBuf {
        self.dir.join("building")
    }
    pub fn building(&self, id: &str) -> PathBuf {
        self.dir.join("building").join(format!("{id}.json"))
    }
    pub fn leases_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }
    /// A lease file: `<id>.<taker pid>.<taker start time>.json`.
    pub fn lease(&self, id: &str, taker: &ProcRef) -> PathBuf {
        self.dir
            .join("leases")
            .join(format!("{id}.{}.{}.json", taker.pid, taker.start))
    }
    pub fn owners_dir(&self) -> PathBuf {
        self.dir.join("owners")
    }
    pub fn owner(&self, id: &str) -> PathBuf {
        self.dir.join("owners").join(format!("{id}.json"))
    }
    pub fn ipam_dir(&self, vpc: &str) -> PathBuf {
        self.dir.join("ipam").join(vpc)
    }
    pub fn stats(&self, vpc: &str) -> PathBuf {
        self.dir.join("stats").join(format!("{vpc}.json"))
    }
    pub fn cni_dir(&self, vpc: &str) -> PathBuf {
        self.dir.join("cni").join(vpc)
    }
    /// A container's state file in sprout's state root.
    pub fn container_state(&self, id: &str) -> PathBuf {
        self.root.join(id).join("state.json")
    }
}

/// How a VPC's namespaces are plumbed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum FillMode {
    /// netplug's own plumbing over netlink.
    Native,
    /// Standard CNI plugins run inside the hub; the conflist as given
    /// (with `ipam.dataDir` pointed under sprout's state root).
    Cni { conflist: serde_json::Value },
}

/// What a given-back namespace becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GiveBackPolicy {
    /// Scrubbed (extra links, addresses and routes removed) and put back
    /// in the pool; destroyed if it cannot be scrubbed.
    #[default]
    Reuse,
    /// Always destroyed; the pool refills with fresh ones. For sandboxes
    /// that hold CAP_NET_ADMIN and could leave state scrubbing misses.
    Destroy,
}

/// A VPC as stored in `vpcs/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vpc {
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Bridge in the hub.
    pub bridge: String,
    /// Pool target size: the refill task keeps this many ready.
    pub pool_size: usize,
    #[serde(default)]
    pub give_back: GiveBackPolicy,
    pub fill: FillMode,
}

/// A live process, identified by pid and start time (so a recycled pid
/// is not mistaken for it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRef {
    pub pid: i32,
    pub start: u64,
}

impl ProcRef {
    pub fn this_process() -> Self {
        let pid = std::process::id() as i32;
        ProcRef {
            pid,
            start: proc_start(pid).unwrap_or(0),
        }
    }

    pub fn is_alive(&self) -> bool {
        proc_start(self.pid) == Some(self.start)
    }
}

/// Start time (field 22 of /proc/PID/stat) of a live, non-zombie process.
pub fn proc_start(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(") ")?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // rest starts at field 3 (state); start time is field 22.
    fields.nth(18)?.parse().ok()
}

/// One pooled namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NsRecord {
    pub id: String,
    pub vpc: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The hub end of its veth (native mode; CNI mode: what the plugin
    /// reported, if anything).
    pub hub_veth: Option<String>,
    /// Made by CNI plugins (DEL must run them again).
    pub cni: bool,
}

/// A namespace being made (or torn down) by `builder`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Building {
    pub id: String,
    pub vpc: String,
    pub builder: ProcRef,
    pub cni: bool,
}

/// Who holds a lease. Live while the taking process lives or the named
/// container still has a state file in sprout's state root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub process: ProcRef,
    pub container: Option<String>,
    /// The holder can change the namespace's configuration beyond what a
    /// scrub undoes (rules, other routing tables, neighbours, nftables,
    /// sysctls): it is destroyed at give-back whatever the policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_reconfigure: bool,
}

impl Owner {
    /// This process, with no container named.
    pub fn this_process() -> Self {
        Owner {
            process: ProcRef::this_process(),
            container: None,
            may_reconfigure: false,
        }
    }

    /// Container `id` of sprout's state root, taken by this process.
    pub fn container(id: &str) -> Self {
        Owner {
            process: ProcRef::this_process(),
            container: Some(id.to_string()),
            may_reconfigure: false,
        }
    }

    /// The same owner, holding a namespace it may reconfigure (see
    /// [`Owner::may_reconfigure`]).
    pub fn reconfiguring(self, may_reconfigure: bool) -> Self {
        Owner {
            may_reconfigure,
            ..self
        }
    }

    /// Whether the owner record must be written: the lease file's name
    /// says only which process took it.
    fn needs_record(&self) -> bool {
        self.container.is_some() || self.may_reconfigure
    }

    pub fn is_alive(&self, layout: &Layout) -> bool {
        self.process.is_alive()
            || self
                .container
                .as_deref()
                .is_some_and(|c| layout.container_state(c).exists())
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.container {
            Some(c) => write!(f, "container {c} (taken by pid {})", self.process.pid),
            None => write!(f, "pid {}", self.process.pid),
        }
    }
}

/// A handed-out namespace.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    pub ns: NsRecord,
    pub owner: Owner,
    /// Its file in `leases/`.
    pub path: PathBuf,
}

/// Splits a lease file name (`.json` removed) into id and taker.
fn parse_lease_name(name: &str) -> Option<(&str, ProcRef)> {
    let mut parts = name.splitn(3, '.');
    let id = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    Some((id, ProcRef { pid, start }))
}

fn load_lease(layout: &Layout, name: &str) -> Result<Option<LeaseRecord>> {
    let Some((id, taker)) = parse_lease_name(name) else {
        return Ok(None);
    };
    let path = layout.leases_dir().join(format!("{name}.json"));
    let Some(ns) = read_json_opt::<NsRecord>(&path)? else {
        return Ok(None);
    };
    let owner = read_json_opt::<Owner>(&layout.owner(id))?
        .filter(|o| o.process == taker)
        .unwrap_or(Owner {
            process: taker,
            container: None,
            may_reconfigure: false,
        });
    Ok(Some(LeaseRecord { ns, owner, path }))
}

/// Every lease.
pub fn list_leases(layout: &Layout) -> Result<Vec<LeaseRecord>> {
    let mut out = Vec::new();
    for name in list(&layout.leases_dir(), ".json")? {
        out.extend(load_lease(layout, &name)?);
    }
    Ok(out)
}

/// Lease `id`, if it exists.
pub fn read_lease(layout: &Layout, id: &str) -> Result<Option<LeaseRecord>> {
    let prefix = format!("{id}.");
    for name in list(&layout.leases_dir(), ".json")? {
        if name.starts_with(&prefix) {
            return load_lease(layout, &name);
        }
    }
    Ok(None)
}

/// Turns `lease` back into its namespace's ready record: the owner record
/// goes first (the lease file still records the namespace), then the
/// lease file, which holds the ready record it was claimed from (see
/// [`claim`]), is renamed back into `ready/` in one step. Once it is
/// there another process may claim it at once; nothing here touches the
/// files of that claim (the claimant's lease file can bear the same name
/// as this one, and its owner record the same name too).
pub fn lease_to_ready(layout: &Layout, lease: &LeaseRecord) -> Result<()> {
    remove_file(&layout.owner(&lease.ns.id))?;
    let to = layout.ready(&lease.ns.vpc, &lease.ns.id);
    fs::rename(&lease.path, &to).map_err(Error::io(&lease.path))
}

/// Removes lease `id` and its owner record.
pub fn remove_lease(layout: &Layout, id: &str) -> Result<()> {
    let prefix = format!("{id}.");
    for name in list(&layout.leases_dir(), ".json")? {
        if name.starts_with(&prefix) {
            remove_file(&layout.leases_dir().join(format!("{name}.json")))?;
        }
    }
    remove_file(&layout.owner(id))
}

/// Counters of one VPC's pool, summed over every process that used it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Namespaces handed out.
    pub takes: u64,
    /// Takes that found the pool empty and made one on the spot.
    pub misses: u64,
    /// Namespaces given back.
    pub give_backs: u64,
    /// Given back and scrubbed for reuse.
    pub reused: u64,
    /// Torn down (given back under the destroy policy, broken, or gc).
    pub destroyed: u64,
    /// Namespaces made by the refill task.
    pub refilled: u64,
    /// Total time spent making namespaces, microseconds (any path).
    pub build_us: u64,
    /// Namespaces made (any path).
    pub built: u64,
    /// Duration of the last refill round that made something, µs.
    pub last_refill_us: u64,
    /// Unix time of the last refill round that made something.
    pub last_refill_at: u64,
}

impl Counters {
    pub fn add(&mut self, d: &Counters) {
        self.takes += d.takes;
        self.misses += d.misses;
        self.give_backs += d.give_backs;
        self.reused += d.reused;
        self.destroyed += d.destroyed;
        self.refilled += d.refilled;
        self.build_us += d.build_us;
        self.built += d.built;
        if d.last_refill_at != 0 {
            self.last_refill_us = d.last_refill_us;
            self.last_refill_at = d.last_refill_at;
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// Hub settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HubConfig {
    /// IPv4 forwarding in the hub (off unless asked for).
    pub forwarding: bool,
}

pub fn mkdirs(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(Error::io(path))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = fs::read(path).map_err(Error::io(path))?;
    serde_json::from_slice(&data).map_err(|source| Error::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// `read_json`, `None` if the file does not exist.
pub fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| Error::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path)(e)),
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `value` as JSON to `path` atomically (temporary file + rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec(value).expect("records serialize");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path)(e)
    })
}

/// The pid of the writer of a temporary file `write_json` names
/// `.<name>.tmp-<pid>-<n>`.
fn temp_file_writer(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the temporary files under `dir` (recursively, skipping `skip`)
/// of writers that died before renaming them into place; returns them.
pub fn remove_stale_temp_files(dir: &Path, skip: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(Error::io(dir))?;
        let path = e.path();
        if path == skip {
            continue;
        }
        let ty = e.file_type().map_err(Error::io(&path))?;
        if ty.is_dir() {
            removed.extend(remove_stale_temp_files(&path, skip)?);
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = temp_file_writer(&name)
            && proc_start(pid).is_none()
        {
            remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Removes a file; a missing one is fine.
pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path)(e)),
    }
}

/// Names in a directory (a missing directory is empty), without the
/// `.json` suffix for record directories, skipping temporary files.
pub fn list(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(Error::io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name.strip_suffix(suffix) {
            out.push(stem.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Outcome of a claim.
pub enum Claim {
    Won,
    /// Another claimer has it.
    Lost,
}

/// Claims ready namespace `rec` for `owner`: one rename of its ready
/// record into `leases/` (only one claimer can move it), then, for a
/// container, the owner record.
pub fn claim(layout: &Layout, rec: &NsRecord, owner: &Owner) -> Result<Claim> {
    let from = layout.ready(&rec.vpc, &rec.id);
    let to = layout.lease(&rec.id, &owner.process);
    match fs::rename(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Lost),
        Err(e) => return Err(Error::io(&from)(e)),
    }
    if owner.needs_record()
        && let Err(e) = set_owner(layout, &rec.id, owner)
    {
        // Undone, or the namespace would stay leased to this (live)
        // process with no container to give it back.
        let _ = remove_file(&layout.owner(&rec.id));
        if let Err(undo) = fs::rename(&to, &from) {
            tracing::warn!(ns = %rec.id, "returning a half-claimed namespace: {undo}");
        }
        return Err(e);
    }
    Ok(Claim::Won)
}

/// Hands lease `id`, held by `taker`, over to gc: renamed to a taker that
/// cannot be alive (pid 0) and stripped of its owner record, so the next
/// gc reclaims it. For a claimed namespace that turned out unusable.
pub fn abandon_lease(layout: &Layout, id: &str, taker: &ProcRef) -> Result<()> {
    let from = layout.lease(id, taker);
    let to = layout.lease(id, &ProcRef { pid: 0, start: 0 });
    fs::rename(&from, &to).map_err(Error::io(&from))?;
    remove_file(&layout.owner(id))
}

/// Records who holds lease `id` (the container, for liveness checks once
/// the taking process is gone).
pub fn set_owner(layout: &Layout, id: &str, owner: &Owner) -> Result<()> {
    mkdirs(&layout.owners_dir())?;
    write_json(&layout.owner(id), owner)
}

/// A `flock` on a file, released on drop.
#[derive(Debug)]
pub struct FileLock(#[allow(dead_code)] OwnedFd);

impl FileLock {
    /// An exclusive lock.
    pub fn acquire(path: &Path) -> Result<Self> {
        Self::acquire_mode(path, libc::LOCK_EX)
    }

    /// A shared lock: held by many at once, never with an exclusive one.
    pub fn acquire_shared(path: &Path) -> Result<Self> {
        Self::acquire_mode(path, libc::LOCK_SH)
    }

    fn acquire_mode(path: &Path, mode: libc::c_int) -> Result<Self> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(Error::io(path))?;
        loop {
            // SAFETY: flock on a valid fd we own.
            if unsafe { libc::flock(f.as_raw_fd(), mode) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::io(path)(e));
            }
        }
        // SAFETY: into_raw_fd hands over ownership of a valid fd.
        Ok(FileLock(unsafe {
            OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(f))
        }))
    }
}

/// A fresh namespace id: 10 hex digits (the hub veth is `np<id>`, 12
/// characters, within IFNAMSIZ).
pub fn new_id() -> String {
    let mut b = [0u8; 5];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back on time and a counter: ids only need to be unique
        // among live records, which claims and O_EXCL files check.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ TMP_COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32)
            ^ (std::process::id() as u64) << 20;
        b.copy_from_slice(&t.to_le_bytes()[..5]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The hub end of a native namespace's veth.
pub fn hub_veth_name(id: &str) -> String {
    format!("np{id}")
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> NsRecord {
        NsRecord {
            id: id.into(),
            vpc: "a".into(),
            address: Ipv4Addr::new(198, 18, 0, 2),
            prefix: 24,
            gateway: Ipv4Addr::new(198, 18, 0, 1),
            mtu: 1500,
            hub_veth: Some(hub_veth_name(id)),
            cni: false,
        }
    }

    #[test]
    fn only_one_claimer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        mkdirs(&l.leases_dir()).unwrap();
        mkdirs(&l.ready_dir("a")).unwrap();
        let r = rec(&new_id());
        write_json(&l.ready("a", &r.id), &r).unwrap();
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| matches!(claim(&l, &r, &Owner::this_process()).unwrap(), Claim::Won))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
        });
        assert_eq!(wins, 1);
        assert!(!l.ready("a", &r.id).exists());
        let lease = read_lease(&l, &r.id).unwrap().unwrap();
        assert_eq!(lease.ns.id, r.id);
        assert_eq!(lease.owner, Owner::this_process());
        assert_eq!(list_leases(&l).unwrap().len(), 1);
        remove_lease(&l, &r.id).unwrap();
        assert!(read_lease(&l, &r.id).unwrap().is_none());
    }

    #[test]
    fn owner_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        let me = Owner::this_process();
        assert!(me.is_alive(&l));
        let dead = Owner {
            process: ProcRef {
                pid: i32::MAX - 1,
                start: 1,
            },
            container: Some("c1".into()),
            may_reconfigure: false,
        };
        assert!(!dead.is_alive(&l));
        fs::create_dir_all(dir.path().join("c1")).unwrap();
        fs::write(dir.path().join("c1/state.json"), "{}").unwrap();
        assert!(dead.is_alive(&l));
    }

    #[test]
    fn ids_fit_interface_names() {
        let id = new_id();
        assert_eq!(id.len(), 10);
        assert!(hub_veth_name(&id).len() < 16);
        assert_ne!(new_id(), id);
    }

    #[test]
    fn stale_temp_files_of_dead_writers_go() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        mkdirs(&l.ready_dir("a")).unwrap();
        mkdirs(&l.ns_dir()).unwrap();
        let dead = l.ready_dir("a").join(".abc.json.tmp-2147483646-3");
        let live = l
            .ready_dir("a")
            .join(format!(".abd.json.tmp-{}-4", std::process::id()));
        let in_ns = l.ns_dir().join(".x.json.tmp-2147483646-1");
        for p in [&dead, &live, &in_ns] {
            fs::write(p, "{}").unwrap();
        }
        write_json(&l.ready("a", "abe"), &rec("abe")).unwrap();
        let removed = remove_stale_temp_files(l.dir(), &l.ns_dir()).unwrap();
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && in_ns.exists());
        assert!(l.ready("a", "abe").exists());
        assert_eq!(temp_file_writer(".abc.json.tmp-12-3"), Some(12));
        assert_eq!(temp_file_writer("abc.json"), None);
    }

    #[test]
    fn counters_add() {
        let mut a = Counters {
            takes: 2,
            ..Default::default()
        };
        a.add(&Counters {
            takes: 3,
            misses: 1,
            last_refill_at: 5,
            last_refill_us: 7,
            ..Default::default()
        });
        assert_eq!((a.takes, a.misses, a.last_refill_us), (5, 1, 7));
    }
}
