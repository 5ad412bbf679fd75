//! Opening and closing sessions.

use std::time::{Duration, UNIX_EPOCH};

use broker_sdk::{proto, Error, SessionRequest, SessionState};
use tonic::Status;

use crate::fake::{session, Fake, Message};

#[tokio::test]
async fn open_session_sends_the_request_and_reads_the_session() {
    let fake = Fake::new();
    fake.on_open(|r| {
        let mut granted = session(r);
        granted.user = "alice".into();
        granted.tool_calls_used = 2;
        Ok(granted)
    });
    let client = fake.client("t".to_owned()).await;

    let opened = client
        .open_session(
            SessionRequest::new(["email.*", "calendar.read"])
                .ttl(Duration::from_secs(900))
                .max_tool_calls(5)
                .purpose("triage"),
        )
        .await
        .expect("open");

    let sent = fake
        .calls()
        .into_iter()
        .find_map(|c| match c.message {
            Message::Open(request) => Some(request),
            _ => None,
        })
        .expect("an OpenSession request");
    assert_eq!(
        sent,
        proto::OpenSessionRequest {
            tools: vec!["email.*".into(), "calendar.read".into()],
            ttl: Some(prost_types::Duration {
                seconds: 900,
                nanos: 0
            }),
            max_tool_calls: 5,
            purpose: "triage".into(),
            collections: vec![],
            parent_session_id: String::new(),
        }
    );
    assert_eq!(opened.session_id, "ses_0123456789abcdef0123456789abcdef");
    assert_eq!(opened.agent, "agent-1");
    assert_eq!(opened.user.as_deref(), Some("alice"));
    assert_eq!(opened.tools, ["email.*", "calendar.read"]);
    assert_eq!(opened.purpose, "triage");
    assert_eq!(
        opened.created_at,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
    assert_eq!(
        opened.expires_at,
        UNIX_EPOCH + Duration::from_secs(1_700_000_600)
    );
    assert_eq!(opened.remaining_tool_calls(), 3);
    assert_eq!(opened.state, SessionState::Open);
    assert!(opened.is_open());
}

#[tokio::test]
async fn close_session_sends_the_id_and_reads_the_closed_state() {
    let fake = Fake::new();
    let client = fake.client("t".to_owned()).await;

    let closed = client.close_session("ses_42").await.expect("close");

    assert!(matches!(
        fake.calls().pop().map(|c| c.message),
        Some(Message::Close(proto::CloseSessionRequest { session_id })) if session_id == "ses_42"
    ));
    assert_eq!(closed.session_id, "ses_42");
    assert_eq!(closed.state, SessionState::Closed);
    assert_eq!(closed.user, None);
}

#[tokio::test]
async fn closing_an_unknown_session_is_not_found() {
    let fake = Fake::new();
    fake.on_close(|r| {
        Err(Status::not_found(format!(
            "session `{}` does not exist",
            r.session_id
        )))
    });
    let client = fake.client("t".to_owned()).await;

    let result = client.close_session("ses_nope").await;

    assert_eq!(
        result,
        Err(Error::NotFound {
            message: "session `ses_nope` does not exist".into(),
            reason: None
        })
    );
}

#[tokio::test]
async fn a_session_without_a_state_or_expiry_is_a_protocol_error() {
    let fake = Fake::new();
    fake.on_open(|r| {
        let mut granted = session(r);
        granted.state = proto::SessionState::Unspecified.into();
        Ok(granted)
    });
    let client = fake.client("t".to_owned()).await;
    let unspecified = client.open_session(SessionRequest::new(["email.*"])).await;
    assert!(
        matches!(&unspecified, Err(Error::Protocol(m)) if m.contains("SESSION_STATE_UNSPECIFIED")),
        "{unspecified:?}"
    );

    fake.on_open(|r| {
        let mut granted = session(r);
        granted.expires_at = None;
        Ok(granted)
    });
    let no_expiry = client.open_session(SessionRequest::new(["email.*"])).await;
    assert_eq!(
        no_expiry,
        Err(Error::Protocol("the broker sent no `expires_at`".into()))
    );
}
