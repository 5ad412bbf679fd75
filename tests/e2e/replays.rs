//! A retried `call_id` replays its earlier answer only for the same session, tool and (typed) arguments,
//! and only while that answer still holds: after the session closed or expired, or when the arguments
//! would not type-check, the retry gets the DENY a fresh call gets. Every answer is in the trail: a
//! replay as `TOOL_CALL_REPLAYED` naming the decision it repeats, a DENY in its place naming it too.

use std::time::Duration;

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{proto, AuditEvent, AuditFilter, Client, Outcome, SessionRequest};
use serde_json::json;

async fn session(c: &Client, scopes: &[&str], max_calls: u32) -> String {
    c.open_session(
        SessionRequest::new(scopes.iter().copied())
            .max_tool_calls(max_calls)
            .purpose("replays"),
    )
    .await
    .unwrap()
    .session_id
}

async fn events(h: &Harness, session: &str) -> Vec<AuditEvent> {
    h.auditor()
        .await
        .list_events(AuditFilter::new().session_id(session).page_size(1000))
        .await
        .unwrap()
        .events
}

fn replay_of(e: &AuditEvent) -> Option<String> {
    let detail: serde_json::Value = serde_json::from_str(e.detail_json.as_deref()?).ok()?;
    detail.get("replay_of")?.as_str().map(str::to_owned)
}

/// AuthorizeToolCall with raw argument text (`9e2`: the SDK writes numbers as serde_json does).
async fn authorize_raw(
    h: &Harness,
    session_id: &str,
    tool: &str,
    arguments_json: &str,
    call_id: &str,
) -> Result<proto::Decision, tonic::Status> {
    let mut req = tonic::Request::new(proto::AuthorizeToolCallRequest {
        session_id: session_id.to_owned(),
        tool: tool.to_owned(),
        arguments_json: arguments_json.to_owned(),
        call_id: call_id.to_owned(),
    });
    let token = h.token("support-agent", &[Role::Agent], Some("carol"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    proto::agent_service_client::AgentServiceClient::connect(h.endpoint())
        .await
        .unwrap()
        .authorize_tool_call(req)
        .await
        .map(tonic::Response::into_inner)
}

async fn a_call_id_replays_only_for_the_same_tool(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = session(&agent, &["web.search"], 10).await;
    let args = json!({"query": "q"});
    let first = agent
        .authorize_with_call_id(&s, "web.search", &args, "call-x")
        .await
        .unwrap();
    assert!(first.is_allowed(), "{first:?}");
    // The same call id and arguments for another tool: out of scope, one that needs approval, one the
    // catalogue does not know. None of them is the call that was allowed.
    for tool in ["email.send", "shell.exec", "no.such.tool", "file.read"] {
        let err = agent
            .authorize_with_call_id(&s, tool, &args, "call-x")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{tool}: {err:?}");
        assert_eq!(err.reason(), Some("CALL_ID_REUSED"), "{tool}");
    }
    let allowed: Vec<_> = events(&h, &s)
        .await
        .into_iter()
        .filter(|e| e.outcome == Some(Outcome::Allow))
        .collect();
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0].tool.as_deref(), Some("web.search"));
}
both!(a_call_id_replays_only_for_the_same_tool);

async fn a_call_id_replays_only_with_the_same_arguments(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = session(&agent, &["web.search"], 10).await;
    agent
        .authorize_with_call_id(&s, "web.search", &json!({"query": "q"}), "call-x")
        .await
        .unwrap();
    let err = agent
        .authorize_with_call_id(&s, "web.search", &json!({"query": "other"}), "call-x")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some("CALL_ID_REUSED"), "{err:?}");
}
both!(a_call_id_replays_only_with_the_same_arguments);

async fn a_call_id_of_another_session_is_a_new_call(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let (a, b) = (
        session(&agent, &["web.search"], 10).await,
        session(&agent, &["web.search"], 10).await,
    );
    let args = json!({"query": "q"});
    let in_a = agent
        .authorize_with_call_id(&a, "web.search", &args, "call-x")
        .await
        .unwrap();
    let in_b = agent
        .authorize_with_call_id(&b, "web.search", &args, "call-x")
        .await
        .unwrap();
    assert!(in_b.is_allowed());
    assert_ne!(
        in_a.decision_id, in_b.decision_id,
        "decided in its own session"
    );
    let decided: Vec<_> = events(&h, &b)
        .await
        .into_iter()
        .filter(|e| e.kind == "TOOL_CALL_DECIDED")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(
        decided[0].decision_id.as_deref(),
        Some(in_b.decision_id.as_str())
    );
}
both!(a_call_id_of_another_session_is_a_new_call);

