//! `sprout function add|list|remove` and `sprout run --function`: clients
//! of sproutd. They find its API socket through `--sproutd-socket` (or
//! `SPROUTD_SOCKET`, default `/run/sproutd/sproutd.sock`); `run --function`
//! asks sproutd for its side channel and passes its own stdio (or a
//! console socket) over it, so the instance writes straight to this
//! terminal or file, and in the foreground waits there for the exit.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sprout_shim::client::{Client, ClientError};
use sprout_shim::proto::{ExitView, FdRole, KillBody, SideMessage, SideRequest, SignalArg};
use sprout_shim::registry::FunctionSpec;

use super::lifecycle::{Format, RunArgs};
use super::{GlobalOpts, tty};

#[derive(Debug, Subcommand)]
pub enum FunctionCommand {
    /// Register a function with sproutd: its image, bundle and limits.
    Add(AddArgs),
    /// List the functions sproutd knows.
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print names only.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Remove a function (it must have no instances left).
    #[command(alias = "rm")]
    Remove {
        /// Function name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Function name (letters, digits, '_', '-', '.').
    pub name: String,
    /// The function's memory image (from `sprout checkpoint`).
    #[arg(long)]
    pub image: PathBuf,
    /// The bundle the image was taken in.
    #[arg(short = 'b', long)]
    pub bundle: PathBuf,
    /// Requests one instance serves at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// VPC whose pooled network namespaces instances join (a VPC of
    /// netplug root `<sproutd root>/runtime`).
    #[arg(long)]
    pub vpc: Option<String>,
    /// Signal sent to every instance once it runs, so the function can
    /// re-seed what it cached at init (name or number, e.g. USR2).
    #[arg(long)]
    pub after_fork_signal: Option<String>,
    /// Limits per instance: a JSON file of OCI `linux.resources`.
    #[arg(long)]
    pub resources: Option<PathBuf>,
    /// Who may start it through containerd: a containerd namespace
    /// (`k8s.io`) or a Kubernetes namespace within it (`k8s.io/team-a`);
    /// repeat for more. Without it, any caller.
    #[arg(long = "caller")]
    pub callers: Vec<String>,
}

fn client(g: &GlobalOpts) -> Client {
    Client::new(&g.sproutd_socket)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

pub fn function(g: &GlobalOpts, c: FunctionCommand) -> Result<u8> {
    let client = client(g);
    match c {
        FunctionCommand::Add(a) => {
            let resources = match &a.resources {
                Some(p) => Some(
                    serde_json::from_slice(
                        &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                    )
                    .with_context(|| format!("{}: not OCI linux.resources", p.display()))?,
                ),
                None => None,
            };
            let spec = FunctionSpec {
                name: a.name,
                image: absolute(&a.image)?,
                bundle: absolute(&a.bundle)?,
                vpc: a.vpc,
                after_fork_signal: a.after_fork_signal.map(|s| match s.parse::<i32>() {
                    Ok(n) => SignalArg::Number(n),
                    Err(_) => SignalArg::Name(s),
                }),
                resources,
                concurrency: a.concurrency,
                callers: (!a.callers.is_empty()).then_some(a.callers),
            };
            client.add_function(&spec)?;
        }
        FunctionCommand::List { format, quiet } => {
            let fs = client.functions()?;
            let mut out = std::io::stdout().lock();
            if quiet {
                for f in &fs {
                    writeln!(out, "{}", f.function.name)?;
                }
            } else if format == Format::Json {
                writeln!(out, "{}", serde_json::to_string(&fs)?)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<11} {:<10} {:<9} {:<12} {:<40} BUNDLE",
                    "NAME", "CONCURRENCY", "TEMPLATE", "INSTANCES", "VPC", "IMAGE"
                )?;
                for f in &fs {
                    let t = f
                        .template
                        .as_ref()
                        .map_or("-".to_string(), |t| format!("pid {}", t.pid));
                    writeln!(
                        out,
                        "{:<24} {:<11} {:<10} {:<9} {:<12} {:<40} {}",
                        f.function.name,
                        f.function.concurrency,
                        t,
                        f.instances.len(),
                        f.function.vpc.as_deref().unwrap_or("-"),
                        f.function.image.display(),
                        f.function.bundle.display()
                    )?;
                }
            }
        }
        FunctionCommand::Remove { name } => client.remove_function(&name)?,
    }
    Ok(0)
}

