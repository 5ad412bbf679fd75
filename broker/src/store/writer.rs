//! The group-commit audit writer: one task per [`Store`](super::Store) owns every write (sessions,
//! decisions, kill switches, approvals).
//!
//! Callers put a job on a bounded queue and wait (at most `commit_timeout`) for its answer. The task takes
//! the first job, drains whatever else is waiting (up to `max_batch`), and runs ONE transaction for all
//! of them: it takes the chain lock, reads the chain head once, applies each job and appends its event,
//! commits, and only then answers each job. A caller therefore never hears "committed" (nor an ALLOW)
//! before the commit, and because the job lives in the queue, a caller that goes away does not stop it.
//!
//! Jobs are built so that one cannot fail another: everything that could make a statement fail for one
//! job alone (duplicate ids, oversized or NUL-carrying text, unserialisable content) is either checked
//! before the job is queued or turned into a per-job answer with `ON CONFLICT DO NOTHING` / `NOT EXISTS`.
//! What remains is a database failure, which fails the whole batch (every job answered with its error).
//!
//! The writer never stops while a `Store` handle lives: a failed or timed-out transaction is rolled back
//! (or its connection discarded), the batch is answered with the error, and the next batch starts from a
//! freshly read chain head, so it recovers by itself when the database returns.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{mpsc, oneshot, watch};

use super::pg_writer::PgWriter;
use super::sql::{self, db, ChainHead};
use super::sqlite_writer::SqliteWriter;
use super::{
    requested_event, sorted_union, ApprovalWrite, Backend, DecisionRecord, Error, Recorded,
    VoteResult, EXPIRED_BY, EXPIRED_REASON,
};
use crate::clock::Micros;
use crate::domain::approval::{Approval, ApprovalStatus, Refusal, VoteRecord};
use crate::domain::audit::{AuditEvent, EventBody, EventKind, GENESIS_HASH};
use crate::domain::decision::{Reason, ReasonCode};
use crate::domain::killswitch::{KillSwitch, Release};
use crate::domain::session::Session;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// One write, and where its answer goes.
pub(crate) enum Job {
    OpenSession {
        session: Box<Session>,
        event: EventBody,
        /// How long labels held by the session's principal carry into it (`store::taint`).
        carry_over: Duration,
        reply: Reply<(AuditEvent, Session)>,
    },
    CloseSession {
        session_id: String,
        at: Micros,
        event: EventBody,
        reply: Reply<AuditEvent>,
    },
    AddSessionLabels {
        session_id: String,
        /// Sorted and unique.
        labels: Vec<String>,
        event: EventBody,
        now: Micros,
        reply: Reply<Option<Session>>,
    },
    RecordDecision {
        rec: Box<DecisionRecord>,
        reply: Reply<Recorded>,
    },
    EngageKillSwitch {
        switch: Box<KillSwitch>,
        event: EventBody,
        reply: Reply<AuditEvent>,
    },
    ReleaseKillSwitch {
        id: String,
        release: Release,
        now: Micros,
        reply: Reply<Option<KillSwitch>>,
    },
    ExpireKillSwitches {
        now: Micros,
        reply: Reply<Vec<KillSwitch>>,
    },
    VoteOnApproval {
        id: String,
        vote: Box<VoteRecord>,
        now: Micros,
        reply: Reply<VoteResult>,
    },
    ExpireApprovals {
        now: Micros,
        reply: Reply<Vec<Approval>>,
    },
    CancelApprovals {
        ids: Vec<String>,
        by: String,
        reason: String,
        now: Micros,
        reply: Reply<Vec<Approval>>,
    },
}

/// What the writer's queue carries: a write, or a flush, answered once every write queued before it
/// is answered (committed or refused); it takes no part in any transaction.
#[expect(
    clippy::large_enum_variant,
    reason = "the queue held jobs of this size before; boxing them would allocate per write for a rare flush"
)]
pub(crate) enum Queued {
    Job(Job),
    Flush(oneshot::Sender<()>),
}

/// A job's answer, held until the batch commits.
enum Answer {
    Event(Result<AuditEvent, Error>),
    Opened(Result<Box<(AuditEvent, Session)>, Error>),
    Session(Result<Option<Session>, Error>),
    Recorded(Result<Recorded, Error>),
    Switch(Result<Option<KillSwitch>, Error>),
    Switches(Result<Vec<KillSwitch>, Error>),
    Vote(Result<VoteResult, Error>),
    Approvals(Result<Vec<Approval>, Error>),
}

