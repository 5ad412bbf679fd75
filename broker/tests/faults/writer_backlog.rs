//! A backlog of abandoned writes on a slow database: impatient clients cut their calls short and call
//! again, so writes whose callers are gone pile up in the audit writer's queue (by design: a write survives
//! its caller). The writer must keep committing at the database's pace.
//!
//! Found by this suite: with every audit insert taking 25 ms (a trigger sleeping: a slow or distant
//! database), the writer used to commit nothing. A full batch (256 jobs) outlasted the transaction bound
//! (2.5 s) and rolled back whole, and the next batch was as large; the writer also queued for the pool
//! behind the storm of reads. It now quarters its batch after a timeout (growing back after full batches
//! that commit) and keeps its own connection (`store::writer::run`).

use std::time::{Duration, Instant};

use crate::load::{by_label, ms, Cancel, Load, LoadSpec, AGENT, USER};
use crate::reconcile::{assert_nothing_lost, database_sessions, reconcile};
use crate::world::{World, WorldOptions, DATABASE};

/// What each audit insert costs on the slowed database: a full batch (256) needs 6.4 s, far past the
/// writer's 2.5 s transaction bound; 40 inserts a second are possible.
const SLOW_INSERT: &str = "0.025";
const CLIENTS: usize = 32;
/// Clients cut calls short at random up to this and call again at once.
const IMPATIENCE: Duration = Duration::from_millis(50);
/// The backlog builds for this long, then the writer's progress is measured for [`WINDOW`].
const FILL: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(5);
/// Decisions the writer must commit in [`WINDOW`]: one per 125 ms, a fifth of what a database taking
/// [`SLOW_INSERT`] per insert can take, so only a writer that stalls falls short.
const MIN_PROGRESS: i64 = 40;
/// How long the backlog may take to drain once the storm ends, before the test stops waiting.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// The writer's queue: writes survive their callers, so after the storm the queue drains at the database's
/// pace (40 a second here) before a new write is reached. 1,024 drain in about 26 s, within the deadline;
/// the default 4,096 would take about 100 s.
const QUEUE: usize = 1024;

async fn committed_decisions(world: &World) -> i64 {
    let mut db = world.pg.superuser(DATABASE).await;
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE kind = 'TOOL_CALL_DECIDED'")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// Every audit insert now takes [`SLOW_INSERT`] seconds (a trigger sleeping), as on a slow database.
async fn slow_down_audit_inserts(world: &World) {
    let mut db = world.pg.superuser(DATABASE).await;
    for sql in [
        format!(
            "CREATE FUNCTION faults_slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep({SLOW_INSERT}); RETURN NEW; END $$"
        ),
        "CREATE TRIGGER faults_slow_insert BEFORE INSERT ON audit_events \
         FOR EACH ROW EXECUTE FUNCTION faults_slow_insert()"
            .to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut db).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_abandoned_writes_still_commits() {
    let world = World::start(WorldOptions {
        queue_capacity: Some(QUEUE),
        ..WorldOptions::default()
    })
    .await;
    let load = Load::start(
        || world.agent(AGENT, USER),
        LoadSpec {
            clients: CLIENTS,
            refund_every: 0,
            cancel: Cancel::Randomly { up_to: IMPATIENCE },
            pause_after_error: Duration::ZERO,
        },
    )
    .await;
    slow_down_audit_inserts(&world).await;
    tokio::time::sleep(FILL).await;
    let (from, sessions_from) = (
        committed_decisions(&world).await,
        database_sessions(&world.pg).await,
    );
    tokio::time::sleep(WINDOW).await;
    let (to, sessions_to) = (
        committed_decisions(&world).await,
        database_sessions(&world.pg).await,
    );
    let observations = load.stop().await;

    let reconciled = reconcile(&world.pg, world.data_dir(), &observations).await;
    println!(
        "faults [writer backlog] {CLIENTS} clients cutting calls short (up to {}) on a database taking \
         {SLOW_INSERT} s per audit insert: requests sent {}, answers {:?}; decisions committed in the \
         {WINDOW:?} after a {FILL:?} fill: {} (new database connections meanwhile: {}); unaudited ALLOWs {}",
        ms(IMPATIENCE),
        observations.len(),
        by_label(&observations),
        to - from,
        sessions_to - sessions_from,
        reconciled.unaudited.len(),
    );
    assert_nothing_lost(&reconciled);
    assert!(
        to - from >= MIN_PROGRESS,
        "the audit writer committed {} decisions in {WINDOW:?} while a backlog waited (at least \
         {MIN_PROGRESS} expected): every batch took longer than the transaction bound and was rolled back",
        to - from
    );
    // Once the storm is over, the broker decides again.
    let stopped = Instant::now();
    let agent = world.agent(AGENT, USER);
    let opened = crate::load::open_session_within(&agent, DRAIN_DEADLINE).await;
    println!(
        "faults [writer backlog] storm over -> a session opens again after {}",
        ms(stopped.elapsed())
    );
    assert!(
        opened.is_ok(),
        "no session within {DRAIN_DEADLINE:?}: {opened:?}"
    );
}
