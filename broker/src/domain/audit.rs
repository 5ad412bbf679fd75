//! The audit trail's content and its hash chain. Storage lives in `store`; what an event says and how
//! its hash is computed lives here, so the writer and `broker audit verify` cannot disagree.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::decision::{Outcome, Reason};
use crate::clock::Micros;

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub use super::redaction::REDACTED;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    SessionOpened,
    SessionClosed,
    ToolCallDecided,
    /// A retried call (same session, tool, arguments and `call_id`) answered with its earlier decision,
    /// which `detail.replay_of` names: the trail shows every answer the broker gave.
    ToolCallReplayed,
    KillSwitchEngaged,
    KillSwitchReleased,
    KillSwitchExpired,
    ApprovalRequested,
    /// One approver's vote (approve or deny), with the comment.
    ApprovalVoted,
    ApprovalApproved,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalCancelled,
    ApprovalConsumed,
    /// A batch of retrieval candidates decided: allowed and denied ids in `detail`.
    RetrievalDecided,
    /// A tool's result reported, with the labels it added to the session.
    ToolResultReported,
    /// A retrieval pre-filter answered: its digest (and text), whether complete, the labels it added.
    RetrievalFiltered,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionOpened => "SESSION_OPENED",
            EventKind::SessionClosed => "SESSION_CLOSED",
            EventKind::ToolCallDecided => "TOOL_CALL_DECIDED",
            EventKind::ToolCallReplayed => "TOOL_CALL_REPLAYED",
            EventKind::KillSwitchEngaged => "KILL_SWITCH_ENGAGED",
            EventKind::KillSwitchReleased => "KILL_SWITCH_RELEASED",
            EventKind::KillSwitchExpired => "KILL_SWITCH_EXPIRED",
            EventKind::ApprovalRequested => "APPROVAL_REQUESTED",
            EventKind::ApprovalVoted => "APPROVAL_VOTED",
            EventKind::ApprovalApproved => "APPROVAL_APPROVED",
            EventKind::ApprovalDenied => "APPROVAL_DENIED",
            EventKind::ApprovalExpired => "APPROVAL_EXPIRED",
            EventKind::ApprovalCancelled => "APPROVAL_CANCELLED",
            EventKind::ApprovalConsumed => "APPROVAL_CONSUMED",
            EventKind::RetrievalDecided => "RETRIEVAL_DECIDED",
            EventKind::ToolResultReported => "TOOL_RESULT_REPORTED",
            EventKind::RetrievalFiltered => "RETRIEVAL_FILTERED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SESSION_OPENED" => Some(EventKind::SessionOpened),
            "SESSION_CLOSED" => Some(EventKind::SessionClosed),
            "TOOL_CALL_DECIDED" => Some(EventKind::ToolCallDecided),
            "TOOL_CALL_REPLAYED" => Some(EventKind::ToolCallReplayed),
            "KILL_SWITCH_ENGAGED" => Some(EventKind::KillSwitchEngaged),
            "KILL_SWITCH_RELEASED" => Some(EventKind::KillSwitchReleased),
            "KILL_SWITCH_EXPIRED" => Some(EventKind::KillSwitchExpired),
            "APPROVAL_REQUESTED" => Some(EventKind::ApprovalRequested),
            "APPROVAL_VOTED" => Some(EventKind::ApprovalVoted),
            "APPROVAL_APPROVED" => Some(EventKind::ApprovalApproved),
            "APPROVAL_DENIED" => Some(EventKind::ApprovalDenied),
            "APPROVAL_EXPIRED" => Some(EventKind::ApprovalExpired),
            "APPROVAL_CANCELLED" => Some(EventKind::ApprovalCancelled),
            "APPROVAL_CONSUMED" => Some(EventKind::ApprovalConsumed),
            "RETRIEVAL_DECIDED" => Some(EventKind::RetrievalDecided),
            "TOOL_RESULT_REPORTED" => Some(EventKind::ToolResultReported),
            "RETRIEVAL_FILTERED" => Some(EventKind::RetrievalFiltered),
            _ => None,
        }
    }
}

