//! Plain decisions (nothing to ask of or use from an approval) recorded set-wise inside the writer's
//! transaction: a few statements for the whole run instead of four per decision, with exactly the
//! per-decision semantics of the one-by-one path (`writer::record_decision`), applied in queue order:
//!
//! 1. a call already remembered under its key (in the database, or earlier in this run) is replayed;
//! 2. an event id already in the chain is that decision's own conflict;
//! 3. an ALLOW spends one tool call of an open, unexpired session with budget left, or is overruled to a
//!    DENY saying why (the sessions are read under the chain lock that every session write takes, or,
//!    on Postgres, known to the writer from its own commits while the chain head is the one it left:
//!    `pg_writer::Known`; so counting in memory is counting in the database); an ALLOW decided on fewer
//!    labels, or fewer spent calls when its policies read them, than its session has is answered
//!    `Stale`, with nothing written;
//! 4. the final decision is remembered (when asked) and its event placed in the chain.
//!
//! Then the writes: the sessions' new counts, the remembered calls, the events. All inside the batch's
//! transaction, so nothing of it is visible, and no ALLOW is answered, before the commit.
//!
//! The rules ([`Wanted`], [`apply`]) know no database. The reads and writes: a batch of nothing but plain
//! decisions, on the writer's own connection (`sqlite_writer`, `pg_writer`); a run of them inside a mixed
//! batch, on either backend, [`record`] (sqlx).

use std::collections::{HashMap, HashSet};

use sqlx::AnyConnection;

use super::bulk::{self, CallKey, CallRow};
use super::sql::json_text;
use super::writer::{event_id_conflict, Chain};
use super::{DecisionRecord, Error, Recorded, RecordedCall};
use crate::domain::audit::{AuditEvent, EventBody};
use crate::domain::decision::{Reason, ReasonCode};
use crate::domain::session::Session;

fn key(rec: &DecisionRecord) -> CallKey {
    (
        rec.decision.session_id.clone(),
        rec.call.agent.clone(),
        rec.decision.call_id.clone(),
    )
}

/// What a run of decisions needs read before it can be applied.
pub(super) struct Wanted<'a> {
    /// Idempotency keys of the decisions to remember (sorted, unique).
    pub(super) keys: Vec<CallKey>,
    pub(super) event_ids: Vec<&'a str>,
    /// Sessions that spend budget (sorted, unique).
    pub(super) spenders: Vec<&'a str>,
}

impl<'a> Wanted<'a> {
    pub(super) fn of(recs: &[&'a DecisionRecord]) -> Self {
        let mut keys: Vec<CallKey> = recs.iter().filter(|r| r.remember).map(|r| key(r)).collect();
        keys.sort();
        keys.dedup();
        let event_ids = recs.iter().map(|r| r.call.event_id.as_str()).collect();
        let mut spenders: Vec<&str> = recs
            .iter()
            .filter(|r| r.spend_budget)
            .map(|r| r.decision.session_id.as_str())
            .collect();
        spenders.sort_unstable();
        spenders.dedup();
        Self {
            keys,
            event_ids,
            spenders,
        }
    }
}

/// What was read for [`Wanted`], under the chain lock.
pub(super) struct Found {
    /// Remembered calls by key; a stored decision that cannot be read is that key's own error.
    pub(super) remembered: HashMap<CallKey, Result<RecordedCall, Error>>,
    /// Event ids already in the chain.
    pub(super) taken: HashSet<String>,
    pub(super) sessions: HashMap<String, Session>,
}

/// What a run of decisions writes.
pub(super) struct Writes<'a> {
    /// The sessions' new `tool_calls_used` (sorted by id; every session must exist).
    pub(super) used: Vec<(String, u32)>,
    pub(super) calls: Vec<CallRow<'a>>,
    pub(super) events: Vec<AuditEvent>,
}

