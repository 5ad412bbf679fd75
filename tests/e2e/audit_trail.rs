//! Every decision and session change is in the audit trail; the chain verifies, and tampering is named.

use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{AuditFilter, Outcome, SessionRequest};
use serde_json::json;

async fn every_decision_is_audited_with_digest_and_redaction(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("assistant", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["email.send", "web.search"]).purpose("follow-up"))
        .await
        .unwrap();
    let allow = agent
        .authorize(&s.session_id, "email.send", &json!({"to": "bob@example.com", "subject": "hi", "body": "b", "cc": ["carol@example.com"]}))
        .await
        .unwrap();
    assert!(allow.is_allowed(), "{allow:?}");
    let deny = agent
        .authorize(
            &s.session_id,
            "web.search",
            &json!({"query": "x", "max_results": 99}),
        )
        .await
        .unwrap();
    assert_eq!(deny.outcome, Outcome::Deny);
    agent.close_session(&s.session_id).await.unwrap();

    let auditor = h.auditor().await;
    let page = auditor
        .list_events(AuditFilter::new().session_id(&s.session_id))
        .await
        .unwrap();
    let kinds: Vec<&str> = page.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "SESSION_OPENED",
            "TOOL_CALL_DECIDED",
            "TOOL_CALL_DECIDED",
            "SESSION_CLOSED"
        ]
    );
    let e = &page.events[1];
    assert_eq!(e.decision_id.as_deref(), Some(allow.decision_id.as_str()));
    assert_eq!(
        (e.agent.as_str(), e.user.as_deref(), e.tool.as_deref()),
        ("assistant", Some("alice"), Some("email.send"))
    );
    assert_eq!(e.outcome, Some(Outcome::Allow));
    assert_eq!(e.policy_version, allow.policy_version);
    assert_eq!(e.arguments_digest.len(), 64);
    assert_eq!(
        e.reasons[0].policy_id.as_deref(),
        Some("agents-call-low-and-medium-risk-tools")
    );
    assert_eq!(page.events[2].outcome, Some(Outcome::Deny));
    assert_eq!(page.events[2].reasons[0].code, "POLICY_DENY");

    let denies = auditor
        .list_events(AuditFilter::new().outcome(Outcome::Deny))
        .await
        .unwrap();
    assert_eq!(denies.events.len(), 1);
    assert_eq!(
        denies.events[0].decision_id.as_deref(),
        Some(deny.decision_id.as_str())
    );
}
both!(every_decision_is_audited_with_digest_and_redaction);

async fn secret_fields_are_redacted_but_digested(backend: DbBackend) {
    let h = Harness::start(backend).await;
    // `token` is a default redacted field; web.search does not declare it, so the call is denied, and
    // still audited without the secret.
    let agent = h.agent("assistant", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let d = agent
        .authorize(
            &s.session_id,
            "web.search",
            &json!({"query": "q", "token": "sk-live-123"}),
        )
        .await
        .unwrap();
    assert!(d.has_reason("INVALID_ARGUMENTS"));
    let page = h
        .auditor()
        .await
        .list_events(AuditFilter::new().tool("web.search"))
        .await
        .unwrap();
    let e = page.events.last().unwrap();
    assert!(
        !e.arguments_redacted_json.contains("sk-live-123"),
        "{}",
        e.arguments_redacted_json
    );
    assert!(e.arguments_redacted_json.contains("[REDACTED]"));
    assert_eq!(e.arguments_digest.len(), 64);
}
both!(secret_fields_are_redacted_but_digested);

async fn audit_pages_chain_and_verify(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    for i in 0..12 {
        agent
            .authorize(
                &s.session_id,
                "web.search",
                &json!({"query": format!("q{i}")}),
            )
            .await
            .unwrap();
    }
    let auditor = h.auditor().await;
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut f = AuditFilter::new().page_size(5);
        if let Some(t) = token.take() {
            f = f.page_token(t);
        }
        let page = auditor.list_events(f).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.seq));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, (1..=13).collect::<Vec<u64>>());
    let report = auditor.verify_chain().await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.events_checked, 13);
}
both!(audit_pages_chain_and_verify);

async fn tampering_is_detected_and_named(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("support-agent", Some("carol")).await;
    let s = agent
        .open_session(SessionRequest::new(["payments.refund"]))
        .await
        .unwrap();
    for amount in [500_000, 600_000, 700_000, 800_000] {
        let d = agent
            .authorize(
                &s.session_id,
                "payments.refund",
                &json!({"payment_id": "p", "amount": amount, "currency": "EUR"}),
            )
            .await
            .unwrap();
        assert_eq!(d.outcome, Outcome::Deny);
    }
    let auditor = h.auditor().await;
    assert!(auditor.verify_chain().await.unwrap().is_ok());

    // Someone with database access turns a DENY into an ALLOW.
    h.tamper("UPDATE audit_events SET outcome = 'ALLOW' WHERE seq = 3")
        .await;
    let report = auditor.verify_chain().await.unwrap();
    let b = report.first_break.expect("tampering detected");
    assert_eq!(b.seq, 3, "{b:?}");
    assert!(b.problem.contains("modified"), "{b:?}");
    assert_eq!(report.events_checked, 2);
    h.tamper("UPDATE audit_events SET outcome = 'DENY' WHERE seq = 3")
        .await;
    assert!(
        auditor.verify_chain().await.unwrap().is_ok(),
        "restoring the content restores the chain"
    );

    // ... or deletes an event.
    h.tamper("DELETE FROM audit_events WHERE seq = 2").await;
    let b = auditor
        .verify_chain()
        .await
        .unwrap()
        .first_break
        .expect("deletion detected");
    assert_eq!(b.seq, 3, "the first event after the gap is named: {b:?}");
    assert!(b.problem.contains("missing"), "{b:?}");
}
both!(tampering_is_detected_and_named);
