//! The one place errors become gRPC statuses. Internal causes are logged here and never sent; every
//! status carries a stable machine-readable reason (`google.rpc.ErrorInfo`).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::admission::Refusal;
use crate::auth::TokenError;
use crate::domain::broker::Error;

pub const DOMAIN: &str = "agent-broker";

fn status(code: Code, reason: &str, message: String) -> Status {
    let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::<String, String>::new());
    Status::with_error_details(code, message, details)
}

pub fn from_domain(e: Error) -> Status {
    match e {
        Error::InvalidArgument { field, message } => {
            let mut details = ErrorDetails::with_error_info(
                "INVALID_ARGUMENT",
                DOMAIN,
                HashMap::<String, String>::new(),
            );
            details.add_bad_request_violation(field, message.clone());
            Status::with_error_details(
                Code::InvalidArgument,
                format!("`{field}`: {message}"),
                details,
            )
        }
        Error::NotFound(m) => status(Code::NotFound, "NOT_FOUND", m),
        Error::PermissionDenied { .. } => {
            status(Code::PermissionDenied, "ROLE_REQUIRED", e.to_string())
        }
        Error::Refused {
            code,
            message,
            permission,
        } => {
            let grpc = if permission {
                Code::PermissionDenied
            } else {
                Code::FailedPrecondition
            };
            status(grpc, code, message)
        }
        Error::Killed {
            kill_switch_id,
            message,
        } => {
            let mut metadata = HashMap::new();
            if let Some(id) = kill_switch_id {
                metadata.insert("kill_switch_id".to_owned(), id);
            }
            let details = ErrorDetails::with_error_info("KILL_SWITCH", DOMAIN, metadata);
            Status::with_error_details(Code::PermissionDenied, message, details)
        }
        Error::CallIdReused(_) => status(Code::AlreadyExists, "CALL_ID_REUSED", e.to_string()),
        Error::Unavailable(cause) => {
            tracing::warn!(%cause, "could not decide: audit store unavailable");
            status(
                Code::Unavailable,
                "AUDIT_UNAVAILABLE",
                "the audit store is unavailable; nothing was allowed, retry later".into(),
            )
        }
        Error::Overloaded(cause) => {
            tracing::warn!(%cause, "shedding load");
            status(
                Code::ResourceExhausted,
                "OVERLOADED",
                "the broker is overloaded; nothing was allowed, retry later".into(),
            )
        }
        Error::Internal(cause) => {
            tracing::error!(%cause, "internal error");
            status(
                Code::Internal,
                "INTERNAL",
                "internal error; nothing was allowed".into(),
            )
        }
    }
}

/// A call still running when the shutdown's grace period ended: nothing was allowed.
pub fn shutting_down() -> Status {
    status(
        Code::Unavailable,
        "SHUTTING_DOWN",
        "the broker is shutting down; nothing was allowed, retry later".into(),
    )
}

/// A call shed by admission (`api::admission`): RESOURCE_EXHAUSTED `OVERLOADED`, before any decision, with
/// the limit it reached in the `ErrorInfo` metadata (`limit`).
pub fn overloaded(refusal: &Refusal) -> Status {
    let metadata = HashMap::from([("limit".to_owned(), refusal.limit().to_owned())]);
    let details = ErrorDetails::with_error_info("OVERLOADED", DOMAIN, metadata);
    Status::with_error_details(Code::ResourceExhausted, refusal.to_string(), details)
}

pub fn unauthenticated(e: &TokenError) -> Status {
    status(Code::Unauthenticated, e.reason(), e.to_string())
}

pub fn invalid(field: &'static str, message: impl Into<String>) -> Status {
    from_domain(Error::InvalidArgument {
        field,
        message: message.into(),
    })
}
