//! `guard` runs the tool on ALLOW and never otherwise.

use std::time::Duration;

use broker_sdk::{proto, Client, Code, Error, GuardError, Outcome};
use serde_json::json;
use tonic::Status;

use crate::fake::{decision, reason, Fake};

/// Guards a tool that records whether it ran.
async fn guarded(client: &Client) -> (Result<&'static str, GuardError>, bool) {
    let mut ran = false;
    let result = client
        .guard(
            "ses_1",
            "email.send",
            &json!({"to": "bob@example.com"}),
            || async {
                ran = true;
                "sent"
            },
        )
        .await;
    (result, ran)
}

#[tokio::test]
async fn runs_the_tool_on_allow_and_returns_its_result() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;

    let (result, ran) = guarded(&client).await;

    assert_eq!(result, Ok("sent"));
    assert!(ran);
    assert_eq!(fake.authorizations().len(), 1);
}

#[tokio::test]
async fn does_not_run_the_tool_on_deny_and_returns_the_reasons() {
    let fake = Fake::new();
    fake.on_authorize(|r| {
        Ok(decision(
            r,
            proto::Outcome::Deny,
            vec![reason(
                "POLICY_DENY",
                "no-external-email",
                "external recipients need approval",
            )],
        ))
    });
    let client = fake.client("t".to_owned()).await;

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    let denied = result
        .err()
        .and_then(|e| e.decision().cloned())
        .expect("a deny");
    assert_eq!(denied.outcome, Outcome::Deny);
    assert!(denied.has_reason("POLICY_DENY"));
    let first = denied.reasons.first().expect("a reason");
    assert_eq!(first.policy_id.as_deref(), Some("no-external-email"));
    assert_eq!(first.message, "external recipients need approval");
}

#[tokio::test]
async fn does_not_run_the_tool_when_the_broker_is_unavailable() {
    let fake = Fake::new();
    fake.on_authorize(|_| Err(Status::unavailable("audit store is down")));
    let client = fake.client("t".to_owned()).await;

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    assert_eq!(
        result,
        Err(GuardError::Broker(Error::Unavailable {
            message: "audit store is down".into(),
            reason: None,
        }))
    );
}

#[tokio::test]
async fn does_not_run_the_tool_on_outcome_unspecified() {
    let fake = Fake::new();
    fake.on_authorize(|r| Ok(decision(r, proto::Outcome::Unspecified, vec![])));
    let client = fake.client("t".to_owned()).await;

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    assert!(
        matches!(&result, Err(GuardError::Broker(Error::Protocol(m))) if m.contains("OUTCOME_UNSPECIFIED")),
        "{result:?}"
    );
}

#[tokio::test]
async fn does_not_run_the_tool_on_an_outcome_it_does_not_know() {
    let fake = Fake::new();
    fake.on_authorize(|r| {
        let mut answer = decision(r, proto::Outcome::Allow, vec![]);
        answer.outcome = 9;
        Ok(answer)
    });
    let client = fake.client("t".to_owned()).await;

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    assert!(matches!(
        result,
        Err(GuardError::Broker(Error::Protocol(_)))
    ));
}

#[tokio::test]
async fn does_not_run_the_tool_on_an_allow_for_another_tool() {
    let fake = Fake::new();
    fake.on_authorize(|r| {
        let mut answer = decision(r, proto::Outcome::Allow, vec![]);
        answer.tool = "email.read".into();
        Ok(answer)
    });
    let client = fake.client("t".to_owned()).await;

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    assert!(
        matches!(&result, Err(GuardError::Broker(Error::Protocol(m))) if m.contains("email.read")),
        "{result:?}"
    );
}

#[tokio::test]
async fn does_not_run_the_tool_when_the_broker_is_unreachable() {
    // A port that was just free: nothing listens on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client =
        Client::connect_lazy(format!("http://{addr}"), "t".to_owned()).expect("valid endpoint");

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    let error = result
        .err()
        .and_then(|e| e.error().cloned())
        .expect("a broker error");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn connect_fails_with_a_transport_error_when_the_broker_is_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);

    let connected = Client::connect(format!("http://{addr}"), "t".to_owned()).await;

    assert!(
        matches!(connected, Err(Error::Transport(_))),
        "{connected:?}"
    );
}

#[tokio::test]
async fn does_not_run_the_tool_when_the_broker_does_not_answer_in_time() {
    let fake = Fake::new();
    fake.hang();
    let client = fake
        .client("t".to_owned())
        .await
        .with_timeout(Duration::from_millis(200));

    let (result, ran) = guarded(&client).await;

    assert!(!ran);
    let error = result
        .err()
        .and_then(|e| e.error().cloned())
        .expect("a broker error");
    assert!(matches!(error, Error::DeadlineExceeded { .. }), "{error:?}");
}
