//! Durable state: sessions, remembered tool calls, kill switches, approvals and the hash-chained audit
//! trail, in SQLite or Postgres.
//!
//! The only module that knows sqlx. One implementation over sqlx's `Any` driver: SQL is written once with
//! `$N` placeholders, and the few statements that differ are chosen by [`Backend`]. One exception, for
//! speed: batches of plain decisions go through a connection of the audit writer's own, with another
//! driver: rusqlite on a thread ([`sqlite_writer`]), tokio-postgres pipelined ([`pg_writer`]). Times are
//! stored as microseconds ([`Micros`]) in BIGINT columns, JSON as TEXT.
//!
//! Reads go straight to the pool. Every write goes through the group-commit audit writer
//! ([`writer`]): it commits the write and its audit event in one transaction, in the hash chain, and
//! answers only after the commit.
//!
//! Kill switches and approvals reach every broker replica through the database: Postgres announces each
//! committed change on a channel ([`Store::kill_switch_listener`], [`Store::approval_listener`]); with
//! SQLite (one host) brokers poll ([`Store::active_kill_switches`], [`Store::approvals_changed_since`]).

mod bulk;
mod config;
mod decisions;
mod error;
mod grants;
mod hashes;
mod pg_tls;
mod pg_tunnel;
mod pg_writer;
mod schema;
mod selfcheck;
mod sql;
mod sqlite_writer;
mod taint;
pub mod testing;
mod writer;

#[cfg(test)]
mod taint_tests;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{mpsc, oneshot, watch};

pub use self::config::{redact_url, StoreConfig};
pub use self::error::{Error, ErrorKind};
pub use self::grants::postgres_grants;
pub use self::selfcheck::Finding;
use self::sql::db;
pub use self::sql::ChainHead;
use self::writer::{Job, WriterConfig};
use crate::clock::Micros;
use crate::domain::approval::{Approval, ApprovalStatus, Refusal, VoteRecord, MAX_COMMENT_LEN};
use crate::domain::audit::{
    AuditEvent, CallFacts, ChainBreak, ChainVerifier, EventBody, EventKind,
};
use crate::domain::decision::{Decision, Outcome};
use crate::domain::killswitch::{KillSwitch, Release};
use crate::domain::session::Session;
use crate::domain::tenancy::TenantScope;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The longest id-like value (ids, agent, tool, call id, user, tenant) the store accepts: these are
/// indexed, and an index entry has a size limit.
pub const MAX_KEY_BYTES: usize = 512;
/// The page size of [`Store::list_events`] when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// The largest page [`Store::list_events`] returns.
pub const MAX_PAGE: u32 = 1000;
/// How many events [`Store::verify_chain`] reads per query.
const VERIFY_PAGE: i64 = 1000;
/// Who [`Store::expire_kill_switches`] records as releasing an expired switch.
pub const EXPIRED_BY: &str = "broker";
/// The release reason [`Store::expire_kill_switches`] records.
pub const EXPIRED_REASON: &str = "expired";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A tool call committed under an idempotency key, and the decision it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub arguments_digest: String,
    pub decision: Decision,
}

/// A tool-call decision to commit, with what its audit event says beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub decision: Decision,
    pub call: CallFacts,
    /// Spend one tool call of `decision.session_id` (true for ALLOWs). When the session cannot spend (closed,
    /// expired, out of budget, gone), an ALLOW is overruled to a DENY saying why; a DENY stays as it is.
    pub spend_budget: bool,
    /// Store the idempotency key (`decision.session_id`, `call.agent`, `decision.call_id`): a later record
    /// with the same key is answered [`Recorded::Replayed`].
    pub remember: bool,
    /// The approval this decision asks for or uses, written in the same transaction.
    pub approval: Option<ApprovalWrite>,
    /// How many taint labels the session had when the decision was made. Labels only accumulate, so when
    /// an ALLOW's session has more at commit, the policies decided without some of them: nothing is
    /// written and the answer is [`Recorded::Stale`]. `None`: not checked.
    pub labels_seen: Option<usize>,
    /// The session's `tool_calls_used` the decision's policies read (`context.session.calls`): an ALLOW
    /// whose session has spent more by commit is answered [`Recorded::Stale`], as for labels, so a
    /// policy such as "one refund per session" holds across concurrent calls. `None`: not checked.
    pub calls_seen: Option<u32>,
    pub now: Micros,
}

/// What a [`DecisionRecord`] does to an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per decision, moved into an already boxed job; boxing would only burden callers"
)]
pub enum ApprovalWrite {
    /// With a PENDING_APPROVAL decision (whose `approval_id` is `approval.id`): stores the approval as
    /// PENDING, keeping `arguments` (the canonical unredacted arguments) while it can be used, and appends
    /// its `APPROVAL_REQUESTED` event after the decision's. `approval.status`, `votes`, `consumed_*` and
    /// `updated_at` are not taken from the caller: a new approval is pending, unused, changed `now`.
    Request {
        approval: Approval,
        arguments: String,
    },
    /// With the ALLOW of an approved call (whose `approval_id` is `approval_id`, and whose
    /// `call.arguments_digest` is `arguments_digest`): once the budget is spent, marks the approval used
    /// by this decision, if it is APPROVED, unused, unexpired at `now`, and for this session, tool and
    /// arguments digest; then appends `APPROVAL_CONSUMED`. When it cannot be used, the ALLOW is overruled
    /// to DENY `APPROVAL_USED` (and the tool call it spent is given back). When the budget overrules the
    /// ALLOW, or the decision is not an ALLOW, nothing is consumed.
    Consume {
        approval_id: String,
        arguments_digest: String,
    },
}

/// What [`Store::record_decision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The decision (possibly overruled to a DENY) and its event are committed.
    Committed(Decision),
    /// A call with this (session, agent, call_id) was already committed: this is its record. Nothing new was
    /// written and no budget was spent. The caller compares `arguments_digest` with its own.
    Replayed(RecordedCall),
    /// An ALLOW decided on fewer taint labels (`labels_seen`), or on fewer spent calls (`calls_seen`),
    /// than its session has now: nothing was written. The caller decides again on a fresh read.
    Stale,
}