/// The rules above, in queue order: each decision's answer, and the writes that make them true.
/// `Err` only when an event cannot be placed in the chain.
pub(super) fn apply<'a>(
    chain: &mut Chain,
    recs: &[&'a DecisionRecord],
    found: Found,
) -> Result<(Vec<Result<Recorded, Error>>, Writes<'a>), Error> {
    let Found {
        remembered,
        taken,
        mut sessions,
    } = found;
    // Calls this batch remembers: where their answer is, and their arguments digest. A retry later in the
    // batch is answered from there (no copy of each decision kept for the rare retry).
    let mut remembering: HashMap<CallKey, (usize, &str)> = HashMap::new();
    let mut spent: HashSet<String> = HashSet::new();
    let mut placed: HashSet<&str> = HashSet::new();
    let mut calls = Vec::new();
    let mut events: Vec<AuditEvent> = Vec::with_capacity(recs.len());
    let mut answers = Vec::with_capacity(recs.len());
    for rec in recs {
        let k = key(rec);
        if rec.remember {
            if let Some(earlier) = remembered.get(&k) {
                answers.push(earlier.clone().map(Recorded::Replayed));
                continue;
            }
            if let Some(&(at, digest)) = remembering.get(&k) {
                answers.push(match answers.get(at) {
                    Some(Ok(Recorded::Committed(decision))) => {
                        Ok(Recorded::Replayed(RecordedCall {
                            arguments_digest: digest.to_owned(),
                            decision: decision.clone(),
                        }))
                    }
                    _ => Err(Error::internal(
                        "audit batch lost the answer of a call it remembers",
                    )),
                });
                continue;
            }
        }
        let event_id = rec.call.event_id.as_str();
        if taken.contains(event_id) || !placed.insert(event_id) {
            answers.push(Err(event_id_conflict(event_id)));
            continue;
        }
        let mut decision = rec.decision.clone();
        if rec.spend_budget {
            let session_id = &decision.session_id;
            let refusal = match sessions.get_mut(session_id) {
                Some(s) => match s.refusal(rec.now) {
                    // Decided without some of the session's labels: nothing written, decided again.
                    None if decision.is_allow()
                        && (rec.labels_seen.is_some_and(|n| n != s.labels.len())
                            || rec.calls_seen.is_some_and(|n| n != s.tool_calls_used)) =>
                    {
                        answers.push(Ok(Recorded::Stale));
                        continue;
                    }
                    None => {
                        s.tool_calls_used += 1;
                        spent.insert(session_id.clone());
                        None
                    }
                    some => some,
                },
                None => Some(Reason::new(
                    ReasonCode::SessionNotFound,
                    format!("session `{session_id}` does not exist"),
                )),
            };
            if let Some(refusal) = refusal.filter(|_| decision.is_allow()) {
                decision.overrule(refusal);
            }
        }
        if rec.remember {
            remembering.insert(k, (answers.len(), &rec.call.arguments_digest));
            calls.push(CallRow {
                session_id: &rec.decision.session_id,
                agent: &rec.call.agent,
                call_id: &rec.decision.call_id,
                arguments_digest: &rec.call.arguments_digest,
                decision: json_text("decision", &decision)?,
                at: rec.now,
            });
        }
        events.push(chain.link(EventBody::for_decision(&decision, &rec.call))?);
        answers.push(Ok(Recorded::Committed(decision)));
    }

    let mut used: Vec<(String, u32)> = spent
        .into_iter()
        .filter_map(|id| sessions.remove(&id).map(|s| (id, s.tool_calls_used)))
        .collect();
    used.sort_unstable();
    Ok((
        answers,
        Writes {
            used,
            calls,
            events,
        },
    ))
}

/// Records `recs` (none of which carries an approval write) through sqlx. `Err` is a database failure
/// (the batch fails); a decision's own refusal is its `Ok(Err(..))`.
pub(super) async fn record(
    conn: &mut AnyConnection,
    chain: &mut Chain,
    recs: &[&DecisionRecord],
) -> Result<Vec<Result<Recorded, Error>>, Error> {
    let wanted = Wanted::of(recs);
    let backend = chain.backend();
    let found = Found {
        remembered: bulk::recorded_calls(conn, backend, &wanted.keys).await?,
        taken: bulk::taken_event_ids(conn, backend, &wanted.event_ids).await?,
        sessions: bulk::sessions(conn, backend, &wanted.spenders).await?,
    };
    let (answers, writes) = apply(chain, recs, found)?;
    bulk::write_decisions(conn, backend, &writes).await?;
    Ok(answers)
}
