//! Template containers: a container whose spec carries
//! `io.sprout.function=<name>` is not booted; at `Start` its instance
//! comes from `sproutd`, which holds the function's template (loaded from
//! the function's image on first use) and its warm pool.
//!
//! # How the instance is started
//!
//! Over sproutd's side channel, with the shim's stdio pipes; the side
//! connection stays open and carries the exit. What the spec says picks
//! the request ([`StartRequest`]):
//!
//! - **The spec joins a network namespace** (a CRI pod's, made by CNI) or
//!   names a VPC (`io.sprout.vpc=<name>`): op `fork` in containerd's
//!   bundle, joining that namespace or taking a pooled one of that VPC.
//!   A claim can do neither (pool instances have their network already),
//!   so the instance is a fresh fork with the id `<namespace>+<id>`.
//! - **The spec names a `cgroupsPath`**: op `claim` with containerd's
//!   bundle. sproutd always forks a fresh instance for it, placed in that
//!   cgroup, in the bundle's sandbox (namespaces, mounts; its rootfs,
//!   mounted by the shim, must hold the function's files, which the fork
//!   checks by content). containerd's default spec names one
//!   (`/<namespace>/<id>`), `ctr run --cgroup X` names `X`, and CRI names
//!   the pod's: **requests from CRI and `ctr` get a fresh fork**, counted
//!   as a start of the function (`fork`, or `restore` when the template
//!   had to be loaded first) so the pool's policy learns from them.
//! - **The spec names no `cgroupsPath`** (`ctr run --cgroup ""`): op
//!   `claim` without a bundle. sproutd hands out a warm instance of the
//!   function's pool when it has one (`pool_hit`), else forks one like a
//!   pool instance; either way it runs in the **function's own sandbox**
//!   (its bundle, its pool cgroup), not containerd's, whose rootfs stays
//!   mounted but unused. The spec's resource limits are applied to the
//!   instance's cgroup before it is thawed. A pool instance's stdin is
//!   `/dev/null` (it was forked before the claim); stdout and stderr are
//!   redirected to containerd's.
//!
//! # Instance ids
//!
//! A claim's instance is named by sproutd (a pool instance keeps the id it
//! was forked with), so the shim maps the container to it: kept in the
//! task ([`super::task`]) and written atomically to [`INSTANCE_FILE`] in
//! the bundle ([`InstanceLink`]) as soon as sproutd answers, with the
//! start path (also logged). Every call that addresses the instance uses
//! the mapped id. The instance also carries the bundle's path in its
//! annotations ([`BUNDLE_ANNOTATION`]), so a shim killed between
//! sproutd's answer and the write still leaves a way to find it.
//!
//! The instance lives in sproutd, not in the shim: a shim that dies leaves
//! it running until containerd's `delete` action asks sproutd to remove it
//! ([`delete_instance`], which reads the link). Lifecycle calls (kill,
//! pause, resume, delete) go through sproutd's API so its records, events
//! and pool stay right; exec, pids, stats and update use the runtime
//! library on sproutd's runtime root, as for any container.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};
use serde::{Deserialize, Serialize};
use sprout_runtime::Runtime;

use super::error::{Result, ShimError};
use super::events::Exit;
use crate::client::{self, Client, SideConnection};
use crate::engine::ExitStatus;
use crate::proto::{
    FdRole, InstanceView, KillBody, SideMessage, SideRequest, SignalArg, StageView, StartPath,
};

/// The annotation that makes a container a template container.
pub const FUNCTION_ANNOTATION: &str = "io.sprout.function";
/// The annotation that names the VPC whose pool gives the network namespace.
pub const VPC_ANNOTATION: &str = "io.sprout.vpc";
/// Set by the shim on every instance it starts: the container's bundle.
pub const BUNDLE_ANNOTATION: &str = "io.sprout.containerd.bundle";
/// The file in the bundle that names the container's instance.
pub const INSTANCE_FILE: &str = "sprout-instance.json";

