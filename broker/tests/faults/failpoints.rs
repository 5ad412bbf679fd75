//! Fail points just before and just after the audit commit (`audit.before_commit`, `audit.after_commit`
//! in `store::writer`, feature `failpoints`), driven in process with `fail::cfg`: the client sees ALLOW
//! only if the commit happened. Before the commit: an error and no event. After it: the event is
//! committed, the client hears an error (never an ALLOW without a commit), and a retry replays it.
//!
//! The broker runs in this test's process (fail points are per process); nextest runs each test in a
//! process of its own, so no other test sees them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::auth::{dev, Role};
use broker::clock::SystemClock;
use broker::config::{Config, KillSwitchConfig};
use broker::store::StoreConfig;
use broker_sdk::{Client, Code};
use serde_json::json;

use crate::broker_process::policies_dir;
use crate::load::{by_label, Load, LoadSpec, Seen, AGENT, USER};
use crate::mode;
use crate::postgres::Postgres;
use crate::reconcile::{assert_nothing_lost, no_transaction_left_open, reconcile, Audit};
use crate::world::{self, BROKER_ROLE, CLIENT_TIMEOUT, DATABASE};

const BEFORE: &str = "audit.before_commit";
const AFTER: &str = "audit.after_commit";

struct InProcess {
    running: broker::Running,
    config: Config,
    pg: Postgres,
    _data_dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> InProcess {
        let pg = world::database().await;
        let data_dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_path_buf(),
            database_url: pg.url(BROKER_ROLE, DATABASE),
            policies: policies_dir(),
            store: StoreConfig {
                // Not a test of timeouts: a slow machine must not turn a commit into an error.
                commit_timeout: Duration::from_secs(5),
                ..StoreConfig::default()
            },
            kill_switch: KillSwitchConfig {
                quarantine: Vec::new(),
                ..KillSwitchConfig::default()
            },
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = broker::start(config.clone(), Some(listener), Arc::new(SystemClock))
            .await
            .unwrap();
        InProcess {
            running,
            config,
            pg,
            _data_dir: data_dir,
        }
    }

    fn agent(&self) -> Client {
        let req = dev::TokenRequest {
            subject: AGENT.to_owned(),
            roles: vec![Role::Agent],
            on_behalf_of: Some(USER.to_owned()),
            tenant: None,
            groups: Vec::new(),
            ttl: Duration::from_secs(3600),
            issuer: self.config.auth.issuer.clone(),
            audience: self.config.auth.audience.clone(),
        };
        let secret = self.running.dev_secret.as_deref().unwrap();
        let token = dev::mint(secret, &self.config.auth, &req).unwrap();
        Client::connect_lazy(format!("http://{}", self.running.addr), token)
            .unwrap()
            .with_timeout(CLIENT_TIMEOUT)
    }
}

/// Decisions recorded for `call_id`: (decision_id, outcome).
async fn events_for(pg: &Postgres, call_id: &str) -> Vec<(String, String)> {
    let mut db = pg.superuser(DATABASE).await;
    sqlx::query_as(
        "SELECT decision_id, outcome FROM audit_events \
         WHERE call_id = $1 AND kind = 'TOOL_CALL_DECIDED'",
    )
    .bind(call_id)
    .fetch_all(&mut db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_only_if_the_commit_happened() {
    let sizes = mode::sizes();
    let broker = InProcess::start().await;
    let agent = broker.agent();
    let session = crate::load::open_session(&agent).await;
    let search = json!({"query": "fail points"});

    // Before the commit: an error, and nothing recorded.
    fail::cfg(BEFORE, "return").unwrap();
    let before = agent
        .authorize_with_call_id(&session, "web.search", &search, "call-before-commit")
        .await;
    fail::remove(BEFORE);
    let err = before.expect_err("no ALLOW when the commit did not happen");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(events_for(&broker.pg, "call-before-commit").await, vec![]);

    // After the commit: an error although the ALLOW is recorded; the retry replays the recorded decision.
    fail::cfg(AFTER, "return").unwrap();
    let after = agent
        .authorize_with_call_id(&session, "web.search", &search, "call-after-commit")
        .await;
    fail::remove(AFTER);
    let err = after.expect_err("the caller is told of a failure, not of an ALLOW");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let recorded = events_for(&broker.pg, "call-after-commit").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].1, "ALLOW");
    let retry = agent
        .authorize_with_call_id(&session, "web.search", &search, "call-after-commit")
        .await
        .unwrap();
    assert!(retry.is_allowed(), "{retry}");
    assert_eq!(
        retry.decision_id, recorded[0].0,
        "the committed decision replayed"
    );

    // Under load, both firing at random.
    fail::cfg(BEFORE, "20%return").unwrap();
    fail::cfg(AFTER, "20%return").unwrap();
    let load = Load::start(|| broker.agent(), LoadSpec::steady(sizes.clients)).await;
    tokio::time::sleep(sizes.failpoint_load_for).await;
    let observations = load.stop().await;
    fail::remove(BEFORE);
    fail::remove(AFTER);

    let settled = no_transaction_left_open(&broker.pg, Duration::from_secs(2)).await;
    let reconciled = reconcile(&broker.pg, broker._data_dir.path(), &observations).await;
    let audit = Audit::read(&broker.pg).await;
    let failed: Vec<_> = observations
        .iter()
        .filter(|o| matches!(o.seen, Seen::Failed { .. }))
        .collect();
    let mut committed_yet_failed = 0;
    for o in &failed {
        if !events_for(&broker.pg, &o.call_id).await.is_empty() {
            committed_yet_failed += 1;
        }
    }
    println!(
        "faults [{}] fail points before and after the audit commit, each firing on 20% of batches, {} \
         clients for {:?}: requests sent {}, ALLOWs seen {}, unaudited ALLOWs {}, answers {:?}; of {} \
         errors, {committed_yet_failed} were committed (after_commit); committed ALLOWs {}; chain \
         verified ({} events); no transaction open {:?} after the load stopped",
        sizes.name,
        sizes.clients,
        sizes.failpoint_load_for,
        observations.len(),
        reconciled.allows_seen,
        reconciled.unaudited.len(),
        by_label(&observations),
        failed.len(),
        audit.committed_allows(),
        reconciled.chain_events,
        settled,
    );
    assert_nothing_lost(&reconciled);
    assert!(reconciled.allows_seen > 0, "some batches committed");
    assert!(!failed.is_empty(), "the fail points fired");
    assert!(
        failed.iter().all(|o| o.seen
            == Seen::Failed {
                code: Code::Unavailable,
                reason: Some("AUDIT_UNAVAILABLE".into())
            }),
        "a failed commit is UNAVAILABLE: {:?}",
        by_label(failed.iter().copied())
    );
    // With the fail points gone, the writer commits again.
    let started = Instant::now();
    let d = agent
        .authorize(&session, "web.search", &search)
        .await
        .unwrap();
    assert!(d.is_allowed(), "{d} after {:?}", started.elapsed());
    broker.running.shutdown().await.unwrap();
}
