//! The store's contract, written once and run on SQLite and on Postgres, each test on a database of its own.

use std::time::{Duration, Instant};

use super::testing::TestDb;
use super::{
    ApprovalFilter, ApprovalWrite, Backend, DecisionRecord, Error, ErrorKind, EventFilter, Page,
    Recorded, Store, StoreConfig, VoteResult,
};
use crate::clock::Micros;
use crate::domain::approval::{Approval, ApprovalStatus, Refusal, Requirement, Vote, VoteRecord};
use crate::domain::audit::{AuditEvent, CallFacts, EventBody, EventKind, GENESIS_HASH};
use crate::domain::decision::{Decision, Outcome, Reason, ReasonCode};
use crate::domain::killswitch::{KillSwitch, Release, Scope};
use crate::domain::session::{Session, SessionState, ToolScope};
use crate::domain::tenancy::TenantScope;
use crate::ids;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Generates `sqlite::<name>` and `postgres::<name>` for each contract test `<name>(&TestDb)`.
macro_rules! contract_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let db = crate::store::testing::TestDb::new(crate::store::Backend::Sqlite).await?;
                    super::$name(&db).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let db = crate::store::testing::TestDb::new(crate::store::Backend::Postgres).await?;
                    super::$name(&db).await
                }
            )+
        }
    };
}

contract_tests!(
    session_round_trip,
    close_sets_closed_at_and_appends_an_event,
    allow_spends_budget_and_is_remembered,
    allow_on_closed_expired_or_missing_session_is_overruled,
    budget_holds_under_concurrent_allows_from_two_stores,
    replay_returns_the_first_decision_without_event_or_spend,
    chain_verifies_after_concurrent_writes,
    a_busy_writer_commits_every_queued_decision,
    plain_and_mixed_batches_interleave,
    audit_rows_are_append_only,
    tamper_update_is_named_by_seq,
    tamper_delete_is_named_by_next_seq,
    list_events_filters_and_paginates,
    locked_database_times_out_fast_then_recovers,
    full_queue_is_overloaded,
    a_bad_job_fails_alone,
    kill_switch_engage_is_active_and_audited,
    kill_switch_release_happens_once,
    kill_switch_expires_once_across_brokers,
    kill_switches_list_newest_first,
    approval_request_is_stored_beside_its_pending_decision,
    approval_votes_keep_separation_of_duties_and_settle_it,
    approval_is_consumed_once_and_only_as_approved,
    exhausted_budget_leaves_the_approval_unused,
    approvals_expire_once_across_brokers,
    only_pending_approvals_are_cancelled,
    approvals_changed_since_come_in_order,
    concurrent_votes_on_two_brokers_both_count,
    approvals_list_newest_first_filtered_and_paged,
    listings_show_only_the_scoped_tenant,
    two_identities_of_one_person_voting_at_once_count_once,
    session_collections_and_labels_round_trip,
    labels_accumulate_and_every_call_is_audited,
    labels_for_a_missing_session_or_a_bad_event_write_nothing,
    concurrent_labels_on_two_brokers_all_land,
    allows_decided_on_fewer_labels_are_stale_and_write_nothing,
    allows_decided_on_a_call_count_that_moved_are_stale,
    a_writer_sees_what_another_broker_changed_between_its_batches,
    flush_waits_for_every_write_queued_before_it,
);

// -------------------------------------------------------------------------------------------------
// fixtures

const T0: Micros = 1_700_000_000_000_000;
const HOUR: Micros = 3_600_000_000;

fn session(max_tool_calls: u32) -> Session {
    Session {
        id: ids::session_id(),
        agent: "agent-1".into(),
        user: Some("alice".into()),
        tenant: Some("acme".into()),
        tools: vec![
            ToolScope::Exact("web.search".into()),
            ToolScope::Prefix("email".into()),
            ToolScope::All,
        ],
        purpose: "research".into(),
        created_at: T0,
        expires_at: T0 + HOUR,
        max_tool_calls,
        tool_calls_used: 0,
        closed_at: None,
        collections: vec!["handbook".into(), "tickets".into()],
        labels: vec!["internal".into()],
        ancestors: vec![],
    }
}

fn body(kind: EventKind, s: &Session, time: Micros) -> EventBody {
    EventBody::for_session(kind, s, time)
}

fn opened(s: &Session) -> EventBody {
    body(EventKind::SessionOpened, s, s.created_at)
}

fn closed(s: &Session, at: Micros) -> EventBody {
    body(EventKind::SessionClosed, s, at)
}

/// An ALLOW that spends budget and is remembered; `now` and `decided_at` are `at`.
fn allow(s: &Session, tool: &str, call_id: &str, at: Micros) -> DecisionRecord {
    DecisionRecord {
        decision: Decision {
            decision_id: ids::decision_id(),
            outcome: Outcome::Allow,
            reasons: vec![Reason::from_policy(
                ReasonCode::PolicyAllow,
                "allow-all",
                "permitted by policy",
            )],
            policy_version: "v1".into(),
            session_id: s.id.clone(),
            tool: tool.into(),
            call_id: call_id.into(),
            decided_at: at,
            approval_id: None,
        },
        call: CallFacts {
            event_id: ids::event_id(at),
            agent: s.agent.clone(),
            user: s.user.clone(),
            arguments_digest: format!("digest-of-{call_id}"),
            arguments_redacted: r#"{"q":"rust","token":"[REDACTED]"}"#.into(),
            replay_of: None,
        },
        spend_budget: true,
        remember: true,
        approval: None,
        labels_seen: None,
        calls_seen: None,
        now: at,
    }
}

fn deny(s: &Session, tool: &str, call_id: &str, at: Micros) -> DecisionRecord {
    let mut rec = allow(s, tool, call_id, at);
    rec.decision.outcome = Outcome::Deny;
    rec.decision.reasons = vec![Reason::from_policy(
        ReasonCode::PolicyDeny,
        "forbid-email",
        "email is off",
    )];
    rec.spend_budget = false;
    rec
}

fn committed(r: Recorded) -> Result<Decision, String> {
    match r {
        Recorded::Committed(d) => Ok(d),
        Recorded::Replayed(c) => Err(format!("expected a commit, got a replay of {c:?}")),
        Recorded::Stale => Err("expected a commit, got Stale".to_owned()),
    }
}

fn kind_of<T: std::fmt::Debug>(r: &Result<T, Error>) -> Option<ErrorKind> {
    r.as_ref().err().map(Error::kind)
}

fn reason_codes(d: &Decision) -> Vec<ReasonCode> {
    d.reasons.iter().map(|r| r.code).collect()
}

async fn events(store: &Store, filter: EventFilter) -> Result<Vec<AuditEvent>, Error> {
    let (events, next) = store
        .list_events(
            &filter,
            Page {
                after_seq: 0,
                limit: 1000,
            },
        )
        .await?;
    assert_eq!(next, None);
    Ok(events)
}

async fn session_events(store: &Store, s: &Session) -> Result<Vec<AuditEvent>, Error> {
    events(
        store,
        EventFilter {
            session_id: Some(s.id.clone()),
            ..EventFilter::default()
        },
    )
    .await
}

async fn last_seq(store: &Store) -> Result<i64, Error> {
    Ok(store.head().await?.map_or(0, |h| h.seq))
}

/// Lets raw SQL modify audit rows, as an attacker with write access to the database could.
async fn drop_append_only_guard(db: &TestDb) -> Result<(), Error> {
    match db.backend() {
        Backend::Sqlite => {
            db.execute("DROP TRIGGER audit_events_no_update").await?;
            db.execute("DROP TRIGGER audit_events_no_delete").await?;
        }
        Backend::Postgres => {
            db.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
                .await?;
        }
    }
    Ok(())
}

/// Opens `s`, then records one decision per `(tool, outcome)`, one after the other.
async fn open_with_decisions(
    store: &Store,
    s: &Session,
    calls: &[(&str, Outcome)],
) -> Result<(), Error> {
    store.open_session(s, opened(s)).await?;
    for (i, (tool, outcome)) in calls.iter().enumerate() {
        let at = T0 + 100 * (i64::try_from(i).unwrap_or(0) + 1);
        let call_id = format!("call-{i}");
        let rec = match outcome {
            Outcome::Allow => allow(s, tool, &call_id, at),
            Outcome::Deny => deny(s, tool, &call_id, at),
            Outcome::PendingApproval => {
                return Err(Error::invalid("use `request` for approvals"));
            }
        };
        store.record_decision(rec).await?;
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// the contract

async fn session_round_trip(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3);
    let event = store.open_session(&s, opened(&s)).await?;
    assert_eq!((event.seq, event.prev_hash.as_str()), (1, GENESIS_HASH));
    assert_eq!(event.body.kind, EventKind::SessionOpened);
    assert_eq!(store.session(&s.id).await?, Some(s.clone()));
    assert_eq!(store.session("ses_missing").await?, None);

    // The same id again is refused and writes nothing.
    let again = store.open_session(&s, opened(&s)).await;
    assert_eq!(kind_of(&again), Some(ErrorKind::Conflict), "{again:?}");
    assert_eq!(last_seq(store).await?, 1);

    // A session without user or tenant round-trips too; migrating again is a no-op.
    let bare = Session {
        user: None,
        tenant: None,
        tools: vec![],
        ..session(0)
    };
    store.open_session(&bare, opened(&bare)).await?;
    assert_eq!(store.session(&bare.id).await?, Some(bare));
    store.migrate().await?;
    store.ping().await?;
    Ok(())
}

async fn close_sets_closed_at_and_appends_an_event(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3);
    store.open_session(&s, opened(&s)).await?;
    let event = store
        .close_session(&s.id, T0 + 10, closed(&s, T0 + 10))
        .await?;
    assert_eq!(event.seq, 2);
    assert_eq!(event.body.kind, EventKind::SessionClosed);
    assert_eq!(event.body.session_id.as_deref(), Some(s.id.as_str()));
    let stored = store.session(&s.id).await?.ok_or("session gone")?;
    assert_eq!(stored.closed_at, Some(T0 + 10));
    assert_eq!(stored.state(T0 + 11), SessionState::Closed);

    // Closing twice keeps the first close and writes nothing; an unknown session is not found.
    let again = store
        .close_session(&s.id, T0 + 20, closed(&s, T0 + 20))
        .await;
    assert_eq!(kind_of(&again), Some(ErrorKind::Conflict), "{again:?}");
    assert_eq!(
        store.session(&s.id).await?.and_then(|s| s.closed_at),
        Some(T0 + 10)
    );
    let missing = store.close_session("ses_missing", T0, closed(&s, T0)).await;
    assert_eq!(kind_of(&missing), Some(ErrorKind::NotFound), "{missing:?}");
    assert_eq!(last_seq(store).await?, 2);
    Ok(())
}

async fn allow_spends_budget_and_is_remembered(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(2);
    store.open_session(&s, opened(&s)).await?;
    let rec = allow(&s, "web.search", "c1", T0 + 1);
    let decision = committed(store.record_decision(rec.clone()).await?)?;
    assert_eq!(
        decision, rec.decision,
        "an ALLOW with budget left is committed unchanged"
    );
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1)
    );

    let events = session_events(store, &s).await?;
    let last = events.last().ok_or("no events")?;
    assert_eq!(events.len(), 2);
    assert_eq!(last.body, EventBody::for_decision(&decision, &rec.call));

    let remembered = store
        .recorded_call(&s.id, &s.agent, "c1")
        .await?
        .ok_or("call not remembered")?;
    assert_eq!(
        (remembered.arguments_digest.as_str(), &remembered.decision),
        ("digest-of-c1", &decision)
    );
    assert_eq!(
        store.recorded_call(&s.id, "agent-2", "c1").await?,
        None,
        "the key includes the agent"
    );

    // A DENY spends nothing.
    committed(
        store
            .record_decision(deny(&s, "email.send", "c2", T0 + 2))
            .await?,
    )?;
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1)
    );
    Ok(())
}

async fn allow_on_closed_expired_or_missing_session_is_overruled(db: &TestDb) -> TestResult {
    let store = db.store();
    let closed_s = session(5);
    store.open_session(&closed_s, opened(&closed_s)).await?;
    store
        .close_session(&closed_s.id, T0 + 5, closed(&closed_s, T0 + 5))
        .await?;
    let expired = session(5);
    store.open_session(&expired, opened(&expired)).await?;
    let missing = session(5);

    for (s, at, code) in [
        (&closed_s, T0 + 10, ReasonCode::SessionClosed),
        (&expired, T0 + HOUR, ReasonCode::SessionExpired),
        (&missing, T0 + 10, ReasonCode::SessionNotFound),
    ] {
        let rec = allow(s, "web.search", "c1", at);
        let decision = committed(store.record_decision(rec.clone()).await?)?;
        assert_eq!(decision.outcome, Outcome::Deny, "{code}");
        assert_eq!(reason_codes(&decision), vec![code]);
        assert_eq!(
            decision.decision_id, rec.decision.decision_id,
            "overruling keeps the decision's identity"
        );
        let event = events(store, EventFilter::default()).await?;
        let event = event
            .iter()
            .find(|e| e.body.event_id == rec.call.event_id)
            .ok_or("no event")?;
        assert_eq!(
            event.body.outcome,
            Some(Outcome::Deny),
            "the trail records the overruled decision"
        );
        let remembered = store
            .recorded_call(&s.id, &s.agent, "c1")
            .await?
            .ok_or("not remembered")?;
        assert_eq!(remembered.decision, decision);
    }
    assert_eq!(
        store
            .session(&closed_s.id)
            .await?
            .map(|s| s.tool_calls_used),
        Some(0)
    );
    assert_eq!(
        store.session(&expired.id).await?.map(|s| s.tool_calls_used),
        Some(0)
    );
    Ok(())
}

async fn budget_holds_under_concurrent_allows_from_two_stores(db: &TestDb) -> TestResult {
    const MAX: u32 = 5;
    const CALLS: usize = 20;
    let s = session(MAX);
    db.store().open_session(&s, opened(&s)).await?;
    // A second store on the same database: another broker replica, with a writer of its own.
    let replica = db.connect_another(TestDb::test_config()).await?;
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let store = if i % 2 == 0 {
                db.store().clone()
            } else {
                replica.clone()
            };
            let rec = allow(&s, "web.search", &format!("call-{i}"), T0 + 1);
            tokio::spawn(async move { store.record_decision(rec).await })
        })
        .collect();
    let mut allows = 0;
    for task in futures::future::join_all(tasks).await {
        let decision = committed(task??)?;
        if decision.is_allow() {
            allows += 1;
        } else {
            assert_eq!(reason_codes(&decision), vec![ReasonCode::BudgetExhausted]);
        }
    }
    assert_eq!(allows, MAX, "exactly the budget is allowed");
    assert_eq!(
        db.store().session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(MAX)
    );
    let events = session_events(db.store(), &s).await?;
    assert_eq!(events.len(), CALLS + 1);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.body.outcome == Some(Outcome::Allow))
            .count(),
        MAX as usize
    );
    assert!(db.store().verify_chain().await?.ok);
    Ok(())
}

