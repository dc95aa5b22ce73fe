//! TEMPORARY STUB (lead): replaced by the cgroups helper's module.
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("stub")]
    Stub,
}
#[derive(Debug, Clone)]
pub enum CgroupsPath {
    Absolute(PathBuf),
    Relative(PathBuf),
}
impl CgroupsPath {
    pub fn parse(p: &Path) -> Result<Self, CgroupError> {
        Ok(if p.is_absolute() {
            Self::Absolute(p.into())
        } else {
            Self::Relative(p.into())
        })
    }
}
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedCgroup;
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats;
pub struct Cgroup;
impl Cgroup {
    pub fn create(_p: &CgroupsPath) -> Result<Cgroup, CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn apply(&self, _r: &oci_spec::runtime::LinuxResources) -> Result<(), CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn add_process(&self, _pid: i32) -> Result<(), CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn unified_dir_fd(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }
    pub fn freeze(&self) -> Result<(), CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn thaw(&self) -> Result<(), CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn kill_all(&self, _s: i32) -> Result<(), CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn destroy(self) -> Result<(), CgroupError> {
        Err(CgroupError::Stub)
    }
    pub fn to_saved(&self) -> SavedCgroup {
        SavedCgroup
    }
    pub fn from_saved(_s: &SavedCgroup) -> Cgroup {
        Cgroup
    }
}
pub struct OomWatcher;
pub struct OomEvent;
impl OomWatcher {
    pub fn wait(&self, _t: std::time::Duration) -> Result<Option<OomEvent>, CgroupError> {
        Err(CgroupError::Stub)
    }
}
impl Cgroup {
    pub fn oom_watcher(&self) -> Result<OomWatcher, CgroupError> {
        Err(CgroupError::Stub)
    }
}