/// Which approvals [`Store::list_approvals`] returns; every field set narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    pub tool: Option<String>,
    pub agent: Option<String>,
    /// Whose approvals: the domain sets it from the caller (`domain::tenancy`).
    pub tenant: TenantScope,
}

/// What [`Store::vote_on_approval`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per vote, returned once; boxing would only burden callers"
)]
pub enum VoteResult {
    /// The vote is committed; this is the approval after it (status possibly changed, votes included).
    Counted(Approval),
    /// The approver may not vote (or may not any more): nothing was written.
    Refused(Refusal),
    /// No approval has this id.
    NotFound,
}

/// Which events [`Store::list_events`] returns; every field set narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub session_id: Option<String>,
    pub agent: Option<String>,
    pub tool: Option<String>,
    pub outcome: Option<Outcome>,
    /// Events at or after this time.
    pub since: Option<Micros>,
    /// Events strictly before this time.
    pub until: Option<Micros>,
    /// Whose events: those in sessions of one tenant (`Only(None)`: in sessions without a tenant, and
    /// every event outside a known session of a tenant, such as kill switches); the domain sets it.
    pub tenant: TenantScope,
}

/// A page of events in `seq` order: those after `after_seq` (0 for the first page), at most `limit`
/// (0 means [`DEFAULT_PAGE`]; capped at [`MAX_PAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after_seq: i64,
    pub limit: u32,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            after_seq: 0,
            limit: DEFAULT_PAGE,
        }
    }
}

/// The outcome of [`Store::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub ok: bool,
    pub events_checked: u64,
    pub first_break: Option<ChainBreak>,
}

/// The store: a connection pool and the audit writer. Cheap to clone; the writer stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    options: AnyConnectOptions,
    jobs: mpsc::Sender<writer::Queued>,
    /// The chain head after each of this store's commits, as the writer publishes it.
    heads: watch::Receiver<Option<ChainHead>>,
    connect_timeout: Duration,
    commit_timeout: Duration,
    read_timeout: Duration,
    /// Postgres with TLS: where sqlx's connections go (see [`pg_tunnel`]).
    tunnel: Option<Arc<pg_tunnel::Tunnel>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .field("pool_size", &self.inner.pool.size())
            .field(
                "queued_writes",
                &(self.inner.jobs.max_capacity() - self.inner.jobs.capacity()),
            )
            .finish()
    }
}

/// Per-connection settings, applied to every pooled connection when it opens.
#[derive(Debug, Clone, Copy)]
struct ConnectionSettings {
    backend: Backend,
    busy_timeout_ms: u128,
    statement_timeout_ms: u128,
}

impl ConnectionSettings {
    async fn apply(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let statements = match self.backend {
            Backend::Sqlite => sqlite_settings(self.busy_timeout_ms),
            Backend::Postgres => postgres_settings(self.statement_timeout_ms),
        };
        for statement in statements {
            conn.execute(statement.as_str()).await?;
        }
        Ok(())
    }
}

/// Postgres's per-connection settings: for the pool's connections and the audit writer's own.
fn postgres_settings(statement_timeout_ms: u128) -> Vec<String> {
    vec![
        // Durable audit: a commit returns only once the WAL is flushed.
        "SET synchronous_commit = on".to_owned(),
        format!("SET statement_timeout = {statement_timeout_ms}"),
        // A broker frozen mid-transaction must not hold the chain lock for ever.
        format!(
            "SET idle_in_transaction_session_timeout = {}",
            statement_timeout_ms.saturating_mul(2)
        ),
    ]
}

/// SQLite's per-connection settings: for the pool's connections and the writer thread's.
fn sqlite_settings(busy_timeout_ms: u128) -> Vec<String> {
    vec![
        "PRAGMA synchronous = FULL".to_owned(),
        "PRAGMA foreign_keys = ON".to_owned(),
        format!("PRAGMA busy_timeout = {}", busy_timeout_ms),
        // Statement journals (every multi-row write inside the writer's transaction keeps one) in
        // memory, not in a temporary file: they were a tenth of the writer's time.
        "PRAGMA temp_store = MEMORY".to_owned(),
        // A checkpoint every 4,000 WAL pages (16 MiB) instead of 1,000: it runs inside the writer's
        // commit, and the pages every batch touches (index edges, session rows) are copied once
        // per checkpoint. Benchmark, SQLite, 64 in flight: broker/floor 7.3% -> 8.7% (4 runs each);
        // 10,000 pages did no better.
        "PRAGMA wal_autocheckpoint = 4000".to_owned(),
    ]
}

