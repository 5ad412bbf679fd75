//! The load driver: `in_flight` workers, each with one request outstanding at a time, spread over
//! `connections` HTTP/2 channels, calling either `AuthorizeToolCall` (the broker) or the gRPC health
//! check (the floor: the same client, channels and concurrency, with nothing behind the endpoint).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use broker::auth::Role;
use broker_sdk::{Client, Outcome, SessionRequest};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::mix::{self, Call};
use crate::procfs::{self, Probe};
use crate::server::{BrokerProcess, Tokens, SESSION_BUDGET};
use crate::stats::{per_second, Latencies};

/// Most sessions the load opens; workers beyond share them.
const MAX_SESSIONS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `AuthorizeToolCall`.
    Broker,
    /// `grpc.health.v1.Health/Check`.
    Floor,
}

/// One connection: a channel, and a client per agent on it (the agents' tokens differ).
struct Connection {
    agents: Vec<Client>,
    health: HealthClient<Channel>,
}

/// The clients and sessions of one broker under load.
pub struct Rig {
    connections: Vec<Connection>,
    /// (agent index, session id).
    sessions: Vec<(usize, String)>,
    calls: Arc<Vec<Call>>,
}

impl Rig {
    /// Opens `connections` channels and enough sessions for `max_in_flight` workers (at most
    /// [`MAX_SESSIONS`]), spread over [`mix::AGENTS`] agents.
    pub async fn new(
        broker: &BrokerProcess,
        tokens: &Tokens,
        connections: usize,
        max_in_flight: usize,
    ) -> anyhow::Result<Self> {
        let agent_tokens = (0..mix::AGENTS)
            .map(|a| {
                tokens.mint(
                    &mix::agent_name(a),
                    Role::Agent,
                    Some(mix::USER),
                    Some(mix::TENANT),
                    &[],
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let channel = broker.connect().await?;
            conns.push(Connection {
                agents: agent_tokens
                    .iter()
                    .map(|t| Client::from_channel(channel.clone(), t.clone()))
                    .collect(),
                health: HealthClient::new(channel),
            });
        }
        let first = conns.first().ok_or_else(|| anyhow!("no connection"))?;
        let mut sessions = Vec::new();
        for s in 0..max_in_flight.clamp(1, MAX_SESSIONS) {
            let agent = s % mix::AGENTS;
            let client = first
                .agents
                .get(agent)
                .ok_or_else(|| anyhow!("no client for agent {agent}"))?;
            let session = client
                .open_session(
                    SessionRequest::new(mix::SESSION_TOOLS)
                        .max_tool_calls(SESSION_BUDGET)
                        .purpose(mix::SESSION_PURPOSE),
                )
                .await
                .context("opening a session for the load")?;
            sessions.push((agent, session.session_id));
        }
        Ok(Self {
            connections: conns,
            sessions,
            calls: Arc::new(mix::pool()),
        })
    }
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct Phase {
    pub target: Target,
    pub in_flight: usize,
    pub connections: usize,
    /// From the first request sent to the last answer received.
    pub elapsed: Duration,
    /// Latencies of the answered calls (ALLOW, DENY, PENDING_APPROVAL; SERVING for the floor).
    pub latencies: Latencies,
    pub allow: u64,
    pub deny: u64,
    pub pending: u64,
    /// Calls that failed, by gRPC code and reason, with one message each.
    pub errors: BTreeMap<String, (u64, String)>,
    /// The broker's CPU over the phase, in cores; `None` if `/proc` could not be read.
    pub broker_cores: Option<f64>,
    /// The broker's peak RSS so far (bytes).
    pub broker_peak_rss: Option<u64>,
}

impl Phase {
    pub fn answered(&self) -> u64 {
        self.allow + self.deny + self.pending
    }

    pub fn per_second(&self) -> f64 {
        per_second(self.answered(), self.elapsed)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    allow: u64,
    deny: u64,
    pending: u64,
    errors: BTreeMap<String, (u64, String)>,
}

impl Tally {
    fn error(&mut self, key: String, message: String) {
        self.errors.entry(key).or_insert((0, message)).0 += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.allow += other.allow;
        self.deny += other.deny;
        self.pending += other.pending;
        for (k, (n, m)) in other.errors {
            self.errors.entry(k).or_insert((0, m)).0 += n;
        }
    }
}

async fn worker(
    target: Target,
    client: Client,
    mut health: HealthClient<Channel>,
    session: String,
    calls: Arc<Vec<Call>>,
    first_call: usize,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = first_call;
    while Instant::now() < until {
        let started = Instant::now();
        match target {
            Target::Broker => {
                let Some(call) = calls.get(i % calls.len().max(1)) else {
                    tally.error("no call".into(), "the call pool is empty".into());
                    break;
                };
                match client.authorize(&session, call.tool, &call.args).await {
                    Ok(d) => {
                        tally.latencies.push(started.elapsed());
                        match d.outcome {
                            Outcome::Allow => tally.allow += 1,
                            Outcome::Deny => tally.deny += 1,
                            Outcome::PendingApproval => tally.pending += 1,
                        }
                    }
                    Err(e) => tally.error(
                        format!("{:?} {}", e.code(), e.reason().unwrap_or("-")),
                        e.to_string(),
                    ),
                }
            }
            Target::Floor => {
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                match health.check(request).await {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                        tally.latencies.push(started.elapsed());
                        // The floor has no decision; count its answers as allowed calls.
                        tally.allow += 1;
                    }
                    Ok(r) => tally.error(
                        "health not SERVING".into(),
                        format!("status {}", r.get_ref().status),
                    ),
                    Err(s) => tally.error(format!("{:?}", s.code()), s.message().to_owned()),
                }
            }
        }
        i = i.wrapping_add(1);
    }
    tally
}

/// Runs `in_flight` workers against `target` for `duration`, and reads the broker's CPU and RSS.
pub async fn run(
    rig: &Rig,
    target: Target,
    in_flight: usize,
    duration: Duration,
    probe: &Probe,
) -> anyhow::Result<Phase> {
    let cpu_before = probe.cpu_time().ok();
    let start = Instant::now();
    let until = start + duration;
    let mut tasks = Vec::with_capacity(in_flight);
    for w in 0..in_flight.max(1) {
        let conn = rig
            .connections
            .get(w % rig.connections.len().max(1))
            .ok_or_else(|| anyhow!("no connection"))?;
        let (agent, session) = rig
            .sessions
            .get(w % rig.sessions.len().max(1))
            .ok_or_else(|| anyhow!("no session"))?;
        let client = conn
            .agents
            .get(*agent)
            .ok_or_else(|| anyhow!("no client for agent {agent}"))?
            .clone();
        tasks.push(tokio::spawn(worker(
            target,
            client,
            conn.health.clone(),
            session.clone(),
            Arc::clone(&rig.calls),
            // Workers start at different places in the mix.
            w.wrapping_mul(97),
            until,
        )));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.context("a load worker failed")?);
    }
    let elapsed = start.elapsed();
    let broker_cores = match (cpu_before, probe.cpu_time().ok()) {
        (Some(before), Some(after)) => Some(procfs::cores(after.saturating_sub(before), elapsed)),
        _ => None,
    };
    Ok(Phase {
        target,
        in_flight,
        // One worker uses one connection.
        connections: rig.connections.len().min(in_flight.max(1)),
        elapsed,
        latencies: Latencies::new(total.latencies),
        allow: total.allow,
        deny: total.deny,
        pending: total.pending,
        errors: total.errors,
        broker_cores,
        broker_peak_rss: probe.peak_rss().ok(),
    })
}

/// Makes `n` calls to `target` in all, `in_flight` workers each making its share one after another (worker
/// `w` on session `w`, the mix in order), and fails at the first call that gets no answer: for counting
/// what calls cost, not timing. One connection.
pub async fn counted(rig: &Rig, target: Target, n: usize, in_flight: usize) -> anyhow::Result<()> {
    let conn = rig
        .connections
        .first()
        .ok_or_else(|| anyhow!("no connection"))?;
    let workers = in_flight.clamp(1, n.max(1));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (agent, session) = rig
            .sessions
            .get(w % rig.sessions.len().max(1))
            .ok_or_else(|| anyhow!("no session"))?;
        let client = conn
            .agents
            .get(*agent)
            .ok_or_else(|| anyhow!("no client for agent {agent}"))?
            .clone();
        let mut health = conn.health.clone();
        let session = session.clone();
        let calls = Arc::clone(&rig.calls);
        // The first `n % workers` workers make one call more.
        let share = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                match target {
                    Target::Broker => {
                        let call = calls
                            .get((w + i * workers) % calls.len().max(1))
                            .ok_or_else(|| anyhow!("the call pool is empty"))?;
                        client
                            .authorize(&session, call.tool, &call.args)
                            .await
                            .with_context(|| format!("a call to {} got no decision", call.tool))?;
                    }
                    Target::Floor => {
                        let request = HealthCheckRequest {
                            service: String::new(),
                        };
                        health
                            .check(request)
                            .await
                            .context("a health check failed")?;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a counting worker failed")??;
    }
    Ok(())
}
