//! One scenario: a fresh broker on one backend with one policy set, loaded in four phases: the broker
//! and the floor at `in_flight`, then both at one in flight.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use broker::store::testing::TestDb;
use broker::store::Backend;

use crate::load::{self, Phase, Rig, Target};
use crate::server::{BrokerProcess, Serve, Tokens};

/// A policy directory the benchmark serves.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// `example`, `1000`, `10000`.
    pub label: String,
    pub dir: std::path::PathBuf,
    pub count: usize,
}

impl PolicySet {
    /// `example (18 policies)`, `1000 generated`.
    pub fn name(&self) -> String {
        if self.label == self.count.to_string() {
            format!("{} generated", self.count)
        } else {
            format!("{} ({} policies)", self.label, self.count)
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    pub warmup: Duration,
    pub duration: Duration,
    pub in_flight: usize,
    pub connections: usize,
    pub ticks_per_second: u64,
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub backend: Backend,
    pub policies: PolicySet,
    pub broker: Phase,
    pub floor: Phase,
    pub broker_one: Phase,
    pub floor_one: Phase,
    /// Lines the broker logged at `warn` or above during the scenario.
    /// What the broker logged (distinct warning and error lines).
    pub broker_log: Vec<String>,
    /// The broker's peak RSS when it first reported SERVING (start-up: loading and validating the
    /// policies), before any load.
    pub rss_at_start: Option<u64>,
    /// The broker's RSS after the last phase.
    pub rss_at_end: Option<u64>,
}

impl Scenario {
    pub fn ratio(&self) -> f64 {
        ratio(&self.broker, &self.floor)
    }

    pub fn ratio_one(&self) -> f64 {
        ratio(&self.broker_one, &self.floor_one)
    }

    pub fn peak_rss(&self) -> Option<u64> {
        [&self.broker, &self.floor, &self.broker_one, &self.floor_one]
            .iter()
            .filter_map(|p| p.broker_peak_rss)
            .max()
    }
}

fn ratio(broker: &Phase, floor: &Phase) -> f64 {
    let f = floor.per_second();
    if f > 0.0 {
        broker.per_second() / f
    } else {
        0.0
    }
}

/// A database for one broker (or two sharing it): Postgres gets a fresh database, dropped with this;
/// SQLite is the embedded default in the data dir.
pub struct Database {
    _postgres: Option<TestDb>,
    pub url: Option<String>,
}

impl Database {
    pub async fn fresh(backend: Backend) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => Ok(Self {
                _postgres: None,
                url: None,
            }),
            Backend::Postgres => {
                let db = TestDb::new(Backend::Postgres).await.context(
                    "creating a Postgres database (is Postgres running on 127.0.0.1:5432? \
                     set BROKER_TEST_DATABASE_URL otherwise)",
                )?;
                let url = db.config().database_url.clone();
                Ok(Self {
                    _postgres: Some(db),
                    url: Some(url),
                })
            }
        }
    }
}

pub async fn run(
    binary: &Path,
    backend: Backend,
    policies: &PolicySet,
    plan: &LoadPlan,
) -> anyhow::Result<Scenario> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    let db = Database::fresh(backend).await?;
    let tokens = Tokens::new(data.path())?;
    let broker = BrokerProcess::start(
        &Serve {
            binary,
            data_dir: data.path(),
            database_url: db.url.as_deref(),
            policies: &policies.dir,
            wrapper: &[],
        },
        "broker",
    )
    .await?;
    let probe = broker.probe(plan.ticks_per_second);
    let rss_at_start = probe.peak_rss().ok();
    let result = phases(&broker, &tokens, plan).await;
    let rss_at_end = probe.rss().ok();
    let broker_log = broker.logged_lines();
    let failure_log = result.is_err().then(|| broker.log_tail());
    broker.stop().await;
    let (broker_phase, floor, broker_one, floor_one) = match result {
        Ok(p) => p,
        Err(e) => {
            return Err(e.context(format!(
                "broker log tail:\n{}",
                failure_log.unwrap_or_default()
            )))
        }
    };
    Ok(Scenario {
        backend,
        policies: policies.clone(),
        broker: broker_phase,
        floor,
        broker_one,
        floor_one,
        broker_log,
        rss_at_start,
        rss_at_end,
    })
}

async fn phases(
    broker: &BrokerProcess,
    tokens: &Tokens,
    plan: &LoadPlan,
) -> anyhow::Result<(Phase, Phase, Phase, Phase)> {
    let rig = Rig::new(broker, tokens, plan.connections, plan.in_flight).await?;
    let probe = broker.probe(plan.ticks_per_second);
    // Warm-up: connections, caches, the database's pages; discarded.
    load::run(&rig, Target::Broker, plan.in_flight, plan.warmup, &probe).await?;
    let many = load::run(&rig, Target::Broker, plan.in_flight, plan.duration, &probe).await?;
    let floor = load::run(&rig, Target::Floor, plan.in_flight, plan.duration, &probe).await?;
    let one = load::run(&rig, Target::Broker, 1, plan.duration, &probe).await?;
    let floor_one = load::run(&rig, Target::Floor, 1, plan.duration, &probe).await?;
    Ok((many, floor, one, floor_one))
}
