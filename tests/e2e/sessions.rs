//! Session lifecycle: ownership, close, expiry, and what opening refuses.

use std::time::Duration;

use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{Outcome, SessionRequest, SessionState};
use serde_json::json;

async fn another_agent_cannot_use_or_close_a_session(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let owner = h.agent("agent-a", Some("alice")).await;
    let thief = h.agent("agent-b", Some("alice")).await;
    let s = owner
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let d = thief
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.has_reason("SESSION_NOT_OWNED"), "{d:?}");
    // The same agent acting for another user is another caller too.
    let other_user = h.agent("agent-a", Some("mallory")).await;
    assert!(other_user
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap()
        .has_reason("SESSION_NOT_OWNED"));
    assert_eq!(
        thief.close_session(&s.session_id).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // A decision made for alice cannot be replayed by the same agent acting for mallory.
    let args = json!({"query": "alice's"});
    let mine = owner
        .authorize_with_call_id(&s.session_id, "web.search", &args, "call-1")
        .await
        .unwrap();
    assert!(mine.is_allowed());
    let replayed = other_user
        .authorize_with_call_id(&s.session_id, "web.search", &args, "call-1")
        .await
        .unwrap();
    assert!(
        replayed.has_reason("SESSION_NOT_OWNED") && replayed.decision_id != mine.decision_id,
        "{replayed:?}"
    );
    // The others' attempts are not remembered against the session, so they cannot poison its call ids.
    assert!(owner
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap()
        .is_allowed());
    let missing = owner
        .authorize(
            "ses_00000000000000000000000000000000",
            "web.search",
            &json!({"query": "x"}),
        )
        .await
        .unwrap();
    assert!(missing.has_reason("SESSION_NOT_FOUND"), "{missing:?}");
}
both!(another_agent_cannot_use_or_close_a_session);

async fn closed_and_expired_sessions_deny(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("agent-a", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let closed = agent.close_session(&s.session_id).await.unwrap();
    assert_eq!(closed.state, SessionState::Closed);
    let d = agent
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap();
    assert!(
        d.has_reason("SESSION_CLOSED") && d.outcome == Outcome::Deny,
        "{d:?}"
    );

    let s = agent
        .open_session(SessionRequest::new(["web.search"]).ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(agent
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap()
        .is_allowed());
    h.clock.advance(Duration::from_secs(61));
    let d = agent
        .authorize(&s.session_id, "web.search", &json!({"query": "x"}))
        .await
        .unwrap();
    assert!(
        d.has_reason("SESSION_EXPIRED") && d.outcome == Outcome::Deny,
        "{d:?}"
    );
}
both!(closed_and_expired_sessions_deny);

async fn opening_refuses_bad_requests_naming_the_field(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("agent-a", None).await;
    let cases = [
        (SessionRequest::new(Vec::<String>::new()), "tools"),
        (SessionRequest::new(["Email.Send"]), "tools"),
        (SessionRequest::new(["db.*"]), "tools"),
        (
            SessionRequest::new(["web.search"]).ttl(Duration::from_secs(365 * 24 * 3600)),
            "ttl",
        ),
        (
            SessionRequest::new(["web.search"]).max_tool_calls(10_000_000),
            "max_tool_calls",
        ),
    ];
    for (req, field) in cases {
        let err = agent.open_session(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let ok = agent
        .open_session(SessionRequest::new(["email.*", "*"]).max_tool_calls(5))
        .await
        .unwrap();
    assert_eq!(ok.max_tool_calls, 5);
    assert_eq!(ok.tools, ["email.*", "*"]);
}
both!(opening_refuses_bad_requests_naming_the_field);

async fn sessions_nest_at_most_32_deep(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("agent-a", None).await;
    let mut parent = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap()
        .session_id;
    // Every call checks the session's ancestors against the kill switches: the chain stays short.
    for _ in 0..32 {
        parent = agent
            .open_session(SessionRequest::new(["web.search"]).parent(parent))
            .await
            .unwrap()
            .session_id;
    }
    let err = agent
        .open_session(SessionRequest::new(["web.search"]).parent(parent.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("parent_session_id") && err.message().contains("32"),
        "{}",
        err.message()
    );
    let d = agent
        .authorize(&parent, "web.search", &json!({"query": "deep"}))
        .await
        .unwrap();
    assert!(d.is_allowed(), "{d:?}");
}
both!(sessions_nest_at_most_32_deep);
