//! Human approval: a policy marks a call as needing people; approvers (never the agent or its user, only
//! the right group, each once) decide; the agent's approved call is allowed once, after the broker checked
//! everything again, and only for exactly the arguments that were approved.

use std::time::{Duration, Instant};

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness, Options};
use broker_sdk::{
    ApprovalStatus, ApprovalWait, AuditFilter, Client, Decision, EngageRequest, GuardError,
    KillSwitchScope, Outcome, SessionRequest,
};
use serde_json::json;

const REFUND_APPROVERS: &[&str] = &["payments-approvers"];

async fn support_session(h: &Harness) -> (Client, String) {
    let c = h.agent("support-agent", Some("carol")).await;
    let s = c
        .open_session(
            SessionRequest::new(["payments.refund", "shell.exec"])
                .max_tool_calls(10)
                .purpose("refunds"),
        )
        .await
        .unwrap();
    (c, s.session_id)
}

fn refund(amount: i64, payment: &str) -> serde_json::Value {
    json!({"payment_id": payment, "amount": amount, "currency": "EUR"})
}

async fn ask(
    c: &Client,
    session: &str,
    tool: &str,
    args: &serde_json::Value,
) -> (Decision, String) {
    let d = c.authorize(session, tool, args).await.unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
    let id = d.approval_id.clone().unwrap();
    (d, id)
}

async fn approve_then_allow_once(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (pending, id) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;

    // Until people decide, waiting returns the pending decision again.
    let still = agent.await_approval(&id, Duration::ZERO).await.unwrap();
    assert_eq!(
        (still.outcome, still.decision_id.as_str()),
        (Outcome::PendingApproval, pending.decision_id.as_str())
    );

    let bob = h.approver("bob", REFUND_APPROVERS).await;
    let shown = bob.get(&id).await.unwrap();
    assert_eq!(
        (shown.status, shown.tool.as_str(), shown.agent.as_str()),
        (ApprovalStatus::Pending, "payments.refund", "support-agent")
    );
    assert!(shown.arguments_redacted_json.contains("pay_1"));
    assert_eq!(shown.requirements[0].group, "payments-approvers");
    let approved = bob.approve(&id, "customer verified").await.unwrap();
    assert_eq!(approved.status, ApprovalStatus::Approved);

    let d = agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert!(
        d.reason("APPROVAL_GRANTED")
            .unwrap()
            .message
            .contains("bob"),
        "{d:?}"
    );
    assert_eq!(d.approval_id.as_deref(), Some(id.as_str()));
    // Used once: a second wait never yields another ALLOW.
    let again = agent.await_approval(&id, Duration::ZERO).await.unwrap();
    assert_eq!(again.outcome, Outcome::Deny);
    assert!(again.has_reason("APPROVAL_USED"), "{again:?}");

    // Every step is in the audit trail.
    let events = h
        .auditor()
        .await
        .list_events(AuditFilter::new().session_id(&session).page_size(100))
        .await
        .unwrap()
        .events;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "APPROVAL_REQUESTED",
        "APPROVAL_VOTED",
        "APPROVAL_APPROVED",
        "APPROVAL_CONSUMED",
    ] {
        assert_eq!(
            kinds.iter().filter(|x| **x == k).count(),
            1,
            "{k} in {kinds:?}"
        );
    }
    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(approve_then_allow_once);

async fn deny_and_expiry_never_allow(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let bob = h.approver("bob", REFUND_APPROVERS).await;

    let (_, denied) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    assert_eq!(
        bob.deny(&denied, "looks like fraud").await.unwrap().status,
        ApprovalStatus::Denied
    );
    let d = agent
        .await_approval(&denied, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        d.outcome == Outcome::Deny
            && d.reason("APPROVAL_DENIED")
                .unwrap()
                .message
                .contains("fraud"),
        "{d:?}"
    );

    let (_, expiring) = ask(&agent, &session, "payments.refund", &refund(6000, "pay_2")).await;
    h.clock.advance(Duration::from_secs(16 * 60));
    let d = agent
        .await_approval(&expiring, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        d.outcome == Outcome::Deny && d.has_reason("APPROVAL_EXPIRED"),
        "{d:?}"
    );
    let err = bob.approve(&expiring, "too late").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}
both!(deny_and_expiry_never_allow);

async fn separation_of_duties_and_groups(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (_, id) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    // The agent itself and the user it acts for cannot approve, even holding the approver role and group.
    for who in ["support-agent", "carol"] {
        let err = h
            .approver(who, REFUND_APPROVERS)
            .await
            .approve(&id, "me")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{who}: {err:?}");
        assert_eq!(err.reason(), Some("SEPARATION_OF_DUTIES"));
    }
    let err = h
        .approver("mallory", &["marketing"])
        .await
        .approve(&id, "sure")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "wrong group: {err:?}"
    );
    // An agent token cannot approve at all.
    let as_agent = broker_sdk::ApprovalClient::connect(
        h.endpoint(),
        h.token("support-agent", &[Role::Agent], Some("carol")),
    )
    .await
    .unwrap();
    assert_eq!(
        as_agent.approve(&id, "x").await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        h.approver("bob", REFUND_APPROVERS)
            .await
            .get(&id)
            .await
            .unwrap()
            .status,
        ApprovalStatus::Pending
    );
}
both!(separation_of_duties_and_groups);

