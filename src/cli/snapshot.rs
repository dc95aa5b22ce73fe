//! `checkpoint`, `restore` (runc's commands and flags) and `image verify`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use sprout::snapshot::dump::{CheckpointOptions, checkpoint as dump};
use sprout::snapshot::ptrace::Tracer;
use sprout::snapshot::restore::{RestoreOptions, restore_bundle};

use super::{GlobalOpts, lifecycle, netplug, runtime, tty};

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Directory to write the image to (must not exist, or be empty).
    #[arg(long)]
    pub image_path: PathBuf,
    /// Accepted for runc compatibility (sprout needs no work directory).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Keep the container running after the checkpoint.
    #[arg(long)]
    pub leave_running: bool,
    /// runc/CRIU: dump established TCP connections (not supported).
    #[arg(long)]
    pub tcp_established: bool,
    /// runc/CRIU: allow external unix sockets (not supported).
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// runc/CRIU: allow a shell job (accepted; a terminal is stdio).
    #[arg(long)]
    pub shell_job: bool,
    /// runc/CRIU: file locks (not supported).
    #[arg(long)]
    pub file_locks: bool,
    /// Container id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The image directory.
    #[arg(long)]
    pub image_path: PathBuf,
    /// Bundle whose config.json describes the new sandbox.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Return once restored instead of waiting for the process to exit.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// File to write the restored process's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master (terminal: true).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Do not create a session keyring for the container.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility (sprout always pivots).
    #[arg(long)]
    pub no_pivot: bool,
    /// runc/CRIU: restore established TCP connections (not supported).
    #[arg(long)]
    pub tcp_established: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub shell_job: bool,
    /// Print the restore's stage timings on stderr.
    #[arg(long)]
    pub timings: bool,
    /// Join a pre-plugged network namespace of this VPC (as the
    /// io.sprout.vpc annotation does).
    #[arg(long)]
    pub vpc: Option<String>,
    /// Container id (need not be the dumped container's: an image is a template).
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Check an image offline: manifest, page checksums, host compatibility.
    Verify {
        /// The image directory.
        dir: PathBuf,
    },
}

fn refuse(flag: bool, name: &str) -> Result<()> {
    if flag {
        bail!(
            "{name}: not supported by sprout's checkpoint/restore (established connections, external sockets and file locks are refused)"
        );
    }
    Ok(())
}

/// File hashes are remembered under the state root across CLI calls.
fn hash_cache(g: &GlobalOpts) {
    sprout::snapshot::image::set_hash_cache_dir(g.root.join("file-hashes"));
}

pub fn checkpoint(g: &GlobalOpts, a: CheckpointArgs) -> Result<u8> {
    refuse(a.tcp_established, "--tcp-established")?;
    hash_cache(g);
    refuse(a.ext_unix_sk, "--ext-unix-sk")?;
    refuse(a.file_locks, "--file-locks")?;
    let rt = runtime(g)?;
    let container = rt.container(&a.id)?;
    let tracer = Tracer::spawn("sprout-tracer")?;
    let report = dump(
        &tracer,
        &container,
        &a.image_path,
        &CheckpointOptions {
            leave_running: a.leave_running,
        },
    )?;
    tracing::debug!(
        container = %a.id,
        "checkpoint: {} threads, {} vmas, {} bytes of pages, {} fds; {:?}",
        report.threads,
        report.vmas,
        report.pages_bytes,
        report.fds,
        report.stages
    );
    Ok(0)
}

pub fn restore(g: &GlobalOpts, a: RestoreArgs) -> Result<u8> {
    refuse(a.tcp_established, "--tcp-established")?;
    hash_cache(g);
    let rt = runtime(g)?;
    let tracer = Tracer::spawn("sprout-tracer")?;
    let proxy = if !a.detach && a.console_socket.is_none() && tty::bundle_wants_terminal(&a.bundle)
    {
        Some(tty::ConsoleReceiver::new()?)
    } else {
        None
    };
    let opts = RestoreOptions {
        console_socket: a
            .console_socket
            .clone()
            .or_else(|| proxy.as_ref().map(|p| p.path().to_path_buf())),
        pid_file: a.pid_file.clone(),
        no_new_keyring: a.no_new_keyring,
        ..Default::default()
    };
    // With a VPC, the sandbox joins a pooled namespace; a restore that
    // fails gives it back (the container is gone by then).
    let (container, report) = netplug::with_vpc(g, &a.id, &a.bundle, a.vpc.as_deref(), |b| {
        Ok(restore_bundle(&rt, &tracer, &a.id, b, &a.image_path, opts)?)
    })?;
    if a.timings {
        let parts: Vec<String> = report
            .stages
            .iter()
            .map(|(n, d)| format!("{n} {}µs", d.as_micros()))
            .collect();
        eprintln!(
            "restore: {} (total {}µs)",
            parts.join(", "),
            report.total().as_micros()
        );
    }
    if a.detach {
        return Ok(0);
    }
    let relay = match proxy {
        Some(p) => Some(p.receive()?.relay()?),
        None => None,
    };
    let _forwarder = lifecycle::signals_forwarder(container.pid());
    let code = container.wait()?.unwrap_or(0);
    drop(relay);
    netplug::delete_container(g, rt.container(&a.id)?, true)?;
    Ok(code.clamp(0, 255) as u8)
}

pub fn image(cmd: ImageCommand) -> Result<u8> {
    match cmd {
        ImageCommand::Verify { dir } => {
            let report = sprout::snapshot::image::verify(&dir)?;
            println!("{report}");
            Ok(if report.ok() { 0 } else { 1 })
        }
    }
}