enum Work {
    OpenSession {
        session: Box<Session>,
        event: EventBody,
        carry_over: Duration,
    },
    CloseSession {
        session_id: String,
        at: Micros,
        event: EventBody,
    },
    AddSessionLabels {
        session_id: String,
        labels: Vec<String>,
        event: EventBody,
        now: Micros,
    },
    RecordDecision(Box<DecisionRecord>),
    EngageKillSwitch {
        switch: Box<KillSwitch>,
        event: EventBody,
    },
    ReleaseKillSwitch {
        id: String,
        release: Release,
        now: Micros,
    },
    ExpireKillSwitches {
        now: Micros,
    },
    VoteOnApproval {
        id: String,
        vote: Box<VoteRecord>,
        now: Micros,
    },
    ExpireApprovals {
        now: Micros,
    },
    CancelApprovals {
        ids: Vec<String>,
        by: String,
        reason: String,
        now: Micros,
    },
}

enum ReplyTo {
    Event(Reply<AuditEvent>),
    Opened(Reply<(AuditEvent, Session)>),
    Session(Reply<Option<Session>>),
    Recorded(Reply<Recorded>),
    Switch(Reply<Option<KillSwitch>>),
    Switches(Reply<Vec<KillSwitch>>),
    Vote(Reply<VoteResult>),
    Approvals(Reply<Vec<Approval>>),
}

impl Job {
    fn split(self) -> (Work, ReplyTo) {
        match self {
            Job::OpenSession {
                session,
                event,
                carry_over,
                reply,
            } => (
                Work::OpenSession {
                    session,
                    event,
                    carry_over,
                },
                ReplyTo::Opened(reply),
            ),
            Job::CloseSession {
                session_id,
                at,
                event,
                reply,
            } => (
                Work::CloseSession {
                    session_id,
                    at,
                    event,
                },
                ReplyTo::Event(reply),
            ),
            Job::AddSessionLabels {
                session_id,
                labels,
                event,
                now,
                reply,
            } => (
                Work::AddSessionLabels {
                    session_id,
                    labels,
                    event,
                    now,
                },
                ReplyTo::Session(reply),
            ),
            Job::RecordDecision { rec, reply } => {
                (Work::RecordDecision(rec), ReplyTo::Recorded(reply))
            }
            Job::EngageKillSwitch {
                switch,
                event,
                reply,
            } => (
                Work::EngageKillSwitch { switch, event },
                ReplyTo::Event(reply),
            ),
            Job::ReleaseKillSwitch {
                id,
                release,
                now,
                reply,
            } => (
                Work::ReleaseKillSwitch { id, release, now },
                ReplyTo::Switch(reply),
            ),
            Job::ExpireKillSwitches { now, reply } => {
                (Work::ExpireKillSwitches { now }, ReplyTo::Switches(reply))
            }
            Job::VoteOnApproval {
                id,
                vote,
                now,
                reply,
            } => (Work::VoteOnApproval { id, vote, now }, ReplyTo::Vote(reply)),
            Job::ExpireApprovals { now, reply } => {
                (Work::ExpireApprovals { now }, ReplyTo::Approvals(reply))
            }
            Job::CancelApprovals {
                ids,
                by,
                reason,
                now,
                reply,
            } => (
                Work::CancelApprovals {
                    ids,
                    by,
                    reason,
                    now,
                },
                ReplyTo::Approvals(reply),
            ),
        }
    }
}

impl ReplyTo {
    /// Sends `answer`; a caller that stopped waiting is not an error (its write is committed anyway).
    fn send(self, answer: Result<Answer, Error>) {
        match self {
            ReplyTo::Event(tx) => deliver(tx, answer, |a| match a {
                Answer::Event(r) => Some(r),
                _ => None,
            }),
            ReplyTo::Opened(tx) => deliver(tx, answer, |a| match a {
                Answer::Opened(r) => Some(r.map(|opened| *opened)),
                _ => None,
            }),
            ReplyTo::Session(tx) => deliver(tx, answer, |a| match a {
                Answer::Session(r) => Some(r),
                _ => None,
            }),
            ReplyTo::Recorded(tx) => deliver(tx, answer, |a| match a {
                Answer::Recorded(r) => Some(r),
                _ => None,
            }),
            ReplyTo::Switch(tx) => deliver(tx, answer, |a| match a {
                Answer::Switch(r) => Some(r),
                _ => None,
            }),
            ReplyTo::Switches(tx) => deliver(tx, answer, |a| match a {
                Answer::Switches(r) => Some(r),
                _ => None,
            }),
            ReplyTo::Vote(tx) => deliver(tx, answer, |a| match a {
                Answer::Vote(r) => Some(r),
                _ => None,
            }),
            ReplyTo::Approvals(tx) => deliver(tx, answer, |a| match a {
                Answer::Approvals(r) => Some(r),
                _ => None,
            }),
        }
    }
}

/// Sends the part of `answer` that `pick` recognises as this reply's kind.
fn deliver<T>(
    tx: Reply<T>,
    answer: Result<Answer, Error>,
    pick: impl FnOnce(Answer) -> Option<Result<T, Error>>,
) {
    let _ = tx.send(answer.and_then(|a| {
        pick(a).unwrap_or_else(|| {
            Err(Error::internal(
                "audit writer answered a job with the wrong kind of result",
            ))
        })
    }));
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub(crate) backend: Backend,
    pub(crate) max_batch: usize,
    pub(crate) transaction_timeout: Duration,
}

