//! `KillSwitchClient` sends what the admin asked for, reads switches and watch events, and fails closed
//! on what it cannot read; denials name the switch that blocked them.

use std::time::{Duration, UNIX_EPOCH};

use broker_sdk::{proto, EngageRequest, Error, KillSwitchChange, KillSwitchEvent, KillSwitchScope};
use serde_json::json;
use tonic::Status;

use crate::fake::{decision, kill_switch, kill_switch_event, reason, timestamp, Fake, Message};

#[tokio::test]
async fn engage_sends_the_token_scope_target_reason_and_expiry() {
    let fake = Fake::new();
    let admin = fake
        .kill_switch_client("admin-token".to_owned())
        .await
        .with_timeout(Duration::from_secs(3));
    let expires_at = UNIX_EPOCH + Duration::from_secs(1_700_003_600);

    let switch = admin
        .engage(
            EngageRequest::new(KillSwitchScope::Tool, "payments.*", "incident 42")
                .expires_at(expires_at),
        )
        .await
        .expect("engage");

    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.authorization.as_deref(), Some("Bearer admin-token"));
    assert_eq!(call.grpc_timeout.as_deref(), Some("3000000u"));
    assert!(
        matches!(
            &call.message,
            Message::Engage(proto::EngageKillSwitchRequest {
                scope: 5, target, reason, expires_at: Some(prost_types::Timestamp { seconds: 1_700_003_600, nanos: 0 }),
            }) if target == "payments.*" && reason == "incident 42"
        ),
        "{:?}",
        call.message
    );
    assert_eq!(switch.id, "ksw_0123456789abcdef0123456789abcdef");
    assert_eq!(switch.scope, KillSwitchScope::Tool);
    assert_eq!(switch.target, "payments.*");
    assert_eq!(switch.reason, "incident 42");
    assert_eq!(switch.engaged_by, "admin-1");
    assert_eq!(
        switch.engaged_at,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
    assert_eq!(switch.expires_at, Some(expires_at));
    assert!(switch.active);
    assert_eq!(switch.released_by, None);
    assert_eq!(switch.released_at, None);
    assert_eq!(switch.release_reason, None);
}

#[tokio::test]
async fn engage_without_expiry_sends_none() {
    let fake = Fake::new();
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let switch = admin
        .engage(EngageRequest::new(KillSwitchScope::Global, "", "stop"))
        .await
        .expect("engage");

    assert!(matches!(
        fake.calls().pop().map(|c| c.message),
        Some(Message::Engage(proto::EngageKillSwitchRequest {
            scope: 1,
            expires_at: None,
            ..
        }))
    ));
    assert_eq!(switch.scope, KillSwitchScope::Global);
    assert_eq!(switch.expires_at, None);
}

#[tokio::test]
async fn release_sends_the_id_and_reason_and_reads_the_released_switch() {
    let fake = Fake::new();
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let switch = admin
        .release("ksw_1", "incident 42 resolved")
        .await
        .expect("release");

    let call = fake.calls().pop().expect("one call");
    assert_eq!(call.authorization.as_deref(), Some("Bearer admin-token"));
    assert!(matches!(
        &call.message,
        Message::Release(proto::ReleaseKillSwitchRequest { id, reason })
            if id == "ksw_1" && reason == "incident 42 resolved"
    ));
    assert_eq!(switch.id, "ksw_1");
    assert!(!switch.active);
    assert_eq!(switch.released_by.as_deref(), Some("admin-1"));
    assert_eq!(
        switch.released_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_900))
    );
    assert_eq!(
        switch.release_reason.as_deref(),
        Some("incident 42 resolved")
    );
}

#[tokio::test]
async fn releasing_an_unknown_switch_is_not_found() {
    let fake = Fake::new();
    fake.on_release(|r| {
        Err(Status::not_found(format!(
            "no engaged kill switch `{}`",
            r.id
        )))
    });
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let released = admin.release("ksw_nope", "typo").await;

    assert_eq!(
        released,
        Err(Error::NotFound {
            message: "no engaged kill switch `ksw_nope`".into(),
            reason: None,
        })
    );
}