/// An event before the chain places it: everything but `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    pub event_id: String,
    pub time: Micros,
    pub kind: EventKind,
    pub agent: String,
    pub user: Option<String>,
    pub session_id: Option<String>,
    pub decision_id: Option<String>,
    pub tool: Option<String>,
    pub call_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub reasons: Vec<Reason>,
    pub policy_version: Option<String>,
    /// SHA-256 (hex) of the RFC 8785 canonical arguments.
    pub arguments_digest: Option<String>,
    /// The arguments as JSON text, with configured secret fields redacted.
    pub arguments_redacted: Option<String>,
    /// What else the event is about, as JSON text (e.g. the kill switch engaged). Absent from the hash
    /// input when empty, so events written before the field existed still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EventBody {
    /// The event recording a session opened or closed.
    pub fn for_session(kind: EventKind, session: &super::session::Session, time: Micros) -> Self {
        Self::in_session(
            kind,
            &session.agent,
            session.user.clone(),
            &session.id,
            time,
        )
    }

    /// An event by `agent` (acting for `user`) in a session, with nothing else set yet.
    pub fn in_session(
        kind: EventKind,
        agent: &str,
        user: Option<String>,
        session_id: &str,
        time: Micros,
    ) -> Self {
        Self {
            event_id: crate::ids::event_id(time),
            time,
            kind,
            agent: agent.to_owned(),
            user,
            session_id: Some(session_id.to_owned()),
            decision_id: None,
            tool: None,
            call_id: None,
            outcome: None,
            reasons: Vec::new(),
            policy_version: None,
            arguments_digest: None,
            arguments_redacted: None,
            detail: None,
        }
    }

    /// The event recording a kill switch engaged, released or expired; `actor` is who did it. The
    /// switch itself (scope, target, reason, times) is the event's `detail`.
    pub fn for_kill_switch(
        kind: EventKind,
        switch: &super::killswitch::KillSwitch,
        actor: &str,
        time: Micros,
    ) -> Self {
        let mut reasons = Vec::new();
        if let Some(release) = &switch.released {
            reasons.push(Reason::new(
                super::decision::ReasonCode::KillSwitch,
                release.reason.clone(),
            ));
        }
        Self {
            event_id: crate::ids::event_id(time),
            time,
            kind,
            agent: actor.to_owned(),
            user: None,
            session_id: (switch.scope == super::killswitch::Scope::Session)
                .then(|| switch.target.clone()),
            decision_id: None,
            tool: (switch.scope == super::killswitch::Scope::Tool).then(|| switch.target.clone()),
            call_id: None,
            outcome: None,
            reasons,
            policy_version: None,
            arguments_digest: None,
            arguments_redacted: None,
            detail: serde_json::to_string(switch).ok(),
        }
    }

    /// The event recording a tool-call decision.
    pub fn for_decision(decision: &super::decision::Decision, call: &CallFacts) -> Self {
        // A replay answers with the earlier decision itself (same id): its event says so and when.
        // Its arguments are the earlier event's (same digest), not stored again: a retry loop cannot grow
        // the trail by its arguments' size per call.
        let (kind, detail) = match &call.replay_of {
            None => (EventKind::ToolCallDecided, None),
            Some(earlier) => (
                if *earlier == decision.decision_id {
                    EventKind::ToolCallReplayed
                } else {
                    EventKind::ToolCallDecided
                },
                Some(serde_json::json!({ "replay_of": earlier }).to_string()),
            ),
        };
        let arguments_redacted =
            (kind != EventKind::ToolCallReplayed).then(|| call.arguments_redacted.clone());
        Self {
            event_id: call.event_id.clone(),
            time: decision.decided_at,
            kind,
            agent: call.agent.clone(),
            user: call.user.clone(),
            session_id: Some(decision.session_id.clone()),
            decision_id: Some(decision.decision_id.clone()),
            tool: Some(decision.tool.clone()),
            call_id: Some(decision.call_id.clone()),
            outcome: Some(decision.outcome),
            reasons: decision.reasons.clone(),
            policy_version: Some(decision.policy_version.clone()),
            arguments_digest: Some(call.arguments_digest.clone()),
            arguments_redacted,
            detail,
        }
    }
}

