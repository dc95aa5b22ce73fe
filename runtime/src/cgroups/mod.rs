//! sprout's cgroup manager: cgroup v1, v2 and hybrid hosts.
//!
//! * [`CgroupsPath`] parses and validates OCI `linux.cgroupsPath`;
//! * [`Layout`] is detected once per process from `/proc/self/mountinfo`;
//! * [`Cgroup`] is one container's cgroup: a directory in every v1
//!   hierarchy and/or the cgroup2 hierarchy. It remembers which directories
//!   it created (and removes exactly those), and round-trips through
//!   [`SavedCgroup`] so later CLI calls reopen it without re-resolving.
//!
//! cgroups-rs 0.5 treats a hybrid host as v1 and never sees its cgroup2
//! mount, cannot tell which directories `create` made, removes directories
//! recursively on delete, and reports errors without the file involved; so
//! path resolution, creation, removal and resource writes are done here
//! directly. cgroups-rs's v1 controllers are used for reading v1 statistics
//! (see `stats.rs`).

mod devices;
mod error;
mod freezer;
mod fsio;
pub(crate) mod layout;
mod oom;
mod path;
mod resources;
mod stats;

#[cfg(test)]
mod kernel_tests;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use error::{CgroupError, Result};
pub use layout::{Layout, Mounts, OwnCgroups, UnifiedMount, V1Mount, detect as detect_layout};
pub use oom::{OomEvent, OomWatcher};
pub use path::CgroupsPath;
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, HugetlbStats, MemoryEntry, MemoryStats, PidsStats,
    Stats, Throttling,
};

use fsio::{CgroupFs, RealFs};

/// How long `destroy` keeps retrying a busy cgroup: processes that were
/// killed leave their cgroup asynchronously.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(2);

/// A container's directory in one v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Dir {
    /// The hierarchy's controllers, e.g. `["cpu", "cpuacct"]`, `["name=systemd"]`.
    pub controllers: Vec<String>,
    pub dir: PathBuf,
}

/// Everything needed to reopen a [`Cgroup`]; stored in the container's
/// state.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCgroup {
    pub layout: Layout,
    /// One directory per mounted v1 hierarchy (empty on v2).
    #[serde(default)]
    pub v1: Vec<V1Dir>,
    /// The cgroup2 directory (v2, or hybrid's unified hierarchy).
    #[serde(default)]
    pub unified: Option<PathBuf>,
    /// The highest cgroup2 directory whose `cgroup.subtree_control` sprout
    /// may change to enable a controller: the caller's own cgroup for a
    /// relative path, the mount root for an absolute one.
    #[serde(default)]
    pub unified_base: Option<PathBuf>,
    /// Directories this cgroup created, parents before children.
    #[serde(default)]
    pub created: Vec<PathBuf>,
}

/// One container's cgroup (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    s: SavedCgroup,
}

impl Cgroup {
    /// Resolves `path` on this host and creates its directories (`mkdir -p`)
    /// in every hierarchy: each mounted v1 hierarchy (named ones such as
    /// `name=systemd` too) and the cgroup2 one. New v1 cpuset cgroups get
    /// `cpuset.cpus`/`cpuset.mems` from their parent so tasks can join. On
    /// failure whatever was created is removed again.
    pub fn create(path: &CgroupsPath) -> Result<Cgroup> {
        let mounts = Mounts::get()?;
        let own = if path.is_relative() {
            Some(OwnCgroups::read()?)
        } else {
            None
        };
        let s = resolve(mounts, own.as_ref(), path)?;
        let mut cg = Cgroup { s };
        match cg.make_dirs(&RealFs) {
            Ok(()) => Ok(cg),
            Err(e) => {
                if let Err(cleanup) = cg.remove_created(Duration::ZERO) {
                    tracing::warn!(error = %cleanup, "removing a partly created cgroup");
                }
                Err(e)
            }
        }
    }

