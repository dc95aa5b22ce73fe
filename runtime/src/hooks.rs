//! OCI hooks: programs run at points of the lifecycle, given the container
//! state as JSON on stdin, each with an optional timeout.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

/// The lifecycle points, with the names the spec uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Prestart => "prestart",
            Self::CreateRuntime => "createRuntime",
            Self::CreateContainer => "createContainer",
            Self::StartContainer => "startContainer",
            Self::Poststart => "poststart",
            Self::Poststop => "poststop",
        }
    }

    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            #[allow(deprecated)]
            Self::Prestart => hooks.prestart(),
            Self::CreateRuntime => hooks.create_runtime(),
            Self::CreateContainer => hooks.create_container(),
            Self::StartContainer => hooks.start_container(),
            Self::Poststart => hooks.poststart(),
            Self::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: could not run it: {source}")]
    Spawn {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{kind} hook {path} exited with {status}{}", stderr_suffix(.stderr))]
    Failed {
        kind: &'static str,
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("{kind} hook {path} timed out after {secs}s and was killed")]
    TimedOut {
        kind: &'static str,
        path: PathBuf,
        secs: i64,
    },
}

fn stderr_suffix(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {}", s.lines().last().unwrap_or(s))
    }
}

/// Runs the hooks of one kind in order; the first failure stops the rest.
pub fn run(kind: HookKind, hooks: Option<&Hooks>, state_json: &[u8]) -> Result<(), HookError> {
    let Some(hooks) = hooks else { return Ok(()) };
    for hook in kind.of(hooks) {
        run_one(kind, hook, state_json)?;
    }
    Ok(())
}

/// How much of a failing hook's stderr is kept for the error message.
const STDERR_KEPT: usize = 16 * 1024;

fn run_one(kind: HookKind, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().clone();
    let spawn_error = |source| HookError::Spawn {
        kind: kind.name(),
        path: path.clone(),
        source,
    };
    let args = hook.args().as_deref().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for var in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Its own process group, so a timeout kills what the hook started too
    // (a shell script's children), not only the hook.
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin gets EPIPE here: not an error.
        let _ = stdin.write_all(state_json);
    }
    // Drained while the hook runs, without blocking: a chatty hook cannot
    // fill the pipe and hang, and a child that inherited stderr and outlives
    // the hook cannot keep us waiting for EOF.
    let mut stderr = child
        .stderr
        .take()
        .map(BoundedDrain::new)
        .transpose()
        .map_err(spawn_error)?;
    let deadline = hook
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        if let Some(d) = stderr.as_mut() {
            d.drain();
        }
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // SAFETY: kill(2) of the process group this function created
            // (the hook is its leader and not yet reaped, so the id is ours).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(HookError::TimedOut {
                kind: kind.name(),
                path,
                secs: hook.timeout().unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr
        .map(|mut d| {
            d.drain();
            String::from_utf8_lossy(&d.kept).into_owned()
        })
        .unwrap_or_default();
    Err(HookError::Failed {
        kind: kind.name(),
        path,
        status: status.to_string(),
        stderr,
    })
}

/// A non-blocking pipe read end, of which the first `STDERR_KEPT` bytes are
/// kept and the rest discarded.
struct BoundedDrain {
    pipe: std::process::ChildStderr,
    kept: Vec<u8>,
}

impl BoundedDrain {
    fn new(pipe: std::process::ChildStderr) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on a pipe fd this struct owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above; only O_NONBLOCK is added.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            pipe,
            kept: Vec::new(),
        })
    }

    /// Reads what is there now; stops at EOF, EAGAIN or an error.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = self.pipe.read(&mut buf) {
            let room = STDERR_KEPT.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(json: serde_json::Value) -> Hooks {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state");
        let h = hooks(serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 3"]}],
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 5"], "timeout": 1}]
        }));
        run(HookKind::CreateRuntime, Some(&h), b"{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"{\"id\":\"x\"}");
        let err = run(HookKind::Poststop, Some(&h), b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("broken"),
            "{err}"
        );
        let err = run(HookKind::Prestart, Some(&h), b"{}").unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        let err = run(
            HookKind::Poststart,
            Some(&hooks(
                serde_json::json!({"poststart": [{"path": "/nonexistent/hook"}]}),
            )),
            b"{}",
        )
        .unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }));
    }

    #[test]
    fn a_timeout_kills_what_the_hook_started_and_stderr_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        // The hook starts a child that keeps stderr open, then hangs.
        let h = hooks(serde_json::json!({
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c",
                format!("sleep 300 & echo $! > {}; wait", pid_file.display())], "timeout": 1}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c",
                "head -c 200000 /dev/zero | tr '\\0' x >&2; echo last words >&2; exit 4"]}]
        }));
        let err = run(HookKind::Prestart, Some(&h), b"{}").unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        let child: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..500).any(|_| {
            // The sleep was reparented; it is gone or a zombie once killed.
            let st = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let dead = st.is_empty() || st.split(' ').nth(2) == Some("Z");
            if !dead {
                std::thread::sleep(Duration::from_millis(10));
            }
            dead
        });
        assert!(gone, "the hook's child {child} survived the timeout");
        // 200 kB of stderr does not block the hook; the message keeps a part.
        let err = run(HookKind::Poststop, Some(&h), b"{}").unwrap_err();
        assert!(
            matches!(&err, HookError::Failed { stderr, .. } if stderr.len() == STDERR_KEPT),
            "{err:?}"
        );
    }
}
