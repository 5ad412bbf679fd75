//! The load generator: SDK clients, each with its own connection and session, asking about tool calls
//! back to back, and recording everything each one saw: the call id, the decision id and outcome, or the
//! error status, with when the call was sent and answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_sdk::{new_call_id, Client, Code, Decision, Outcome, SessionRequest};
use rand::Rng;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::world::CLIENT_TIMEOUT;

/// The agent the load runs as, for user [`USER`].
pub const AGENT: &str = "load-agent";
pub const USER: &str = "alice";
/// How long opening the load's sessions may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// What one call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Allow {
        decision_id: String,
    },
    Deny {
        decision_id: String,
        codes: Vec<String>,
    },
    Pending {
        decision_id: String,
        approval_id: String,
    },
    /// The broker could not decide (or the client's deadline passed): the gRPC code and the broker's reason.
    Failed {
        code: Code,
        reason: Option<String>,
    },
    /// The client dropped the call before any answer (a cancelled future).
    Dropped,
}

impl Seen {
    pub fn from_result(result: Result<Decision, broker_sdk::Error>) -> Seen {
        match result {
            Ok(d) => Seen::from_decision(d),
            Err(e) => Seen::Failed {
                code: e.code(),
                reason: e.reason().map(str::to_owned),
            },
        }
    }

    pub fn from_decision(d: Decision) -> Seen {
        match d.outcome {
            Outcome::Allow => Seen::Allow {
                decision_id: d.decision_id,
            },
            Outcome::Deny => Seen::Deny {
                codes: d.reasons.iter().map(|r| r.code.clone()).collect(),
                decision_id: d.decision_id,
            },
            Outcome::PendingApproval => Seen::Pending {
                approval_id: d.approval_id.clone().unwrap_or_default(),
                decision_id: d.decision_id,
            },
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Seen::Allow { .. })
    }

