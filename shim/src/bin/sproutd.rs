//! `sproutd`: sprout's node daemon. See `shim/API.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use sprout_shim::client::{DEFAULT_SIDE_SOCKET, DEFAULT_SOCKET};
use sprout_shim::daemon::{Config, Daemon};
use sprout_shim::engine::Engine;
use sprout_shim::fake::FakeEngine;
use sprout_shim::sfork::SforkEngine;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// sproutd: sprout's node daemon (functions, templates, instances).
#[derive(Debug, Parser)]
#[command(name = "sproutd", version)]
struct Args {
    /// State directory: function registry, instance state, lock. Its
    /// `runtime/` is also the netplug root whose VPCs functions may name
    /// (`sprout --root ROOT/runtime vpc create ...`).
    #[arg(long, default_value = "/var/lib/sproutd", env = "SPROUTD_ROOT")]
    root: PathBuf,
    /// Unix socket of the HTTP/JSON API.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "SPROUTD_SOCKET")]
    socket: PathBuf,
    /// Unix socket of the side channel (forks that pass fds).
    #[arg(long, default_value = DEFAULT_SIDE_SOCKET, env = "SPROUTD_SIDE_SOCKET")]
    side_socket: PathBuf,
    /// Do not open the side channel.
    #[arg(long)]
    no_side_socket: bool,
    /// The sprout-init helper (default: $SPROUT_INIT, else next to sproutd).
    #[arg(long)]
    init_binary: Option<PathBuf>,
    /// The warm pool's node memory budget (`512M`, `4G`; default a quarter
    /// of the machine's memory).
    #[arg(long, value_parser = sprout_shim::proto::parse_size)]
    memory_budget: Option<u64>,
    /// The cgroup pool instances are forked under, one each
    /// (`<it>/<function>/<id>`); relative to sproutd's own cgroup unless
    /// absolute.
    #[arg(long, default_value = Config::DEFAULT_POOL_CGROUP)]
    pool_cgroup: PathBuf,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Debug logging (or set RUST_LOG).
    #[arg(long)]
    debug: bool,
    /// Tests only: "fork" instances by cold-starting the function's bundle
    /// as a plain container (no template, no image).
    #[arg(long, hide = true)]
    fake_engine: bool,
}

fn init_logging(a: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if a.debug { "debug" } else { "info" })
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match a.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot handle SIGTERM/SIGINT; stop sproutd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn run(a: Args) -> Result<()> {
    let cfg = Config {
        root: a.root.clone(),
        socket: a.socket.clone(),
        side_socket: (!a.no_side_socket).then(|| a.side_socket.clone()),
        init_binary: a.init_binary.clone(),
        memory_budget: a.memory_budget,
        pool_cgroup: a.pool_cgroup.clone(),
    };
    let fake = a.fake_engine;
    let daemon = Daemon::open(cfg, |ctx| {
        Ok(if fake {
            tracing::warn!(
                "--fake-engine: instances are cold-started from their bundles; no template engine (tests only)"
            );
            Arc::new(FakeEngine::new(ctx)?) as Arc<dyn Engine>
        } else {
            Arc::new(SforkEngine::new(ctx)?) as Arc<dyn Engine>
        })
    })
    .context("starting sproutd")?;
    sprout_shim::server::serve(daemon, shutdown_signal()).await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sproutd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sproutd: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(args));
    // Execs still waiting on their processes are not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", sprout_runtime::error::one_line(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
