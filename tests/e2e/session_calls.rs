//! A policy that reads the session's call count (`context.session.calls`) holds under concurrent calls:
//! each ALLOW is checked against the count again when it commits, as labels are.

use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{Outcome, SessionRequest};
use serde_json::json;

const ONE_REFUND: &str = r#"@id("one-refund-per-session")
@reason("a session may issue one refund")
forbid (principal, action == Action::"payments.refund", resource)
when { context.session.calls >= 1 };
"#;

async fn one_refund_per_session_holds_under_concurrent_calls(backend: DbBackend) {
    let h = Harness::start(backend).await;
    h.reload_with(&[("one-refund.cedar", ONE_REFUND)]);

    let agent = h.agent("support-agent", Some("carol")).await;
    let s = agent
        .open_session(SessionRequest::new(["payments.refund"]).max_tool_calls(100))
        .await
        .unwrap()
        .session_id;
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let agent = agent.clone();
            let s = s.clone();
            tokio::spawn(async move {
                let args =
                    json!({"payment_id": format!("pay_{i}"), "amount": 10, "currency": "EUR"});
                agent.authorize(&s, "payments.refund", &args).await
            })
        })
        .collect();
    let mut allowed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(d) if d.outcome == Outcome::Allow => allowed += 1,
            // Denied by the policy, or by the session's auto-quarantine those denials tripped.
            Ok(d) => assert!(
                d.reason("POLICY_DENY").is_some() || d.reason("KILL_SWITCH").is_some(),
                "{d:?}"
            ),
            // Decided three times on a count that kept moving: nothing recorded, no ALLOW.
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
        }
    }
    assert_eq!(allowed, 1, "one refund per session");
}
both!(one_refund_per_session_holds_under_concurrent_calls);
