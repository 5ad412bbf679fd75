//! SQLite's batches of plain decisions, each in ONE blocking call on a thread and a connection of their
//! own (rusqlite, over the same SQLite library that sqlx links).
//!
//! Through sqlx every statement of a batch was a hand-off to sqlx's SQLite worker thread and back (BEGIN,
//! the head, three reads, the writes, COMMIT), and its rows travelled as JSON that SQLite parsed again.
//! That worker thread was half of the broker's CPU samples under load, and on a busy machine each
//! hand-off also waited for a core. Here the writer task hands a batch over once, and prepared statements
//! bind each row's values.
//!
//! What a batch decides is `decisions::apply`, shared with the sqlx path; only the reads and writes are
//! here. Batches holding anything else (sessions, kill switches, approvals) still go through sqlx. The
//! writer task runs one batch at a time, so its two connections never hold the write lock at once.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use rusqlite::{params, Connection, InterruptHandle, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::bulk::{event_rows, tool_call_rows, CallKey};
use super::decisions::{self, Found, Wanted, Writes};
use super::sql::{
    session_by_id_sql, session_row, stored_call, ChainHead, CHAIN_HEAD_SQL, EVENT_COLUMNS,
    RECORDED_CALL_SQL,
};
use super::writer::{fail_after_commit, fail_before_commit, Chain};
use super::{Backend, DecisionRecord, Error, Recorded, RecordedCall};
use crate::domain::session::Session;

type Answers = Vec<Result<Recorded, Error>>;

/// A committed batch's answers and the chain head it left.
type Committed = (Answers, Option<ChainHead>);

struct Batch {
    recs: Vec<DecisionRecord>,
    /// Work not started by then is refused: its caller has been answered `Timeout` already.
    deadline: Instant,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

/// The writer task's handle on the thread. The thread stops when this is dropped.
pub(crate) struct SqliteWriter {
    batches: std_mpsc::Sender<Batch>,
    interrupt: InterruptHandle,
}

impl SqliteWriter {
    /// Opens the connection (the file must exist) with `settings` (the pool's per-connection pragmas)
    /// and starts the thread.
    pub(crate) fn start(path: &str, settings: &[String]) -> Result<SqliteWriter, Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(Error::from_rusqlite)?;
        for statement in settings {
            conn.execute_batch(statement)
                .map_err(Error::from_rusqlite)?;
        }
        let interrupt = conn.get_interrupt_handle();
        let (batches, queue) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("audit-sqlite".to_owned())
            .spawn(move || serve(conn, queue))
            .map_err(|e| Error::internal(format!("cannot start the sqlite audit writer: {e}")))?;
        Ok(SqliteWriter { batches, interrupt })
    }

    /// Records `recs` in one transaction, answered after its commit. Past `deadline`, the statement
    /// running is interrupted (the transaction rolls back) and the batch is answered `Timeout`.
    pub(crate) async fn record(
        &self,
        recs: Vec<DecisionRecord>,
        deadline: tokio::time::Instant,
    ) -> Result<Committed, Error> {
        let (reply, answer) = oneshot::channel();
        let batch = Batch {
            recs,
            deadline: deadline.into_std(),
            reply,
        };
        self.batches
            .send(batch)
            .map_err(|_| Error::internal("the sqlite audit writer thread has stopped"))?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(_)) => Err(Error::internal(
                "the sqlite audit writer thread dropped a batch",
            )),
            Err(_) => {
                // Stops the statement running, if any (the transaction rolls back); harmless when none
                // is: SQLite clears the flag when the next statement starts. The thread also checks the
                // deadline before its commit.
                self.interrupt.interrupt();
                Err(Error::timeout(
                    "audit transaction did not finish in time (sqlite)",
                ))
            }
        }
    }
}

fn serve(conn: Connection, queue: std_mpsc::Receiver<Batch>) {
    while let Ok(batch) = queue.recv() {
        let result = if Instant::now() >= batch.deadline {
            Err(Error::timeout(
                "audit batch waited past its deadline for the sqlite writer",
            ))
        } else {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                transact(&conn, &batch.recs, batch.deadline)
            }))
            .unwrap_or_else(|_| {
                Err(Error::internal(
                    "the sqlite audit writer failed unexpectedly",
                ))
            })
        };
        if result.is_err() && !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %Error::from_rusqlite(e), "sqlite audit writer could not roll back");
            }
        }
        let _ = batch.reply.send(result);
    }
}

fn transact(
    conn: &Connection,
    recs: &[DecisionRecord],
    deadline: Instant,
) -> Result<Committed, Error> {
    let lite = Error::from_rusqlite;
    // IMMEDIATE: the write lock now, so the head read below is the one we append to.
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
        .map_err(lite)?;
    let mut chain = Chain::start(chain_head(conn)?, Backend::Sqlite);
    let recs: Vec<&DecisionRecord> = recs.iter().collect();
    let wanted = Wanted::of(&recs);
    let found = Found {
        remembered: recorded_calls(conn, &wanted)?,
        taken: taken_event_ids(conn, &wanted)?,
        sessions: sessions(conn, &wanted)?,
    };
    let (answers, writes) = decisions::apply(&mut chain, &recs, found)?;
    write(conn, &writes)?;
    fail_before_commit()?;
    // The writer's interrupt stops a statement that is running; one sent between statements is lost (SQLite
    // clears it when the next statement starts). So a batch whose callers were told `Timeout` is not
    // committed late either, as far as it can be helped.
    if Instant::now() >= deadline {
        return Err(Error::timeout(
            "audit transaction did not reach its commit in time (sqlite)",
        ));
    }
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map_err(lite)?;
    fail_after_commit()?;
    Ok((answers, chain.head()))
}

