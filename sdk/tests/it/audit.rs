//! `AuditClient` sends the filter and reads pages and chain reports.

use std::time::{Duration, UNIX_EPOCH};

use broker_sdk::{proto, AuditFilter, ChainBreak, Error, Outcome};

use crate::fake::{reason, timestamp, Fake, Message};

#[tokio::test]
async fn list_events_sends_the_filter_and_reads_the_page() {
    let fake = Fake::new();
    fake.on_list(|_| {
        Ok(proto::ListAuditEventsResponse {
            events: vec![proto::AuditEvent {
                seq: 7,
                event_id: "evt_1".into(),
                time: timestamp(1_700_000_200),
                kind: "TOOL_CALL_DECIDED".into(),
                decision_id: "dec_1".into(),
                agent: "agent-1".into(),
                user: "alice".into(),
                session_id: "ses_1".into(),
                tool: "email.send".into(),
                outcome: proto::Outcome::Deny.into(),
                reasons: vec![reason("POLICY_DENY", "p1", "no")],
                policy_version: "sha256:abc".into(),
                arguments_digest: "d".into(),
                arguments_redacted_json: r#"{"password":"[REDACTED]"}"#.into(),
                call_id: "call_1".into(),
                prev_hash: "h6".into(),
                hash: "h7".into(),
                ..Default::default()
            }],
            next_page_token: "page-2".into(),
        })
    });
    let audit = fake.audit_client("auditor-token".to_owned()).await;
    let since = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    let page = audit
        .list_events(
            AuditFilter::new()
                .session_id("ses_1")
                .tool("email.send")
                .outcome(Outcome::Deny)
                .since(since)
                .page_size(50)
                .page_token("page-1"),
        )
        .await
        .expect("list");

    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.authorization.as_deref(), Some("Bearer auditor-token"));
    assert!(matches!(
        call.message,
        Message::List(proto::ListAuditEventsRequest {
            ref session_id, ref agent, ref tool, outcome: 2, since: Some(_), until: None,
            page_size: 50, ref page_token,
        }) if session_id == "ses_1" && agent.is_empty() && tool == "email.send" && page_token == "page-1"
    ));
    assert_eq!(page.next_page_token.as_deref(), Some("page-2"));
    let event = page.events.first().expect("one event");
    assert_eq!(event.seq, 7);
    assert_eq!(event.outcome, Some(Outcome::Deny));
    assert_eq!(event.user.as_deref(), Some("alice"));
    assert_eq!(event.decision_id.as_deref(), Some("dec_1"));
    assert_eq!(event.time, UNIX_EPOCH + Duration::from_secs(1_700_000_200));
    assert_eq!(
        event.reasons.first().and_then(|r| r.policy_id.as_deref()),
        Some("p1")
    );
}

#[tokio::test]
async fn verify_chain_reports_the_first_break() {
    let fake = Fake::new();
    fake.on_verify(|_| {
        Ok(proto::VerifyAuditChainResponse {
            ok: false,
            events_checked: 12,
            first_bad_seq: 5,
            first_bad_event_id: "evt_5".into(),
            problem: "hash does not match the event".into(),
        })
    });
    let audit = fake.audit_client("auditor-token".to_owned()).await;

    let report = audit.verify_chain().await.expect("verify");

    assert!(!report.is_ok());
    assert_eq!(report.events_checked, 12);
    assert_eq!(
        report.first_break,
        Some(ChainBreak {
            seq: 5,
            event_id: Some("evt_5".into()),
            problem: "hash does not match the event".into(),
        })
    );
}

#[tokio::test]
async fn an_auditor_without_the_role_gets_permission_denied() {
    let fake = Fake::new();
    fake.on_verify(|_| {
        Err(tonic::Status::permission_denied(
            "role `agent` may not verify the chain",
        ))
    });
    let audit = fake.audit_client("agent-token".to_owned()).await;

    let result = audit.verify_chain().await;

    assert!(
        matches!(result, Err(Error::PermissionDenied { .. })),
        "{result:?}"
    );
}
