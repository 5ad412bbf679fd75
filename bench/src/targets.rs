//! The targets, checked against what was measured: met, NOT met, or not measured in this run.

use std::time::Duration;

use broker::store::Backend;

use crate::inprocess::DecisionTiming;
use crate::scenario::Scenario;
use crate::stats::ms;

/// The in-flight count the targets are stated for.
pub const TARGET_IN_FLIGHT: usize = 64;
/// 150 MB (decimal megabytes).
pub const RSS_LIMIT_BYTES: u64 = 150_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Met,
    NotMet,
    NotMeasured,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT met",
            Status::NotMeasured => "not measured",
        }
    }

    fn of(met: bool) -> Self {
        if met {
            Status::Met
        } else {
            Status::NotMet
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub target: String,
    pub measured: String,
    pub status: Status,
}

fn row(target: impl Into<String>, measured: Option<(String, bool)>) -> Row {
    let (measured, status) = match measured {
        Some((m, met)) => (m, Status::of(met)),
        None => ("-".to_owned(), Status::NotMeasured),
    };
    Row {
        target: target.into(),
        measured,
        status,
    }
}

fn find<'a>(scenarios: &'a [Scenario], backend: Backend, label: &str) -> Option<&'a Scenario> {
    scenarios
        .iter()
        .find(|s| s.backend == backend && s.policies.label == label)
}