impl Store {
    /// Opens the pool (failing within about `connect_timeout` when the database is unreachable) and starts
    /// the audit writer. SQLite: WAL, `synchronous=FULL`, foreign keys on, busy timeout = `commit_timeout`.
    /// Postgres: `synchronous_commit=on` and a `statement_timeout` on every connection.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, Error> {
        cfg.validate()?;
        sqlx::any::install_default_drivers();
        let backend = cfg.backend()?;
        if backend == Backend::Sqlite {
            create_sqlite_file(&cfg.database_url)?;
        }
        // Postgres: TLS as the URL's `sslmode` asks, for every connection (see `pg_tls`).
        let routes = match backend {
            Backend::Postgres => Some(pg_tunnel::PgRoutes::new(
                &cfg.database_url,
                cfg.connect_timeout,
            )?),
            Backend::Sqlite => None,
        };
        let url = routes.as_ref().map_or(&cfg.database_url, |r| &r.sqlx_url);
        let options = AnyConnectOptions::from_str(url).map_err(|e| {
            Error::invalid(format!(
                "store.database_url cannot be used: {}",
                Error::from_sqlx(e).message()
            ))
        })?;
        let transaction_timeout = cfg.transaction_timeout();
        let settings = ConnectionSettings {
            backend,
            busy_timeout_ms: cfg.commit_timeout.as_millis(),
            statement_timeout_ms: transaction_timeout.as_millis(),
        };
        let connecting = AnyPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.connect_timeout)
            // A ping before each use: connections left idle in the pool across a database outage are dead,
            // and without it each would fail one read after the database is back. Not a round trip per
            // decision: the decision path reads sessions from its cache and writes on the writer's own
            // connection.
            .test_before_acquire(true)
            .after_connect(move |conn, _meta| Box::pin(settings.apply(conn)))
            .connect_with(options.clone());
        let pool = tokio::time::timeout(cfg.connect_timeout.saturating_mul(2), connecting)
            .await
            .map_err(|_| Error::unavailable("timed out connecting to the database"))?
            .map_err(db)?;
        if backend == Backend::Sqlite {
            // Persistent in the file; set once here rather than per connection, because switching the journal
            // mode needs an exclusive lock that the busy timeout does not wait for.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(db)?;
        }
        let (jobs, queue) = mpsc::channel(cfg.queue_capacity);
        let writer = WriterConfig {
            backend,
            max_batch: cfg.max_batch,
            transaction_timeout,
        };
        let own_connection = match backend {
            Backend::Sqlite => writer::OwnConnection::Sqlite(sqlite_writer::SqliteWriter::start(
                &config::sqlite_path(&cfg.database_url)?,
                &sqlite_settings(settings.busy_timeout_ms),
            )?),
            Backend::Postgres => {
                let routes = routes.as_ref().ok_or_else(|| {
                    Error::internal("postgres store without its connection routes")
                })?;
                writer::OwnConnection::Postgres(Box::new(pg_writer::PgWriter::new(
                    &routes.writer_url,
                    &routes.tls,
                    cfg.connect_timeout,
                    &postgres_settings(settings.statement_timeout_ms),
                )?))
            }
        };
        let (publish_heads, heads) = watch::channel(None);
        tokio::spawn(writer::run(
            pool.clone(),
            writer,
            queue,
            own_connection,
            publish_heads,
        ));
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                options,
                jobs,
                heads,
                connect_timeout: cfg.connect_timeout,
                commit_timeout: cfg.commit_timeout,
                read_timeout: cfg.connect_timeout.saturating_add(transaction_timeout),
                tunnel: routes.and_then(|r| r.tunnel),
            }),
        })
    }

    /// Applies the embedded migrations of this backend (forward-only; applied ones are never edited). Runs
    /// on a connection of its own, without the statement timeout, so a long migration is not cut short.
    /// When the schema is already current it only reads, so a role without DDL rights can call it.
    pub async fn migrate(&self) -> Result<(), Error> {
        if matches!(self.schema_is_current().await, Ok(true)) {
            return Ok(());
        }
        let mut conn = tokio::time::timeout(
            self.inner.connect_timeout,
            AnyConnection::connect_with(&self.inner.options),
        )
        .await
        .map_err(|_| Error::unavailable("timed out connecting to the database"))?
        .map_err(db)?;
        let migrator = match self.inner.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let result = migrator.run(&mut conn).await.map_err(Error::from_migrate);
        let _ = conn.close().await;
        result
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Succeeds when a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.bounded(async {
            let mut conn = self.inner.pool.acquire().await.map_err(db)?;
            conn.ping().await.map_err(db)
        })
        .await
    }

    /// Waits, at most `bound`, until every write queued before this call is answered (committed, or
    /// refused): at shutdown, so that the last checkpoint covers every write a call left behind.
    pub async fn flush(&self, bound: Duration) -> Result<(), Error> {
        let (done, flushed) = oneshot::channel();
        let flushing = async {
            self.inner
                .jobs
                .send(writer::Queued::Flush(done))
                .await
                .map_err(|_| Error::unavailable("the audit writer has stopped"))?;
            flushed
                .await
                .map_err(|_| Error::unavailable("the audit writer has stopped"))
        };
        tokio::time::timeout(bound, flushing).await.map_err(|_| {
            Error::timeout(format!(
                "the audit writer did not drain its queue within {} ms",
                bound.as_millis()
            ))
        })?
    }

    /// Closes the pool: later calls fail with `Unavailable`. For shutdown and tests.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    // -----------------------------------------------------------------------------------------------
    // reads

    pub async fn session(&self, id: &str) -> Result<Option<Session>, Error> {
        self.bounded(sql::fetch_session(&self.inner.pool, id)).await
    }

    pub async fn recorded_call(
        &self,
        session_id: &str,
        agent: &str,
        call_id: &str,
    ) -> Result<Option<RecordedCall>, Error> {
        self.bounded(sql::fetch_recorded_call(
            &self.inner.pool,
            session_id,
            agent,
            call_id,
        ))
        .await
    }

    /// The last event of the chain, or `None` when the trail is empty.
    pub async fn head(&self) -> Result<Option<ChainHead>, Error> {
        self.bounded(sql::chain_head(&self.inner.pool)).await
    }

    /// The chain head after this store's latest commit (`None` until it commits), updated as the writer
    /// commits: what the checkpointer signs. Heads other processes commit are seen only by [`Store::head`].
    pub fn committed_heads(&self) -> watch::Receiver<Option<ChainHead>> {
        self.inner.heads.clone()
    }

    /// Events matching `filter`, in `seq` order, one page at a time; the second value is the `after_seq` of
    /// the next page, or `None` on the last page.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        page: Page,
    ) -> Result<(Vec<AuditEvent>, Option<i64>), Error> {
        enum Arg<'a> {
            Int(i64),
            Text(&'a str),
        }
        let limit = match page.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut sql = format!(
            "SELECT {} FROM audit_events WHERE seq > $1",
            sql::EVENT_COLUMNS
        );
        let mut args = vec![Arg::Int(page.after_seq)];
        let conditions = [
            ("session_id =", filter.session_id.as_deref().map(Arg::Text)),
            ("agent =", filter.agent.as_deref().map(Arg::Text)),
            ("tool =", filter.tool.as_deref().map(Arg::Text)),
            ("outcome =", filter.outcome.map(|o| Arg::Text(o.as_str()))),
            ("time >=", filter.since.map(Arg::Int)),
            ("time <", filter.until.map(Arg::Int)),
        ];
        for (condition, arg) in conditions {
            if let Some(arg) = arg {
                args.push(arg);
                sql.push_str(&format!(" AND {condition} ${}", args.len()));
            }
        }
        match &filter.tenant {
            TenantScope::All => {}
            TenantScope::Only(Some(tenant)) => {
                args.push(Arg::Text(tenant));
                sql.push_str(&format!(
                    " AND session_id IN (SELECT id FROM sessions WHERE tenant = ${})",
                    args.len()
                ));
            }
            TenantScope::Only(None) => sql.push_str(
                " AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = audit_events.session_id \
                 AND s.tenant IS NOT NULL)",
            ),
        }
        args.push(Arg::Int(i64::from(limit) + 1));
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", args.len()));
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = match arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
            };
        }
        let rows = self
            .bounded(async { query.fetch_all(&self.inner.pool).await.map_err(db) })
            .await?;
        let mut events = rows
            .iter()
            .map(sql::event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        let next = if more {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok((events, next))
    }

    /// An approval with its votes, in time order.
    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, Error> {
        self.bounded(sql::fetch_approval(&self.inner.pool, id))
            .await
    }

    /// The canonical unredacted arguments an approval keeps while it can still be used (pending, or
    /// approved and neither consumed nor expired); `None` otherwise, or when the approval is unknown.
    pub async fn approval_arguments(&self, id: &str) -> Result<Option<String>, Error> {
        self.bounded(sql::fetch_approval_arguments(&self.inner.pool, id))
            .await
    }

    /// Approvals matching `filter`, newest request first, one page at a time. The page token is an
    /// approval's place in the request order (the `seq` of its `APPROVAL_REQUESTED` event): start with
    /// `page.after_seq = 0`; the second value is the `after_seq` of the next page, or `None` on the last.
    pub async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
        page: Page,
    ) -> Result<(Vec<Approval>, Option<i64>), Error> {
        let limit = match page.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut rows = self
            .bounded(sql::list_approvals(
                &self.inner.pool,
                filter,
                page.after_seq,
                limit.saturating_add(1),
            ))
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Ok((rows.into_iter().map(|(_, a)| a).collect(), next))
    }

    /// Approvals whose `updated_at` is after `since`, oldest change first: at most `limit` (0 means
    /// [`DEFAULT_PAGE`]; capped at [`MAX_PAGE`]), plus any changed at the same time as the last of those,
    /// so polling again with `since` = the last one's `updated_at` misses nothing written so far.
    ///
    /// `updated_at` is the `now` of the change, which commits a little later (within the commit timeout):
    /// a poller should let its `since` trail its clock by that much, or re-read the approvals it waits on.
    pub async fn approvals_changed_since(
        &self,
        since: Micros,
        limit: u32,
    ) -> Result<Vec<Approval>, Error> {
        let limit = match limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        self.bounded(sql::fetch_approvals_changed_since(
            &self.inner.pool,
            since,
            limit,
        ))
        .await
    }

    /// Every PENDING approval, oldest request first, including any past `expires_at` that
    /// [`Store::expire_approvals`] has not swept yet (see [`Approval::status_at`]).
    pub async fn pending_approvals(&self) -> Result<Vec<Approval>, Error> {
        self.bounded(sql::fetch_pending_approvals(&self.inner.pool))
            .await
    }

    pub async fn kill_switch(&self, id: &str) -> Result<Option<KillSwitch>, Error> {
        self.bounded(sql::fetch_kill_switch(&self.inner.pool, id))
            .await
    }

    /// The switches in force at `now`: not released, and not expired (`expires_at` absent or after `now`),
    /// whether or not [`Store::expire_kill_switches`] has run yet. Oldest first.
    pub async fn active_kill_switches(&self, now: Micros) -> Result<Vec<KillSwitch>, Error> {
        self.bounded(sql::fetch_active_kill_switches(&self.inner.pool, now))
            .await
    }

    /// Newest first (by `engaged_at`), at most `limit` (0 means [`DEFAULT_PAGE`]; capped at [`MAX_PAGE`]).
    /// Without `include_released`, only unreleased switches, including any past their `expires_at` that
    /// [`Store::expire_kill_switches`] has not released yet.
    pub async fn list_kill_switches(
        &self,
        include_released: bool,
        limit: u32,
    ) -> Result<Vec<KillSwitch>, Error> {
        let limit = match limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        self.bounded(sql::fetch_kill_switches(
            &self.inner.pool,
            include_released,
            limit,
        ))
        .await
    }

    /// Postgres: a listener that hears every committed change to the kill switches, made by any broker on
    /// this database. SQLite: `None` (brokers poll). Call this *before* reading the switches, so that no
    /// change falls between the read and the first [`KillSwitchListener::recv`].
    pub async fn kill_switch_listener(&self) -> Result<Option<KillSwitchListener>, Error> {
        self.listener(sql::KILL_SWITCH_CHANNEL, "kill switch").await
    }

    /// Postgres: a listener that hears every committed change to an approval (requested, voted on,
    /// approved, denied, expired, cancelled, consumed), made by any broker on this database; the payload
    /// is the approval id. SQLite: `None` (poll [`Store::approvals_changed_since`]). Create it before
    /// reading what it should keep current.
    pub async fn approval_listener(&self) -> Result<Option<ApprovalListener>, Error> {
        self.listener(sql::APPROVAL_CHANNEL, "approval").await
    }

    async fn listener(
        &self,
        channel: &'static str,
        what: &'static str,
    ) -> Result<Option<ChangeListener>, Error> {
        match self.inner.backend {
            Backend::Sqlite => Ok(None),
            Backend::Postgres => ChangeListener::connect(
                &self.inner.options,
                self.inner.tunnel.clone(),
                self.inner.connect_timeout,
                channel,
                what,
            )
            .await
            .map(Some),
        }
    }

    /// Reads every event in `seq` order, a page at a time, checking positions, links and hashes; stops at
    /// the first break. A row that cannot even be read as an event counts as a break at its `seq`.
    pub async fn verify_chain(&self) -> Result<ChainReport, Error> {
        let sql = format!(
            "SELECT {} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            sql::EVENT_COLUMNS
        );
        let mut verifier = ChainVerifier::default();
        let mut after = 0_i64;
        loop {
            let rows = self
                .bounded(async {
                    sqlx::query(&sql)
                        .bind(after)
                        .bind(VERIFY_PAGE)
                        .fetch_all(&self.inner.pool)
                        .await
                        .map_err(db)
                })
                .await?;
            if rows.is_empty() {
                return Ok(ChainReport {
                    ok: true,
                    events_checked: verifier.checked(),
                    first_break: None,
                });
            }
            for row in &rows {
                let (seq, event_id) = sql::event_position(row)?;
                let checked = sql::event_from_row(row)
                    .map_err(|e| ChainBreak {
                        seq,
                        event_id: event_id.clone(),
                        problem: format!("cannot be read (modified): {}", e.message()),
                    })
                    .and_then(|event| verifier.check(&event));
                if let Err(first_break) = checked {
                    return Ok(ChainReport {
                        ok: false,
                        events_checked: verifier.checked(),
                        first_break: Some(first_break),
                    });
                }
                after = seq;
            }
        }
    }

    // -----------------------------------------------------------------------------------------------
    // writes: each commits its audit event in the same transaction, placed in the hash chain

    /// Stores a new session and its `SESSION_OPENED` event. `Conflict` when the id (or the event id) exists.
    /// The session's `labels` are stored sorted and unique (as [`Store::session`] returns them); its
    /// `collections` as given.
    pub async fn open_session(
        &self,
        session: &Session,
        event: EventBody,
    ) -> Result<AuditEvent, Error> {
        self.open_session_carrying(session, event, Duration::ZERO)
            .await
            .map(|(event, _)| event)
    }

    /// [`Store::open_session`], returning the session as stored: its labels grow by every label its
    /// principal (agent, user, tenant) held in a session that expired less than `carry_over` ago or is
    /// still open, and those it starts with are copied to the principal's other open sessions. When it
    /// starts with labels or ancestors, the event's `detail` says which (`labels`, `labels_carried`,
    /// `ancestors`, `labels_shared_with`).
    pub async fn open_session_carrying(
        &self,
        session: &Session,
        event: EventBody,
        carry_over: Duration,
    ) -> Result<(AuditEvent, Session), Error> {
        check_session(session)?;
        check_event(&event)?;
        let mut session = session.clone();
        session.labels = sorted_union(&session.labels, &[]);
        self.submit(|reply| Job::OpenSession {
            session: Box::new(session),
            event,
            carry_over,
            reply,
        })
        .await
    }

    /// Sets `closed_at` of an open session and appends its `SESSION_CLOSED` event. `NotFound` when the
    /// session does not exist, `Conflict` when it is already closed (nothing is written then).
    pub async fn close_session(
        &self,
        session_id: &str,
        at: Micros,
        event: EventBody,
    ) -> Result<AuditEvent, Error> {
        check_key("session_id", session_id)?;
        check_event(&event)?;
        let session_id = session_id.to_owned();
        self.submit(|reply| Job::CloseSession {
            session_id,
            at,
            event,
            reply,
        })
        .await
    }

    /// Adds `labels` to session `session_id`, in one writer transaction: reads the session, sets its labels
    /// to the sorted union of the stored ones and `labels` (nothing is ever removed; duplicates and order in
    /// `labels` do not matter), appends `event`, and returns the session as updated. The event is appended
    /// even when no label is new: it records the retrieval batch or the tool result itself.
    ///
    /// `event` is the caller's: kind `RETRIEVAL_DECIDED`, `RETRIEVAL_FILTERED` or `TOOL_RESULT_REPORTED`,
    /// about this session (`event.session_id`), with what happened in its `detail`; anything else is
    /// `Invalid`. `Ok(None)` when
    /// the session does not exist: nothing is written then. `Conflict` when the event id is already in the
    /// trail (nothing is written). Writer transactions are serialised across brokers, so concurrent calls on
    /// any number of brokers all land. `now` is when the caller observed the change; the trail's time is
    /// `event.time`.
    ///
    /// The labels are the principal's (agent, user, tenant) too: they are held for its sessions opened
    /// within the carry-over after this session expires (or after `now`, if later), and copied to its other
    /// open sessions, whose ids the stored event's `detail` then lists under `labels_shared_with`.
    pub async fn add_session_labels(
        &self,
        session_id: &str,
        labels: &[String],
        event: EventBody,
        now: Micros,
    ) -> Result<Option<Session>, Error> {
        check_key("session_id", session_id)?;
        for label in labels {
            check_key("labels", label)?;
        }
        check_event(&event)?;
        if !matches!(
            event.kind,
            EventKind::RetrievalDecided
                | EventKind::RetrievalFiltered
                | EventKind::ToolResultReported
        ) {
            return Err(Error::invalid(format!(
                "the event of labels added to a session must be `{}`, `{}` or `{}`, not `{}`",
                EventKind::RetrievalDecided.as_str(),
                EventKind::RetrievalFiltered.as_str(),
                EventKind::ToolResultReported.as_str(),
                event.kind.as_str()
            )));
        }
        if event.session_id.as_deref() != Some(session_id) {
            return Err(Error::invalid(format!(
                "the event of labels added to session `{session_id}` must name that session"
            )));
        }
        let (session_id, labels) = (session_id.to_owned(), sorted_union(labels, &[]));
        self.submit(|reply| Job::AddSessionLabels {
            session_id,
            labels,
            event,
            now,
            reply,
        })
        .await
    }

    /// Commits a tool-call decision: replays a remembered call, spends the budget (overruling an ALLOW the
    /// session cannot pay for), consumes the approval an ALLOW uses (overruling it when the approval cannot
    /// be used), remembers the call, appends the `TOOL_CALL_DECIDED` event, and stores a requested approval
    /// with its `APPROVAL_REQUESTED` event, in that order and in one transaction (see [`ApprovalWrite`]).
    /// The answer comes only after the commit. `Conflict` when a requested approval's id exists.
    pub async fn record_decision(&self, rec: DecisionRecord) -> Result<Recorded, Error> {
        check_decision(&rec)?;
        let rec = Box::new(rec);
        self.submit(|reply| Job::RecordDecision { rec, reply })
            .await
    }

    /// Stores a new (unreleased) kill switch and its `KILL_SWITCH_ENGAGED` event (`event`, e.g.
    /// [`EventBody::for_kill_switch`]), in one transaction; on Postgres every broker's listener hears it once
    /// committed. `Conflict` when the switch id (or the event id) exists: nothing is written then.
    pub async fn engage_kill_switch(
        &self,
        switch: &KillSwitch,
        event: EventBody,
    ) -> Result<AuditEvent, Error> {
        check_kill_switch(switch)?;
        check_event(&event)?;
        if event.kind != EventKind::KillSwitchEngaged {
            return Err(Error::invalid(format!(
                "the event of an engaged kill switch must be `{}`, not `{}`",
                EventKind::KillSwitchEngaged.as_str(),
                event.kind.as_str()
            )));
        }
        let switch = Box::new(switch.clone());
        self.submit(|reply| Job::EngageKillSwitch {
            switch,
            event,
            reply,
        })
        .await
    }

    /// Releases switch `id` if it is not released yet (a conditional update, so of concurrent releases on
    /// any number of brokers exactly one wins), appends its `KILL_SWITCH_RELEASED` event
    /// ([`EventBody::for_kill_switch`] by `release.by` at `now`) in the same transaction, and returns the
    /// switch as released. `None` when the switch is unknown or already released: nothing is written then.
    pub async fn release_kill_switch(
        &self,
        id: &str,
        release: &Release,
        now: Micros,
    ) -> Result<Option<KillSwitch>, Error> {
        check_key("kill_switch.id", id)?;
        check_release(release)?;
        let (id, release) = (id.to_owned(), release.clone());
        self.submit(|reply| Job::ReleaseKillSwitch {
            id,
            release,
            now,
            reply,
        })
        .await
    }

    /// Releases (by [`EXPIRED_BY`], reason [`EXPIRED_REASON`], at `now`) every unreleased switch whose
    /// `expires_at <= now`, each with a `KILL_SWITCH_EXPIRED` event, and returns them. Conditional, so when
    /// several brokers run this, each switch is expired (and audited) exactly once. When nothing is due
    /// (the usual case) it only reads, without a write transaction.
    pub async fn expire_kill_switches(&self, now: Micros) -> Result<Vec<KillSwitch>, Error> {
        if !self
            .bounded(sql::kill_switch_due(&self.inner.pool, now))
            .await?
        {
            return Ok(Vec::new());
        }
        self.submit(|reply| Job::ExpireKillSwitches { now, reply })
            .await
    }

    /// Records `vote` on approval `id`, in the writer's transaction: reads the approval and its votes,
    /// refuses a voter [`Approval::check_voter`] refuses (at `now`), stores the vote (the same approver
    /// counts once), appends `APPROVAL_VOTED` (by the approver, detail `{"vote", "comment", "person"}`), and when the
    /// votes settle it ([`Approval::status_after_votes`]) sets the status and appends `APPROVAL_APPROVED` or
    /// `APPROVAL_DENIED` (a denied approval drops its kept arguments). Writer transactions are serialised
    /// across brokers, so concurrent votes on several brokers all count and the quorum sees them all.
    pub async fn vote_on_approval(
        &self,
        id: &str,
        vote: VoteRecord,
        now: Micros,
    ) -> Result<VoteResult, Error> {
        check_key("approval.id", id)?;
        check_vote(&vote)?;
        let id = id.to_owned();
        self.submit(|reply| Job::VoteOnApproval {
            id,
            vote: Box::new(vote),
            now,
            reply,
        })
        .await
    }

    /// Expires every PENDING approval with `expires_at <= now` (dropping its kept arguments), each with an
    /// `APPROVAL_EXPIRED` event by [`EXPIRED_BY`], and returns them (in expiry order). Conditional, so when
    /// several brokers run this, each approval expires (and is audited) exactly once. Approved approvals
    /// past `expires_at` can no longer be used: their kept arguments are dropped too (no event: nothing
    /// audited changes). When nothing is due (the usual case) it only reads, without a write transaction.
    pub async fn expire_approvals(&self, now: Micros) -> Result<Vec<Approval>, Error> {
        if !self
            .bounded(sql::approvals_due(&self.inner.pool, now))
            .await?
        {
            return Ok(Vec::new());
        }
        self.submit(|reply| Job::ExpireApprovals { now, reply })
            .await
    }

    /// Cancels those of `ids` that are PENDING and unexpired at `now` (dropping their kept arguments), each
    /// with an `APPROVAL_CANCELLED` event by `by` (detail `{"reason"}`), and returns them, in expiry order.
    /// The others (unknown, decided, expired, already cancelled) are left alone.
    pub async fn cancel_approvals(
        &self,
        ids: &[String],
        by: &str,
        reason: &str,
        now: Micros,
    ) -> Result<Vec<Approval>, Error> {
        for id in ids {
            check_key("approval.id", id)?;
        }
        check_key("cancel.by", by)?;
        check_text("cancel.reason", reason)?;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (by, reason) = (by.to_owned(), reason.to_owned());
        self.submit(|reply| Job::CancelApprovals {
            ids,
            by,
            reason,
            now,
            reply,
        })
        .await
    }

    /// Queues a job for the writer and waits for its answer, at most `commit_timeout`.
    async fn submit<T>(&self, job: impl FnOnce(writer::Reply<T>) -> Job) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let queued = writer::Queued::Job(job(reply));
        self.inner.jobs.try_send(queued).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                Error::new(ErrorKind::Overloaded, "the audit writer queue is full")
            }
            mpsc::error::TrySendError::Closed(_) => {
                Error::unavailable("the audit writer has stopped")
            }
        })?;
        match tokio::time::timeout(self.inner.commit_timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::unavailable("the audit writer dropped the write")),
            Err(_) => Err(Error::timeout(format!(
                "the audit write was not committed within {} ms",
                self.inner.commit_timeout.as_millis()
            ))),
        }
    }

    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.inner.read_timeout, read)
            .await
            .map_err(|_| {
                Error::timeout(format!(
                    "the database did not answer within {} ms",
                    self.inner.read_timeout.as_millis()
                ))
            })?
    }
}