impl EventBody {
    /// An event in an approval's life; `actor` is who acted (the agent asking, an approver, the broker).
    /// The approval's id, status and the vote or comment go in `detail`.
    pub fn for_approval(
        kind: EventKind,
        approval: &super::approval::Approval,
        actor: &str,
        time: Micros,
        detail: serde_json::Value,
    ) -> Self {
        let mut detail = detail;
        if let Some(map) = detail.as_object_mut() {
            map.insert("approval_id".into(), approval.id.clone().into());
            map.insert("status".into(), approval.status.as_str().into());
        }
        Self {
            event_id: crate::ids::event_id(time),
            time,
            kind,
            agent: actor.to_owned(),
            user: approval.user.clone(),
            session_id: Some(approval.session_id.clone()),
            decision_id: Some(approval.decision_id.clone()),
            tool: Some(approval.tool.clone()),
            call_id: Some(approval.call_id.clone()),
            outcome: None,
            reasons: approval.reasons.clone(),
            policy_version: None,
            arguments_digest: Some(approval.arguments_digest.clone()),
            arguments_redacted: Some(approval.arguments_redacted.clone()),
            detail: Some(detail.to_string()),
        }
    }
}

/// Who made a tool call and with what arguments: what its audit event says beside the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFacts {
    pub event_id: String,
    pub agent: String,
    pub user: Option<String>,
    pub arguments_digest: String,
    pub arguments_redacted: String,
    /// The earlier decision this answer repeats or stands in for (a retried `call_id`): the event is
    /// then `TOOL_CALL_REPLAYED` (same answer) or a `TOOL_CALL_DECIDED` that names it in `detail`.
    pub replay_of: Option<String>,
}

/// An event as stored: placed in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot canonicalise audit content: {0}")]
    Canonical(String),
}

/// What an event's hash commits to: its body, its position and its predecessor.
#[derive(Serialize)]
pub(super) struct Hashed<'a> {
    pub(super) seq: i64,
    pub(super) prev_hash: &'a str,
    #[serde(flatten)]
    pub(super) body: &'a EventBody,
}

/// The bytes an event's hash commits to: RFC 8785 JSON of [`Hashed`], as `serde_jcs` writes it.
fn hash_input(seq: i64, prev_hash: &str, body: &EventBody) -> Result<Vec<u8>, Error> {
    let hashed = Hashed {
        seq,
        prev_hash,
        body,
    };
    // The same bytes without serde_jcs's buffer per member (a tenth of the broker's CPU under load).
    match super::canonical::hashed_event(seq, prev_hash, body) {
        Some(bytes) => Ok(bytes),
        None => serde_jcs::to_vec(&hashed).map_err(|e| Error::Canonical(e.to_string())),
    }
}

/// The hash of an event placed at `seq` after `prev_hash`.
pub fn chain_hash(seq: i64, prev_hash: &str, body: &EventBody) -> Result<String, Error> {
    Ok(crate::hexstr::encode(&Sha256::digest(hash_input(
        seq, prev_hash, body,
    )?)))
}

impl AuditEvent {
    /// Places `body` after the event whose hash is `prev_hash` (or the genesis) at position `seq`.
    pub fn chain(seq: i64, prev_hash: String, body: EventBody) -> Result<Self, Error> {
        let hash = chain_hash(seq, &prev_hash, &body)?;
        Ok(Self {
            seq,
            prev_hash,
            hash,
            body,
        })
    }
}

