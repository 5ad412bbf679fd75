//! proto <-> domain. Validation of wire-only shapes (enums, timestamps, page tokens) happens here.

use broker_proto::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;

use super::status::invalid;
use crate::clock::Micros;
use crate::domain::approval::{Approval, ApprovalStatus};
use crate::domain::audit::AuditEvent;
use crate::domain::decision::{Decision, Outcome, Reason};
use crate::domain::killswitch::{KillSwitch, Scope};
use crate::domain::session::{Session, SessionState};
use crate::domain::tenancy::TenantScope;
use crate::store::{EventFilter, Page};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

pub fn timestamp(micros: Micros) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

pub fn micros(field: &'static str, t: &Timestamp) -> Result<Micros, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos out of range"));
    }
    t.seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1000)))
        .ok_or_else(|| invalid(field, "out of range"))
}

pub fn outcome(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Allow => pb::Outcome::Allow,
        Outcome::Deny => pb::Outcome::Deny,
        Outcome::PendingApproval => pb::Outcome::PendingApproval,
    }
}

fn reason(r: &Reason) -> pb::Reason {
    pb::Reason {
        code: r.code.as_str().to_owned(),
        policy_id: r.policy_id.clone().unwrap_or_default(),
        message: r.message.clone(),
        kill_switch_id: r.kill_switch_id.clone().unwrap_or_default(),
    }
}

pub fn decision(d: &Decision) -> pb::Decision {
    pb::Decision {
        decision_id: d.decision_id.clone(),
        outcome: outcome(d.outcome).into(),
        reasons: d.reasons.iter().map(reason).collect(),
        policy_version: d.policy_version.clone(),
        session_id: d.session_id.clone(),
        tool: d.tool.clone(),
        call_id: d.call_id.clone(),
        decided_at: Some(timestamp(d.decided_at)),
        approval_id: d.approval_id.clone().unwrap_or_default(),
    }
}

pub fn session(s: &Session, now: Micros) -> pb::Session {
    let state = match s.state(now) {
        SessionState::Open => pb::SessionState::Open,
        SessionState::Closed => pb::SessionState::Closed,
        SessionState::Expired => pb::SessionState::Expired,
    };
    pb::Session {
        session_id: s.id.clone(),
        agent: s.agent.clone(),
        user: s.user.clone().unwrap_or_default(),
        tools: s.tools.iter().map(ToString::to_string).collect(),
        purpose: s.purpose.clone(),
        created_at: Some(timestamp(s.created_at)),
        expires_at: Some(timestamp(s.expires_at)),
        max_tool_calls: s.max_tool_calls,
        tool_calls_used: s.tool_calls_used,
        state: state.into(),
        collections: s.collections.clone(),
        labels: s.labels.clone(),
    }
}

