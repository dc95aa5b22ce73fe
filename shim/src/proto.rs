//! What goes over sproutd's sockets: the JSON bodies of the HTTP API and
//! the messages of the side channel. Shared by the server and
//! [`crate::client`]; `API.md` documents them with examples.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::engine::{ExitStatus, Stage, TemplateInfo};
use crate::registry::FunctionSpec;

/// `GET /`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub engine: String,
    pub root: PathBuf,
    pub socket: PathBuf,
    /// The side channel, for forks that pass fds.
    pub side_socket: Option<PathBuf>,
    /// The state root of the netplug whose VPCs functions may name
    /// (`sprout --root <it> vpc create ...` makes one).
    pub netplug_root: PathBuf,
    pub pid: i32,
}

/// A function as `GET /functions` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionView {
    pub function: FunctionSpec,
    /// Its template, while loaded.
    pub template: Option<TemplateView>,
    /// Ids of its instances (running or stopped, not yet deleted).
    pub instances: Vec<String>,
}

/// A loaded template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateView {
    pub function: String,
    pub pid: i32,
    pub load_time_us: u64,
}

impl From<&TemplateInfo> for TemplateView {
    fn from(t: &TemplateInfo) -> Self {
        Self {
            function: t.function.clone(),
            pid: t.pid,
            load_time_us: t.load_time.as_micros() as u64,
        }
    }
}

/// `POST /functions/{name}/instances`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    pub id: String,
    /// The instance's bundle; default the function's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// A file to read stdin from (default `/dev/null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<PathBuf>,
    /// Files stdout and stderr are appended to (created 0600 if missing;
    /// default `/dev/null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<LinuxResources>,
    /// A VPC whose pooled network namespace the instance joins instead of
    /// the function's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
}

/// A signal by name (`"TERM"`, `"SIGKILL"`) or number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignalArg {
    Number(i32),
    Name(String),
}

impl Default for SignalArg {
    fn default() -> Self {
        SignalArg::Name("SIGTERM".into())
    }
}

impl SignalArg {
    pub fn to_number(&self) -> Result<i32, String> {
        match self {
            SignalArg::Number(n) if (1..=64).contains(n) => Ok(*n),
            SignalArg::Number(n) => Err(format!("signal {n} is out of range 1..64")),
            SignalArg::Name(s) => parse_signal(s),
        }
    }
}

/// `TERM`, `SIGTERM`, `15`, `RTMIN+2`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let bad = || format!("unknown signal {s:?}");
    if let Ok(n) = s.parse::<i32>() {
        return SignalArg::Number(n).to_number();
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMIN() + off;
        return if n <= libc::SIGRTMAX() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

/// `POST /instances/{id}/kill`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillBody {
    #[serde(default)]
    pub signal: SignalArg,
    /// Every process of the instance, not only its init.
    #[serde(default)]
    pub all: bool,
}

/// `POST /instances/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub args: Vec<String>,
    /// `KEY=VALUE`; default the instance's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Default the instance's cwd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `{"uid": 0, "gid": 0}`; default the instance's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ExecUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<PathBuf>,
    /// A file for stdout; without one, stdout is captured and returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
    /// Return once started (with the pid) instead of waiting for the exit.
    #[serde(default)]
    pub detach: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
}

/// Most bytes of captured output returned per stream.
pub const EXEC_CAPTURE_LIMIT: usize = 1 << 20;

/// The answer to an exec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecResult {
    pub pid: i32,
    /// The shell's exit code (128 + signal); absent for `detach`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Captured output (UTF-8, invalid bytes replaced), at most
    /// [`EXEC_CAPTURE_LIMIT`] bytes each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// An exit as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitView {
    /// The shell's exit code (128 + signal), `null` if unknown.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for ExitView {
    fn from(s: ExitStatus) -> Self {
        Self {
            exit_code: s.code(),
            signal: s.signal(),
        }
    }
}

/// `GET /instances/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub function: String,
    /// `running`, `paused`, `stopped` (or `created`).
    pub status: String,
    pub pid: i32,
    pub bundle: PathBuf,
    pub created: String,
    #[serde(default)]
    pub stages: Vec<StageView>,
    /// Set once the instance has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitView>,
    /// Found in the state root when this sproutd started.
    #[serde(default)]
    pub adopted: bool,
    /// The VPC whose pooled network namespace the instance holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// The instance's address in that VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// netplug's id of the namespace (its lease), given back on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageView {
    pub name: String,
    pub us: u64,
}

impl From<&Stage> for StageView {
    fn from(s: &Stage) -> Self {
        Self {
            name: s.name.clone(),
            us: s.elapsed.as_micros() as u64,
        }
    }
}

/// The answer to a fork.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forked {
    pub id: String,
    pub function: String,
    pub pid: i32,
    pub stages: Vec<StageView>,
    /// The VPC and address of the instance, when it joined a VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// ---- side channel ----------------------------------------------------

/// What an fd passed on the side channel is for, in the order the fds
/// were attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdRole {
    Stdin,
    Stdout,
    Stderr,
    /// A connected unix socket that receives the pty master.
    Console,
    /// A network namespace to join.
    Netns,
}

/// The one request of a side-channel connection: a JSON line sent with
/// its fds in the same `sendmsg`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideRequest {
    /// Only `"fork"` so far.
    pub op: String,
    pub function: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// One role per attached fd, in order. Stdio not passed is `/dev/null`.
    #[serde(default)]
    pub fds: Vec<FdRole>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<LinuxResources>,
    /// A VPC whose pooled network namespace the instance joins instead of
    /// the function's (not with a `netns` fd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// Keep the connection open and send the exit when the instance exits.
    #[serde(default = "yes")]
    pub wait: bool,
}

fn yes() -> bool {
    true
}

/// A JSON line from sproutd on the side channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SideMessage {
    /// The fork worked (first line).
    Forked(Forked),
    /// The request failed (first and last line); `status` is what the
    /// HTTP API would have answered.
    Error { status: u16, error: String },
    /// The instance exited (second and last line, with `wait`).
    Exited {
        id: String,
        pid: i32,
        #[serde(flatten)]
        exit: ExitView,
    },
}

/// Longest request line accepted on the side channel.
pub const SIDE_MAX_REQUEST: usize = 64 * 1024;
/// Most fds accepted with one side-channel request.
pub const SIDE_MAX_FDS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("RTMIN+1"), Ok(libc::SIGRTMIN() + 1));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert_eq!(SignalArg::Number(15).to_number(), Ok(15));
        let k: KillBody = serde_json::from_str(r#"{"signal": "HUP"}"#).unwrap();
        assert_eq!(k.signal.to_number(), Ok(libc::SIGHUP));
        let k: KillBody = serde_json::from_str(r#"{"signal": 2, "all": true}"#).unwrap();
        assert_eq!(k.signal.to_number(), Ok(2));
        assert!(k.all);
        assert_eq!(KillBody::default().signal.to_number(), Ok(libc::SIGTERM));
    }

    #[test]
    fn side_messages_round_trip() {
        let m = SideMessage::Exited {
            id: "a".into(),
            pid: 3,
            exit: ExitStatus::Signaled(9).into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"exited","id":"a","pid":3,"exit_code":137,"signal":9}"#
        );
        let back: SideMessage = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, SideMessage::Exited { pid: 3, .. }));
        let r: SideRequest = serde_json::from_str(
            r#"{"op":"fork","function":"f","id":"x","fds":["stdin","stdout","stderr"]}"#,
        )
        .unwrap();
        assert!(r.wait);
        assert_eq!(r.fds, [FdRole::Stdin, FdRole::Stdout, FdRole::Stderr]);
    }
}