    fn make_dirs(&mut self, fs: &dyn CgroupFs) -> Result<()> {
        let mut created = Vec::new();
        let mut result = Ok(());
        let v1 = self.s.v1.clone();
        for d in &v1 {
            let mount = mount_point_of(&d.dir, &d.controllers);
            if let Err(e) = mkdir_p(&d.dir, mount.as_deref(), &mut created) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok()
            && let Some(u) = self.s.unified.clone()
        {
            let stop = Mounts::get()
                .ok()
                .and_then(|m| m.unified.as_ref())
                .map(|u| u.mount_point.clone());
            result = mkdir_p(&u, stop.as_deref(), &mut created);
        }
        self.s.created = created;
        result?;
        // The leaf is the container's own, even if it was already there
        // (left by a crash): adopt it so delete removes it, as runc does,
        // unless live processes show it is someone else's.
        let leaves: Vec<PathBuf> = v1
            .iter()
            .map(|d| d.dir.clone())
            .chain(self.s.unified.clone())
            .collect();
        for leaf in leaves {
            if self.s.created.contains(&leaf) {
                continue;
            }
            let procs = fsio::read(fs, &leaf, "cgroup.procs")?;
            let count = procs.lines().filter(|l| !l.trim().is_empty()).count();
            if count > 0 {
                return Err(CgroupError::NotEmpty { dir: leaf, count });
            }
            self.s.created.push(leaf);
        }
        // New v1 cpuset cgroups start with empty cpus/mems: no task could join.
        if let Some(cpuset) = self.v1_dir("cpuset").map(Path::to_path_buf) {
            for dir in self
                .s
                .created
                .iter()
                .filter(|d| d.starts_with(&cpuset) || cpuset.starts_with(d))
            {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    copy_from_parent(fs, dir, file)?;
                }
            }
        }
        // Pure v2: enable the usual controllers down to the new cgroup so
        // it is accounted even before limits are set (best effort; `apply`
        // reports a controller it needs but cannot enable).
        if self.s.layout == Layout::V2 {
            resources::enable_default_v2_controllers(fs, &self.s);
        }
        Ok(())
    }

    /// Reopens a cgroup saved with [`Cgroup::to_saved`].
    pub fn from_saved(s: &SavedCgroup) -> Cgroup {
        Cgroup { s: s.clone() }
    }

    pub fn to_saved(&self) -> SavedCgroup {
        self.s.clone()
    }

    pub fn layout(&self) -> Layout {
        self.s.layout
    }

