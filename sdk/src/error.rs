//! The one error type of the SDK: "the broker could not decide".
//!
//! A DENY is not an error (it is a [`Decision`](crate::Decision)); every [`Error`] means the caller must
//! not run the tool.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Why the broker could not answer, or why its answer could not be trusted.
///
/// Variants built from a gRPC status keep the server's message and, when the server attached a
/// `google.rpc.ErrorInfo` detail, its machine-readable `reason` (see [`Error::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker rejected the bearer token (missing, expired, wrong issuer or audience, ...).
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// The token is valid but its role may not call this RPC.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// The request was malformed (the broker names the field when it can).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's (or the SDK's) message.
        message: String,
        /// The offending field, from a `google.rpc.BadRequest` detail or the SDK's own check.
        field: Option<String>,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// The named resource (e.g. a session to close) does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The server's message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// The broker is down, unreachable, or could not reach a dependency; retrying may help.
    #[error("broker unavailable: {message}")]
    Unavailable {
        /// The server's (or the transport's) message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// A limit was hit (rate limit, message size, ...).
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// The server's message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// No answer within the deadline (the SDK's own deadline or the server's).
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// The server's (or the SDK's) message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
    /// The endpoint is invalid or the connection could not be established.
    #[error("transport error: {0}")]
    Transport(String),
    /// The [`TokenSource`](crate::TokenSource) could not produce a usable token; nothing was sent.
    #[error("token source failed: {0}")]
    Token(String),
    /// The server answered something the SDK cannot trust (e.g. `OUTCOME_UNSPECIFIED`, a missing field,
    /// an ALLOW for another call).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Any other gRPC status (`INTERNAL`, `UNKNOWN`, `CANCELLED`, ...).
    #[error("broker error ({code:?}): {message}")]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
        /// The `ErrorInfo` reason, if the server sent one.
        reason: Option<String>,
    },
}

impl Error {
    /// The gRPC code this error corresponds to. Local failures map to the nearest code:
    /// [`Transport`](Error::Transport) is `UNAVAILABLE`, [`Token`](Error::Token) is `UNAUTHENTICATED`,
    /// [`Protocol`](Error::Protocol) is `INTERNAL`.
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated { .. } | Self::Token(_) => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::Unavailable { .. } | Self::Transport(_) => Code::Unavailable,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Protocol(_) => Code::Internal,
            Self::Other { code, .. } => *code,
        }
    }

    /// The machine-readable reason (`google.rpc.ErrorInfo.reason`) the server attached, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Unauthenticated { reason, .. }
            | Self::PermissionDenied { reason, .. }
            | Self::InvalidArgument { reason, .. }
            | Self::NotFound { reason, .. }
            | Self::Unavailable { reason, .. }
            | Self::ResourceExhausted { reason, .. }
            | Self::DeadlineExceeded { reason, .. }
            | Self::Other { reason, .. } => reason.as_deref(),
            Self::Transport(_) | Self::Token(_) | Self::Protocol(_) => None,
        }
    }

    /// The human-readable message (the server's, when the error came from a gRPC status).
    pub fn message(&self) -> &str {
        match self {
            Self::Unauthenticated { message, .. }
            | Self::PermissionDenied { message, .. }
            | Self::InvalidArgument { message, .. }
            | Self::NotFound { message, .. }
            | Self::Unavailable { message, .. }
            | Self::ResourceExhausted { message, .. }
            | Self::DeadlineExceeded { message, .. }
            | Self::Other { message, .. } => message,
            Self::Transport(message) | Self::Token(message) | Self::Protocol(message) => message,
        }
    }

    /// Whether the same request may succeed if retried later (broker down, deadline, rate limit).
    ///
    /// Retry an authorization with [`Client::authorize_with_call_id`](crate::Client::authorize_with_call_id)
    /// and the same `call_id`, so that a call the broker already counted is not counted twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. }
                | Self::Transport(_)
                | Self::DeadlineExceeded { .. }
                | Self::ResourceExhausted { .. }
        )
    }

    /// An SDK-side deadline expiry.
    pub(crate) fn deadline(after: std::time::Duration) -> Self {
        Self::DeadlineExceeded {
            message: format!("no answer from the broker within {after:?}"),
            reason: None,
        }
    }

    /// A transport failure, with its whole chain of causes in the message.
    pub(crate) fn transport(err: &tonic::transport::Error) -> Self {
        Self::Transport(error_chain(err))
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let reason = details.error_info().map(|info| info.reason.clone());
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthenticated { message, reason },
            Code::PermissionDenied => Self::PermissionDenied { message, reason },
            Code::InvalidArgument => {
                let field = details
                    .bad_request()
                    .and_then(|bad| bad.field_violations.first())
                    .map(|violation| violation.field.clone());
                Self::InvalidArgument {
                    message,
                    field,
                    reason,
                }
            }
            Code::NotFound => Self::NotFound { message, reason },
            Code::Unavailable => Self::Unavailable {
                // A connection failure arrives as UNAVAILABLE with the cause as the status's source.
                message: with_source(message, &status),
                reason,
            },
            Code::ResourceExhausted => Self::ResourceExhausted { message, reason },
            Code::DeadlineExceeded => Self::DeadlineExceeded { message, reason },
            code => Self::Other {
                code,
                message,
                reason,
            },
        }
    }
}