fn chain_head(conn: &Connection) -> Result<Option<ChainHead>, Error> {
    let mut head = conn
        .prepare_cached(CHAIN_HEAD_SQL)
        .map_err(Error::from_rusqlite)?;
    head.query_row([], |row| {
        Ok(ChainHead {
            seq: row.get("seq")?,
            hash: row.get("hash")?,
        })
    })
    .optional()
    .map_err(Error::from_rusqlite)
}

fn recorded_calls(
    conn: &Connection,
    wanted: &Wanted<'_>,
) -> Result<HashMap<CallKey, Result<RecordedCall, Error>>, Error> {
    let mut found = HashMap::new();
    if wanted.keys.is_empty() {
        return Ok(found);
    }
    let mut select = conn
        .prepare_cached(RECORDED_CALL_SQL)
        .map_err(Error::from_rusqlite)?;
    for key in &wanted.keys {
        let (session_id, agent, call_id) = key;
        let row = select
            .query_row(params![session_id, agent, call_id], |row| {
                Ok((
                    row.get::<_, String>("arguments_digest")?,
                    row.get::<_, String>("decision")?,
                ))
            })
            .optional()
            .map_err(Error::from_rusqlite)?;
        if let Some((arguments_digest, decision)) = row {
            found.insert(key.clone(), stored_call(arguments_digest, &decision));
        }
    }
    Ok(found)
}

fn taken_event_ids(conn: &Connection, wanted: &Wanted<'_>) -> Result<HashSet<String>, Error> {
    let mut taken = HashSet::new();
    let mut select = conn
        .prepare_cached("SELECT 1 FROM audit_events WHERE event_id = ?1")
        .map_err(Error::from_rusqlite)?;
    for id in &wanted.event_ids {
        if select.exists([id]).map_err(Error::from_rusqlite)? {
            taken.insert((*id).to_owned());
        }
    }
    Ok(taken)
}

/// A column of a rusqlite row, by name (for [`session_row!`]).
fn column<T: rusqlite::types::FromSql>(row: &rusqlite::Row<'_>, name: &str) -> rusqlite::Result<T> {
    row.get(name)
}

fn sessions(conn: &Connection, wanted: &Wanted<'_>) -> Result<HashMap<String, Session>, Error> {
    let mut found = HashMap::new();
    if wanted.spenders.is_empty() {
        return Ok(found);
    }
    let mut select = conn
        .prepare_cached(&session_by_id_sql())
        .map_err(Error::from_rusqlite)?;
    for id in &wanted.spenders {
        let row = select
            .query_row([id], |row| Ok(session_row!(column, row)))
            .optional()
            .map_err(Error::from_rusqlite)?;
        if let Some(row) = row {
            let session = row.into_session()?;
            found.insert(session.id.clone(), session);
        }
    }
    Ok(found)
}

/// The batch's writes, each row bound to a prepared statement: the sessions' new counts (every session
/// must exist), the calls to remember, the events (every one must be stored).
fn write(conn: &Connection, writes: &Writes<'_>) -> Result<(), Error> {
    let lite = Error::from_rusqlite;
    let mut set_used = conn
        .prepare_cached("UPDATE sessions SET tool_calls_used = ?2 WHERE id = ?1")
        .map_err(lite)?;
    for (id, used) in &writes.used {
        if set_used.execute(params![id, used]).map_err(lite)? != 1 {
            return Err(Error::internal(
                "a session disappeared while its budget was spent",
            ));
        }
    }
    let mut insert_call = conn
        .prepare_cached(
            "INSERT INTO tool_calls \
             (session_id, agent, call_id, arguments_digest, decision, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (session_id, agent, call_id) DO NOTHING",
        )
        .map_err(lite)?;
    for r in tool_call_rows(&writes.calls)? {
        insert_call
            .execute(params![
                r.session_id,
                r.agent,
                r.call_id,
                r.arguments_digest,
                r.decision,
                r.recorded_at
            ])
            .map_err(lite)?;
    }
    let mut insert_event = conn
        .prepare_cached(&format!(
            "INSERT INTO audit_events ({EVENT_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
        ))
        .map_err(lite)?;
    for e in event_rows(&writes.events)? {
        let stored = insert_event
            .execute(params![
                e.seq,
                e.event_id,
                e.time,
                e.kind,
                e.agent,
                e.user_id,
                e.session_id,
                e.decision_id,
                e.tool,
                e.call_id,
                e.outcome,
                e.reasons,
                e.policy_version,
                e.arguments_digest,
                e.arguments_redacted,
                e.detail,
                e.prev_hash,
                e.hash
            ])
            .map_err(lite)?;
        if stored != 1 {
            return Err(Error::internal("the batch's events were not all stored"));
        }
    }
    Ok(())
}
