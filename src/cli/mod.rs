//! Command-line definition and dispatch. Each command is a thin call into
//! the library; the flags and their spelling follow runc so that tools
//! that drive runc can drive sprout.

mod events;
mod exec;
mod function;
mod lifecycle;
pub mod logging;
mod netplug;
mod pool;
mod signals;
mod snapshot;
mod spec_cmd;
mod tty;
mod update;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use sprout::runtime::Runtime;

#[derive(Debug, Parser)]
#[command(
    name = "sprout",
    about = "sprout: an OCI container runtime (runc-compatible CLI)",
    version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: ", "1.2.0"),
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Root directory for container state.
    #[arg(
        long,
        global = true,
        default_value = "/run/sprout",
        env = "SPROUT_ROOT"
    )]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    pub log_format: logging::LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd to manage cgroups (not supported by sprout).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility with runc; sprout has its own checkpointing.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<String>,
    /// Accepted for compatibility with runc ("auto", "false"); rootless mode is not supported.
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long = "version", global = false)]
    pub version: bool,
    /// sproutd's API socket (for `function`, `pool` and `run --function`).
    #[arg(
        long,
        global = true,
        env = "SPROUTD_SOCKET",
        default_value = sprout_shim::client::DEFAULT_SOCKET
    )]
    pub sproutd_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container; its process waits for `start`.
    Create(lifecycle::CreateArgs),
    /// Start a created container.
    Start(IdArg),
    /// Create and start a container (foreground unless --detach).
    Run(lifecycle::RunArgs),
    /// Print the OCI state of a container.
    State(IdArg),
    /// Send a signal to a container's process (default SIGTERM).
    Kill(lifecycle::KillArgs),
    /// Delete a container and everything it holds.
    Delete(lifecycle::DeleteArgs),
    /// List containers.
    #[command(alias = "ls")]
    List(lifecycle::ListArgs),
    /// Show the processes of a container.
    Ps(lifecycle::PsArgs),
    /// Run a new process inside a container.
    Exec(exec::ExecArgs),
    /// Freeze every process of a container.
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Change the resource limits of a running container.
    Update(update::UpdateArgs),
    /// Print container events: resource stats and OOM notifications.
    Events(events::EventsArgs),
    /// Checkpoint a running container's process into an image.
    Checkpoint(snapshot::CheckpointArgs),
    /// Restore an image into a new container.
    Restore(snapshot::RestoreArgs),
    /// Images: `sprout image verify DIR`.
    #[command(subcommand)]
    Image(snapshot::ImageCommand),
    /// Write a default config.json.
    Spec(spec_cmd::SpecArgs),
    /// Print what this runtime supports, as JSON.
    Features,
    /// Functions registered with sproutd: add, list, remove.
    #[command(subcommand)]
    Function(function::FunctionCommand),
    /// sproutd's warm pools: status, prewarm, drain, policy, budget, claim,
    /// release, acquire, return, metrics.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// VPCs for pre-plugged network namespaces: create, delete, list.
    #[command(subcommand)]
    Vpc(netplug::VpcCommand),
    /// netplug's namespace pools: status, gc, fill, serve, forwarding.
    #[command(subcommand)]
    Netplug(netplug::NetplugCommand),
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// Container id.
    pub id: String,
}

pub fn runtime(g: &GlobalOpts) -> Result<Runtime> {
    Ok(Runtime::builder().root(&g.root).build()?)
}

/// Runs a command; the `u8` is the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    if cli.global.version {
        println!("sprout version {}\nspec: 1.2.0", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    if cli.global.systemd_cgroup {
        anyhow::bail!(
            "--systemd-cgroup: the systemd cgroup driver is not supported; use cgroupfs paths"
        );
    }
    if cli.global.rootless.as_deref() == Some("true") {
        anyhow::bail!("--rootless=true: rootless mode is not supported");
    }
    let g = &cli.global;
    let Some(command) = cli.command else {
        anyhow::bail!("no command given; see `sprout --help`");
    };
    match command {
        Command::Create(a) => lifecycle::create(g, a),
        Command::Start(a) => lifecycle::start(g, &a.id),
        Command::Run(a) if a.function.is_some() => function::run(g, a),
        Command::Run(a) => lifecycle::run(g, a),
        Command::State(a) => lifecycle::state(g, &a.id),
        Command::Kill(a) => lifecycle::kill(g, a),
        Command::Delete(a) => lifecycle::delete(g, a),
        Command::List(a) => lifecycle::list(g, a),
        Command::Ps(a) => lifecycle::ps(g, a),
        Command::Exec(a) => exec::exec(g, a),
        Command::Pause(a) => lifecycle::pause(g, &a.id),
        Command::Resume(a) => lifecycle::resume(g, &a.id),
        Command::Update(a) => update::update(g, a),
        Command::Events(a) => events::events(g, a),
        Command::Checkpoint(a) => snapshot::checkpoint(g, a),
        Command::Restore(a) => snapshot::restore(g, a),
        Command::Image(c) => snapshot::image(g, c),
        Command::Spec(a) => spec_cmd::spec(a),
        Command::Features => spec_cmd::features(),
        Command::Function(c) => function::function(g, c),
        Command::Pool(c) => pool::pool(g, c),
        Command::Vpc(c) => netplug::vpc(g, c),
        Command::Netplug(c) => netplug::netplug(g, c),
    }
}
