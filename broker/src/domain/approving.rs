//! The approval flow on the broker: asking for approval (from `authorize`), agents awaiting the outcome,
//! approvers voting, watchers, expiry, and cancellation by kill switches. Every answer an agent gets here
//! is a recorded decision; an ALLOW only after kill switches, the session and the policies were checked
//! again with the approval in context, and the approval consumed in the same transaction.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::broadcast;

use super::approval::{
    check_voter_token, Approval, ApprovalStatus, Refusal, Vote, VoteRecord, MAX_COMMENT_LEN,
};
use super::audit::CallFacts;
use super::broker::{invalid, require, tenant_mismatch, Broker, Error};
use super::decision::{Decision, Outcome, Reason, ReasonCode};
use super::killswitch::{KillSwitch, Subject};
use super::tenancy::{self, TenantScope};
use crate::auth::{Principal, Role};
use crate::clock::{micros_of, Micros};
use crate::ids;
use crate::policy::{ApprovalFacts, ToolCall};
use crate::store::{ApprovalFilter, ApprovalWrite, DecisionRecord, Page, Recorded, VoteResult};

impl Broker {
    /// The approval a PENDING_APPROVAL decision asks for.
    pub(super) fn new_approval(
        &self,
        decision: &Decision,
        caller: &Principal,
        call: &CallFacts,
        verdict_expires: Option<Duration>,
        now: Micros,
    ) -> Approval {
        // A policy's `@approval_expires` wins; otherwise the configured default.
        let expiry = verdict_expires.unwrap_or(self.settings.approvals.default_expiry);
        Approval {
            id: ids::approval_id(),
            status: ApprovalStatus::Pending,
            session_id: decision.session_id.clone(),
            // The session's tenant: `decide_and_record` asks only in sessions of the caller's tenant.
            tenant: caller.tenant.clone(),
            agent: caller.subject.clone(),
            user: caller.user.clone(),
            tool: decision.tool.clone(),
            call_id: decision.call_id.clone(),
            decision_id: decision.decision_id.clone(),
            arguments_redacted: call.arguments_redacted.clone(),
            arguments_digest: call.arguments_digest.clone(),
            requirements: Vec::new(),
            reasons: decision.reasons.clone(),
            requested_at: now,
            expires_at: now.saturating_add(micros_of(expiry)),
            votes: Vec::new(),
            consumed_at: None,
            consumed_by: None,
            updated_at: now,
        }
    }

    /// The approval, if it exists and was asked for by this caller (agent and user); otherwise NotFound,
    /// so approval ids reveal nothing to other agents.
    async fn own_approval(&self, caller: &Principal, approval_id: &str) -> Result<Approval, Error> {
        if !ids::is_well_formed(approval_id, "apr_") {
            return Err(invalid(
                "approval_id",
                "not an approval id (`apr_` and 32 hex digits)",
            ));
        }
        match self.bounded(self.store.approval(approval_id)).await? {
            Some(a) if a.agent == caller.subject && a.user == caller.user => {
                if !tenancy::same_tenant(caller, a.tenant.as_deref()) {
                    return Err(tenant_mismatch("approval", approval_id));
                }
                Ok(a)
            }
            _ => Err(Error::NotFound(format!(
                "no approval `{approval_id}` for this agent"
            ))),
        }
    }

    /// Waits (at most `wait`, capped by `approvals.max_wait`) for people to settle the approval, then
    /// answers with the final decision; when time runs out, with the PENDING_APPROVAL decision again.
    pub async fn await_approval(
        &self,
        caller: &Principal,
        approval_id: &str,
        wait: Duration,
    ) -> Result<Decision, Error> {
        require(caller, Role::Agent)?;
        let wait = wait.min(self.settings.approvals.max_wait);
        let deadline = Instant::now() + wait;
        let mut changes = self.approval_changes.subscribe();
        loop {
            let approval = self.own_approval(caller, approval_id).await?;
            let now = self.now();
            if approval.status_at(now) != ApprovalStatus::Pending || Instant::now() >= deadline {
                return self.settle(caller, approval, now).await;
            }
            // Woken by a vote through this broker at once, or by the poll for votes through others.
            let nap = self
                .settings
                .approvals
                .poll_interval
                .min(deadline.saturating_duration_since(Instant::now()));
            let _ = tokio::time::timeout(nap, changes.recv()).await;
        }
    }