/// Hears every committed change to the kill switches (engaged, released, expired) made by any broker on the
/// same Postgres database. See [`ChangeListener`].
pub type KillSwitchListener = ChangeListener;

/// Hears every committed change to an approval made by any broker on the same Postgres database; the
/// payload is the approval id. See [`ChangeListener`].
pub type ApprovalListener = ChangeListener;

/// Hears every committed change announced on one channel (kill switches, approvals) by any broker on the
/// same Postgres database, through `LISTEN`/`NOTIFY` on a connection of its own. A notification is sent
/// at commit, so a rolled-back change is never heard.
///
/// Use: create it, *then* load the switches, then loop on [`recv`](Self::recv) and reload after each
/// return. `recv` also returns `Ok(())` after the connection was lost and re-established (a change may
/// have been missed meanwhile), so a reload after every `Ok` is always right. When it cannot reconnect it
/// returns an `Unavailable` error: log it, wait a little, and call `recv` again; the first `recv` that
/// reconnects returns at once, for the reload. Notifications do not detect a silently dead connection,
/// so keep a periodic reload as well (and treat switches you could not read as engaged).
pub struct ChangeListener {
    channel: &'static str,
    /// What changes, for messages: "kill switch", "approval".
    what: &'static str,
    options: sqlx::postgres::PgConnectOptions,
    connect_timeout: Duration,
    /// `None` after a failure: the next `recv` connects afresh.
    listener: Option<sqlx::postgres::PgListener>,
    /// Where `options` points when the connection is encrypted: kept open as long as the listener.
    _tunnel: Option<Arc<pg_tunnel::Tunnel>>,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListener")
            .field("channel", &self.channel)
            .field("connected", &self.listener.is_some())
            .finish()
    }
}

