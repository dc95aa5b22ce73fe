//! The binary actions containerd runs: `start` and `delete`.
//!
//! `start` runs with the bundle as its working directory. It picks the
//! group's socket (a hash of containerd's address, the namespace, the group
//! and [`SHIM_PROTOCOL`]), binds it, and re-executes itself as the server
//! with the listening socket inherited, so the address it prints already
//! answers. If the socket is taken by a live server, that server is reused.
//! containerd reads all of `start`'s stdout and stderr as the address:
//! nothing else may be printed, and the server must not inherit them.
//!
//! `delete` runs after every task delete and after a shim died: it kills
//! and removes what is left of the container in the runtime's state (or
//! has sproutd remove a template container's instance, named by the link
//! the shim left in the bundle), unmounts the rootfs, and prints a
//! `DeleteResponse`. Finding nothing is fine.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use containerd_shim::Flags;
use containerd_shim::protos::shim::shim::DeleteResponse;

use super::events::timestamp;
use super::{GROUP_ANNOTATIONS, SHIM_PROTOCOL, mounts, state_root, template};

/// Environment of the server process: the inherited listening socket.
pub const LISTEN_FD_ENV: &str = "SPROUT_SHIM_LISTEN_FD";
/// Environment of the server process: its state directory.
pub const STATE_ENV: &str = "SPROUT_SHIM_STATE";

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("bundle config {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("socket {0} is taken and does not answer")]
    SocketBusy(String),
    #[error(transparent)]
    Runtime(#[from] sprout_runtime::Error),
    #[error("removing the template instance: {0}")]
    Sproutd(#[source] super::error::ShimError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ActionError {
    let what = what.into();
    move |source| ActionError::Io { what, source }
}

/// The group a container's shim serves, from its spec's annotations.
pub fn group_of(bundle: &Path, id: &str) -> Result<String, ActionError> {
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|e| ActionError::Bundle {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| ActionError::Bundle {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let annotations = &spec["annotations"];
    Ok(GROUP_ANNOTATIONS
        .iter()
        .find_map(|k| annotations[*k].as_str().filter(|v| !v.is_empty()))
        .unwrap_or(id)
        .to_string())
}

/// The socket address of a group's shim.
pub fn socket_address(flags: &Flags, group: &str) -> String {
    containerd_shim::socket_address(
        &flags.address,
        &flags.namespace,
        &format!("{group}@sprout-shim-{SHIM_PROTOCOL}"),
    )
}

/// `start`: returns the address to print.
pub fn start(flags: &Flags) -> Result<String, ActionError> {
    let bundle = std::env::current_dir().map_err(io_err("the bundle directory"))?;
    let group = group_of(&bundle, &flags.id)?;
    let address = socket_address(flags, &group);
    let path = PathBuf::from(address.trim_start_matches("unix://"));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let state = state_root(&bundle, &flags.namespace);
    for attempt in 0..5 {
        match crate::server::bind_owner_only(&path) {
            Ok(listener) => {
                spawn_server(flags, &address, &state, listener.into())?;
                break;
            }
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                if UnixStream::connect(&path).is_ok() {
                    break;
                }
                // Bound a moment ago by a concurrent start that has not
                // listened yet, or left by a dead server: look again
                // before taking it over.
                std::thread::sleep(Duration::from_millis(100));
                if UnixStream::connect(&path).is_ok() {
                    break;
                }
                if attempt == 4 {
                    return Err(ActionError::SocketBusy(address));
                }
                let _ = fs::remove_file(&path);
            }
            Err(e) => return Err(io_err(format!("binding {}", path.display()))(e)),
        }
    }
    // containerd reads it when it reconnects after a restart.
    fs::write(bundle.join("address"), &address).map_err(io_err("writing the address file"))?;
    Ok(address)
}

/// The socket of a server that died (killed, crashed) stays behind in
/// containerd's socket directory; the task's `delete` removes it unless a
/// server of the group still answers there.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = Path::new(address.trim().trim_start_matches("unix://"));
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = fs::remove_file(path);
    }
}

/// Starts the server: this binary again, in its own process group, with
/// the listening socket, no stdio, in the state directory.
fn spawn_server(
    flags: &Flags,
    address: &str,
    state: &Path,
    listener: OwnedFd,
) -> Result<(), ActionError> {
    fs::create_dir_all(state).map_err(io_err(format!("creating {}", state.display())))?;
    // SAFETY: F_SETFD on an fd we own; `start` is single-threaded, so
    // no other fork can see the fd without close-on-exec.
    if unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
        return Err(io_err("passing the socket to the server")(
            io::Error::last_os_error(),
        ));
    }
    let exe = std::env::current_exe().map_err(io_err("locating the shim binary"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address])
        .args(["-publish-binary", &flags.publish_binary])
        .args(["-socket", address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.env(LISTEN_FD_ENV, listener.as_raw_fd().to_string())
        .env(STATE_ENV, state)
        .current_dir(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io_err("starting the shim server"))?;
    Ok(())
}

/// `delete`: what containerd prints as the task's end when the shim could
/// not report it.
pub fn delete(flags: &Flags) -> Result<DeleteResponse, ActionError> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io_err("the bundle directory"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let state = state_root(&bundle, &flags.namespace);
    let mut pid = 0;
    let runtime_root = state.join("runtime");
    // Every step runs whatever failed before it (the rootfs must not stay
    // mounted because sproutd was unreachable); the first error is the
    // answer.
    let mut container = || -> Result<(), ActionError> {
        if runtime_root.join(&flags.id).exists() {
            // The init helper is not needed to remove a container.
            let exe = std::env::current_exe().map_err(io_err("locating the shim binary"))?;
            let rt = sprout_runtime::Runtime::builder()
                .root(&runtime_root)
                .init_binary(exe)
                .build()?;
            if let Ok(c) = rt.container(&flags.id) {
                pid = c.saved().init.map_or(0, |p| p.pid);
                let _ = c.kill(libc::SIGKILL, true);
                c.delete(true)?;
            }
        }
        Ok(())
    };
    let removed = container();
    // A template container's instance lives in sproutd, not here.
    let instance = template::delete_instance(&bundle, &flags.namespace, &flags.id)
        .map(|_| ())
        .map_err(ActionError::Sproutd);
    mounts::unmount_rootfs(&bundle.join("rootfs"));
    remove_dead_socket(&bundle);
    removed.and(instance)?;
    Ok(DeleteResponse {
        pid: pid.max(0) as u32,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    })
}