async fn replay_returns_the_first_decision_without_event_or_spend(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3);
    store.open_session(&s, opened(&s)).await?;
    let first = committed(
        store
            .record_decision(allow(&s, "web.search", "c1", T0 + 1))
            .await?,
    )?;
    let seq = last_seq(store).await?;

    let mut retry = allow(&s, "web.search", "c1", T0 + 2);
    retry.call.arguments_digest = "another-digest".into();
    let replayed = store.record_decision(retry.clone()).await?;
    let Recorded::Replayed(call) = replayed else {
        return Err(format!("expected a replay, got {replayed:?}").into());
    };
    assert_eq!(call.decision, first);
    assert_eq!(
        call.arguments_digest, "digest-of-c1",
        "the first call's digest, for the caller to compare"
    );
    assert_eq!(last_seq(store).await?, seq, "a replay appends no event");
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1),
        "a replay spends nothing"
    );

    // Without `remember`, the same call id is a new call.
    let mut unremembered = allow(&s, "web.search", "c1", T0 + 3);
    unremembered.remember = false;
    committed(store.record_decision(unremembered).await?)?;
    assert_eq!(last_seq(store).await?, seq + 1);
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(2)
    );
    Ok(())
}

async fn chain_verifies_after_concurrent_writes(db: &TestDb) -> TestResult {
    let replica = db.connect_another(TestDb::test_config()).await?;
    let sessions: Vec<Session> = (0..6).map(|_| session(4)).collect();
    for s in &sessions {
        db.store().open_session(s, opened(s)).await?;
    }
    let mut tasks = Vec::new();
    for (n, s) in sessions.iter().enumerate() {
        for i in 0..8 {
            let store = if (n + i) % 2 == 0 {
                db.store().clone()
            } else {
                replica.clone()
            };
            let rec = if i % 3 == 0 {
                deny(s, "email.send", &format!("call-{i}"), T0 + 1)
            } else {
                allow(s, "web.search", &format!("call-{i}"), T0 + 1)
            };
            tasks.push(tokio::spawn(async move {
                store.record_decision(rec).await.map(|_| ())
            }));
        }
        let store = replica.clone();
        let (id, event) = (s.id.clone(), closed(s, T0 + 2));
        tasks.push(tokio::spawn(async move {
            store.close_session(&id, T0 + 2, event).await.map(|_| ())
        }));
    }
    for task in futures::future::join_all(tasks).await {
        task??;
    }
    let total = 6 * (1 + 8 + 1);
    let report = db.store().verify_chain().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, total);
    let seqs: Vec<i64> = events(db.store(), EventFilter::default())
        .await?
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=i64::try_from(total)?).collect::<Vec<_>>(),
        "seq is contiguous"
    );
    Ok(())
}

/// Many decisions queued at once on one store: batches follow each other with jobs always waiting (on
/// Postgres each commit then begins the next transaction and takes the lock in the same round trip).
/// Every decision is committed exactly once, the budget counts each ALLOW, and the chain is whole.
async fn a_busy_writer_commits_every_queued_decision(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(150);
    store.open_session(&s, opened(&s)).await?;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let rec = if i % 4 == 0 {
                deny(&s, "email.send", &format!("c{i}"), T0 + 1)
            } else {
                allow(&s, "web.search", &format!("c{i}"), T0 + 1)
            };
            let store = store.clone();
            tokio::spawn(async move { store.record_decision(rec).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in futures::future::join_all(tasks).await {
        outcomes.push(committed(task??)?.outcome);
    }
    let allows = outcomes.iter().filter(|o| **o == Outcome::Allow).count();
    assert_eq!((allows, outcomes.len()), (150, 200));
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(150)
    );
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 201));
    Ok(())
}

/// At shutdown the broker flushes the writer before its last checkpoint: writes whose callers went away
/// (a call cut at the end of the grace period) are still committed, and the flush returns only once every
/// write queued before it is.
async fn flush_waits_for_every_write_queued_before_it(db: &TestDb) -> TestResult {
    use futures::FutureExt as _;
    let store = db.store();
    store.flush(Duration::from_secs(10)).await?;
    let s = session(1000);
    store.open_session(&s, opened(&s)).await?;
    for i in 0..300 {
        // Polled once: the write is queued, then its caller goes away.
        let queued = if i % 50 == 0 {
            let other = session(1);
            store
                .open_session(&other, opened(&other))
                .now_or_never()
                .is_none()
        } else {
            let rec = allow(&s, "web.search", &format!("c{i}"), T0 + 1);
            store.record_decision(rec).now_or_never().is_none()
        };
        assert!(queued);
    }
    store.flush(Duration::from_secs(10)).await?;
    assert_eq!(last_seq(store).await?, 301);
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 301));
    Ok(())
}

/// Decisions (the writer's own connection) and session openings (the pool's) queued together, so batches
/// of each kind follow one another with jobs waiting: on Postgres a plain batch's commit leaves the next
/// transaction open with the chain lock, which must be let go before a batch on the other connection
/// waits for that lock. Everything commits, once, in one whole chain.
async fn plain_and_mixed_batches_interleave(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(500);
    store.open_session(&s, opened(&s)).await?;
    let tasks: Vec<_> = (0..240)
        .map(|i| {
            let store = store.clone();
            let rec = allow(&s, "web.search", &format!("c{i}"), T0 + 1);
            tokio::spawn(async move {
                if i % 8 == 0 {
                    let other = session(1);
                    store
                        .open_session(&other, opened(&other))
                        .await
                        .map(|_| true)
                } else {
                    store
                        .record_decision(rec)
                        .await
                        .map(|r| committed(r).is_ok_and(|d| d.is_allow()))
                }
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        assert!(task??);
    }
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(210)
    );
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 241));
    Ok(())
}

async fn audit_rows_are_append_only(db: &TestDb) -> TestResult {
    let s = session(3);
    open_with_decisions(db.store(), &s, &[("web.search", Outcome::Allow)]).await?;
    let update = db
        .execute("UPDATE audit_events SET outcome = 'DENY' WHERE seq = 2")
        .await;
    assert!(update.is_err(), "{update:?}");
    let delete = db.execute("DELETE FROM audit_events WHERE seq = 1").await;
    assert!(delete.is_err(), "{delete:?}");
    assert!(db.store().verify_chain().await?.ok);
    Ok(())
}

async fn tamper_update_is_named_by_seq(db: &TestDb) -> TestResult {
    let s = session(5);
    let calls = [
        ("web.search", Outcome::Allow),
        ("web.search", Outcome::Allow),
        ("email.send", Outcome::Deny),
    ];
    open_with_decisions(db.store(), &s, &calls).await?;
    assert_eq!(db.store().verify_chain().await?.events_checked, 4);

    drop_append_only_guard(db).await?;
    assert_eq!(
        db.execute("UPDATE audit_events SET outcome = 'DENY' WHERE seq = 3")
            .await?,
        1
    );
    let report = db.store().verify_chain().await?;
    let broken = report.first_break.ok_or("tampering not detected")?;
    assert!(!report.ok);
    assert_eq!(broken.seq, 3);
    assert!(broken.problem.contains("modified"), "{}", broken.problem);
    assert_eq!(report.events_checked, 2);

    // A value the domain cannot even read is named the same way.
    db.execute("UPDATE audit_events SET outcome = 'MAYBE' WHERE seq = 2")
        .await?;
    let broken = db
        .store()
        .verify_chain()
        .await?
        .first_break
        .ok_or("tampering not detected")?;
    assert_eq!(broken.seq, 2);
    Ok(())
}

async fn tamper_delete_is_named_by_next_seq(db: &TestDb) -> TestResult {
    let s = session(5);
    let calls = [
        ("web.search", Outcome::Allow),
        ("web.search", Outcome::Allow),
        ("email.send", Outcome::Deny),
    ];
    open_with_decisions(db.store(), &s, &calls).await?;
    drop_append_only_guard(db).await?;
    assert_eq!(
        db.execute("DELETE FROM audit_events WHERE seq = 3").await?,
        1
    );
    let report = db.store().verify_chain().await?;
    let broken = report.first_break.ok_or("deletion not detected")?;
    assert!(!report.ok);
    assert_eq!(broken.seq, 4);
    assert!(broken.problem.contains("missing"), "{}", broken.problem);
    Ok(())
}

async fn list_events_filters_and_paginates(db: &TestDb) -> TestResult {
    let store = db.store();
    let a = session(5);
    let b = Session {
        agent: "agent-2".into(),
        ..session(5)
    };
    store.open_session(&a, opened(&a)).await?; // 1, T0
    store.open_session(&b, opened(&b)).await?; // 2, T0
    store
        .record_decision(allow(&a, "web.search", "c1", T0 + 100))
        .await?; // 3
    store
        .record_decision(deny(&a, "email.send", "c2", T0 + 200))
        .await?; // 4
    store
        .record_decision(allow(&b, "web.search", "c3", T0 + 300))
        .await?; // 5
    store
        .close_session(&a.id, T0 + 400, closed(&a, T0 + 400))
        .await?; // 6

    let seqs = |events: Vec<AuditEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let by_session = EventFilter {
        session_id: Some(a.id.clone()),
        ..EventFilter::default()
    };
    assert_eq!(
        seqs(events(store, by_session.clone()).await?),
        vec![1, 3, 4, 6]
    );
    let by_agent = EventFilter {
        agent: Some("agent-2".into()),
        ..EventFilter::default()
    };
    assert_eq!(seqs(events(store, by_agent).await?), vec![2, 5]);
    let by_tool = EventFilter {
        tool: Some("web.search".into()),
        ..EventFilter::default()
    };
    assert_eq!(seqs(events(store, by_tool).await?), vec![3, 5]);
    let by_outcome = EventFilter {
        outcome: Some(Outcome::Deny),
        ..EventFilter::default()
    };
    assert_eq!(seqs(events(store, by_outcome).await?), vec![4]);
    let by_time = EventFilter {
        since: Some(T0 + 200),
        until: Some(T0 + 400),
        ..EventFilter::default()
    };
    assert_eq!(
        seqs(events(store, by_time).await?),
        vec![4, 5],
        "since is inclusive, until exclusive"
    );
    let combined = EventFilter {
        tool: Some("web.search".into()),
        ..by_session
    };
    assert_eq!(seqs(events(store, combined).await?), vec![3]);
    let none = EventFilter {
        agent: Some("nobody".into()),
        ..EventFilter::default()
    };
    assert_eq!(
        store.list_events(&none, Page::default()).await?,
        (vec![], None)
    );

    // Pages of two: the cursor is the last seq of the page, and the last page has none.
    let all = EventFilter::default();
    let (page, next) = store
        .list_events(
            &all,
            Page {
                after_seq: 0,
                limit: 2,
            },
        )
        .await?;
    assert_eq!((seqs(page), next), (vec![1, 2], Some(2)));
    let (page, next) = store
        .list_events(
            &all,
            Page {
                after_seq: 2,
                limit: 2,
            },
        )
        .await?;
    assert_eq!((seqs(page), next), (vec![3, 4], Some(4)));
    let (page, next) = store
        .list_events(
            &all,
            Page {
                after_seq: 4,
                limit: 2,
            },
        )
        .await?;
    assert_eq!((seqs(page), next), (vec![5, 6], None));
    let (page, next) = store
        .list_events(
            &all,
            Page {
                after_seq: 0,
                limit: 0,
            },
        )
        .await?;
    assert_eq!(
        (page.len(), next),
        (6, None),
        "limit 0 means the default page"
    );

    // Events read back are exactly the ones written: the stored chain re-hashes.
    assert!(store.verify_chain().await?.ok);
    Ok(())
}

fn short_timeouts() -> StoreConfig {
    StoreConfig {
        commit_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
        ..TestDb::test_config()
    }
}

async fn locked_database_times_out_fast_then_recovers(db: &TestDb) -> TestResult {
    let store = db.connect_another(short_timeouts()).await?;
    let s = session(10);
    store.open_session(&s, opened(&s)).await?;

    let lock = db.hold_write_lock().await?;
    let started = Instant::now();
    let blocked = store
        .record_decision(allow(&s, "web.search", "c1", T0 + 1))
        .await;
    let waited = started.elapsed();
    assert!(
        matches!(
            kind_of(&blocked),
            Some(ErrorKind::Timeout | ErrorKind::Unavailable)
        ),
        "a write that cannot commit is refused, not allowed: {blocked:?}"
    );
    assert!(waited < Duration::from_secs(2), "refused after {waited:?}");
    // Reads do not wait for the writer.
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.id),
        Some(s.id.clone())
    );
    lock.release().await?;

    // The writer recovers by itself once the lock is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store
            .record_decision(allow(&s, "web.search", &format!("retry-{attempt}"), T0 + 2))
            .await
        {
            Ok(recorded) => {
                assert!(committed(recorded)?.is_allow());
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_unavailable(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("the writer did not recover: {e}").into()),
        }
    }
    // Whether or not the timed-out write committed later, the chain is whole.
    assert!(store.verify_chain().await?.ok);
    Ok(())
}

async fn full_queue_is_overloaded(db: &TestDb) -> TestResult {
    let store = db
        .connect_another(StoreConfig {
            queue_capacity: 1,
            ..short_timeouts()
        })
        .await?;
    let s = session(100);
    store.open_session(&s, opened(&s)).await?;
    let lock = db.hold_write_lock().await?;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (store, rec) = (
                store.clone(),
                allow(&s, "web.search", &format!("c{i}"), T0 + 1),
            );
            tokio::spawn(async move { store.record_decision(rec).await })
        })
        .collect();
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    lock.release().await?;
    let overloaded = results
        .iter()
        .filter(|r| kind_of(r) == Some(ErrorKind::Overloaded))
        .count();
    assert!(overloaded >= 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().err().is_some_and(Error::is_unavailable)),
        "{results:?}"
    );
    Ok(())
}

