//! Tenants: a session and its approvals belong to the tenant of the token that opened the session. A token
//! of another tenant, or of none, is refused whatever else it shares with the owner (agent, user); listings
//! show the caller's tenant only (admins see every tenant); a TENANT switch holds for the tenant's sessions
//! whatever tenant the caller's token claims.

use std::time::Duration;

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{
    ApprovalClient, ApprovalFilter, ApprovalStatus, AuditClient, AuditFilter, Client,
    EngageRequest, Error, KillSwitchScope, Outcome, SessionRequest,
};
use serde_json::json;

const AGENT: &str = "support-agent";
const USER: &str = "carol";
const REFUND_APPROVERS: &[&str] = &["payments-approvers"];

/// The support agent, acting for carol, with a token of `tenant`.
async fn agent_in(h: &Harness, tenant: Option<&str>) -> Client {
    h.client_with_token(h.token_in_tenant(AGENT, &[Role::Agent], Some(USER), tenant))
        .await
}

async fn open(c: &Client) -> String {
    c.open_session(
        SessionRequest::new(["payments.refund", "web.search"])
            .max_tool_calls(20)
            .purpose("refunds"),
    )
    .await
    .unwrap()
    .session_id
}

fn refund(amount: i64) -> serde_json::Value {
    json!({"payment_id": "pay_1", "amount": amount, "currency": "EUR"})
}

fn search() -> serde_json::Value {
    json!({"query": "x"})
}

fn assert_tenant_mismatch(err: &Error, what: &str) {
    assert_eq!(
        (err.code(), err.reason()),
        (tonic::Code::PermissionDenied, Some("TENANT_MISMATCH")),
        "{what}: {err:?}"
    );
}

async fn approver_in(
    h: &Harness,
    sub: &str,
    roles: &[Role],
    tenant: Option<&str>,
) -> ApprovalClient {
    ApprovalClient::connect(
        h.endpoint(),
        h.token_full(sub, roles, None, tenant, REFUND_APPROVERS),
    )
    .await
    .unwrap()
}

/// Every agent-side RPC on an acme session made with the same agent and user but `intruder`'s token.
async fn another_tenants_token_is_refused_everywhere(h: &Harness, intruder: Option<&str>) {
    let owner = agent_in(h, Some("acme")).await;
    let session = open(&owner).await;
    let other = agent_in(h, intruder).await;

    let owned = owner
        .authorize_with_call_id(&session, "web.search", &search(), "call-1")
        .await
        .unwrap();
    assert!(owned.is_allowed(), "{owned:?}");
    // A fresh call, and a retry of the owner's call id: a recorded DENY naming the mismatch.
    for call_id in ["call-2", "call-1"] {
        let d = other
            .authorize_with_call_id(&session, "web.search", &search(), call_id)
            .await
            .unwrap();
        assert_eq!(d.outcome, Outcome::Deny, "{call_id}: {d:?}");
        assert!(d.has_reason("TENANT_MISMATCH"), "{call_id}: {d:?}");
    }
    let (_, approval_id) = {
        let d = owner
            .authorize(&session, "payments.refund", &refund(5000))
            .await
            .unwrap();
        assert_eq!(d.outcome, Outcome::PendingApproval, "{d:?}");
        (d.clone(), d.approval_id.unwrap())
    };
    assert_tenant_mismatch(
        &other
            .await_approval(&approval_id, Duration::ZERO)
            .await
            .unwrap_err(),
        "await approval",
    );
    let doc = json!({"tenant": "acme", "collection": "kb", "classification": 0, "personal": false, "source": "s", "labels": []});
    assert_tenant_mismatch(
        &other
            .authorize_retrieval(&session, &[("d1", &doc)])
            .await
            .unwrap_err(),
        "retrieval",
    );
    assert_tenant_mismatch(
        &other.retrieval_filter(&session).await.unwrap_err(),
        "filter",
    );
    assert_tenant_mismatch(
        &other
            .report_tool_result(&session, &owned.decision_id, true, &["untrusted"])
            .await
            .unwrap_err(),
        "tool result",
    );
    assert_tenant_mismatch(
        &other
            .open_session(SessionRequest::new(["web.search"]).parent(&session))
            .await
            .unwrap_err(),
        "child session",
    );
    assert_tenant_mismatch(&other.close_session(&session).await.unwrap_err(), "close");

    // None of it touched the owner's session: still open, untainted, its call ids its own.
    let again = owner
        .authorize_with_call_id(&session, "web.search", &search(), "call-2")
        .await
        .unwrap();
    assert!(again.is_allowed(), "{again:?}");
    let closed = owner.close_session(&session).await.unwrap();
    assert!(closed.labels.is_empty(), "{closed:?}");
}

async fn a_globex_token_cannot_use_an_acme_session(backend: DbBackend) {
    let h = Harness::start(backend).await;
    another_tenants_token_is_refused_everywhere(&h, Some("globex")).await;
}
both!(a_globex_token_cannot_use_an_acme_session);

async fn a_tenantless_token_cannot_use_an_acme_session(backend: DbBackend) {
    let h = Harness::start(backend).await;
    another_tenants_token_is_refused_everywhere(&h, None).await;
    // Nor the other way round: a session without a tenant is not every tenant's.
    let owner = agent_in(&h, None).await;
    let session = open(&owner).await;
    let acme = agent_in(&h, Some("acme")).await;
    let d = acme
        .authorize(&session, "web.search", &search())
        .await
        .unwrap();
    assert!(d.has_reason("TENANT_MISMATCH"), "{d:?}");
}
both!(a_tenantless_token_cannot_use_an_acme_session);

