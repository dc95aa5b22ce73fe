//! Server mode: the long-lived shim process of one group.
//!
//! It serves the task service on the socket `start` bound and passed down,
//! publishes events to containerd's `TTRPC_ADDRESS`, and runs in its state
//! directory (never in a bundle: bundles go away while the shim serves
//! others). It exits once containerd has shut down its last task; the
//! socket is removed first, so a `start` racing the exit spawns a new
//! server instead of reaching this one.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim::Flags;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::publisher::RemotePublisher;
use sprout_runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};

use super::events::Events;
use super::service::{Service, Shim};

const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the shim server needs the listening socket from `start` (${env})")]
    NoListener { env: &'static str },
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] sprout_runtime::Error),
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] containerd_shim::protos::ttrpc::Error),
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Serves until containerd shuts the last task down.
pub async fn serve(
    flags: &Flags,
    listen_fd: Option<RawFd>,
    state: &Path,
) -> Result<(), ServeError> {
    let listen_fd = listen_fd.ok_or(ServeError::NoListener {
        env: super::actions::LISTEN_FD_ENV,
    })?;
    let state_err = |source| ServeError::State {
        path: state.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(state).map_err(state_err)?;
    std::env::set_current_dir(state).map_err(state_err)?;
    let runtime = Runtime::builder().root(state.join("runtime")).build()?;
    let publisher = match std::env::var("TTRPC_ADDRESS") {
        Ok(addr) => match RemotePublisher::new(&addr).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("events to {addr}: {e}; events are dropped");
                None
            }
        },
        Err(_) => {
            tracing::warn!("TTRPC_ADDRESS is not set: events are dropped");
            None
        }
    };
    let shim = Shim::new(
        runtime,
        &flags.namespace,
        Events::new(publisher, &flags.namespace),
        state,
    );
    let service = Service(shim.clone());
    let mut v2 = create_task(std::sync::Arc::new(service.clone()));
    let v3 = create_task(std::sync::Arc::new(service));
    if let Some(s) = v2.remove(TASK_V3) {
        v2.insert(TASK_V2.to_string(), s);
    }
    // SAFETY: `start` handed us this listening socket; nothing else in
    // this process uses the fd.
    let server = unsafe { Server::new().add_unix_listener(listen_fd)? };
    let mut server = server.register_service(v2).register_service(v3);
    server.start().await?;
    tracing::info!(socket = %flags.socket, "serving");

    // containerd (or a test harness) may signal the process group: the
    // tasks outlive that; only containerd's Shutdown ends the shim.
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    let socket_path = flags.socket.trim_start_matches("unix://").to_string();
    loop {
        tokio::select! {
            _ = shim.wait_for_exit() => {}
            _ = term.recv() => { tracing::info!("SIGTERM ignored: tasks are running"); continue; }
            _ = int.recv() => { continue; }
        }
        // Stop being found, then make sure no Create slipped in meanwhile.
        let _ = std::fs::remove_file(&socket_path);
        server.stop_listen().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if shim.is_idle() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown()).await;
    tracing::info!("shim exits");
    Ok(())
}
