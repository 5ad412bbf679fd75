//! Reconciliation against the database, after the fault: every ALLOW a client saw has a committed audit
//! event, every approval a client was told about exists, the chain verifies (`broker audit verify`), and no
//! transaction is left open.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::load::{Observation, Seen};
use crate::postgres::Postgres;
use crate::world::DATABASE;

/// What the database holds, read as a superuser.
pub struct Audit {
    /// `decision_id` -> `call_id` of every committed ALLOW.
    allows: HashMap<String, String>,
    approvals: HashSet<String>,
}

/// The outcome of [`reconcile`].
#[derive(Debug)]
pub struct Reconciled {
    pub allows_seen: usize,
    /// ALLOWs a client saw without a committed ALLOW event for the same decision and call (must be 0).
    pub unaudited: Vec<String>,
    /// PENDING_APPROVAL answers whose approval is not in the database (must be 0).
    pub lost_approvals: Vec<String>,
    /// Events `broker audit verify` walked.
    pub chain_events: u64,
}

impl Audit {
    pub async fn read(pg: &Postgres) -> Audit {
        let mut db = pg.superuser(DATABASE).await;
        let allows: Vec<(String, String)> = sqlx::query_as(
            "SELECT decision_id, call_id FROM audit_events \
             WHERE kind = 'TOOL_CALL_DECIDED' AND outcome = 'ALLOW'",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        let approvals: Vec<(String,)> = sqlx::query_as("SELECT id FROM approvals")
            .fetch_all(&mut db)
            .await
            .unwrap();
        Audit {
            allows: allows.into_iter().collect(),
            approvals: approvals.into_iter().map(|(id,)| id).collect(),
        }
    }

    /// Whether an ALLOW for this decision and call is committed.
    pub fn has_allow(&self, decision_id: &str, call_id: &str) -> bool {
        self.allows.get(decision_id).map(String::as_str) == Some(call_id)
    }

    pub fn committed_allows(&self) -> usize {
        self.allows.len()
    }
}

/// Checks every observation against the database and walks the chain.
/// `data_dir` is the brokers' data directory: its signed checkpoints are checked against the chain too.
pub async fn reconcile(
    pg: &Postgres,
    data_dir: &std::path::Path,
    observations: &[Observation],
) -> Reconciled {
    let audit = Audit::read(pg).await;
    let mut reconciled = Reconciled {
        allows_seen: 0,
        unaudited: Vec::new(),
        lost_approvals: Vec::new(),
        chain_events: verify_chain(pg, data_dir).await,
    };
    for o in observations {
        match &o.seen {
            Seen::Allow { decision_id } => {
                reconciled.allows_seen += 1;
                if !audit.has_allow(decision_id, &o.call_id) {
                    reconciled
                        .unaudited
                        .push(format!("{decision_id} ({})", o.call_id));
                }
            }
            Seen::Pending { approval_id, .. } if !audit.approvals.contains(approval_id) => {
                reconciled.lost_approvals.push(approval_id.clone());
            }
            _ => {}
        }
    }
    reconciled
}

/// Asserts the guarantees of a reconciliation.
pub fn assert_nothing_lost(r: &Reconciled) {
    assert!(
        r.unaudited.is_empty(),
        "{} ALLOWs without a committed audit event: {:?}",
        r.unaudited.len(),
        r.unaudited
    );
    assert!(
        r.lost_approvals.is_empty(),
        "approvals announced but not stored: {:?}",
        r.lost_approvals
    );
}

/// Runs `broker audit verify` against the database; panics unless the chain is whole. Returns how many
/// events it verified.
pub async fn verify_chain(pg: &Postgres, data_dir: &std::path::Path) -> u64 {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(crate::broker_process::broker_bin())
            .arg("--database-url")
            .arg(pg.url("postgres", DATABASE))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["audit", "verify"])
            .env_remove("BROKER_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("`broker audit verify` within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`broker audit verify` failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "audit chain ok: N events verified"
    stdout
        .trim()
        .strip_prefix("audit chain ok: ")
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `broker audit verify` output: {stdout}"))
}

/// Connections of the broker's database that sit in an open transaction, other than ours.
async fn open_transactions(pg: &Postgres) -> Vec<String> {
    let mut db = pg.superuser(DATABASE).await;
    let rows: Vec<(i32, String, Option<String>)> = sqlx::query_as(
        "SELECT pid, state, left(query, 80) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() \
           AND (state LIKE 'idle in transaction%' \
                OR (state = 'active' AND xact_start < now() - interval '2 seconds'))",
    )
    .bind(DATABASE)
    .fetch_all(&mut db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(pid, state, query)| format!("pid {pid} {state}: {}", query.unwrap_or_default()))
        .collect()
}

/// Waits up to `within` for every open transaction of the broker's database to end; returns how long
/// that took, or panics naming those still open.
pub async fn no_transaction_left_open(pg: &Postgres, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let open = open_transactions(pg).await;
        if open.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "transactions still open {within:?} after the load stopped: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections ever opened to the broker's database (`pg_stat_database.sessions`).
pub async fn database_sessions(pg: &Postgres) -> i64 {
    let mut db = pg.superuser(DATABASE).await;
    sqlx::query_scalar("SELECT sessions FROM pg_stat_database WHERE datname = $1")
        .bind(DATABASE)
        .fetch_one(&mut db)
        .await
        .unwrap()
}