impl ChangeListener {
    async fn connect(
        any: &AnyConnectOptions,
        tunnel: Option<Arc<pg_tunnel::Tunnel>>,
        connect_timeout: Duration,
        channel: &'static str,
        what: &'static str,
    ) -> Result<Self, Error> {
        use sqlx::ConnectOptions;
        // The Any driver cannot listen: connect with the Postgres driver, to the same URL.
        let options = sqlx::postgres::PgConnectOptions::from_url(&any.database_url).map_err(db)?;
        let listener = Self::open(&options, connect_timeout, channel, what).await?;
        Ok(Self {
            channel,
            what,
            options,
            connect_timeout,
            listener: Some(listener),
            _tunnel: tunnel,
        })
    }

    /// A listener on a pool of one connection (the pool is how `PgListener` reconnects), without lifetime or
    /// idle limits, which would only drop the LISTEN connection for nothing. Bounded in time.
    async fn open(
        options: &sqlx::postgres::PgConnectOptions,
        connect_timeout: Duration,
        channel: &'static str,
        what: &'static str,
    ) -> Result<sqlx::postgres::PgListener, Error> {
        let opening = async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .max_lifetime(None)
                .idle_timeout(None)
                .acquire_timeout(connect_timeout)
                .connect_with(options.clone())
                .await?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        tokio::time::timeout(connect_timeout.saturating_mul(2), opening)
            .await
            .map_err(|_| Error::unavailable(format!("{what} listener timed out connecting")))?
            .map_err(|e| listener_error(what, e))
    }