async fn a_tenant_switch_stops_the_tenants_sessions_whatever_the_token_says(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let owner = agent_in(&h, Some("acme")).await;
    let session = open(&owner).await;
    let switch = h
        .admin()
        .await
        .engage(EngageRequest::new(
            KillSwitchScope::Tenant,
            "acme",
            "breach at acme",
        ))
        .await
        .unwrap();
    let d = owner
        .authorize(&session, "web.search", &search())
        .await
        .unwrap();
    assert!(
        d.reason("KILL_SWITCH")
            .and_then(|r| r.kill_switch_id.as_deref())
            == Some(switch.id.as_str()),
        "{d:?}"
    );
    for tenant in [Some("globex"), None] {
        let other = agent_in(&h, tenant).await;
        for call_id in ["escape-1", "escape-2"] {
            let d = other
                .authorize_with_call_id(&session, "web.search", &search(), call_id)
                .await
                .unwrap();
            assert_eq!(d.outcome, Outcome::Deny, "{tenant:?}: {d:?}");
        }
        // Its own sessions are not under the switch, but they are not acme's either.
        let own = open(&other).await;
        assert!(other
            .authorize(&own, "web.search", &search())
            .await
            .unwrap()
            .is_allowed());
    }
}
both!(a_tenant_switch_stops_the_tenants_sessions_whatever_the_token_says);

async fn a_globex_approver_neither_sees_nor_approves_acme_approvals(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let owner = agent_in(&h, Some("acme")).await;
    let session = open(&owner).await;
    let d = owner
        .authorize(&session, "payments.refund", &refund(5000))
        .await
        .unwrap();
    let id = d.approval_id.clone().unwrap();

    let globex = approver_in(&h, "gina", &[Role::Approver], Some("globex")).await;
    let tenantless = approver_in(&h, "tom", &[Role::Approver], None).await;
    let mut globex_watch = globex.watch().await.unwrap();
    for (who, approver) in [("globex", &globex), ("no tenant", &tenantless)] {
        assert!(
            approver
                .list(ApprovalFilter::new())
                .await
                .unwrap()
                .approvals
                .is_empty(),
            "{who} lists nothing of acme's"
        );
        let err = approver.get(&id).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{who}: {err:?}");
        assert_tenant_mismatch(&approver.approve(&id, "looks fine").await.unwrap_err(), who);
        assert_tenant_mismatch(&approver.deny(&id, "no").await.unwrap_err(), who);
    }
    // An admin sees every tenant's approvals, but votes only in its own.
    let admin = approver_in(&h, "root", &[Role::Approver, Role::Admin], Some("globex")).await;
    let listed = admin.list(ApprovalFilter::new()).await.unwrap().approvals;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tenant.as_deref(), Some("acme"));
    assert_eq!(
        admin.get(&id).await.unwrap().status,
        ApprovalStatus::Pending
    );
    assert_tenant_mismatch(&admin.approve(&id, "ok").await.unwrap_err(), "admin");

    // acme's approver sees it and decides it; globex's watcher heard nothing of it.
    let acme = approver_in(&h, "bob", &[Role::Approver], Some("acme")).await;
    let mut acme_watch = acme.watch().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), acme_watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.approval_id, id);
    assert_eq!(
        acme.list(ApprovalFilter::new())
            .await
            .unwrap()
            .approvals
            .len(),
        1
    );
    assert_eq!(
        acme.approve(&id, "verified").await.unwrap().status,
        ApprovalStatus::Approved
    );
    let d = owner
        .await_approval(&id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(d.is_allowed(), "{d:?}");
    let heard = tokio::time::timeout(Duration::from_millis(500), globex_watch.next()).await;
    assert!(
        heard.is_err(),
        "globex's watcher heard acme's approval: {heard:?}"
    );
}
both!(a_globex_approver_neither_sees_nor_approves_acme_approvals);

async fn auditors_list_only_their_tenants_events(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let acme = agent_in(&h, Some("acme")).await;
    let acme_session = open(&acme).await;
    let globex = agent_in(&h, Some("globex")).await;
    let globex_session = open(&globex).await;
    acme.authorize(&acme_session, "web.search", &search())
        .await
        .unwrap();
    globex
        .authorize(&globex_session, "web.search", &search())
        .await
        .unwrap();

    let auditor = |tenant: Option<&str>, roles: &[Role]| {
        AuditClient::connect(
            h.endpoint(),
            h.token_in_tenant("security-team", roles, None, tenant),
        )
    };
    let sessions = |client: AuditClient| async move {
        let events = client
            .list_events(AuditFilter::new().page_size(100))
            .await
            .unwrap()
            .events;
        let mut ids: Vec<String> = events
            .into_iter()
            .map(|e| e.session_id)
            .filter(|s| !s.is_empty())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let acme_auditor = auditor(Some("acme"), &[Role::Auditor]).await.unwrap();
    assert_eq!(
        sessions(acme_auditor.clone()).await,
        vec![acme_session.clone()]
    );
    // Asking for the other tenant's session by id finds nothing.
    let asked = acme_auditor
        .list_events(AuditFilter::new().session_id(&globex_session))
        .await
        .unwrap();
    assert!(asked.events.is_empty(), "{asked:?}");
    let tenantless = auditor(None, &[Role::Auditor]).await.unwrap();
    assert!(
        sessions(tenantless).await.is_empty(),
        "no tenant is not every tenant"
    );
    let admin = auditor(Some("acme"), &[Role::Admin]).await.unwrap();
    let mut every = vec![acme_session, globex_session];
    every.sort();
    assert_eq!(sessions(admin).await, every);
}
both!(auditors_list_only_their_tenants_events);