async fn a_bad_job_fails_alone(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let first = store.open_session(&s, opened(&s)).await?;

    let mut nul = allow(&s, "web.search", "c-nul", T0 + 1);
    nul.call.agent = "agent\0one".into();
    let mut long = allow(
        &s,
        "web.search",
        &"x".repeat(super::MAX_KEY_BYTES + 1),
        T0 + 1,
    );
    long.call.event_id = ids::event_id(T0 + 1);
    let mut reused_event = allow(&s, "web.search", "c-reused", T0 + 1);
    reused_event.call.event_id = first.body.event_id.clone();
    let other = session(1);
    let mut duplicate_open = opened(&other);
    duplicate_open.event_id = first.body.event_id.clone();

    let good = |i: usize| allow(&s, "web.search", &format!("good-{i}"), T0 + 1);
    let (a, b, c, d, e, f, g) = tokio::join!(
        store.record_decision(good(1)),
        store.record_decision(nul),
        store.record_decision(long),
        store.record_decision(reused_event),
        store.open_session(&other, duplicate_open),
        store.record_decision(good(2)),
        store.record_decision(good(3)),
    );
    assert_eq!(kind_of(&b), Some(ErrorKind::Invalid), "{b:?}");
    assert_eq!(kind_of(&c), Some(ErrorKind::Invalid), "{c:?}");
    assert_eq!(kind_of(&d), Some(ErrorKind::Conflict), "{d:?}");
    assert_eq!(kind_of(&e), Some(ErrorKind::Conflict), "{e:?}");
    for ok in [a, f, g] {
        assert!(committed(ok?)?.is_allow());
    }
    assert_eq!(
        store.session(&other.id).await?,
        None,
        "the refused open left nothing behind"
    );
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(3)
    );
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 4));
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// kill switches

fn switch(
    scope: Scope,
    target: &str,
    engaged_at: Micros,
    expires_at: Option<Micros>,
) -> KillSwitch {
    KillSwitch {
        id: ids::kill_switch_id(),
        scope,
        target: target.into(),
        reason: "agents are looping on payments".into(),
        engaged_by: "admin-1".into(),
        engaged_at,
        expires_at,
        released: None,
    }
}

fn engaged(k: &KillSwitch) -> EventBody {
    EventBody::for_kill_switch(EventKind::KillSwitchEngaged, k, &k.engaged_by, k.engaged_at)
}

fn release(by: &str, at: Micros) -> Release {
    Release {
        by: by.into(),
        at,
        reason: "fixed the loop".into(),
    }
}

async fn events_of_kind(store: &Store, kind: EventKind) -> Result<Vec<AuditEvent>, Error> {
    Ok(events(store, EventFilter::default())
        .await?
        .into_iter()
        .filter(|e| e.body.kind == kind)
        .collect())
}

fn ids_of(switches: &[KillSwitch]) -> Vec<&str> {
    switches.iter().map(|k| k.id.as_str()).collect()
}

async fn kill_switch_engage_is_active_and_audited(db: &TestDb) -> TestResult {
    let store = db.store();
    // An event without `detail` before, so the chain mixes both kinds.
    let s = session(3);
    store.open_session(&s, opened(&s)).await?;

    let k = switch(Scope::Tool, "payments.*", T0 + 10, None);
    let event = store.engage_kill_switch(&k, engaged(&k)).await?;
    assert_eq!(
        (event.seq, event.body.kind),
        (2, EventKind::KillSwitchEngaged)
    );
    assert_eq!(event.body.agent, "admin-1");
    assert_eq!(event.body.tool.as_deref(), Some("payments.*"));

    assert_eq!(store.kill_switch(&k.id).await?, Some(k.clone()));
    assert_eq!(store.kill_switch("ksw_missing").await?, None);
    assert_eq!(store.active_kill_switches(T0 + 11).await?, vec![k.clone()]);
    assert_eq!(store.list_kill_switches(false, 0).await?, vec![k.clone()]);

    // The stored event is the one written, `detail` included, and the detail is the switch.
    let stored = events_of_kind(store, EventKind::KillSwitchEngaged).await?;
    assert_eq!(stored, vec![event.clone()]);
    let detail = stored
        .first()
        .and_then(|e| e.body.detail.as_deref())
        .ok_or("no detail")?;
    assert_eq!(serde_json::from_str::<KillSwitch>(detail)?, k);
    let opened_event = events(store, EventFilter::default()).await?;
    assert_eq!(
        opened_event.first().map(|e| e.body.detail.clone()),
        Some(None),
        "an event without detail reads back without one"
    );

    // The same id again is refused and writes nothing; so is a switch already released or a wrong event.
    let again = store.engage_kill_switch(&k, engaged(&k)).await;
    assert_eq!(kind_of(&again), Some(ErrorKind::Conflict), "{again:?}");
    let mut released = switch(Scope::Global, "", T0, None);
    released.released = Some(release("admin-1", T0));
    let refused = store
        .engage_kill_switch(&released, engaged(&released))
        .await;
    assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
    let other = switch(Scope::Global, "", T0, None);
    let wrong_kind =
        EventBody::for_kill_switch(EventKind::KillSwitchReleased, &other, "admin-1", T0);
    let refused = store.engage_kill_switch(&other, wrong_kind).await;
    assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
    assert_eq!(store.kill_switch(&other.id).await?, None);
    assert_eq!(last_seq(store).await?, 2);

    // A session-scoped switch is findable by the session's events.
    let ks = switch(Scope::Session, &s.id, T0 + 20, Some(T0 + HOUR));
    store.engage_kill_switch(&ks, engaged(&ks)).await?;
    let by_session = session_events(store, &s).await?;
    assert_eq!(
        by_session.iter().map(|e| e.body.kind).collect::<Vec<_>>(),
        vec![EventKind::SessionOpened, EventKind::KillSwitchEngaged]
    );

    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 3), "{report:?}");
    if db.backend() == Backend::Sqlite {
        assert!(
            store.kill_switch_listener().await?.is_none(),
            "SQLite has no channel"
        );
    }
    Ok(())
}

async fn kill_switch_release_happens_once(db: &TestDb) -> TestResult {
    let store = db.store();
    let k = switch(Scope::Agent, "agent-1", T0, None);
    let keep = switch(Scope::Agent, "agent-2", T0 + 1, None);
    store.engage_kill_switch(&k, engaged(&k)).await?;
    store.engage_kill_switch(&keep, engaged(&keep)).await?;

    let by = release("admin-2", T0 + 50);
    let released = store
        .release_kill_switch(&k.id, &by, T0 + 50)
        .await?
        .ok_or("not released")?;
    let expected = KillSwitch {
        released: Some(by.clone()),
        ..k.clone()
    };
    assert_eq!(released, expected);
    assert_eq!(store.kill_switch(&k.id).await?, Some(expected.clone()));
    assert_eq!(
        ids_of(&store.active_kill_switches(T0 + 51).await?),
        vec![keep.id.as_str()]
    );

    let event = events_of_kind(store, EventKind::KillSwitchReleased).await?;
    let [event] = event.as_slice() else {
        return Err(format!("expected one release event, got {event:?}").into());
    };
    assert_eq!((event.seq, event.body.time), (3, T0 + 50));
    assert_eq!(
        event.body.agent, "admin-2",
        "the event names who released it"
    );
    assert_eq!(
        event.body.reasons.first().map(|r| r.message.as_str()),
        Some("fixed the loop")
    );
    let detail = event.body.detail.as_deref().ok_or("no detail")?;
    assert_eq!(serde_json::from_str::<KillSwitch>(detail)?, expected);

    // Releasing again, or an unknown switch, changes and appends nothing.
    assert_eq!(
        store
            .release_kill_switch(&k.id, &release("admin-3", T0 + 60), T0 + 60)
            .await?,
        None
    );
    assert_eq!(
        store
            .release_kill_switch("ksw_missing", &release("admin-3", T0 + 60), T0 + 60)
            .await?,
        None
    );
    assert_eq!(store.kill_switch(&k.id).await?, Some(expected));
    assert_eq!(last_seq(store).await?, 3);

    // Two brokers releasing the same switch at once: one wins, one event.
    let replica = db.connect_another(TestDb::test_config()).await?;
    let (by_a, by_b) = (release("admin-a", T0 + 70), release("admin-b", T0 + 70));
    let (a, b) = tokio::join!(
        store.release_kill_switch(&keep.id, &by_a, T0 + 70),
        replica.release_kill_switch(&keep.id, &by_b, T0 + 70),
    );
    let winners = [a?, b?].into_iter().flatten().count();
    assert_eq!(winners, 1);
    assert_eq!(
        events_of_kind(store, EventKind::KillSwitchReleased)
            .await?
            .len(),
        2
    );
    assert!(store.active_kill_switches(T0 + 71).await?.is_empty());

    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 4), "{report:?}");
    Ok(())
}

async fn kill_switch_expires_once_across_brokers(db: &TestDb) -> TestResult {
    let store = db.store();
    let due = switch(Scope::Tenant, "acme", T0, Some(T0 + 100));
    let later = switch(Scope::Tenant, "globex", T0, Some(T0 + HOUR));
    let forever = switch(Scope::Global, "", T0, None);
    for k in [&due, &later, &forever] {
        store.engage_kill_switch(k, engaged(k)).await?;
    }
    let seq = last_seq(store).await?;

    // Expiry is a matter of time alone: past `expires_at` a switch is not active, swept or not.
    assert_eq!(store.active_kill_switches(T0 + 99).await?.len(), 3);
    let active = store.active_kill_switches(T0 + 100).await?;
    assert!(!ids_of(&active).contains(&due.id.as_str()), "{active:?}");
    assert_eq!(active.len(), 2);
    assert_eq!(
        store.expire_kill_switches(T0 + 99).await?,
        vec![],
        "nothing due yet"
    );
    assert_eq!(last_seq(store).await?, seq);

    // Two brokers sweep at once, several times each: the switch expires, and is audited, once.
    let replica = db.connect_another(TestDb::test_config()).await?;
    let sweeps: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                replica.clone()
            };
            tokio::spawn(async move { store.expire_kill_switches(T0 + 200).await })
        })
        .collect();
    let mut expired = Vec::new();
    for sweep in futures::future::join_all(sweeps).await {
        expired.extend(sweep??);
    }
    let by = Release {
        by: super::EXPIRED_BY.into(),
        at: T0 + 200,
        reason: super::EXPIRED_REASON.into(),
    };
    let expected = KillSwitch {
        released: Some(by),
        ..due.clone()
    };
    assert_eq!(expired, vec![expected.clone()]);
    assert_eq!(store.kill_switch(&due.id).await?, Some(expected.clone()));

    let events = events_of_kind(store, EventKind::KillSwitchExpired).await?;
    let [event] = events.as_slice() else {
        return Err(format!("expected one expiry event, got {events:?}").into());
    };
    assert_eq!((event.seq, event.body.agent.as_str()), (seq + 1, "broker"));
    let detail = event.body.detail.as_deref().ok_or("no detail")?;
    assert_eq!(serde_json::from_str::<KillSwitch>(detail)?, expected);

    // Released switches do not expire again; the others are untouched.
    assert_eq!(store.expire_kill_switches(T0 + 300).await?, vec![]);
    assert_eq!(store.kill_switch(&later.id).await?, Some(later.clone()));
    assert_eq!(
        store
            .release_kill_switch(&due.id, &release("admin-1", T0 + 300), T0 + 300)
            .await?,
        None,
        "an expired switch is released already"
    );
    let active = store.active_kill_switches(T0 + 300).await?;
    assert_eq!(ids_of(&active).len(), 2);
    assert_eq!(last_seq(store).await?, seq + 1);
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 4), "{report:?}");
    Ok(())
}

async fn kill_switches_list_newest_first(db: &TestDb) -> TestResult {
    let store = db.store();
    let switches: Vec<KillSwitch> = (0..4)
        .map(|i| switch(Scope::Agent, &format!("agent-{i}"), T0 + i * 10, None))
        .collect();
    for k in &switches {
        store.engage_kill_switch(k, engaged(k)).await?;
    }
    let [first, second, third, fourth] = switches.as_slice() else {
        return Err("four switches".into());
    };
    store
        .release_kill_switch(&third.id, &release("admin-1", T0 + 100), T0 + 100)
        .await?
        .ok_or("not released")?;

    let all = store.list_kill_switches(true, 0).await?;
    assert_eq!(
        ids_of(&all),
        vec![&fourth.id, &third.id, &second.id, &first.id]
    );
    assert!(all.get(1).is_some_and(|k| k.released.is_some()));
    let unreleased = store.list_kill_switches(false, 0).await?;
    assert_eq!(ids_of(&unreleased), vec![&fourth.id, &second.id, &first.id]);
    let two = store.list_kill_switches(true, 2).await?;
    assert_eq!(ids_of(&two), vec![&fourth.id, &third.id]);
    assert_eq!(
        ids_of(&store.active_kill_switches(T0 + 100).await?),
        vec![&first.id, &second.id, &fourth.id],
        "active switches come oldest first"
    );
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// approvals

const MINUTE: Micros = 60_000_000;
const REFUND: &str = "payments.refund";
const ARGS: &str = r#"{"amount":120,"card":"4111111111111111","order":"o-1"}"#;

fn payments(quorum: u32) -> Vec<Requirement> {
    vec![Requirement {
        policy_id: "refunds-need-approval".into(),
        group: "payments".into(),
        quorum,
    }]
}

/// A PENDING_APPROVAL decision for `call_id` in `s`, requesting an approval (quorum of `payments`),
/// expiring ten minutes after `at`; and the approval as the store should keep it.
fn request(s: &Session, call_id: &str, quorum: u32, at: Micros) -> (DecisionRecord, Approval) {
    let mut rec = allow(s, REFUND, call_id, at);
    let approval = Approval {
        id: ids::approval_id(),
        status: ApprovalStatus::Pending,
        session_id: s.id.clone(),
        tenant: s.tenant.clone(),
        agent: s.agent.clone(),
        user: s.user.clone(),
        tool: REFUND.into(),
        call_id: call_id.into(),
        decision_id: rec.decision.decision_id.clone(),
        arguments_redacted: rec.call.arguments_redacted.clone(),
        arguments_digest: rec.call.arguments_digest.clone(),
        requirements: payments(quorum),
        reasons: vec![Reason::from_policy(
            ReasonCode::ApprovalRequired,
            "refunds-need-approval",
            "refunds need a payments approver",
        )],
        requested_at: at,
        expires_at: at + 10 * MINUTE,
        votes: vec![],
        consumed_at: None,
        consumed_by: None,
        updated_at: at,
    };
    rec.decision.outcome = Outcome::PendingApproval;
    rec.decision.reasons = approval.reasons.clone();
    rec.decision.approval_id = Some(approval.id.clone());
    rec.spend_budget = false;
    rec.approval = Some(ApprovalWrite::Request {
        approval: approval.clone(),
        arguments: ARGS.into(),
    });
    (rec, approval)
}

/// The ALLOW of the approved call (a new call id, the approval's arguments), consuming `a`.
fn consume(s: &Session, a: &Approval, call_id: &str, at: Micros) -> DecisionRecord {
    let mut rec = allow(s, REFUND, call_id, at);
    rec.decision.approval_id = Some(a.id.clone());
    rec.decision.reasons = vec![Reason::new(
        ReasonCode::ApprovalGranted,
        "approved by payments",
    )];
    rec.call.arguments_digest = a.arguments_digest.clone();
    rec.approval = Some(ApprovalWrite::Consume {
        approval_id: a.id.clone(),
        arguments_digest: a.arguments_digest.clone(),
    });
    rec
}

fn vote(approver: &str, groups: &[&str], vote: Vote, at: Micros) -> VoteRecord {
    VoteRecord {
        approver: approver.into(),
        person: approver.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        vote,
        comment: format!("{approver} says {}", vote.as_str()),
        at,
    }
}

fn counted(r: VoteResult) -> Result<Approval, String> {
    match r {
        VoteResult::Counted(a) => Ok(a),
        other => Err(format!("expected the vote counted, got {other:?}")),
    }
}

/// Opens `s` and requests one approval in it; returns the stored approval.
async fn open_and_request(
    store: &Store,
    s: &Session,
    call_id: &str,
    quorum: u32,
    at: Micros,
) -> Result<Approval, Box<dyn std::error::Error + Send + Sync>> {
    if store.session(&s.id).await?.is_none() {
        store.open_session(s, opened(s)).await?;
    }
    let (rec, approval) = request(s, call_id, quorum, at);
    committed(store.record_decision(rec).await?)?;
    Ok(approval)
}

/// Approves `a` with one `payments` vote by `approver`.
async fn approve(
    store: &Store,
    a: &Approval,
    approver: &str,
    at: Micros,
) -> Result<Approval, Box<dyn std::error::Error + Send + Sync>> {
    let voted = counted(
        store
            .vote_on_approval(&a.id, vote(approver, &["payments"], Vote::Approve, at), at)
            .await?,
    )?;
    Ok(voted)
}

fn detail(e: &AuditEvent) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    Ok(serde_json::from_str(
        e.body.detail.as_deref().ok_or("event without detail")?,
    )?)
}

