//! Clients give up on calls at random moments: short deadlines (sent as `grpc-timeout`) and dropped
//! futures (the stream is reset). Zero unaudited ALLOWs, no transaction left open, the writer still
//! commits; and a call cut short whose write committed anyway is replayed, not decided twice, when retried.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::database_faults::SETTLE;
use crate::load::{by_label, ms, Cancel, Load, LoadSpec, Observation, Seen, AGENT, USER};
use crate::mode;
use crate::preserved::Preserved;
use crate::reconcile::{
    assert_nothing_lost, database_sessions, no_transaction_left_open, reconcile,
};
use crate::world::{World, WorldOptions, DATABASE};

const CLIENTS: usize = 8;
/// A client that cut a call short waits this long before the next: the clients offer about what the
/// broker commits, so the scenario is about cancellations, not overload (see `writer_backlog`).
const PAUSE: Duration = Duration::from_millis(20);
/// How many calls cut short are retried with their own call id.
const RETRIED: usize = 100;

/// `call_id` -> `decision_id` of every committed tool-call decision.
async fn committed_calls(world: &World) -> HashMap<String, String> {
    let mut db = world.pg.superuser(DATABASE).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT call_id, decision_id FROM audit_events WHERE kind = 'TOOL_CALL_DECIDED'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// The p90 answer time of [`CLIENTS`] clients calling without cutting anything short, for a second.
async fn usual_answer_time(world: &World) -> Duration {
    let calibration = Load::start(
        || world.agent(AGENT, USER),
        LoadSpec {
            clients: CLIENTS,
            refund_every: 10,
            cancel: Cancel::Never,
            pause_after_error: PAUSE,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times: Vec<Duration> = calibration
        .stop()
        .await
        .iter()
        .map(Observation::latency)
        .collect();
    crate::load::quantile(&mut times, 0.9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cancelled_at_random_moments() {
    let sizes = mode::sizes();
    let world = World::start(WorldOptions::default()).await;
    let preserved = Preserved::create(&world).await;
    // Deadlines are drawn up to a call's usual (p90) answer time under this load on this machine (measured
    // now), so the cuts land before, during and after the commit, and some calls are not cut.
    let usual = usual_answer_time(&world).await;
    let up_to = usual.max(Duration::from_millis(2));
    let sessions_before = database_sessions(&world.pg).await;
    let started = Instant::now();
    let load = Load::start(
        || world.agent(AGENT, USER),
        LoadSpec {
            clients: CLIENTS,
            refund_every: 10,
            cancel: Cancel::Randomly { up_to },
            pause_after_error: PAUSE,
        },
    )
    .await;
    while load.cancelled() < sizes.cancellations && started.elapsed() < sizes.cancellations_within {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut observations = load.stop().await;
    let ran_for = started.elapsed();
    let new_connections = database_sessions(&world.pg).await - sessions_before;
    let settled = no_transaction_left_open(&world.pg, SETTLE).await;

    // Retry calls cut short with their own call ids: one whose write committed is replayed as committed.
    let committed = committed_calls(&world).await;
    let agent = world.agent(AGENT, USER);
    let cut: Vec<Observation> = observations
        .iter()
        .filter(|o| o.seen.is_cancelled())
        .take(RETRIED)
        .cloned()
        .collect();
    let mut committed_anyway = 0;
    for o in &cut {
        let retry = agent
            .authorize_with_call_id(&o.session_id, o.tool, &o.args, &o.call_id)
            .await
            .unwrap_or_else(|e| panic!("retry of {}: {e}", o.call_id));
        if let Some(decision_id) = committed.get(&o.call_id) {
            committed_anyway += 1;
            assert_eq!(
                &retry.decision_id, decision_id,
                "a retry replays the decision committed for the call cut short"
            );
        }
        let sent = Instant::now();
        observations.push(Observation {
            sent,
            answered: sent,
            seen: Seen::from_decision(retry),
            ..o.clone()
        });
    }

    let reconciled = reconcile(&world.pg, world.data_dir(), &observations).await;
    let cancelled = observations
        .iter()
        .filter(|o| o.seen.is_cancelled())
        .count();
    println!(
        "faults [{}] calls cut short at random (deadlines up to {}, the usual p90 answer; half as \
         grpc-timeout, half by dropping the call) by {} \
         clients for {:.1} s: requests sent {}, cut short {cancelled}, ALLOWs seen {}, unaudited ALLOWs {}, \
         answers {:?}; the broker opened {new_connections} database connections meanwhile; of {} cut short \
         and retried, {committed_anyway} had committed anyway and were replayed; \
         chain verified ({} events); no transaction open {} after the load stopped",
        sizes.name,
        ms(up_to),
        CLIENTS,
        ran_for.as_secs_f64(),
        observations.len() - cut.len(),
        reconciled.allows_seen,
        reconciled.unaudited.len(),
        by_label(&observations),
        cut.len(),
        reconciled.chain_events,
        ms(settled),
    );
    assert_nothing_lost(&reconciled);
    assert!(
        cancelled >= sizes.cancellations / 10,
        "only {cancelled} calls cut short in {:?}",
        sizes.cancellations_within
    );
    // The writer survived: the state made before is intact and a new call is decided and recorded.
    preserved.check(&world).await;
    let session = crate::load::open_session(&agent).await;
    let after = agent
        .authorize(
            &session,
            "web.search",
            &serde_json::json!({"query": "after"}),
        )
        .await
        .unwrap();
    assert!(after.is_allowed(), "{after}");
}