async fn a_quorum_of_two_distinct_approvers(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (_, id) = ask(
        &agent,
        &session,
        "shell.exec",
        &json!({"command": "systemctl restart app"}),
    )
    .await;
    let first = h.approver("oncall-1", &["platform-oncall"]).await;
    assert_eq!(
        first.approve(&id, "ok").await.unwrap().status,
        ApprovalStatus::Pending
    );
    let err = first.approve(&id, "ok again").await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "the same approver counts once: {err:?}"
    );
    assert_eq!(
        agent
            .await_approval(&id, Duration::ZERO)
            .await
            .unwrap()
            .outcome,
        Outcome::PendingApproval
    );
    let second = h.approver("oncall-2", &["platform-oncall"]).await;
    assert_eq!(
        second.approve(&id, "ok").await.unwrap().status,
        ApprovalStatus::Approved
    );
    let d = agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(
        d.reason("POLICY_ALLOW").unwrap().policy_id.as_deref(),
        Some("agents-run-approved-shell-commands")
    );
}
both!(a_quorum_of_two_distinct_approvers);

async fn an_approval_covers_exactly_its_arguments(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (_, id) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    h.approver("bob", REFUND_APPROVERS)
        .await
        .approve(&id, "ok")
        .await
        .unwrap();
    // Other arguments are another call: it needs its own approval.
    let (_, other) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_2")).await;
    assert_ne!(id, other);
    let d = agent.await_approval(&other, Duration::ZERO).await.unwrap();
    assert_eq!(d.outcome, Outcome::PendingApproval);
    // The approved one is allowed, for its own arguments.
    assert!(agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap()
        .is_allowed());
}
both!(an_approval_covers_exactly_its_arguments);

async fn kill_switches_and_policy_changes_win_over_an_approval(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let bob = h.approver("bob", REFUND_APPROVERS).await;
    let admin = h.admin().await;

    // Approved, then the agent is stopped: no ALLOW.
    let (_, approved) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    bob.approve(&approved, "ok").await.unwrap();
    // A pending one under the switch is cancelled by it.
    let (_, waiting) = ask(&agent, &session, "payments.refund", &refund(7000, "pay_3")).await;
    let k = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Agent,
            "support-agent",
            "incident",
        ))
        .await
        .unwrap();
    let d = agent
        .await_approval(&approved, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        d.outcome == Outcome::Deny && d.has_reason("KILL_SWITCH"),
        "{d:?}"
    );
    assert_eq!(
        bob.get(&waiting).await.unwrap().status,
        ApprovalStatus::Cancelled
    );
    let d = agent
        .await_approval(&waiting, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        d.outcome == Outcome::Deny
            && (d.has_reason("APPROVAL_CANCELLED") || d.has_reason("KILL_SWITCH")),
        "{d:?}"
    );
    admin.release(&k.id, "over").await.unwrap();
    // Released: the approved call can still be used once (it was never consumed).
    assert!(agent
        .await_approval(&approved, Duration::from_secs(2))
        .await
        .unwrap()
        .is_allowed());

    // Approved, then the policies forbid refunds altogether: the policies in effect now win.
    let (_, later) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_4")).await;
    bob.approve(&later, "ok").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(broker_e2e::policies_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.path().join("freeze.cedar"), "@id(\"refunds-frozen\")\nforbid (principal, action == Action::\"payments.refund\", resource);\n").unwrap();
    h.running.policies.send_replace(std::sync::Arc::new(
        broker::policy::PolicyEngine::load(dir.path()).unwrap(),
    ));
    let d = agent
        .await_approval(&later, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.policy_id.as_deref() == Some("refunds-frozen")),
        "{d:?}"
    );
}
both!(kill_switches_and_policy_changes_win_over_an_approval);

async fn pending_approvals_survive_a_restart(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (_, id) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    drop(agent);
    let h = h.restart().await;
    h.approver("bob", REFUND_APPROVERS)
        .await
        .approve(&id, "after restart")
        .await
        .unwrap();
    let agent = h.agent("support-agent", Some("carol")).await;
    assert!(agent
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap()
        .is_allowed());
    let _ = session;
}
both!(pending_approvals_survive_a_restart);