#[tokio::test]
async fn list_sends_include_released_and_reads_every_switch() {
    let fake = Fake::new();
    fake.on_list_switches(|_| {
        let event = |id, scope, target| {
            kill_switch_event("ACTIVE", id, scope, target)
                .switch
                .expect("a switch")
        };
        Ok(proto::ListKillSwitchesResponse {
            switches: vec![
                event("ksw_2", proto::KillSwitchScope::Session, "ses_1"),
                event("ksw_1", proto::KillSwitchScope::User, "alice"),
            ],
        })
    });
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let switches = admin.list(true).await.expect("list");

    assert!(matches!(
        fake.calls().pop().map(|c| c.message),
        Some(Message::ListSwitches(proto::ListKillSwitchesRequest {
            include_released: true
        }))
    ));
    let read: Vec<_> = switches
        .iter()
        .map(|s| (s.id.as_str(), s.scope, s.target.as_str()))
        .collect();
    assert_eq!(
        read,
        [
            ("ksw_2", KillSwitchScope::Session, "ses_1"),
            ("ksw_1", KillSwitchScope::User, "alice"),
        ]
    );
}

#[tokio::test]
async fn watch_yields_the_events_in_order_and_ends_with_the_stream() {
    let fake = Fake::new();
    fake.on_watch(|_| {
        Ok(vec![
            Ok(kill_switch_event(
                "ACTIVE",
                "ksw_1",
                proto::KillSwitchScope::Global,
                "",
            )),
            Ok(kill_switch_event(
                "ENGAGED",
                "ksw_2",
                proto::KillSwitchScope::Agent,
                "agent-1",
            )),
            Ok(kill_switch_event(
                "RELEASED",
                "ksw_1",
                proto::KillSwitchScope::Global,
                "",
            )),
            Ok(kill_switch_event(
                "EXPIRED",
                "ksw_2",
                proto::KillSwitchScope::Agent,
                "agent-1",
            )),
        ])
    });
    let admin = fake
        .kill_switch_client("admin-token".to_owned())
        .await
        .with_timeout(Duration::from_secs(3));

    let mut watch = admin.watch().await.expect("watch");
    let mut events = Vec::new();
    while let Some(event) = watch.next().await {
        let KillSwitchEvent { change, switch } = event.expect("an event");
        events.push((change, switch.id, switch.scope, switch.target));
    }

    assert_eq!(
        events,
        [
            (
                KillSwitchChange::Active,
                "ksw_1".to_owned(),
                KillSwitchScope::Global,
                String::new()
            ),
            (
                KillSwitchChange::Engaged,
                "ksw_2".to_owned(),
                KillSwitchScope::Agent,
                "agent-1".to_owned()
            ),
            (
                KillSwitchChange::Released,
                "ksw_1".to_owned(),
                KillSwitchScope::Global,
                String::new()
            ),
            (
                KillSwitchChange::Expired,
                "ksw_2".to_owned(),
                KillSwitchScope::Agent,
                "agent-1".to_owned()
            ),
        ]
    );
    assert!(watch.is_ended());
    assert!(watch.next().await.is_none(), "an ended watch stays ended");
    let call = fake.calls().pop().expect("one call");
    assert!(matches!(call.message, Message::Watch));
    assert_eq!(call.authorization.as_deref(), Some("Bearer admin-token"));
    assert_eq!(call.grpc_timeout, None, "the stream itself has no deadline");
}

#[tokio::test]
async fn an_unknown_change_ends_the_watch_with_a_protocol_error() {
    let fake = Fake::new();
    fake.on_watch(|_| {
        Ok(vec![
            Ok(kill_switch_event(
                "ACTIVE",
                "ksw_1",
                proto::KillSwitchScope::Tool,
                "email.*",
            )),
            Ok(kill_switch_event(
                "PAUSED",
                "ksw_1",
                proto::KillSwitchScope::Tool,
                "email.*",
            )),
            Ok(kill_switch_event(
                "RELEASED",
                "ksw_1",
                proto::KillSwitchScope::Tool,
                "email.*",
            )),
        ])
    });
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let mut watch = admin.watch().await.expect("watch");

    assert!(matches!(
        watch.next().await,
        Some(Ok(KillSwitchEvent {
            change: KillSwitchChange::Active,
            ..
        }))
    ));
    let unknown = watch.next().await;
    assert!(
        matches!(&unknown, Some(Err(Error::Protocol(m))) if m.contains("`PAUSED`")),
        "{unknown:?}"
    );
    assert!(
        watch.next().await.is_none(),
        "nothing after an unreadable event"
    );
}

