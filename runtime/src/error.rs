//! The runtime crate's error type: one variant per kind of failure, each
//! message naming the container, file or field it is about.

use std::io;

use crate::cgroups::CgroupError;
use crate::channel::ChannelError;
use crate::hooks::HookError;
use crate::init::InitFailure;
use crate::spawn::SpawnError;
use crate::spec::SpecError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("container {id:?} is {status}: cannot {action}")]
    WrongStatus {
        id: String,
        status: &'static str,
        action: &'static str,
    },
    #[error("cgroup of container {id:?}: {source}")]
    Cgroup {
        id: String,
        #[source]
        source: CgroupError,
    },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("container init failed: {0}")]
    Init(InitFailure),
    #[error("container init exited unexpectedly ({status})")]
    InitDied { status: String },
    #[error("talking to the container init: {0}")]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(
        "oomScoreAdj {wanted}: below this process's minimum ({minimum}); lowering it needs CAP_SYS_RESOURCE"
    )]
    OomScoreAdj { wanted: i32, minimum: i32 },
    #[error("container {id:?}: the process exited before start completed: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("init helper {path}: {reason}")]
    InitBinary {
        path: std::path::PathBuf,
        reason: &'static str,
    },
    #[error("console socket {path}: {source}")]
    ConsoleSocket {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("container process: {0}")]
    Process(#[from] crate::init::process::ProcessError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, for a binary's last word. sprout's
/// error types put their source into their own message, so a cause is
/// added only when the line does not say it yet (anyhow's `{:#}` would
/// repeat each one).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg.replace('\n', " ")
}
