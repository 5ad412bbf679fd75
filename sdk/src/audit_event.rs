//! What the audit trail holds, and how to ask for a slice of it.

use std::time::SystemTime;

use broker_proto::v1 as proto;

use crate::timestamp::{non_empty, required};
use crate::{Error, Outcome, Reason};

/// Which audit events to list; every criterion left out matches everything.
///
/// ```
/// use broker_sdk::{AuditFilter, Outcome};
/// let filter = AuditFilter::new().session_id("ses_..").outcome(Outcome::Deny).page_size(50);
/// # let _ = filter;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    session_id: Option<String>,
    agent: Option<String>,
    tool: Option<String>,
    outcome: Option<Outcome>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    page_size: u32,
    page_token: Option<String>,
}

impl AuditFilter {
    /// Matches every event, first page, the broker's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events of this session.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Only events of this agent.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// Only decisions about this tool.
    pub fn tool(mut self, tool: impl Into<String>) -> Self {
        self.tool = Some(tool.into());
        self
    }

    /// Only decisions with this outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Only events at or after this time.
    pub fn since(mut self, since: SystemTime) -> Self {
        self.since = Some(since);
        self
    }

    /// Only events before this time.
    pub fn until(mut self, until: SystemTime) -> Self {
        self.until = Some(until);
        self
    }

    /// Events per page (the broker allows at most 1000; 0 means its default of 100).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Continues from [`AuditPage::next_page_token`].
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.page_token = Some(page_token.into());
        self
    }

    pub(crate) fn into_proto(self) -> proto::ListAuditEventsRequest {
        proto::ListAuditEventsRequest {
            session_id: self.session_id.unwrap_or_default(),
            agent: self.agent.unwrap_or_default(),
            tool: self.tool.unwrap_or_default(),
            outcome: self
                .outcome
                .map_or(proto::Outcome::Unspecified, proto::Outcome::from)
                .into(),
            since: self.since.map(prost_types::Timestamp::from),
            until: self.until.map(prost_types::Timestamp::from),
            page_size: self.page_size,
            page_token: self.page_token.unwrap_or_default(),
        }
    }
}

/// One link of the audit hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// `evt_` followed by 48 bits of the time in milliseconds and 80 random bits.
    pub event_id: String,
    /// When it happened.
    pub time: SystemTime,
    /// `SESSION_OPENED`, `TOOL_CALL_DECIDED`, `RETRIEVAL_FILTERED`, ... (kept as text so new kinds still
    /// list).
    pub kind: String,
    /// The decision, for `TOOL_CALL_DECIDED`.
    pub decision_id: Option<String>,
    /// The agent.
    pub agent: String,
    /// The user the agent acted for, if any.
    pub user: Option<String>,
    /// The session.
    pub session_id: String,
    /// The tool, for `TOOL_CALL_DECIDED`.
    pub tool: Option<String>,
    /// The outcome, for `TOOL_CALL_DECIDED`.
    pub outcome: Option<Outcome>,
    /// Why.
    pub reasons: Vec<Reason>,
    /// SHA-256 of the policy set that decided.
    pub policy_version: String,
    /// SHA-256 of the RFC 8785 canonical arguments.
    pub arguments_digest: String,
    /// The arguments with secret fields replaced by `"[REDACTED]"`.
    pub arguments_redacted_json: String,
    /// The idempotency key of the call.
    pub call_id: Option<String>,
    /// The previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
    /// What else the event is about, as JSON text (e.g. `{"replay_of": "dec_..."}` for a retried call,
    /// a retrieval batch's ids, or a pre-filter's `filter_sha256`, `complete` and `labels_added`).
    pub detail_json: Option<String>,
}

impl TryFrom<proto::AuditEvent> for AuditEvent {
    type Error = Error;