    /// Returns when any broker changed something on the channel (or when changes may have been missed:
    /// see the type's documentation). Cancel-safe: dropping the future loses no notification.
    pub async fn recv(&mut self) -> Result<(), Error> {
        self.recv_change().await.map(|_| ())
    }

    /// As [`recv`](Self::recv), with the id of what changed (the switch, the approval), or `None` when
    /// changes may have been missed (the connection was lost and is back).
    pub(crate) async fn recv_change(&mut self) -> Result<Option<String>, Error> {
        let Some(listener) = self.listener.as_mut() else {
            // The last `recv` failed: listen afresh, and report that changes may have gone unheard.
            self.listener = Some(
                Self::open(&self.options, self.connect_timeout, self.channel, self.what).await?,
            );
            return Ok(None);
        };
        match listener.try_recv().await {
            Ok(Some(notification)) => Ok(Some(notification.payload().to_owned())),
            // The connection was lost and `PgListener` has re-established it (listening again).
            Ok(None) => Ok(None),
            Err(e) => {
                // Whatever state the connection is in, the next call starts from a new one.
                self.listener = None;
                Err(listener_error(self.what, e))
            }
        }
    }
}

fn listener_error(what: &str, e: sqlx::Error) -> Error {
    let e = Error::from_sqlx(e);
    Error::unavailable(format!(
        "{what} listener cannot use the database: {}",
        e.message()
    ))
}