    /// The directory of the v1 hierarchy that has `controller` (e.g.
    /// `"memory"`, `"name=systemd"`).
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.s
            .v1
            .iter()
            .find(|d| d.controllers.iter().any(|c| c == controller))
            .map(|d| d.dir.as_path())
    }

    pub fn v1_dirs(&self) -> &[V1Dir] {
        &self.s.v1
    }

    /// The cgroup2 directory (v2, or hybrid's unified hierarchy).
    pub fn unified_dir(&self) -> Option<&Path> {
        self.s.unified.as_deref()
    }

    /// The directories this cgroup created, parents first.
    pub fn created_dirs(&self) -> &[PathBuf] {
        &self.s.created
    }

    /// Applies OCI resources (at create, and for `update`). Only what the
    /// spec sets is written.
    pub fn apply(&self, r: &oci_spec::runtime::LinuxResources) -> Result<()> {
        resources::apply(&RealFs, &self.s, r)
    }

    /// Moves process `pid` into this cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        let value = pid.to_string();
        for d in &self.s.v1 {
            fsio::write(&RealFs, &d.dir, "cgroup.procs", &value)?;
        }
        if let Some(u) = &self.s.unified {
            fsio::write(&RealFs, u, "cgroup.procs", &value)?;
        }
        Ok(())
    }

    /// Moves process `pid` into the cgroup2 hierarchy only (when it could
    /// not be cloned into it).
    pub fn add_process_unified(&self, pid: i32) -> Result<()> {
        if let Some(u) = &self.s.unified {
            fsio::write(&RealFs, u, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Every directory of the cgroup: one per v1 hierarchy, and the
    /// cgroup2 one.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let v1 = self.s.v1.iter().map(|d| d.dir.clone());
        v1.chain(self.s.unified.clone()).collect()
    }

    /// The `tasks` file of every v1 hierarchy, open for writing, so that a
    /// new single-threaded process can move itself in by writing `0`.
    ///
    /// Why: a write of another process's pid to `cgroup.procs` takes the
    /// cgroup core's global threadgroup lock for writing, which waits for an
    /// RCU grace period (about 15 ms here, on every container start); a
    /// thread moving itself skips that lock (kernel/cgroup: "if the thread
    /// is current ... we can skip the global lock").
    pub fn open_v1_task_files(&self) -> Result<Vec<OwnedFd>> {
        self.s
            .v1
            .iter()
            .map(|d| {
                let path = d.dir.join("tasks");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError::Open { path, source })
            })
            .collect()
    }

    /// An `O_PATH` descriptor of the cgroup2 directory, for `clone3`'s
    /// `CLONE_INTO_CGROUP`; `None` on a v1-only host, or (logged) when it
    /// cannot be opened: the caller then still places the process with
    /// [`Cgroup::add_process`]. See [`Cgroup::try_unified_dir_fd`].
    pub fn unified_dir_fd(&self) -> Option<OwnedFd> {
        self.try_unified_dir_fd().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no CLONE_INTO_CGROUP descriptor");
            None
        })
    }

    /// Like [`Cgroup::unified_dir_fd`], with the error.
    pub fn try_unified_dir_fd(&self) -> Result<Option<OwnedFd>> {
        let Some(dir) = &self.s.unified else {
            return Ok(None);
        };
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
            CgroupError::InvalidPath {
                path: dir.display().to_string(),
                reason: "contains a NUL byte",
            }
        })?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(CgroupError::Open {
                path: dir.clone(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The directory whose `cgroup.procs` lists the container's processes.
    fn procs_dir(&self) -> Option<&Path> {
        if self.s.layout == Layout::V2 {
            return self.s.unified.as_deref();
        }
        ["freezer", "pids", "memory", "cpu", "devices"]
            .iter()
            .find_map(|c| self.v1_dir(c))
            .or_else(|| self.s.v1.first().map(|d| d.dir.as_path()))
            .or(self.s.unified.as_deref())
    }

    /// The processes in this cgroup and in any cgroup below it (one the
    /// container made for itself, as systemd does), as runc lists them.
    pub fn procs(&self) -> Result<Vec<i32>> {
        match self.procs_dir() {
            Some(dir) => read_procs_tree(dir),
            None => Ok(Vec::new()),
        }
    }

    /// Removes the container's own directories, then the parents it
    /// created on the way. An own directory that is busy (processes still
    /// leaving, or child cgroups the container made inside it) is retried
    /// until a short deadline, its child cgroups removed too. A created
    /// parent is shared with every container made below it since (two ids
    /// under a new `/grp/`): it is removed only if already empty, never
    /// recursed into. Directories that existed before are left alone.
    pub fn destroy(self) -> Result<()> {
        self.remove_created(DESTROY_TIMEOUT)
    }

    fn remove_created(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let own: Vec<&Path> = (self.s.v1.iter().map(|d| d.dir.as_path()))
            .chain(self.s.unified.as_deref())
            .collect();
        let mut first_err = None;
        for dir in self.s.created.iter().rev() {
            if !own.contains(&dir.as_path()) {
                // Busy or not empty: a sibling's, and the sibling's delete
                // does not remove what it did not create either.
                let _ = std::fs::remove_dir(dir);
                continue;
            }
            if let Err(e) = rmdir_tree(dir, deadline)
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Resolves a cgroups path to directories, without touching them.
pub(crate) fn resolve(
    mounts: &Mounts,
    own: Option<&OwnCgroups>,
    path: &CgroupsPath,
) -> Result<SavedCgroup> {
    let rel = path.components();
    let mut v1 = Vec::new();
    for m in &mounts.v1 {
        let base = match own {
            None => m.mount_point.clone(),
            Some(own) => own
                .v1_path(&m.controllers)
                .and_then(|p| layout::dir_in_mount(&m.mount_point, &m.root, p))
                .ok_or_else(|| CgroupError::OwnCgroupUnknown {
                    hierarchy: m.controllers.join(","),
                    file: layout::PROC_SELF_CGROUP.into(),
                    mount_root: m.root.clone(),
                })?,
        };
        v1.push(V1Dir {
            controllers: m.controllers.clone(),
            dir: base.join(rel),
        });
    }
    let (unified, unified_base) = match &mounts.unified {
        None => (None, None),
        Some(u) => {
            let base = match own {
                None => Some(u.mount_point.clone()),
                Some(own) => own
                    .unified
                    .as_deref()
                    .and_then(|p| layout::dir_in_mount(&u.mount_point, &u.root, p)),
            };
            match base {
                Some(base) => (Some(base.join(rel)), Some(base)),
                // On a hybrid host the unified hierarchy is optional: a
                // caller outside it just has no unified dir.
                None if mounts.layout == Layout::Hybrid => (None, None),
                None => {
                    return Err(CgroupError::OwnCgroupUnknown {
                        hierarchy: "cgroup2".into(),
                        file: layout::PROC_SELF_CGROUP.into(),
                        mount_root: u.root.clone(),
                    });
                }
            }
        }
    };
    Ok(SavedCgroup {
        layout: mounts.layout,
        v1,
        unified,
        unified_base,
        created: Vec::new(),
    })
}

fn mount_point_of(dir: &Path, controllers: &[String]) -> Option<PathBuf> {
    let mounts = Mounts::get().ok()?;
    mounts
        .v1
        .iter()
        .find(|m| m.controllers == controllers && dir.starts_with(&m.mount_point))
        .map(|m| m.mount_point.clone())
}

/// `mkdir -p dir`, recording each directory it made (parents first). Never
/// creates `stop` itself (a mount point).
fn mkdir_p(dir: &Path, stop: Option<&Path>, created: &mut Vec<PathBuf>) -> Result<()> {
    let mkdir_err = |source| CgroupError::Mkdir {
        dir: dir.to_path_buf(),
        source,
    };
    match std::fs::create_dir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if dir.is_dir() {
                Ok(())
            } else {
                Err(mkdir_err(e))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && Some(dir) != stop => {
            let Some(parent) = dir.parent() else {
                return Err(mkdir_err(e));
            };
            mkdir_p(parent, stop, created)?;
            match std::fs::create_dir(dir) {
                Ok(()) => {
                    created.push(dir.to_path_buf());
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
                Err(e) => Err(mkdir_err(e)),
            }
        }
        Err(e) => Err(mkdir_err(e)),
    }
}

/// Copies a v1 cpuset file from the nearest ancestor where it is non-empty.
fn copy_from_parent(fs: &dyn CgroupFs, dir: &Path, file: &str) -> Result<()> {
    let mut p = dir.parent();
    while let Some(parent) = p {
        let v = fsio::read(fs, parent, file)?;
        let v = v.trim();
        if !v.is_empty() {
            return fsio::write(fs, dir, file, v);
        }
        p = parent.parent();
    }
    Ok(())
}

pub(crate) fn read_procs(dir: &Path) -> Result<Vec<i32>> {
    let text = fsio::read(&RealFs, dir, "cgroup.procs")?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.trim()
                .parse::<i32>()
                .map_err(|_| fsio::parse_err(dir, "cgroup.procs", format!("bad pid {l:?}")))
        })
        .collect()
}

/// `cgroup.procs` of `dir` and of every cgroup below it. A child cgroup
/// removed while it is read is skipped.
pub(crate) fn read_procs_tree(dir: &Path) -> Result<Vec<i32>> {
    let mut pids = read_procs(dir)?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match read_procs_tree(&entry.path()) {
                Ok(more) => pids.extend(more),
                Err(_) if !entry.path().exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(pids)
}

/// Removes `dir` (and any child cgroups below it), retrying EBUSY until
/// `deadline`. A missing directory is fine.
fn rmdir_tree(dir: &Path, deadline: Instant) -> Result<()> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                // Child cgroups first (only directories: cgroupfs files
                // cannot be removed and do not block rmdir).
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            rmdir_tree(&entry.path(), deadline)?;
                        }
                    }
                }
                if Instant::now() >= deadline {
                    // One last attempt after removing the children.
                    return match std::fs::remove_dir(dir) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(_) => Err(CgroupError::Busy {
                            dir: dir.to_path_buf(),
                            waited: started.elapsed(),
                        }),
                    };
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid_mounts() -> Mounts {
        Mounts::parse(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap()
    }

    #[test]
    fn resolves_relative_under_own_cgroup_per_hierarchy() {
        let own = OwnCgroups::parse("9:name=systemd:/\n4:memory:/process_api/h\n1:cpu:/\n0::/\n");
        let s = resolve(
            &hybrid_mounts(),
            Some(&own),
            &CgroupsPath::parse("a/b").unwrap(),
        )
        .unwrap();
        assert_eq!(s.layout, Layout::Hybrid);
        let dirs: Vec<_> = s.v1.iter().map(|d| d.dir.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/cpu/a/b",
                "/sys/fs/cgroup/memory/process_api/h/a/b",
                "/sys/fs/cgroup/systemd/a/b"
            ]
        );
        assert_eq!(
            s.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(
            s.unified_base.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn resolves_absolute_under_mount_roots() {
        let s = resolve(&hybrid_mounts(), None, &CgroupsPath::parse("/x").unwrap()).unwrap();
        assert_eq!(s.v1[1].dir, Path::new("/sys/fs/cgroup/memory/x"));
        assert_eq!(
            s.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/x"))
        );
    }

    #[test]
    fn unknown_own_cgroup_is_an_error() {
        let own = OwnCgroups::parse("1:cpu:/\n0::/\n"); // no memory entry
        let err = resolve(
            &hybrid_mounts(),
            Some(&own),
            &CgroupsPath::parse("a").unwrap(),
        )
        .unwrap_err();
        assert!(
            matches!(err, CgroupError::OwnCgroupUnknown { ref hierarchy, .. } if hierarchy == "memory"),
            "{err}"
        );
    }

    #[test]
    fn saved_round_trips_through_json() {
        let own = OwnCgroups::parse("9:name=systemd:/\n4:memory:/m\n1:cpu:/\n0::/\n");
        let mut s = resolve(
            &hybrid_mounts(),
            Some(&own),
            &CgroupsPath::parse("c").unwrap(),
        )
        .unwrap();
        s.created = vec!["/sys/fs/cgroup/cpu/c".into()];
        let json = serde_json::to_string(&s).unwrap();
        let back: SavedCgroup = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let cg = Cgroup::from_saved(&back);
        assert_eq!(cg.to_saved(), s);
        assert_eq!(
            cg.v1_dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/m/c"))
        );
        assert_eq!(
            cg.v1_dir("name=systemd"),
            Some(Path::new("/sys/fs/cgroup/systemd/c"))
        );
        assert_eq!(cg.v1_dir("pids"), None);
    }
}