/// SHA-256 (hex) of the RFC 8785 canonical form of `args`: key order and spacing do not change it.
pub fn arguments_digest(args: &serde_json::Value) -> Result<String, Error> {
    let canonical = match super::canonical::value_to_vec(args) {
        Some(bytes) => bytes,
        None => serde_jcs::to_vec(args).map_err(|e| Error::Canonical(e.to_string()))?,
    };
    Ok(crate::hexstr::encode(&Sha256::digest(canonical)))
}

/// Where the chain first fails to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub event_id: String,
    pub problem: String,
}

/// Walks events in `seq` order, checking positions, links and hashes, and stops at the first break.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    /// Checks the next event; on a break, says which event and why.
    pub fn check(&mut self, event: &AuditEvent) -> Result<(), ChainBreak> {
        let fail = |problem: String| ChainBreak {
            seq: event.seq,
            event_id: event.body.event_id.clone(),
            problem,
        };
        if event.seq != self.expected_seq {
            return Err(if event.seq > self.expected_seq {
                fail(format!(
                    "events {} to {} are missing (deleted)",
                    self.expected_seq,
                    event.seq - 1
                ))
            } else {
                fail(format!(
                    "event {} appears out of order (inserted)",
                    event.seq
                ))
            });
        }
        if event.prev_hash != self.prev_hash {
            return Err(fail("does not link to its predecessor (the predecessor was replaced, or this event was inserted)".into()));
        }
        let recomputed = chain_hash(event.seq, &event.prev_hash, &event.body)
            .map_err(|e| fail(e.to_string()))?;
        if recomputed != event.hash {
            return Err(fail("content does not match its hash (modified)".into()));
        }
        self.expected_seq += 1;
        self.prev_hash = event.hash.clone();
        self.checked += 1;
        Ok(())
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::ReasonCode;

    fn body(n: u8) -> EventBody {
        EventBody {
            event_id: format!("evt_{n}"),
            time: i64::from(n),
            kind: EventKind::ToolCallDecided,
            agent: "agent-1".into(),
            user: Some("alice".into()),
            session_id: Some("ses_1".into()),
            decision_id: Some(format!("dec_{n}")),
            tool: Some("web.search".into()),
            call_id: Some(format!("call_{n}")),
            outcome: Some(Outcome::Allow),
            reasons: vec![Reason::from_policy(
                ReasonCode::PolicyAllow,
                "allow-search",
                "ok",
            )],
            policy_version: Some("v".into()),
            arguments_digest: Some("d".into()),
            arguments_redacted: Some("{}".into()),
            detail: None,
        }
    }

    fn chain(n: u8) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|i| {
                let e = AuditEvent::chain(i64::from(i), prev.clone(), body(i)).unwrap();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(events: &[AuditEvent]) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for e in events {
            v.check(e)?;
        }
        Ok(v.checked())
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn modification_deletion_and_insertion_name_the_first_bad_event() {
        let mut modified = chain(5);
        modified[2].body.outcome = Some(Outcome::Deny);
        let err = verify(&modified).unwrap_err();
        assert_eq!((err.seq, err.event_id.as_str()), (3, "evt_3"));
        assert!(err.problem.contains("modified"), "{}", err.problem);

        let mut deleted = chain(5);
        deleted.remove(1);
        let err = verify(&deleted).unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(err.problem.contains("missing"), "{}", err.problem);

        // A forged event re-using a position and re-hashed by the forger still breaks the next link.
        let mut inserted = chain(5);
        let forged = AuditEvent::chain(3, inserted[1].hash.clone(), body(9)).unwrap();
        inserted[2] = forged;
        let err = verify(&inserted).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(err.problem.contains("link"), "{}", err.problem);
    }

    #[test]
    fn digest_is_canonical_and_integers_stay_exact() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":[true,null],"n":18446744073709551615}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "n":18446744073709551615, "a":[true, null], "b":1.0 }"#)
                .unwrap();
        assert_eq!(arguments_digest(&a).unwrap(), arguments_digest(&b).unwrap());
        let c: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":[true,null],"n":18446744073709551614}"#).unwrap();
        assert_ne!(arguments_digest(&a).unwrap(), arguments_digest(&c).unwrap());
    }
}
