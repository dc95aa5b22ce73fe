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

// ---- warm pool ---------------------------------------------------------

/// How an instance was started: taken warm from the pool, forked from a
/// loaded template, forked after restoring the template from its image
/// first, or (outside sproutd) booted from nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPath {
    PoolHit,
    Fork,
    Restore,
    Cold,
}

impl StartPath {
    pub const ALL: [StartPath; 4] = [
        StartPath::PoolHit,
        StartPath::Fork,
        StartPath::Restore,
        StartPath::Cold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StartPath::PoolHit => "pool_hit",
            StartPath::Fork => "fork",
            StartPath::Restore => "restore",
            StartPath::Cold => "cold",
        }
    }
}

/// The keep-warm strategy of a function's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStrategy {
    /// The hybrid histogram policy: pre-warm ahead of predicted arrivals,
    /// keep instances while they are likely to be used.
    #[default]
    Hybrid,
    /// Keep an instance `keep_alive_s` after its last request.
    Fixed,
    /// No pool: every start is a fork, every release a destroy.
    None,
}

/// `PUT /functions/{name}/pool/policy`; every field is optional and
/// leaves the current value when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PolicyStrategy>,
    /// The keep-alive of `fixed`, in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_s: Option<u64>,
    /// Warm instances kept whatever the policy says (what pre-warm sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_warm: Option<u32>,
    /// A released claimed instance goes back to the pool instead of being
    /// destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<bool>,
}

/// A function's pool settings as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    pub strategy: PolicyStrategy,
    pub keep_alive_s: u64,
    pub min_warm: u32,
    pub reuse: bool,
}

impl Default for PolicyView {
    fn default() -> Self {
        Self {
            strategy: PolicyStrategy::Hybrid,
            keep_alive_s: 600,
            min_warm: 0,
            reuse: false,
        }
    }
}

/// `POST /functions/{name}/pool/prewarm`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmBody {
    /// Warm instances to hold from now on (the function's `min_warm`).
    pub count: u32,
}

/// The answer to a pre-warm.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrewarmResult {
    /// Instances forked by this request.
    pub forked: u32,
    /// Warm (frozen, unleased) instances the function has now.
    pub warm: u32,
}

/// `POST /functions/{name}/pool/drain`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// Also destroy instances serving leases (their requests fail).
    #[serde(default)]
    pub force: bool,
}

/// The answer to a drain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainResult {
    /// Pool instances destroyed.
    pub destroyed: u32,
    /// Pool instances left because they serve leases (without `force`);
    /// each is destroyed when its last lease is released.
    pub busy: u32,
}

/// `POST /functions/{name}/claim`: an instance of the function as a
/// container of the caller's, warm from the pool when it can be. The
/// answer names it: a pool instance keeps the id it was forked with (the
/// id keys its state, cgroup, network lease and log), so callers with
/// ids of their own (the containerd shim) map theirs to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// A bundle of the caller's: the instance gets that sandbox, so it is
    /// a fresh fork (placed in the bundle's `cgroupsPath` when it names
    /// one). Without a bundle a pool instance, in the function's own
    /// sandbox, is handed out when one is warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// Limits applied to the instance's cgroup before it is thawed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<LinuxResources>,
    /// Files the instance's stdout and stderr are appended to from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// The answer to a claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claimed {
    pub id: String,
    pub function: String,
    pub pid: i32,
    pub path: StartPath,
    /// From the claim's arrival to the instance running, in µs.
    pub claim_us: u64,
    /// The fork's stages when it was not a pool hit; the claim's own steps
    /// when it was.
    pub stages: Vec<StageView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// The answer to `POST /instances/{id}/release`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Released {
    pub id: String,
    /// Back in the pool (the function allows reuse) rather than destroyed.
    pub reused: bool,
}

/// The answer to `POST /functions/{name}/leases`: a request slot on an
/// instance of the function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    /// `lease-N`; give it back with `DELETE /leases/{lease}`.
    pub lease: String,
    pub function: String,
    pub instance: String,
    pub pid: i32,
    /// The instance's address in its VPC, where requests go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    pub path: StartPath,
    /// From the request's arrival to the slot being usable, in µs.
    pub us: u64,
}

/// One instance of a function's pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolInstanceView {
    pub id: String,
    pub pid: i32,
    /// `frozen`, `idle` (thawed, no lease) or `busy`.
    pub state: String,
    pub leases: u32,
    pub capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// What the policy wants for a function now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanView {
    /// Instances to hold loaded.
    pub target: u32,
    pub pre_warm: bool,
    /// `standard`, `histogram`, `time_series`, `fixed`, `no_pool`.
    pub tier: String,
    /// When the policy looks again, in ms from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_in_ms: Option<u64>,
}

/// Counts of starts by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartCounts {
    pub pool_hit: u64,
    pub fork: u64,
    pub restore: u64,
    pub cold: u64,
}

impl StartCounts {
    pub fn add(&mut self, path: StartPath) {
        match path {
            StartPath::PoolHit => self.pool_hit += 1,
            StartPath::Fork => self.fork += 1,
            StartPath::Restore => self.restore += 1,
            StartPath::Cold => self.cold += 1,
        }
    }

    pub fn get(&self, path: StartPath) -> u64 {
        match path {
            StartPath::PoolHit => self.pool_hit,
            StartPath::Fork => self.fork,
            StartPath::Restore => self.restore,
            StartPath::Cold => self.cold,
        }
    }

    /// Starts that were not pool hits, over all starts (0 with none).
    pub fn cold_ratio(&self) -> f64 {
        let all = self.pool_hit + self.fork + self.restore + self.cold;
        if all == 0 {
            0.0
        } else {
            (all - self.pool_hit) as f64 / all as f64
        }
    }
}

/// `GET /functions/{name}/pool`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionPoolView {
    pub function: String,
    pub policy: PolicyView,
    pub plan: PlanView,
    pub instances: Vec<PoolInstanceView>,
    /// Frozen instances without leases.
    pub warm: u32,
    /// Leases held on the function's instances.
    pub leases: u32,
    /// Requests in flight as the policy counts them: claimed instances
    /// not yet given back, and leases.
    #[serde(default)]
    pub in_flight: u32,
    pub starts: StartCounts,
    /// The memory the budget books per instance.
    pub bytes_per_instance: u64,
    /// Pages in the recorded write set of the first request (0: none yet).
    pub write_set_pages: u64,
}

/// The node memory budget of the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetView {
    pub limit_bytes: u64,
    pub used_bytes: u64,
}

/// `GET /pool`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolView {
    pub budget: BudgetView,
    pub functions: Vec<FunctionPoolView>,
}

/// A byte size: `1048576`, `512K`, `512M`, `2G`, `1T` (powers of 1024; an
/// optional `i`/`iB`/`B` suffix is accepted: `512MiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must start with a number"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("size {s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `PUT /pool/budget`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    pub limit_bytes: u64,
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
    /// `"fork"` (a new instance `id`) or `"claim"` (an instance from the
    /// pool, or a fork when none is warm; the answer names it, `id` is
    /// not used).
    pub op: String,
    pub function: String,
    #[serde(default)]
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
    /// Set by the containerd shim: the containerd namespace the request
    /// comes from, `/` and the pod's Kubernetes namespace under CRI.
    /// Checked against the function's `callers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
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
    /// The claim worked (first line).
    Claimed(Claimed),
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
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
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