pub fn check(in_flight: usize, scenarios: &[Scenario], decisions: &[DecisionTiming]) -> Vec<Row> {
    let at = if in_flight == TARGET_IN_FLIGHT {
        format!("{in_flight} in flight")
    } else {
        format!("{in_flight} in flight (targets are stated for {TARGET_IN_FLIGHT})")
    };
    let pg = find(scenarios, Backend::Postgres, "example");
    let lite = find(scenarios, Backend::Sqlite, "example");
    let mut rows = vec![
        row(
            format!("Postgres, example policies, {at}: >= 15,000 decisions/s"),
            pg.map(|s| {
                let r = s.broker.per_second();
                (format!("{r:.0}/s"), r >= 15_000.0)
            }),
        ),
        row(
            format!("Postgres, example policies, {at}: >= 30% of the floor"),
            pg.map(|s| {
                let r = s.ratio();
                (
                    format!(
                        "{:.1}% ({:.0}/s of {:.0}/s)",
                        r * 100.0,
                        s.broker.per_second(),
                        s.floor.per_second()
                    ),
                    r >= 0.30,
                )
            }),
        ),
        row(
            format!("Postgres, example policies, {at}: p99 <= 10 ms"),
            pg.and_then(|s| s.broker.latencies.percentile(0.99))
                .map(|p| (format!("{} ms", ms(p)), p <= Duration::from_millis(10))),
        ),
        row(
            "Postgres, example policies, 1 in flight: p50 <= 0.6 ms",
            pg.and_then(|s| s.broker_one.latencies.percentile(0.5))
                .map(|p| (format!("{} ms", ms(p)), p <= Duration::from_micros(600))),
        ),
        row(
            format!("SQLite, example policies, {at}: >= 10,000 decisions/s"),
            lite.map(|s| {
                let r = s.broker.per_second();
                (format!("{r:.0}/s"), r >= 10_000.0)
            }),
        ),
    ];
    for backend in [Backend::Sqlite, Backend::Postgres] {
        rows.push(row(
            format!(
                "1,000 policies, {}, {at}: >= 10,000 decisions/s",
                backend.as_str()
            ),
            find(scenarios, backend, "1000").map(|s| {
                let r = s.broker.per_second();
                (format!("{r:.0}/s"), r >= 10_000.0)
            }),
        ));
    }
    let median = |n: usize| {
        decisions
            .iter()
            .find(|d| d.label == n.to_string())
            .and_then(|d| d.latencies.percentile(0.5))
    };
    rows.push(row(
        "10,000 policies, in process: median decision <= 2x that of 10 policies",
        median(10).zip(median(10_000)).map(|(ten, big)| {
            let x = big.as_secs_f64() / ten.as_secs_f64().max(1e-12);
            (
                format!("{} ms vs {} ms ({x:.1}x)", ms(big), ms(ten)),
                x <= 2.0,
            )
        }),
    ));
    let peak = scenarios
        .iter()
        .filter_map(|s| s.peak_rss().map(|r| (r, s)))
        .max_by_key(|(r, _)| *r);
    rows.push(row(
        "Broker peak RSS under load <= 150 MB",
        peak.map(|(r, s)| {
            (
                format!(
                    "{:.1} MB max ({}, {} policies; {} MB of it reached at start-up)",
                    r as f64 / 1e6,
                    s.backend.as_str(),
                    s.policies.label,
                    s.rss_at_start
                        .map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6))
                ),
                r <= RSS_LIMIT_BYTES,
            )
        }),
    ));
    rows
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::load::{Phase, Target};
    use crate::scenario::PolicySet;
    use crate::stats::Latencies;

    /// A phase of `count` answers in one second, all of latency `each`.
    fn phase(target: Target, count: u64, each: Duration, rss: u64) -> Phase {
        Phase {
            target,
            in_flight: 64,
            connections: 4,
            elapsed: Duration::from_secs(1),
            latencies: Latencies::new(vec![each; count as usize]),
            allow: count / 2,
            deny: count - count / 2,
            pending: 0,
            errors: BTreeMap::new(),
            broker_cores: Some(1.5),
            broker_peak_rss: Some(rss),
        }
    }

    fn scenario(backend: Backend, label: &str, rate: u64, floor: u64, rss: u64) -> Scenario {
        Scenario {
            backend,
            policies: PolicySet {
                label: label.to_owned(),
                dir: "x".into(),
                count: 1,
            },
            broker: phase(Target::Broker, rate, Duration::from_millis(4), rss),
            floor: phase(Target::Floor, floor, Duration::from_millis(1), rss),
            broker_one: phase(Target::Broker, 2000, Duration::from_micros(500), rss),
            floor_one: phase(Target::Floor, 7000, Duration::from_micros(140), rss),
            broker_log: Vec::new(),
            rss_at_start: Some(rss / 2),
            rss_at_end: Some(rss / 3),
        }
    }

    fn timing(label: &str, median: Duration) -> DecisionTiming {
        DecisionTiming {
            label: label.to_owned(),
            name: label.to_owned(),
            load: Duration::ZERO,
            latencies: Latencies::new(vec![median; 3]),
            allow: 1,
            deny: 2,
        }
    }

    fn statuses(rows: &[Row]) -> Vec<Status> {
        rows.iter().map(|r| r.status).collect()
    }

    #[test]
    fn each_target_is_judged_on_its_own_figure() {
        let scenarios = [
            scenario(Backend::Postgres, "example", 16_000, 50_000, 80_000_000),
            scenario(Backend::Sqlite, "example", 9_000, 50_000, 90_000_000),
            scenario(Backend::Sqlite, "1000", 12_000, 50_000, 151_000_000),
        ];
        let decisions = [
            timing("10", Duration::from_micros(10)),
            timing("10000", Duration::from_micros(25)),
        ];
        let rows = check(64, &scenarios, &decisions);
        use Status::*;
        assert_eq!(
            statuses(&rows),
            vec![
                Met,         // 16,000/s
                Met,         // 32% of the floor
                Met,         // p99 4 ms
                Met,         // p50 0.5 ms
                NotMet,      // SQLite 9,000/s
                Met,         // 1,000 policies on SQLite: 12,000/s
                NotMeasured, // 1,000 policies on Postgres: not run
                NotMet,      // 2.5x
                NotMet,      // 151 MB
            ]
        );
        assert!(
            rows[8].measured.contains("151.0 MB"),
            "{}",
            rows[8].measured
        );
        assert!(
            rows[1].measured.starts_with("32.0%"),
            "{}",
            rows[1].measured
        );
    }

    #[test]
    fn nothing_measured_is_never_met() {
        let rows = check(64, &[], &[]);
        assert!(rows.iter().all(|r| r.status == Status::NotMeasured));
    }

    #[test]
    fn another_in_flight_count_is_named() {
        let rows = check(16, &[], &[]);
        assert!(rows[0].target.contains("targets are stated for 64"));
    }
}
