//! A real `broker serve` process (the binary this package builds), configured by a TOML file, on a fixed
//! port so that clients reconnect to it after a restart. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a start (migrations, policies, kill switches read) may take on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The service whose health says the broker decides.
const AGENT_SERVICE: &str = "broker.v1.AgentService";

/// What the suite configures; everything else is the broker's production default.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub database_url: String,
    pub data_dir: PathBuf,
    /// `store.commit_timeout`: the audit bound.
    pub commit_timeout: Duration,
    /// `limits.max_in_flight`, when not the default.
    pub max_in_flight: Option<usize>,
    /// `store.queue_capacity`, when not the default.
    pub queue_capacity: Option<usize>,
}

pub struct BrokerProcess {
    child: Option<tokio::process::Child>,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

/// The broker binary: this package's (a debug build under `cargo nextest run`), or `FAULTS_BROKER_BIN`
/// (e.g. `target/release/broker`, for figures from an optimised build).
pub fn broker_bin() -> PathBuf {
    std::env::var_os("FAULTS_BROKER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_broker")),
        PathBuf::from,
    )
}

pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// The broker's config file. Auto-quarantine is off: the scenarios' own DENYs must not stop their sessions.
fn config_toml(settings: &BrokerSettings, port: u16) -> String {
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         database_url = \"{}\"\n\
         policies = \"{}\"\n\
         data_dir = \"{}\"\n\
         \n\
         [store]\n\
         commit_timeout = \"{}ms\"\n\
         {}\
         \n\
         [kill_switch]\n\
         quarantine = []\n",
        settings.database_url,
        policies_dir().display(),
        settings.data_dir.display(),
        settings.commit_timeout.as_millis(),
        settings
            .queue_capacity
            .map_or_else(String::new, |n| format!("queue_capacity = {n}\n")),
    );
    if let Some(n) = settings.max_in_flight {
        toml.push_str(&format!("\n[limits]\nmax_in_flight = {n}\n"));
    }
    toml
}

impl BrokerProcess {
    /// Writes the config, starts the broker and waits until its health says SERVING.
    pub async fn start(settings: &BrokerSettings) -> BrokerProcess {
        let port = crate::postgres::free_port();
        let config = settings.data_dir.join("broker.toml");
        std::fs::write(&config, config_toml(settings, port)).unwrap();
        let mut broker = BrokerProcess {
            child: None,
            port,
            config,
            log: settings.data_dir.join("broker.log"),
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "one broker process at a time");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = tokio::process::Command::new(broker_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env_remove("BROKER_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_serving().await;
    }

    /// Polls gRPC health until SERVING; fails (with the log) if the process exits or the deadline passes.
    async fn wait_serving(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("broker exited during start ({status}): {}", self.log_tail());
            }
            if self.serving().await {
                return;
            }
            assert!(
                start.elapsed() < START_DEADLINE,
                "broker not serving within {START_DEADLINE:?}: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn serving(&self) -> bool {
        let check = async {
            let channel = broker_sdk::endpoint(self.endpoint())
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut health = HealthClient::new(channel);
            let answer = health
                .check(HealthCheckRequest {
                    service: AGENT_SERVICE.to_owned(),
                })
                .await
                .ok()?;
            Some(answer.into_inner().status == ServingStatus::Serving as i32)
        };
        tokio::time::timeout(Duration::from_secs(2), check)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("a running broker")
    }

    /// SIGKILL: no shutdown, no flush, connections to clients and to Postgres cut mid-flight.
    pub async fn sigkill(&mut self) {
        let mut child = self.child.take().expect("a running broker");
        child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("a SIGKILLed broker is reaped within 10 s")
            .unwrap();
    }

    /// Starts the broker again on the same port, database and data dir.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// A line of `/proc/<pid>/status` in KiB (`VmHWM`: peak resident set; `VmRSS`: now).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// CPU time the broker used so far (user + system), from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// How many lines of the broker's log contain `needle` (its warnings say why calls failed).
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// CPU time (user + system) process `pid` used so far, from `/proc/<pid>/stat` (in clock ticks of 10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}
