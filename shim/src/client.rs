//! A small blocking client of sproutd (std only, no async runtime): the
//! `sprout function` and `sprout run --function` commands and the tests
//! use it.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::events::Event;
use crate::proto::{
    BudgetBody, ClaimBody, Claimed, DrainBody, DrainResult, ErrorBody, ExecBody, ExecResult,
    FdRole, ForkBody, Forked, FunctionPoolView, FunctionView, Info, InstanceView, KillBody,
    LeaseView, PolicyBody, PoolView, PrewarmBody, PrewarmResult, Released, SideMessage,
    SideRequest,
};
use crate::registry::FunctionSpec;

/// Where the CLI looks for sproutd's API socket by default.
pub const DEFAULT_SOCKET: &str = "/run/sproutd/sproutd.sock";
/// Where sproutd puts its side channel by default.
pub const DEFAULT_SIDE_SOCKET: &str = "/run/sproutd/side.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach sproutd at {path}: {source} (is sproutd running? --sproutd-socket / SPROUTD_SOCKET name its socket)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to sproutd: {0}")]
    Io(#[from] io::Error),
    #[error("unexpected answer from sproutd: {0}")]
    Protocol(String),
    /// sproutd answered with an error.
    #[error("{message}")]
    Api { status: u16, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A client of sproutd's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        })
    }

    fn send_head(&self, method: &str, path: &str, body: &[u8]) -> Result<UnixStream> {
        let mut s = self.connect()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: sproutd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        Ok(s)
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        let s = self.send_head(method, path, body)?;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r)?;
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let body = if chunked {
            let mut body = Vec::new();
            while let Some(chunk) = read_chunk(&mut r)? {
                body.extend_from_slice(&chunk);
            }
            body
        } else if let Some(n) = length {
            let mut body = vec![0; n];
            r.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// A JSON request; a non-2xx answer becomes [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let r = self.raw(method, path, &bytes)?;
        check_status(&r)?;
        let body = if r.body.is_empty() {
            b"null".as_slice()
        } else {
            &r.body
        };
        serde_json::from_slice(body)
            .map_err(|e| ClientError::Protocol(format!("{method} {path}: {e}")))
    }

    pub fn info(&self) -> Result<Info> {
        self.call("GET", "/", None::<&()>)
    }

    pub fn add_function(&self, f: &FunctionSpec) -> Result<FunctionView> {
        self.call("POST", "/functions", Some(f))
    }

    pub fn functions(&self) -> Result<Vec<FunctionView>> {
        self.call("GET", "/functions", None::<&()>)
    }

    pub fn function(&self, name: &str) -> Result<FunctionView> {
        self.call("GET", &format!("/functions/{name}"), None::<&()>)
    }

    pub fn remove_function(&self, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/functions/{name}"), None::<&()>)
    }

    pub fn fork(&self, function: &str, body: &ForkBody) -> Result<Forked> {
        self.call(
            "POST",
            &format!("/functions/{function}/instances"),
            Some(body),
        )
    }

    pub fn instance(&self, id: &str) -> Result<InstanceView> {
        self.call("GET", &format!("/instances/{id}"), None::<&()>)
    }

    pub fn instances(&self) -> Result<Vec<InstanceView>> {
        self.call("GET", "/instances", None::<&()>)
    }

    pub fn kill(&self, id: &str, body: &KillBody) -> Result<()> {
        self.call("POST", &format!("/instances/{id}/kill"), Some(body))
    }

    pub fn exec(&self, id: &str, body: &ExecBody) -> Result<ExecResult> {
        self.call("POST", &format!("/instances/{id}/exec"), Some(body))
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.call(
            "DELETE",
            &format!("/instances/{id}?force={force}"),
            None::<&()>,
        )
    }

    /// `GET /pool`: the memory budget and every function's pool.
    pub fn pool(&self) -> Result<PoolView> {
        self.call("GET", "/pool", None::<&()>)
    }

    /// `PUT /pool/budget`.
    pub fn set_budget(&self, body: &BudgetBody) -> Result<PoolView> {
        self.call("PUT", "/pool/budget", Some(body))
    }

    /// `GET /functions/{name}/pool`.
    pub fn function_pool(&self, function: &str) -> Result<FunctionPoolView> {
        self.call("GET", &format!("/functions/{function}/pool"), None::<&()>)
    }

    /// `PUT /functions/{name}/pool/policy`: the fields given change.
    pub fn set_policy(&self, function: &str, body: &PolicyBody) -> Result<FunctionPoolView> {
        self.call(
            "PUT",
            &format!("/functions/{function}/pool/policy"),
            Some(body),
        )
    }

    /// `POST /functions/{name}/pool/prewarm`.
    pub fn prewarm(&self, function: &str, body: &PrewarmBody) -> Result<PrewarmResult> {
        self.call(
            "POST",
            &format!("/functions/{function}/pool/prewarm"),
            Some(body),
        )
    }

    /// `POST /functions/{name}/pool/drain`.
    pub fn drain(&self, function: &str, body: &DrainBody) -> Result<DrainResult> {
        self.call(
            "POST",
            &format!("/functions/{function}/pool/drain"),
            Some(body),
        )
    }

    /// `POST /functions/{name}/claim`: an instance, warm when one is.
    pub fn claim(&self, function: &str, body: &ClaimBody) -> Result<Claimed> {
        self.call("POST", &format!("/functions/{function}/claim"), Some(body))
    }

    /// `POST /instances/{id}/release`: a claimed instance given back.
    pub fn release(&self, id: &str) -> Result<Released> {
        self.call("POST", &format!("/instances/{id}/release"), None::<&()>)
    }

    /// `POST /functions/{name}/leases`: a request slot on an instance.
    pub fn acquire_lease(&self, function: &str) -> Result<LeaseView> {
        self.call(
            "POST",
            &format!("/functions/{function}/leases"),
            None::<&()>,
        )
    }

    /// `DELETE /leases/{lease}`.
    pub fn release_lease(&self, lease: &str) -> Result<()> {
        self.call("DELETE", &format!("/leases/{lease}"), None::<&()>)
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub fn metrics(&self) -> Result<String> {
        let r = self.raw("GET", "/metrics", b"")?;
        check_status(&r)?;
        String::from_utf8(r.body)
            .map_err(|e| ClientError::Protocol(format!("GET /metrics: not UTF-8: {e}")))
    }

    /// `GET /events` (with an optional query such as `id=x`): an iterator
    /// of events that blocks for the next one. The subscription is live
    /// when this returns.
    pub fn events(&self, query: &str) -> Result<EventStream> {
        let path = if query.is_empty() {
            "/events".to_string()
        } else {
            format!("/events?{query}")
        };
        let s = self.send_head("GET", &path, b"")?;
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r)?;
        if status != 200 {
            let mut body = Vec::new();
            let _ = r.read_to_end(&mut body);
            return Err(ClientError::Api {
                status,
                message: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        Ok(EventStream {
            r,
            pending: Vec::new(),
        })
    }
}

/// A non-2xx answer as [`ClientError::Api`], with the message of its
/// `{"error": ...}` body (or the body itself when it is not one).
fn check_status(r: &Response) -> Result<()> {
    if (200..300).contains(&r.status) {
        return Ok(());
    }
    let message = serde_json::from_slice::<ErrorBody>(&r.body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).trim().to_string());
    let message = if message.is_empty() {
        format!("sproutd answered {} without a reason", r.status)
    } else {
        message
    };
    Err(ClientError::Api {
        status: r.status,
        message,
    })
}

fn read_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {:?}", line.trim())))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(ClientError::Protocol("the answer ended in its head".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

/// One chunk of a chunked body; `None` after the last.
fn read_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size_text = line.trim().split(';').next().unwrap_or_default();
    let size = usize::from_str_radix(size_text, 16)
        .map_err(|_| ClientError::Protocol(format!("bad chunk size {:?}", line.trim())))?;
    if size == 0 {
        // Trailers, if any, end with an empty line.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                return Ok(None);
            }
        }
    }
    let mut chunk = vec![0; size + 2];
    r.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok(Some(chunk))
}