fn create_sqlite_file(url: &str) -> Result<(), Error> {
    let path = config::sqlite_path(url)?;
    let path = std::path::Path::new(&path);
    let fail = |e: std::io::Error| {
        Error::unavailable(format!(
            "cannot create sqlite database `{}`: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Checks made before a write is queued, so that no job can fail its batch for a reason of its own.

fn check_text(field: &str, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "`{field}` contains a NUL character"
        )));
    }
    Ok(())
}

fn check_key(field: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "`{field}` is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    check_text(field, value)
}

fn check_opt_key(field: &str, value: Option<&str>) -> Result<(), Error> {
    value.map_or(Ok(()), |v| check_key(field, v))
}

fn check_session(s: &Session) -> Result<(), Error> {
    check_key("session.id", &s.id)?;
    check_key("session.agent", &s.agent)?;
    check_opt_key("session.user", s.user.as_deref())?;
    check_opt_key("session.tenant", s.tenant.as_deref())?;
    check_text("session.purpose", &s.purpose)?;
    for c in &s.collections {
        check_key("session.collections", c)?;
    }
    for l in &s.labels {
        check_key("session.labels", l)?;
    }
    for a in &s.ancestors {
        check_key("session.ancestors", a)?;
    }
    Ok(())
}

/// The labels of `a` and `b` together, sorted and unique: how a session's labels grow.
pub(crate) fn sorted_union(a: &[String], b: &[String]) -> Vec<String> {
    let all: std::collections::BTreeSet<&String> = a.iter().chain(b).collect();
    all.into_iter().cloned().collect()
}

fn check_opt_text(field: &str, value: Option<&str>) -> Result<(), Error> {
    value.map_or(Ok(()), |v| check_text(field, v))
}

fn check_kill_switch(k: &KillSwitch) -> Result<(), Error> {
    check_key("kill_switch.id", &k.id)?;
    check_key("kill_switch.target", &k.target)?;
    check_key("kill_switch.engaged_by", &k.engaged_by)?;
    check_text("kill_switch.reason", &k.reason)?;
    if k.released.is_some() {
        return Err(Error::invalid(format!(
            "kill switch `{}` cannot be engaged already released",
            k.id
        )));
    }
    Ok(())
}

