//! The side channel: forks whose instance gets the client's own fds.
//!
//! One connection, one fork. The client sends a JSON line
//! ([`SideRequest`]) and, with the same `sendmsg`, its fds as
//! `SCM_RIGHTS`, listed by role in `fds`. sproutd answers one JSON line
//! ([`SideMessage::Forked`] or [`SideMessage::Error`]). With `wait` (the
//! default) the connection stays open and, when the instance exits,
//! sproutd sends [`SideMessage::Exited`] and closes it. A client that goes
//! away (or crashes) only closes its connection: the instance lives on.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::{Daemon, Instance, forked, open_stdio};
use crate::engine::{ExitStatus, ForkRequest};
use crate::error::ApiError;
use crate::proto::{ClaimBody, FdRole, SIDE_MAX_FDS, SIDE_MAX_REQUEST, SideMessage, SideRequest};

/// How long a client has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn accept(d: Arc<Daemon>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accepting a side-channel connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(d.clone(), stream));
    }
}

async fn send(stream: &mut UnixStream, m: &SideMessage) -> io::Result<()> {
    let mut line = serde_json::to_vec(m).expect("serializable");
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn serve_connection(d: Arc<Daemon>, mut stream: UnixStream) {
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&stream)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            408,
            format!(
                "no request within {}s of connecting",
                REQUEST_TIMEOUT.as_secs()
            ),
        )),
    };
    let (req, fds) = match request {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("side channel: {}", e.message);
            let _ = send(
                &mut stream,
                &SideMessage::Error {
                    status: e.status,
                    error: e.message,
                },
            )
            .await;
            return;
        }
    };
    let wait = req.wait;
    let function = req.function.clone();
    let claim = req.op == "claim";
    let admitted = match &req.caller {
        Some(caller) => d.function(&function).and_then(|f| {
            if f.admits(caller) {
                Ok(())
            } else {
                Err(ApiError::new(
                    403,
                    format!("function {function:?} may not be started by caller {caller:?}"),
                ))
            }
        }),
        None => Ok(()),
    };
    let started = match admitted.and_then(|()| fork_request(req, fds)) {
        Ok((fr, _)) if claim => claim_instance(&d, &function, fr).await,
        Ok((fr, vpc)) => d
            .fork(&function, fr, vpc)
            .await
            .map(|i| (SideMessage::Forked(forked(&i)), i)),
        Err(e) => Err(e),
    };
    let (answer, inst) = match started {
        Ok(r) => r,
        Err(e) => {
            let _ = send(
                &mut stream,
                &SideMessage::Error {
                    status: e.status,
                    error: e.message,
                },
            )
            .await;
            return;
        }
    };
    if send(&mut stream, &answer).await.is_err() {
        tracing::info!(container = %inst.id, "side-channel client left before the answer; the instance lives on");
        return;
    }
    if !wait {
        return;
    }
    let mut exit = inst.exit_watch();
    let status = tokio::select! {
        r = exit.wait_for(|s| s.is_some()) => match r {
            Ok(s) => s.unwrap_or(ExitStatus::Unknown),
            Err(_) => ExitStatus::Unknown,
        },
        _ = client_gone(&stream) => {
            tracing::info!(container = %inst.id, "side-channel client left; the instance lives on");
            return;
        }
    };
    let _ = send(
        &mut stream,
        &SideMessage::Exited {
            id: inst.id.clone(),
            pid: inst.pid,
            exit: status.into(),
        },
    )
    .await;
}

/// Completes when the client closes its end (anything it sends after
/// its request is ignored).
async fn client_gone(stream: &UnixStream) {
    let mut buf = [0u8; 1024];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// One `recvmsg`: bytes into `buf`, received fds appended to `fds`.
fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; SIDE_MAX_FDS]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed this fd for us; nothing
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if truncated {
        return Err(io::Error::other(format!(
            "more than {SIDE_MAX_FDS} file descriptors were sent"
        )));
    }
    Ok(msg.bytes)
}

