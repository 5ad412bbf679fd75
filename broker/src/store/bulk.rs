//! Statements over many rows at once (`IN (...)` lists, multi-row `INSERT`), for the writer's batches: one
//! round trip per statement instead of one per decision. Lists are cut into chunks of [`CHUNK`] rows, which
//! keeps every statement far below both backends' limits on bound parameters (SQLite 32,766; Postgres 65,535).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use sqlx::{Any, AnyConnection};

use super::sql::{self, column, db, from_json, json_text, EVENT_COLUMNS, SESSION_COLUMNS};
use super::{Error, RecordedCall};
use crate::clock::Micros;
use crate::domain::audit::AuditEvent;
use crate::domain::decision::{Decision, Outcome};
use crate::domain::session::Session;

/// Rows per statement.
const CHUNK: usize = 256;

/// `($1, $2), ($3, $4), ...`: `rows` groups of `cols` placeholders, numbered from 1.
fn value_groups(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            let sep = if c == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}${}", r * cols + c + 1);
        }
        out.push(')');
    }
    out
}

/// `$1, $2, ...`.
fn list(n: usize) -> String {
    let mut out = String::with_capacity(n * 5);
    for i in 1..=n {
        let sep = if i == 1 { "" } else { ", " };
        let _ = write!(out, "{sep}${i}");
    }
    out
}

/// The idempotency key of a remembered tool call.
pub(crate) type CallKey = (String, String, String);

/// Remembered calls for these (session, agent, call_id) keys. A stored decision that cannot be read is
/// that key's own error, not the batch's.
pub(crate) async fn recorded_calls(
    conn: &mut AnyConnection,
    keys: &[CallKey],
) -> Result<HashMap<CallKey, Result<RecordedCall, Error>>, Error> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let mut sql = String::from(
            "SELECT session_id, agent, call_id, arguments_digest, decision FROM tool_calls WHERE ",
        );
        for i in 0..chunk.len() {
            let sep = if i == 0 { "" } else { " OR " };
            let n = i * 3;
            let _ = write!(
                sql,
                "{sep}(session_id = ${} AND agent = ${} AND call_id = ${})",
                n + 1,
                n + 2,
                n + 3
            );
        }
        let mut q = sqlx::query::<Any>(&sql);
        for (session, agent, call) in chunk {
            q = q.bind(session).bind(agent).bind(call);
        }
        for row in q.fetch_all(&mut *conn).await.map_err(db)? {
            let key = (
                column(&row, "session_id")?,
                column(&row, "agent")?,
                column(&row, "call_id")?,
            );
            let recorded = (|| {
                let decision: String = column(&row, "decision")?;
                Ok(RecordedCall {
                    arguments_digest: column(&row, "arguments_digest")?,
                    decision: from_json("decision", &decision)?,
                })
            })();
            found.insert(key, recorded);
        }
    }
    Ok(found)
}

/// Which of these event ids are already in the chain.
pub(crate) async fn taken_event_ids(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashSet<String>, Error> {
    let mut taken = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT event_id FROM audit_events WHERE event_id IN ({})",
            list(chunk.len())
        );
        let mut q = sqlx::query::<Any>(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await.map_err(db)? {
            taken.insert(column(&row, "event_id")?);
        }
    }
    Ok(taken)
}

/// These sessions, by id (absent ids are simply missing).
pub(crate) async fn sessions(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashMap<String, Session>, Error> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id IN ({})",
            list(chunk.len())
        );
        let mut q = sqlx::query::<Any>(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await.map_err(db)? {
            let s = sql::session_from_row(&row)?;
            found.insert(s.id.clone(), s);
        }
    }
    Ok(found)
}

/// Sets `tool_calls_used` of each session to the count given; every session must exist.
pub(crate) async fn set_tool_calls_used(
    conn: &mut AnyConnection,
    used: &[(&str, u32)],
) -> Result<(), Error> {
    for chunk in used.chunks(CHUNK) {
        let mut sql = String::from("UPDATE sessions SET tool_calls_used = CASE id");
        for i in 0..chunk.len() {
            let _ = write!(sql, " WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2);
        }
        sql.push_str(" ELSE tool_calls_used END WHERE id IN (");
        for i in 0..chunk.len() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(sql, "{sep}${}", 2 * chunk.len() + i + 1);
        }
        sql.push(')');
        let mut q = sqlx::query::<Any>(&sql);
        for (id, n) in chunk {
            q = q.bind(*id).bind(i64::from(*n));
        }
        for (id, _) in chunk {
            q = q.bind(*id);
        }
        let done = q.execute(&mut *conn).await.map_err(db)?;
        if done.rows_affected() != chunk.len() as u64 {
            return Err(Error::internal(
                "a session disappeared while its budget was spent",
            ));
        }
    }
    Ok(())
}

/// A tool call to remember under its idempotency key.
pub(crate) struct CallRow<'a> {
    pub(crate) agent: &'a str,
    pub(crate) arguments_digest: &'a str,
    pub(crate) decision: Decision,
    pub(crate) at: Micros,
}

/// Remembers these calls; a key already present keeps its first decision.
pub(crate) async fn insert_tool_calls(
    conn: &mut AnyConnection,
    rows: &[CallRow<'_>],
) -> Result<(), Error> {
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO tool_calls (session_id, agent, call_id, arguments_digest, decision, recorded_at) \
             VALUES {} ON CONFLICT (session_id, agent, call_id) DO NOTHING",
            value_groups(chunk.len(), 6)
        );
        let mut q = sqlx::query::<Any>(&sql);
        for r in chunk {
            q = q
                .bind(r.decision.session_id.clone())
                .bind(r.agent)
                .bind(r.decision.call_id.clone())
                .bind(r.arguments_digest)
                .bind(json_text("decision", &r.decision)?)
                .bind(r.at);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// Stores events already placed in the chain, in order.
pub(crate) async fn insert_events(
    conn: &mut AnyConnection,
    events: &[AuditEvent],
) -> Result<(), Error> {
    for chunk in events.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES {}",
            value_groups(chunk.len(), 18)
        );
        let mut q = sqlx::query::<Any>(&sql);
        for event in chunk {
            let b = &event.body;
            q = q
                .bind(event.seq)
                .bind(&b.event_id)
                .bind(b.time)
                .bind(b.kind.as_str())
                .bind(&b.agent)
                .bind(&b.user)
                .bind(&b.session_id)
                .bind(&b.decision_id)
                .bind(&b.tool)
                .bind(&b.call_id)
                .bind(b.outcome.map(Outcome::as_str))
                .bind(json_text("reasons", &b.reasons)?)
                .bind(&b.policy_version)
                .bind(&b.arguments_digest)
                .bind(&b.arguments_redacted)
                .bind(&b.detail)
                .bind(&event.prev_hash)
                .bind(&event.hash);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(value_groups(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_groups(1, 1), "($1)");
        assert_eq!(list(3), "$1, $2, $3");
    }
}
