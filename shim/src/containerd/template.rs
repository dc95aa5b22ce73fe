//! Template containers: a container whose spec carries
//! `io.sprout.function=<name>` is not booted; at `Start` it is forked from
//! the template of that function, which `sproutd` holds (and loads from
//! the function's image on first use).
//!
//! containerd's bundle supplies the sandbox (namespaces, cgroup, mounts;
//! its rootfs, mounted by the shim, must hold the function's files, which
//! the fork checks by content). The fork goes over sproutd's side channel
//! with the shim's stdio pipes, and the pod's network namespace when the
//! spec names one (CRI made it); otherwise `io.sprout.vpc=<name>` takes a
//! pooled namespace of that VPC, else the function's own VPC or a fresh
//! namespace. The side connection stays open and carries the exit.
//!
//! The instance lives in sproutd, not in the shim: a shim that dies leaves
//! it running until containerd's `delete` action asks sproutd to remove it
//! ([`delete_instance`]). Lifecycle calls (kill, pause, resume, delete) go
//! through sproutd's API so its records and events stay right; exec, pids,
//! stats and update use the runtime library on sproutd's runtime root, as
//! for any container.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sprout_runtime::Runtime;

use super::error::{Result, ShimError};
use super::events::Exit;
use crate::client::{self, Client, SideConnection};
use crate::proto::{FdRole, KillBody, SideMessage, SideRequest, SignalArg};

/// The annotation that makes a container a template container.
pub const FUNCTION_ANNOTATION: &str = "io.sprout.function";
/// The annotation that names the VPC whose pool gives the network namespace.
pub const VPC_ANNOTATION: &str = "io.sprout.vpc";

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

/// sproutd's instance id for container `id` of containerd namespace
/// `namespace` (ids are unique only per namespace; sproutd is node-wide).
pub fn instance_id(namespace: &str, id: &str) -> String {
    format!("{namespace}.{id}")
}

/// What makes a container a template container, read from its spec.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    pub function: String,
    pub instance: String,
    pub vpc: Option<String>,
    /// The network namespace the spec joins (a pod's, made by CRI).
    pub netns: Option<PathBuf>,
}

impl TemplateSpec {
    /// `None` for a plain container.
    pub fn of(spec: &oci_spec::runtime::Spec, namespace: &str, id: &str) -> Option<TemplateSpec> {
        let annotations = spec.annotations().clone().unwrap_or_default();
        let function = annotations.get(FUNCTION_ANNOTATION)?.clone();
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .and_then(|n| n.path().clone());
        Some(TemplateSpec {
            function,
            instance: instance_id(namespace, id),
            vpc: annotations.get(VPC_ANNOTATION).cloned(),
            netns,
        })
    }
}

/// sproutd, as the shim talks to it.
#[derive(Debug, Clone)]
pub struct Sproutd {
    client: Client,
    side: PathBuf,
}

/// A fork in flight: sproutd's answer and the connection the exit comes on.
pub struct Forked {
    pub pid: i32,
    connection: SideConnection,
}

impl Forked {
    /// Blocks until the instance exits (sproutd's last line); a dropped
    /// connection (sproutd gone) is an unknown status.
    pub fn wait(self) -> Exit {
        let status = match self.connection.wait() {
            Ok(SideMessage::Exited { exit, .. }) => exit.exit_code.unwrap_or(255),
            _ => 255,
        };
        Exit {
            status: status.max(0) as u32,
            at: SystemTime::now(),
        }
    }
}

impl Sproutd {
    pub fn from_env() -> Sproutd {
        let (api, side) = sproutd_sockets();
        Sproutd {
            client: Client::new(api),
            side,
        }
    }

    /// Fails unless sproutd knows `function` (checked at `Create`, so an
    /// unknown function is a clear error before anything runs).
    pub fn check_function(&self, function: &str) -> Result<()> {
        self.client.function(function)?;
        Ok(())
    }

    /// The runtime whose state root holds sproutd's instances.
    pub fn runtime(&self) -> Result<Runtime> {
        let info = self.client.info()?;
        Ok(Runtime::builder().root(info.root.join("runtime")).build()?)
    }

    /// Forks `t`'s function as its instance in the sandbox of `bundle`,
    /// with `stdio` as its fds 0-2.
    pub fn fork(&self, t: &TemplateSpec, bundle: &Path, stdio: &[OwnedFd]) -> Result<Forked> {
        let netns = match &t.netns {
            Some(p) => Some(OwnedFd::from(
                std::fs::File::open(p)
                    .map_err(ShimError::io(format!("network namespace {}", p.display())))?,
            )),
            None => None,
        };
        let mut roles = vec![FdRole::Stdin, FdRole::Stdout, FdRole::Stderr];
        roles.truncate(stdio.len());
        let mut fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
        if let Some(ns) = &netns {
            roles.push(FdRole::Netns);
            fds.push(ns.as_fd());
        }
        let req = SideRequest {
            op: "fork".into(),
            function: t.function.clone(),
            id: t.instance.clone(),
            bundle: Some(bundle.to_path_buf()),
            fds: roles,
            annotations: HashMap::new(),
            resources: None,
            // A pod's namespace wins: the VPC pools serve callers without one.
            vpc: if netns.is_some() { None } else { t.vpc.clone() },
            wait: true,
        };
        let (forked, connection) = client::side_fork(&self.side, &req, &fds)?;
        Ok(Forked {
            pid: forked.pid,
            connection,
        })
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

    pub fn delete(&self, instance: &str, force: bool) -> Result<()> {
        match self.client.delete(instance, force) {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => Ok(other?),
        }
    }
}

/// The `delete` action's part for a template container: sproutd removes
/// the instance (killing it if it still runs). Gone already is fine.
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
    Sproutd::from_env().delete(&t.instance, true)?;
    Ok(true)
}