fn check_release(r: &Release) -> Result<(), Error> {
    check_key("release.by", &r.by)?;
    check_text("release.reason", &r.reason)
}

fn check_event(b: &EventBody) -> Result<(), Error> {
    check_key("event.event_id", &b.event_id)?;
    check_key("event.agent", &b.agent)?;
    check_opt_key("event.user", b.user.as_deref())?;
    check_opt_key("event.session_id", b.session_id.as_deref())?;
    check_opt_key("event.decision_id", b.decision_id.as_deref())?;
    check_opt_key("event.tool", b.tool.as_deref())?;
    check_opt_key("event.call_id", b.call_id.as_deref())?;
    check_opt_key("event.policy_version", b.policy_version.as_deref())?;
    check_opt_key("event.arguments_digest", b.arguments_digest.as_deref())?;
    if let Some(args) = &b.arguments_redacted {
        check_text("event.arguments_redacted", args)?;
    }
    check_opt_text("event.detail", b.detail.as_deref())?;
    for reason in &b.reasons {
        check_text("event.reasons.message", &reason.message)?;
        check_opt_key("event.reasons.policy_id", reason.policy_id.as_deref())?;
    }
    // No trial hash here: a body holds only strings, integers and enums, so its canonical form always
    // exists, and the writer hashes it once when it places it.
    Ok(())
}

fn check_decision(rec: &DecisionRecord) -> Result<(), Error> {
    let d = &rec.decision;
    check_key("decision.decision_id", &d.decision_id)?;
    check_key("decision.session_id", &d.session_id)?;
    check_key("decision.tool", &d.tool)?;
    check_key("decision.call_id", &d.call_id)?;
    check_key("decision.policy_version", &d.policy_version)?;
    check_opt_key("decision.approval_id", d.approval_id.as_deref())?;
    check_key("call.arguments_digest", &rec.call.arguments_digest)?;
    check_event(&EventBody::for_decision(d, &rec.call))?;
    let invalid = |what: &str| {
        Err(Error::invalid(format!(
            "decision `{}`: {what}",
            d.decision_id
        )))
    };
    // A replay repeats an answer recorded earlier, with the approval it asked for or used then.
    let replaying = rec.call.replay_of.as_deref() == Some(d.decision_id.as_str());
    match &rec.approval {
        None if replaying && !rec.spend_budget && !rec.remember => Ok(()),
        None if d.outcome == Outcome::PendingApproval => {
            invalid("a PENDING_APPROVAL decision must request its approval")
        }
        None if d.is_allow() && d.approval_id.is_some() => {
            invalid("an ALLOW that uses an approval must consume it")
        }
        None => Ok(()),
        Some(ApprovalWrite::Request {
            approval,
            arguments,
        }) => {
            if d.outcome != Outcome::PendingApproval {
                return invalid("only a PENDING_APPROVAL decision requests an approval");
            }
            if d.approval_id.as_deref() != Some(approval.id.as_str()) {
                return invalid("`approval_id` does not name the approval it requests");
            }
            let same = approval.decision_id == d.decision_id
                && approval.session_id == d.session_id
                && approval.tool == d.tool
                && approval.call_id == d.call_id
                && approval.agent == rec.call.agent
                && approval.user == rec.call.user
                && approval.arguments_digest == rec.call.arguments_digest;
            if !same {
                return invalid(
                    "the approval is not for this decision's session, agent, user, tool, call and arguments",
                );
            }
            if approval.requirements.is_empty() {
                return invalid("an approval needs at least one requirement");
            }
            check_text("approval.arguments", arguments)?;
            check_new_approval(approval)?;
            check_event(&requested_event(approval, rec.now))
        }
        Some(ApprovalWrite::Consume {
            approval_id,
            arguments_digest,
        }) => {
            if d.outcome == Outcome::PendingApproval {
                return invalid("a PENDING_APPROVAL decision cannot consume an approval");
            }
            if d.approval_id.as_deref() != Some(approval_id.as_str()) {
                return invalid("`approval_id` does not name the approval it consumes");
            }
            if *arguments_digest != rec.call.arguments_digest {
                return invalid("an approval is consumed only by a call with the digest it covers");
            }
            Ok(())
        }
    }
}

fn check_new_approval(a: &Approval) -> Result<(), Error> {
    check_key("approval.id", &a.id)?;
    check_key("approval.session_id", &a.session_id)?;
    check_key("approval.agent", &a.agent)?;
    check_opt_key("approval.user", a.user.as_deref())?;
    check_opt_key("approval.tenant", a.tenant.as_deref())?;
    check_key("approval.tool", &a.tool)?;
    check_key("approval.call_id", &a.call_id)?;
    check_key("approval.decision_id", &a.decision_id)?;
    check_key("approval.arguments_digest", &a.arguments_digest)?;
    check_text("approval.arguments_redacted", &a.arguments_redacted)?;
    for r in &a.requirements {
        check_key("approval.requirements.policy_id", &r.policy_id)?;
        check_key("approval.requirements.group", &r.group)?;
    }
    for r in &a.reasons {
        check_text("approval.reasons.message", &r.message)?;
        check_opt_key("approval.reasons.policy_id", r.policy_id.as_deref())?;
        check_opt_key(
            "approval.reasons.kill_switch_id",
            r.kill_switch_id.as_deref(),
        )?;
    }
    Ok(())
}

fn check_vote(v: &VoteRecord) -> Result<(), Error> {
    check_key("vote.approver", &v.approver)?;
    check_key("vote.person", &v.person)?;
    for g in &v.groups {
        check_key("vote.groups", g)?;
    }
    check_text("vote.comment", &v.comment)?;
    if v.comment.len() > MAX_COMMENT_LEN {
        return Err(Error::invalid(format!(
            "`vote.comment` is longer than {MAX_COMMENT_LEN} bytes"
        )));
    }
    Ok(())
}

/// The `APPROVAL_REQUESTED` event of a new approval, by the agent that asked.
pub(crate) fn requested_event(approval: &Approval, now: Micros) -> EventBody {
    EventBody::for_approval(
        EventKind::ApprovalRequested,
        approval,
        &approval.agent,
        now,
        serde_json::json!({
            "requirements": approval.requirements,
            "expires_at": approval.expires_at,
        }),
    )
}