    /// Cut short by the client: dropped, past its deadline, or cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            Seen::Dropped
                | Seen::Failed {
                    code: Code::DeadlineExceeded | Code::Cancelled,
                    ..
                }
        )
    }

    /// A label for the figures: the outcome, or the error code and reason.
    pub fn label(&self) -> String {
        match self {
            Seen::Allow { .. } => "ALLOW".into(),
            Seen::Deny { codes, .. } => format!("DENY/{}", codes.join("+")),
            Seen::Pending { .. } => "PENDING_APPROVAL".into(),
            Seen::Failed { code, reason } => {
                format!("{code:?}/{}", reason.as_deref().unwrap_or("-"))
            }
            Seen::Dropped => "dropped by the client".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observation {
    pub session_id: String,
    pub call_id: String,
    pub tool: &'static str,
    pub args: serde_json::Value,
    pub sent: Instant,
    pub answered: Instant,
    pub seen: Seen,
}

impl Observation {
    pub fn latency(&self) -> Duration {
        self.answered - self.sent
    }
}

/// How clients give up on calls.
#[derive(Debug, Clone, Copy)]
pub enum Cancel {
    Never,
    /// Each call gets a random deadline up to this: half of them as the SDK's deadline (sent as
    /// `grpc-timeout`), half by dropping the call's future (the client resets the stream).
    Randomly {
        up_to: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub clients: usize,
    /// Every n-th call of a client is a refund above 1000, which asks for approval (0: never).
    pub refund_every: u32,
    pub cancel: Cancel,
    /// A client that got an error (or cut a call short) waits this long before its next call: a broker
    /// that is down answers at once, and without a pause the clients would only spin.
    pub pause_after_error: Duration,
}

impl LoadSpec {
    /// The steady load of the database and broker faults.
    pub fn steady(clients: usize) -> LoadSpec {
        LoadSpec {
            clients,
            refund_every: 10,
            cancel: Cancel::Never,
            pause_after_error: Duration::from_millis(20),
        }
    }
}

pub struct Load {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<Vec<Observation>>>,
    /// When the latest ALLOW was answered.
    last_allow: Arc<Mutex<Option<Instant>>>,
    cancelled: Arc<AtomicUsize>,
}

impl Load {
    /// Makes `spec.clients` clients with `client` (agent [`AGENT`] for [`USER`]), opens one session per
    /// client (before any fault), then starts them all.
    pub async fn start(client: impl Fn() -> Client, spec: LoadSpec) -> Load {
        let (stop, stopped) = watch::channel(false);
        let last_allow = Arc::new(Mutex::new(None));
        let cancelled = Arc::new(AtomicUsize::new(0));
        // Every session first, so no client's traffic is in the way of another's opening.
        let mut clients = Vec::with_capacity(spec.clients);
        for _ in 0..spec.clients {
            let client = client();
            let session_id = open_session(&client).await;
            clients.push((client, session_id));
        }
        let mut workers = Vec::with_capacity(spec.clients);
        for (client, session_id) in clients {
            let worker = Worker {
                client,
                session_id,
                spec: spec.clone(),
                stopped: stopped.clone(),
                last_allow: last_allow.clone(),
                cancelled: cancelled.clone(),
            };
            workers.push(tokio::spawn(worker.run()));
        }
        Load {
            stop,
            workers,
            last_allow,
            cancelled,
        }
    }

    /// Calls cut short by the client so far.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Waits (at most `deadline`) until some client is answered ALLOW after `after`; returns how long
    /// after `after` the latest ALLOW came when it was noticed (polled every 5 ms, so about the first).
    pub async fn first_allow_after(&self, after: Instant, deadline: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let last = *self.last_allow.lock().unwrap();
            if let Some(t) = last.filter(|t| *t >= after) {
                return Some(t - after);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every client (each finishes its call in flight, bounded by the client's deadline) and returns
    /// what they saw, in no particular order.
    pub async fn stop(self) -> Vec<Observation> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for worker in self.workers {
            // A call in flight ends within the client's deadline; this is a backstop.
            let seen = tokio::time::timeout(CLIENT_TIMEOUT * 3, worker)
                .await
                .expect("a client stops within its deadline");
            all.extend(seen.unwrap());
        }
        all
    }
}

/// Opens a session for the load, retrying while the broker warms up.
pub async fn open_session(client: &Client) -> String {
    match open_session_within(client, OPEN_DEADLINE).await {
        Ok(id) => id,
        Err(e) => panic!("no session within {OPEN_DEADLINE:?}: {e}"),
    }
}

/// Opens a session, retrying until `deadline`; the last error if none opened.
pub async fn open_session_within(
    client: &Client,
    deadline: Duration,
) -> Result<String, broker_sdk::Error> {
    let start = Instant::now();
    loop {
        let opened = client
            .open_session(
                SessionRequest::new(["web.search", "payments.refund"])
                    .max_tool_calls(100_000)
                    .ttl(Duration::from_secs(3 * 3600)),
            )
            .await;
        match opened {
            Ok(s) => return Ok(s.session_id),
            Err(e) if start.elapsed() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

struct Worker {
    client: Client,
    session_id: String,
    spec: LoadSpec,
    stopped: watch::Receiver<bool>,
    last_allow: Arc<Mutex<Option<Instant>>>,
    cancelled: Arc<AtomicUsize>,
}

impl Worker {
    async fn run(self) -> Vec<Observation> {
        let mut seen = Vec::new();
        let mut n: u32 = 0;
        while !*self.stopped.borrow() {
            n = n.wrapping_add(1);
            let refund = self.spec.refund_every > 0 && n.is_multiple_of(self.spec.refund_every);
            let (tool, args) = if refund {
                (
                    "payments.refund",
                    json!({"payment_id": format!("pay_{n}"), "amount": 5000, "currency": "EUR"}),
                )
            } else {
                ("web.search", json!({ "query": format!("fault {n}") }))
            };
            let call_id = new_call_id();
            let sent = Instant::now();
            let outcome = self.call(tool, &args, &call_id).await;
            let answered = Instant::now();
            if outcome.is_allow() {
                let mut last = self.last_allow.lock().unwrap();
                *last = Some(last.map_or(answered, |l| l.max(answered)));
            }
            if outcome.is_cancelled() {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            let failed = matches!(outcome, Seen::Failed { .. } | Seen::Dropped);
            seen.push(Observation {
                session_id: self.session_id.clone(),
                call_id,
                tool,
                args,
                sent,
                answered,
                seen: outcome,
            });
            if failed {
                tokio::time::sleep(self.spec.pause_after_error).await;
            }
        }
        seen
    }

    async fn call(&self, tool: &str, args: &serde_json::Value, call_id: &str) -> Seen {
        let session = self.session_id.as_str();
        match self.spec.cancel {
            Cancel::Never => Seen::from_result(
                self.client
                    .authorize_with_call_id(session, tool, args, call_id)
                    .await,
            ),
            Cancel::Randomly { up_to } => {
                let (deadline, by_deadline) = {
                    let mut rng = rand::thread_rng();
                    let micros = rng.gen_range(100..=up_to.as_micros().max(101));
                    (
                        Duration::from_micros(u64::try_from(micros).unwrap()),
                        rng.gen_bool(0.5),
                    )
                };
                if by_deadline {
                    let impatient = self.client.clone().with_timeout(deadline);
                    Seen::from_result(
                        impatient
                            .authorize_with_call_id(session, tool, args, call_id)
                            .await,
                    )
                } else {
                    match tokio::time::timeout(
                        deadline,
                        self.client
                            .authorize_with_call_id(session, tool, args, call_id),
                    )
                    .await
                    {
                        Ok(result) => Seen::from_result(result),
                        Err(_) => Seen::Dropped,
                    }
                }
            }
        }
    }
}

/// How many observations carry each label (outcome, or error code and reason).
pub fn by_label<'a>(
    observations: impl IntoIterator<Item = &'a Observation>,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in observations {
        *counts.entry(o.seen.label()).or_insert(0) += 1;
    }
    counts
}

/// The `q`-quantile (0..=1) of `latencies`, sorted in place; zero when empty.
pub fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort();
    let last = latencies.len() - 1;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((last as f64) * q).round() as usize;
    latencies[i.min(last)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