/// Where sproutd listens: `$SPROUTD_SOCKET` and `$SPROUTD_SIDE_SOCKET`
/// (containerd's environment, which the shim inherits), else the defaults.
pub fn sproutd_sockets() -> (PathBuf, PathBuf) {
    let api = std::env::var_os("SPROUTD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(client::DEFAULT_SOCKET));
    let side = std::env::var_os("SPROUTD_SIDE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(client::DEFAULT_SIDE_SOCKET));
    (api, side)
}

/// The instance id of a forked (not claimed) container `id` of containerd
/// namespace `namespace` (ids are unique only per namespace; sproutd is
/// node-wide). Joined with `+`, which containerd allows in neither: with
/// `.`, namespace `k8s` and id `io.x` would name the instance of namespace
/// `k8s.io`'s container `x`.
pub fn fork_instance_id(namespace: &str, id: &str) -> String {
    format!("{namespace}+{id}")
}

/// What makes a container a template container, read from its spec.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    pub function: String,
    pub start: StartRequest,
    /// Who asks, for the function's `callers`: the containerd namespace,
    /// and under CRI `/` and the pod's namespace (an annotation the CRI
    /// sets itself).
    pub caller: String,
}

/// The annotation in which containerd's CRI names a container's pod
/// namespace.
pub const CRI_POD_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";

/// The side-channel request that starts a template container's instance.
#[derive(Debug, Clone, PartialEq)]
pub enum StartRequest {
    /// Op `fork` in containerd's bundle as `instance`: the spec joins a
    /// network namespace (`netns`, a pod's) or names a VPC.
    Fork {
        instance: String,
        netns: Option<PathBuf>,
        vpc: Option<String>,
    },
    /// Op `claim` with containerd's bundle, which names its cgroup: a
    /// fresh fork placed there.
    ClaimInBundle,
    /// Op `claim` without a bundle: a warm pool instance (or a fork like
    /// one), with the spec's limits.
    ClaimFromPool {
        resources: Option<Box<LinuxResources>>,
    },
}

impl TemplateSpec {
    /// `None` for a plain container.
    pub fn of(spec: &Spec, namespace: &str, id: &str) -> Option<TemplateSpec> {
        let annotations = spec.annotations().clone().unwrap_or_default();
        let function = annotations.get(FUNCTION_ANNOTATION)?.clone();
        let linux = spec.linux().clone().unwrap_or_default();
        let netns = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .and_then(|n| n.path().clone());
        let vpc = annotations.get(VPC_ANNOTATION).cloned();
        let names_cgroup = linux
            .cgroups_path()
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty());
        let start = if netns.is_some() || vpc.is_some() {
            StartRequest::Fork {
                instance: fork_instance_id(namespace, id),
                // A pod's namespace wins: the VPC pools serve callers
                // without one.
                vpc: if netns.is_some() { None } else { vpc },
                netns,
            }
        } else if names_cgroup {
            StartRequest::ClaimInBundle
        } else {
            StartRequest::ClaimFromPool {
                resources: linux
                    .resources()
                    .clone()
                    .and_then(limits_only)
                    .map(Box::new),
            }
        };
        let caller = match annotations.get(CRI_POD_NAMESPACE_ANNOTATION) {
            Some(pod) => format!("{namespace}/{pod}"),
            None => namespace.to_string(),
        };
        Some(TemplateSpec {
            function,
            start,
            caller,
        })
    }
}

/// The limits of `r` a claim applies to a pool instance's cgroup: device
/// rules are the instance's own (containerd's default denies all).
fn limits_only(mut r: LinuxResources) -> Option<LinuxResources> {
    r.set_devices(None);
    (r != LinuxResources::default()).then_some(r)
}

/// The container → instance mapping, persisted in the bundle so the
/// `delete` action (and any later reader of the bundle) finds the
/// instance whatever became of the shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceLink {
    /// sproutd's instance id.
    pub instance: String,
    pub function: String,
    /// How sproutd started it (`None` for a fork request, whose answer
    /// does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StartPath>,
}