/// Appends the status's source chain, when the message does not already say it.
fn with_source(message: String, status: &Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => {
            let chain = error_chain(source);
            if message.contains(&chain) {
                message
            } else if message.is_empty() {
                chain
            } else {
                format!("{message}: {chain}")
            }
        }
        None => message,
    }
}

/// `outer: inner: innermost`, skipping causes whose text the previous one already carries.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn each_status_code_maps_to_its_variant() {
        let cases = [
            (Code::Unauthenticated, Code::Unauthenticated),
            (Code::PermissionDenied, Code::PermissionDenied),
            (Code::InvalidArgument, Code::InvalidArgument),
            (Code::NotFound, Code::NotFound),
            (Code::Unavailable, Code::Unavailable),
            (Code::ResourceExhausted, Code::ResourceExhausted),
            (Code::DeadlineExceeded, Code::DeadlineExceeded),
            (Code::Internal, Code::Internal),
            (Code::Unknown, Code::Unknown),
            (Code::Cancelled, Code::Cancelled),
        ];
        for (sent, expected) in cases {
            let err = Error::from(Status::new(sent, "the message"));
            assert_eq!(err.code(), expected, "{sent:?}");
            assert_eq!(err.message(), "the message");
            assert_eq!(err.reason(), None);
        }
        assert!(matches!(
            Error::from(Status::internal("x")),
            Error::Other {
                code: Code::Internal,
                ..
            }
        ));
    }

    #[test]
    fn error_info_reason_and_bad_request_field_are_exposed() {
        let mut details = ErrorDetails::with_error_info("BAD_TOOL_NAME", "broker", HashMap::new());
        details.add_bad_request_violation("tool", "must not be empty");
        let status = Status::with_error_details(Code::InvalidArgument, "tool is empty", details);
        let err = Error::from(status);
        assert_eq!(
            err,
            Error::InvalidArgument {
                message: "tool is empty".into(),
                field: Some("tool".into()),
                reason: Some("BAD_TOOL_NAME".into()),
            }
        );
        assert_eq!(err.reason(), Some("BAD_TOOL_NAME"));
    }

    #[test]
    fn display_is_lowercase_and_keeps_the_server_message() {
        let err = Error::from(Status::permission_denied(
            "role `agent` may not list audit events",
        ));
        assert_eq!(
            err.to_string(),
            "permission denied: role `agent` may not list audit events"
        );
        assert_eq!(
            Error::Protocol("x".into()).to_string(),
            "protocol violation: x"
        );
    }

    #[test]
    fn local_errors_map_to_the_nearest_code() {
        assert_eq!(Error::Token("x".into()).code(), Code::Unauthenticated);
        assert_eq!(Error::Transport("x".into()).code(), Code::Unavailable);
        assert_eq!(Error::Protocol("x".into()).code(), Code::Internal);
        assert!(Error::Transport("x".into()).is_retryable());
        assert!(!Error::Protocol("x".into()).is_retryable());
        assert!(!Error::from(Status::permission_denied("x")).is_retryable());
    }
}
