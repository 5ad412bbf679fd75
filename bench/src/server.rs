//! The broker under test: the release `broker serve` binary as a child process on a port of its own, a
//! data directory of its own, and a config written for the benchmark; plus tokens from its dev issuer.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use broker::auth::{dev, AuthConfig, Role};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::procfs::Probe;

/// How long a broker may take to report SERVING (10,000 policies are validated first).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The config every benchmarked broker runs with: defaults, except a budget large enough for a load
/// test, no auto-quarantine (the load is denied on purpose; the default rule would stop a session
/// after 10 denials within a minute, and every later call would be a KILL_SWITCH denial), and the
/// Postgres test server's superuser accepted (the start-up privilege check only; the decision path is
/// the same under a least-privilege role).
const CONFIG: &str = "\
# Written by broker-bench.
[store]
allow_privileged_role = true

[session]
max_tool_calls = 1000000000

[kill_switch]
quarantine = []
";

/// The budget sessions of the load ask for (the config's maximum).
pub const SESSION_BUDGET: u32 = 1_000_000_000;

/// The `broker` binary beside this executable (both are built by one `cargo build --release`).
pub fn broker_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding this executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("`{}` has no parent directory", me.display()))?;
    let broker = dir.join("broker");
    if !broker.is_file() {
        bail!(
            "no broker binary at `{}`: build both with `cargo build --release -p broker -p broker-bench`",
            broker.display()
        );
    }
    Ok(broker)
}

/// What one broker process serves.
pub struct Serve<'a> {
    pub binary: &'a Path,
    pub data_dir: &'a Path,
    /// `None`: the embedded default, SQLite in the data dir.
    pub database_url: Option<&'a str>,
    pub policies: &'a Path,
    /// A command the broker runs under (e.g. `valgrind --tool=callgrind ...`), empty for none.
    pub wrapper: &'a [String],
}

/// A running broker; killed when dropped.
pub struct BrokerProcess {
    child: tokio::process::Child,
    pub endpoint: String,
    pub pid: u32,
    log: PathBuf,
}

impl BrokerProcess {
    /// Starts `broker serve` and waits until its health check says SERVING.
    pub async fn start(serve: &Serve<'_>, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(serve.data_dir)
            .with_context(|| format!("creating `{}`", serve.data_dir.display()))?;
        let config = serve.data_dir.join("broker-bench.toml");
        std::fs::write(&config, CONFIG)
            .with_context(|| format!("writing `{}`", config.display()))?;
        // A free port: bound, read, released; the broker binds it a moment later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?;
        let log = serve.data_dir.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating `{}`", log.display()))?;
        let mut cmd = match serve.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).arg(serve.binary);
                cmd
            }
            None => tokio::process::Command::new(serve.binary),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(serve.data_dir)
            .arg("--policies")
            .arg(serve.policies);
        if let Some(url) = serve.database_url {
            cmd.arg("--database-url").arg(url);
        }
        let child = cmd
            // Only the broker's config file and flags decide; a `BROKER_*` variable of the caller's
            // shell would silently change what is measured.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{}`", serve.binary.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the broker exited at once"))?;
        let mut process = Self {
            child,
            endpoint: format!("http://{addr}"),
            pid,
            log,
        };
        process.wait_serving().await?;
        Ok(process)
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("watching the broker")? {
                bail!(
                    "the broker exited ({status}) before serving:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(channel) = broker_sdk::endpoint(self.endpoint.clone())?.connect().await {
                let mut health = HealthClient::new(channel);
                if let Ok(r) = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    if r.get_ref().status == ServingStatus::Serving as i32 {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "the broker at {} did not report SERVING within {START_TIMEOUT:?}:\n{}",
                    self.endpoint,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new connection (HTTP/2 channel) to the broker.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        broker_sdk::endpoint(self.endpoint.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.endpoint))
    }

    pub fn probe(&self, ticks_per_second: u64) -> Probe {
        Probe::new(self.pid, ticks_per_second)
    }

    /// The end of the broker's log, to show why it failed.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .get(lines.len().saturating_sub(20)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// Warnings and errors the broker logged (its log level is `warn`).
    /// What the broker logged (warnings and errors: it runs with `RUST_LOG=warn`), each distinct line
    /// once, without its timestamp.
    pub fn logged_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut lines: Vec<String> = Vec::new();
        for line in text.lines() {
            let line = match line.split_once(' ') {
                Some((time, rest)) if time.starts_with(|c: char| c.is_ascii_digit()) => rest,
                _ => line,
            };
            let line = line.trim().to_owned();
            if !line.is_empty() && !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Mints tokens with the dev issuer key in a broker's data directory (created there if missing).
pub struct Tokens {
    secret: Vec<u8>,
    config: AuthConfig,
}

impl Tokens {
    pub fn new(data_dir: &Path) -> anyhow::Result<Self> {
        let (secret, _) = dev::load_or_create_secret(data_dir)
            .with_context(|| format!("dev signing key in `{}`", data_dir.display()))?;
        Ok(Self {
            secret,
            config: AuthConfig::default(),
        })
    }

    pub fn mint(
        &self,
        subject: &str,
        role: Role,
        on_behalf_of: Option<&str>,
        tenant: Option<&str>,
        groups: &[&str],
    ) -> anyhow::Result<String> {
        let request = dev::TokenRequest {
            subject: subject.to_owned(),
            roles: vec![role],
            on_behalf_of: on_behalf_of.map(str::to_owned),
            tenant: tenant.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ttl: Duration::from_secs(6 * 3600),
            issuer: self.config.issuer.clone(),
            audience: self.config.audience.clone(),
        };
        dev::mint(&self.secret, &self.config, &request).context("minting a dev token")
    }
}
