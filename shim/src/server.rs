//! Puts a [`Daemon`] on its sockets: the HTTP API and the side channel,
//! until a shutdown future completes. Instances outlive the server: a
//! stopped (or killed) sproutd leaves them running for the next one.

use std::convert::Infallible;
use std::fs;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;

use crate::daemon::{Daemon, DaemonError};

/// How long a shutdown waits for forks and deletes in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds a unix socket (mode 0600), replacing a stale socket file but
/// refusing one a live server answers on.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| DaemonError::Io { what, source }
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("creating the directory of"))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(io("removing the stale socket"))?;
    }
    let l = bind_owner_only(path).map_err(io("binding"))?;
    l.set_nonblocking(true).map_err(io("setting up"))?;
    UnixListener::from_std(l).map_err(io("registering"))
}

/// A listening unix socket at `path` that only its owner (root) can
/// connect to. The mode is set between `bind` and `listen`: a connection
/// made before the chmod (the socket has `0777 & !umask` until then)
/// would stay open after it, while a connect before `listen` is refused.
pub fn bind_owner_only(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    let listening = fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .and_then(|()| Ok(listen(&fd, Backlog::MAXCONN)?));
    if let Err(e) = listening {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(fd.into())
}

/// Adopts the state root's instances, opens the sockets and serves until
/// `shutdown` completes; then closes and removes the sockets.
pub async fn serve(d: Arc<Daemon>, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    d.start().await?;
    let cfg = d.config().clone();
    let api = bind(&cfg.socket)?;
    let side = match &cfg.side_socket {
        Some(p) => match bind(p) {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = fs::remove_file(&cfg.socket);
                return Err(e);
            }
        },
        None => None,
    };
    tracing::info!(
        root = %cfg.root.display(),
        socket = %cfg.socket.display(),
        side_socket = ?cfg.side_socket,
        pid = std::process::id(),
        "sproutd serving"
    );
    let api_task = tokio::spawn(accept_http(d.clone(), api));
    let side_task = side.map(|l| tokio::spawn(crate::side::accept(d.clone(), l)));
    shutdown.await;
    api_task.abort();
    if let Some(t) = side_task {
        t.abort();
    }
    d.shutdown_pool().await;
    d.drain(DRAIN_TIMEOUT).await;
    d.stop_refill();
    d.shutdown_engine().await;
    let _ = fs::remove_file(&cfg.socket);
    if let Some(p) = &cfg.side_socket {
        let _ = fs::remove_file(p);
    }
    tracing::info!("sproutd stopped; instances keep running");
    Ok(())
}

async fn accept_http(d: Arc<Daemon>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = d.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(crate::http::handle(d, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("API connection: {e}");
            }
        });
    }
}
