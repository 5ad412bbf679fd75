//! Kill switches: each scope stops what it should and nothing else, on every replica, durably, and a
//! broker that cannot read them stops everything.

use std::time::{Duration, Instant, SystemTime};

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{
    AuditFilter, Client, EngageRequest, KillSwitchChange, KillSwitchScope, Outcome, SessionRequest,
};
use serde_json::json;

/// One agent session able to call web.search and payments.refund.
async fn agent_with_session(
    h: &Harness,
    sub: &str,
    user: &str,
    tenant: Option<&str>,
) -> (Client, String) {
    let c = h
        .client_with_token(h.token_in_tenant(sub, &[Role::Agent], Some(user), tenant))
        .await;
    let s = c
        .open_session(
            SessionRequest::new(["web.search", "payments.refund"]).purpose("kill switch test"),
        )
        .await
        .unwrap();
    (c, s.session_id)
}

async fn search(c: &Client, session: &str) -> broker_sdk::Decision {
    c.authorize(session, "web.search", &json!({"query": "x"}))
        .await
        .unwrap()
}

fn killed_by(d: &broker_sdk::Decision, id: &str) -> bool {
    d.outcome == Outcome::Deny
        && d.reason("KILL_SWITCH")
            .is_some_and(|r| r.kill_switch_id.as_deref() == Some(id))
}

async fn each_scope_stops_its_own_and_nothing_else(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let admin = h.admin().await;
    let (a1, s1) = agent_with_session(&h, "agent-1", "alice", Some("acme")).await;
    let (a2, s2) = agent_with_session(&h, "agent-2", "bob", Some("globex")).await;
    let refund = json!({"payment_id": "p", "amount": 5, "currency": "EUR"});

    let cases = [
        (KillSwitchScope::Agent, "agent-1".to_owned()),
        (KillSwitchScope::User, "alice".to_owned()),
        (KillSwitchScope::Tenant, "acme".to_owned()),
        (KillSwitchScope::Session, s1.clone()),
    ];
    for (scope, target) in cases {
        let k = admin
            .engage(EngageRequest::new(scope, target.clone(), "investigating"))
            .await
            .unwrap();
        assert!(
            killed_by(&search(&a1, &s1).await, &k.id),
            "{scope:?} stops agent-1"
        );
        assert!(
            search(&a2, &s2).await.is_allowed(),
            "{scope:?} {target} leaves agent-2 alone"
        );
        admin.release(&k.id, "done").await.unwrap();
        assert!(
            search(&a1, &s1).await.is_allowed(),
            "release of {scope:?} restores"
        );
    }

    // A tool pattern stops that tool for everyone, and only that tool.
    let k = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Tool,
            "payments.*",
            "refund fraud",
        ))
        .await
        .unwrap();
    let d = a2.authorize(&s2, "payments.refund", &refund).await.unwrap();
    assert!(killed_by(&d, &k.id), "{d:?}");
    assert!(search(&a2, &s2).await.is_allowed());
    admin.release(&k.id, "fixed").await.unwrap();

    // Global stops everyone, including opening sessions.
    let k = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Global,
            "",
            "incident 42",
        ))
        .await
        .unwrap();
    assert!(killed_by(&search(&a1, &s1).await, &k.id));
    assert!(killed_by(&search(&a2, &s2).await, &k.id));
    let err = a1
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.reason(), Some("KILL_SWITCH"));
    admin.release(&k.id, "resolved").await.unwrap();
    assert!(search(&a1, &s1).await.is_allowed());

    // Every engage and release is in the audit trail with who and why, and the chain holds. The SESSION
    // switch's events are in acme's session, so only a reader of every tenant (an admin) sees all six.
    let auditor =
        broker_sdk::AuditClient::connect(h.endpoint(), h.token("ops-admin", &[Role::Admin], None))
            .await
            .unwrap();
    let events = auditor
        .list_events(AuditFilter::new().agent("ops-admin").page_size(100))
        .await
        .unwrap()
        .events;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "KILL_SWITCH_ENGAGED")
            .count(),
        6,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "KILL_SWITCH_RELEASED")
            .count(),
        6,
        "{kinds:?}"
    );
    assert!(auditor.verify_chain().await.unwrap().is_ok());
}
both!(each_scope_stops_its_own_and_nothing_else);