fn kinds(events: &[AuditEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.body.kind).collect()
}

async fn approval_request_is_stored_beside_its_pending_decision(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3);
    store.open_session(&s, opened(&s)).await?;
    let (rec, approval) = request(&s, "c1", 2, T0 + 10);
    let decision = committed(store.record_decision(rec.clone()).await?)?;
    assert_eq!(
        decision, rec.decision,
        "a PENDING_APPROVAL is committed as it is"
    );

    assert_eq!(store.approval(&approval.id).await?, Some(approval.clone()));
    assert_eq!(store.approval("apr_missing").await?, None);
    assert_eq!(
        store.approval_arguments(&approval.id).await?.as_deref(),
        Some(ARGS),
        "the canonical arguments are kept while the approval can be used"
    );
    assert_eq!(store.pending_approvals().await?, vec![approval.clone()]);
    let remembered = store
        .recorded_call(&s.id, &s.agent, "c1")
        .await?
        .ok_or("the pending call is not remembered")?;
    assert_eq!(remembered.decision, decision);
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(0),
        "asking spends nothing"
    );

    // The decision, then the request: by the agent, naming the approval, its requirements and expiry.
    let events = session_events(store, &s).await?;
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::SessionOpened,
            EventKind::ToolCallDecided,
            EventKind::ApprovalRequested
        ]
    );
    let requested = events.get(2).ok_or("no request event")?;
    assert_eq!(
        events.get(1).and_then(|e| e.body.outcome),
        Some(Outcome::PendingApproval)
    );
    assert_eq!(requested.body.agent, "agent-1");
    assert_eq!(
        requested.body.decision_id.as_deref(),
        Some(decision.decision_id.as_str())
    );
    let d = detail(requested)?;
    assert_eq!(d["approval_id"], approval.id.as_str());
    assert_eq!(d["status"], "PENDING");
    assert_eq!(d["expires_at"], approval.expires_at);
    assert_eq!(d["requirements"][0]["group"], "payments");
    assert_eq!(d["requirements"][0]["quorum"], 2);

    // A retry replays the decision and requests nothing new.
    let replayed = store.record_decision(rec.clone()).await?;
    assert!(matches!(replayed, Recorded::Replayed(_)), "{replayed:?}");
    // The same approval id under another call is a conflict; a PENDING_APPROVAL without its approval, or
    // an approval that is not for its decision, is refused before anything is written.
    let (mut again, _) = request(&s, "c2", 1, T0 + 20);
    if let Some(ApprovalWrite::Request { approval: a, .. }) = &mut again.approval {
        a.id.clone_from(&approval.id);
    }
    again.decision.approval_id = Some(approval.id.clone());
    let conflict = store.record_decision(again).await;
    assert_eq!(
        kind_of(&conflict),
        Some(ErrorKind::Conflict),
        "{conflict:?}"
    );
    let (mut bare, _) = request(&s, "c3", 1, T0 + 20);
    bare.approval = None;
    let refused = store.record_decision(bare).await;
    assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
    let (mut elsewhere, _) = request(&s, "c4", 1, T0 + 20);
    if let Some(ApprovalWrite::Request { approval: a, .. }) = &mut elsewhere.approval {
        a.arguments_digest = "digest-of-something-else".into();
    }
    let refused = store.record_decision(elsewhere).await;
    assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
    assert_eq!(store.recorded_call(&s.id, &s.agent, "c2").await?, None);

    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 3), "{report:?}");
    Ok(())
}

async fn approval_votes_keep_separation_of_duties_and_settle_it(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3);
    let a = open_and_request(store, &s, "c1", 2, T0 + 10).await?;
    let seq = last_seq(store).await?;
    let at = T0 + 20;
    let refusals = [
        (
            vote("agent-1", &["payments"], Vote::Approve, at),
            Refusal::IsAgent,
        ),
        (
            vote("alice", &["payments"], Vote::Approve, at),
            Refusal::IsUser,
        ),
        (
            vote("bob", &["marketing"], Vote::Approve, at),
            Refusal::NotInGroup("payments".into()),
        ),
    ];
    for (v, refusal) in refusals {
        assert_eq!(
            store.vote_on_approval(&a.id, v, at).await?,
            VoteResult::Refused(refusal)
        );
    }
    assert_eq!(
        store
            .vote_on_approval(
                "apr_missing",
                vote("bob", &["payments"], Vote::Approve, at),
                at
            )
            .await?,
        VoteResult::NotFound
    );
    assert_eq!(last_seq(store).await?, seq, "refused votes write nothing");

    // One approval of two: counted, still pending.
    let after_bob = approve(store, &a, "bob", at).await?;
    assert_eq!(after_bob.status, ApprovalStatus::Pending);
    assert_eq!(after_bob.updated_at, at);
    assert_eq!(
        after_bob.votes,
        vec![vote("bob", &["payments"], Vote::Approve, at)]
    );
    assert_eq!(store.approval(&a.id).await?, Some(after_bob.clone()));
    assert_eq!(
        store
            .vote_on_approval(
                &a.id,
                vote("bob", &["payments"], Vote::Deny, at + 1),
                at + 1
            )
            .await?,
        VoteResult::Refused(Refusal::AlreadyVoted),
        "the same approver counts once, and cannot change their mind"
    );

    // The second distinct approver completes the quorum.
    let approved = approve(store, &a, "carol", at + 2).await?;
    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert_eq!(approved.approvers(), vec!["bob", "carol"]);
    assert_eq!(store.approval(&a.id).await?, Some(approved.clone()));
    assert_eq!(
        store.approval_arguments(&a.id).await?.as_deref(),
        Some(ARGS),
        "an approved approval keeps its arguments until used"
    );
    assert_eq!(
        store
            .vote_on_approval(
                &a.id,
                vote("dave", &["payments"], Vote::Deny, at + 3),
                at + 3
            )
            .await?,
        VoteResult::Refused(Refusal::NotPending("APPROVED"))
    );

    // One denial ends another approval, and drops its arguments.
    let b = open_and_request(store, &s, "c2", 2, T0 + 30).await?;
    let denied = counted(
        store
            .vote_on_approval(
                &b.id,
                vote("dave", &["payments"], Vote::Deny, at + 4),
                at + 4,
            )
            .await?,
    )?;
    assert_eq!(denied.status, ApprovalStatus::Denied);
    assert_eq!(store.approval_arguments(&b.id).await?, None);
    assert!(store.pending_approvals().await?.is_empty());
    // Past its expiry a pending approval takes no votes, swept or not.
    let c = open_and_request(store, &s, "c3", 1, T0 + 40).await?;
    assert_eq!(
        store
            .vote_on_approval(
                &c.id,
                vote("bob", &["payments"], Vote::Approve, c.expires_at),
                c.expires_at
            )
            .await?,
        VoteResult::Refused(Refusal::NotPending("EXPIRED"))
    );

    let approval_events: Vec<AuditEvent> = events(store, EventFilter::default())
        .await?
        .into_iter()
        .filter(|e| e.body.kind != EventKind::ToolCallDecided)
        .skip(1)
        .collect();
    assert_eq!(
        kinds(&approval_events),
        vec![
            EventKind::ApprovalRequested,
            EventKind::ApprovalVoted,
            EventKind::ApprovalVoted,
            EventKind::ApprovalApproved,
            EventKind::ApprovalRequested,
            EventKind::ApprovalVoted,
            EventKind::ApprovalDenied,
            EventKind::ApprovalRequested,
        ]
    );
    let bob_voted = approval_events.get(1).ok_or("no vote event")?;
    assert_eq!(bob_voted.body.agent, "bob", "the approver is the actor");
    let d = detail(bob_voted)?;
    assert_eq!(
        (&d["vote"], &d["comment"], &d["approval_id"]),
        (
            &serde_json::json!("APPROVE"),
            &serde_json::json!("bob says APPROVE"),
            &serde_json::json!(a.id)
        )
    );
    let settled = approval_events.get(3).ok_or("no approved event")?;
    assert_eq!(
        (
            settled.body.agent.as_str(),
            detail(settled)?["status"].clone()
        ),
        ("carol", serde_json::json!("APPROVED"))
    );
    let report = store.verify_chain().await?;
    // 1 opened + 3 decisions + 3 requests + 3 votes + approved + denied
    assert_eq!((report.ok, report.events_checked), (true, 12), "{report:?}");
    Ok(())
}

async fn approval_is_consumed_once_and_only_as_approved(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let a = open_and_request(store, &s, "c1", 1, T0 + 10).await?;
    approve(store, &a, "bob", T0 + 20).await?;

    let rec = consume(&s, &a, "c1-approved", T0 + 30);
    let allowed = committed(store.record_decision(rec.clone()).await?)?;
    assert_eq!(allowed, rec.decision, "the approved call is allowed");
    let used = store.approval(&a.id).await?.ok_or("approval gone")?;
    assert_eq!(
        (
            used.status,
            used.consumed_at,
            used.consumed_by.as_deref(),
            used.updated_at
        ),
        (
            ApprovalStatus::Approved,
            Some(T0 + 30),
            Some(allowed.decision_id.as_str()),
            T0 + 30
        )
    );
    assert_eq!(store.approval_arguments(&a.id).await?, None);
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1)
    );
    let consumed = events_of_kind(store, EventKind::ApprovalConsumed).await?;
    let [consumed] = consumed.as_slice() else {
        return Err(format!("expected one consumption, got {consumed:?}").into());
    };
    assert_eq!(consumed.body.agent, "agent-1", "the agent is the actor");
    assert_eq!(
        detail(consumed)?["consumed_by"],
        allowed.decision_id.as_str()
    );

    // Used once: a second ALLOW on it is overruled, and spends nothing.
    let again = committed(
        store
            .record_decision(consume(&s, &a, "c1-again", T0 + 40))
            .await?,
    )?;
    assert_eq!(again.outcome, Outcome::Deny);
    assert_eq!(reason_codes(&again), vec![ReasonCode::ApprovalUsed]);
    assert_eq!(
        again.reasons.first().map(|r| r.message.clone()),
        Some(format!(
            "approval `{}` was already used, or is no longer approved",
            a.id
        ))
    );
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1)
    );
    assert_eq!(
        store.approval(&a.id).await?.and_then(|a| a.consumed_by),
        Some(allowed.decision_id.clone())
    );

    // Other arguments than those approved: overruled, and the approval stays usable.
    let b = open_and_request(store, &s, "c2", 1, T0 + 50).await?;
    approve(store, &b, "bob", T0 + 51).await?;
    let mut other = consume(&s, &b, "c2-other", T0 + 52);
    other.call.arguments_digest = "digest-of-other-arguments".into();
    other.approval = Some(ApprovalWrite::Consume {
        approval_id: b.id.clone(),
        arguments_digest: "digest-of-other-arguments".into(),
    });
    let other = committed(store.record_decision(other).await?)?;
    assert_eq!(reason_codes(&other), vec![ReasonCode::ApprovalUsed]);
    assert_eq!(
        store.approval(&b.id).await?.and_then(|a| a.consumed_at),
        None
    );
    // ... but not after its expiry.
    let late = committed(
        store
            .record_decision(consume(&s, &b, "c2-late", b.expires_at))
            .await?,
    )?;
    assert_eq!(reason_codes(&late), vec![ReasonCode::ApprovalUsed]);
    assert_eq!(
        store.approval(&b.id).await?.and_then(|a| a.consumed_at),
        None
    );

    // Denied or still pending: overruled.
    let c = open_and_request(store, &s, "c3", 1, T0 + 60).await?;
    let pending = committed(
        store
            .record_decision(consume(&s, &c, "c3-early", T0 + 61))
            .await?,
    )?;
    assert_eq!(reason_codes(&pending), vec![ReasonCode::ApprovalUsed]);
    counted(
        store
            .vote_on_approval(
                &c.id,
                vote("dave", &["payments"], Vote::Deny, T0 + 62),
                T0 + 62,
            )
            .await?,
    )?;
    let denied = committed(
        store
            .record_decision(consume(&s, &c, "c3-denied", T0 + 63))
            .await?,
    )?;
    assert_eq!(reason_codes(&denied), vec![ReasonCode::ApprovalUsed]);
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1),
        "no overruled ALLOW spent anything"
    );
    // An ALLOW naming an approval must consume it; a consumption must be for the call's own digest.
    let mut unconsumed = consume(&s, &b, "c2-bare", T0 + 64);
    unconsumed.approval = None;
    let refused = store.record_decision(unconsumed).await;
    assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
    let mut mismatched = consume(&s, &b, "c2-mismatch", T0 + 64);
    mismatched.call.arguments_digest = "digest-of-other-arguments".into();
    let refused = store.record_decision(mismatched).await;
    assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");

    assert_eq!(
        events_of_kind(store, EventKind::ApprovalConsumed)
            .await?
            .len(),
        1
    );
    let report = store.verify_chain().await?;
    // 1 opened + 3 x (decision + request) + 3 x (vote + settled) + 6 consuming decisions + 1 consumed
    assert_eq!((report.ok, report.events_checked), (true, 20), "{report:?}");
    Ok(())
}