    /// The answer for an approval as it stands now.
    async fn settle(
        &self,
        caller: &Principal,
        approval: Approval,
        now: Micros,
    ) -> Result<Decision, Error> {
        let refused = |code: ReasonCode, message: String| Some(Reason::new(code, message));
        let id = approval.id.clone();
        let final_refusal = match (approval.status_at(now), approval.consumed_at) {
            (ApprovalStatus::Pending, _) => {
                // Still waiting: the decision that asked, as recorded.
                let prior = self
                    .bounded(self.store.recorded_call(
                        &approval.session_id,
                        &approval.agent,
                        &approval.call_id,
                    ))
                    .await?;
                return prior.map(|p| p.decision).ok_or_else(|| {
                    Error::Internal(format!("pending approval `{id}` has no recorded decision"))
                });
            }
            (ApprovalStatus::Approved, Some(_)) => refused(
                ReasonCode::ApprovalUsed,
                format!("approval `{id}` was already used"),
            ),
            (ApprovalStatus::Approved, None) => None,
            (ApprovalStatus::Denied, _) => {
                let who: Vec<String> = approval
                    .votes
                    .iter()
                    .filter(|v| v.vote == Vote::Deny)
                    .map(|v| format!("{}: {}", v.approver, v.comment))
                    .collect();
                refused(
                    ReasonCode::ApprovalDenied,
                    format!("approval `{id}` was denied ({})", who.join("; ")),
                )
            }
            (ApprovalStatus::Expired, _) => refused(
                ReasonCode::ApprovalExpired,
                format!("approval `{id}` expired before enough people approved"),
            ),
            (ApprovalStatus::Cancelled, _) => refused(
                ReasonCode::ApprovalCancelled,
                format!("approval `{id}` was cancelled"),
            ),
        };
        let engine = self.policies();
        let mut decision = Decision {
            decision_id: ids::decision_id(),
            outcome: Outcome::Deny,
            reasons: Vec::new(),
            policy_version: engine.version().to_owned(),
            session_id: approval.session_id.clone(),
            tool: approval.tool.clone(),
            call_id: approval.call_id.clone(),
            decided_at: now,
            approval_id: Some(id.clone()),
        };
        let mut write = None;
        let mut labels_seen = None;
        let mut calls_seen = None;
        if let Some(r) = final_refusal {
            decision.reasons.push(r);
        } else if let Some(killed) = self.kill_check(
            caller,
            Some(&approval.tool),
            Some(&approval.session_id),
            now,
        ) {
            // Approved, but stopped since: nothing approved under a killed scope is used.
            decision.reasons.push(killed);
        } else {
            match self
                .bounded(self.store.session(&approval.session_id))
                .await?
            {
                None => decision.reasons.push(Reason::new(
                    ReasonCode::SessionNotFound,
                    format!("no session `{}`", approval.session_id),
                )),
                Some(s) if s.agent != caller.subject || s.user != caller.user => {
                    decision.reasons.push(Reason::new(
                        ReasonCode::SessionNotOwned,
                        "the session belongs to another agent or user",
                    ))
                }
                Some(s) => {
                    labels_seen = Some(s.labels.len());
                    if let Some(refusal) = self
                        .lineage_kill_check(caller, Some(&approval.tool), &s, now)
                        .or_else(|| s.refusal(now))
                    {
                        decision.reasons.push(refusal);
                    } else if !s.allows_tool(&approval.tool) {
                        decision.reasons.push(Reason::new(
                            ReasonCode::NotInSessionScope,
                            format!("tool `{}` is outside this session's scopes", approval.tool),
                        ));
                    } else {
                        let args_text = self.bounded(self.store.approval_arguments(&id)).await?;
                        let args: Option<serde_json::Value> = args_text
                            .as_deref()
                            .and_then(|t| serde_json::from_str(t).ok());
                        match args {
                            None => decision.reasons.push(Reason::new(
                                ReasonCode::ApprovalUsed,
                                format!("approval `{id}` no longer holds its arguments"),
                            )),
                            Some(args) => {
                                let approvers = approval.approvers();
                                let roles: Vec<&str> =
                                    caller.roles.iter().map(|r| r.as_str()).collect();
                                let call = ToolCall {
                                    agent: &s.agent,
                                    user: s.user.as_deref(),
                                    tenant: caller.tenant.as_deref(),
                                    roles,
                                    tool: &approval.tool,
                                    args: &args,
                                    session: super::broker::session_facts(&s),
                                    approval: None,
                                };
                                // What the policies in effect now ask of people (a group, a quorum or
                                // an expiry added since, or brought by a label the session gained):
                                // `context.approval` lifts an `@approval` forbid whatever it asks, so
                                // the votes must meet every requirement first.
                                let asked = engine.decide(&call);
                                let unmet = match asked.outcome {
                                    Outcome::PendingApproval => approval.unmet(
                                        &asked.requirements,
                                        asked.approval_expires,
                                        now,
                                    ),
                                    Outcome::Allow | Outcome::Deny => Vec::new(),
                                };
                                if !unmet.is_empty() {
                                    decision.reasons.push(Reason::new(
                                        ReasonCode::ApprovalInsufficient,
                                        format!(
                                            "approval `{id}` does not meet what the policies in effect now ask: {}; ask again with a new call",
                                            unmet.join("; ")
                                        ),
                                    ));
                                } else {
                                    // The policies in effect now decide, with the approval in context: a policy
                                    // tightened since the approval still wins.
                                    let verdict = engine.decide(&ToolCall {
                                        approval: Some(ApprovalFacts {
                                            id: &id,
                                            approvers: approvers
                                                .iter()
                                                .map(String::as_str)
                                                .collect(),
                                        }),
                                        ..call
                                    });
                                    decision.outcome = match verdict.outcome {
                                        Outcome::Allow => Outcome::Allow,
                                        Outcome::Deny | Outcome::PendingApproval => Outcome::Deny,
                                    };
                                    decision.reasons = verdict.reasons;
                                    if decision.is_allow()
                                        && engine.reads_session_calls(&approval.tool)
                                    {
                                        calls_seen = Some(s.tool_calls_used);
                                    }
                                }
                                if decision.is_allow() {
                                    decision.reasons.push(Reason::new(
                                        ReasonCode::ApprovalGranted,
                                        format!("approved by {}", approvers.join(", ")),
                                    ));
                                    write = Some(ApprovalWrite::Consume {
                                        approval_id: id.clone(),
                                        arguments_digest: approval.arguments_digest.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        let call = CallFacts {
            event_id: ids::event_id(now),
            agent: caller.subject.clone(),
            user: caller.user.clone(),
            arguments_digest: approval.arguments_digest.clone(),
            arguments_redacted: approval.arguments_redacted.clone(),
            replay_of: None,
        };
        let spend_budget = decision.is_allow();
        let record = DecisionRecord {
            decision,
            call,
            spend_budget,
            remember: false,
            now,
            approval: write,
            labels_seen,
            calls_seen,
        };
        match self.store.record_decision(record).await? {
            Recorded::Committed(d) => {
                if d.is_allow() {
                    self.sessions.spent(&d.session_id);
                }
                Ok(d)
            }
            Recorded::Replayed(prior) => Ok(prior.decision),
            // Nothing was used: the approval still waits for this call, decided again on the next await.
            Recorded::Stale => Err(Error::Unavailable(format!(
                "session `{}` changed (labels, calls) while the approved call was decided; nothing was used, call again",
                approval.session_id
            ))),
        }
    }

    pub async fn get_approval(
        &self,
        caller: &Principal,
        approval_id: &str,
    ) -> Result<Approval, Error> {
        require(caller, Role::Approver)?;
        if !ids::is_well_formed(approval_id, "apr_") {
            return Err(invalid(
                "approval_id",
                "not an approval id (`apr_` and 32 hex digits)",
            ));
        }
        // Another tenant's approval is not found: its id reveals nothing outside its tenant.
        self.store
            .approval(approval_id)
            .await?
            .filter(|a| TenantScope::of(caller).sees(a.tenant.as_deref()))
            .ok_or_else(|| Error::NotFound(format!("no approval `{approval_id}`")))
    }

    pub async fn list_approvals(
        &self,
        caller: &Principal,
        filter: ApprovalFilter,
        page: Page,
    ) -> Result<(Vec<Approval>, Option<i64>), Error> {
        require(caller, Role::Approver)?;
        let filter = ApprovalFilter {
            tenant: TenantScope::of(caller),
            ..filter
        };
        Ok(self.store.list_approvals(&filter, page).await?)
    }

    /// One approver's yes or no. Separation of duties is checked here and again inside the store's
    /// transaction (where concurrent votes through other brokers are visible).
    pub async fn vote(
        &self,
        caller: &Principal,
        approval_id: &str,
        vote: Vote,
        comment: &str,
    ) -> Result<Approval, Error> {
        require(caller, Role::Approver)?;
        if comment.chars().count() > MAX_COMMENT_LEN {
            return Err(invalid(
                "comment",
                format!("at most {MAX_COMMENT_LEN} characters"),
            ));
        }
        if !ids::is_well_formed(approval_id, "apr_") {
            return Err(invalid(
                "approval_id",
                "not an approval id (`apr_` and 32 hex digits)",
            ));
        }
        let current = self
            .bounded(self.store.approval(approval_id))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no approval `{approval_id}`")))?;
        // Refused, not hidden: the caller holds the id. Even an admin, who sees every tenant's
        // approvals, votes only in its own.
        if !tenancy::same_tenant(caller, current.tenant.as_deref()) {
            return Err(tenant_mismatch("approval", approval_id));
        }
        check_voter_token(
            &current,
            caller.has_role(Role::Agent),
            caller.user.as_deref(),
            caller.person.as_deref(),
            &self.settings.person_claim,
        )
        .map_err(refused)?;
        let now = self.now();
        let record = VoteRecord {
            approver: caller.subject.clone(),
            person: caller.person.clone().unwrap_or_default(),
            groups: caller.groups.iter().cloned().collect(),
            vote,
            comment: comment.to_owned(),
            at: now,
        };
        current.check_voter(&record, now).map_err(refused)?;
        match self
            .store
            .vote_on_approval(approval_id, record, now)
            .await?
        {
            VoteResult::Counted(a) => {
                self.publish_approval(a.clone());
                Ok(a)
            }
            VoteResult::Refused(r) => Err(refused(r)),
            VoteResult::NotFound => Err(Error::NotFound(format!("no approval `{approval_id}`"))),
        }
    }

    /// Pending approvals now, and every approval change from here on (through any broker); the watcher
    /// passes on only the changes the scope sees (the caller's tenant's, see `tenancy`).
    pub async fn watch_approvals(
        &self,
        caller: &Principal,
    ) -> Result<(Vec<Approval>, broadcast::Receiver<Approval>, TenantScope), Error> {
        require(caller, Role::Approver)?;
        let scope = TenantScope::of(caller);
        let changes = self.approval_changes.subscribe();
        let mut pending = self.store.pending_approvals().await?;
        pending.retain(|a| scope.sees(a.tenant.as_deref()));
        Ok((pending, changes, scope))
    }

    /// A kill switch cancels the pending approvals it covers.
    pub(super) async fn cancel_approvals_under(&self, switch: &KillSwitch) -> Result<(), Error> {
        let pending = self.store.pending_approvals().await?;
        let mut covered = Vec::new();
        for a in pending {
            let (tenant, ancestors) = match self.store.session(&a.session_id).await? {
                Some(s) => (s.tenant, s.ancestors),
                None => (None, Vec::new()),
            };
            // A SESSION switch covers the session's descendants, and so their approvals.
            let subject = Subject {
                tenant: tenant.as_deref(),
                agent: &a.agent,
                user: a.user.as_deref(),
                tool: Some(&a.tool),
                session: Some(&a.session_id),
                ancestors: &ancestors,
            };
            if switch.covers(&subject) {
                covered.push(a.id);
            }
        }
        if covered.is_empty() {
            return Ok(());
        }
        let reason = format!("kill switch `{}`: {}", switch.id, switch.reason);
        for a in self
            .store
            .cancel_approvals(&covered, &switch.engaged_by, &reason, self.now())
            .await?
        {
            self.publish_approval(a);
        }
        Ok(())
    }

    /// Announces a new pending approval: to watchers, and to the webhook if one is configured.
    pub(super) fn announce_approval(&self, approval: &Approval) {
        self.publish_approval(approval.clone());
        if let Some(hook) = &self.webhook {
            hook.notify(
                "approval.requested",
                json!({
                    "approval_id": approval.id,
                    "session_id": approval.session_id,
                    "tenant": approval.tenant,
                    "agent": approval.agent,
                    "user": approval.user,
                    "tool": approval.tool,
                    "arguments_redacted": serde_json::from_str::<serde_json::Value>(&approval.arguments_redacted).unwrap_or_default(),
                    "arguments_digest": approval.arguments_digest,
                    "requirements": approval.requirements,
                    "reasons": approval.reasons,
                    "expires_at": crate::clock::rfc3339(approval.expires_at),
                }),
            );
        }
    }
}

fn refused(r: Refusal) -> Error {
    match r {
        Refusal::IsAgent
        | Refusal::IsUser
        | Refusal::AgentToken
        | Refusal::NoPerson(_)
        | Refusal::NotInGroup(_) => Error::Refused {
            code: "SEPARATION_OF_DUTIES",
            message: r.to_string(),
            permission: true,
        },
        Refusal::AlreadyVoted | Refusal::NotPending(_) => Error::Refused {
            code: "APPROVAL_NOT_VOTABLE",
            message: r.to_string(),
            permission: false,
        },
    }
}

/// Keeps watchers informed of approval changes made through any broker, and expires approvals.
pub async fn watch_store(broker: Broker, poll: Duration) {
    let mut since: Micros = broker.now();
    loop {
        tokio::time::sleep(poll).await;
        let now = broker.now();
        if let Ok(expired) = broker.store.expire_approvals(now).await {
            for a in expired {
                broker.publish_approval(a);
            }
        }
        // A change is stamped before it commits, so one stamped earlier can land after a later one:
        // look back by the commit bound (plus a second); `publish_approval` drops what was announced already.
        let lag = micros_of(broker.settings.store_bound).saturating_add(1_000_000);
        let Ok(changed) = broker
            .store
            .approvals_changed_since(since.saturating_sub(lag), 500)
            .await
        else {
            continue;
        };
        for a in changed {
            since = since.max(a.updated_at);
            broker.publish_approval(a);
        }
    }
}

/// What makes two sightings of an approval the same change.
type Signature = (ApprovalStatus, usize, bool);

/// Approvals already announced, so each change reaches watchers once whether it was seen locally or in
/// the store (bounded: cleared past this many).
#[derive(Debug, Default)]
pub struct Announced(std::sync::Mutex<std::collections::HashMap<String, Signature>>);

const MAX_ANNOUNCED: usize = 100_000;

impl Broker {
    /// Announces an approval change once: to watchers and waiting agents.
    pub(super) fn publish_approval(&self, a: Approval) {
        let signature = (a.status, a.votes.len(), a.consumed_at.is_some());
        let fresh = {
            let mut seen = self
                .announced
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.len() > MAX_ANNOUNCED {
                seen.clear();
            }
            seen.insert(a.id.clone(), signature) != Some(signature)
        };
        if fresh {
            let _ = self.approval_changes.send(a);
        }
    }
}
