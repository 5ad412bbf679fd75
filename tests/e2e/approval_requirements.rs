//! An approval is checked at use against what the policies in effect *now* ask of people: a group, a
//! quorum or an expiry added since it was requested (by a reload, or by a taint label the session gained)
//! must be met by its votes, or there is no ALLOW (DENY `APPROVAL_INSUFFICIENT`, the approval unused).

use std::time::Duration;

use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{ApprovalStatus, Client, Outcome, SessionRequest};
use serde_json::json;

async fn refund_session(h: &Harness) -> (Client, String) {
    let c = h.agent("support-agent", Some("carol")).await;
    let s = c
        .open_session(
            SessionRequest::new(["payments.refund", "web.search"])
                .max_tool_calls(10)
                .purpose("refunds"),
        )
        .await
        .unwrap();
    (c, s.session_id)
}

fn refund(amount: i64) -> serde_json::Value {
    json!({"payment_id": "pay_1", "amount": amount, "currency": "EUR"})
}

async fn pending(c: &Client, session: &str, amount: i64) -> String {
    let d = c
        .authorize(session, "payments.refund", &refund(amount))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
    d.approval_id.unwrap()
}

const CFO: &str = r#"@id("large-refunds-need-two-cfo-approvers")
@approval("cfo-office")
@quorum("2")
@reason("refunds above 50000 need two CFO office approvers")
forbid (principal, action == Action::"payments.refund", resource)
when { context.args.amount > 50000 }
unless { context has approval };
"#;

async fn a_group_and_quorum_added_since_must_be_met(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = refund_session(&h).await;
    let id = pending(&agent, &session, 60_000).await;
    let bob = h.approver("bob", &["payments-approvers"]).await;
    assert_eq!(
        bob.approve(&id, "ok").await.unwrap().status,
        ApprovalStatus::Approved
    );

    // An admin adds a stricter requirement and reloads: one payments vote is not two CFO votes.
    h.reload_with(&[("cfo.cedar", CFO)]);
    let d = agent
        .await_approval(&id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    let why = d.reason("APPROVAL_INSUFFICIENT").expect("says why");
    assert!(
        why.message.contains("cfo-office") && why.message.contains("0 so far"),
        "{why:?}"
    );
    // Nothing was used: the approval stays approved and unused, and never yields an ALLOW now.
    let shown = bob.get(&id).await.unwrap();
    assert_eq!(
        (shown.status, shown.consumed_at.is_none()),
        (ApprovalStatus::Approved, true)
    );
    assert_eq!(
        agent
            .await_approval(&id, Duration::ZERO)
            .await
            .unwrap()
            .outcome,
        Outcome::Deny
    );
    // A refund under the new threshold, requested afresh, still takes one payments vote.
    let small = pending(&agent, &session, 5_000).await;
    bob.approve(&small, "ok").await.unwrap();
    assert!(agent
        .await_approval(&small, Duration::from_secs(2))
        .await
        .unwrap()
        .is_allowed());
    // A new request for the large refund asks for both groups, and both must vote.
    let large = pending(&agent, &session, 60_000).await;
    let asked: Vec<(String, u32)> = bob
        .get(&large)
        .await
        .unwrap()
        .requirements
        .iter()
        .map(|r| (r.group.clone(), r.quorum))
        .collect();
    assert!(asked.contains(&("cfo-office".to_owned(), 2)), "{asked:?}");
}
both!(a_group_and_quorum_added_since_must_be_met);

async fn a_quorum_raised_in_the_same_group_must_be_met(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = refund_session(&h).await;
    let id = pending(&agent, &session, 5_000).await;
    h.approver("bob", &["payments-approvers"])
        .await
        .approve(&id, "ok")
        .await
        .unwrap();
    let two = r#"@id("refunds-need-two-payments-approvers")
@approval("payments-approvers")
@quorum("2")
@reason("refunds above 1000 need two payments approvers")
forbid (principal, action == Action::"payments.refund", resource)
when { context.args.amount > 1000 }
unless { context has approval };
"#;
    h.reload_with(&[("two.cedar", two)]);
    let d = agent
        .await_approval(&id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert!(d.has_reason("APPROVAL_INSUFFICIENT"), "{d:?}");
}
both!(a_quorum_raised_in_the_same_group_must_be_met);

async fn a_shorter_expiry_in_effect_now_must_be_met(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = refund_session(&h).await;
    let id = pending(&agent, &session, 5_000).await;
    h.approver("bob", &["payments-approvers"])
        .await
        .approve(&id, "ok")
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(10 * 60));
    let fresh = r#"@id("refund-approvals-last-five-minutes")
@approval("payments-approvers")
@approval_expires("5m")
@reason("refund approvals are good for five minutes")
forbid (principal, action == Action::"payments.refund", resource)
when { context.args.amount > 1000 }
unless { context has approval };
"#;
    h.reload_with(&[("fresh.cedar", fresh)]);
    let d = agent
        .await_approval(&id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert!(
        d.reason("APPROVAL_INSUFFICIENT")
            .is_some_and(|r| r.message.contains("5m")),
        "{d:?}"
    );
}
both!(a_shorter_expiry_in_effect_now_must_be_met);

async fn a_requirement_a_taint_label_brought_must_be_met(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let tainted_refunds = r#"@id("tainted-refunds-need-security")
@approval("security")
@reason("the session read untrusted content: refunds need a security approver")
forbid (principal, action == Action::"payments.refund", resource)
when { context.session.labels.contains("untrusted") }
unless { context has approval };
"#;
    h.reload_with(&[("tainted.cedar", tainted_refunds)]);
    let (agent, session) = refund_session(&h).await;
    let id = pending(&agent, &session, 5_000).await;
    h.approver("bob", &["payments-approvers"])
        .await
        .approve(&id, "ok")
        .await
        .unwrap();
    // After the request, the session reads untrusted content.
    let search = agent
        .authorize(&session, "web.search", &json!({"query": "refund policy"}))
        .await
        .unwrap();
    assert!(search.is_allowed(), "{search:?}");
    agent
        .report_tool_result(&session, &search.decision_id, true, &["untrusted"])
        .await
        .unwrap();
    let d = agent
        .await_approval(&id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert!(
        d.reason("APPROVAL_INSUFFICIENT")
            .is_some_and(|r| r.message.contains("`security`")),
        "{d:?}"
    );
}
both!(a_requirement_a_taint_label_brought_must_be_met);
