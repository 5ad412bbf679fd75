//! What `authorize` sends and how it reads the answer.

use std::time::{Duration, UNIX_EPOCH};

use broker_sdk::{proto, Outcome};
use serde_json::json;

use crate::fake::{decision, reason, Fake};

fn is_call_id(id: &str) -> bool {
    id.strip_prefix("call_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[tokio::test]
async fn authorize_sends_a_fresh_unique_call_id_each_time() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;

    let first = client
        .authorize("ses_1", "email.send", &json!({}))
        .await
        .expect("first");
    let second = client
        .authorize("ses_1", "email.send", &json!({}))
        .await
        .expect("second");

    let sent: Vec<_> = fake
        .authorizations()
        .into_iter()
        .map(|r| r.call_id)
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|id| is_call_id(id)), "{sent:?}");
    assert_ne!(sent.first(), sent.get(1));
    assert_eq!(vec![first.call_id, second.call_id], sent);
}

#[tokio::test]
async fn authorize_with_call_id_sends_the_given_key_on_every_retry() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;

    for _ in 0..2 {
        let decision = client
            .authorize_with_call_id("ses_1", "email.send", &json!({"n": 1}), "retry-key-7")
            .await
            .expect("authorize");
        assert_eq!(decision.call_id, "retry-key-7");
    }

    let sent: Vec<_> = fake
        .authorizations()
        .into_iter()
        .map(|r| r.call_id)
        .collect();
    assert_eq!(sent, ["retry-key-7", "retry-key-7"]);
}

#[tokio::test]
async fn arguments_travel_as_their_exact_json_text() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;
    let args = json!({
        "amount": u64::MAX,
        "negative": i64::MIN,
        "ratio": 0.1,
        "note": "caf\u{e9} \"quoted\" \n",
        "nested": {"list": [1, null, true]}
    });

    client
        .authorize("ses_1", "payments.send", &args)
        .await
        .expect("authorize");

    let sent = fake.authorizations().pop().expect("one request");
    assert_eq!(sent.session_id, "ses_1");
    assert_eq!(sent.tool, "payments.send");
    assert_eq!(
        sent.arguments_json,
        serde_json::to_string(&args).expect("encode")
    );
    assert!(
        sent.arguments_json.contains("18446744073709551615"),
        "{}",
        sent.arguments_json
    );
    assert!(sent.arguments_json.contains("-9223372036854775808"));
    let back: serde_json::Value = serde_json::from_str(&sent.arguments_json).expect("valid JSON");
    assert_eq!(back, args);
    assert_eq!(
        back.get("amount").and_then(serde_json::Value::as_u64),
        Some(u64::MAX)
    );
}

#[tokio::test]
async fn a_deny_is_an_answer_with_every_field_read() {
    let fake = Fake::new();
    fake.on_authorize(|r| {
        Ok(decision(
            r,
            proto::Outcome::Deny,
            vec![
                reason(
                    "NOT_IN_SESSION_SCOPE",
                    "",
                    "`payments.send` is not in the session's tools",
                ),
                reason("BUDGET_EXHAUSTED", "", "10 of 10 calls used"),
            ],
        ))
    });
    let client = fake.client("t".to_owned()).await;

    let decision = client
        .authorize_with_call_id("ses_1", "payments.send", &json!({}), "call-1")
        .await
        .expect("a deny is not an error");

    assert_eq!(decision.outcome, Outcome::Deny);
    assert!(!decision.is_allowed());
    assert!(decision.has_reason("BUDGET_EXHAUSTED"));
    assert!(!decision.has_reason("POLICY_DENY"));
    assert_eq!(decision.reasons.len(), 2);
    assert!(decision.reasons.iter().all(|r| r.policy_id.is_none()));
    assert_eq!(decision.decision_id, "dec_fedcba9876543210fedcba9876543210");
    assert_eq!(decision.policy_version, "sha256:abc");
    assert_eq!(decision.session_id, "ses_1");
    assert_eq!(decision.tool, "payments.send");
    assert_eq!(decision.call_id, "call-1");
    assert_eq!(
        decision.decided_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_100))
    );
}