pub fn event(e: &AuditEvent) -> pb::AuditEvent {
    let b = &e.body;
    pb::AuditEvent {
        seq: u64::try_from(e.seq).unwrap_or_default(),
        event_id: b.event_id.clone(),
        time: Some(timestamp(b.time)),
        kind: b.kind.as_str().to_owned(),
        decision_id: b.decision_id.clone().unwrap_or_default(),
        agent: b.agent.clone(),
        user: b.user.clone().unwrap_or_default(),
        session_id: b.session_id.clone().unwrap_or_default(),
        tool: b.tool.clone().unwrap_or_default(),
        outcome: b.outcome.map_or(pb::Outcome::Unspecified, outcome).into(),
        reasons: b.reasons.iter().map(reason).collect(),
        policy_version: b.policy_version.clone().unwrap_or_default(),
        arguments_digest: b.arguments_digest.clone().unwrap_or_default(),
        arguments_redacted_json: b.arguments_redacted.clone().unwrap_or_default(),
        call_id: b.call_id.clone().unwrap_or_default(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
        detail_json: b.detail.clone().unwrap_or_default(),
    }
}

/// Text must not hold a NUL character: no database column can store one, and the store would refuse
/// it only once queued, as an internal error. Refused here instead, naming the field.
pub fn no_nul<'a>(
    field: &'static str,
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(), Status> {
    if values.into_iter().any(|v| v.contains('\0')) {
        return Err(invalid(field, "must not contain a NUL character"));
    }
    Ok(())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn event_query(r: pb::ListAuditEventsRequest) -> Result<(EventFilter, Page), Status> {
    // Query parameters: Postgres refuses a NUL in text, as an internal error.
    no_nul("session_id", [&r.session_id])?;
    no_nul("agent", [&r.agent])?;
    no_nul("tool", [&r.tool])?;
    no_nul("page_token", [&r.page_token])?;
    let outcome = match pb::Outcome::try_from(r.outcome)
        .map_err(|_| invalid("outcome", "unknown outcome"))?
    {
        pb::Outcome::Unspecified => None,
        pb::Outcome::Allow => Some(Outcome::Allow),
        pb::Outcome::Deny => Some(Outcome::Deny),
        pb::Outcome::PendingApproval => Some(Outcome::PendingApproval),
    };
    let filter = EventFilter {
        session_id: non_empty(r.session_id),
        agent: non_empty(r.agent),
        tool: non_empty(r.tool),
        outcome,
        since: r.since.as_ref().map(|t| micros("since", t)).transpose()?,
        until: r.until.as_ref().map(|t| micros("until", t)).transpose()?,
        // Set by the domain from the caller.
        tenant: TenantScope::default(),
    };
    Ok((filter, page(r.page_size, &r.page_token)?))
}

pub fn kill_switch(k: &KillSwitch, now: Micros) -> pb::KillSwitch {
    let scope = match k.scope {
        Scope::Global => pb::KillSwitchScope::Global,
        Scope::Tenant => pb::KillSwitchScope::Tenant,
        Scope::Agent => pb::KillSwitchScope::Agent,
        Scope::User => pb::KillSwitchScope::User,
        Scope::Tool => pb::KillSwitchScope::Tool,
        Scope::Session => pb::KillSwitchScope::Session,
    };
    let r = k.released.as_ref();
    pb::KillSwitch {
        id: k.id.clone(),
        scope: scope.into(),
        target: k.target.clone(),
        reason: k.reason.clone(),
        engaged_by: k.engaged_by.clone(),
        engaged_at: Some(timestamp(k.engaged_at)),
        expires_at: k.expires_at.map(timestamp),
        active: k.is_active(now),
        released_by: r.map(|r| r.by.clone()).unwrap_or_default(),
        released_at: r.map(|r| timestamp(r.at)),
        release_reason: r.map(|r| r.reason.clone()).unwrap_or_default(),
    }
}

pub fn approval(a: &Approval) -> pb::Approval {
    let status = match a.status {
        ApprovalStatus::Pending => pb::ApprovalStatus::Pending,
        ApprovalStatus::Approved => pb::ApprovalStatus::Approved,
        ApprovalStatus::Denied => pb::ApprovalStatus::Denied,
        ApprovalStatus::Expired => pb::ApprovalStatus::Expired,
        ApprovalStatus::Cancelled => pb::ApprovalStatus::Cancelled,
    };
    pb::Approval {
        approval_id: a.id.clone(),
        status: status.into(),
        session_id: a.session_id.clone(),
        tenant: a.tenant.clone().unwrap_or_default(),
        agent: a.agent.clone(),
        user: a.user.clone().unwrap_or_default(),
        tool: a.tool.clone(),
        arguments_redacted_json: a.arguments_redacted.clone(),
        arguments_digest: a.arguments_digest.clone(),
        requirements: a
            .requirements
            .iter()
            .map(|r| pb::ApprovalRequirement {
                policy_id: r.policy_id.clone(),
                group: r.group.clone(),
                quorum: r.quorum,
            })
            .collect(),
        reasons: a.reasons.iter().map(reason).collect(),
        requested_at: Some(timestamp(a.requested_at)),
        expires_at: Some(timestamp(a.expires_at)),
        votes: a
            .votes
            .iter()
            .map(|v| pb::ApprovalVote {
                approver: v.approver.clone(),
                person: v.person.clone(),
                vote: v.vote.as_str().to_owned(),
                comment: v.comment.clone(),
                at: Some(timestamp(v.at)),
            })
            .collect(),
        consumed_at: a.consumed_at.map(timestamp),
        decision_id: a.consumed_by.clone().unwrap_or_default(),
    }
}

/// A page from `page_size` and an opaque `page_token` (as returned by a previous page).
pub fn page(page_size: u32, page_token: &str) -> Result<Page, Status> {
    let limit = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(invalid("page_size", format!("at most {MAX_PAGE_SIZE}")))
        }
        n => n,
    };
    let after_seq = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| invalid("page_token", "not a token from a previous page"))?
    };
    Ok(Page { after_seq, limit })
}

pub fn retrieval(out: crate::domain::retrieving::RetrievalOutcome) -> pb::RetrievalDecision {
    pb::RetrievalDecision {
        decision_id: out.decision_id,
        documents: out
            .documents
            .iter()
            .map(|d| pb::DocumentDecision {
                id: d.id.clone(),
                outcome: outcome(d.outcome).into(),
                reasons: d.reasons.iter().map(reason).collect(),
            })
            .collect(),
        allowed_ids: out.allowed_ids,
        policy_version: out.policy_version,
        session_labels: out.session_labels,
    }
}