async fn exhausted_budget_leaves_the_approval_unused(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(1);
    let a = open_and_request(store, &s, "c1", 1, T0 + 10).await?;
    approve(store, &a, "bob", T0 + 20).await?;
    committed(
        store
            .record_decision(allow(&s, "web.search", "spend-it", T0 + 25))
            .await?,
    )?;

    let overruled = committed(
        store
            .record_decision(consume(&s, &a, "c1-approved", T0 + 30))
            .await?,
    )?;
    assert_eq!(overruled.outcome, Outcome::Deny);
    assert_eq!(reason_codes(&overruled), vec![ReasonCode::BudgetExhausted]);
    let kept = store.approval(&a.id).await?.ok_or("approval gone")?;
    assert_eq!(
        (kept.status, kept.consumed_at, kept.updated_at),
        (ApprovalStatus::Approved, None, T0 + 20),
        "the approval is untouched"
    );
    assert_eq!(
        store.approval_arguments(&a.id).await?.as_deref(),
        Some(ARGS)
    );
    assert!(events_of_kind(store, EventKind::ApprovalConsumed)
        .await?
        .is_empty());
    let report = store.verify_chain().await?;
    // opened, decision + request, vote + approved, ALLOW, overruled ALLOW
    assert_eq!((report.ok, report.events_checked), (true, 7), "{report:?}");
    Ok(())
}

async fn approvals_expire_once_across_brokers(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let due = open_and_request(store, &s, "c1", 1, T0).await?;
    let later = open_and_request(store, &s, "c2", 1, T0 + 5 * MINUTE).await?;
    let approved = open_and_request(store, &s, "c3", 1, T0 + 1).await?;
    approve(store, &approved, "bob", T0 + 2).await?;
    let seq = last_seq(store).await?;

    let deadline = due.expires_at;
    assert_eq!(
        store.expire_approvals(deadline - 1).await?,
        vec![],
        "nothing due yet"
    );
    assert_eq!(last_seq(store).await?, seq);

    // Two brokers sweep at once, several times each: the approval expires, and is audited, once.
    let replica = db.connect_another(TestDb::test_config()).await?;
    let sweeps: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                replica.clone()
            };
            tokio::spawn(async move { store.expire_approvals(deadline + 1).await })
        })
        .collect();
    let mut expired = Vec::new();
    for sweep in futures::future::join_all(sweeps).await {
        expired.extend(sweep??);
    }
    let expected = Approval {
        status: ApprovalStatus::Expired,
        updated_at: deadline + 1,
        ..due.clone()
    };
    assert_eq!(expired, vec![expected.clone()]);
    assert_eq!(store.approval(&due.id).await?, Some(expected));
    assert_eq!(store.approval_arguments(&due.id).await?, None);
    let events = events_of_kind(store, EventKind::ApprovalExpired).await?;
    let [event] = events.as_slice() else {
        return Err(format!("expected one expiry event, got {events:?}").into());
    };
    assert_eq!((event.seq, event.body.agent.as_str()), (seq + 1, "broker"));
    assert_eq!(detail(event)?["status"], "EXPIRED");

    // The approved one past its expiry stays APPROVED but can no longer be used: its arguments go.
    assert_eq!(
        store.approval(&approved.id).await?.map(|a| a.status),
        Some(ApprovalStatus::Approved)
    );
    assert_eq!(store.approval_arguments(&approved.id).await?, None);
    // The later one is untouched, and nothing is due again.
    assert_eq!(
        store.pending_approvals().await?,
        vec![later.clone()],
        "only the unexpired one is pending"
    );
    assert_eq!(store.expire_approvals(deadline + 2).await?, vec![]);
    assert_eq!(last_seq(store).await?, seq + 1);
    let report = store.verify_chain().await?;
    // opened, 3 x (decision + request), vote + approved, expired
    assert_eq!((report.ok, report.events_checked), (true, 10), "{report:?}");
    Ok(())
}

async fn only_pending_approvals_are_cancelled(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let pending = open_and_request(store, &s, "c1", 1, T0).await?;
    let approved = open_and_request(store, &s, "c2", 1, T0 + 1).await?;
    approve(store, &approved, "bob", T0 + 2).await?;
    let denied = open_and_request(store, &s, "c3", 1, T0 + 3).await?;
    counted(
        store
            .vote_on_approval(
                &denied.id,
                vote("bob", &["payments"], Vote::Deny, T0 + 4),
                T0 + 4,
            )
            .await?,
    )?;
    let expired = open_and_request(store, &s, "c4", 1, T0 - 10 * MINUTE).await?;
    let seq = last_seq(store).await?;

    let ids = vec![
        pending.id.clone(),
        approved.id.clone(),
        denied.id.clone(),
        expired.id.clone(),
        "apr_missing".to_owned(),
        pending.id.clone(),
    ];
    let cancelled = store
        .cancel_approvals(&ids, "admin-1", "kill switch engaged", T0 + 5)
        .await?;
    let expected = Approval {
        status: ApprovalStatus::Cancelled,
        updated_at: T0 + 5,
        ..pending.clone()
    };
    assert_eq!(cancelled, vec![expected.clone()]);
    assert_eq!(store.approval(&pending.id).await?, Some(expected));
    assert_eq!(store.approval_arguments(&pending.id).await?, None);
    assert_eq!(
        store.approval(&approved.id).await?.map(|a| a.status),
        Some(ApprovalStatus::Approved)
    );
    assert_eq!(
        store.approval(&expired.id).await?.map(|a| a.status),
        Some(ApprovalStatus::Pending),
        "past its expiry it is for the sweeper, not cancelled"
    );
    let events = events_of_kind(store, EventKind::ApprovalCancelled).await?;
    let [event] = events.as_slice() else {
        return Err(format!("expected one cancellation, got {events:?}").into());
    };
    assert_eq!((event.seq, event.body.agent.as_str()), (seq + 1, "admin-1"));
    assert_eq!(detail(event)?["reason"], "kill switch engaged");

    // Cancelling again changes and appends nothing; neither does an empty list.
    assert_eq!(
        store
            .cancel_approvals(&ids, "admin-1", "again", T0 + 6)
            .await?,
        vec![]
    );
    assert_eq!(
        store
            .cancel_approvals(&[], "admin-1", "none", T0 + 6)
            .await?,
        vec![]
    );
    assert_eq!(last_seq(store).await?, seq + 1);
    let report = store.verify_chain().await?;
    // opened, 4 x (decision + request), 2 x (vote + settled), cancelled
    assert_eq!((report.ok, report.events_checked), (true, 14), "{report:?}");
    Ok(())
}

async fn approvals_changed_since_come_in_order(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let a = open_and_request(store, &s, "c1", 2, T0 + 10).await?;
    let b = open_and_request(store, &s, "c2", 1, T0 + 20).await?;
    let c = open_and_request(store, &s, "c3", 1, T0 + 20).await?;
    let ids = |approvals: &[Approval]| -> Vec<String> {
        approvals.iter().map(|a| a.id.clone()).collect()
    };
    let mut same_time = vec![b.id.clone(), c.id.clone()];
    same_time.sort();

    let all = store.approvals_changed_since(0, 0).await?;
    assert_eq!(
        ids(&all),
        [vec![a.id.clone()], same_time.clone()].concat(),
        "oldest change first (ties by id)"
    );
    assert_eq!(
        ids(&store.approvals_changed_since(T0 + 10, 0).await?),
        same_time
    );
    // A limit never splits changes made at the same moment, so the next `since` misses nothing.
    let first = store.approvals_changed_since(T0 + 10, 1).await?;
    assert_eq!(ids(&first), same_time);

    // A vote on `a` moves it to the end; its status change is what the watcher reads.
    approve(store, &a, "bob", T0 + 30).await?;
    approve(store, &a, "carol", T0 + 40).await?;
    let changed = store.approvals_changed_since(T0 + 20, 0).await?;
    assert_eq!(ids(&changed), vec![a.id.clone()]);
    assert_eq!(
        changed
            .first()
            .map(|a| (a.status, a.updated_at, a.votes.len())),
        Some((ApprovalStatus::Approved, T0 + 40, 2))
    );
    store
        .cancel_approvals(std::slice::from_ref(&b.id), "admin-1", "no", T0 + 50)
        .await?;
    let changed = store.approvals_changed_since(T0 + 20, 0).await?;
    assert_eq!(ids(&changed), vec![a.id.clone(), b.id.clone()]);
    assert!(store.approvals_changed_since(T0 + 50, 0).await?.is_empty());
    let report = store.verify_chain().await?;
    // opened, 3 x (decision + request), 2 votes + approved, cancelled
    assert_eq!((report.ok, report.events_checked), (true, 11), "{report:?}");
    Ok(())
}

async fn concurrent_votes_on_two_brokers_both_count(db: &TestDb) -> TestResult {
    let store = db.store();
    let replica = db.connect_another(TestDb::test_config()).await?;
    let s = session(10);
    let mut approvals = Vec::new();
    for i in 0..5 {
        approvals.push(open_and_request(store, &s, &format!("c{i}"), 2, T0 + i).await?);
    }
    // Every approval gets its two votes at once, one on each broker.
    let votes = approvals.iter().map(|a| {
        let (store, replica, id) = (store.clone(), replica.clone(), a.id.clone());
        async move {
            let at = T0 + 100;
            tokio::join!(
                store.vote_on_approval(&id, vote("bob", &["payments"], Vote::Approve, at), at),
                replica.vote_on_approval(&id, vote("carol", &["payments"], Vote::Approve, at), at),
            )
        }
    });
    for (bob, carol) in futures::future::join_all(votes).await {
        let (bob, carol) = (counted(bob?)?, counted(carol?)?);
        // Whichever committed second saw the other's vote and settled the approval.
        let mut statuses = [bob.status, carol.status];
        statuses.sort_by_key(|s| s.as_str());
        assert_eq!(
            statuses,
            [ApprovalStatus::Approved, ApprovalStatus::Pending]
        );
    }
    for a in &approvals {
        let stored = store.approval(&a.id).await?.ok_or("approval gone")?;
        assert_eq!(stored.status, ApprovalStatus::Approved);
        let mut approvers = stored.approvers();
        approvers.sort();
        assert_eq!(approvers, vec!["bob", "carol"]);
    }
    assert_eq!(
        events_of_kind(store, EventKind::ApprovalApproved)
            .await?
            .len(),
        5,
        "each approval is approved once"
    );
    assert_eq!(
        events_of_kind(store, EventKind::ApprovalVoted).await?.len(),
        10
    );
    let report = store.verify_chain().await?;
    // opened, 5 x (decision + request + 2 votes + approved)
    assert_eq!((report.ok, report.events_checked), (true, 26), "{report:?}");
    Ok(())
}

async fn approvals_list_newest_first_filtered_and_paged(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let mut approvals = Vec::new();
    for i in 0..5 {
        approvals.push(open_and_request(store, &s, &format!("c{i}"), 1, T0 + i).await?);
    }
    let other_agent = Session {
        agent: "agent-2".into(),
        ..session(10)
    };
    let theirs = open_and_request(store, &other_agent, "c0", 1, T0 + 10).await?;
    let [a0, a1, a2, a3, a4] = approvals.as_slice() else {
        return Err("five approvals".into());
    };
    approve(store, a1, "bob", T0 + 20).await?;
    let ids = |approvals: &[Approval]| -> Vec<String> {
        approvals.iter().map(|a| a.id.clone()).collect()
    };

    let page = |after_seq, limit| Page { after_seq, limit };
    let (all, next) = store
        .list_approvals(&ApprovalFilter::default(), page(0, 0))
        .await?;
    assert_eq!(
        ids(&all),
        ids(&[
            theirs.clone(),
            a4.clone(),
            a3.clone(),
            a2.clone(),
            a1.clone(),
            a0.clone()
        ])
    );
    assert_eq!(next, None);
    assert_eq!(
        all.get(4).map(|a| a.votes.len()),
        Some(1),
        "with their votes"
    );

    // Pages of two, for agent-1 only.
    let mine = ApprovalFilter {
        agent: Some("agent-1".into()),
        ..ApprovalFilter::default()
    };
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (items, next) = store.list_approvals(&mine, page(after, 2)).await?;
        pages += 1;
        assert!(items.len() <= 2);
        seen.extend(ids(&items));
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        ids(&[a4.clone(), a3.clone(), a2.clone(), a1.clone(), a0.clone()])
    );

    let approved = ApprovalFilter {
        status: Some(ApprovalStatus::Approved),
        tool: Some(REFUND.into()),
        ..ApprovalFilter::default()
    };
    let (found, _) = store.list_approvals(&approved, page(0, 0)).await?;
    assert_eq!(ids(&found), vec![a1.id.clone()]);
    let elsewhere = ApprovalFilter {
        tool: Some("web.search".into()),
        ..ApprovalFilter::default()
    };
    assert!(store
        .list_approvals(&elsewhere, page(0, 0))
        .await?
        .0
        .is_empty());
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// session labels

/// The event of labels added to `s`: a retrieval batch or a tool result, with `detail`.
fn labelled(s: &Session, kind: EventKind, detail: &serde_json::Value, at: Micros) -> EventBody {
    EventBody {
        tool: (kind == EventKind::ToolResultReported).then(|| "web.search".to_owned()),
        detail: Some(detail.to_string()),
        ..body(kind, s, at)
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&i| i.to_owned()).collect()
}

/// `store` adds the label `pii` to `s` at `at`, as a retrieval batch would.
async fn label_pii(store: &Store, s: &Session, at: Micros) -> TestResult {
    store
        .add_session_labels(
            &s.id,
            &strings(&["pii"]),
            labelled(s, EventKind::RetrievalDecided, &serde_json::json!({}), at),
            at,
        )
        .await?
        .ok_or("session not found")?;
    Ok(())
}

