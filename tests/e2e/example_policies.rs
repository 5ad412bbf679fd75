//! The shipped example policies (the default policy directory), through the real server: the ways
//! around them an adversarial review found stay closed. The fixtures in `policies/fixtures/` cover every
//! rule; this checks that the server decides as they say.

use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{AuditFilter, Client, Outcome, SessionRequest};
use serde_json::{json, Value};

/// A fresh session per call: several denials in one session would engage its auto-quarantine.
async fn decide(agent: &Client, tool: &str, args: &Value) -> broker_sdk::Decision {
    let s = agent
        .open_session(SessionRequest::new([tool]).purpose("follow-up"))
        .await
        .unwrap();
    agent.authorize(&s.session_id, tool, args).await.unwrap()
}

async fn recipients_and_paths_cannot_walk_around_the_example_policies(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("assistant", Some("alice")).await;
    let mail = |to: &str, extra: Value| {
        let mut args = json!({"to": to, "subject": "s", "body": "b"});
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        args
    };
    let inside = mail(
        "bob@example.com",
        json!({"cc": ["carol@example.com"], "bcc": ["alice@example.com"]}),
    );
    assert!(decide(&agent, "email.send", &inside).await.is_allowed());
    for args in [
        mail("bob@example.com", json!({"cc": ["mallory@evil.test"]})),
        mail("bob@example.com", json!({"bcc": ["mallory@evil.test"]})),
        mail("mallory@evil.test,bob@example.com", json!({})),
    ] {
        let d = decide(&agent, "email.send", &args).await;
        assert_eq!(d.outcome, Outcome::PendingApproval, "{args}: {d:?}");
        assert_eq!(
            d.reason("APPROVAL_REQUIRED")
                .and_then(|r| r.policy_id.as_deref()),
            Some("email-outside-company-needs-approval"),
            "{args}"
        );
    }
    for path in ["/proc/self/root/etc/shadow", "/proc/self/environ"] {
        let d = decide(&agent, "file.read", &json!({ "path": path })).await;
        assert_eq!(d.outcome, Outcome::Deny, "{path}: {d:?}");
        assert_eq!(
            d.reason("POLICY_DENY").and_then(|r| r.policy_id.as_deref()),
            Some("file-read-inside-roots"),
            "{path}"
        );
    }
    // The one ALLOW in the trail is the email inside the company.
    let allowed = h
        .auditor()
        .await
        .list_events(AuditFilter::new().outcome(Outcome::Allow))
        .await
        .unwrap()
        .events;
    assert_eq!(allowed.len(), 1, "{allowed:?}");
}
both!(recipients_and_paths_cannot_walk_around_the_example_policies);
