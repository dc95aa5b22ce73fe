//! Errors of the cgroup manager: every variant names the path, controller or
//! file involved, and carries the underlying OS error where there is one.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    #[error(
        "cgroupsPath {path:?} has the systemd form \"slice:prefix:name\", but the systemd cgroup \
         driver is not supported; use a filesystem path (absolute, or relative to the caller's cgroup)"
    )]
    SystemdPathUnsupported { path: String },

    #[error("no cgroup filesystem (cgroup v1 or cgroup2) is mounted according to {mountinfo}")]
    NoCgroupMounts { mountinfo: PathBuf },

    #[error(
        "the caller's own cgroup for the {hierarchy} hierarchy is not listed in {file} \
         (or lies outside the hierarchy's mount root {mount_root})"
    )]
    OwnCgroupUnknown {
        hierarchy: String,
        file: PathBuf,
        mount_root: PathBuf,
    },

    #[error("reading {file}: {source}")]
    Read { file: PathBuf, source: io::Error },

    #[error("unexpected content in {file}: {reason}")]
    Parse { file: PathBuf, reason: String },

    #[error("writing {value:?} to {file}: {source}")]
    Write {
        file: PathBuf,
        value: String,
        source: io::Error,
    },

    #[error("creating cgroup directory {dir}: {source}")]
    Mkdir { dir: PathBuf, source: io::Error },

    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },

    #[error("removing cgroup directory {dir}: {source}")]
    Remove { dir: PathBuf, source: io::Error },

    #[error(
        "cgroup {dir} already exists and has {count} process(es) in it: it belongs to someone else"
    )]
    NotEmpty { dir: PathBuf, count: usize },

    #[error("cgroup {dir} still has processes or child cgroups after waiting {waited:?}")]
    Busy { dir: PathBuf, waited: Duration },

    #[error("cgroup controller {controller:?} is not available here, but {resource} needs it")]
    ControllerUnavailable {
        controller: String,
        resource: &'static str,
    },

    #[error("invalid value for {resource}: {reason}")]
    InvalidResource {
        resource: &'static str,
        reason: String,
    },

    #[error("{resource} cannot be set on {layout}")]
    Unsupported {
        resource: &'static str,
        layout: &'static str,
    },

    #[error("invalid device cgroup rule #{index}: {reason}")]
    InvalidDeviceRule { index: usize, reason: String },

    #[error("device cgroup rules cannot be enforced on cgroup v2 here: {reason}")]
    DeviceRulesUnsupportedOnV2 { reason: String },

    #[error("bpf({cmd}) for the device filter of {dir}: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier log: {log}") })]
    Bpf {
        cmd: &'static str,
        dir: PathBuf,
        source: io::Error,
        log: String,
    },

    #[error("{action} of cgroup {dir} did not settle within {timeout:?} (last state {state:?})")]
    FreezeTimeout {
        action: &'static str,
        dir: PathBuf,
        timeout: Duration,
        state: String,
    },

    #[error("sending signal {signal} to pid {pid} of cgroup {dir}: {source}")]
    Signal {
        pid: i32,
        signal: i32,
        dir: PathBuf,
        source: io::Error,
    },

    #[error("{op} for watching {file}: {source}")]
    Watch {
        op: &'static str,
        file: PathBuf,
        source: io::Error,
    },
}

pub type Result<T, E = CgroupError> = std::result::Result<T, E>;
