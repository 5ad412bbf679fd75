//! The broker is SIGKILLed under load, again and again, and restarted on the same port and database: no
//! shutdown, connections cut mid-transaction. Zero unaudited ALLOWs, the chain verifies, the approvals and
//! the kill switch made before are intact, no transaction is left open.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::database_faults::{SETTLE, WARM_UP};
use crate::load::{by_label, ms, quantile, Load, LoadSpec, AGENT, USER};
use crate::mode;
use crate::preserved::Preserved;
use crate::reconcile::{assert_nothing_lost, no_transaction_left_open, reconcile};
use crate::world::{World, WorldOptions};

/// How long the clients may wait for an ALLOW from a restarted broker before the test gives up (a
/// broker start on a loaded machine: migrations, policies, kill switches read).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkilled_under_load() {
    let sizes = mode::sizes();
    let mut world = World::start(WorldOptions::default()).await;
    let preserved = Preserved::create(&world).await;
    let load = Load::start(|| world.agent(AGENT, USER), LoadSpec::steady(sizes.clients)).await;
    assert!(load
        .first_allow_after(Instant::now(), RECOVERY_DEADLINE)
        .await
        .is_some());
    tokio::time::sleep(WARM_UP).await;

    let mut restarts = Vec::with_capacity(sizes.sigkill_rounds);
    let mut recoveries = Vec::with_capacity(sizes.sigkill_rounds);
    for round in 0..sizes.sigkill_rounds {
        // At a random moment, so the kill lands anywhere in a call or a commit.
        let pause = Duration::from_millis(rand::thread_rng().gen_range(200..1000));
        tokio::time::sleep(pause).await;
        let killed = Instant::now();
        world.broker.sigkill().await;
        world.broker.restart().await;
        restarts.push(killed.elapsed());
        let first = load
            .first_allow_after(killed, RECOVERY_DEADLINE)
            .await
            .unwrap_or_else(|| panic!("no ALLOW within {RECOVERY_DEADLINE:?} of kill {round}"));
        recoveries.push(first);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observations = load.stop().await;

    let reconciled = reconcile(&world.pg, world.data_dir(), &observations).await;
    let settled = no_transaction_left_open(&world.pg, SETTLE).await;
    println!(
        "faults [{}] broker SIGKILLed {} times under {} clients: requests sent {}, ALLOWs seen {}, \
         unaudited ALLOWs {}, answers {:?}; kill -> serving again p50 {} max {}; kill -> first ALLOW \
         p50 {} max {}; chain verified ({} events); no transaction open {} after the load stopped",
        sizes.name,
        sizes.sigkill_rounds,
        sizes.clients,
        observations.len(),
        reconciled.allows_seen,
        reconciled.unaudited.len(),
        by_label(&observations),
        ms(quantile(&mut restarts, 0.5)),
        ms(quantile(&mut restarts, 1.0)),
        ms(quantile(&mut recoveries, 0.5)),
        ms(quantile(&mut recoveries, 1.0)),
        reconciled.chain_events,
        ms(settled),
    );
    assert_nothing_lost(&reconciled);
    preserved.check(&world).await;
}
