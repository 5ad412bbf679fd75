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

async fn secret_looking_names_are_redacted_at_any_depth(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("assistant", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    // None of these names is configured: they are found by their parts, at every depth.
    let args = json!({
        "query": "q",
        "access_token": "AT-secret-1",
        "options": {
            "client_secret": "CS-secret-2",
            "retries": [{"db_password": "DB-secret-3", "apiKey": "K-secret-4"}],
        },
        "headers": [{"name": "Authorization", "value": "Bearer B-secret-5"}],
    });
    let d = agent
        .authorize(&s.session_id, "web.search", &args)
        .await
        .unwrap();
    assert!(d.has_reason("INVALID_ARGUMENTS"), "{d:?}");
    let page = h
        .auditor()
        .await
        .list_events(
            AuditFilter::new()
                .session_id(&s.session_id)
                .tool("web.search"),
        )
        .await
        .unwrap();
    let e = page.events.last().unwrap();
    let kept = &e.arguments_redacted_json;
    assert!(!kept.contains("-secret-"), "{kept}");
    assert_eq!(kept.matches("[REDACTED]").count(), 5, "{kept}");
    assert!(kept.contains(r#""query":"q""#), "{kept}");
    // The digest still covers the arguments as sent.
    assert_eq!(
        e.arguments_digest,
        broker::domain::audit::arguments_digest(&args).unwrap()
    );
}
both!(secret_looking_names_are_redacted_at_any_depth);

async fn a_denied_call_keeps_a_bounded_preview_and_an_allowed_one_everything(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("assistant", Some("alice")).await;
    let limit = h.config.audit.denied_arguments_bytes;
    // Characters that JSON escapes or canonical forms treat specially, cut anywhere by the preview.
    let big = json!({"query": format!("xxx{}", "\"é\u{1}\u{2028}".repeat(15 * 1024))});
    let big_len = serde_json::to_string(&big).unwrap().len();
    let bounded = |kept: &str| {
        assert!(kept.len() <= limit, "{} bytes kept", kept.len());
        let v: serde_json::Value = serde_json::from_str(kept).unwrap();
        assert_eq!(v["[TRUNCATED]"]["bytes"], json!(big_len), "{kept}");
        let preview = v["[TRUNCATED]"]["preview"].as_str().unwrap();
        assert!(preview.starts_with(r#"{"query":"xxx"#), "{kept}");
    };

    // No session needed: a call naming a session that does not exist is denied and recorded.
    let nobody = format!("ses_{}", "0".repeat(32));
    let d = agent.authorize(&nobody, "web.search", &big).await.unwrap();
    assert!(d.has_reason("SESSION_NOT_FOUND"), "{d:?}");
    let auditor = h.auditor().await;
    let e = auditor
        .list_events(AuditFilter::new().session_id(&nobody))
        .await
        .unwrap()
        .events
        .pop()
        .unwrap();
    bounded(&e.arguments_redacted_json);
    assert_eq!(
        e.arguments_digest,
        broker::domain::audit::arguments_digest(&big).unwrap()
    );

    // In a session: an unknown tool, and a policy DENY.
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let unknown = agent
        .authorize(&s.session_id, "no.such.tool", &big)
        .await
        .unwrap();
    let capped = json!({"query": "x".repeat(200 * 1024), "max_results": 99});
    let policy_deny = agent
        .authorize(&s.session_id, "web.search", &capped)
        .await
        .unwrap();
    assert_eq!(policy_deny.outcome, Outcome::Deny);
    // An undeclared key as long as the arguments: the reason naming it is cut too.
    let mut long_key = serde_json::Map::new();
    long_key.insert("k".repeat(100 * 1024), json!(1));
    long_key.insert("query".into(), json!("q"));
    let invalid = agent
        .authorize(
            &s.session_id,
            "web.search",
            &serde_json::Value::Object(long_key),
        )
        .await
        .unwrap();
    assert!(invalid.has_reason("INVALID_ARGUMENTS"), "{invalid:?}");
    // An ALLOW keeps its redacted arguments whole: an approver or auditor reads them.
    let long = json!({"query": "y".repeat(8 * 1024)});
    let allow = agent
        .authorize(&s.session_id, "web.search", &long)
        .await
        .unwrap();
    assert!(allow.is_allowed(), "{allow:?}");

    let events = auditor
        .list_events(AuditFilter::new().session_id(&s.session_id))
        .await
        .unwrap()
        .events;
    let of = |id: &str| {
        events
            .iter()
            .find(|e| e.decision_id.as_deref() == Some(id))
            .unwrap()
            .arguments_redacted_json
            .clone()
    };
    bounded(&of(&unknown.decision_id));
    let kept = of(&policy_deny.decision_id);
    assert!(kept.len() <= limit, "{} bytes kept", kept.len());
    assert!(of(&invalid.decision_id).len() <= limit);
    let reasons = &events
        .iter()
        .find(|e| e.decision_id.as_deref() == Some(invalid.decision_id.as_str()))
        .unwrap()
        .reasons;
    assert!(
        reasons.iter().all(|r| r.message.len() < 1024),
        "{reasons:?}"
    );
    assert_eq!(
        of(&allow.decision_id),
        serde_json::to_string(&long).unwrap()
    );
    // Each event's hash covers what it keeps.
    let walk = h.running.store.verify_chain().await.unwrap();
    assert!(walk.ok, "{walk:?}");
}
both!(a_denied_call_keeps_a_bounded_preview_and_an_allowed_one_everything);
