//! Plain decisions (nothing to ask of or use from an approval) recorded set-wise inside the writer's
//! transaction: a few statements for the whole run instead of four per decision, with exactly the
//! per-decision semantics of the one-by-one path (`writer::record_decision`), applied in queue order:
//!
//! 1. a call already remembered under its key (in the database, or earlier in this run) is replayed;
//! 2. an event id already in the chain is that decision's own conflict;
//! 3. an ALLOW spends one tool call of an open, unexpired session with budget left, or is overruled to a
//!    DENY saying why (the sessions are read here, under the chain lock that every session write takes,
//!    so counting in memory is counting in the database); an ALLOW decided on fewer labels than its
//!    session has is answered `Stale`, with nothing written;
//! 4. the final decision is remembered (when asked) and its event placed in the chain.
//!
//! Then the writes: the sessions' new counts, the remembered calls, the events. All inside the batch's
//! transaction, so nothing of it is visible, and no ALLOW is answered, before the commit.

use std::collections::HashSet;

use sqlx::AnyConnection;

use super::bulk::{self, CallKey, CallRow};
use super::writer::{event_id_conflict, Chain};
use super::{DecisionRecord, Error, Recorded, RecordedCall};
use crate::domain::audit::{AuditEvent, EventBody};
use crate::domain::decision::{Reason, ReasonCode};

fn key(rec: &DecisionRecord) -> CallKey {
    (
        rec.decision.session_id.clone(),
        rec.call.agent.clone(),
        rec.decision.call_id.clone(),
    )
}

/// Records `recs` (none of which carries an approval write). `Err` is a database failure (the batch
/// fails); a decision's own refusal is its `Ok(Err(..))`.
pub(super) async fn record(
    conn: &mut AnyConnection,
    chain: &mut Chain,
    recs: &[&DecisionRecord],
) -> Result<Vec<Result<Recorded, Error>>, Error> {
    let mut keys: Vec<CallKey> = recs.iter().filter(|r| r.remember).map(|r| key(r)).collect();
    keys.sort();
    keys.dedup();
    let mut remembered = bulk::recorded_calls(conn, chain.backend(), &keys).await?;
    let event_ids: Vec<&str> = recs.iter().map(|r| r.call.event_id.as_str()).collect();
    let taken = bulk::taken_event_ids(conn, chain.backend(), &event_ids).await?;
    let mut spenders: Vec<&str> = recs
        .iter()
        .filter(|r| r.spend_budget)
        .map(|r| r.decision.session_id.as_str())
        .collect();
    spenders.sort_unstable();
    spenders.dedup();
    let mut sessions = bulk::sessions(conn, chain.backend(), &spenders).await?;

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
                        && rec.labels_seen.is_some_and(|n| n != s.labels.len()) =>
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
            remembered.insert(
                k,
                Ok(RecordedCall {
                    arguments_digest: rec.call.arguments_digest.clone(),
                    decision: decision.clone(),
                }),
            );
            calls.push(CallRow {
                agent: &rec.call.agent,
                arguments_digest: &rec.call.arguments_digest,
                decision: decision.clone(),
                at: rec.now,
            });
        }
        events.push(chain.link(EventBody::for_decision(&decision, &rec.call))?);
        answers.push(Ok(Recorded::Committed(decision)));
    }

    let mut used: Vec<(&str, u32)> = spent
        .iter()
        .filter_map(|id| sessions.get(id).map(|s| (id.as_str(), s.tool_calls_used)))
        .collect();
    used.sort_unstable();
    bulk::write_decisions(conn, chain.backend(), &used, &calls, &events).await?;
    Ok(answers)
}
