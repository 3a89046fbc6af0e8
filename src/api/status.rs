//! The one place where domain errors become gRPC statuses, with google.rpc
//! details: ErrorInfo (domain `copex`) on every error, as AIP-193 asks,
//! BadRequest beside it for invalid input, ResourceInfo where a resource is
//! named.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Error;

pub const ERROR_DOMAIN: &str = "copex";

fn info(reason: &str, metadata: &[(&str, &str)]) -> ErrorDetails {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    details
}

fn resource_type(name: &str) -> &'static str {
    match name.split('/').nth(2) {
        Some("workshops") => "copex.v1.Workshop",
        Some("practices") => "copex.v1.Practice",
        Some("tools") => "copex.v1.Tool",
        _ => "copex.v1.Partner",
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let code = err.code();
        match err {
            Error::NotFound(name) => {
                let mut details = info("RESOURCE_NOT_FOUND", &[("resource", &name)]);
                details.set_resource_info(resource_type(&name), &name, "", "not found");
                Status::with_error_details(code, message, details)
            }
            Error::AlreadyExists(name) => {
                let mut details = info("RESOURCE_EXISTS", &[("resource", &name)]);
                details.set_resource_info(resource_type(&name), &name, "", "already exists");
                Status::with_error_details(code, message, details)
            }
            Error::EtagMismatch { name } => Status::with_error_details(
                code,
                message,
                info("ETAG_MISMATCH", &[("resource", &name)]),
            ),
            Error::Invalid(violations) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                let mut details = info("INVALID_FIELD", &[("fields", &fields.join(","))]);
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(code, message, details)
            }
            Error::Malformed(_) => {
                Status::with_error_details(code, message, info("MALFORMED_REQUEST", &[]))
            }
            Error::PermissionDenied { reason, .. } => {
                Status::with_error_details(code, message, info(reason, &[]))
            }
            Error::Unauthenticated { reason, .. } => {
                Status::with_error_details(code, message, info(reason, &[]))
            }
            Error::FailedPrecondition { reason, .. } => {
                Status::with_error_details(code, message, info(reason, &[]))
            }
            Error::ResourceExhausted {
                reason,
                retry_after,
                ..
            } => {
                let mut details = info(reason, &[]);
                if let Some(delay) = retry_after {
                    details.set_retry_info(Some(delay));
                }
                Status::with_error_details(code, message, details)
            }
            Error::DeadlineExceeded { reason, .. } => {
                Status::with_error_details(code, message, info(reason, &[]))
            }
            Error::Unavailable(_) => {
                let mut details = info("DATABASE_UNAVAILABLE", &[]);
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(code, message, details)
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::with_error_details(
                    code,
                    "internal error; the hub's log has the details",
                    info("INTERNAL", &[]),
                )
            }
        }
    }
}

/// Statuses tonic makes before our code sees a request, in the codes the
/// contract names: a request over the size limit is RESOURCE_EXHAUSTED
/// (tonic says OUT_OF_RANGE), one that is not a valid message, such as a
/// string that is not UTF-8, is INVALID_ARGUMENT (tonic says INTERNAL).
/// `None` leaves the status as it is.
pub fn from_transport(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::OutOfRange if message.starts_with("Error, decoded message length too large") => Some(
            Error::ResourceExhausted {
                reason: "REQUEST_TOO_LARGE",
                message: format!("the request is too large: {message}"),
                retry_after: None,
            }
            .into(),
        ),
        Code::Internal if message.starts_with("failed to decode Protobuf message") => Some(
            Error::Malformed(
                message
                    .trim_start_matches("failed to decode Protobuf message: ")
                    .to_owned(),
            )
            .into(),
        ),
        _ => None,
    }
}

/// The canonical name of a status code, as in the gRPC and google.rpc docs.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