async fn an_approval_on_one_broker_releases_the_agent_waiting_on_another(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let other = h.another_broker().await;
    let (agent, session) = support_session(&h).await;
    let (_, id) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    let on_other = Client::connect(
        format!("http://{}", other.addr),
        h.token("support-agent", &[Role::Agent], Some("carol")),
    )
    .await
    .unwrap();
    let waiter = {
        let id = id.clone();
        tokio::spawn(async move {
            let d = on_other
                .await_approval(&id, Duration::from_secs(10))
                .await
                .unwrap();
            (d, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.approver("bob", REFUND_APPROVERS)
        .await
        .approve(&id, "ok")
        .await
        .unwrap();
    let approved_at = Instant::now();
    let (d, released_at) = waiter.await.unwrap();
    assert!(d.is_allowed(), "{d:?}");
    assert!(
        released_at.duration_since(approved_at) < Duration::from_secs(1),
        "released after {:?}",
        released_at.duration_since(approved_at)
    );
    other.shutdown().await.unwrap();
}
both!(an_approval_on_one_broker_releases_the_agent_waiting_on_another);

async fn guard_waits_for_people_and_runs_the_tool_only_when_approved(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let approver = h.approver("bob", REFUND_APPROVERS).await;
    let approving = tokio::spawn(async move {
        // The application shows the approval id to its user; a person approves it.
        let id = rx.await.unwrap();
        approver.approve(&id, "ok").await.unwrap();
    });
    let wait = ApprovalWait::up_to(Duration::from_secs(10)).on_pending(move |d| {
        let _ = tx.send(d.approval_id.clone().unwrap());
    });
    let ran = agent
        .guard_with_approval(
            &session,
            "payments.refund",
            &refund(5000, "pay_9"),
            wait,
            || async { "refunded" },
        )
        .await;
    assert_eq!(ran.unwrap(), "refunded");
    approving.await.unwrap();
    // Plain guard never runs a tool that needs approval.
    let r = agent
        .guard(
            &session,
            "payments.refund",
            &refund(5000, "pay_10"),
            || async { "must not run" },
        )
        .await;
    assert!(matches!(r, Err(GuardError::PendingApproval(_))), "{r:?}");
}
both!(guard_waits_for_people_and_runs_the_tool_only_when_approved);

/// A one-shot HTTP receiver: returns the headers (lower-cased) and body of the first POST.
async fn receive_one(
    listener: tokio::net::TcpListener,
) -> (std::collections::HashMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (headers, body_start) = loop {
        let n = sock.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
                .collect::<std::collections::HashMap<_, _>>();
            break (headers, end + 4);
        }
    };
    let len: usize = headers.get("content-length").unwrap().parse().unwrap();
    while buf.len() < body_start + len {
        let n = sock.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    (headers, buf[body_start..body_start + len].to_vec())
}

async fn new_approvals_reach_the_webhook_signed(backend: DbBackend) {
    let dir = tempfile::tempdir().unwrap();
    let secret = [42u8; 32];
    std::fs::write(dir.path().join("hook.key"), hex(&secret)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
    let receiver = tokio::spawn(receive_one(listener));
    let hook: broker::notify::WebhookConfig =
        serde_json::from_value(json!({"url": url, "secret_file": dir.path().join("hook.key")}))
            .unwrap();
    let h = Harness::start_with(
        backend,
        Options {
            webhook: Some(hook),
            ..Options::default()
        },
    )
    .await;
    let (agent, session) = support_session(&h).await;
    let (_, id) = ask(
        &agent,
        &session,
        "payments.refund",
        &json!({"payment_id": "pay_1", "amount": 5000, "currency": "EUR", "reason": "dup"}),
    )
    .await;
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), receiver)
        .await
        .unwrap()
        .unwrap();
    let ts = headers.get("x-broker-timestamp").unwrap();
    let sig = headers.get("x-broker-signature").unwrap();
    assert!(
        broker::notify::verify_signature(&secret, ts, &body, sig),
        "signature verifies"
    );
    assert!(
        !broker::notify::verify_signature(&[1u8; 32], ts, &body, sig),
        "and only with the right key"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["event"], "approval.requested");
    assert_eq!(v["data"]["approval_id"], id.as_str());
    assert_eq!(v["data"]["tool"], "payments.refund");
}
both!(new_approvals_reach_the_webhook_signed);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn approvers_watch_the_queue_live(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (agent, session) = support_session(&h).await;
    let (_, first) = ask(&agent, &session, "payments.refund", &refund(5000, "pay_1")).await;
    let bob = h.approver("bob", REFUND_APPROVERS).await;
    let mut watch = bob.watch().await.unwrap();
    // What is pending already comes first; then changes as they happen.
    let a = next(&mut watch).await;
    assert_eq!(
        (a.approval_id.as_str(), a.status),
        (first.as_str(), ApprovalStatus::Pending)
    );
    let (_, second) = ask(&agent, &session, "payments.refund", &refund(6000, "pay_2")).await;
    let a = next(&mut watch).await;
    assert_eq!(
        (a.approval_id.as_str(), a.status),
        (second.as_str(), ApprovalStatus::Pending)
    );
    bob.approve(&second, "ok").await.unwrap();
    let a = next(&mut watch).await;
    assert_eq!(
        (a.approval_id.as_str(), a.status),
        (second.as_str(), ApprovalStatus::Approved)
    );
}
both!(approvers_watch_the_queue_live);

async fn next(w: &mut broker_sdk::ApprovalWatch) -> broker_sdk::Approval {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}