/// The event stream of `GET /events`.
pub struct EventStream {
    r: BufReader<UnixStream>,
    pending: Vec<u8>,
}

impl EventStream {
    /// The underlying socket (to set a read timeout, say).
    pub fn socket(&self) -> &UnixStream {
        self.r.get_ref()
    }

    /// The next line as JSON (events, or `{"type":"lagged",...}`).
    pub fn next_value(&mut self) -> Result<Option<serde_json::Value>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(format!("event line: {e}")));
            }
            match read_chunk(&mut self.r)? {
                Some(c) => self.pending.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_value() {
                Ok(Some(v)) if v.get("type").and_then(|t| t.as_str()) == Some("lagged") => {
                    continue;
                }
                Ok(Some(v)) => {
                    return Some(
                        serde_json::from_value(v)
                            .map_err(|e| ClientError::Protocol(format!("event: {e}"))),
                    );
                }
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A fork or claim over the side channel, after sproutd answered.
pub struct SideConnection {
    r: BufReader<UnixStream>,
}

impl SideConnection {
    /// Waits for the instance's exit (a request sent with `wait: true`).
    pub fn wait(mut self) -> Result<SideMessage> {
        read_side_message(&mut self.r)
    }

    pub fn socket(&self) -> &UnixStream {
        self.r.get_ref()
    }
}

fn read_side_message(r: &mut impl BufRead) -> Result<SideMessage> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(ClientError::Protocol(
            "sproutd closed the side channel without an answer".into(),
        ));
    }
    serde_json::from_str(&line)
        .map_err(|e| ClientError::Protocol(format!("side-channel line {:?}: {e}", line.trim())))
}