async fn every_replay_is_recorded_and_spends_nothing(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = session(&agent, &["web.search"], 2).await;
    let args = json!({"query": "q"});
    let first = agent
        .authorize_with_call_id(&s, "web.search", &args, "call-x")
        .await
        .unwrap();
    for _ in 0..3 {
        let again = agent
            .authorize_with_call_id(&s, "web.search", &args, "call-x")
            .await
            .unwrap();
        assert_eq!(again, first, "the same answer, its id and time included");
    }
    let trail = events(&h, &s).await;
    let replays: Vec<_> = trail
        .iter()
        .filter(|e| e.kind == "TOOL_CALL_REPLAYED")
        .collect();
    assert_eq!(replays.len(), 3, "{trail:?}");
    for r in &replays {
        assert_eq!(r.decision_id.as_deref(), Some(first.decision_id.as_str()));
        assert_eq!(replay_of(r).as_deref(), Some(first.decision_id.as_str()));
        assert_eq!(r.outcome, Some(Outcome::Allow));
        assert_eq!(
            r.arguments_redacted_json, "",
            "arguments are not stored again"
        );
    }
    // One tool call spent: one more is allowed, then the budget of 2 is gone.
    assert!(agent
        .authorize(&s, "web.search", &json!({"query": "b"}))
        .await
        .unwrap()
        .is_allowed());
    assert!(agent
        .authorize(&s, "web.search", &json!({"query": "c"}))
        .await
        .unwrap()
        .has_reason("BUDGET_EXHAUSTED"));
    // The call that spent the last unit still replays.
    assert!(agent
        .authorize_with_call_id(&s, "web.search", &args, "call-x")
        .await
        .unwrap()
        .is_allowed());
    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(every_replay_is_recorded_and_spends_nothing);

async fn no_replay_after_the_session_closed(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = session(&agent, &["web.search"], 100).await;
    let args = json!({"query": "q"});
    let first = agent
        .authorize_with_call_id(&s, "web.search", &args, "call-x")
        .await
        .unwrap();
    assert!(first.is_allowed());
    agent.close_session(&s).await.unwrap();
    for _ in 0..5 {
        let d = agent
            .authorize_with_call_id(&s, "web.search", &args, "call-x")
            .await
            .unwrap();
        assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
        assert!(d.has_reason("SESSION_CLOSED"), "{d:?}");
        assert_ne!(d.decision_id, first.decision_id);
    }
    let superseded: Vec<_> = events(&h, &s)
        .await
        .into_iter()
        .filter(|e| replay_of(e).as_deref() == Some(first.decision_id.as_str()))
        .collect();
    assert_eq!(
        superseded.len(),
        5,
        "each DENY names the decision it stands in for"
    );
    assert!(superseded
        .iter()
        .all(|e| e.kind == "TOOL_CALL_DECIDED" && e.outcome == Some(Outcome::Deny)));
}
both!(no_replay_after_the_session_closed);

async fn no_replay_after_the_session_expired(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]).ttl(Duration::from_secs(60)))
        .await
        .unwrap()
        .session_id;
    let args = json!({"query": "q"});
    assert!(agent
        .authorize_with_call_id(&s, "web.search", &args, "call-x")
        .await
        .unwrap()
        .is_allowed());
    h.clock.advance(Duration::from_secs(61));
    let d = agent
        .authorize_with_call_id(&s, "web.search", &args, "call-x")
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert!(d.has_reason("SESSION_EXPIRED"), "{d:?}");
}
both!(no_replay_after_the_session_expired);

async fn a_retry_in_another_number_form_is_typed_before_any_replay(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    // A budget of one: the refund spends it, so the retries also meet an exhausted session.
    for max_calls in [10, 1] {
        let s = session(&agent, &["payments.refund"], max_calls).await;
        let call_id = format!("refund-{max_calls}");
        let integer = r#"{"payment_id": "pay_1", "amount": 900, "currency": "EUR"}"#;
        let first = authorize_raw(&h, &s, "payments.refund", integer, &call_id)
            .await
            .unwrap();
        assert_eq!(first.outcome, proto::Outcome::Allow as i32, "{first:?}");
        // One digest for all of these (RFC 8785 writes each as 900), but none is an integer.
        for amount in ["900.0", "9e2", "900.00000000000001", "9.0E2"] {
            let text =
                format!(r#"{{"payment_id": "pay_1", "amount": {amount}, "currency": "EUR"}}"#);
            let d = authorize_raw(&h, &s, "payments.refund", &text, &call_id)
                .await
                .unwrap();
            assert_eq!(d.outcome, proto::Outcome::Deny as i32, "{amount}: {d:?}");
            assert!(
                d.reasons.iter().any(|r| r.code == "INVALID_ARGUMENTS"),
                "{amount}: {d:?}"
            );
        }
        // The integer form still replays.
        let again = authorize_raw(&h, &s, "payments.refund", integer, &call_id)
            .await
            .unwrap();
        assert_eq!(again.decision_id, first.decision_id);
    }
}
both!(a_retry_in_another_number_form_is_typed_before_any_replay);

async fn a_pending_call_replays_its_approval(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = session(&agent, &["payments.refund"], 10).await;
    let args = json!({"payment_id": "pay_1", "amount": 5000, "currency": "EUR"});
    let first = agent
        .authorize_with_call_id(&s, "payments.refund", &args, "refund-x")
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::PendingApproval, "{first:?}");
    let again = agent
        .authorize_with_call_id(&s, "payments.refund", &args, "refund-x")
        .await
        .unwrap();
    assert_eq!(again, first, "the same approval, not a second one");
    let replayed = events(&h, &s)
        .await
        .into_iter()
        .filter(|e| e.kind == "TOOL_CALL_REPLAYED")
        .count();
    assert_eq!(replayed, 1);
}
both!(a_pending_call_replays_its_approval);
