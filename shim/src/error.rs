//! API errors: a status code and a message for `{"error": "..."}`.

use sprout_runtime::state::StateError;

use crate::engine::EngineError;
use crate::registry::RegistryError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: None,
        }
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, m)
    }

    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(404, m)
    }

    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(409, m)
    }

    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(500, m)
    }

    pub fn unknown_function(name: &str) -> Self {
        Self::not_found(format!("unknown function {name:?}"))
    }

    pub fn unknown_instance(id: &str) -> Self {
        Self::not_found(format!("unknown instance {id:?}"))
    }
}

/// The status code for a runtime error.
pub fn runtime_status(e: &sprout_runtime::Error) -> u16 {
    use sprout_runtime::Error as E;
    match e {
        E::InvalidId { .. } | E::Spec(_) | E::UnknownSignal(_) => 400,
        E::State(StateError::NotFound(_)) => 404,
        E::State(StateError::Exists(_)) | E::WrongStatus { .. } => 409,
        _ => 500,
    }
}

impl From<sprout_runtime::Error> for ApiError {
    fn from(e: sprout_runtime::Error) -> Self {
        ApiError::new(runtime_status(&e), e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NoTemplate(_) => 409,
            EngineError::Invalid(_) => 400,
            EngineError::Unsupported(_) => 501,
            EngineError::Runtime(r) => runtime_status(r),
            EngineError::Template(t) => template_status(t),
            EngineError::Io { .. } | EngineError::Profile(_) => 500,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The status code for a template error: what the caller asked for is
/// wrong (400), the template is gone (409), or the node failed (500).
fn template_status(e: &sprout_snapshot::template::TemplateError) -> u16 {
    use sprout_snapshot::restore::RestoreError;
    use sprout_snapshot::template::TemplateError as T;
    match e {
        T::Bundle { .. } | T::SharedMemory { .. } | T::DontFork { .. } | T::Rootfs { .. } => 400,
        T::Gone(_) => 409,
        T::Runtime(r) => runtime_status(r),
        T::Restore(RestoreError::Image(_)) => 400,
        _ => 500,
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::internal(e.to_string())
    }
}
