//! gRPC statuses become the right `Error`, keeping the message and the machine-readable reason.

use std::collections::HashMap;

use broker_sdk::{Code, Error};
use serde_json::json;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::fake::Fake;

#[tokio::test]
async fn status_codes_map_to_their_variants_over_the_wire() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;
    let message = |m: &str| m.to_owned();
    let cases: Vec<(Code, Error)> = vec![
        (
            Code::Unauthenticated,
            Error::Unauthenticated {
                message: message("token expired"),
                reason: None,
            },
        ),
        (
            Code::PermissionDenied,
            Error::PermissionDenied {
                message: message("token expired"),
                reason: None,
            },
        ),
        (
            Code::InvalidArgument,
            Error::InvalidArgument {
                message: message("token expired"),
                field: None,
                reason: None,
            },
        ),
        (
            Code::NotFound,
            Error::NotFound {
                message: message("token expired"),
                reason: None,
            },
        ),
        (
            Code::ResourceExhausted,
            Error::ResourceExhausted {
                message: message("token expired"),
                reason: None,
            },
        ),
        (
            Code::DeadlineExceeded,
            Error::DeadlineExceeded {
                message: message("token expired"),
                reason: None,
            },
        ),
        (
            Code::Internal,
            Error::Other {
                code: Code::Internal,
                message: message("token expired"),
                reason: None,
            },
        ),
        (
            Code::FailedPrecondition,
            Error::Other {
                code: Code::FailedPrecondition,
                message: message("token expired"),
                reason: None,
            },
        ),
    ];

    for (code, expected) in cases {
        fake.on_authorize(move |_| Err(Status::new(code, "token expired")));
        let result = client.authorize("ses_1", "email.send", &json!({})).await;
        assert_eq!(result, Err(expected), "{code:?}");
    }
}

#[tokio::test]
async fn the_error_info_reason_is_exposed() {
    let fake = Fake::new();
    fake.on_authorize(|_| {
        let details = ErrorDetails::with_error_info("ROLE_REQUIRED", "broker", HashMap::new());
        Err(Status::with_error_details(
            Code::PermissionDenied,
            "role `auditor` may not authorize tool calls",
            details,
        ))
    });
    let client = fake.client("t".to_owned()).await;

    let error = client
        .authorize("ses_1", "email.send", &json!({}))
        .await
        .expect_err("permission denied");

    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(error.reason(), Some("ROLE_REQUIRED"));
    assert_eq!(
        error.message(),
        "role `auditor` may not authorize tool calls"
    );
    assert_eq!(
        error.to_string(),
        "permission denied: role `auditor` may not authorize tool calls"
    );
}

#[tokio::test]
async fn an_invalid_argument_names_the_field() {
    let fake = Fake::new();
    fake.on_authorize(|_| {
        let mut details =
            ErrorDetails::with_error_info("CALL_ID_TOO_LONG", "broker", HashMap::new());
        details.add_bad_request_violation("call_id", "at most 128 characters");
        Err(Status::with_error_details(
            Code::InvalidArgument,
            "`call_id` is longer than 128 characters",
            details,
        ))
    });
    let client = fake.client("t".to_owned()).await;

    let result = client
        .authorize_with_call_id("ses_1", "email.send", &json!({}), &"x".repeat(200))
        .await;

    assert_eq!(
        result,
        Err(Error::InvalidArgument {
            message: "`call_id` is longer than 128 characters".into(),
            field: Some("call_id".into()),
            reason: Some("CALL_ID_TOO_LONG".into()),
        })
    );
}