    fn try_from(event: proto::AuditEvent) -> Result<Self, Error> {
        let outcome = match event.outcome {
            0 => None,
            value => Some(Outcome::from_proto(value)?),
        };
        Ok(Self {
            time: required(event.time, "time")?,
            outcome,
            seq: event.seq,
            event_id: event.event_id,
            kind: event.kind,
            decision_id: non_empty(event.decision_id),
            agent: event.agent,
            user: non_empty(event.user),
            session_id: event.session_id,
            tool: non_empty(event.tool),
            reasons: event.reasons.into_iter().map(Reason::from).collect(),
            policy_version: event.policy_version,
            arguments_digest: event.arguments_digest,
            arguments_redacted_json: event.arguments_redacted_json,
            call_id: non_empty(event.call_id),
            prev_hash: event.prev_hash,
            hash: event.hash,
            detail_json: non_empty(event.detail_json),
        })
    }
}

/// One page of audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    /// The events, in chain order.
    pub events: Vec<AuditEvent>,
    /// Pass to [`AuditFilter::page_token`] for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl TryFrom<proto::ListAuditEventsResponse> for AuditPage {
    type Error = Error;

    fn try_from(page: proto::ListAuditEventsResponse) -> Result<Self, Error> {
        Ok(Self {
            events: page
                .events
                .into_iter()
                .map(AuditEvent::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: non_empty(page.next_page_token),
        })
    }
}

/// The first event of the chain that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Its position in the chain.
    pub seq: u64,
    /// Its id, when the broker could name one (not for a deleted event).
    pub event_id: Option<String>,
    /// What is wrong: modified, inserted, deleted, ...
    pub problem: String,
}

/// The result of walking the audit hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// How many events were checked.
    pub events_checked: u64,
    /// `None` when the whole chain verifies.
    pub first_break: Option<ChainBreak>,
}

impl ChainReport {
    /// Whether the whole chain verifies.
    pub fn is_ok(&self) -> bool {
        self.first_break.is_none()
    }
}

impl TryFrom<proto::VerifyAuditChainResponse> for ChainReport {
    type Error = Error;

    fn try_from(report: proto::VerifyAuditChainResponse) -> Result<Self, Error> {
        let first_break = if report.ok {
            None
        } else {
            if report.problem.is_empty() && report.first_bad_seq == 0 {
                return Err(Error::Protocol(
                    "the broker reported a broken chain without naming the break".into(),
                ));
            }
            Some(ChainBreak {
                seq: report.first_bad_seq,
                event_id: non_empty(report.first_bad_event_id),
                problem: report.problem,
            })
        };
        Ok(Self {
            events_checked: report.events_checked,
            first_break,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_filter_asks_for_everything() {
        assert_eq!(
            AuditFilter::new().into_proto(),
            proto::ListAuditEventsRequest::default()
        );
    }

    #[test]
    fn an_event_without_an_outcome_is_a_session_event() {
        let event = AuditEvent::try_from(proto::AuditEvent {
            seq: 1,
            kind: "SESSION_OPENED".into(),
            time: Some(prost_types::Timestamp::default()),
            ..Default::default()
        });
        assert!(event.is_ok_and(|e| e.outcome.is_none() && e.tool.is_none()));
    }

    #[test]
    fn an_unknown_outcome_or_missing_time_is_a_protocol_error() {
        let unknown = AuditEvent::try_from(proto::AuditEvent {
            outcome: 9,
            time: Some(prost_types::Timestamp::default()),
            ..Default::default()
        });
        assert!(matches!(unknown, Err(Error::Protocol(_))));
        let timeless = AuditEvent::try_from(proto::AuditEvent::default());
        assert!(matches!(timeless, Err(Error::Protocol(m)) if m.contains("`time`")));
    }

    #[test]
    fn a_broken_chain_must_name_the_break() {
        let unnamed = ChainReport::try_from(proto::VerifyAuditChainResponse {
            ok: false,
            ..Default::default()
        });
        assert!(matches!(unnamed, Err(Error::Protocol(_))));
    }
}