async fn read_request(stream: &UnixStream) -> Result<(SideRequest, Vec<OwnedFd>), ApiError> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let bad = |m: String| ApiError::bad_request(m);
    loop {
        stream
            .readable()
            .await
            .map_err(|e| bad(format!("reading the request: {e}")))?;
        let n = match stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_raw_fd(), &mut buf, &mut fds)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(bad(format!("reading the request: {e}"))),
        };
        if n == 0 {
            return Err(bad(
                "the connection closed before a complete request line".into()
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if fds.len() > SIDE_MAX_FDS {
            return Err(bad(format!(
                "more than {SIDE_MAX_FDS} file descriptors were sent"
            )));
        }
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            break;
        }
        if line.len() > SIDE_MAX_REQUEST {
            return Err(ApiError::new(
                413,
                format!("request line longer than {SIDE_MAX_REQUEST} bytes"),
            ));
        }
    }
    let req: SideRequest =
        serde_json::from_slice(&line).map_err(|e| bad(format!("bad JSON: {e}")))?;
    Ok((req, fds))
}

/// A claim over the side channel: the fds are the claimant's stdio.
async fn claim_instance(
    d: &Arc<Daemon>,
    function: &str,
    fr: ForkRequest,
) -> Result<(SideMessage, Arc<Instance>), ApiError> {
    if fr.console_socket.is_some() || fr.netns.is_some() {
        return Err(ApiError::bad_request(
            "a claim takes stdin, stdout and stderr fds only (pool instances have their network already; forked instances get no terminal)",
        ));
    }
    let [stdin, stdout, stderr] = fr.stdio;
    let stdio = [
        open_or_null(stdin, false)?,
        open_or_null(stdout, true)?,
        open_or_null(stderr, true)?,
    ];
    let body = ClaimBody {
        bundle: fr.bundle,
        resources: fr.resources,
        annotations: fr.annotations,
        ..Default::default()
    };
    let claimed = d.claim(function, body, Some(stdio)).await?;
    let inst = d.instance(&claimed.id)?;
    Ok((SideMessage::Claimed(claimed), inst))
}

fn open_or_null(fd: Option<OwnedFd>, write: bool) -> Result<OwnedFd, ApiError> {
    match fd {
        Some(fd) => Ok(fd),
        None => open_stdio(None, write)
            .map_err(|e| ApiError::internal(format!("opening /dev/null: {e}"))),
    }
}

/// Pairs the request's roles with the fds that came with it; the VPC the
/// request names, if any, comes back beside.
fn fork_request(
    req: SideRequest,
    fds: Vec<OwnedFd>,
) -> Result<(ForkRequest, Option<String>), ApiError> {
    if req.op != "fork" && req.op != "claim" {
        return Err(ApiError::bad_request(format!(
            "unknown op {:?} (expected \"fork\" or \"claim\")",
            req.op
        )));
    }
    if req.op == "claim" && req.vpc.is_some() {
        return Err(ApiError::bad_request(
            "a claim takes the function's VPC; \"vpc\" is for forks",
        ));
    }
    if req.fds.len() != fds.len() {
        return Err(ApiError::bad_request(format!(
            "the request names {} fd(s) but {} came with it",
            req.fds.len(),
            fds.len()
        )));
    }
    if let Some(b) = &req.bundle
        && !b.is_absolute()
    {
        return Err(ApiError::bad_request(format!(
            "bundle {} must be an absolute path",
            b.display()
        )));
    }
    let mut fr = ForkRequest {
        id: req.id,
        bundle: req.bundle,
        annotations: req.annotations,
        resources: req.resources,
        ..Default::default()
    };
    for (role, fd) in req.fds.into_iter().zip(fds) {
        let slot = match role {
            FdRole::Stdin => &mut fr.stdio[0],
            FdRole::Stdout => &mut fr.stdio[1],
            FdRole::Stderr => &mut fr.stdio[2],
            FdRole::Console => &mut fr.console_socket,
            FdRole::Netns => &mut fr.netns,
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!(
                "fd role {role:?} is given twice"
            )));
        }
        *slot = Some(fd);
    }
    Ok((fr, req.vpc))
}
