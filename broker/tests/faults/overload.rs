//! Overload at several times capacity (`limits.max_in_flight`): the excess is shed at once with
//! RESOURCE_EXHAUSTED, the calls admitted keep their latency (p50/p99 printed beside an unloaded run and
//! one at capacity), every ALLOW is audited, and the broker's memory stays bounded (VmHWM).

use std::time::{Duration, Instant};

use broker_sdk::Code;

use crate::broker_process::cpu_time;
use crate::load::{by_label, ms, quantile, Load, LoadSpec, Observation, Seen, AGENT, USER};
use crate::mode;
use crate::reconcile::{assert_nothing_lost, reconcile};
use crate::world::{World, WorldOptions};

/// The broker's capacity in this test: calls in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Offered load: this many times capacity, each client calling back to back.
const OVERLOAD_FACTOR: usize = 8;
/// No call, shed or not, may hang: a shed call is answered without waiting for anything.
const NO_HANG: Duration = Duration::from_secs(10);
/// The broker's peak resident memory, far above what it needs: catches unbounded growth only.
const MEMORY_BOUND_KIB: u64 = 1024 * 1024;

/// Runs `clients` clients for `period`; returns what they saw.
async fn run(world: &World, clients: usize, period: Duration) -> Vec<Observation> {
    let load = Load::start(
        || world.agent(AGENT, USER),
        LoadSpec {
            clients,
            refund_every: 0,
            cancel: crate::load::Cancel::Never,
            // A shed client backs off a little, as a polite one would; it still offers far more than
            // capacity.
            pause_after_error: Duration::from_millis(20),
        },
    )
    .await;
    tokio::time::sleep(period).await;
    load.stop().await
}

struct Latencies {
    admitted: usize,
    p50: Duration,
    p99: Duration,
}

fn admitted(observations: &[Observation]) -> Latencies {
    let mut l: Vec<Duration> = observations
        .iter()
        .filter(|o| !matches!(o.seen, Seen::Failed { .. } | Seen::Dropped))
        .map(Observation::latency)
        .collect();
    Latencies {
        admitted: l.len(),
        p50: quantile(&mut l, 0.5),
        p99: quantile(&mut l, 0.99),
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} decided, p50 {} p99 {}",
            self.admitted,
            ms(self.p50),
            ms(self.p99)
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_and_admitted_calls_keep_their_latency() {
    let sizes = mode::sizes();
    let world = World::start(WorldOptions {
        max_in_flight: Some(MAX_IN_FLIGHT),
        ..WorldOptions::default()
    })
    .await;
    let baseline_for = Duration::from_secs(2);
    let unloaded = run(&world, 1, baseline_for).await;
    let at_capacity = run(&world, MAX_IN_FLIGHT, baseline_for).await;
    let rss_before = world.broker.memory_kib("VmRSS");

    let started = Instant::now();
    let (broker_cpu, suite_cpu) = (world.broker.cpu_time(), cpu_time(std::process::id()));
    let overloaded = run(&world, MAX_IN_FLIGHT * OVERLOAD_FACTOR, sizes.overload_for).await;
    let offered_for = started.elapsed();
    let broker_cpu = world.broker.cpu_time() - broker_cpu;
    let suite_cpu = cpu_time(std::process::id()) - suite_cpu;
    let peak = world.broker.memory_kib("VmHWM");
    let rss_after = world.broker.memory_kib("VmRSS");

    let mut shed: Vec<Duration> = overloaded
        .iter()
        .filter(|o| {
            matches!(
                o.seen,
                Seen::Failed {
                    code: Code::ResourceExhausted,
                    ..
                }
            )
        })
        .map(Observation::latency)
        .collect();
    // Admitted calls the machine could not finish within the audit bound are UNAVAILABLE: fail closed.
    let other_errors: Vec<&Observation> = overloaded
        .iter()
        .filter(|o| {
            matches!(&o.seen, Seen::Failed { code, .. }
                if *code != Code::ResourceExhausted && *code != Code::Unavailable)
        })
        .collect();
    // Why admitted calls failed, from the broker's warnings.
    let commit_waits = world
        .broker
        .log_count("the audit write was not committed within");
    let read_waits = world.broker.log_count("no answer from the database within");
    let all: Vec<Observation> =
        [unloaded.clone(), at_capacity.clone(), overloaded.clone()].concat();
    let reconciled = reconcile(&world.pg, world.data_dir(), &all).await;
    let (shed_p50, shed_p99, shed_max) = (
        quantile(&mut shed, 0.5),
        quantile(&mut shed, 0.99),
        quantile(&mut shed, 1.0),
    );
    println!(
        "faults [{}] overload: max_in_flight {MAX_IN_FLIGHT}, {} clients back to back ({OVERLOAD_FACTOR}x) \
         for {:.1} s: requests sent {}, answers {:?}; shed {} (RESOURCE_EXHAUSTED) in p50 {} p99 {} max {}; \
         admitted: {} vs unloaded (1 client) {} and at capacity ({MAX_IN_FLIGHT} clients) {}; broker memory \
         VmRSS {} -> {} MiB, VmHWM {} MiB; admitted calls UNAVAILABLE waiting for the commit {commit_waits}, \
         for a read {read_waits}; CPU used during the overload: broker {:.2} s, clients {:.2} s; \
         unaudited ALLOWs {} of {}",
        sizes.name,
        MAX_IN_FLIGHT * OVERLOAD_FACTOR,
        offered_for.as_secs_f64(),
        overloaded.len(),
        by_label(&overloaded),
        shed.len(),
        ms(shed_p50),
        ms(shed_p99),
        ms(shed_max),
        admitted(&overloaded),
        admitted(&unloaded),
        admitted(&at_capacity),
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024,
        broker_cpu.as_secs_f64(),
        suite_cpu.as_secs_f64(),
        reconciled.unaudited.len(),
        reconciled.allows_seen,
    );

    assert_nothing_lost(&reconciled);
    assert!(!shed.is_empty(), "load beyond max_in_flight is shed");
    assert!(
        admitted(&overloaded).admitted > 0,
        "calls within capacity are still decided"
    );
    assert!(
        other_errors.is_empty(),
        "overload is answered RESOURCE_EXHAUSTED (or UNAVAILABLE), nothing else: {:?}",
        by_label(other_errors.iter().copied())
    );
    // Relative, so a slow machine slows both alike: shedding does not wait behind the audit path.
    let admitted_p50 = admitted(&overloaded).p50;
    assert!(
        shed_p50 < admitted_p50,
        "shed at once, not queued: shed p50 {shed_p50:?}, admitted p50 {admitted_p50:?}"
    );
    assert!(shed_max <= NO_HANG, "slowest shed call {shed_max:?}");
    assert!(
        peak <= MEMORY_BOUND_KIB,
        "broker memory bounded: VmHWM {peak} KiB"
    );
}
