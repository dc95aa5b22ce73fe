//! A sandbox made without the init helper, for a program that a tracer
//! takes over at its exec (a restore's stub).
//!
//! The helper path ([`crate::Runtime::create`] with a
//! [`crate::Takeover`]) execs `sprout-init`, which makes the rootfs
//! itself and then execs the program: two execs and every mount on the
//! start's critical path. Here, in the way forked instances get theirs:
//! - the container's id and cgroup are taken with [`crate::Runtime::adopt`];
//! - the rootfs is built beside the start, as a mount namespace, by
//!   [`crate::rootfs::detached::spawn_build`];
//! - the first process is cloned straight into its new pid, ipc and uts
//!   namespaces (and cgroup2 directory), joins its network namespace,
//!   moves itself into the v1 cgroups, unshares its cgroup namespace,
//!   sets its names and waits at a gate ([`spawn`]);
//! - the caller traces it, then [`DirectInit::open`] sets its limits and
//!   lets it exec the program; the tracer moves it into the rootfs
//!   namespace and applies the masks and read-only paths by injection.
//!
//! Bundles that need what only the helper does (hooks, a terminal, user or
//! time namespaces, LSM labels, ...) take the helper path (sysctls are
//! written by the tracer, from inside, like the masks):
//! [`helper_needed`] says why.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use oci_spec::runtime::LinuxNamespaceType;

use crate::container::{Adoption, oom_score_adj};
use crate::error::{Error, Result};
use crate::init::process;
use crate::namespaces;
use crate::spawn::{self, Gated, GatedSteps, NamespaceJoin, SpawnRequest, Spawned};
use crate::spec::Bundle;

/// Why `bundle` needs the init helper, or `None` when [`spawn`] can make
/// its sandbox.
pub fn helper_needed(bundle: &Bundle) -> Option<String> {
    let spec = &bundle.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    let process = spec.process().as_ref()?;
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let new = |t: LinuxNamespaceType| {
        namespaces
            .iter()
            .any(|n| n.typ() == t && n.path().is_none())
    };
    let joined = |t: LinuxNamespaceType| {
        namespaces
            .iter()
            .any(|n| n.typ() == t && n.path().is_some())
    };
    let hooks = spec.hooks().as_ref().is_some_and(|h| {
        [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ]
        .iter()
        .any(|k| k.as_ref().is_some_and(|v| !v.is_empty()))
    });
    let reason = if hooks {
        "hooks"
    } else if process.terminal() == Some(true) {
        "a terminal"
    } else if new(LinuxNamespaceType::User) || joined(LinuxNamespaceType::User) {
        "a user namespace"
    } else if new(LinuxNamespaceType::Time) || joined(LinuxNamespaceType::Time) {
        "a time namespace"
    } else if !new(LinuxNamespaceType::Pid) {
        "no new pid namespace"
    } else if !new(LinuxNamespaceType::Mount) {
        "no new mount namespace"
    } else if linux.personality().is_some() {
        "a personality"
    } else if process.io_priority().is_some() {
        "an I/O priority"
    } else if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
        || process
            .selinux_label()
            .as_ref()
            .is_some_and(|l| !l.is_empty())
    {
        "an LSM label"
    } else {
        return None;
    };
    Some(reason.to_string())
}

/// What [`spawn`] starts.
#[derive(Debug)]
pub struct DirectRequest<'a> {
    /// The program the first process execs at the gate (a memfd).
    pub program: OwnedFd,
    /// Its network namespace (see [`network_namespace`]).
    pub netns: BorrowedFd<'a>,
    /// Its stdin, stdout, stderr; `None` inherits the caller's.
    pub stdio: [Option<OwnedFd>; 3],
    /// Descriptors it keeps across the exec, at the numbers
    /// [`DirectInit::passed`] gives.
    pub pass: Vec<OwnedFd>,
    /// Give it a session keyring of its own, named after the container.
    pub new_keyring: bool,
}

/// The sandbox's first process, set up and waiting at its gate. Dropped
/// unopened, it is killed and reaped.
#[derive(Debug)]
pub struct DirectInit {
    gated: Gated,
    passed: Vec<RawFd>,
}

