//! Postgres's batches of plain decisions on a connection of their own (tokio-postgres), pipelined: a
//! batch is one round trip while the writer knows what its reads would return (see [`Known`] below),
//! otherwise two, the start of its transaction with every read, then its writes with the commit.
//!
//! sqlx sends one statement and waits for its answer before the next, so a batch was four round trips
//! (BEGIN with the chain lock, the reads, the writes, COMMIT), and on a loaded two-core machine each one
//! also waited for a core. tokio-postgres sends requests polled together without waiting in between, and
//! binds arrays in the binary format, so the rows no longer travel as JSON text that Postgres parses
//! again (a fifth of its CPU under load).
//!
//! Sending the COMMIT behind the writes is sound because every check the commit depends on is made by
//! the database inside the write statement: a statement that fails aborts the transaction, and the
//! COMMIT that follows it then rolls back. Migration `20250601000000_broker_require` adds `broker_require`,
//! which fails the statement when the writes do not match what the batch applied.
//!
//! When the writer knows what the reads would return, because every append since it last read was its
//! own, a batch is ONE round trip: the transaction's start, the writes and the commit sent together
//! ([`Known`]). The write statement makes the database check that knowledge (the chain head it links to
//! is still the last event, no call it remembers was remembered before, no event id is taken); when the
//! database disagrees, the statement fails, the COMMIT behind it rolls back, and the batch is read and
//! written again the two-round-trip way.
//!
//! What a batch decides is `decisions::apply`, shared with the sqlx path. Batches holding anything else
//! (sessions, kill switches, approvals) still go through sqlx; the writer task runs one batch at a time
//! and closes this connection's open transaction before one of those, so the two never wait on each
//! other's chain lock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Connection, Row, SimpleQueryMessage, Socket, Statement};

use super::bulk::{event_rows, tool_call_rows, CallKey, EVENT_TYPES};
use super::decisions::{self, Found, Wanted, Writes};
use super::pg_tls::{HandshakeError, MakeRustls, RustlsStream, Tls};
use super::sql::{
    session_row, stored_call, ChainHead, CHAIN_HEAD_SQL, CHAIN_LOCK_KEY, EVENT_COLUMNS,
    SESSION_COLUMNS,
};
use super::writer::{fail_after_commit, fail_before_commit, pg_lock, Chain, PG_PLANNER_SETTINGS};
use super::{Backend, DecisionRecord, Error, Recorded, RecordedCall};
use crate::domain::session::Session;

type Answers = Vec<Result<Recorded, Error>>;

/// A committed batch's answers and the chain head it left.
type Committed = (Answers, Option<ChainHead>);

