//! `await_approval` waits for approvers in one call; `guard_with_approval` waits up to its timeout and
//! runs the tool only on a final ALLOW for its own call; `guard` never waits and never runs the tool on
//! PENDING_APPROVAL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_sdk::{proto, ApprovalWait, Client, Error, GuardError, Outcome};
use serde_json::json;
use tonic::Status;

use crate::fake::{awaited, decision, pending, Fake, Message};

const APPROVAL: &str = "apr_0123456789abcdef0123456789abcdef";

/// A fake whose first answer is PENDING_APPROVAL for [`APPROVAL`].
fn pending_fake() -> Fake {
    let fake = Fake::new();
    fake.on_authorize(|r| Ok(pending(r, APPROVAL)));
    fake
}

/// What `on_pending` saw: the approval id, and how many `AwaitApproval` calls preceded it.
type Seen = Arc<Mutex<Vec<(Option<String>, usize)>>>;

/// Guards a refund that records whether it ran, waiting up to `timeout`.
async fn guarded(
    fake: &Fake,
    client: &Client,
    timeout: Duration,
) -> (Result<&'static str, GuardError>, bool, Seen) {
    let seen = Seen::default();
    let wait = ApprovalWait::up_to(timeout).on_pending({
        let seen = Arc::clone(&seen);
        let fake = fake.clone();
        move |decision| {
            seen.lock()
                .expect("seen")
                .push((decision.approval_id.clone(), fake.awaits().len()));
        }
    });
    let mut ran = false;
    let result = client
        .guard_with_approval(
            "ses_1",
            "payments.refund",
            &json!({"payment_id": "pay_123", "amount": 5000}),
            wait,
            || async {
                ran = true;
                "refunded"
            },
        )
        .await;
    (result, ran, seen)
}

/// The `AwaitApproval` requests received so far.
fn awaits(fake: &Fake) -> Vec<proto::AwaitApprovalRequest> {
    fake.awaits()
        .into_iter()
        .filter_map(|call| match call.message {
            Message::Await(request) => Some(request),
            _ => None,
        })
        .collect()
}

/// The wait each `AwaitApproval` asked for.
fn waits(fake: &Fake) -> Vec<Duration> {
    awaits(fake)
        .into_iter()
        .map(|r| Duration::try_from(r.timeout.expect("a timeout")).expect("a valid timeout"))
        .collect()
}

#[tokio::test]
async fn await_approval_sends_the_id_and_the_wait_and_reads_the_final_decision() {
    let fake = Fake::new();
    fake.on_await_script(vec![Ok(proto::Outcome::Allow)]);
    let client = fake
        .client("agent-token".to_owned())
        .await
        .with_timeout(Duration::from_secs(2));

    let decision = client
        .await_approval(APPROVAL, Duration::from_secs(5))
        .await
        .expect("a decision");

    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.authorization.as_deref(), Some("Bearer agent-token"));
    assert!(
        matches!(
            &call.message,
            Message::Await(proto::AwaitApprovalRequest {
                approval_id,
                timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            }) if approval_id == APPROVAL
        ),
        "{:?}",
        call.message
    );
    assert_eq!(
        call.grpc_timeout.as_deref(),
        Some("7000000u"),
        "the wait plus the per-RPC timeout"
    );
    assert_eq!(decision.outcome, Outcome::Allow);
    assert_eq!(decision.approval_id.as_deref(), Some(APPROVAL));
    assert!(decision.has_reason("APPROVAL_GRANTED"));
    assert_eq!(decision.decision_id, "dec_fedcba9876543210fedcba9876543210");
}

#[tokio::test]
async fn await_approval_outlives_the_per_rpc_timeout_when_the_broker_waits() {
    let fake = Fake::new();
    fake.set_max_wait(Duration::from_secs(5));
    let client = fake
        .client("t".to_owned())
        .await
        .with_timeout(Duration::from_millis(200));
    let started = Instant::now();

    let decision = client
        .await_approval(APPROVAL, Duration::from_millis(600))
        .await
        .expect("still pending is an answer, not a deadline");

    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(decision.is_pending());
    assert_eq!(decision.outcome, Outcome::PendingApproval);
    assert_eq!(decision.approval_id.as_deref(), Some(APPROVAL));
    assert!(decision.has_reason("APPROVAL_REQUIRED"));
    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.grpc_timeout.as_deref(), Some("800000u"));
}

