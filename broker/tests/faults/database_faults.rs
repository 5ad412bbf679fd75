//! The database fails under load: stopped (fast), crashed (immediate), frozen (SIGSTOP), the audit table
//! locked by another session, INSERT on it revoked. Each: no ALLOW while it lasts, every call answered
//! within the audit bound plus a margin, the first ALLOW within 2 s of the database returning, and
//! afterwards nothing lost (every ALLOW audited, approvals and switches intact, chain whole, no
//! transaction left open).

use std::time::{Duration, Instant};

use crate::figures::{OutageFigures, Timeline};
use crate::load::{Load, LoadSpec, AGENT, USER};
use crate::mode;
use crate::postgres::StopMode;
use crate::preserved::Preserved;
use crate::reconcile::{assert_nothing_lost, no_transaction_left_open, reconcile};
use crate::world::{World, WorldOptions, BROKER_ROLE, COMMIT_TIMEOUT};

/// On top of the audit bound: scheduling on a loaded 2-core machine, and a call that read the session just
/// before the fault and then waits once more for the store.
const ANSWER_MARGIN: Duration = Duration::from_millis(1500);
/// The bound: the first ALLOW within 2 s of the database returning.
const RECOVERY_BOUND: Duration = Duration::from_secs(2);
/// How long the load runs before the fault.
pub const WARM_UP: Duration = Duration::from_secs(1);
/// Transactions left open after the load stopped must end within this: sooner than Postgres' own
/// `idle_in_transaction_session_timeout` the broker sets (5 s), so that is not what ends them.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long the load must wait for its first ALLOW after the fault, before the test gives up.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Fault {
    Stop(StopMode),
    Freeze,
    LockAuditTable,
    RevokeInsert,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::Stop(StopMode::Fast) => "postgres stopped (pg_ctl stop -m fast)",
            Fault::Stop(StopMode::Immediate) => "postgres crashed (pg_ctl stop -m immediate)",
            Fault::Freeze => "postgres frozen (SIGSTOP on the postmaster and every backend)",
            Fault::LockAuditTable => "audit_events locked (ACCESS EXCLUSIVE, another session)",
            Fault::RevokeInsert => "INSERT on audit_events revoked from the broker's role",
        }
    }
}

/// A fault in effect, and what lifting it needs.
enum Injected {
    Nothing,
    /// The session holding the lock, inside its transaction.
    Lock(sqlx::PgConnection),
}

async fn inject(world: &mut World, fault: Fault) -> Injected {
    match fault {
        Fault::Stop(mode) => world.pg.stop(mode).await,
        Fault::Freeze => world.pg.freeze().await,
        Fault::LockAuditTable => {
            let mut holder = world.superuser().await;
            sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
            sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
                .execute(&mut holder)
                .await
                .unwrap();
            return Injected::Lock(holder);
        }
        Fault::RevokeInsert => {
            let mut admin = world.superuser().await;
            sqlx::query(&format!("REVOKE INSERT ON audit_events FROM {BROKER_ROLE}"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }
    Injected::Nothing
}

async fn lift(world: &mut World, fault: Fault, injected: Injected) {
    match (fault, injected) {
        (Fault::Stop(_), _) => world.pg.start().await,
        (Fault::Freeze, _) => world.pg.thaw().await,
        (Fault::LockAuditTable, Injected::Lock(mut holder)) => {
            sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        }
        (Fault::LockAuditTable, Injected::Nothing) => panic!("no lock to release"),
        (Fault::RevokeInsert, _) => {
            let mut admin = world.superuser().await;
            sqlx::query(&format!("GRANT INSERT ON audit_events TO {BROKER_ROLE}"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }
}

async fn survive(fault: Fault) {
    let sizes = mode::sizes();
    let mut world = World::start(WorldOptions::default()).await;
    let preserved = Preserved::create(&world).await;
    let load = Load::start(|| world.agent(AGENT, USER), LoadSpec::steady(sizes.clients)).await;
    let warm = load
        .first_allow_after(Instant::now(), RECOVERY_DEADLINE)
        .await;
    assert!(warm.is_some(), "the load is allowed before the fault");
    // Steady traffic, so the fault strikes calls in flight.
    tokio::time::sleep(WARM_UP).await;

    let injecting = Instant::now();
    let injected = inject(&mut world, fault).await;
    let in_effect = Instant::now();
    tokio::time::sleep(sizes.outage).await;
    let lifting = Instant::now();
    lift(&mut world, fault, injected).await;
    let lifted = Instant::now();
    // Waits for recovery; the figure itself is computed from what the clients saw.
    let recovered = load.first_allow_after(lifted, RECOVERY_DEADLINE).await;
    // A little traffic after the recovery, then the books are closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observations = load.stop().await;

    let figures = OutageFigures::new(
        &observations,
        Timeline {
            injecting,
            injected: in_effect,
            lifting,
            lifted,
        },
    );
    let reconciled = reconcile(&world.pg, world.data_dir(), &observations).await;
    let settled = no_transaction_left_open(&world.pg, SETTLE).await;
    println!(
        "faults [{}] {} for {:?} under {} clients: {figures}; unaudited ALLOWs {}; chain verified ({} \
         events); no transaction open {} after the load stopped",
        sizes.name,
        fault.describe(),
        sizes.outage,
        sizes.clients,
        reconciled.unaudited.len(),
        reconciled.chain_events,
        crate::load::ms(settled),
    );

    assert_nothing_lost(&reconciled);
    assert_eq!(
        figures.allows_during, 0,
        "no ALLOW while the database is out"
    );
    assert!(
        figures.sent_during > 0,
        "the load kept asking during the outage"
    );
    assert!(
        figures.longest_during <= COMMIT_TIMEOUT + ANSWER_MARGIN,
        "every call answered within the audit bound ({COMMIT_TIMEOUT:?}) + {ANSWER_MARGIN:?}: longest {:?}",
        figures.longest_during
    );
    assert!(
        recovered.is_some(),
        "an ALLOW within {RECOVERY_DEADLINE:?} of the database returning"
    );
    let back = figures
        .back_to_first_allow
        .expect("an ALLOW after the database returned");
    assert!(
        back <= RECOVERY_BOUND,
        "first ALLOW within {RECOVERY_BOUND:?} of the database returning, took {back:?}"
    );
    preserved.check(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_fast() {
    survive(Fault::Stop(StopMode::Fast)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed() {
    survive(Fault::Stop(StopMode::Immediate)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frozen() {
    survive(Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_table_locked() {
    survive(Fault::LockAuditTable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_insert_revoked() {
    survive(Fault::RevokeInsert).await;
}