async fn session_collections_and_labels_round_trip(db: &TestDb) -> TestResult {
    let store = db.store();
    // Collections are kept as given; labels are stored sorted and unique.
    let s = Session {
        collections: strings(&["tickets", "handbook", "wiki"]),
        labels: strings(&["pii", "confidential", "pii"]),
        ..session(3)
    };
    store.open_session(&s, opened(&s)).await?;
    let stored = store.session(&s.id).await?.ok_or("session gone")?;
    assert_eq!(
        stored.collections,
        strings(&["tickets", "handbook", "wiki"])
    );
    assert_eq!(stored.labels, strings(&["confidential", "pii"]));
    assert_eq!(
        stored,
        Session {
            labels: strings(&["confidential", "pii"]),
            ..s
        }
    );

    // (Another user: a session of the same agent and user would carry `s`'s labels, `store::taint`.)
    let bare = Session {
        collections: vec![],
        labels: vec![],
        user: Some("bob".into()),
        ..session(1)
    };
    store.open_session(&bare, opened(&bare)).await?;
    assert_eq!(store.session(&bare.id).await?, Some(bare));

    // A session stored before the columns existed (or by anything that leaves them out) has neither.
    db.execute(
        "INSERT INTO sessions (id, agent, tools, purpose, created_at, expires_at, max_tool_calls) \
         VALUES ('ses_old', 'agent-1', '[\"*\"]', '', 1, 2, 3)",
    )
    .await?;
    let old = store.session("ses_old").await?.ok_or("old session gone")?;
    assert_eq!((old.collections, old.labels), (vec![], vec![]));

    // What cannot be stored is refused before it is queued, and writes nothing.
    let seq = last_seq(store).await?;
    for bad in [
        Session {
            labels: strings(&["pii\0"]),
            ..session(1)
        },
        Session {
            collections: vec!["c".repeat(super::MAX_KEY_BYTES + 1)],
            ..session(1)
        },
    ] {
        let refused = store.open_session(&bad, opened(&bad)).await;
        assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
        assert_eq!(store.session(&bad.id).await?, None);
    }
    assert_eq!(last_seq(store).await?, seq);
    Ok(())
}

async fn labels_accumulate_and_every_call_is_audited(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3); // labels: ["internal"]
    store.open_session(&s, opened(&s)).await?;
    committed(
        store
            .record_decision(allow(&s, "web.search", "c1", T0 + 1))
            .await?,
    )?;

    let retrieval = serde_json::json!({"allowed": ["doc-1", "doc-3"], "denied": ["doc-2"]});
    let report = serde_json::json!({"call_id": "c1", "labels": ["pii", "confidential"]});
    let steps: [(&[&str], EventKind, &serde_json::Value, &[&str]); 5] = [
        // New labels, unsorted and repeated: the union is sorted and unique.
        (
            &["pii", "confidential", "pii"],
            EventKind::RetrievalDecided,
            &retrieval,
            &["confidential", "internal", "pii"],
        ),
        // Nothing new: the labels stay, the call is still recorded.
        (
            &["internal", "pii"],
            EventKind::ToolResultReported,
            &report,
            &["confidential", "internal", "pii"],
        ),
        // Nothing at all: still recorded.
        (
            &[],
            EventKind::RetrievalDecided,
            &retrieval,
            &["confidential", "internal", "pii"],
        ),
        // Adding some never removes the others.
        (
            &["alpha"],
            EventKind::ToolResultReported,
            &report,
            &["alpha", "confidential", "internal", "pii"],
        ),
        // The same call again (idempotent on the labels).
        (
            &["alpha"],
            EventKind::ToolResultReported,
            &report,
            &["alpha", "confidential", "internal", "pii"],
        ),
    ];
    let mut expected_events = Vec::new();
    for (i, (add, kind, detail, after)) in steps.into_iter().enumerate() {
        let seq = last_seq(store).await?;
        let at = T0 + 10 + i64::try_from(i)?;
        let event = labelled(&s, kind, detail, at);
        let updated = store
            .add_session_labels(&s.id, &strings(add), event.clone(), at)
            .await?
            .ok_or("session not found")?;
        assert_eq!(updated.labels, strings(after), "step {i}");
        assert_eq!(
            Some(&updated),
            store.session(&s.id).await?.as_ref(),
            "the answer is the stored session"
        );
        assert_eq!(
            updated,
            Session {
                tool_calls_used: 1,
                labels: strings(after),
                ..s.clone()
            },
            "only the labels change"
        );
        assert_eq!(last_seq(store).await?, seq + 1, "one event per call");
        expected_events.push(event);
    }

    // Each call's event is in the trail exactly as the caller built it, detail included.
    let trail = session_events(store, &s).await?;
    assert_eq!(
        kinds(&trail),
        vec![
            EventKind::SessionOpened,
            EventKind::ToolCallDecided,
            EventKind::RetrievalDecided,
            EventKind::ToolResultReported,
            EventKind::RetrievalDecided,
            EventKind::ToolResultReported,
            EventKind::ToolResultReported,
        ]
    );
    let labelling = trail.get(2..).ok_or("events missing")?;
    let bodies: Vec<EventBody> = labelling.iter().map(|e| e.body.clone()).collect();
    assert_eq!(bodies, expected_events);
    assert_eq!(labelling.first().map(detail).transpose()?, Some(retrieval));
    assert_eq!(labelling.get(1).map(detail).transpose()?, Some(report));

    // A closed session keeps what it read, and still records what is reported after the close.
    store
        .close_session(&s.id, T0 + 100, closed(&s, T0 + 100))
        .await?;
    let after_close = store
        .add_session_labels(
            &s.id,
            &strings(&["late"]),
            labelled(
                &s,
                EventKind::ToolResultReported,
                &serde_json::json!({}),
                T0 + 101,
            ),
            T0 + 101,
        )
        .await?
        .ok_or("session not found")?;
    assert_eq!(
        after_close.labels,
        strings(&["alpha", "confidential", "internal", "late", "pii"])
    );
    assert_eq!(after_close.closed_at, Some(T0 + 100));

    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 9), "{report:?}");
    Ok(())
}

async fn labels_for_a_missing_session_or_a_bad_event_write_nothing(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(3);
    let first = store.open_session(&s, opened(&s)).await?;
    let detail = serde_json::json!({"allowed": ["doc-1"], "denied": []});
    let seq = last_seq(store).await?;

    let ghost = Session {
        id: "ses_missing".into(),
        ..s.clone()
    };
    let missing = store
        .add_session_labels(
            &ghost.id,
            &strings(&["pii"]),
            labelled(&ghost, EventKind::RetrievalDecided, &detail, T0 + 1),
            T0 + 1,
        )
        .await?;
    assert_eq!(missing, None);
    assert_eq!(
        last_seq(store).await?,
        seq,
        "no event for a missing session"
    );
    assert_eq!(store.session(&ghost.id).await?, None);

    // Refused before the writer: another kind of event, an event about another session, a bad label.
    let pii = strings(&["pii"]);
    let wrong_kind = labelled(&s, EventKind::SessionClosed, &detail, T0 + 1);
    let other_session = labelled(&session(1), EventKind::RetrievalDecided, &detail, T0 + 1);
    let no_session = EventBody {
        session_id: None,
        ..labelled(&s, EventKind::RetrievalDecided, &detail, T0 + 1)
    };
    for (labels, event) in [
        (&pii, wrong_kind),
        (&pii, other_session),
        (&pii, no_session),
        (
            &strings(&["p\0i"]),
            labelled(&s, EventKind::RetrievalDecided, &detail, T0 + 1),
        ),
        (
            &vec!["l".repeat(super::MAX_KEY_BYTES + 1)],
            labelled(&s, EventKind::RetrievalDecided, &detail, T0 + 1),
        ),
    ] {
        let refused = store.add_session_labels(&s.id, labels, event, T0 + 1).await;
        assert_eq!(kind_of(&refused), Some(ErrorKind::Invalid), "{refused:?}");
    }

    // An event id already in the trail fails this call alone: labels untouched, nothing appended, and
    // the calls queued beside it (likely in the same batch) commit.
    let reused = EventBody {
        event_id: first.body.event_id.clone(),
        ..labelled(&s, EventKind::RetrievalDecided, &detail, T0 + 2)
    };
    let (add_a, add_reused, add_c) = (strings(&["a"]), strings(&["reused"]), strings(&["c"]));
    let (a, b, c) = tokio::join!(
        store.add_session_labels(
            &s.id,
            &add_a,
            labelled(&s, EventKind::RetrievalDecided, &detail, T0 + 2),
            T0 + 2
        ),
        store.add_session_labels(&s.id, &add_reused, reused, T0 + 2),
        store.add_session_labels(
            &s.id,
            &add_c,
            labelled(&s, EventKind::ToolResultReported, &detail, T0 + 2),
            T0 + 2
        ),
    );
    assert_eq!(kind_of(&b), Some(ErrorKind::Conflict), "{b:?}");
    assert!(a?.is_some() && c?.is_some());
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.labels),
        Some(strings(&["a", "c", "internal"]))
    );
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 3), "{report:?}");
    Ok(())
}

async fn concurrent_labels_on_two_brokers_all_land(db: &TestDb) -> TestResult {
    const CALLS: usize = 12;
    let store = db.store();
    let replica = db.connect_another(TestDb::test_config()).await?;
    let s = session(3);
    store.open_session(&s, opened(&s)).await?;
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let broker = if i % 2 == 0 {
                store.clone()
            } else {
                replica.clone()
            };
            let own = format!("label-{i:02}");
            let labels = vec![own.clone(), "shared".to_owned()];
            let event = labelled(
                &s,
                EventKind::ToolResultReported,
                &serde_json::json!({ "call": i }),
                T0 + 1,
            );
            let id = s.id.clone();
            tokio::spawn(async move {
                let updated = broker.add_session_labels(&id, &labels, event, T0 + 1).await;
                (own, updated)
            })
        })
        .collect();
    let mut expected: Vec<String> = (0..CALLS).map(|i| format!("label-{i:02}")).collect();
    expected.extend(strings(&["internal", "shared"]));
    expected.sort();
    for task in futures::future::join_all(tasks).await {
        let (own, updated) = task?;
        let labels = updated?.ok_or("session not found")?.labels;
        // Each answer holds its own labels and whatever committed before it, sorted, nothing lost.
        assert!(labels.contains(&own) && labels.contains(&"shared".to_owned()));
        assert!(
            labels.windows(2).all(|w| w.first() < w.get(1)),
            "{labels:?}"
        );
        assert!(labels.iter().all(|l| expected.contains(l)), "{labels:?}");
    }
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.labels),
        Some(expected),
        "every label from both brokers landed"
    );
    assert_eq!(
        events_of_kind(store, EventKind::ToolResultReported)
            .await?
            .len(),
        CALLS
    );
    let report = store.verify_chain().await?;
    assert_eq!(
        (report.ok, report.events_checked),
        (true, 1 + CALLS as u64),
        "{report:?}"
    );
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// one backend only