#[tokio::test]
async fn await_approval_refuses_an_answer_about_another_approval() {
    let fake = Fake::new();
    fake.on_await(|_, call| Ok(awaited(call, "apr_other", proto::Outcome::Allow)));
    let client = fake.client("t".to_owned()).await;

    let decision = client.await_approval(APPROVAL, Duration::ZERO).await;

    assert!(
        matches!(&decision, Err(Error::Protocol(m)) if m.contains("apr_other")),
        "{decision:?}"
    );
}

#[tokio::test]
async fn await_approval_of_an_unknown_approval_is_not_found() {
    let fake = Fake::new();
    fake.on_await(|r, _| {
        Err(Status::not_found(format!(
            "no approval `{}`",
            r.approval_id
        )))
    });
    let client = fake.client("t".to_owned()).await;

    let decision = client.await_approval("apr_nope", Duration::ZERO).await;

    assert_eq!(
        decision,
        Err(Error::NotFound {
            message: "no approval `apr_nope`".into(),
            reason: None,
        })
    );
}

#[tokio::test]
async fn guard_never_runs_the_tool_on_pending_approval_and_does_not_wait() {
    let fake = pending_fake();
    let client = fake.client("t".to_owned()).await;
    let mut ran = false;

    let result = client
        .guard(
            "ses_1",
            "payments.refund",
            &json!({"amount": 5000}),
            || async {
                ran = true;
            },
        )
        .await;

    assert!(!ran);
    let error = result.expect_err("pending is not an allow");
    assert!(
        matches!(&error, GuardError::PendingApproval(d) if d.is_pending()),
        "{error:?}"
    );
    assert_eq!(error.approval_id(), Some(APPROVAL));
    assert!(error
        .decision()
        .is_some_and(|d| d.has_reason("APPROVAL_REQUIRED")));
    assert!(fake.awaits().is_empty(), "guard does not wait");
}

#[tokio::test]
async fn a_pending_decision_without_an_approval_id_is_a_protocol_error() {
    let fake = Fake::new();
    fake.on_authorize(|r| Ok(pending(r, "")));
    let client = fake.client("t".to_owned()).await;

    let (result, ran, seen) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert!(!ran);
    assert!(
        matches!(&result, Err(GuardError::Broker(Error::Protocol(m))) if m.contains("approval id")),
        "{result:?}"
    );
    assert!(seen.lock().expect("seen").is_empty());
    assert!(fake.awaits().is_empty());
}

#[tokio::test]
async fn guard_with_approval_runs_the_tool_after_a_later_allow() {
    let fake = pending_fake();
    fake.on_await_script(vec![
        Ok(proto::Outcome::PendingApproval),
        Ok(proto::Outcome::PendingApproval),
        Ok(proto::Outcome::Allow),
    ]);
    let client = fake.client("t".to_owned()).await;
    let timeout = Duration::from_secs(5);

    let (result, ran, seen) = guarded(&fake, &client, timeout).await;

    assert_eq!(result, Ok("refunded"));
    assert!(ran);
    assert_eq!(
        *seen.lock().expect("seen"),
        [(Some(APPROVAL.to_owned()), 0)],
        "on_pending is called once, with the approval id, before waiting"
    );
    let sent = awaits(&fake);
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|r| r.approval_id == APPROVAL), "{sent:?}");
    let waits = waits(&fake);
    assert!(
        waits.iter().all(|w| *w <= timeout) && waits.windows(2).all(|w| w[1] <= w[0]),
        "each call waits at most the time left: {waits:?}"
    );
    assert_eq!(fake.authorizations().len(), 1, "asked once");
}

#[tokio::test]
async fn guard_with_approval_does_not_run_the_tool_when_approvers_deny() {
    let fake = pending_fake();
    fake.on_await_script(vec![
        Ok(proto::Outcome::PendingApproval),
        Ok(proto::Outcome::Deny),
    ]);
    let client = fake.client("t".to_owned()).await;

    let (result, ran, seen) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert!(!ran);
    let denied = result
        .err()
        .and_then(|e| match e {
            GuardError::Denied(d) => Some(d),
            _ => None,
        })
        .expect("a deny");
    assert!(denied.has_reason("APPROVAL_DENIED"));
    assert_eq!(seen.lock().expect("seen").len(), 1);
    assert_eq!(fake.awaits().len(), 2);
}