/// The writer's own connection for batches made only of plain decisions (the common case), with a driver
/// faster than sqlx for them.
pub(crate) enum OwnConnection {
    Sqlite(SqliteWriter),
    Postgres(Box<PgWriter>),
}

/// Runs until every sender (every `Store` handle) is gone.
///
/// Two things keep a slow database from starving the writer. Batches shrink when one times out (to a
/// quarter, down to one job) and grow by a quarter after each full batch that commits within half the
/// bound, so a batch that cannot finish within `transaction_timeout` is not retried at the same size
/// forever (nothing would commit, and the chain lock would be held for the whole bound each time). And the
/// writer keeps its own connections between batches instead of queueing for the pool behind the request
/// path's reads: `own` for batches made only of plain decisions, one of the pool's for the rest.
///
/// After each commit it publishes the chain head it left on `heads`, for the checkpointer: a send on a
/// watch channel, which never waits for its reader.
pub(crate) async fn run(
    pool: AnyPool,
    cfg: WriterConfig,
    mut jobs: mpsc::Receiver<Queued>,
    mut own: OwnConnection,
    heads: watch::Sender<Option<ChainHead>>,
) {
    let mut batch = Vec::with_capacity(cfg.max_batch.min(1024));
    // Starts modest and grows with every full batch that commits, so a database that is slow from the
    // start is not first handed the largest batch.
    let mut limit = cfg.max_batch.clamp(1, 32);
    let mut held: Option<PoolConnection<Any>> = None;
    // A flush met while filling a batch: answered once that batch is.
    let mut flush = None;
    while let Some(first) = jobs.recv().await {
        match first {
            // Every earlier batch is answered already.
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Queued::Job(job) => batch.push(job),
        }
        while batch.len() < limit {
            match jobs.try_recv() {
                Ok(Queued::Job(job)) => batch.push(job),
                Ok(Queued::Flush(done)) => {
                    flush = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        let (work, replies): (Vec<Work>, Vec<ReplyTo>) = batch.drain(..).map(Job::split).unzip();
        let size = work.len();
        let started = tokio::time::Instant::now();
        let outcome = AssertUnwindSafe(commit_batch(&pool, &mut held, &mut own, cfg, work, &jobs))
            .catch_unwind()
            .await;
        let answers = match outcome {
            Ok(Ok((answers, head))) if answers.len() == size => {
                publish_head(&heads, head);
                Ok(answers)
            }
            Ok(Ok(_)) => Err(Error::internal("audit writer lost track of its batch")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::internal("audit writer failed unexpectedly")),
        };
        match answers {
            Ok(answers) => {
                tracing::trace!(batch = size, "audit batch committed");
                // Grows only while a full batch leaves room: one that took half the bound would time out
                // at twice the size, and a timed-out batch commits nothing.
                if size >= limit && started.elapsed() < cfg.transaction_timeout / 2 {
                    limit = limit
                        .saturating_add(limit / 4 + 1)
                        .min(cfg.max_batch.max(1));
                }
                for (reply, answer) in replies.into_iter().zip(answers) {
                    reply.send(Ok(answer));
                }
            }
            Err(e) => {
                if e.kind() == super::ErrorKind::Timeout {
                    limit = (size / 4).max(1);
                }
                // A connection that failed is not kept: the pool rolls back or discards it.
                held = None;
                tracing::warn!(batch = size, next_limit = limit, error = %e, "audit batch failed; every write in it is refused");
                for reply in replies {
                    reply.send(Err(e.clone()));
                }
            }
        }
        if let Some(done) = flush.take() {
            let _ = done.send(());
        }
    }
    tracing::debug!("audit writer stopped: every store handle is gone");
}

/// Publishes the head a commit left (`None` only while the chain is empty: nothing to sign).
fn publish_head(heads: &watch::Sender<Option<ChainHead>>, head: Option<ChainHead>) {
    if let Some(head) = head {
        heads.send_replace(Some(head));
    }
}

/// A connection inside a transaction the writer began with plain SQL. Dropped without being disarmed (an
/// error, a timeout, a panic), it closes the connection instead of returning it to the pool: the database
/// then rolls the transaction back and releases the chain lock, and no pool user inherits either.
struct InTransaction(Option<PoolConnection<Any>>);

impl InTransaction {
    fn conn(&mut self) -> Result<&mut AnyConnection, Error> {
        self.0
            .as_deref_mut()
            .ok_or_else(|| Error::internal("audit writer lost its connection"))
    }

    fn disarm(mut self) -> Option<PoolConnection<Any>> {
        self.0.take()
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

/// Postgres: the planner settings of the writer's statements. The advisory lock serialises chain appends
/// across every broker process sharing this database (released at commit or rollback). Every lookup in a
/// batch is by key, for at most a few hundred keys. Without table statistics (autovacuum off, or a young
/// fast-growing table) the planner hashes them against a sequential scan of `audit_events` and
/// `tool_calls`: a cost that grows with the trail (measured: 1.3 ms of database CPU per decision at
/// 80,000 events). The pool's connections set them per transaction (`SET LOCAL`, until the commit);
/// `pg_writer`'s connection, which runs nothing else, once per connection.
pub(super) const PG_PLANNER_SETTINGS: [&str; 3] = [
    "enable_seqscan = off",
    "enable_hashjoin = off",
    "enable_mergejoin = off",
];

/// Postgres: takes the chain lock, waiting for it.
pub(super) fn pg_lock() -> String {
    format!("SELECT pg_advisory_xact_lock({})", sql::CHAIN_LOCK_KEY)
}

/// Postgres: a transaction's start on a pool connection, with its planner settings, in one simple query
/// (one round trip).
fn pg_begin() -> String {
    let settings: Vec<String> = PG_PLANNER_SETTINGS
        .iter()
        .map(|s| format!("SET LOCAL {s}"))
        .collect();
    format!("BEGIN; {}; {}", settings.join("; "), pg_lock())
}

/// One transaction for the whole batch, bounded in time. A batch made only of plain decisions goes to the
/// writer's own connection; anything else to one of the pool's, held between batches. On failure or
/// timeout the connection is closed (the database rolls the transaction back when the connection goes
/// away) rather than returned to the pool.
async fn commit_batch(
    pool: &AnyPool,
    held: &mut Option<PoolConnection<Any>>,
    own: &mut OwnConnection,
    cfg: WriterConfig,
    work: Vec<Work>,
    queue: &mpsc::Receiver<Queued>,
) -> Result<(Vec<Answer>, Option<ChainHead>), Error> {
    let deadline = tokio::time::Instant::now() + cfg.transaction_timeout;
    if work.iter().all(|w| plain_decision(w).is_some()) {
        // The own connection is not the pool's: a closed store must refuse it too.
        if pool.is_closed() {
            return Err(Error::unavailable("the store is closed"));
        }
        let (answers, head) = match own {
            OwnConnection::Sqlite(sqlite) => {
                let recs = work
                    .into_iter()
                    .filter_map(|w| match w {
                        Work::RecordDecision(rec) => Some(*rec),
                        _ => None,
                    })
                    .collect();
                sqlite.record(recs, deadline).await?
            }
            OwnConnection::Postgres(pg) => {
                let recs: Vec<&DecisionRecord> = work.iter().filter_map(plain_decision).collect();
                pg.record(&recs, deadline, &|| !queue.is_empty()).await?
            }
        };
        return Ok((answers.into_iter().map(Answer::Recorded).collect(), head));
    }
    if let OwnConnection::Postgres(pg) = own {
        // Its open transaction may hold the chain lock that this batch's connection is about to wait for.
        pg.release(deadline).await;
    }
    let conn = match held.take() {
        Some(conn) => conn,
        None => tokio::time::timeout_at(deadline, pool.acquire())
            .await
            .map_err(|_| Error::timeout("timed out waiting for a database connection"))?
            .map_err(db)?,
    };
    let mut tx = InTransaction(Some(conn));
    let transaction = transact(tx.conn()?, cfg.backend, &work);
    match tokio::time::timeout_at(deadline, transaction).await {
        Ok(Ok(answers)) => {
            *held = tx.disarm();
            Ok(answers)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::timeout(format!(
            "audit transaction did not finish within {} ms",
            cfg.transaction_timeout.as_millis()
        ))),
    }
}

/// A batch holding more than plain decisions, in one transaction begun and committed with plain SQL.
async fn transact(
    conn: &mut AnyConnection,
    backend: Backend,
    work: &[Work],
) -> Result<(Vec<Answer>, Option<ChainHead>), Error> {
    let begin = match backend {
        // Takes SQLite's write lock now, so the chain head read below is the one we append to.
        Backend::Sqlite => "BEGIN IMMEDIATE".to_owned(),
        Backend::Postgres => pg_begin(),
    };
    (&mut *conn).execute(begin.as_str()).await.map_err(db)?;
    let committed = apply_each(conn, backend, work).await?;
    fail_before_commit()?;
    (&mut *conn).execute("COMMIT").await.map_err(db)?;
    fail_after_commit()?;
    Ok(committed)
}

// Test-only fault injection (feature `failpoints`) around every audit commit, on both writers: a failure
// just before the commit, and one after it (committed, yet the callers hear an error). The names are part
// of the faults suite's contract.

pub(super) fn fail_before_commit() -> Result<(), Error> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("audit.before_commit", |_| Err(Error::unavailable(
        "fail point `audit.before_commit`"
    )));
    Ok(())
}

pub(super) fn fail_after_commit() -> Result<(), Error> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("audit.after_commit", |_| Err(Error::unavailable(
        "fail point `audit.after_commit`"
    )));
    Ok(())
}

/// A mixed batch, in queue order: runs of plain decisions set-wise, everything else one by one.
async fn apply_each(
    tx: &mut AnyConnection,
    backend: Backend,
    work: &[Work],
) -> Result<(Vec<Answer>, Option<ChainHead>), Error> {
    let mut chain = Chain::start(sql::chain_head(&mut *tx).await?, backend);
    let mut answers = Vec::with_capacity(work.len());
    let mut rest = work;
    while !rest.is_empty() {
        // A run of plain decisions (the common case) is recorded set-wise; everything else one by one.
        let run = rest
            .iter()
            .take_while(|w| plain_decision(w).is_some())
            .count();
        if run > 0 {
            let (head, tail) = rest.split_at(run);
            let recs: Vec<&DecisionRecord> = head.iter().filter_map(plain_decision).collect();
            for answer in super::decisions::record(tx, &mut chain, &recs).await? {
                answers.push(Answer::Recorded(answer));
            }
            rest = tail;
        } else if let Some((job, tail)) = rest.split_first() {
            answers.push(apply(tx, backend, &mut chain, job).await?);
            rest = tail;
        }
    }
    Ok((answers, chain.head()))
}

/// The record of a decision that neither asks for nor uses an approval.
fn plain_decision(work: &Work) -> Option<&DecisionRecord> {
    match work {
        Work::RecordDecision(rec) if rec.approval.is_none() => Some(rec),
        _ => None,
    }
}

/// Where the next event goes.
pub(super) struct Chain {
    seq: i64,
    hash: String,
    backend: Backend,
}

impl Chain {
    pub(super) fn start(head: Option<ChainHead>, backend: Backend) -> Self {
        match head {
            Some(ChainHead { seq, hash }) => Self { seq, hash, backend },
            None => Self {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
                backend,
            },
        }
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    /// The last event placed; `None` while the chain is empty.
    pub(super) fn head(&self) -> Option<ChainHead> {
        (self.seq > 0).then(|| ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        })
    }

    /// Places `body` after the head and moves the head; the caller stores the event in this transaction.
    pub(super) fn link(&mut self, body: EventBody) -> Result<AuditEvent, Error> {
        let event = AuditEvent::chain(self.seq + 1, self.hash.clone(), body)
            .map_err(|e| Error::internal(e.to_string()))?;
        self.seq = event.seq;
        self.hash.clone_from(&event.hash);
        Ok(event)
    }

    /// Places `body` after the head, stores it, and moves the head.
    async fn append(
        &mut self,
        conn: &mut AnyConnection,
        body: EventBody,
    ) -> Result<AuditEvent, Error> {
        let event = self.link(body)?;
        super::bulk::insert_events(conn, self.backend, std::slice::from_ref(&event)).await?;
        Ok(event)
    }
}

/// Applies one job. `Err` is a database failure (the batch fails); a per-job refusal is an `Ok(Answer)`
/// carrying the error.
async fn apply(
    tx: &mut AnyConnection,
    backend: Backend,
    chain: &mut Chain,
    job: &Work,
) -> Result<Answer, Error> {
    match job {
        Work::OpenSession {
            session,
            event,
            carry_over,
        } => open_session(tx, chain, session, event, *carry_over)
            .await
            .map(Answer::Opened),
        Work::CloseSession {
            session_id,
            at,
            event,
        } => {
            if !sql::close_session(tx, session_id, *at, &event.event_id).await? {
                let why = if sql::event_id_taken(tx, &event.event_id).await? {
                    event_id_conflict(&event.event_id)
                } else {
                    match sql::fetch_session(&mut *tx, session_id).await? {
                        None => Error::new(
                            super::ErrorKind::NotFound,
                            format!("session `{session_id}` does not exist"),
                        ),
                        Some(_) => {
                            Error::conflict(format!("session `{session_id}` is already closed"))
                        }
                    }
                };
                return Ok(Answer::Event(Err(why)));
            }
            Ok(Answer::Event(Ok(chain.append(tx, event.clone()).await?)))
        }
        Work::AddSessionLabels {
            session_id,
            labels,
            event,
            now,
        } => add_session_labels(tx, chain, session_id, labels, event, *now)
            .await
            .map(Answer::Session),
        Work::RecordDecision(rec) => record_decision(tx, backend, chain, rec)
            .await
            .map(Answer::Recorded),
        Work::EngageKillSwitch { switch, event } => {
            if !sql::insert_kill_switch(tx, switch, &event.event_id).await? {
                let why = if sql::event_id_taken(tx, &event.event_id).await? {
                    event_id_conflict(&event.event_id)
                } else {
                    Error::conflict(format!("kill switch `{}` already exists", switch.id))
                };
                return Ok(Answer::Event(Err(why)));
            }
            let event = chain.append(tx, event.clone()).await?;
            announce(tx, backend, sql::KILL_SWITCH_CHANNEL, &switch.id).await?;
            Ok(Answer::Event(Ok(event)))
        }
        Work::ReleaseKillSwitch { id, release, now } => {
            let Some(released) = sql::release_kill_switch(tx, id, release).await? else {
                return Ok(Answer::Switch(Ok(None)));
            };
            let event = EventBody::for_kill_switch(
                EventKind::KillSwitchReleased,
                &released,
                &release.by,
                *now,
            );
            chain.append(tx, event).await?;
            announce(tx, backend, sql::KILL_SWITCH_CHANNEL, &released.id).await?;
            Ok(Answer::Switch(Ok(Some(released))))
        }
        Work::ExpireKillSwitches { now } => {
            let release = Release {
                by: EXPIRED_BY.to_owned(),
                at: *now,
                reason: EXPIRED_REASON.to_owned(),
            };
            let expired = sql::expire_kill_switches(tx, *now, &release).await?;
            for switch in &expired {
                let event = EventBody::for_kill_switch(
                    EventKind::KillSwitchExpired,
                    switch,
                    EXPIRED_BY,
                    *now,
                );
                chain.append(tx, event).await?;
                announce(tx, backend, sql::KILL_SWITCH_CHANNEL, &switch.id).await?;
            }
            Ok(Answer::Switches(Ok(expired)))
        }
        Work::VoteOnApproval { id, vote, now } => {
            vote_on_approval(tx, backend, chain, id, vote, *now)
                .await
                .map(|r| Answer::Vote(Ok(r)))
        }
        Work::ExpireApprovals { now } => {
            let expired = sql::expire_approvals(tx, *now).await?;
            for approval in &expired {
                let event = EventBody::for_approval(
                    EventKind::ApprovalExpired,
                    approval,
                    EXPIRED_BY,
                    *now,
                    serde_json::json!({}),
                );
                chain.append(tx, event).await?;
                announce(tx, backend, sql::APPROVAL_CHANNEL, &approval.id).await?;
            }
            Ok(Answer::Approvals(Ok(expired)))
        }
        Work::CancelApprovals {
            ids,
            by,
            reason,
            now,
        } => {
            let mut cancelled = Vec::new();
            for id in ids {
                if let Some(approval) = sql::cancel_approval(tx, id, *now).await? {
                    cancelled.push(approval);
                }
            }
            cancelled.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
            for approval in &cancelled {
                let event = EventBody::for_approval(
                    EventKind::ApprovalCancelled,
                    approval,
                    by,
                    *now,
                    serde_json::json!({ "reason": reason }),
                );
                chain.append(tx, event).await?;
                announce(tx, backend, sql::APPROVAL_CHANNEL, &approval.id).await?;
            }
            Ok(Answer::Approvals(Ok(cancelled)))
        }
    }
}

/// Tells every broker sharing a Postgres database that `id` (a switch, an approval) changed, on `channel`
/// (delivered at commit, never for a rolled-back change). SQLite has no such channel: brokers there poll.
async fn announce(
    conn: &mut AnyConnection,
    backend: Backend,
    channel: &str,
    id: &str,
) -> Result<(), Error> {
    match backend {
        Backend::Postgres => sql::notify(conn, channel, id).await,
        Backend::Sqlite => Ok(()),
    }
}

async fn record_decision(
    tx: &mut AnyConnection,
    backend: Backend,
    chain: &mut Chain,
    rec: &DecisionRecord,
) -> Result<Result<Recorded, Error>, Error> {
    let mut decision = rec.decision.clone();
    let check = sql::precheck_decision(
        tx,
        &decision.session_id,
        &rec.call.agent,
        &decision.call_id,
        &rec.call.event_id,
    )
    .await?;
    // (1) A call already committed under this key is answered as it was, without a new event or spend.
    if rec.remember {
        if let Some(earlier) = check.earlier {
            return Ok(earlier.map(Recorded::Replayed));
        }
    }
    if check.event_id_taken {
        return Ok(Err(event_id_conflict(&rec.call.event_id)));
    }
    if let Some(ApprovalWrite::Request { approval, .. }) = &rec.approval {
        if sql::approval_id_taken(tx, &approval.id).await? {
            return Ok(Err(Error::conflict(format!(
                "approval `{}` already exists",
                approval.id
            ))));
        }
    }
    // (1b) An ALLOW decided without some of the session's labels, or on a call count its policies read
    // and that has moved since, is decided again, nothing written.
    if rec.spend_budget
        && decision.is_allow()
        && (rec.labels_seen.is_some() || rec.calls_seen.is_some())
    {
        if let Some(session) = sql::fetch_session(&mut *tx, &decision.session_id).await? {
            if rec.labels_seen.is_some_and(|n| n != session.labels.len())
                || rec.calls_seen.is_some_and(|n| n != session.tool_calls_used)
            {
                return Ok(Ok(Recorded::Stale));
            }
        }
    }
    // (2) The budget is spent here, under the chain lock, so it holds across concurrent calls and replicas.
    let spent = rec.spend_budget && sql::spend_budget(tx, &decision.session_id, rec.now).await?;
    if rec.spend_budget && !spent && decision.is_allow() {
        let refusal = match sql::fetch_session(&mut *tx, &decision.session_id).await? {
            Some(session) => session.refusal(rec.now).unwrap_or_else(|| {
                Reason::new(
                    ReasonCode::BudgetExhausted,
                    format!("session `{}` cannot spend a tool call", session.id),
                )
            }),
            None => Reason::new(
                ReasonCode::SessionNotFound,
                format!("session `{}` does not exist", decision.session_id),
            ),
        };
        decision.overrule(refusal);
    }
    // (2b) An ALLOW the budget let through uses its approval, at most once: a conditional update, under
    // the chain lock. An approval that cannot be used overrules the ALLOW, which then spends nothing.
    let mut consumed = None;
    if let Some(ApprovalWrite::Consume {
        approval_id,
        arguments_digest,
    }) = &rec.approval
    {
        if decision.is_allow() {
            let consumption = sql::Consumption {
                approval_id,
                arguments_digest,
                session_id: &decision.session_id,
                tool: &decision.tool,
                decision_id: &decision.decision_id,
                now: rec.now,
            };
            consumed = sql::consume_approval(tx, &consumption).await?;
            if consumed.is_none() {
                decision.overrule(Reason::new(
                    ReasonCode::ApprovalUsed,
                    format!("approval `{approval_id}` was already used, or is no longer approved"),
                ));
                if spent {
                    sql::refund_budget(tx, &decision.session_id).await?;
                }
            }
        }
    }
    // (3) Remember the final decision, so a retry replays it.
    if rec.remember {
        sql::insert_tool_call(
            tx,
            &rec.call.agent,
            &rec.call.arguments_digest,
            &decision,
            rec.now,
        )
        .await?;
    }
    // (4) The event, in the chain.
    chain
        .append(tx, EventBody::for_decision(&decision, &rec.call))
        .await?;
    // (5) The approval's own record, after the decision that asked for or used it.
    if let Some(approval) = consumed {
        let event = EventBody::for_approval(
            EventKind::ApprovalConsumed,
            &approval,
            &rec.call.agent,
            rec.now,
            serde_json::json!({ "consumed_by": decision.decision_id }),
        );
        chain.append(tx, event).await?;
        announce(tx, backend, sql::APPROVAL_CHANNEL, &approval.id).await?;
    }
    if let Some(ApprovalWrite::Request {
        approval,
        arguments,
    }) = &rec.approval
    {
        let approval = Approval {
            status: ApprovalStatus::Pending,
            votes: Vec::new(),
            consumed_at: None,
            consumed_by: None,
            updated_at: rec.now,
            ..approval.clone()
        };
        let event = chain
            .append(tx, requested_event(&approval, rec.now))
            .await?;
        sql::insert_approval(tx, &approval, arguments, event.seq, rec.now).await?;
        announce(tx, backend, sql::APPROVAL_CHANNEL, &approval.id).await?;
    }
    Ok(Ok(Recorded::Committed(decision)))
}

/// A new session, in the writer's transaction: it starts with the labels its principal carries, and
/// shares those it starts with (its parent's among them) with the principal's other open sessions.
async fn open_session(
    tx: &mut AnyConnection,
    chain: &mut Chain,
    session: &Session,
    event: &EventBody,
    carry_over: Duration,
) -> Result<Result<Box<(AuditEvent, Session)>, Error>, Error> {
    let now = session.created_at;
    let mut session = session.clone();
    let carried = super::taint::carried(tx, &session, carry_over, now).await?;
    session.labels = sorted_union(&session.labels, &carried);
    if !sql::insert_session(tx, &session, &event.event_id).await? {
        let why = if sql::event_id_taken(tx, &event.event_id).await? {
            event_id_conflict(&event.event_id)
        } else {
            Error::conflict(format!("session `{}` already exists", session.id))
        };
        return Ok(Err(why));
    }
    let shared = super::taint::share(tx, &session, &session.labels, now).await?;
    let mut event = event.clone();
    if !session.ancestors.is_empty() || !carried.is_empty() || !shared.is_empty() {
        // Where its labels and its place in a lineage came from, in the trail.
        let mut detail = detail_object(event.detail.as_deref());
        detail.insert("ancestors".into(), serde_json::json!(session.ancestors));
        detail.insert("labels".into(), serde_json::json!(session.labels));
        detail.insert("labels_carried".into(), serde_json::json!(carried));
        if !shared.is_empty() {
            detail.insert("labels_shared_with".into(), serde_json::json!(shared));
        }
        event.detail = Some(serde_json::Value::Object(detail).to_string());
    }
    let event = chain.append(tx, event).await?;
    Ok(Ok(Box::new((event, session))))
}

/// An event's detail as a JSON object to add to (an absent or non-object detail is kept under `detail`).
fn detail_object(detail: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    match detail.map(serde_json::from_str::<serde_json::Value>) {
        None => serde_json::Map::new(),
        Some(Ok(serde_json::Value::Object(m))) => m,
        Some(Ok(other)) => serde_json::Map::from_iter([("detail".to_owned(), other)]),
        Some(Err(_)) => serde_json::Map::from_iter([(
            "detail".to_owned(),
            serde_json::Value::String(detail.unwrap_or_default().to_owned()),
        )]),
    }
}

/// Labels added to a session, in the writer's transaction: the session read here cannot change before
/// this commits (every write to it takes the chain lock), so the union loses no label added concurrently,
/// on any broker. They are the principal's too (`store::taint`): held for its next sessions, and copied
/// to its other open ones, which the event then names.
async fn add_session_labels(
    tx: &mut AnyConnection,
    chain: &mut Chain,
    session_id: &str,
    labels: &[String],
    event: &EventBody,
    now: Micros,
) -> Result<Result<Option<Session>, Error>, Error> {
    let Some(mut session) = sql::fetch_session(&mut *tx, session_id).await? else {
        return Ok(Ok(None));
    };
    if sql::event_id_taken(tx, &event.event_id).await? {
        return Ok(Err(event_id_conflict(&event.event_id)));
    }
    let union = sorted_union(&session.labels, labels);
    if union != session.labels {
        if !sql::set_session_labels(tx, session_id, &union).await? {
            return Err(Error::internal(format!(
                "session `{session_id}` disappeared while its labels were added"
            )));
        }
        session.labels = union;
    }
    let shared = super::taint::share(tx, &session, labels, now).await?;
    let mut event = event.clone();
    if !shared.is_empty() {
        let mut detail = detail_object(event.detail.as_deref());
        detail.insert("labels_shared_with".into(), serde_json::json!(shared));
        event.detail = Some(serde_json::Value::Object(detail).to_string());
    }
    chain.append(tx, event).await?;
    Ok(Ok(Some(session)))
}

/// A vote, in the writer's transaction: what it reads (the approval and every vote so far) cannot change
/// before it commits, on any broker.
async fn vote_on_approval(
    tx: &mut AnyConnection,
    backend: Backend,
    chain: &mut Chain,
    id: &str,
    vote: &VoteRecord,
    now: Micros,
) -> Result<VoteResult, Error> {
    let Some(mut approval) = sql::fetch_approval(&mut *tx, id).await? else {
        return Ok(VoteResult::NotFound);
    };
    // The same check as before the vote, now with every vote so far: two tokens of one person voting at
    // once on two brokers meet here, one after the other.
    if let Err(refusal) = approval.check_voter(vote, now) {
        return Ok(VoteResult::Refused(refusal));
    }
    if !sql::insert_vote(tx, id, vote).await? {
        return Ok(VoteResult::Refused(Refusal::AlreadyVoted));
    }
    approval.votes.push(vote.clone());
    approval
        .votes
        .sort_by(|a, b| (a.at, &a.approver).cmp(&(b.at, &b.approver)));
    approval.updated_at = now;
    let status = approval.status_after_votes();
    if !sql::settle_vote(tx, id, status, now).await? {
        // `check_voter` saw it pending, under the lock every approval write takes.
        return Err(Error::internal(format!(
            "approval `{id}` stopped being pending during a vote"
        )));
    }
    let voted = EventBody::for_approval(
        EventKind::ApprovalVoted,
        &approval,
        &vote.approver,
        now,
        serde_json::json!({ "vote": vote.vote.as_str(), "comment": vote.comment, "person": vote.person }),
    );
    chain.append(tx, voted).await?;
    if status != approval.status {
        approval.status = status;
        let kind = match status {
            ApprovalStatus::Approved => EventKind::ApprovalApproved,
            ApprovalStatus::Denied => EventKind::ApprovalDenied,
            other => {
                return Err(Error::internal(format!(
                    "votes cannot make approval `{id}` {}",
                    other.as_str()
                )))
            }
        };
        let settled =
            EventBody::for_approval(kind, &approval, &vote.approver, now, serde_json::json!({}));
        chain.append(tx, settled).await?;
    }
    announce(tx, backend, sql::APPROVAL_CHANNEL, id).await?;
    Ok(VoteResult::Counted(approval))
}

pub(super) fn event_id_conflict(event_id: &str) -> Error {
    Error::conflict(format!("event `{event_id}` is already in the audit trail"))
}
