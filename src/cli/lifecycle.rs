//! create, start, run, state, kill, delete, list, ps, pause, resume.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use sprout::runtime::CreateOptions;

use super::{GlobalOpts, runtime, signals, tty};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master (terminal: true).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// File to write the container's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Use chroot instead of pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a session keyring for the container.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many extra fds (3, 4, ...) into the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Join a pre-plugged network namespace of this VPC (as the
    /// io.sprout.vpc annotation does).
    #[arg(long)]
    pub vpc: Option<String>,
    /// Container id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once started instead of waiting for the container to exit.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Do not delete the container after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Fork an instance of this function from sproutd's template instead
    /// (the bundle defaults to the function's).
    #[arg(long)]
    pub function: Option<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Container id.
    pub id: String,
    /// Signal name or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Container id.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print ids only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Container id.
    pub id: String,
    /// Arguments for ps(1) (table format), default -ef.
    #[arg(last = true)]
    pub ps_args: Vec<String>,
}

fn create_options(a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        console_socket: a.console_socket.clone(),
        pid_file: a.pid_file.clone(),
        preserve_fds: a.preserve_fds,
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        ..Default::default()
    }
}

pub fn create(g: &GlobalOpts, a: CreateArgs) -> Result<u8> {
    let rt = runtime(g)?;
    let opts = create_options(&a);
    super::netplug::create_container(g, &rt, &a.id, &a.bundle, a.vpc.as_deref(), opts)?;
    Ok(0)
}

pub fn start(g: &GlobalOpts, id: &str) -> Result<u8> {
    let rt = runtime(g)?;
    rt.container(id)?.start()?;
    Ok(0)
}

pub fn run(g: &GlobalOpts, a: RunArgs) -> Result<u8> {
    let rt = runtime(g)?;
    let mut opts = create_options(&a.create);
    // A terminal in the foreground without a console socket: sprout itself
    // receives the pty and relays it to its own stdio.
    let proxy = if !a.detach
        && opts.console_socket.is_none()
        && tty::bundle_wants_terminal(&a.create.bundle)
    {
        let p = tty::ConsoleReceiver::new()?;
        opts.console_socket = Some(p.path().to_path_buf());
        Some(p)
    } else {
        None
    };
    let mut container = super::netplug::create_container(
        g,
        &rt,
        &a.create.id,
        &a.create.bundle,
        a.create.vpc.as_deref(),
        opts,
    )?;
    let relay = match proxy {
        Some(p) => Some(p.receive()?.relay()?),
        None => None,
    };
    if let Err(e) = container.start() {
        let _ = super::netplug::delete_container(g, container.clone(), true);
        return Err(e.into());
    }
    if a.detach {
        return Ok(0);
    }
    let forwarder = signals_forwarder(container.pid());
    let waited = std::time::Instant::now();
    let code = container.wait()?.unwrap_or(0);
    tracing::debug!(container = %a.create.id, "ran for {}µs", waited.elapsed().as_micros());
    drop(forwarder);
    drop(relay);
    if !a.keep {
        super::netplug::delete_container(g, rt.container(&a.create.id)?, true)?;
    }
    Ok(code.clamp(0, 255) as u8)
}

/// Forwards the usual terminal and job-control signals to the container's
/// init while `run` waits for it, as runc does.
pub fn signals_forwarder(pid: Option<i32>) -> Option<std::thread::JoinHandle<()>> {
    let pid = nix::unistd::Pid::from_raw(pid?);
    forward_signals_with(move |sig| nix::sys::signal::kill(pid, sig).is_ok())
}

/// Blocks the usual terminal and job-control signals in this thread (and
/// the threads it starts later) and hands each to `deliver` on a thread of
/// its own, until `deliver` returns false.
pub fn forward_signals_with(
    mut deliver: impl FnMut(nix::sys::signal::Signal) -> bool + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set.thread_block().ok()?;
    Some(std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if !deliver(sig) {
                break;
            }
        }
    }))
}

pub fn state(g: &GlobalOpts, id: &str) -> Result<u8> {
    let rt = runtime(g)?;
    let s = rt.container(id)?.oci_state();
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(0)
}

pub fn kill(g: &GlobalOpts, a: KillArgs) -> Result<u8> {
    let sig =
        signals::parse(&a.signal).with_context(|| format!("unknown signal {:?}", a.signal))?;
    let rt = runtime(g)?;
    rt.container(&a.id)?.kill(sig, a.all)?;
    Ok(0)
}

pub fn delete(g: &GlobalOpts, a: DeleteArgs) -> Result<u8> {
    let rt = runtime(g)?;
    match rt.container(&a.id) {
        Ok(c) => super::netplug::delete_container(g, c, a.force)?,
        // runc: deleting a missing container with --force is not an error.
        Err(sprout::runtime::Error::State(sprout::runtime::state::StateError::NotFound(_)))
            if a.force => {}
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}

pub fn list(g: &GlobalOpts, a: ListArgs) -> Result<u8> {
    let rt = runtime(g)?;
    let states: Vec<_> = rt.list()?.iter().map(|c| c.oci_state()).collect();
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(0);
    }
    match a.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&states)?)?,
        Format::Table => {
            writeln!(
                out,
                "{:<20} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in &states {
                writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<40} {:<32} {}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                )?;
            }
        }
    }
    Ok(0)
}

pub fn ps(g: &GlobalOpts, a: PsArgs) -> Result<u8> {
    let rt = runtime(g)?;
    let pids = rt.container(&a.id)?.processes()?;
    if a.format == Format::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let args = if a.ps_args.is_empty() {
        vec!["-ef".to_string()]
    } else {
        a.ps_args
    };
    let out = Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    println!("{header}");
    for line in lines {
        if let Some(pid) = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
            && pids.contains(&pid)
        {
            println!("{line}");
        }
    }
    Ok(0)
}

pub fn pause(g: &GlobalOpts, id: &str) -> Result<u8> {
    runtime(g)?.container(id)?.pause()?;
    Ok(0)
}

pub fn resume(g: &GlobalOpts, id: &str) -> Result<u8> {
    runtime(g)?.container(id)?.resume()?;
    Ok(0)
}