#[tokio::test]
async fn an_unknown_scope_from_the_server_is_a_protocol_error() {
    let fake = Fake::new();
    fake.on_engage(|r| {
        let mut switch = kill_switch(r);
        switch.scope = 42;
        Ok(switch)
    });
    fake.on_list_switches(|_| {
        let mut switch = kill_switch(&proto::EngageKillSwitchRequest::default());
        switch.scope = proto::KillSwitchScope::Unspecified.into();
        Ok(proto::ListKillSwitchesResponse {
            switches: vec![switch],
        })
    });
    fake.on_watch(|_| {
        let mut event = kill_switch_event("ENGAGED", "ksw_1", proto::KillSwitchScope::Tool, "x");
        if let Some(switch) = event.switch.as_mut() {
            switch.scope = 7;
        }
        Ok(vec![Ok(event)])
    });
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let engaged = admin
        .engage(EngageRequest::new(KillSwitchScope::Tool, "x", "r"))
        .await;
    assert!(
        matches!(&engaged, Err(Error::Protocol(m)) if m.contains("`42`")),
        "{engaged:?}"
    );
    let listed = admin.list(false).await;
    assert!(
        matches!(&listed, Err(Error::Protocol(m)) if m.contains("UNSPECIFIED")),
        "{listed:?}"
    );
    let mut watch = admin.watch().await.expect("watch");
    assert!(matches!(watch.next().await, Some(Err(Error::Protocol(_)))));
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn a_watch_broken_by_the_broker_reports_its_status_and_ends() {
    let fake = Fake::new();
    fake.on_watch(|_| {
        Ok(vec![
            Ok(kill_switch_event(
                "ACTIVE",
                "ksw_1",
                proto::KillSwitchScope::User,
                "alice",
            )),
            Err(Status::unavailable("the broker is shutting down")),
        ])
    });
    let admin = fake.kill_switch_client("admin-token".to_owned()).await;

    let mut watch = admin.watch().await.expect("watch");

    assert!(matches!(watch.next().await, Some(Ok(_))));
    let broken = watch.next().await;
    assert!(
        matches!(&broken, Some(Err(Error::Unavailable { message, .. })) if message == "the broker is shutting down"),
        "{broken:?}"
    );
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn a_refused_watch_fails_on_opening() {
    let fake = Fake::new();
    fake.on_watch(|_| {
        Err(Status::permission_denied(
            "role `agent` may not watch kill switches",
        ))
    });
    let admin = fake.kill_switch_client("agent-token".to_owned()).await;

    let watch = admin.watch().await;

    assert!(
        matches!(&watch, Err(Error::PermissionDenied { .. })),
        "{watch:?}"
    );
}

#[tokio::test]
async fn opening_a_watch_is_bounded_by_the_deadline() {
    let fake = Fake::new();
    fake.hang();
    let admin = fake
        .kill_switch_client("admin-token".to_owned())
        .await
        .with_timeout(Duration::from_millis(200));

    let watch = admin.watch().await;

    assert!(
        matches!(&watch, Err(Error::DeadlineExceeded { .. })),
        "{watch:?}"
    );
}

#[tokio::test]
async fn a_kill_switch_deny_names_the_switch() {
    let fake = Fake::new();
    fake.on_authorize(|r| {
        let mut blocked = reason("KILL_SWITCH", "", "incident 42");
        blocked.kill_switch_id = "ksw_0123456789abcdef0123456789abcdef".into();
        Ok(decision(
            r,
            proto::Outcome::Deny,
            vec![blocked, reason("POLICY_DENY", "p1", "no")],
        ))
    });
    let client = fake.client("agent-token".to_owned()).await;

    let decision = client
        .authorize("ses_1", "payments.send", &json!({}))
        .await
        .expect("a deny is an answer");

    assert_eq!(
        decision
            .reason("KILL_SWITCH")
            .and_then(|r| r.kill_switch_id.as_deref()),
        Some("ksw_0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        decision
            .reason("POLICY_DENY")
            .map(|r| r.kill_switch_id.clone()),
        Some(None),
        "an empty id from the wire is none"
    );
}

#[tokio::test]
async fn audit_events_keep_the_kill_switch_id() {
    let fake = Fake::new();
    fake.on_list(|_| {
        let mut blocked = reason("KILL_SWITCH", "", "incident 42");
        blocked.kill_switch_id = "ksw_1".into();
        Ok(proto::ListAuditEventsResponse {
            events: vec![proto::AuditEvent {
                seq: 1,
                time: timestamp(1_700_000_000),
                kind: "TOOL_CALL_DECIDED".into(),
                outcome: proto::Outcome::Deny.into(),
                reasons: vec![blocked],
                ..Default::default()
            }],
            next_page_token: String::new(),
        })
    });
    let audit = fake.audit_client("auditor-token".to_owned()).await;

    let page = audit
        .list_events(broker_sdk::AuditFilter::new())
        .await
        .expect("list");

    let reasons = page.events.first().map(|e| e.reasons.clone());
    assert_eq!(
        reasons
            .as_deref()
            .and_then(|r| r.first())
            .and_then(|r| r.kill_switch_id.as_deref()),
        Some("ksw_1")
    );
}
