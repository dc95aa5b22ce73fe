//! `containerd-shim-sprout-v2`: containerd's runtime shim v2 for sprout
//! (`io.containerd.sprout.v2`). See `sprout_shim::containerd`.
//!
//! containerd runs it as `… -namespace NS -address A -id ID start` (print
//! the shim's socket address), `… -bundle B delete` (clean up, print a
//! `DeleteResponse`), and `start` runs it as the server (`-socket S`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use containerd_shim::protos::protobuf::Message;
use sprout_shim::containerd::{actions, server, service};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            // containerd logs a failed action's stderr.
            let msg = sprout_runtime::error::one_line(e.as_ref());
            eprintln!("containerd-shim-sprout-v2: {msg}");
            tracing::error!("{msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<()> {
    let flags = containerd_shim::parse(args).context("parsing the command line")?;
    if flags.version {
        println!("containerd-shim-sprout-v2: {}", service::version());
        return Ok(());
    }
    match flags.action.as_str() {
        "start" => {
            let address = actions::start(&flags)?;
            // The only output of `start`: containerd dials what it reads.
            print!("{address}");
            std::io::stdout().flush()?;
            Ok(())
        }
        "delete" => {
            let resp = actions::delete(&flags)?;
            std::io::stdout().write_all(&resp.write_to_bytes()?)?;
            std::io::stdout().flush()?;
            Ok(())
        }
        "" if !flags.socket.is_empty() => serve(&flags),
        other => anyhow::bail!(
            "unknown action {other:?}: containerd runs this binary with `start` or `delete`"
        ),
    }
}

fn serve(flags: &containerd_shim::Flags) -> Result<()> {
    let state = std::env::var_os(actions::STATE_ENV)
        .map(PathBuf::from)
        .context("the shim server is started by `start`, which sets SPROUT_SHIM_STATE")?;
    let listen_fd = std::env::var(actions::LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    // SAFETY: the variables are read once, above, before any thread
    // exists; the tasks must not inherit them.
    unsafe {
        std::env::remove_var(actions::LISTEN_FD_ENV);
        std::env::remove_var(actions::STATE_ENV);
    }
    let log = init_logging(&state, flags.debug)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(server::serve(flags, listen_fd, &state));
    // Copies of output nobody reads any more must not hold up the exit.
    rt.shutdown_background();
    served?;
    // A clean exit leaves no log behind (one shim per pod would pile
    // them up); a crashed shim's log stays for the post-mortem.
    let _ = std::fs::remove_file(log);
    Ok(())
}

/// Logs go to a file per shim process in the state directory (never to
/// a bundle's `log` fifo: the bundle goes away while the shim serves
/// others). `RUST_LOG` filters; `-debug` (containerd at debug) raises it.
fn init_logging(state: &std::path::Path, debug: bool) -> Result<PathBuf> {
    let dir = state.join("logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("shim-{}.log", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(path)
}