/// The network namespace of `bundle`'s sandbox: the one it names by
/// path, a new one (its `lo` down, as a fresh clone's would be) if it
/// names one without a path, else the caller's own.
pub fn network_namespace(bundle: &Bundle) -> Result<OwnedFd> {
    let linux = bundle.spec.linux().clone().unwrap_or_default();
    let entry = linux
        .namespaces()
        .iter()
        .flatten()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .cloned();
    let open = |path: std::path::PathBuf| {
        std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|source| {
                Error::Spawn(spawn::SpawnError::OpenNamespace {
                    joined: "network".into(),
                    path,
                    source,
                })
            })
    };
    match entry {
        None => open("/proc/thread-self/ns/net".into()),
        Some(n) => match n.path() {
            Some(path) => open(path.clone()),
            None => namespaces::new_network_namespace(false)
                .map_err(Error::io("making a network namespace")),
        },
    }
}

/// Sets `process`'s rlimits and oom_score_adj on process `pid` from
/// outside (a sandbox's first process at its gate, a forked instance
/// before it runs), as the init helper sets its own.
pub fn apply_limits(pid: i32, process: &oci_spec::runtime::Process) -> Result<()> {
    process::apply_rlimits_of(pid, process.rlimits().as_deref().unwrap_or_default())?;
    if let Some(adj) = process.oom_score_adj() {
        oom_score_adj(pid, adj)?;
    }
    Ok(())
}

/// Clones the first process of `adoption`'s sandbox into its namespaces
/// and cgroup (see the module); it waits at the gate. The bundle must not
/// need the helper ([`helper_needed`]).
pub fn spawn(adoption: &Adoption, req: DirectRequest<'_>) -> Result<DirectInit> {
    let bundle = adoption.bundle();
    if let Some(reason) = helper_needed(bundle) {
        return Err(Error::Spec(crate::spec::SpecError::InvalidField {
            field: "linux".into(),
            reason: format!("{reason} need(s) the init helper"),
        }));
    }
    let spec = &bundle.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    let ns = namespaces::plan(linux.namespaces().as_deref().unwrap_or_default()).map_err(|e| {
        Error::Spec(crate::spec::SpecError::InvalidField {
            field: "linux.namespaces".into(),
            reason: e.to_string(),
        })
    })?;
    let cgroup = adoption.cgroup();
    let cgroup_err = |source| Error::Cgroup {
        id: adoption.id().to_string(),
        source,
    };
    let netns = req.netns.try_clone_to_owned().map_err(Error::io("netns"))?;
    let mut joins: Vec<NamespaceJoin> = ns
        .joins
        .into_iter()
        .filter(|j| j.nstype != libc::CLONE_NEWNET)
        .collect();
    joins.push(NamespaceJoin {
        fd: netns,
        nstype: libc::CLONE_NEWNET,
    });
    let name = |s: &Option<String>, what: &str| -> Result<Option<CString>> {
        s.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                CString::new(s).map_err(|_| {
                    Error::Spec(crate::spec::SpecError::InvalidField {
                        field: what.into(),
                        reason: "contains a NUL byte".into(),
                    })
                })
            })
            .transpose()
    };
    let steps = GatedSteps {
        program: req.program,
        task_files: cgroup.open_v1_task_files().map_err(cgroup_err)?,
        unshare_cgroup_ns: ns.new_cgroup,
        hostname: name(spec.hostname(), "hostname")?,
        domainname: name(spec.domainname(), "domainname")?,
        keyring: if req.new_keyring {
            CString::new(adoption.id()).ok()
        } else {
            None
        },
    };
    // The mount namespace is the rootfs builder's, joined after the exec:
    // a copy of the caller's would only have to be torn down; the network
    // namespace is joined (made beforehand, for the builder's sysfs).
    let flags = ns.clone_flags & !((libc::CLONE_NEWNS | libc::CLONE_NEWNET) as u32 as u64);
    let mut sreq = SpawnRequest {
        new_namespaces: flags,
        joins,
        joins_pid_namespace: false,
        stdio: req.stdio,
        pass: req.pass,
        preserve_fds: 0,
        cgroup: cgroup.try_unified_dir_fd().map_err(cgroup_err)?,
        id_maps: None,
    };
    let passed = spawn::prepare_fds(&mut sreq).map_err(Error::io("preparing descriptors"))?;
    let cloned_into_unified = sreq.cgroup.is_some();
    let gated = spawn::spawn_gated(sreq, steps)?;
    if !cloned_into_unified {
        cgroup
            .add_process_unified(gated.pid.as_raw())
            .map_err(cgroup_err)?;
    }
    Ok(DirectInit { gated, passed })
}

