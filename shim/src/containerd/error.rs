//! The shim's errors, each mapped to the ttrpc status code containerd
//! expects (NotFound for a missing task or a finished process, which
//! containerd reads as "already gone"; FailedPrecondition for the wrong
//! state; Unimplemented for what the shim does not do).

use std::io;
use std::path::PathBuf;

use containerd_shim::protos::ttrpc;

use crate::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} is not supported by the sprout shim")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Runtime(#[from] sprout_runtime::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] sprout_snapshot::dump::DumpError),
    #[error("restore: {0}")]
    Restore(#[from] sprout_snapshot::restore::RestoreError),
    #[error("sproutd: {0}")]
    Sproutd(#[from] ClientError),
    #[error("netplug: {0}")]
    Netplug(#[from] sprout_netplug::Error),
    #[error("mounting {source_path} on {target} ({fstype}): {error}")]
    Mount {
        fstype: String,
        source_path: String,
        target: PathBuf,
        error: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ShimError {
        let what = what.into();
        move |source| ShimError::Io { what, source }
    }

    fn code(&self) -> ttrpc::Code {
        use sprout_runtime::Error as R;
        use sprout_runtime::state::StateError;
        match self {
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            ShimError::Runtime(e) => match e {
                R::InvalidId { .. } | R::Spec(_) | R::UnknownSignal(_) => {
                    ttrpc::Code::INVALID_ARGUMENT
                }
                R::State(StateError::NotFound(_)) => ttrpc::Code::NOT_FOUND,
                R::State(StateError::Exists(_)) => ttrpc::Code::ALREADY_EXISTS,
                R::WrongStatus { .. } => ttrpc::Code::FAILED_PRECONDITION,
                _ => ttrpc::Code::UNKNOWN,
            },
            ShimError::Sproutd(e) => match e.status() {
                Some(400) => ttrpc::Code::INVALID_ARGUMENT,
                Some(403) => ttrpc::Code::PERMISSION_DENIED,
                Some(404) => ttrpc::Code::NOT_FOUND,
                Some(409) => ttrpc::Code::FAILED_PRECONDITION,
                Some(501) => ttrpc::Code::UNIMPLEMENTED,
                _ => ttrpc::Code::UNKNOWN,
            },
            _ => ttrpc::Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// A blocking task that panicked or was cancelled: the shim itself failed.
impl From<tokio::task::JoinError> for ShimError {
    fn from(e: tokio::task::JoinError) -> Self {
        ShimError::Io {
            what: "a blocking runtime call".into(),
            source: io::Error::other(e.to_string()),
        }
    }
}