/// `sprout run --function NAME [-b BUNDLE] [--vpc VPC] [-d] ID`: an
/// instance forked by sproutd with this process's stdio (in a namespace
/// of `VPC`'s pool instead of the function's VPC, with `--vpc`). In the foreground the exit code is
/// the instance's (128+signal for a signal) and the instance is deleted
/// afterwards unless `--keep`.
pub fn run(g: &GlobalOpts, a: RunArgs) -> Result<u8> {
    let name = a
        .function
        .clone()
        .context("run --function without a name")?;
    let c = &a.create;
    if c.preserve_fds > 0 {
        bail!("--preserve-fds is not supported with --function");
    }
    if c.no_pivot {
        bail!("--no-pivot is not supported with --function");
    }
    let client = client(g);
    let side = client
        .info()?
        .side_socket
        .context("sproutd runs without a side channel (--no-side-socket)")?;
    // runc's default bundle "." stands for "the function's own".
    let bundle = if c.bundle == Path::new(".") {
        None
    } else {
        Some(absolute(&c.bundle)?)
    };
    let bundle_dir = match &bundle {
        Some(b) => b.clone(),
        None => client.function(&name)?.function.bundle,
    };
    let terminal = tty::bundle_wants_terminal(&bundle_dir);

    let mut roles = Vec::new();
    let mut owned: Vec<OwnedFd> = Vec::new();
    let mut receiver = None;
    if terminal {
        let sock = match &c.console_socket {
            Some(p) => {
                UnixStream::connect(p).with_context(|| format!("console socket {}", p.display()))?
            }
            None if a.detach => bail!("a terminal bundle run with -d needs --console-socket"),
            None => {
                let r = tty::ConsoleReceiver::new()?;
                let s = UnixStream::connect(r.path()).context("console socket")?;
                receiver = Some(r);
                s
            }
        };
        roles.push(FdRole::Console);
        owned.push(sock.into());
    }
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let stdio: [BorrowedFd<'_>; 3] = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    let mut fds: Vec<BorrowedFd<'_>> = owned.iter().map(|f| f.as_fd()).collect();
    if !terminal {
        roles.extend([FdRole::Stdin, FdRole::Stdout, FdRole::Stderr]);
        fds.extend(stdio);
    }
    let req = SideRequest {
        op: "fork".into(),
        function: name,
        id: c.id.clone(),
        bundle,
        fds: roles,
        vpc: c.vpc.clone(),
        wait: !a.detach,
        ..Default::default()
    };
    let (forked, conn) = sprout_shim::client::side_fork(&side, &req, &fds)?;
    drop(owned);
    if let Some(p) = &c.pid_file {
        std::fs::write(p, forked.pid.to_string())
            .with_context(|| format!("pid file {}", p.display()))?;
    }
    if a.detach {
        return Ok(0);
    }
    let relay = match receiver {
        Some(r) => Some(r.receive()?.relay()?),
        None => None,
    };
    let forwarder = forward_signals(client.clone(), forked.id.clone());
    let exit = match conn.wait() {
        Ok(SideMessage::Exited { exit, .. }) => exit,
        Ok(other) => bail!("unexpected message from sproutd: {other:?}"),
        // sproutd went away (a restart): the instance lives on, and the
        // next sproutd adopts it and knows when it exits.
        Err(e) => {
            tracing::warn!(container = %forked.id, "lost sproutd's side channel ({e}); following the instance through the API");
            wait_through_api(&client, &forked.id)?
        }
    };
    drop(forwarder);
    drop(relay);
    let code = exit.exit_code.unwrap_or_else(|| {
        tracing::warn!(container = %forked.id, "the instance's exit status is unknown");
        255
    });
    if !a.keep {
        client.delete(&forked.id, true)?;
    }
    Ok(code.clamp(0, 255) as u8)
}

/// Polls the instance until it has exited, riding out sproutd restarts.
fn wait_through_api(client: &Client, id: &str) -> Result<ExitView> {
    loop {
        match client.instance(id) {
            Ok(v) => {
                if let Some(exit) = v.exit {
                    return Ok(exit);
                }
            }
            Err(e @ ClientError::Api { .. }) => {
                return Err(e).with_context(|| format!("following instance {id:?}"));
            }
            // Not reachable (yet): sproutd is restarting.
            Err(_) => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Forwards the usual terminal and job-control signals to the instance
/// through sproutd while `run` waits, as `sprout run` does for its own.
fn forward_signals(client: Client, id: String) -> Option<std::thread::JoinHandle<()>> {
    super::lifecycle::forward_signals_with(move |sig| {
        let body = KillBody {
            signal: SignalArg::Number(sig as i32),
            all: false,
        };
        // sproutd may be restarting: the signal is lost, not the run.
        if let Err(e) = client.kill(&id, &body) {
            tracing::warn!(container = %id, "forwarding signal {sig}: {e}");
        }
        true
    })
}