#[tokio::test]
async fn guard_with_approval_does_not_run_the_tool_when_nobody_decides_in_time() {
    let fake = pending_fake();
    let client = fake.client("t".to_owned()).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();

    let (result, ran, seen) = guarded(&fake, &client, timeout).await;

    let elapsed = started.elapsed();
    assert!(!ran);
    let error = result.expect_err("still pending");
    assert!(
        matches!(&error, GuardError::PendingApproval(d) if d.is_pending()),
        "{error:?}"
    );
    assert_eq!(error.approval_id(), Some(APPROVAL));
    assert_eq!(seen.lock().expect("seen").len(), 1);
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let waits = waits(&fake);
    assert!(!waits.is_empty());
    assert!(waits.iter().all(|w| *w <= timeout), "{waits:?}");
}

#[tokio::test]
async fn guard_with_approval_does_not_ask_twice_within_the_minimum_interval() {
    let fake = pending_fake();
    // A broker that answers PENDING_APPROVAL at once.
    fake.set_max_wait(Duration::ZERO);
    let client = fake.client("t".to_owned()).await;

    let (result, ran, _) = guarded(&fake, &client, Duration::from_millis(500)).await;

    assert!(!ran);
    assert!(matches!(result, Err(GuardError::PendingApproval(_))));
    let calls = fake.awaits().len();
    let most = 500 / broker_sdk::AWAIT_MIN_INTERVAL.as_millis() + 1;
    assert!(
        (1..=most as usize).contains(&calls),
        "{calls} calls in 500 ms"
    );
}

#[tokio::test]
async fn guard_with_approval_with_no_time_to_wait_does_not_wait() {
    let fake = pending_fake();
    let client = fake.client("t".to_owned()).await;

    let (result, ran, seen) = guarded(&fake, &client, Duration::ZERO).await;

    assert!(!ran);
    assert!(matches!(result, Err(GuardError::PendingApproval(_))));
    assert_eq!(seen.lock().expect("seen").len(), 1);
    assert!(fake.awaits().is_empty());
}

#[tokio::test]
async fn guard_with_approval_does_not_run_the_tool_on_an_error_while_waiting() {
    let fake = pending_fake();
    fake.on_await_script(vec![
        Ok(proto::Outcome::PendingApproval),
        Err(Status::unavailable("approval store is down")),
        Ok(proto::Outcome::Allow),
    ]);
    let client = fake.client("t".to_owned()).await;

    let (result, ran, _) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert!(!ran);
    assert_eq!(
        result,
        Err(GuardError::Broker(Error::Unavailable {
            message: "approval store is down".into(),
            reason: None,
        }))
    );
    assert_eq!(fake.awaits().len(), 2, "no retry after an error");
}

#[tokio::test]
async fn guard_with_approval_does_not_run_the_tool_on_an_allow_for_another_call() {
    let fake = pending_fake();
    fake.on_await(|r, call| {
        let mut allow = awaited(call, &r.approval_id, proto::Outcome::Allow);
        allow.call_id = "call_someone_else".into();
        Ok(allow)
    });
    let client = fake.client("t".to_owned()).await;

    let (result, ran, _) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert!(!ran);
    assert!(
        matches!(&result, Err(GuardError::Broker(Error::Protocol(m))) if m.contains("call_someone_else")),
        "{result:?}"
    );
}

#[tokio::test]
async fn guard_with_approval_does_not_run_the_tool_on_an_allow_for_another_approval() {
    let fake = pending_fake();
    fake.on_await(|_, call| Ok(awaited(call, "apr_other", proto::Outcome::Allow)));
    let client = fake.client("t".to_owned()).await;

    let (result, ran, _) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert!(!ran);
    assert!(
        matches!(&result, Err(GuardError::Broker(Error::Protocol(m))) if m.contains("apr_other")),
        "{result:?}"
    );
}

#[tokio::test]
async fn guard_with_approval_does_not_wait_on_a_final_first_answer() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;

    let (allowed, ran, seen) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert_eq!(allowed, Ok("refunded"));
    assert!(ran);
    assert!(seen.lock().expect("seen").is_empty());

    fake.on_authorize(|r| Ok(decision(r, proto::Outcome::Deny, vec![])));
    let (denied, ran, seen) = guarded(&fake, &client, Duration::from_secs(5)).await;

    assert!(!ran);
    assert!(matches!(denied, Err(GuardError::Denied(_))));
    assert!(seen.lock().expect("seen").is_empty());
    assert!(fake.awaits().is_empty());
}