impl InstanceLink {
    /// The link in `bundle`; `None` when there is none (never started) or
    /// it cannot be read.
    pub fn read(bundle: &Path) -> Option<InstanceLink> {
        let text = std::fs::read(bundle.join(INSTANCE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the link atomically: a temporary file renamed over. Not
    /// synced: the link must outlive the shim, not the machine (the
    /// instance, a process, does not survive a crash of the machine, and
    /// containerd keeps bundles in its state dir, `/run`), and a sync on
    /// `Start`'s path cost ~3 ms (benches/containerd.rs).
    pub fn write(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(INSTANCE_FILE);
        let tmp = bundle.join(format!(".{INSTANCE_FILE}.tmp"));
        let what = || format!("writing {}", path.display());
        let text = serde_json::to_vec(self).expect("serializable");
        let mut f = std::fs::File::create(&tmp).map_err(ShimError::io(what()))?;
        f.write_all(&text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                ShimError::io(what())(e)
            })
    }
}

/// sproutd, as the shim talks to it.
#[derive(Debug, Clone)]
pub struct Sproutd {
    client: Client,
    side: PathBuf,
}

/// A started instance: sproutd's answer and the connection the exit
/// comes on.
pub struct Started {
    pub link: InstanceLink,
    pub pid: i32,
    /// The side request's round trip, connect to answer, as the shim saw it.
    pub request: Duration,
    /// sproutd's own account: a claim's time from its arrival to the
    /// instance running (`None` for a fork request, which does not say).
    pub sproutd_us: Option<u64>,
    /// sproutd's stages: a pool hit's claim steps, else the fork's.
    pub stages: Vec<StageView>,
    connection: SideConnection,
    /// The instance's pidfd, opened when it started: if sproutd goes away
    /// (a restart adopts the instance, which runs on), the exit comes
    /// from the kernel instead.
    pidfd: Option<OwnedFd>,
}

impl Started {
    /// [`Started::stages`] as `name:µs,name:µs` (for the log).
    pub fn stages_text(&self) -> String {
        self.stages
            .iter()
            .map(|s| format!("{}:{}", s.name, s.us))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Blocks until the instance exits: sproutd's last line, or, if
    /// sproutd went away first (crashed or restarted: the instance runs
    /// on and a new sproutd adopts it), the kernel's word through the
    /// pidfd (`PIDFD_INFO_EXIT`) once the instance has exited. 255 when
    /// neither can tell.
    pub fn wait(self) -> Exit {
        let status = match self.connection.wait() {
            Ok(SideMessage::Exited { exit, .. }) => exit.exit_code.unwrap_or(255),
            other => {
                tracing::info!(
                    instance = %self.link.instance,
                    "sproutd's connection ended without the exit ({}): waiting on the process",
                    match &other {
                        Ok(m) => format!("{m:?}"),
                        Err(e) => e.to_string(),
                    }
                );
                self.pidfd
                    .as_ref()
                    .and_then(exit_of_process)
                    .and_then(ExitStatus::code)
                    .unwrap_or(255)
            }
        };
        Exit {
            status: status.max(0) as u32,
            at: SystemTime::now(),
        }
    }
}

/// Blocks until the process of `pidfd` has exited and been reaped (by its
/// reaper: not our child), then reads its status (`PIDFD_INFO_EXIT`).
fn exit_of_process(pidfd: &OwnedFd) -> Option<ExitStatus> {
    crate::pidfd::wait_pidfd(pidfd, None).ok()?;
    // Readable at exit; the status is there once its reaper has reaped
    // it, a moment later.
    for _ in 0..200 {
        if let Some(status) = crate::pidfd::exit_info(pidfd) {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

impl Sproutd {
    pub fn from_env() -> Sproutd {
        let (api, side) = sproutd_sockets();
        Sproutd {
            client: Client::new(api),
            side,
        }
    }

    /// The runtime whose state root holds sproutd's instances.
    pub fn runtime(&self) -> Result<Runtime> {
        let info = self.client.info()?;
        Ok(Runtime::builder().root(info.root.join("runtime")).build()?)
    }

    /// Starts `t`'s instance for the container of `bundle`, with `stdio`
    /// as its fds 0-2, as `t.start` says.
    pub fn start(&self, t: &TemplateSpec, bundle: &Path, stdio: &[OwnedFd]) -> Result<Started> {
        let mut roles = vec![FdRole::Stdin, FdRole::Stdout, FdRole::Stderr];
        roles.truncate(stdio.len());
        let mut fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
        let mut req = SideRequest {
            function: t.function.clone(),
            caller: Some(t.caller.clone()),
            annotations: HashMap::from([(
                BUNDLE_ANNOTATION.to_string(),
                bundle.display().to_string(),
            )]),
            wait: true,
            ..Default::default()
        };
        match &t.start {
            StartRequest::Fork {
                instance,
                netns,
                vpc,
            } => {
                let netns = match netns {
                    Some(p) => Some(OwnedFd::from(
                        std::fs::File::open(p)
                            .map_err(ShimError::io(format!("network namespace {}", p.display())))?,
                    )),
                    None => None,
                };
                if let Some(ns) = &netns {
                    roles.push(FdRole::Netns);
                    fds.push(ns.as_fd());
                }
                req.op = "fork".into();
                req.id = instance.clone();
                req.bundle = Some(bundle.to_path_buf());
                req.vpc = vpc.clone();
                req.fds = roles;
                let sent = Instant::now();
                let (forked, connection) = client::side_fork(&self.side, &req, &fds)?;
                let pidfd = crate::pidfd::pidfd_open(forked.pid).ok();
                Ok(Started {
                    link: InstanceLink {
                        instance: forked.id,
                        function: forked.function,
                        path: None,
                    },
                    pid: forked.pid,
                    request: sent.elapsed(),
                    sproutd_us: None,
                    stages: forked.stages,
                    connection,
                    pidfd,
                })
            }
            StartRequest::ClaimInBundle | StartRequest::ClaimFromPool { .. } => {
                req.op = "claim".into();
                req.fds = roles;
                match &t.start {
                    StartRequest::ClaimInBundle => req.bundle = Some(bundle.to_path_buf()),
                    StartRequest::ClaimFromPool { resources } => {
                        req.resources = resources.as_deref().cloned()
                    }
                    StartRequest::Fork { .. } => unreachable!("matched above"),
                }
                let sent = Instant::now();
                let (claimed, connection) = client::side_claim(&self.side, &req, &fds)?;
                let pidfd = crate::pidfd::pidfd_open(claimed.pid).ok();
                Ok(Started {
                    link: InstanceLink {
                        instance: claimed.id,
                        function: claimed.function,
                        path: Some(claimed.path),
                    },
                    pid: claimed.pid,
                    request: sent.elapsed(),
                    sproutd_us: Some(claimed.claim_us),
                    stages: claimed.stages,
                    connection,
                    pidfd,
                })
            }
        }
    }

    /// The instance of `function` started for the container of `bundle`,
    /// found by its [`BUNDLE_ANNOTATION`].
    pub fn instance_of_bundle(&self, function: &str, bundle: &Path) -> Result<Option<String>> {
        let valid = !function.is_empty()
            && function
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !valid {
            // sproutd has no function of that name, so no instance of it.
            return Ok(None);
        }
        let all: Vec<InstanceView> = self.client.call(
            "GET",
            &format!("/instances?function={function}"),
            None::<&()>,
        )?;
        let bundle = bundle.display().to_string();
        Ok(all
            .into_iter()
            .find(|v| v.annotations.get(BUNDLE_ANNOTATION) == Some(&bundle))
            .map(|v| v.id))
    }

    pub fn kill(&self, instance: &str, signal: i32, all: bool) -> Result<()> {
        self.client.kill(
            instance,
            &KillBody {
                signal: SignalArg::Number(signal),
                all,
            },
        )?;
        Ok(())
    }

    pub fn pause(&self, instance: &str) -> Result<()> {
        self.client
            .call::<()>("POST", &format!("/instances/{instance}/pause"), None::<&()>)?;
        Ok(())
    }

    pub fn resume(&self, instance: &str) -> Result<()> {
        self.client.call::<()>(
            "POST",
            &format!("/instances/{instance}/resume"),
            None::<&()>,
        )?;
        Ok(())
    }

    /// Removes the instance (a live one only with `force`); gone already
    /// is fine.
    pub fn delete(&self, instance: &str, force: bool) -> Result<()> {
        match self.client.delete(instance, force) {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => Ok(other?),
        }
    }
}

/// The `delete` action's part for a template container: sproutd removes
/// its instance (killing it if it still runs), found through the link in
/// the bundle, else by what the shim would have asked for. Gone already,
/// or never started, is fine.
pub fn delete_instance(bundle: &Path, namespace: &str, id: &str) -> Result<bool> {
    // The config alone: the rootfs may be unmounted already.
    let path = bundle.join("config.json");
    let Ok(text) = std::fs::read(&path) else {
        return Ok(false);
    };
    let Ok(spec) = sprout_runtime::spec::parse_spec(&text, &path) else {
        return Ok(false);
    };
    let Some(t) = TemplateSpec::of(&spec, namespace, id) else {
        return Ok(false);
    };
    let sproutd = Sproutd::from_env();
    let instance = match (InstanceLink::read(bundle), &t.start) {
        (Some(link), _) => Some(link.instance),
        (None, StartRequest::Fork { instance, .. }) => Some(instance.clone()),
        // Never started, or the shim died before it wrote the link.
        (None, _) => sproutd.instance_of_bundle(&t.function, bundle)?,
    };
    if let Some(instance) = instance {
        sproutd.delete(&instance, true)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn fork_instance_ids_of_different_namespaces_never_collide() {
        assert_ne!(
            fork_instance_id("k8s", "io.c"),
            fork_instance_id("k8s.io", "c")
        );
        assert!(sprout_runtime::spec::validate_id(&fork_instance_id("k8s.io", "c")).is_ok());
    }

    #[test]
    fn the_spec_picks_fork_claim_in_bundle_or_claim_from_pool() {
        let plain = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        assert!(TemplateSpec::of(&plain, "default", "c").is_none());

        let pod = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.sprout.function": "f", "io.sprout.vpc": "blue"},
            "linux": {"cgroupsPath": "/k8s/pod/c",
                      "namespaces": [{"type": "network", "path": "/var/run/netns/p"}]}
        }));
        let t = TemplateSpec::of(&pod, "k8s.io", "c").unwrap();
        assert_eq!(t.function, "f");
        assert_eq!(
            t.start,
            StartRequest::Fork {
                instance: "k8s.io+c".into(),
                netns: Some("/var/run/netns/p".into()),
                vpc: None,
            }
        );

        let vpc = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.sprout.function": "f", "io.sprout.vpc": "blue"},
            "linux": {"namespaces": [{"type": "network"}]}
        }));
        assert!(matches!(
            TemplateSpec::of(&vpc, "default", "c").unwrap().start,
            StartRequest::Fork { vpc: Some(v), netns: None, .. } if v == "blue"
        ));

        let ctr = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.sprout.function": "f"},
            "linux": {"cgroupsPath": "/default/c", "namespaces": [{"type": "network"}]}
        }));
        assert_eq!(
            TemplateSpec::of(&ctr, "default", "c").unwrap().start,
            StartRequest::ClaimInBundle
        );

        let no_cgroup = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.sprout.function": "f"},
            "linux": {"cgroupsPath": "",
                      "resources": {"devices": [{"allow": false, "access": "rwm"}],
                                    "memory": {"limit": 67108864}}}
        }));
        let StartRequest::ClaimFromPool { resources } =
            TemplateSpec::of(&no_cgroup, "default", "c").unwrap().start
        else {
            panic!("not a pool claim");
        };
        let r = resources.unwrap();
        assert!(r.devices().is_none(), "device rules are not sent");
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(67108864));

        let only_devices = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.sprout.function": "f"},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}
        }));
        assert_eq!(
            TemplateSpec::of(&only_devices, "default", "c")
                .unwrap()
                .start,
            StartRequest::ClaimFromPool { resources: None }
        );
    }

    #[test]
    fn the_link_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(InstanceLink::read(dir.path()), None);
        let link = InstanceLink {
            instance: "f-w1a".into(),
            function: "f".into(),
            path: Some(StartPath::PoolHit),
        };
        link.write(dir.path()).unwrap();
        assert_eq!(InstanceLink::read(dir.path()), Some(link.clone()));
        let text = std::fs::read_to_string(dir.path().join(INSTANCE_FILE)).unwrap();
        assert!(text.contains("\"path\":\"pool_hit\""), "{text}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [INSTANCE_FILE], "no temporary file left");
        // Overwritten in place.
        let fork = InstanceLink { path: None, ..link };
        fork.write(dir.path()).unwrap();
        assert_eq!(InstanceLink::read(dir.path()), Some(fork));
    }
}