/// The writer task's Postgres connection for plain batches: connected at the first batch, and again
/// after any batch that failed (a failed batch's connection is closed, which rolls it back).
pub(crate) struct PgWriter {
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` asks (plaintext connections keep the raw socket, as with `NoTls`).
    tls: MakeRustls,
    /// `sslmode=...`, for connection errors.
    tls_label: String,
    /// Run once per connection: the pool's per-connection settings.
    settings: String,
    live: Option<Live>,
}

struct Live {
    client: Client,
    /// Driven only while the writer awaits an answer, by the writer's own task ([`drive`]): a task of its
    /// own would add two wake-ups across threads to every round trip. Dropped, it closes the connection,
    /// and the database rolls back whatever it had open.
    connection: Connection<Socket, RustlsStream>,
    statements: Statements,
    /// How far the next transaction has started (a chained commit begins it).
    next: Begun,
    known: Known,
}

/// What the database holds because this writer committed it: the chain head after its last commit, and
/// the sessions its batches read (under the chain lock) or spent since. Every session change appends an
/// event under the chain lock, in the same transaction (a decision, a close, labels, a refund beside an
/// approval), so while the head is the one this writer left, no session changed behind its back. The
/// write statement checks that head; a batch on any other connection (the pool's, for mixed batches)
/// makes the writer forget what it knew.
#[derive(Default)]
struct Known {
    head: Option<ChainHead>,
    sessions: HashMap<String, Session>,
}

/// Sessions remembered at most; past it the writer forgets them all and reads again.
const KNOWN_SESSIONS_MAX: usize = 4096;

impl Known {
    fn forget(&mut self) {
        self.head = None;
        self.sessions.clear();
    }

    /// What the batch's reads would find, when all of it is known: the head, the spenders' sessions, and
    /// no remembered call or taken event id (when there is one, the write fails and the batch is read).
    fn found(&self, wanted: &Wanted<'_>) -> Option<(ChainHead, Found)> {
        let head = self.head.clone()?;
        let sessions = wanted
            .spenders
            .iter()
            .map(|id| self.sessions.get(*id).map(|s| (s.id.clone(), s.clone())))
            .collect::<Option<HashMap<_, _>>>()?;
        Some((
            head,
            Found {
                remembered: HashMap::new(),
                taken: HashSet::new(),
                sessions,
            },
        ))
    }

    /// After a commit that left the chain at `head`: `read`, the sessions read under its lock, and the
    /// counts it wrote.
    fn learn(
        &mut self,
        head: Option<ChainHead>,
        read: HashMap<String, Session>,
        used: &[(String, u32)],
    ) {
        if self.sessions.len() + read.len() > KNOWN_SESSIONS_MAX {
            self.sessions.clear();
        }
        self.head = head;
        self.sessions.extend(read);
        for (id, n) in used {
            match self.sessions.get_mut(id) {
                Some(s) => s.tool_calls_used = *n,
                // Spent, so read: not knowing it would be a bug; reading again is the safe answer.
                None => self.forget(),
            }
        }
    }
}

/// How a batch's writes and commit ended, when the connection still answers.
enum Written {
    /// Committed; how far the next transaction has started.
    Committed(Begun),
    /// The write statement failed, and the COMMIT behind it rolled the transaction back.
    Refused(Error, Begun),
}

/// How far the next transaction has started on this connection: a commit that finds more jobs waiting
/// begins the next transaction in the same round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begun {
    No,
    /// Open, but without the chain lock (another broker had it).
    Unlocked,
    /// Open, holding the chain lock.
    Locked,
}

struct Statements {
    head: Statement,
    calls: Statement,
    taken: Statement,
    sessions: Statement,
    write: Statement,
}

impl PgWriter {
    /// Reads the connection settings from `url`, a URL without its TLS parameters, which `tls` holds
    /// (connecting waits for the first batch: the migrations that create what its statements use run
    /// after the store connects).
    pub(crate) fn new(
        url: &str,
        tls: &Arc<Tls>,
        connect_timeout: Duration,
        settings: &[String],
    ) -> Result<Self, Error> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            Error::invalid(format!(
                "store.database_url cannot be used by the audit writer's connection: {}",
                e.to_string().to_lowercase()
            ))
        })?;
        config.connect_timeout(connect_timeout);
        config.application_name("agent-broker audit writer");
        config.ssl_mode(tls.driver_mode());
        Ok(Self {
            config,
            tls: tls.connector(),
            tls_label: tls.label().to_owned(),
            // Its statements are prepared once and run for every batch; planned anew each time (a custom
            // plan for each set of arrays) they cost the database more than they run. The planner
            // settings the pool's transactions set with `SET LOCAL` hold here for the connection, which
            // runs nothing but these statements.
            settings: settings
                .iter()
                .cloned()
                .chain(PG_PLANNER_SETTINGS.iter().map(|s| format!("SET {s}")))
                .chain(["SET plan_cache_mode = force_generic_plan".to_owned()])
                .collect::<Vec<_>>()
                .join("; "),
            live: None,
        })
    }

    /// Records `recs` in one transaction, answered after its commit. `more_waiting` is asked just before
    /// the commit: when true, the commit also begins the next transaction. Past `deadline` the batch is
    /// answered `Timeout` and its connection closed (the transaction rolls back unless its COMMIT had
    /// already reached the database).
    pub(crate) async fn record(
        &mut self,
        recs: &[&DecisionRecord],
        deadline: tokio::time::Instant,
        more_waiting: &(dyn Fn() -> bool + Sync),
    ) -> Result<Committed, Error> {
        let outcome =
            tokio::time::timeout_at(deadline, self.transact(recs, deadline, more_waiting)).await;
        match outcome {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(e)) => {
                self.live = None;
                Err(e)
            }
            Err(_) => {
                self.live = None;
                Err(Error::timeout(
                    "audit transaction did not finish in time (postgres)",
                ))
            }
        }
    }

    /// Connects now rather than at the first batch: for tests of the connection's settings (TLS).
    pub(crate) async fn connect_now(&mut self) -> Result<(), Error> {
        if self.live.is_none() {
            let live = Live::connect(&self.config, &self.tls, &self.tls_label, &self.settings);
            self.live = Some(live.await?);
        }
        Ok(())
    }

    /// Ends the transaction a chained commit left open (it holds nothing yet, or only the chain lock),
    /// before the writer's other connection needs the lock. A connection that cannot, by `deadline`, is
    /// closed (which ends the transaction too).
    pub(crate) async fn release(&mut self, deadline: tokio::time::Instant) {
        if let Some(live) = self.live.as_mut() {
            // The mixed batch about to run appends to the chain and may change sessions.
            live.known.forget();
        }
        let Some(live) = self.live.as_mut().filter(|l| l.next != Begun::No) else {
            return;
        };
        let rollback = drive(&mut live.connection, live.client.batch_execute("ROLLBACK"));
        match tokio::time::timeout_at(deadline, rollback).await {
            Ok(Ok(Ok(()))) => live.next = Begun::No,
            _ => self.live = None,
        }
    }

    async fn transact(
        &mut self,
        recs: &[&DecisionRecord],
        deadline: tokio::time::Instant,
        more_waiting: &(dyn Fn() -> bool + Sync),
    ) -> Result<Committed, Error> {
        self.connect_now().await?;
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| Error::internal("the postgres audit writer lost its connection"))?;
        let wanted = Wanted::of(recs);
        if let Some((head, found)) = live.known.found(&wanted) {
            let mut chain = Chain::start(Some(head.clone()), Backend::Postgres);
            let (answers, writes) = decisions::apply(&mut chain, recs, found)?;
            before_commit(deadline)?;
            let start = live.start();
            match live
                .write_and_commit(start.as_deref(), &writes, Some(&head), more_waiting())
                .await?
            {
                Written::Committed(next) => {
                    live.next = next;
                    live.known.learn(chain.head(), HashMap::new(), &writes.used);
                    fail_after_commit()?;
                    return Ok((answers, chain.head()));
                }
                Written::Refused(e, next) => {
                    // Rolled back: the database is not as this writer knew it (another broker appended, a
                    // call is a retry, an event id is taken) or refused the write. Read, and try again.
                    tracing::debug!(error = %e, "audit batch read again: the database differs from what the writer knew");
                    live.next = next;
                    live.known.forget();
                }
            }
        }
        let start = live.start();
        let (head, found) = live.read(start.as_deref(), &wanted).await?;
        if head.is_none() || live.known.head != head {
            // Someone else appended since this writer's last commit: what it knew of sessions may be old.
            live.known.forget();
        }
        let read = found.sessions.clone();
        let mut chain = Chain::start(head.clone(), Backend::Postgres);
        let (answers, writes) = decisions::apply(&mut chain, recs, found)?;
        before_commit(deadline)?;
        match live
            .write_and_commit(None, &writes, head.as_ref(), more_waiting())
            .await?
        {
            Written::Committed(next) => {
                live.next = next;
                live.known.learn(chain.head(), read, &writes.used);
            }
            // Read under the chain lock, yet refused: a failure, not a difference to resolve.
            Written::Refused(e, _) => return Err(e),
        }
        fail_after_commit()?;
        Ok((answers, chain.head()))
    }
}

/// Just before a batch's commit is sent: the fail point, and the deadline (the commit goes out with the
/// writes, so a batch whose callers were told `Timeout` is not sent on).
fn before_commit(deadline: tokio::time::Instant) -> Result<(), Error> {
    fail_before_commit()?;
    if tokio::time::Instant::now() >= deadline {
        return Err(Error::timeout(
            "audit transaction did not reach its commit in time (postgres)",
        ));
    }
    Ok(())
}

impl Live {
    async fn connect(
        config: &tokio_postgres::Config,
        tls: &MakeRustls,
        tls_label: &str,
        settings: &str,
    ) -> Result<Live, Error> {
        let (client, mut connection) = config
            .connect(tls.clone())
            .await
            .map_err(|e| connect_error(e, tls_label))?;
        let prepared = drive(&mut connection, async {
            client.batch_execute(settings).await?;
            Ok(Statements {
                head: client.prepare(CHAIN_HEAD_SQL).await?,
                calls: client.prepare(CALLS_SQL).await?,
                taken: client.prepare(TAKEN_SQL).await?,
                sessions: client
                    .prepare(&format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ANY($1::text[])"
                    ))
                    .await?,
                write: client.prepare(&write_sql()).await?,
            })
        })
        .await?;
        Ok(Live {
            statements: prepared.map_err(pg)?,
            client,
            connection,
            next: Begun::No,
            known: Known::default(),
        })
    }

    /// What the next transaction still needs sent before its first statement: its start and the chain
    /// lock, or only the lock, or nothing (a chained commit began it and took the lock).
    fn start(&self) -> Option<String> {
        match self.next {
            Begun::No => Some(format!("BEGIN; {}", pg_lock())),
            Begun::Unlocked => Some(pg_lock()),
            Begun::Locked => None,
        }
    }

    /// `start` (the transaction's beginning and the chain lock, when not yet taken) and every read of
    /// the batch, sent together: one round trip.
    async fn read(
        &mut self,
        start: Option<&str>,
        wanted: &Wanted<'_>,
    ) -> Result<(Option<ChainHead>, Found), Error> {
        let Live {
            client: c,
            connection,
            statements: st,
            ..
        } = self;
        let (sessions_of, agents, call_ids): (Vec<&str>, Vec<&str>, Vec<&str>) = wanted
            .keys
            .iter()
            .map(|(s, a, c)| (s.as_str(), a.as_str(), c.as_str()))
            .fold(
                (vec![], vec![], vec![]),
                |(mut s, mut a, mut c), (x, y, z)| {
                    s.push(x);
                    a.push(y);
                    c.push(z);
                    (s, a, c)
                },
            );
        // Polled together, in this order: each request is sent on its first poll, before any answer is
        // awaited (`join5` polls in order).
        let begin = send_start(c, start);
        let call_params: [&(dyn ToSql + Sync); 3] = [&sessions_of, &agents, &call_ids];
        let event_ids: [&(dyn ToSql + Sync); 1] = [&wanted.event_ids];
        let spenders: [&(dyn ToSql + Sync); 1] = [&wanted.spenders];
        let head = c.query_opt(&st.head, &[]);
        let calls = c.query(&st.calls, &call_params);
        let taken = c.query(&st.taken, &event_ids);
        let sessions = c.query(&st.sessions, &spenders);
        let (begun, head, calls, taken, sessions) = drive(
            connection,
            futures::future::join5(begin, head, calls, taken, sessions),
        )
        .await?;
        begun.map_err(pg)?;
        let head = head
            .map_err(pg)?
            .map(|row| {
                Ok::<_, Error>(ChainHead {
                    seq: get(&row, "seq")?,
                    hash: get(&row, "hash")?,
                })
            })
            .transpose()?;
        let mut remembered: HashMap<CallKey, Result<RecordedCall, Error>> = HashMap::new();
        for row in calls.map_err(pg)? {
            let key = (
                get(&row, "session_id")?,
                get(&row, "agent")?,
                get(&row, "call_id")?,
            );
            let decision: String = get(&row, "decision")?;
            remembered.insert(key, stored_call(get(&row, "arguments_digest")?, &decision));
        }
        let taken: HashSet<String> = taken
            .map_err(pg)?
            .iter()
            .map(|row| get(row, "event_id"))
            .collect::<Result<_, _>>()?;
        let mut found_sessions: HashMap<String, Session> = HashMap::new();
        for row in sessions.map_err(pg)? {
            let s = session_from_row(&row)?;
            found_sessions.insert(s.id.clone(), s);
        }
        Ok((
            head,
            Found {
                remembered,
                taken,
                sessions: found_sessions,
            },
        ))
    }

    /// `start` (when the transaction is not yet begun and locked), the writes and the commit, sent
    /// together: one round trip. The write fails unless the chain's last event is `head` (`None`: the
    /// chain is empty) and every call it remembers is new. With `chain`, the commit also begins the next
    /// transaction and tries for the chain lock without waiting. `Err`: the connection or its start
    /// failed, or the commit did not answer.
    async fn write_and_commit(
        &mut self,
        start: Option<&str>,
        writes: &Writes<'_>,
        head: Option<&ChainHead>,
        chain: bool,
    ) -> Result<Written, Error> {
        let Live {
            client: c,
            connection,
            statements,
            ..
        } = self;
        let used_ids: Vec<&str> = writes.used.iter().map(|(id, _)| id.as_str()).collect();
        let used_n: Vec<i64> = writes.used.iter().map(|(_, n)| i64::from(*n)).collect();
        let calls = tool_call_rows(&writes.calls)?;
        let events = event_rows(&writes.events)?;
        let call_session: Vec<&str> = calls.iter().map(|r| r.session_id).collect();
        let call_agent: Vec<&str> = calls.iter().map(|r| r.agent).collect();
        let call_id: Vec<&str> = calls.iter().map(|r| r.call_id).collect();
        let call_digest: Vec<&str> = calls.iter().map(|r| r.arguments_digest).collect();
        let call_decision: Vec<&str> = calls.iter().map(|r| r.decision).collect();
        let call_at: Vec<i64> = calls.iter().map(|r| r.recorded_at).collect();
        let seq: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let event_id: Vec<&str> = events.iter().map(|e| e.event_id).collect();
        let time: Vec<i64> = events.iter().map(|e| e.time).collect();
        let kind: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let agent: Vec<&str> = events.iter().map(|e| e.agent).collect();
        let user_id: Vec<Option<&str>> = events.iter().map(|e| e.user_id).collect();
        let session_id: Vec<Option<&str>> = events.iter().map(|e| e.session_id).collect();
        let decision_id: Vec<Option<&str>> = events.iter().map(|e| e.decision_id).collect();
        let tool: Vec<Option<&str>> = events.iter().map(|e| e.tool).collect();
        let event_call_id: Vec<Option<&str>> = events.iter().map(|e| e.call_id).collect();
        let outcome: Vec<Option<&str>> = events.iter().map(|e| e.outcome).collect();
        let reasons: Vec<&str> = events.iter().map(|e| e.reasons.as_str()).collect();
        let policy_version: Vec<Option<&str>> = events.iter().map(|e| e.policy_version).collect();
        let arguments_digest: Vec<Option<&str>> =
            events.iter().map(|e| e.arguments_digest).collect();
        let arguments_redacted: Vec<Option<&str>> =
            events.iter().map(|e| e.arguments_redacted).collect();
        let detail: Vec<Option<&str>> = events.iter().map(|e| e.detail).collect();
        let prev_hash: Vec<&str> = events.iter().map(|e| e.prev_hash).collect();
        let hash: Vec<&str> = events.iter().map(|e| e.hash).collect();
        let used_count = i64::try_from(used_ids.len()).unwrap_or(i64::MAX);
        let event_count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let call_count = i64::try_from(calls.len()).unwrap_or(i64::MAX);
        let head_seq: Option<i64> = head.map(|h| h.seq);
        let head_hash: Option<&str> = head.map(|h| h.hash.as_str());
        let params: [&(dyn ToSql + Sync); 31] = [
            &used_ids,
            &used_n,
            &call_session,
            &call_agent,
            &call_id,
            &call_digest,
            &call_decision,
            &call_at,
            &seq,
            &event_id,
            &time,
            &kind,
            &agent,
            &user_id,
            &session_id,
            &decision_id,
            &tool,
            &event_call_id,
            &outcome,
            &reasons,
            &policy_version,
            &arguments_digest,
            &arguments_redacted,
            &detail,
            &prev_hash,
            &hash,
            &used_count,
            &event_count,
            &head_seq,
            &head_hash,
            &call_count,
        ];
        let commit = if chain {
            format!(
                "COMMIT; BEGIN; SELECT pg_try_advisory_xact_lock({}) AS locked",
                CHAIN_LOCK_KEY
            )
        } else {
            "COMMIT".to_owned()
        };
        // In this order: when the write fails, the transaction is aborted and the COMMIT behind it rolls
        // back (its answer is then not an error, so the write's is the one that counts). The order holds
        // because the write is a prepared `Statement`, sent on its first poll: given SQL text, the client
        // would prepare it in a round trip of its own first, and the COMMIT would overtake it (test
        // `postgres_a_refused_write_rolls_back_the_commit_sent_behind_it`).
        let begin = send_start(c, start);
        let (begun, written, committed) = drive(
            connection,
            futures::future::join3(
                begin,
                c.execute(&statements.write, &params),
                c.simple_query(&commit),
            ),
        )
        .await?;
        begun.map_err(pg)?;
        let committed = committed.map_err(pg)?;
        let next = if !chain {
            Begun::No
        } else if committed.iter().any(|m| match m {
            SimpleQueryMessage::Row(row) => row.get("locked") == Some("t"),
            _ => false,
        }) {
            Begun::Locked
        } else {
            Begun::Unlocked
        };
        Ok(match written {
            Ok(_) => Written::Committed(next),
            Err(e) => Written::Refused(pg(e), next),
        })
    }
}

/// Sends `start` (the transaction's beginning and the chain lock, as far as not yet sent); nothing is
/// sent before its first poll, so polled first, it goes out ahead of the batch's statements.
async fn send_start(c: &Client, start: Option<&str>) -> Result<(), tokio_postgres::Error> {
    match start {
        Some(sql) => c.batch_execute(sql).await,
        None => Ok(()),
    }
}

/// Runs `work` (requests on the connection's client) while driving `connection`, which sends them and
/// routes the answers back. Fails when the connection ends first.
async fn drive<F: Future>(
    connection: &mut Connection<Socket, RustlsStream>,
    work: F,
) -> Result<F::Output, Error> {
    tokio::select! {
        biased;
        out = work => Ok(out),
        ended = connection => Err(match ended {
            Ok(()) => Error::unavailable("the postgres audit writer's connection closed"),
            Err(e) => pg(e),
        }),
    }
}

const CALLS_SQL: &str = "SELECT t.session_id, t.agent, t.call_id, t.arguments_digest, t.decision \
     FROM unnest($1::text[], $2::text[], $3::text[]) AS k(s, a, c) \
     JOIN tool_calls t ON t.session_id = k.s AND t.agent = k.a AND t.call_id = k.c";

const TAKEN_SQL: &str = "SELECT event_id FROM audit_events WHERE event_id = ANY($1::text[])";

/// The batch's writes in one statement: the sessions' new counts, the calls to remember, the events;
/// then `broker_require` fails the statement (so the transaction, so the COMMIT sent behind it) unless
/// every session was updated, every call remembered anew and every event stored, linked to the chain's
/// last event as it was before the statement ($29 and $30; both NULL for an empty chain).
fn write_sql() -> String {
    let event_params: Vec<String> = EVENT_TYPES
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::{t}[]", i + 9))
        .collect();
    format!(
        "WITH used AS (\
             UPDATE sessions SET tool_calls_used = u.n FROM unnest($1::text[], $2::int8[]) AS u(id, n) \
             WHERE sessions.id = u.id RETURNING 1), \
         calls AS (\
             INSERT INTO tool_calls (session_id, agent, call_id, arguments_digest, decision, recorded_at) \
             SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int8[]) \
             ON CONFLICT (session_id, agent, call_id) DO NOTHING RETURNING 1), \
         events AS (\
             INSERT INTO audit_events ({EVENT_COLUMNS}) SELECT * FROM unnest({}) RETURNING 1) \
         SELECT broker_require(\
             (SELECT count(*) FROM used) = $27 AND (SELECT count(*) FROM events) = $28 \
             AND (SELECT count(*) FROM calls) = $31 \
             AND (SELECT max(seq) FROM audit_events) IS NOT DISTINCT FROM $29::int8 \
             AND ($29::int8 IS NULL OR (SELECT hash FROM audit_events WHERE seq = $29::int8) = $30::text), \
             'the audit batch''s writes do not match the database (chain head, sessions, remembered calls or events)')",
        event_params.join(", ")
    )
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, Error> {
    row.try_get(name)
        .map_err(|e| Error::corrupt(format!("column `{name}`: {}", e.to_string().to_lowercase())))
}

fn session_from_row(row: &Row) -> Result<Session, Error> {
    session_row!(get, row).into_session()
}

/// A failed connect, naming `sslmode` when TLS is involved: the handshake's own message as it is (it
/// names the parameter, the host, the CA file), anything else classified as usual.
fn connect_error(err: tokio_postgres::Error, tls_label: &str) -> Error {
    use std::error::Error as _;
    if let Some(handshake) = err
        .source()
        .and_then(|s| s.downcast_ref::<HandshakeError>())
    {
        return Error::unavailable(format!("audit writer's connection: {}", handshake.0));
    }
    let e = pg(err);
    match e.message().contains("tls") {
        true => Error::new(
            e.kind(),
            format!(
                "store.database_url {tls_label}: audit writer's connection: {}",
                e.message()
            ),
        ),
        false => e,
    }
}

fn pg(err: tokio_postgres::Error) -> Error {
    Error::from_tokio_postgres(err)
}