impl DirectInit {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.gated.pid.as_raw()
    }

    /// Where the descriptors of [`DirectRequest::pass`] are in it, in
    /// order.
    pub fn passed(&self) -> &[RawFd] {
        &self.passed
    }

    /// A pidfd of it.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.gated.pidfd.as_fd()
    }

    /// Sets the bundle's rlimits on it, then `RLIMIT_STACK` to
    /// `rlimit_stack` if given (the exec places the new mm by it), its
    /// `oom_score_adj`, and lets it exec the program.
    pub fn open(self, bundle: &Bundle, rlimit_stack: Option<(u64, u64)>) -> Result<Spawned> {
        let pid = self.pid();
        if let Some(p) = bundle.spec.process() {
            apply_limits(pid, p)?;
        }
        if let Some((soft, hard)) = rlimit_stack {
            process::set_rlimit_of(pid, libc::RLIMIT_STACK as i32, soft, hard).map_err(
                |source| {
                    Error::Process(process::ProcessError::Rlimit {
                        name: "RLIMIT_STACK",
                        source,
                    })
                },
            )?;
        }
        Ok(self.gated.open()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(edit: impl FnOnce(&mut serde_json::Value)) -> Bundle {
        let mut v = serde_json::json!({
            "ociVersion": "1.2.0",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "network"}, {"type": "cgroup"}
            ]}
        });
        edit(&mut v);
        Bundle {
            dir: "/b".into(),
            rootfs: "/b/rootfs".into(),
            spec: serde_json::from_value(v).unwrap(),
        }
    }

    #[test]
    fn the_network_namespace_is_the_one_the_bundle_says() {
        use std::os::unix::fs::MetadataExt;
        let ino = |fd: &OwnedFd| {
            std::fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(fd)
            ))
            .unwrap()
            .ino()
        };
        let ours = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        // Not listed: the caller's; listed with a path: that one.
        let none = network_namespace(&bundle(|v| {
            v["linux"]["namespaces"].as_array_mut().unwrap().remove(4);
        }))
        .unwrap();
        assert_eq!(ino(&none), ours);
        let by_path = network_namespace(&bundle(|v| {
            v["linux"]["namespaces"][4] =
                serde_json::json!({"type": "network", "path": "/proc/self/ns/net"})
        }))
        .unwrap();
        assert_eq!(ino(&by_path), ours);
        // Listed without a path: a new one.
        let new = network_namespace(&bundle(|_| {})).unwrap();
        assert_ne!(ino(&new), ours);
    }

    #[test]
    fn only_what_the_helper_alone_does_needs_it() {
        assert_eq!(helper_needed(&bundle(|_| {})), None);
        assert_eq!(
            helper_needed(&bundle(|v| {
                v["linux"]["sysctl"] = serde_json::json!({"kernel.msgmax": "9000"})
            })),
            None
        );
        assert_eq!(helper_needed(&bundle(|v| v["hostname"] = "h".into())), None);
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 6] = [
            ("hooks", |v| {
                v["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]})
            }),
            ("a terminal", |v| v["process"]["terminal"] = true.into()),
            ("a user namespace", |v| {
                v["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "user"}))
            }),
            ("no new pid namespace", |v| {
                v["linux"]["namespaces"].as_array_mut().unwrap().remove(0);
            }),
            (
                "no new mount namespace",
                |v| {
                    v["linux"]["namespaces"][1] =
                        serde_json::json!({"type": "mount", "path": "/proc/1/ns/mnt"})
                },
            ),
            ("an LSM label", |v| {
                v["process"]["apparmorProfile"] = "p".into()
            }),
        ];
        for (reason, edit) in cases {
            assert_eq!(helper_needed(&bundle(edit)).as_deref(), Some(reason));
        }
    }
}