async fn a_kill_switch_is_checked_before_a_replayed_allow(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (a1, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    let args = json!({"query": "retry me"});
    assert!(a1
        .authorize_with_call_id(&s1, "web.search", &args, "call-7")
        .await
        .unwrap()
        .is_allowed());
    let k = h
        .admin()
        .await
        .engage(EngageRequest::new(
            KillSwitchScope::Agent,
            "agent-1",
            "stop",
        ))
        .await
        .unwrap();
    // A retry of an earlier ALLOW must not let the agent run the tool again while it is stopped.
    let retried = a1
        .authorize_with_call_id(&s1, "web.search", &args, "call-7")
        .await
        .unwrap();
    assert!(killed_by(&retried, &k.id), "{retried:?}");
}
both!(a_kill_switch_is_checked_before_a_replayed_allow);

async fn only_admins_engage_and_bad_requests_name_the_field(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let as_agent = broker_sdk::KillSwitchClient::connect(
        h.endpoint(),
        h.token("agent-1", &[Role::Agent], None),
    )
    .await
    .unwrap();
    let err = as_agent
        .engage(EngageRequest::new(KillSwitchScope::Global, "", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let admin = h.admin().await;
    for (req, field) in [
        (
            EngageRequest::new(KillSwitchScope::Global, "agent-1", "x"),
            "target",
        ),
        (
            EngageRequest::new(KillSwitchScope::Agent, "", "x"),
            "target",
        ),
        (
            EngageRequest::new(KillSwitchScope::Session, "not-a-session", "x"),
            "target",
        ),
        (
            EngageRequest::new(KillSwitchScope::Agent, "a", "   "),
            "reason",
        ),
        (
            EngageRequest::new(KillSwitchScope::Agent, "a", "x")
                .expires_at(SystemTime::now() - Duration::from_secs(5)),
            "expires_at",
        ),
    ] {
        let err = admin.engage(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    assert_eq!(
        admin
            .release("ksw_00000000000000000000000000000000", "x")
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
}
both!(only_admins_engage_and_bad_requests_name_the_field);

async fn an_expiring_switch_releases_itself_audited(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (a1, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    let admin = h.admin().await;
    let k = admin
        .engage(
            EngageRequest::new(KillSwitchScope::Agent, "agent-1", "cool down")
                .expires_at(SystemTime::now() + Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(killed_by(&search(&a1, &s1).await, &k.id));
    // The expiry was set from the wall clock, which ran on since the harness's clock started: past it
    // by a margin a slow machine cannot eat.
    h.clock.advance(Duration::from_secs(120));
    let after = search(&a1, &s1).await;
    assert!(
        after.is_allowed(),
        "an expired switch stops nothing: {after:?}"
    );
    // The broker records the expiry by itself, once.
    let auditor = h.auditor().await;
    let start = Instant::now();
    loop {
        let events = auditor
            .list_events(AuditFilter::new().agent("broker"))
            .await
            .unwrap()
            .events;
        let expired: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "KILL_SWITCH_EXPIRED")
            .collect();
        if expired.len() == 1 {
            break;
        }
        assert!(expired.len() < 2, "expired twice");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "expiry never audited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = admin.list(true).await.unwrap();
    let ended = listed.iter().find(|s| s.id == k.id).unwrap();
    assert!(!ended.active);
    assert_eq!(ended.release_reason.as_deref(), Some("expired"));
}
both!(an_expiring_switch_releases_itself_audited);

async fn repeated_denials_quarantine_the_session(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (a1, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    // The default rule: 10 denials within 60 s in one session.
    let too_many = json!({"query": "x", "max_results": 1000});
    for _ in 0..10 {
        let d = a1.authorize(&s1, "web.search", &too_many).await.unwrap();
        assert!(d.has_reason("POLICY_DENY"), "{d:?}");
    }
    let d = search(&a1, &s1).await;
    let r = d
        .reason("KILL_SWITCH")
        .unwrap_or_else(|| panic!("quarantined: {d:?}"));
    assert!(r.message.contains("AUTO_QUARANTINE"), "{r:?}");
    let switches = h.admin().await.list(false).await.unwrap();
    let q = switches
        .iter()
        .find(|k| Some(k.id.as_str()) == r.kill_switch_id.as_deref())
        .unwrap();
    assert_eq!(
        (q.scope, q.target.as_str(), q.engaged_by.as_str()),
        (
            KillSwitchScope::Session,
            s1.as_str(),
            "broker:auto-quarantine"
        )
    );
    // The agent's other sessions carry on.
    let other = a1
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    assert!(search(&a1, &other.session_id).await.is_allowed());
}
both!(repeated_denials_quarantine_the_session);

async fn switches_survive_a_restart(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (_, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    let k = h
        .admin()
        .await
        .engage(EngageRequest::new(
            KillSwitchScope::Agent,
            "agent-1",
            "persist me",
        ))
        .await
        .unwrap();
    let h = h.restart().await;
    let a1 = h.agent("agent-1", Some("alice")).await;
    assert!(killed_by(&search(&a1, &s1).await, &k.id));
}
both!(switches_survive_a_restart);

async fn a_switch_engaged_on_one_broker_stops_the_other_within_a_second(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let other = h.another_broker().await;
    let (_, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    let on_other = Client::connect(
        format!("http://{}", other.addr),
        h.token("agent-1", &[Role::Agent], Some("alice")),
    )
    .await
    .unwrap();
    assert!(
        search(&on_other, &s1).await.is_allowed(),
        "the same session works through either broker"
    );

    let mut watch = broker_sdk::KillSwitchClient::connect(
        format!("http://{}", other.addr),
        h.token("ops-admin", &[Role::Admin], None),
    )
    .await
    .unwrap()
    .watch()
    .await
    .unwrap();
    let engaged_at = Instant::now();
    let k = h
        .admin()
        .await
        .engage(EngageRequest::new(
            KillSwitchScope::Agent,
            "agent-1",
            "stop everywhere",
        ))
        .await
        .unwrap();
    loop {
        if killed_by(&search(&on_other, &s1).await, &k.id) {
            break;
        }
        assert!(
            engaged_at.elapsed() < Duration::from_secs(1),
            "the other broker still allows after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its watchers hear about it too.
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.change, event.switch.id.as_str()),
        (KillSwitchChange::Engaged, k.id.as_str())
    );
    other.shutdown().await.unwrap();
}
both!(a_switch_engaged_on_one_broker_stops_the_other_within_a_second);

async fn unreadable_switches_stop_everything_until_readable(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (a1, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    assert!(search(&a1, &s1).await.is_allowed());
    // The switches table becomes unreadable (the audit store still works, so denials are recorded).
    h.db.execute("ALTER TABLE kill_switches RENAME TO kill_switches_away")
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let d = search(&a1, &s1).await;
        if d.outcome == Outcome::Deny {
            let r = d.reason("KILL_SWITCH").unwrap_or_else(|| panic!("{d:?}"));
            assert!(r.message.contains("unknown"), "{r:?}");
            assert_eq!(r.kill_switch_id, None);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still allowing with unreadable switches"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.db.execute("ALTER TABLE kill_switches_away RENAME TO kill_switches")
        .await
        .unwrap();
    let start = Instant::now();
    while !search(&a1, &s1).await.is_allowed() {
        assert!(start.elapsed() < Duration::from_secs(5), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
both!(unreadable_switches_stop_everything_until_readable);

async fn another_agents_calls_never_quarantine_a_victims_session(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (victim, s1) = agent_with_session(&h, "agent-1", "alice", None).await;
    let (intruder, own) = agent_with_session(&h, "agent-2", "mallory", None).await;
    // More than the default session rule's 10 denials, all naming the victim's session.
    for _ in 0..19 {
        let d = search(&intruder, &s1).await;
        assert!(d.has_reason("SESSION_NOT_OWNED"), "{d:?}");
    }
    assert!(
        search(&victim, &s1).await.is_allowed(),
        "someone else's denials do not quarantine the session"
    );
    assert!(h.admin().await.list(false).await.unwrap().is_empty());
    // Probing sessions that are not its own counts against the prober (default: 20 within 60 s).
    search(&intruder, &s1).await;
    let d = search(&intruder, &own).await;
    let r = d
        .reason("KILL_SWITCH")
        .unwrap_or_else(|| panic!("the prober is quarantined: {d:?}"));
    assert!(r.message.contains("AUTO_QUARANTINE"), "{r:?}");
    let switches = h.admin().await.list(false).await.unwrap();
    assert_eq!(switches.len(), 1, "{switches:?}");
    assert_eq!(
        (switches[0].scope, switches[0].target.as_str()),
        (KillSwitchScope::Agent, "agent-2")
    );
    assert!(search(&victim, &s1).await.is_allowed());
}
both!(another_agents_calls_never_quarantine_a_victims_session);

async fn an_auto_quarantine_expires_by_itself(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let a1 = h.agent("agent-1", Some("alice")).await;
    // Outlives the quarantine.
    let s1 = a1
        .open_session(SessionRequest::new(["web.search"]).ttl(Duration::from_secs(3 * 3600)))
        .await
        .unwrap()
        .session_id;
    let too_many = json!({"query": "x", "max_results": 1000});
    for _ in 0..10 {
        a1.authorize(&s1, "web.search", &too_many).await.unwrap();
    }
    let d = search(&a1, &s1).await;
    let id = d
        .reason("KILL_SWITCH")
        .unwrap()
        .kill_switch_id
        .clone()
        .unwrap();
    let k = h.admin().await.list(false).await.unwrap().remove(0);
    assert_eq!(k.id, id);
    assert_eq!(
        k.expires_at
            .and_then(|e| e.duration_since(k.engaged_at).ok()),
        Some(Duration::from_secs(3600)),
        "the default rule's quarantine lasts 1h: {k:?}"
    );
    h.clock.advance(Duration::from_secs(3599));
    assert!(killed_by(&search(&a1, &s1).await, &id));
    h.clock.advance(Duration::from_secs(2));
    assert!(
        search(&a1, &s1).await.is_allowed(),
        "the quarantine ended by itself"
    );
}
both!(an_auto_quarantine_expires_by_itself);

async fn a_session_switch_stops_the_sessions_descendants(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let (a1, root) = agent_with_session(&h, "agent-1", "alice", None).await;
    let child_of = |parent: &str| {
        SessionRequest::new(["web.search", "payments.refund"]).parent(parent.to_owned())
    };
    let child = a1.open_session(child_of(&root)).await.unwrap().session_id;
    let grandchild = a1.open_session(child_of(&child)).await.unwrap().session_id;
    let (_, unrelated) = agent_with_session(&h, "agent-1", "alice", None).await;
    let args = json!({"query": "retry me"});
    assert!(a1
        .authorize_with_call_id(&grandchild, "web.search", &args, "call-1")
        .await
        .unwrap()
        .is_allowed());
    // A pending approval in the grandchild, cancelled by the switch on the root.
    let refund = json!({"payment_id": "p", "amount": 5000, "currency": "EUR"});
    let pending = a1
        .authorize(&grandchild, "payments.refund", &refund)
        .await
        .unwrap();
    assert_eq!(pending.outcome, Outcome::PendingApproval, "{pending:?}");
    let approval = pending.approval_id.unwrap();
    // And an approved one in the child, never used under the switch.
    let approved = a1
        .authorize(
            &child,
            "payments.refund",
            &json!({"payment_id": "q", "amount": 6000, "currency": "EUR"}),
        )
        .await
        .unwrap()
        .approval_id
        .unwrap();
    let bob = h.approver("bob", &["payments-approvers"]).await;
    bob.approve(&approved, "ok").await.unwrap();

    let admin = h.admin().await;
    let k = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Session,
            root.clone(),
            "runaway tree",
        ))
        .await
        .unwrap();
    for s in [&root, &child, &grandchild] {
        assert!(killed_by(&search(&a1, s).await, &k.id), "{s}");
    }
    let retried = a1
        .authorize_with_call_id(&grandchild, "web.search", &args, "call-1")
        .await
        .unwrap();
    assert!(
        killed_by(&retried, &k.id),
        "no replay under the switch: {retried:?}"
    );
    assert!(
        search(&a1, &unrelated).await.is_allowed(),
        "siblings outside the tree run"
    );
    assert_eq!(
        bob.get(&approval).await.unwrap().status,
        broker_sdk::ApprovalStatus::Cancelled,
        "a descendant's pending approval is cancelled"
    );
    let used = a1.await_approval(&approved, Duration::ZERO).await.unwrap();
    assert!(killed_by(&used, &k.id), "{used:?}");
    let doc = json!({"tenant": "acme", "collection": "kb", "classification": 0, "personal": false,
                     "source": "wiki", "labels": []});
    let r = a1
        .authorize_retrieval(&grandchild, &[("d", &doc)])
        .await
        .unwrap();
    assert!(
        r.documents.iter().all(|d| d.outcome == Outcome::Deny
            && d.reasons
                .iter()
                .any(|x| x.kill_switch_id.as_deref() == Some(k.id.as_str()))),
        "{r:?}"
    );
    // Sessions opened later under the tree are refused, with the switch named.
    let err = a1.open_session(child_of(&grandchild)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(&k.id), "{err:?}");

    // A switch on a child stops the child's subtree, not its parent.
    admin.release(&k.id, "contained").await.unwrap();
    let k2 = admin
        .engage(EngageRequest::new(
            KillSwitchScope::Session,
            child.clone(),
            "just this branch",
        ))
        .await
        .unwrap();
    assert!(search(&a1, &root).await.is_allowed());
    assert!(killed_by(&search(&a1, &grandchild).await, &k2.id));
}
both!(a_session_switch_stops_the_sessions_descendants);
