//! `sprout exec`: a new process in a running container, from flags or from
//! a `--process` JSON file (what containerd's runc shim passes).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use oci_spec::runtime::Process;

use sprout::runtime::ExecOptions;

use super::{GlobalOpts, lifecycle, runtime, tty};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Unix socket that receives the pty master (with --tty).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables (NAME=value).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// uid[:gid] to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Process spec JSON file ("-" for stdin); replaces the other flags.
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// File to write the process's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// SELinux label for the process.
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile for the process.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privs.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability (e.g. CAP_NET_ADMIN).
    #[arg(short = 'c', long = "cap")]
    pub caps: Vec<String>,
    /// Pass this many extra fds into the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Allow exec into a paused container.
    #[arg(long)]
    pub ignore_paused: bool,
    /// Container id.
    pub id: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn read_process(path: &std::path::Path) -> Result<Process> {
    let data = if path == std::path::Path::new("-") {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_slice(&data).with_context(|| format!("process JSON {}", path.display()))
}

/// The process to run: `--process`, or the container's own process with
/// the command and flags applied on top (runc's behaviour).
fn build_process(a: &ExecArgs, base: &Process) -> Result<Process> {
    if let Some(p) = &a.process {
        return read_process(p);
    }
    if a.command.is_empty() {
        bail!("exec: no command given");
    }
    let mut v = serde_json::to_value(base)?;
    let mut env: Vec<String> = base.env().clone().unwrap_or_default();
    for e in &a.env {
        let name = e.split('=').next().unwrap_or_default();
        env.retain(|x| x.split('=').next() != Some(name));
        env.push(e.clone());
    }
    v["args"] = serde_json::json!(a.command);
    v["env"] = serde_json::json!(env);
    v["terminal"] = serde_json::json!(a.tty);
    if let Some(cwd) = &a.cwd {
        v["cwd"] = serde_json::json!(cwd);
    }
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse::<u32>()?, Some(g.parse::<u32>()?)),
            None => (u.parse::<u32>().context("--user takes uid[:gid]")?, None),
        };
        v["user"]["uid"] = uid.into();
        if let Some(g) = gid {
            v["user"]["gid"] = g.into();
        }
    }
    if !a.additional_gids.is_empty() {
        v["user"]["additionalGids"] = serde_json::json!(a.additional_gids);
    }
    if a.no_new_privs {
        v["noNewPrivileges"] = true.into();
    }
    if let Some(l) = &a.process_label {
        v["selinuxLabel"] = l.clone().into();
    }
    if let Some(p) = &a.apparmor {
        v["apparmorProfile"] = p.clone().into();
    }
    for cap in &a.caps {
        for set in ["bounding", "effective", "permitted", "ambient"] {
            let list = v["capabilities"][set]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut list: Vec<serde_json::Value> = list;
            if !list.iter().any(|c| c == cap.as_str()) {
                list.push(cap.clone().into());
            }
            v["capabilities"][set] = list.into();
        }
    }
    Ok(serde_json::from_value(v)?)
}

pub fn exec(g: &GlobalOpts, a: ExecArgs) -> Result<u8> {
    let rt = runtime(g)?;
    let container = rt.container(&a.id)?;
    let base = container.spec().process().clone().unwrap_or_default();
    let process = build_process(&a, &base)?;
    super::netplug::before_exec(g, &container, &process)?;
    let terminal = process.terminal().unwrap_or(false);
    let proxy = if terminal && a.console_socket.is_none() && !a.detach {
        Some(tty::ConsoleReceiver::new()?)
    } else {
        None
    };
    let opts = ExecOptions {
        console_socket: a
            .console_socket
            .clone()
            .or_else(|| proxy.as_ref().map(|p| p.path().to_path_buf())),
        pid_file: a.pid_file.clone(),
        preserve_fds: a.preserve_fds,
        stdio: [None, None, None],
        ignore_paused: a.ignore_paused,
    };
    let proc = container.exec(process, opts)?;
    if a.detach {
        return Ok(0);
    }
    let relay = match proxy {
        Some(p) => Some(p.receive()?.relay()?),
        None => None,
    };
    let _forwarder = lifecycle::signals_forwarder(Some(proc.pid));
    let code = proc.wait()?.unwrap_or(0);
    drop(relay);
    Ok(code.clamp(0, 255) as u8)
}
