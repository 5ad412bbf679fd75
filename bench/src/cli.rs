//! Flags, and the plan they resolve to.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use broker::store::Backend;
use clap::{Parser, ValueEnum};

/// Load generator and benchmarks for the broker: starts release `broker serve` processes on SQLite and
/// Postgres, drives AuthorizeToolCall through the SDK against the health-check floor of the same server,
/// and prints decisions/s, latency percentiles, the broker's CPU and peak RSS, in-process decision time
/// against policy count, the retrieval batch, kill-switch propagation and approval release latency.
#[derive(Parser, Debug)]
#[command(name = "broker-bench", version)]
pub struct Cli {
    /// Measured time of each load phase, e.g. `10s` [default: 10s; 2s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up before each scenario's measured phases [default: 2s; 500ms with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Requests in flight (one worker each) in the main phases.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// HTTP/2 connections (one channel each) the workers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[arg(long, value_enum, default_value_t = BackendArg::Both)]
    pub backend: BackendArg,
    /// Policy sets served under load (in-process timing always covers 10, 1,000 and 10,000).
    #[arg(long, value_enum, default_value_t = PoliciesArg::All)]
    pub policies: PoliciesArg,
    /// Rounds of kill-switch propagation and of approval release [default: 20; 5 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// The example policy directory [default: the repository's `policies/`].
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// A short run, to check that everything works (figures are noisier).
    #[arg(long)]
    pub quick: bool,
    /// Only the in-process figures (decision time against policy count, retrieval batch): seconds, no
    /// servers or databases.
    #[arg(long)]
    pub in_process_only: bool,
    /// Only the instructions the broker runs per decision and per health check, counted under
    /// `valgrind --tool=callgrind` over this many calls each, one at a time (`--backend` chooses where):
    /// figures that a busy machine does not move. About a minute per backend for 2,000.
    #[arg(long, value_name = "CALLS")]
    pub instructions: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PoliciesArg {
    Example,
    #[value(name = "1000")]
    Thousand,
    #[value(name = "10000")]
    TenThousand,
    All,
}

/// A served policy set: the example catalogue, or a generated set of this many policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetSpec {
    Example,
    Generated(usize),
}

impl SetSpec {
    pub fn label(self) -> String {
        match self {
            SetSpec::Example => "example".to_owned(),
            SetSpec::Generated(n) => n.to_string(),
        }
    }
}

/// Sizes of the generated sets timed in process, and the one the others are compared with.
pub const IN_PROCESS_SIZES: [usize; 3] = [10, 1000, 10_000];

#[derive(Debug, Clone)]
pub struct Plan {
    pub duration: Duration,
    pub warmup: Duration,
    pub in_flight: usize,
    pub connections: usize,
    pub backends: Vec<Backend>,
    pub served: Vec<SetSpec>,
    pub rounds: usize,
    pub examples: PathBuf,
    /// Time spent deciding in process per policy set.
    pub in_process_budget: Duration,
    pub quick: bool,
    pub in_process_only: bool,
    pub instructions: Option<usize>,
}

impl Plan {
    pub fn from_cli(cli: Cli) -> anyhow::Result<Self> {
        let quick = cli.quick;
        let plan = Plan {
            duration: cli.duration.unwrap_or(if quick {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(10)
            }),
            warmup: cli.warmup.unwrap_or(if quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(2)
            }),
            in_flight: cli.in_flight,
            connections: cli.connections,
            backends: match cli.backend {
                BackendArg::Sqlite => vec![Backend::Sqlite],
                BackendArg::Postgres => vec![Backend::Postgres],
                BackendArg::Both => vec![Backend::Sqlite, Backend::Postgres],
            },
            served: match cli.policies {
                PoliciesArg::Example => vec![SetSpec::Example],
                PoliciesArg::Thousand => vec![SetSpec::Generated(1000)],
                PoliciesArg::TenThousand => vec![SetSpec::Generated(10_000)],
                PoliciesArg::All => vec![
                    SetSpec::Example,
                    SetSpec::Generated(1000),
                    SetSpec::Generated(10_000),
                ],
            },
            rounds: cli.rounds.unwrap_or(if quick { 5 } else { 20 }),
            examples: cli.examples.unwrap_or_else(|| {
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
            }),
            in_process_budget: if quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(2)
            },
            quick,
            in_process_only: cli.in_process_only,
            instructions: cli.instructions,
        };
        plan.validate()?;
        Ok(plan)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() {
            bail!("`--duration` must be positive");
        }
        if !(1..=4096).contains(&self.in_flight) {
            bail!("`--in-flight` must be between 1 and 4096 (the broker's max_in_flight)");
        }
        if !(1..=256).contains(&self.connections) {
            bail!("`--connections` must be between 1 and 256");
        }
        if self.rounds == 0 {
            bail!("`--rounds` must be positive");
        }
        if self.instructions == Some(0) {
            bail!("`--instructions` must be positive");
        }
        if self.instructions.is_some() && self.in_process_only {
            bail!("`--instructions` and `--in-process-only` each run alone: choose one");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let mut argv = vec!["broker-bench"];
        argv.extend_from_slice(args);
        Plan::from_cli(Cli::try_parse_from(argv)?)
    }

    #[test]
    fn defaults_cover_the_whole_matrix() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.duration, Duration::from_secs(10));
        assert_eq!(p.warmup, Duration::from_secs(2));
        assert_eq!((p.in_flight, p.connections, p.rounds), (64, 4, 20));
        assert_eq!(p.backends, vec![Backend::Sqlite, Backend::Postgres]);
        assert_eq!(
            p.served,
            vec![
                SetSpec::Example,
                SetSpec::Generated(1000),
                SetSpec::Generated(10_000)
            ]
        );
        assert!(p.examples.join("schema.cedarschema").is_file());
    }

    #[test]
    fn quick_shortens_what_was_not_given() {
        let p = plan(&["--quick", "--duration", "3s"]).unwrap();
        assert_eq!(p.duration, Duration::from_secs(3));
        assert_eq!(p.warmup, Duration::from_millis(500));
        assert_eq!(p.rounds, 5);
    }

    #[test]
    fn flags_choose_backend_and_policies() {
        let p = plan(&["--backend", "postgres", "--policies", "10000"]).unwrap();
        assert_eq!(p.backends, vec![Backend::Postgres]);
        assert_eq!(p.served, vec![SetSpec::Generated(10_000)]);
        let p = plan(&[
            "--policies",
            "1000",
            "--in-flight",
            "16",
            "--connections",
            "2",
        ])
        .unwrap();
        assert_eq!(p.served, vec![SetSpec::Generated(1000)]);
        assert_eq!((p.in_flight, p.connections), (16, 2));
    }

    #[test]
    fn in_process_only_is_a_flag() {
        assert!(!plan(&[]).unwrap().in_process_only);
        assert!(plan(&["--in-process-only"]).unwrap().in_process_only);
    }

    #[test]
    fn refuses_what_cannot_run() {
        assert!(plan(&["--in-flight", "0"]).is_err());
        assert!(plan(&["--connections", "0"]).is_err());
        assert!(plan(&["--duration", "0s"]).is_err());
        assert!(plan(&["--policies", "500"]).is_err());
        assert!(plan(&["--backend", "mysql"]).is_err());
    }
}