#[tokio::test]
async fn postgres_unreachable_fails_fast() -> TestResult {
    let cfg = StoreConfig {
        database_url: "postgres://postgres@127.0.0.1:1/postgres".into(),
        connect_timeout: Duration::from_millis(500),
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let result = Store::connect(&cfg).await;
    assert_eq!(kind_of(&result), Some(ErrorKind::Unavailable), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_recovers_when_its_connections_are_killed() -> TestResult {
    let db = TestDb::new(Backend::Postgres).await?;
    let store = db.store();
    let s = session(10);
    store.open_session(&s, opened(&s)).await?;
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await?;
    let mut last = None;
    for i in 0..3 {
        match store
            .record_decision(allow(&s, "web.search", &format!("c{i}"), T0 + 1))
            .await
        {
            Ok(r) => {
                last = Some(committed(r)?);
                break;
            }
            Err(e) => assert!(e.is_unavailable(), "{e}"),
        }
    }
    assert!(
        last.is_some_and(|d| d.is_allow()),
        "the writer did not recover"
    );
    assert!(store.verify_chain().await?.ok);
    Ok(())
}

#[tokio::test]
async fn sqlite_creates_its_directory_and_runs_in_wal_mode() -> TestResult {
    let db = TestDb::new(Backend::Sqlite).await?;
    let s = session(1);
    db.store().open_session(&s, opened(&s)).await?;
    let path = super::config::sqlite_path(&db.config().database_url)?;
    assert!(
        std::path::Path::new(&format!("{path}-wal")).exists(),
        "no WAL file beside {path}"
    );
    Ok(())
}

/// Waits (bounded) for the listener's next report.
async fn next_change(listener: &mut super::KillSwitchListener) -> Result<Option<String>, String> {
    tokio::time::timeout(Duration::from_secs(5), listener.recv_change())
        .await
        .map_err(|_| "no notification within 5 s".to_owned())?
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_hears_committed_changes_from_another_broker_only() -> TestResult {
    let db = TestDb::new(Backend::Postgres).await?;
    let mut listener = db
        .store()
        .kill_switch_listener()
        .await?
        .ok_or("Postgres has a listener")?;
    let replica = db.connect_another(TestDb::test_config()).await?;

    // A change whose transaction does not commit: everything runs (NOTIFY included), then COMMIT fails on
    // a deferred constraint, so the whole batch is rolled back.
    db.execute("CREATE TABLE allowed_reasons (reason TEXT PRIMARY KEY)")
        .await?;
    db.execute("INSERT INTO allowed_reasons VALUES ('ok')")
        .await?;
    db.execute(
        "ALTER TABLE kill_switches ADD CONSTRAINT reason_allowed FOREIGN KEY (reason) \
         REFERENCES allowed_reasons (reason) DEFERRABLE INITIALLY DEFERRED",
    )
    .await?;
    let doomed = switch(Scope::Global, "", T0, None);
    let failed = replica.engage_kill_switch(&doomed, engaged(&doomed)).await;
    assert!(
        failed
            .as_ref()
            .is_err_and(|e| e.message().contains("reason_allowed")),
        "refused at COMMIT by the deferred constraint: {failed:?}"
    );
    assert_eq!(replica.kill_switch(&doomed.id).await?, None);

    // So the first thing heard is the next, committed, change.
    let k = KillSwitch {
        reason: "ok".into(),
        ..switch(Scope::Agent, "agent-1", T0 + 1, None)
    };
    replica.engage_kill_switch(&k, engaged(&k)).await?;
    assert_eq!(next_change(&mut listener).await?, Some(k.id.clone()));
    replica
        .release_kill_switch(&k.id, &release("admin-1", T0 + 2), T0 + 2)
        .await?
        .ok_or("not released")?;
    assert_eq!(next_change(&mut listener).await?, Some(k.id.clone()));

    let expiring = KillSwitch {
        reason: "ok".into(),
        ..switch(Scope::Agent, "agent-2", T0 + 3, Some(T0 + 4))
    };
    replica
        .engage_kill_switch(&expiring, engaged(&expiring))
        .await?;
    assert_eq!(next_change(&mut listener).await?, Some(expiring.id.clone()));
    assert_eq!(replica.expire_kill_switches(T0 + 5).await?.len(), 1);
    assert_eq!(next_change(&mut listener).await?, Some(expiring.id.clone()));
    assert!(db.store().verify_chain().await?.ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_approval_listener_hears_every_change_from_another_broker() -> TestResult {
    let db = TestDb::new(Backend::Postgres).await?;
    let mut listener = db
        .store()
        .approval_listener()
        .await?
        .ok_or("Postgres has a listener")?;
    let replica = db.connect_another(TestDb::test_config()).await?;
    let s = session(10);
    let a = open_and_request(&replica, &s, "c1", 1, T0).await?;
    assert_eq!(next_change(&mut listener).await?, Some(a.id.clone()));
    approve(&replica, &a, "bob", T0 + 1).await?;
    assert_eq!(next_change(&mut listener).await?, Some(a.id.clone()));
    committed(
        replica
            .record_decision(consume(&s, &a, "c1-approved", T0 + 2))
            .await?,
    )?;
    assert_eq!(next_change(&mut listener).await?, Some(a.id.clone()));
    // A kill switch is not an approval: not heard on this channel.
    let k = switch(Scope::Global, "", T0, None);
    replica.engage_kill_switch(&k, engaged(&k)).await?;
    let b = open_and_request(&replica, &s, "c2", 1, T0 + 3).await?;
    assert_eq!(next_change(&mut listener).await?, Some(b.id.clone()));
    replica
        .cancel_approvals(std::slice::from_ref(&b.id), "admin-1", "stop", T0 + 4)
        .await?;
    assert_eq!(next_change(&mut listener).await?, Some(b.id.clone()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_reports_a_lost_connection_and_listens_again() -> TestResult {
    let db = TestDb::new(Backend::Postgres).await?;
    let mut listener = db
        .store()
        .kill_switch_listener()
        .await?
        .ok_or("Postgres has a listener")?;
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await?;
    // The loss is reported (as "changes may have been missed", possibly after an error), never hidden.
    let mut reported = false;
    for _ in 0..3 {
        match next_change(&mut listener).await {
            Ok(None) => {
                reported = true;
                break;
            }
            Ok(Some(id)) => return Err(format!("heard a change nobody made: {id}").into()),
            Err(e) => assert!(e.contains("unavailable"), "{e}"),
        }
    }
    assert!(reported, "the lost connection was not reported");

    // Listening again: a change made afterwards is heard.
    let k = switch(Scope::Global, "", T0, None);
    let mut engaged_ok = false;
    for _ in 0..3 {
        match db.store().engage_kill_switch(&k, engaged(&k)).await {
            Ok(_) => {
                engaged_ok = true;
                break;
            }
            Err(e) => assert!(e.is_unavailable(), "{e}"),
        }
    }
    assert!(engaged_ok, "the writer did not recover");
    assert_eq!(next_change(&mut listener).await?, Some(k.id.clone()));
    Ok(())
}

/// A writer that remembers what it committed (Postgres's `pg_writer` records a batch without reading
/// when nobody else appended since its last commit) must notice every change another broker made in
/// between: budget spent, a session closed, labels added, a call already remembered, an event id taken.
/// Each of store A's decisions below comes after a batch of A's that left the sessions known to it.
async fn a_writer_sees_what_another_broker_changed_between_its_batches(db: &TestDb) -> TestResult {
    let a = db.store();
    let b = db.connect_another(TestDb::test_config()).await?;
    // A decision of A's that commits: afterwards A knows `s` and the chain head.
    let learn = |s: &Session, call_id: &str, at: Micros| {
        let rec = allow(s, "web.search", call_id, at);
        async move {
            let recorded = a.record_decision(rec).await.map_err(|e| e.to_string())?;
            committed(recorded)
        }
    };
    let (spent, shut, tainted) = (session(3), session(10), session(10));
    for s in [&spent, &shut, &tainted] {
        a.open_session(s, opened(s)).await?;
    }
    for (call_id, at) in [("a1", T0 + 1), ("a2", T0 + 2)] {
        for s in [&spent, &shut, &tainted] {
            assert!(learn(s, call_id, at).await?.is_allow());
        }
    }

    // Budget: A spent 2 of 3, B spends the last one; A's next ALLOW is overruled.
    assert!(committed(
        b.record_decision(allow(&spent, "web.search", "b1", T0 + 3))
            .await?
    )?
    .is_allow());
    let late = committed(
        a.record_decision(allow(&spent, "web.search", "a3", T0 + 4))
            .await?,
    )?;
    assert_eq!(reason_codes(&late), vec![ReasonCode::BudgetExhausted]);

    // Closed by B, then A records in a session it did not know (so it reads, and finds the chain moved):
    // what A knew of the closed session from before must not be trusted either.
    let other = session(10);
    b.open_session(&other, opened(&other)).await?;
    assert!(learn(&shut, "a3", T0 + 5).await?.is_allow());
    b.close_session(&shut.id, T0 + 6, closed(&shut, T0 + 6))
        .await?;
    assert!(learn(&other, "a1", T0 + 7).await?.is_allow());
    let after_close = committed(
        a.record_decision(allow(&shut, "web.search", "a4", T0 + 7))
            .await?,
    )?;
    assert_eq!(reason_codes(&after_close), vec![ReasonCode::SessionClosed]);

    // Labels added by B: an ALLOW decided on the labels A knew of is stale, and nothing is written.
    assert!(learn(&tainted, "a3", T0 + 8).await?.is_allow());
    label_pii(&b, &tainted, T0 + 9).await?;
    let before = last_seq(a).await?;
    let mut stale = allow(&tainted, "web.search", "a4", T0 + 10);
    stale.labels_seen = Some(tainted.labels.len());
    assert_eq!(a.record_decision(stale).await?, Recorded::Stale);
    assert_eq!(last_seq(a).await?, before, "nothing was appended");
    let labelled_now = tainted.labels.len() + 1;
    let with_labels = |call_id: &str, at: Micros| {
        let mut rec = allow(&tainted, "web.search", call_id, at);
        rec.labels_seen = Some(labelled_now);
        rec
    };

    // A call B remembered, retried through A: replayed; nothing spent or appended.
    let first = committed(b.record_decision(with_labels("b2", T0 + 11)).await?)?;
    assert!(committed(a.record_decision(with_labels("a4", T0 + 12)).await?)?.is_allow());
    let used = a.session(&tainted.id).await?.map(|s| s.tool_calls_used);
    let before = last_seq(a).await?;
    match a.record_decision(with_labels("b2", T0 + 13)).await? {
        Recorded::Replayed(prior) => assert_eq!(prior.decision, first),
        other => return Err(format!("expected a replay, got {other:?}").into()),
    }
    assert_eq!(last_seq(a).await?, before, "a replay appends nothing");
    assert_eq!(
        a.session(&tainted.id).await?.map(|s| s.tool_calls_used),
        used
    );

    // An event id B already used: that decision's own conflict; A's next decision commits.
    let taken = with_labels("b3", T0 + 14);
    committed(b.record_decision(taken.clone()).await?)?;
    assert!(committed(a.record_decision(with_labels("a5", T0 + 15)).await?)?.is_allow());
    let mut reused = with_labels("a6", T0 + 16);
    reused.call.event_id = taken.call.event_id.clone();
    let conflict = a.record_decision(reused).await;
    assert_eq!(
        kind_of(&conflict),
        Some(ErrorKind::Conflict),
        "{conflict:?}"
    );
    assert!(committed(a.record_decision(with_labels("a7", T0 + 17)).await?)?.is_allow());

    assert_eq!(
        a.session(&spent.id).await?.map(|s| s.tool_calls_used),
        Some(3)
    );
    let report = a.verify_chain().await?;
    assert!(report.ok, "{report:?}");
    Ok(())
}

/// An ALLOW made on fewer labels than its session has (another broker, or a retrieval in between, added
/// some) is answered `Stale` with nothing written, on both writer paths; a DENY is recorded as it is.
async fn allows_decided_on_fewer_labels_are_stale_and_write_nothing(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(10);
    let a = open_and_request(store, &s, "c1", 1, T0 + 10).await?;
    approve(store, &a, "bob", T0 + 20).await?;
    label_pii(store, &s, T0 + 25).await?;
    let before = last_seq(store).await?;
    let used_before = store.session(&s.id).await?.map(|s| s.tool_calls_used);

    let (before_label, now_labelled) = (s.labels.len(), s.labels.len() + 1);
    let stale = |mut rec: DecisionRecord, seen: usize| {
        rec.labels_seen = Some(seen);
        rec
    };
    let plain = store
        .record_decision(stale(allow(&s, "web.search", "c2", T0 + 30), before_label))
        .await?;
    assert_eq!(plain, Recorded::Stale, "set-wise path");
    let approved = store
        .record_decision(stale(consume(&s, &a, "c1-approved", T0 + 30), before_label))
        .await?;
    assert_eq!(approved, Recorded::Stale, "one-by-one path");
    assert_eq!(last_seq(store).await?, before, "no event was appended");
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        used_before,
        "no budget was spent"
    );
    let unused = store.approval(&a.id).await?.ok_or("approval gone")?;
    assert_eq!(unused.consumed_at, None, "the approval was not used");

    // Decided again with the labels it has now: committed. A DENY is never stale.
    let again = committed(
        store
            .record_decision(stale(allow(&s, "web.search", "c2", T0 + 31), now_labelled))
            .await?,
    )?;
    assert_eq!(again.outcome, Outcome::Allow);
    let denied = committed(
        store
            .record_decision(stale(deny(&s, "web.search", "c3", T0 + 32), before_label))
            .await?,
    )?;
    assert_eq!(denied.outcome, Outcome::Deny);
    let used = committed(
        store
            .record_decision(stale(consume(&s, &a, "c1-approved", T0 + 33), now_labelled))
            .await?,
    )?;
    assert_eq!(used.outcome, Outcome::Allow);
    Ok(())
}

/// An ALLOW whose policies read the session's call count (`calls_seen`) is `Stale` when the count moved
/// before its commit: concurrent calls each decided on "no call yet" (the issue's "one refund per
/// session": 64 of 64 got through) commit one, however they are batched; on both writer paths.
async fn allows_decided_on_a_call_count_that_moved_are_stale(db: &TestDb) -> TestResult {
    let store = db.store();
    let s = session(100);
    store.open_session(&s, opened(&s)).await?;
    let on_none_spent = |call_id: &str| {
        let mut rec = allow(&s, "payments.refund", call_id, T0 + 10);
        rec.calls_seen = Some(0);
        rec
    };
    let answers = futures::future::join_all(
        (0..16).map(|i| store.record_decision(on_none_spent(&format!("r{i}")))),
    )
    .await;
    let mut allowed = 0;
    for answer in answers {
        match answer? {
            Recorded::Committed(d) if d.is_allow() => allowed += 1,
            Recorded::Stale => {}
            other => return Err(format!("expected an ALLOW or Stale, got {other:?}").into()),
        }
    }
    assert_eq!(
        allowed, 1,
        "one of 16 concurrent calls decided on 0 calls spent"
    );
    assert_eq!(
        store.session(&s.id).await?.map(|s| s.tool_calls_used),
        Some(1)
    );
    // Decided again on the count it has now: committed. Without `calls_seen`: not checked.
    let mut again = allow(&s, "payments.refund", "r-again", T0 + 11);
    again.calls_seen = Some(1);
    assert!(committed(store.record_decision(again).await?)?.is_allow());
    assert!(committed(
        store
            .record_decision(allow(&s, "web.search", "w1", T0 + 12))
            .await?
    )?
    .is_allow());

    // The one-by-one path (an approved call): stale on a moved count, nothing used.
    let a = open_and_request(store, &s, "c1", 1, T0 + 20).await?;
    approve(store, &a, "bob", T0 + 21).await?;
    let before = last_seq(store).await?;
    let mut approved = consume(&s, &a, "c1-approved", T0 + 22);
    approved.calls_seen = Some(1);
    assert_eq!(store.record_decision(approved).await?, Recorded::Stale);
    assert_eq!(last_seq(store).await?, before, "nothing was appended");
    let unused = store.approval(&a.id).await?.ok_or("approval gone")?;
    assert_eq!(unused.consumed_at, None, "the approval was not used");
    let mut approved = consume(&s, &a, "c1-approved", T0 + 23);
    approved.calls_seen = Some(3);
    assert!(committed(store.record_decision(approved).await?)?.is_allow());
    Ok(())
}

/// Every column of `table` quoted as text (SQLite's `quote()` shows the type too), row by row in `order`.
async fn quoted_rows(
    db: &TestDb,
    table: &str,
    columns: &str,
    order: &str,
) -> Result<Vec<String>, Error> {
    let quoted: Vec<String> = columns
        .split(',')
        .map(|c| match db.backend() {
            Backend::Sqlite => format!("quote({})", c.trim()),
            Backend::Postgres => format!("quote_nullable({})", c.trim()),
        })
        .collect();
    let sql = format!(
        "SELECT {} AS row FROM {table} ORDER BY {order}",
        quoted.join(" || '|' || ")
    );
    let rows = sqlx::query(&sql)
        .fetch_all(&db.store().inner.pool)
        .await
        .map_err(super::sql::db)?;
    rows.iter().map(|r| super::sql::column(r, "row")).collect()
}

/// A batch of nothing but plain decisions takes its backend's fast path (SQLite: the writer thread,
/// rusqlite; Postgres: `pg_writer`, tokio-postgres, pipelined); a run of them in a mixed
/// batch takes `decisions::record`. Both must answer alike and store byte-identical rows: replays (stored
/// and within the batch), a reused event id, an exhausted budget, a missing session, a stale ALLOW, DENYs.
async fn plain_batches_store_the_same_rows_on_both_paths(backend: Backend) -> TestResult {
    let (fast_db, mixed_db) = (TestDb::new(backend).await?, TestDb::new(backend).await?);
    let s = session(3);
    let open = opened(&s);
    let earlier = allow(&s, "web.search", "c0", T0 + 1);
    for db in [&fast_db, &mixed_db] {
        db.store().open_session(&s, open.clone()).await?;
        db.store().record_decision(earlier.clone()).await?;
    }
    let missing = session(3);
    let mut reused_event = deny(&s, "email.send", "c5", T0 + 2);
    reused_event.call.event_id = open.event_id.clone();
    let mut stale = allow(&s, "web.search", "c6", T0 + 2);
    stale.labels_seen = Some(s.labels.len() + 1);
    let mut unremembered = deny(&s, "web.search", "c7", T0 + 2);
    unremembered.remember = false;
    let batch = vec![
        allow(&s, "web.search", "c0", T0 + 2), // stored earlier: replayed
        allow(&s, "web.search", "c1", T0 + 2),
        deny(&s, "email.send", "c2", T0 + 2),
        allow(&s, "web.search", "c1", T0 + 3), // earlier in this batch: replayed
        stale,
        allow(&s, "web.search", "c3", T0 + 2),
        allow(&s, "web.search", "c4", T0 + 2), // the budget of 3 is spent: overruled
        reused_event,
        unremembered,
        allow(&missing, "web.search", "c8", T0 + 2),
    ];

    let by_fast = match backend {
        Backend::Sqlite => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            super::sqlite_writer::SqliteWriter::start(
                &super::config::sqlite_path(&fast_db.config().database_url)?,
                &super::sqlite_settings(5_000),
            )?
            .record(batch.clone(), deadline)
            .await?
            .0
        }
        Backend::Postgres => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let recs: Vec<&DecisionRecord> = batch.iter().collect();
            let routes = super::pg_tunnel::PgRoutes::new(
                &fast_db.config().database_url,
                Duration::from_secs(5),
            )?;
            super::pg_writer::PgWriter::new(
                &routes.writer_url,
                &routes.tls,
                Duration::from_secs(5),
                &super::postgres_settings(5_000),
            )?
            .record(&recs, deadline, &|| false)
            .await?
            .0
        }
    };
    let by_mixed = {
        use sqlx::Connection as _;
        let mut conn = mixed_db
            .store()
            .inner
            .pool
            .acquire()
            .await
            .map_err(super::sql::db)?;
        let mut tx = conn.begin().await.map_err(super::sql::db)?;
        let head = super::sql::chain_head(&mut *tx).await?;
        let mut chain = super::writer::Chain::start(head, backend);
        let recs: Vec<&DecisionRecord> = batch.iter().collect();
        let answers = super::decisions::record(&mut tx, &mut chain, &recs).await?;
        tx.commit().await.map_err(super::sql::db)?;
        answers
    };
    assert_eq!(by_fast, by_mixed);
    let kinds: Vec<String> = by_fast
        .iter()
        .map(|a| match a {
            Ok(Recorded::Committed(d)) => format!("{:?} {:?}", d.outcome, reason_codes(d)),
            Ok(Recorded::Replayed(c)) => format!("replay {}", c.decision.call_id),
            Ok(Recorded::Stale) => "stale".to_owned(),
            Err(e) => format!("{:?}", e.kind()),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "replay c0",
            "Allow [PolicyAllow]",
            "Deny [PolicyDeny]",
            "replay c1",
            "stale",
            "Allow [PolicyAllow]",
            "Deny [BudgetExhausted]",
            "Conflict",
            "Deny [PolicyDeny]",
            "Deny [SessionNotFound]",
        ]
    );

    let tables = [
        ("audit_events", super::sql::EVENT_COLUMNS, "seq"),
        (
            "tool_calls",
            "session_id, agent, call_id, arguments_digest, decision, recorded_at",
            "session_id, agent, call_id",
        ),
        ("sessions", super::sql::SESSION_COLUMNS, "id"),
    ];
    for (table, columns, order) in tables {
        let (a, b) = (
            quoted_rows(&fast_db, table, columns, order).await?,
            quoted_rows(&mixed_db, table, columns, order).await?,
        );
        assert!(!a.is_empty(), "{table} has rows");
        assert_eq!(a, b, "{table}");
    }
    assert_eq!(
        fast_db
            .store()
            .session(&s.id)
            .await?
            .map(|s| s.tool_calls_used),
        Some(3)
    );
    assert!(fast_db.store().verify_chain().await?.ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_plain_batches_store_the_same_rows_on_both_paths() -> TestResult {
    plain_batches_store_the_same_rows_on_both_paths(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plain_batches_store_the_same_rows_on_both_paths() -> TestResult {
    plain_batches_store_the_same_rows_on_both_paths(Backend::Postgres).await
}

/// The commit's fail points (feature `failpoints`) fire on every path a plain decision takes, SQLite's
/// writer thread included: before the commit, an error and nothing written; after it, an error although
/// the decision is committed, so a retry replays it. Fail points are per process: nextest runs each
/// test in a process of its own.
#[cfg(feature = "failpoints")]
mod commit_failpoints {
    use super::*;

    async fn answered_only_after_the_commit(db: &TestDb) -> TestResult {
        let store = db.store();
        let s = session(10);
        store.open_session(&s, opened(&s)).await?;
        let before = last_seq(store).await?;

        fail::cfg("audit.before_commit", "return")?;
        let refused = store
            .record_decision(allow(&s, "web.search", "c1", T0 + 1))
            .await;
        fail::remove("audit.before_commit");
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(last_seq(store).await?, before, "nothing was written");
        assert_eq!(
            store.session(&s.id).await?.map(|s| s.tool_calls_used),
            Some(0)
        );

        fail::cfg("audit.after_commit", "return")?;
        let unheard = store
            .record_decision(allow(&s, "web.search", "c2", T0 + 2))
            .await;
        fail::remove("audit.after_commit");
        assert!(unheard.is_err(), "{unheard:?}");
        assert_eq!(
            last_seq(store).await?,
            before + 1,
            "committed, though not heard"
        );

        let retried = store
            .record_decision(allow(&s, "web.search", "c2", T0 + 3))
            .await?;
        assert!(
            matches!(&retried, Recorded::Replayed(c) if c.decision.is_allow()),
            "{retried:?}"
        );
        assert!(store.verify_chain().await?.ok);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() -> TestResult {
        answered_only_after_the_commit(&TestDb::new(Backend::Sqlite).await?).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() -> TestResult {
        answered_only_after_the_commit(&TestDb::new(Backend::Postgres).await?).await
    }
}

/// Why `pg_writer` may send a batch's COMMIT behind its writes without waiting: when the write statement
/// fails (`broker_require` refuses what it wrote), the transaction is aborted and the COMMIT pipelined
/// behind it rolls back; nothing of the transaction is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_refused_write_rolls_back_the_commit_sent_behind_it() -> TestResult {
    let db = TestDb::new(Backend::Postgres).await?;
    db.execute("CREATE TABLE scratch (x BIGINT)").await?;
    let (client, connection) =
        tokio_postgres::connect(&db.config().database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    // Prepared first, as `pg_writer`'s statements are: given SQL text, the client would prepare it in a
    // round trip of its own and the COMMIT would overtake it (this test then fails).
    let check = client
        .prepare("SELECT broker_require($1::bigint = 1, 'refused on purpose')")
        .await?;
    client
        .batch_execute("BEGIN; INSERT INTO scratch VALUES (1)")
        .await?;
    let (refused, committed) = futures::future::join(
        client.query_one(&check, &[&2_i64]),
        client.simple_query("COMMIT"),
    )
    .await;
    let refused = refused
        .err()
        .map(|e| Error::from_tokio_postgres(e).to_string());
    assert_eq!(
        refused.as_deref(),
        Some("internal store error: refused on purpose")
    );
    assert!(committed.is_ok(), "{committed:?}");
    let stored: i64 = client
        .query_one("SELECT count(*) FROM scratch", &[])
        .await?
        .get(0);
    assert_eq!(stored, 0, "the COMMIT rolled the aborted transaction back");
    client
        .batch_execute("BEGIN; INSERT INTO scratch VALUES (1)")
        .await?;
    let (kept, _) = futures::future::join(
        client.query_one(&check, &[&1_i64]),
        client.simple_query("COMMIT"),
    )
    .await;
    assert!(kept?.get::<_, bool>(0));
    let stored: i64 = client
        .query_one("SELECT count(*) FROM scratch", &[])
        .await?
        .get(0);
    assert_eq!(
        stored, 1,
        "a statement that passes its check lets the commit through"
    );
    drop(client);
    driver.await??;
    Ok(())
}

/// The Postgres writer's own connection, ended by the server between batches (a restart, an admin's
/// `pg_terminate_backend`): the next batch is refused (never allowed), and the one after reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_reconnects_after_its_connection_is_terminated() -> TestResult {
    let db = TestDb::new(Backend::Postgres).await?;
    let store = db.store();
    let s = session(10);
    store.open_session(&s, opened(&s)).await?;
    committed(
        store
            .record_decision(allow(&s, "web.search", "c1", T0 + 1))
            .await?,
    )?;
    let terminated = sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'agent-broker audit writer'",
    )
    .fetch_one(&store.inner.pool)
    .await
    .map_err(super::sql::db)?;
    assert_eq!(super::sql::column::<i64>(&terminated, "n")?, 1);
    let mut allowed = 0;
    for i in 2..6 {
        match store
            .record_decision(allow(&s, "web.search", &format!("c{i}"), T0 + 2))
            .await
        {
            Ok(recorded) => {
                assert!(committed(recorded)?.is_allow());
                allowed += 1;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "refused as unavailable: {e}");
                assert_eq!(allowed, 0, "only the batch on the dead connection fails");
            }
        }
    }
    assert!(allowed >= 3, "{allowed} of 4 allowed after the reconnect");
    let report = store.verify_chain().await?;
    assert_eq!((report.ok, report.events_checked), (true, 2 + allowed));
    Ok(())
}

async fn listings_show_only_the_scoped_tenant(db: &TestDb) -> TestResult {
    let store = db.store();
    let in_tenant = |tenant: Option<&str>| Session {
        tenant: tenant.map(str::to_owned),
        ..session(10)
    };
    let (acme, globex, none) = (
        in_tenant(Some("acme")),
        in_tenant(Some("globex")),
        in_tenant(None),
    );
    let a = open_and_request(store, &acme, "c1", 1, T0 + 1).await?;
    let g = open_and_request(store, &globex, "c1", 1, T0 + 2).await?;
    let n = open_and_request(store, &none, "c1", 1, T0 + 3).await?;
    assert_eq!(
        store
            .approval(&a.id)
            .await?
            .and_then(|a| a.tenant)
            .as_deref(),
        Some("acme"),
        "the tenant is stored"
    );

    let approvals = |tenant: TenantScope| {
        let filter = ApprovalFilter {
            tenant,
            ..ApprovalFilter::default()
        };
        async move {
            let (found, _) = store.list_approvals(&filter, Page::default()).await?;
            Ok::<_, Error>(found.into_iter().map(|a| a.id).collect::<Vec<_>>())
        }
    };
    let only = |t: Option<&str>| TenantScope::Only(t.map(str::to_owned));
    assert_eq!(approvals(only(Some("acme"))).await?, vec![a.id.clone()]);
    assert_eq!(approvals(only(Some("globex"))).await?, vec![g.id.clone()]);
    assert_eq!(approvals(only(None)).await?, vec![n.id.clone()]);
    assert!(approvals(only(Some("initech"))).await?.is_empty());
    assert_eq!(
        approvals(TenantScope::All).await?,
        vec![n.id.clone(), g.id.clone(), a.id.clone()]
    );

    // Events: those of the tenant's sessions; without a tenant, also those of no known session.
    let switch = KillSwitch {
        id: ids::kill_switch_id(),
        scope: Scope::Global,
        target: String::new(),
        reason: "drill".into(),
        engaged_by: "admin-1".into(),
        engaged_at: T0 + 4,
        expires_at: None,
        released: None,
    };
    let engaged =
        EventBody::for_kill_switch(EventKind::KillSwitchEngaged, &switch, "admin-1", T0 + 4);
    store.engage_kill_switch(&switch, engaged).await?;
    let sessions = |tenant: TenantScope| {
        let filter = EventFilter {
            tenant,
            ..EventFilter::default()
        };
        async move {
            let (events, _) = store.list_events(&filter, Page::default()).await?;
            let mut ids: Vec<Option<String>> =
                events.into_iter().map(|e| e.body.session_id).collect();
            ids.dedup();
            Ok::<_, Error>(ids)
        }
    };
    assert_eq!(
        sessions(only(Some("acme"))).await?,
        vec![Some(acme.id.clone())]
    );
    assert_eq!(
        sessions(only(Some("globex"))).await?,
        vec![Some(globex.id.clone())]
    );
    assert_eq!(
        sessions(only(None)).await?,
        vec![Some(none.id.clone()), None],
        "the kill switch belongs to no tenant"
    );
    assert_eq!(sessions(TenantScope::All).await?.len(), 4);
    Ok(())
}

async fn two_identities_of_one_person_voting_at_once_count_once(db: &TestDb) -> TestResult {
    let store = db.store();
    let replica = db.connect_another(TestDb::test_config()).await?;
    let s = session(10);
    let mut approvals = Vec::new();
    for i in 0..5 {
        approvals.push(open_and_request(store, &s, &format!("c{i}"), 2, T0 + i).await?);
    }
    // Two tokens of one person (`bob`, `Bob@example.com`), one on each broker, at once: whichever the
    // writer takes second finds the first's vote inside its transaction and is refused.
    let votes = approvals.iter().map(|a| {
        let (store, replica, id) = (store.clone(), replica.clone(), a.id.clone());
        async move {
            let at = T0 + 100;
            let mut second = vote("bob-laptop", &["payments"], Vote::Approve, at);
            second.person = "Bob@example.com".into();
            tokio::join!(
                store.vote_on_approval(&id, vote("bob", &["payments"], Vote::Approve, at), at),
                replica.vote_on_approval(&id, second, at),
            )
        }
    });
    for (one, other) in futures::future::join_all(votes).await {
        let results = [one?, other?];
        let refused = results
            .iter()
            .filter(|r| **r == VoteResult::Refused(Refusal::AlreadyVoted))
            .count();
        let pending = results
            .iter()
            .filter(|r| matches!(r, VoteResult::Counted(a) if a.status == ApprovalStatus::Pending))
            .count();
        assert_eq!((refused, pending), (1, 1), "{results:?}");
    }
    for a in &approvals {
        let stored = store.approval(&a.id).await?.ok_or("approval gone")?;
        assert_eq!(
            stored.status,
            ApprovalStatus::Pending,
            "a quorum of 2 is not met by one person"
        );
        assert_eq!(stored.votes.len(), 1);
    }
    // The person is stored with the vote and named in its event.
    let voted = events_of_kind(store, EventKind::ApprovalVoted).await?;
    assert_eq!(voted.len(), 5);
    for e in &voted {
        let person = detail(e)?["person"].as_str().map(str::to_owned);
        assert!(
            matches!(person.as_deref(), Some("bob" | "Bob@example.com")),
            "{person:?}"
        );
    }
    Ok(())
}
