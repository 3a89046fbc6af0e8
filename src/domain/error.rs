//! The one error type of the library, in domain terms. `api::status` maps it
//! to `tonic::Status` with google.rpc details; nothing else builds statuses.

use std::fmt;

/// A field that failed validation, named by its AIP-193 path (`tool.sharing.tlp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// What went wrong, in terms a partner can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The resource does not exist, or the caller may not see it: the two are
    /// deliberately indistinguishable.
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("the etag of {name} does not match: it changed or was deleted since it was read")]
    EtagMismatch { name: String },
    #[error("invalid argument: {}", join(.0))]
    Invalid(Vec<FieldViolation>),
    /// The request is not a valid message at all (e.g. a string field that
    /// is not UTF-8), so no field can be named.
    #[error("the request cannot be read: {0}")]
    Malformed(String),
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
        /// When trying again may succeed (google.rpc.RetryInfo).
        retry_after: Option<std::time::Duration>,
    },
    /// A call's database work ran past its deadline (the client's, or the
    /// hub's cap on one query) and was stopped.
    #[error("{message}")]
    DeadlineExceeded {
        reason: &'static str,
        message: String,
    },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or a broken invariant; the details go to the log, not the client.
    #[error("internal error: {0}")]
    Internal(String),
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::Invalid(vec![FieldViolation::new(field, description)])
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Error::PermissionDenied {
            reason,
            message: message.into(),
        }
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Unauthenticated {
            reason,
            message: message.into(),
        }
    }

    /// The canonical status code (google.rpc.Code) this error answers with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::EtagMismatch { .. } => Code::Aborted,
            Error::Invalid(_) | Error::Malformed(_) => Code::InvalidArgument,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    pub fn internal(what: impl fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
