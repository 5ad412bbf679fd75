//! The bearer token travels on every call, freshly asked from the token source.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker_sdk::{Error, SessionRequest, SharedToken, TokenFn};
use serde_json::json;

use crate::fake::Fake;

#[tokio::test]
async fn the_bearer_token_is_sent_on_every_call() {
    let fake = Fake::new();
    let client = fake.client("agent-token".to_owned()).await;

    let session = client
        .open_session(SessionRequest::new(["email.*"]))
        .await
        .expect("open");
    client
        .authorize(&session.session_id, "email.send", &json!({}))
        .await
        .expect("authorize");
    client
        .close_session(&session.session_id)
        .await
        .expect("close");

    let headers: Vec<_> = fake.calls().into_iter().map(|c| c.authorization).collect();
    assert_eq!(headers, vec![Some("Bearer agent-token".to_owned()); 3]);
}

#[tokio::test]
async fn a_rotated_token_is_used_on_the_next_call() {
    let fake = Fake::new();
    let tokens = SharedToken::new("first");
    let client = fake.client(tokens.clone()).await;

    client
        .authorize("ses_1", "email.send", &json!({}))
        .await
        .expect("first call");
    tokens.set("second");
    client
        .authorize("ses_1", "email.send", &json!({}))
        .await
        .expect("second call");

    let headers: Vec<_> = fake.calls().into_iter().map(|c| c.authorization).collect();
    assert_eq!(
        headers,
        vec![
            Some("Bearer first".to_owned()),
            Some("Bearer second".to_owned())
        ]
    );
}

#[tokio::test]
async fn the_token_source_is_asked_before_each_call() {
    let fake = Fake::new();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let tokens = TokenFn::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("tok-{n}"))
    });
    let client = fake.client(tokens).await;

    for _ in 0..3 {
        client
            .authorize("ses_1", "email.send", &json!({}))
            .await
            .expect("authorize");
    }

    assert_eq!(asked.load(Ordering::SeqCst), 3);
    let headers: Vec<_> = fake
        .calls()
        .into_iter()
        .filter_map(|c| c.authorization)
        .collect();
    assert_eq!(headers, ["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"]);
}

#[tokio::test]
async fn a_failing_token_source_sends_nothing_and_runs_nothing() {
    let fake = Fake::new();
    let tokens = TokenFn::new(|| Err(Error::Token("the token file is missing".into())));
    let client = fake.client(tokens).await;

    let authorized = client.authorize("ses_1", "email.send", &json!({})).await;
    assert_eq!(
        authorized,
        Err(Error::Token("the token file is missing".into()))
    );

    let mut ran = false;
    let guarded = client
        .guard("ses_1", "email.send", &json!({}), || async { ran = true })
        .await;
    assert!(matches!(
        guarded,
        Err(broker_sdk::GuardError::Broker(Error::Token(_)))
    ));
    assert!(!ran);
    assert!(fake.calls().is_empty(), "nothing reached the broker");
}

#[tokio::test]
async fn the_deadline_is_sent_as_grpc_timeout() {
    let fake = Fake::new();
    let client = fake
        .client("t".to_owned())
        .await
        .with_timeout(Duration::from_secs(3));

    client
        .authorize("ses_1", "email.send", &json!({}))
        .await
        .expect("authorize");

    let timeouts: Vec<_> = fake.calls().into_iter().map(|c| c.grpc_timeout).collect();
    assert_eq!(timeouts, vec![Some("3000000u".to_owned())]);
}
