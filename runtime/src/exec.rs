//! `exec`: a new process inside a running container.
//!
//! The spawner joins every namespace of the container through a pidfd of
//! its init (one `setns` call), then clones the new init with
//! `CLONE_PARENT` so it is inside the joined pid namespace and still our
//! child; it starts in the container's cgroup (v2 directly, v1 by the write
//! below, before it runs anything of its own), gets its config and execs.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Process, State};

use crate::channel::{self, ChannelError, InitMsg, ParentMsg};
use crate::container::{Container, OCI_VERSION, Status, wait_for_exit};
use crate::error::{Error, Result};
use crate::init::{InitConfig, InitMode};
use crate::namespaces::clone_flag;
use crate::spawn::{self, NamespaceJoin, SpawnRequest};
use crate::spec;

/// Options of `exec` beyond the process itself.
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
    pub stdio: [Option<OwnedFd>; 3],
    /// Exec into a paused container (the process starts frozen).
    pub ignore_paused: bool,
}

/// A process started by `exec`.
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: i32,
    pidfd: OwnedFd,
}

impl ExecProcess {
    /// Waits for it; its exit code, since the caller is its parent.
    pub fn wait(&self) -> Result<Option<i32>> {
        wait_for_exit(self.pid, Some(&self.pidfd))
    }
}

impl Container {
    /// Starts `process` inside the container.
    pub fn exec(&self, process: Process, mut opts: ExecOptions) -> Result<ExecProcess> {
        spec::validate_process(&process)?;
        spec::check_lsm_available(&process)?;
        let status = self.status();
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if opts.ignore_paused => {}
            _ => {
                return Err(Error::WrongStatus {
                    id: self.id().to_string(),
                    status: status.as_str(),
                    action: "exec in it",
                });
            }
        }
        let init = self.saved().init.ok_or_else(|| Error::WrongStatus {
            id: self.id().to_string(),
            status: "stopped",
            action: "exec in it",
        })?;
        let pidfd =
            spawn::pidfd_open(init.pid).map_err(Error::io("opening the container's init"))?;
        if !init.is_alive() {
            return Err(Error::WrongStatus {
                id: self.id().to_string(),
                status: "stopped",
                action: "exec in it",
            });
        }
        let spec = self.spec();
        let linux = spec.linux().clone().unwrap_or_default();
        let namespaces: Vec<LinuxNamespaceType> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ())
            .collect();
        let flags = namespaces.iter().fold(0, |f, t| f | clone_flag(*t));

        let terminal = process.terminal().unwrap_or(false);
        let console = match (&opts.console_socket, terminal) {
            (Some(path), true) => Some(OwnedFd::from(UnixStream::connect(path).map_err(
                |source| Error::ConsoleSocket {
                    path: path.clone(),
                    source,
                },
            )?)),
            (None, true) => {
                return Err(Error::Spec(spec::SpecError::InvalidField {
                    field: "process.terminal".into(),
                    reason: "a tty needs a --console-socket".into(),
                }));
            }
            _ => None,
        };
        let (mut ch, init_ch) = channel::pair().map_err(Error::io("channel socketpair"))?;
        let mount_pidfd = pidfd.try_clone().map_err(Error::io("dup of pidfd"))?;
        let mut pass = vec![init_ch.into_fd(), mount_pidfd];
        if let Some(c) = console {
            pass.push(c);
        }
        let cgroup = self.cgroup();
        let placement =
            crate::container::Placement::new(&cgroup).map_err(|source| Error::Cgroup {
                id: self.id().to_string(),
                source,
            })?;
        let cloned_into_unified = placement.clone_into.is_some();
        let tasks = pass.len()..pass.len() + placement.task_files.len();
        pass.extend(placement.task_files);
        let join_fd = pidfd.try_clone().map_err(Error::io("dup of pidfd"))?;
        // Everything but the mount namespace before the exec; the init
        // joins that one itself (see InitConfig::join_mount_fd).
        let joins_mount = flags & libc::CLONE_NEWNS != 0;
        let flags = flags & !libc::CLONE_NEWNS;
        let mut req = SpawnRequest {
            new_namespaces: 0,
            joins: if flags != 0 {
                vec![NamespaceJoin {
                    fd: join_fd,
                    nstype: flags,
                }]
            } else {
                vec![]
            },
            joins_pid_namespace: namespaces.contains(&LinuxNamespaceType::Pid),
            stdio: std::mem::take(&mut opts.stdio),
            pass,
            preserve_fds: opts.preserve_fds,
            cgroup: placement.clone_into,
            id_maps: None,
        };
        let fds = spawn::prepare_fds(&mut req).map_err(Error::io("preparing descriptors"))?;
        let argv = vec!["sprout-init".to_string(), fds[0].to_string()];
        let spawned = spawn::spawn(self.runtime_init_binary(), &argv, req)?;
        let kill_spawned = |e: Error| {
            let _ = crate::container::pidfd_kill(&spawned.pidfd, libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(spawned.pid, None);
            e
        };
        let pid = spawned.pid.as_raw();
        crate::container::Placement::finish(cloned_into_unified, &cgroup, pid)
            .map_err(|source| Error::Cgroup {
                id: self.id().to_string(),
                source,
            })
            .map_err(kill_spawned)?;

        // The process's own value, else the container's (as runc): never
        // the caller's (a shim's is about -998).
        let oom_score_adj = process
            .oom_score_adj()
            .or_else(|| spec.process().as_ref().and_then(|p| p.oom_score_adj()));
        if let Some(adj) = oom_score_adj {
            crate::container::oom_score_adj(pid, adj).map_err(kill_spawned)?;
        }

        let mut state = State::default();
        state.set_version(OCI_VERSION.into());
        state.set_id(self.id().to_string());
        state.set_pid(Some(pid));
        state.set_bundle(self.bundle().to_path_buf());
        let config = InitConfig {
            mode: InitMode::Exec,
            id: self.id().to_string(),
            process,
            rootfs: None,
            hostname: None,
            domainname: None,
            sysctl: Default::default(),
            hooks: None,
            state,
            seccomp: linux.seccomp().clone(),
            personality: linux.personality().clone(),
            exec_fifo_fd: None,
            console_socket_fd: fds.get(2).copied(),
            start_error_fd: None,
            exits_fd: None,
            preserve_fds: opts.preserve_fds,
            join_mount_fd: joins_mount.then_some(fds[1]),
            join_mount_via_pidfd: true,
            cgroup_task_fds: fds[tasks].to_vec(),
            unshare_cgroup_ns: false,
            time_offsets: None,
            new_keyring: false,
            user_namespace: namespaces.contains(&LinuxNamespaceType::User),
            runtime_hooks: false,
            takeover: None,
        };
        ch.send(&ParentMsg::Bootstrap(Box::new(config)))
            .map_err(|e| kill_spawned(e.into()))?;
        match ch.recv() {
            // The channel is close-on-exec: EOF means the exec happened.
            Err(ChannelError::Closed) => {}
            Ok(InitMsg::Failed(f)) => return Err(kill_spawned(Error::Init(f))),
            Ok(other) => {
                return Err(kill_spawned(Error::Init(crate::init::InitFailure {
                    step: "exec".into(),
                    message: format!("unexpected message {other:?}"),
                })));
            }
            Err(e) => return Err(kill_spawned(e.into())),
        }
        if let Some(p) = &opts.pid_file {
            // No pid file, no process: the caller could not track it (runc
            // stops it too).
            crate::container::write_pid_file(p, pid).map_err(kill_spawned)?;
        }
        Ok(ExecProcess {
            pid,
            pidfd: spawned.pidfd,
        })
    }
}
