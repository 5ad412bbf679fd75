//! The database fails: no ALLOW without its committed audit record, UNAVAILABLE instead, then recovery.

use std::time::{Duration, Instant};

use broker_e2e::{both, DbBackend, Harness, Options};
use broker_sdk::{AuditFilter, SessionRequest};
use serde_json::json;

/// Calls until one is allowed (or the deadline passes), asserting that every failure is UNAVAILABLE.
async fn until_allowed(agent: &broker_sdk::Client, session: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match agent
            .authorize(session, "web.search", &json!({"query": "recovering"}))
            .await
        {
            Ok(d) if d.is_allowed() => return start.elapsed(),
            // Until the broker has re-read the kill switches, it fails closed: that is a DENY, recorded.
            Ok(d)
                if d.reason("KILL_SWITCH")
                    .is_some_and(|r| r.message.contains("unknown")) => {}
            Ok(d) => panic!("unexpected decision {d:?}"),
            Err(e) => assert!(
                matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ),
                "only 'could not decide' while recovering: {e:?}"
            ),
        }
        assert!(
            start.elapsed() < deadline,
            "no recovery within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn database_down_means_unavailable_then_recovery(backend: DbBackend) {
    let h = Harness::start_with(
        backend,
        Options {
            db_proxy: true,
            commit_timeout: Duration::from_millis(500),
            ..Options::default()
        },
    )
    .await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    assert!(agent
        .authorize(&s.session_id, "web.search", &json!({"query": "before"}))
        .await
        .unwrap()
        .is_allowed());

    // SQLite: another process holds the write lock; Postgres: the network to the database is cut.
    let lock = match backend {
        DbBackend::Sqlite => Some(h.db.hold_write_lock().await.unwrap()),
        DbBackend::Postgres => {
            h.proxy.as_ref().unwrap().cut();
            None
        }
    };
    for i in 0..3 {
        let started = Instant::now();
        let err = agent
            .authorize(
                &s.session_id,
                "web.search",
                &json!({"query": format!("during {i}")}),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert_eq!(err.reason(), Some("AUDIT_UNAVAILABLE"), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered within the bound, took {:?}",
            started.elapsed()
        );
    }

    match lock {
        Some(l) => l.release().await.unwrap(),
        None => h.proxy.as_ref().unwrap().restore(),
    }
    until_allowed(&agent, &s.session_id, Duration::from_secs(15)).await;

    // Every ALLOW the client saw is in the chain, and the chain is whole.
    let auditor = h.auditor().await;
    let allows = auditor
        .list_events(AuditFilter::new().outcome(broker_sdk::Outcome::Allow))
        .await
        .unwrap();
    assert!(allows
        .events
        .iter()
        .any(|e| e.arguments_redacted_json.contains("before")));
    assert!(allows
        .events
        .iter()
        .any(|e| e.arguments_redacted_json.contains("recovering")));
    assert!(auditor.verify_chain().await.unwrap().is_ok());
}
both!(database_down_means_unavailable_then_recovery);

async fn a_decision_is_committed_even_if_the_client_gives_up(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let lock = h.db.hold_write_lock().await.unwrap();
    // The client stops waiting long before the write can commit.
    let impatient = agent.clone().with_timeout(Duration::from_millis(200));
    let err = impatient
        .authorize_with_call_id(
            &s.session_id,
            "web.search",
            &json!({"query": "abandoned"}),
            "call-abandoned",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    lock.release().await.unwrap();
    // The write was not lost with the RPC: the retry replays the committed decision.
    let start = Instant::now();
    loop {
        let page = h
            .auditor()
            .await
            .list_events(AuditFilter::new().session_id(&s.session_id))
            .await
            .unwrap();
        if let Some(e) = page
            .events
            .iter()
            .find(|e| e.call_id.as_deref() == Some("call-abandoned"))
        {
            let retry = agent
                .authorize_with_call_id(
                    &s.session_id,
                    "web.search",
                    &json!({"query": "abandoned"}),
                    "call-abandoned",
                )
                .await
                .unwrap();
            assert_eq!(Some(retry.decision_id.as_str()), e.decision_id.as_deref());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "abandoned call never committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
both!(a_decision_is_committed_even_if_the_client_gives_up);

async fn a_frozen_database_is_answered_within_the_bound(backend: DbBackend) {
    let bound = Duration::from_millis(500);
    let h = Harness::start_with(
        backend,
        Options {
            db_proxy: true,
            commit_timeout: bound,
            ..Options::default()
        },
    )
    .await;
    let agent = h.agent("research-agent", Some("alice")).await;
    let s = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    // SQLite: writes wait on a lock held elsewhere; Postgres: the server stops answering (SIGSTOP-like),
    // so even the session read hangs unless the broker bounds it.
    let lock = match backend {
        DbBackend::Sqlite => Some(h.db.hold_write_lock().await.unwrap()),
        DbBackend::Postgres => {
            h.proxy.as_ref().unwrap().freeze();
            None
        }
    };
    for i in 0..3 {
        let started = Instant::now();
        let err = agent
            .authorize(
                &s.session_id,
                "web.search",
                &json!({"query": format!("frozen {i}")}),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        // Reads and the commit are each bounded: never more than a few bounds, never the 10 s request limit.
        assert!(
            started.elapsed() < bound * 4,
            "answered in {:?}",
            started.elapsed()
        );
    }
    match lock {
        Some(l) => l.release().await.unwrap(),
        None => h.proxy.as_ref().unwrap().thaw(),
    }
    until_allowed(&agent, &s.session_id, Duration::from_secs(15)).await;
    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(a_frozen_database_is_answered_within_the_bound);

/// Postgres only: the proxy cuts network connections, which an embedded SQLite file does not have.
/// Connections left idle in the pool die with the network; the first reads after it is back must not
/// fail on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_succeed_as_soon_as_the_database_network_is_back() {
    let h = Harness::start_with(
        DbBackend::Postgres,
        Options {
            db_proxy: true,
            ..Options::default()
        },
    )
    .await;
    let auditor = h.auditor().await;
    // Several reads at once leave several connections idle in the pool.
    let (a, b, c, d) = tokio::join!(
        auditor.list_events(AuditFilter::new()),
        auditor.list_events(AuditFilter::new()),
        auditor.list_events(AuditFilter::new()),
        auditor.list_events(AuditFilter::new()),
    );
    for read in [a, b, c, d] {
        read.unwrap();
    }
    let proxy = h.proxy.as_ref().unwrap();
    proxy.cut();
    proxy.restore();
    for i in 0..4 {
        auditor
            .list_events(AuditFilter::new())
            .await
            .unwrap_or_else(|e| panic!("read {i} after the network came back: {e:?}"));
    }
    assert!(auditor.verify_chain().await.unwrap().is_ok());
}
