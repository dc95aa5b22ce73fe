//! `checkpoint`, `restore` (runc's commands and flags), `image verify` and
//! `image profile`.

mod loader;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use sprout::snapshot::dump::{CheckpointOptions, checkpoint as dump};
use sprout::snapshot::ptrace::Tracer;
use sprout::snapshot::restore::{
    MemoryLoading, RestoreOptions, RestoreReport, restore_bundle_with_loader,
};

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
    /// Load the process's anonymous memory lazily with userfaultfd: the
    /// image's working set (if it has one) before the process runs, the
    /// rest on demand and in the background (by this process, or with
    /// --detach by a child it leaves behind until loading is done).
    #[arg(long)]
    pub lazy_pages: bool,
    /// With --lazy-pages: do not load the image's working set first.
    #[arg(long, requires = "lazy_pages")]
    pub no_working_set: bool,
    /// Record the pages the process touches first, loading lazily, until
    /// `sprout image profile ID` (or the process's exit) saves them as the
    /// image's working set.
    #[arg(long, conflicts_with = "lazy_pages")]
    pub record_working_set: bool,
    /// Container id (need not be the dumped container's: an image is a template).
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Check an image offline: manifest, page checksums, working set,
    /// host compatibility.
    Verify {
        /// The image directory.
        dir: PathBuf,
    },
    /// End the recording of a `restore --record-working-set` of container
    /// ID: save the pages it touched so far into its image's
    /// working-set.json, with working-set.img holding them (and the pages
    /// filled up front) contiguously, and load the rest.
    Profile {
        /// The container restored with --record-working-set.
        id: String,
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

fn memory_loading(a: &RestoreArgs) -> MemoryLoading {
    if a.record_working_set {
        MemoryLoading::Record
    } else if a.lazy_pages && a.no_working_set {
        MemoryLoading::Lazy { working_set: None }
    } else if a.lazy_pages {
        MemoryLoading::LazyWithImageWorkingSet
    } else {
        MemoryLoading::Eager
    }
}

fn print_timings(report: &RestoreReport) {
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

pub fn restore(g: &GlobalOpts, a: RestoreArgs) -> Result<u8> {
    refuse(a.tcp_established, "--tcp-established")?;
    hash_cache(g);
    let rt = runtime(g)?;
    // Before anything runs: a second recording of the same id, or one
    // whose socket cannot be made, is refused with nothing to undo.
    let recorder = if a.record_working_set {
        Some(loader::Recorder::bind(g, &a.id, &a.image_path)?)
    } else {
        None
    };
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
        memory: memory_loading(&a),
        ..Default::default()
    };
    // With a VPC, the sandbox joins a pooled namespace; a restore that
    // fails gives it back (the container is gone by then).
    let restored = netplug::with_vpc(g, &a.id, &a.bundle, a.vpc.as_deref(), |b| {
        Ok(restore_bundle_with_loader(
            &rt,
            &tracer,
            &a.id,
            b,
            &a.image_path,
            opts,
        )?)
    })?;
    let (container, report, loader) = (restored.container, restored.report, restored.loader);
    if a.timings {
        print_timings(&report);
    }
    let memory_line = |pid: u32| {
        let m = &report.memory;
        if m.lazy {
            eprintln!(
                "memory: lazy{}, {} of {} pages loaded before the process ran, loader pid {pid}",
                if m.recording { " (recording)" } else { "" },
                m.working_set_pages,
                m.lazy_pages
            );
        } else if let Some(errno) = m.eager_fallback {
            eprintln!(
                "memory: eager (userfaultfd refused: {})",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    };
    if a.detach {
        // The tracer's thread goes: the process that forks the loader
        // below must be this one thread (and the suspended loader).
        // The container's handle holds its state lock: not for the child.
        drop(tracer);
        drop(container);
        let pid = match loader.map(|l| loader::keep_loading_in_child(l, recorder, g.log.as_deref()))
        {
            Some(Ok(pid)) => pid,
            None => None,
            Some(Err(e)) => {
                // The loader failed before it could be handed over (a
                // corrupt chunk met in the background): it killed the
                // process; a failed restore leaves nothing behind.
                if let Ok(c) = rt.container(&a.id)
                    && let Err(d) = netplug::delete_container(g, c, true)
                {
                    tracing::warn!(container = %a.id, "deleting after the loader failed: {d}");
                }
                return Err(e);
            }
        };
        if a.timings {
            memory_line(pid.unwrap_or(0));
        }
        return Ok(0);
    }
    if a.timings {
        memory_line(std::process::id());
    }
    let serving = match (&loader, recorder) {
        (Some(l), Some(r)) => Some(r.serve_in_thread(l.remote())),
        _ => None,
    };
    let relay = match proxy {
        Some(p) => Some(p.receive()?.relay()?),
        None => None,
    };
    let _forwarder = lifecycle::signals_forwarder(container.pid());
    let code = container.wait()?.unwrap_or(0);
    drop(relay);
    let loaded = loader.map(|l| l.wait()).transpose();
    if let Some(s) = serving {
        s.finish(loaded.as_ref().ok().and_then(|r| r.as_ref()));
    }
    netplug::delete_container(g, rt.container(&a.id)?, true)?;
    if let Err(e) = loaded {
        bail!("lazy loading of the restored memory failed (the process was killed): {e}");
    }
    Ok(code.clamp(0, 255) as u8)
}

pub fn image(g: &GlobalOpts, cmd: ImageCommand) -> Result<u8> {
    match cmd {
        ImageCommand::Verify { dir } => {
            let report = sprout::snapshot::image::verify(&dir)?;
            println!("{report}");
            Ok(if report.ok() { 0 } else { 1 })
        }
        ImageCommand::Profile { id } => {
            println!("{}", loader::finish_recording(g, &id)?);
            Ok(0)
        }
    }
}