/// Forks over the side channel at `side_socket` (`req.op` is `"fork"`),
/// passing `fds` (their roles in `req.fds`, in the same order). Returns
/// sproutd's answer and the connection, on which the exit comes with
/// `req.wait`.
pub fn side_fork(
    side_socket: &Path,
    req: &SideRequest,
    fds: &[BorrowedFd<'_>],
) -> Result<(Forked, SideConnection)> {
    match side_request(side_socket, req, fds)? {
        (SideMessage::Forked(f), c) => Ok((f, c)),
        (other, _) => Err(ClientError::Protocol(format!(
            "expected a fork answer, got {other:?}"
        ))),
    }
}

/// Claims an instance over the side channel at `side_socket` (`req.op`
/// is `"claim"`; `fds` are stdin, stdout and stderr only): a warm one from
/// the function's pool, or a fork. The answer names the instance sproutd
/// picked (its id is sproutd's, not `req.id`) and how it started; the
/// exit comes on the connection with `req.wait`.
pub fn side_claim(
    side_socket: &Path,
    req: &SideRequest,
    fds: &[BorrowedFd<'_>],
) -> Result<(Claimed, SideConnection)> {
    match side_request(side_socket, req, fds)? {
        (SideMessage::Claimed(c), conn) => Ok((c, conn)),
        (other, _) => Err(ClientError::Protocol(format!(
            "expected a claim answer, got {other:?}"
        ))),
    }
}

/// Sends one side-channel request with its fds; sproutd's first line (an
/// error line is returned as [`ClientError::Api`]) and the connection.
fn side_request(
    side_socket: &Path,
    req: &SideRequest,
    fds: &[BorrowedFd<'_>],
) -> Result<(SideMessage, SideConnection)> {
    if req.fds.len() != fds.len() {
        return Err(ClientError::Protocol(format!(
            "{} fd roles for {} fds",
            req.fds.len(),
            fds.len()
        )));
    }
    let s = UnixStream::connect(side_socket).map_err(|source| ClientError::Connect {
        path: side_socket.to_path_buf(),
        source,
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    send_with_fds(&s, &line, fds)?;
    let mut r = BufReader::new(s);
    match read_side_message(&mut r)? {
        SideMessage::Error { status, error } => Err(ClientError::Api {
            status,
            message: error,
        }),
        first => Ok((first, SideConnection { r })),
    }
}

/// Sends `data` with `fds` attached to its first byte.
pub fn send_with_fds(s: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let n = sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(data)],
        if raw.is_empty() { &[] } else { &cmsg },
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    (&*s).write_all(&data[n..])
}

/// Roles for the usual three stdio fds.
pub const STDIO_ROLES: [FdRole; 3] = [FdRole::Stdin, FdRole::Stdout, FdRole::Stderr];
