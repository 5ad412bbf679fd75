//! The decision path: session checks, then Cedar, then a durable audit record, in that order.
//! A DENY is an `Ok(Decision)`; an `Err` means the broker could not decide and the tool must not run.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::approval::{Approval, Requirement};
use super::audit::{self, CallFacts, EventBody, EventKind};
use super::decision::{Decision, Outcome, Reason, ReasonCode};
use super::killswitch::{Check, KillSwitch, Release, Scope, Subject, MAX_REASON_LEN};
use super::quarantine::{Quarantine, Seen};
use super::session::{is_tool_name, Session, ToolScope, MAX_SESSION_DEPTH, MAX_TOOL_NAME_LEN};
use super::session_cache::SessionCache;
use super::switchboard::{Change, Switchboard};
use super::tenancy::{self, TenantScope};
use crate::auth::{Principal, Role};
use crate::clock::{micros_of, Micros, SharedClock};
use crate::config::{AuditConfig, Limits, SessionConfig};
use crate::ids;
use crate::notify::Webhook;
use crate::policy::{PolicyEngine, SessionFacts, ToolCall};
use crate::store::{
    self, ApprovalWrite, ChainReport, DecisionRecord, EventFilter, Page, Recorded, Store,
};

pub const MAX_CALL_ID_LEN: usize = 128;
pub const MAX_PURPOSE_LEN: usize = 1024;
pub const MAX_SCOPES: usize = 256;
/// Decisions of one call made before giving up when the session keeps gaining labels under it.
const MAX_DECIDE_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, named by its field.
    #[error("`{field}`: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("role `{needed}` is required")]
    PermissionDenied { needed: &'static str },
    #[error(
        "`call_id` `{0}` was already used in this session for another tool or other arguments"
    )]
    CallIdReused(String),
    /// The store could not be reached or did not commit within its bound: no decision was made.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// The caller may not do this to this approval (separation of duties, or it is no longer pending).
    #[error("{message}")]
    Refused {
        code: &'static str,
        message: String,
        permission: bool,
    },
    /// A kill switch stops the caller (for calls that are not decisions, such as opening a session).
    #[error("{message}")]
    Killed {
        kill_switch_id: Option<String>,
        message: String,
    },
    #[error("broker overloaded: {0}")]
    Overloaded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        message: message.into(),
    }
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e.kind() {
            store::ErrorKind::Overloaded => Error::Overloaded(e.to_string()),
            store::ErrorKind::Unavailable | store::ErrorKind::Timeout => {
                Error::Unavailable(e.to_string())
            }
            _ => Error::Internal(e.to_string()),
        }
    }
}

/// What an agent asks for when it opens a session.
#[derive(Debug, Clone, Default)]
pub struct OpenSession {
    pub tools: Vec<String>,
    pub ttl: Option<Duration>,
    pub max_tool_calls: u32,
    pub purpose: String,
    pub collections: Vec<String>,
    pub parent_session_id: Option<String>,
}

/// One tool call to decide, as received.
#[derive(Debug, Clone)]
pub struct ToolCallRequest {
    pub session_id: String,
    pub tool: String,
    pub arguments_json: String,
    pub call_id: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub session: SessionConfig,
    pub audit: AuditConfig,
    pub limits: Limits,
    /// The bound on every store step of a decision (`store.commit_timeout`): past it, UNAVAILABLE.
    pub store_bound: Duration,
    pub quarantine: Vec<crate::config::QuarantineRule>,
    pub approvals: crate::config::ApprovalsConfig,
    /// `auth.person_claim`, named when a vote is refused for lacking it.
    pub person_claim: String,
}

#[derive(Clone)]
pub struct Broker {
    pub(super) store: Store,
    policies: watch::Receiver<Arc<PolicyEngine>>,
    clock: SharedClock,
    pub(super) settings: Arc<Settings>,
    switchboard: Switchboard,
    quarantine: Arc<Quarantine>,
    /// Sessions as last read, for the decision path (`session_cache`: what the writer re-checks).
    pub(super) sessions: Arc<SessionCache>,
    /// Approval changes made through this broker or seen in the store: wakes waiting agents, feeds watchers.
    pub(super) approval_changes: broadcast::Sender<Approval>,
    pub(super) announced: Arc<super::approving::Announced>,
    pub(super) webhook: Option<Webhook>,
    /// `audit.redact_fields` and the built-in secret names, split once.
    redactor: Arc<super::redaction::Redactor>,
}

/// Who engages automatic quarantine switches, in the audit trail.
pub const QUARANTINE_ACTOR: &str = "broker:auto-quarantine";

/// An admin's request to stop something.
#[derive(Debug, Clone)]
pub struct Engage {
    pub scope: Scope,
    pub target: String,
    pub reason: String,
    pub expires_at: Option<Micros>,
}

/// A call on another tenant's session or approval (see `tenancy`).
pub(super) fn tenant_mismatch(what: &str, id: &str) -> Error {
    Error::Refused {
        code: tenancy::TENANT_MISMATCH,
        message: tenancy::mismatch_message(what, id),
        permission: true,
    }
}

pub(super) fn require(principal: &Principal, role: Role) -> Result<(), Error> {
    if principal.has_role(role) {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            needed: role.as_str(),
        })
    }
}

/// Nesting depth of a JSON value, counted without recursion so hostile input cannot exhaust the stack.
fn json_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    max
}

impl Broker {
    pub fn new(
        store: Store,
        policies: watch::Receiver<Arc<PolicyEngine>>,
        clock: SharedClock,
        settings: Settings,
        switchboard: Switchboard,
        webhook: Option<Webhook>,
    ) -> Self {
        let quarantine = Arc::new(Quarantine::new(settings.quarantine.clone()));
        let sessions = Arc::new(SessionCache::new(settings.session.cache_ttl));
        let (approval_changes, _) = broadcast::channel(1024);
        let redactor = Arc::new(super::redaction::Redactor::new(
            &settings.audit.redact_fields,
        ));
        Self {
            store,
            policies,
            clock,
            settings: Arc::new(settings),
            switchboard,
            quarantine,
            sessions,
            approval_changes,
            announced: Arc::default(),
            webhook,
            redactor,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The policy set in effect now.
    pub fn policies(&self) -> Arc<PolicyEngine> {
        self.policies.borrow().clone()
    }

    /// A store read bounded like a commit: a frozen database yields UNAVAILABLE, not a hung call.
    pub(super) async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, store::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.settings.store_bound, read).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::Unavailable(format!(
                "no answer from the database within {:?}",
                self.settings.store_bound
            ))),
        }
    }

    pub(super) fn now(&self) -> Micros {
        self.clock.now_micros()
    }

    pub async fn open_session(
        &self,
        caller: &Principal,
        req: OpenSession,
    ) -> Result<Session, Error> {
        require(caller, Role::Agent)?;
        if let Some(killed) = self.kill_check(caller, None, None, self.now()) {
            return Err(Error::Killed {
                kill_switch_id: killed.kill_switch_id,
                message: killed.message,
            });
        }
        let cfg = &self.settings.session;
        if req.tools.is_empty() {
            return Err(invalid(
                "tools",
                "name at least one tool or pattern (e.g. `email.*`)",
            ));
        }
        if req.tools.len() > MAX_SCOPES {
            return Err(invalid("tools", format!("at most {MAX_SCOPES} scopes")));
        }
        let engine = self.policies();
        let mut scopes = Vec::with_capacity(req.tools.len());
        for raw in &req.tools {
            let scope = ToolScope::parse(raw).map_err(|e| invalid("tools", e.to_string()))?;
            if !engine.tool_names().any(|t| scope.matches(t)) {
                return Err(invalid(
                    "tools",
                    format!("`{scope}` matches no tool in the catalogue"),
                ));
            }
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let ttl = match req.ttl {
            None => cfg.default_ttl,
            Some(t) if t.is_zero() => return Err(invalid("ttl", "must be positive")),
            Some(t) if t > cfg.max_ttl => {
                return Err(invalid(
                    "ttl",
                    format!("at most {}", humantime::format_duration(cfg.max_ttl)),
                ))
            }
            Some(t) => t,
        };
        let max_tool_calls = match req.max_tool_calls {
            0 => cfg.default_max_tool_calls,
            n if n > cfg.max_tool_calls => {
                return Err(invalid(
                    "max_tool_calls",
                    format!("at most {}", cfg.max_tool_calls),
                ))
            }
            n => n,
        };
        if req.purpose.chars().count() > MAX_PURPOSE_LEN {
            return Err(invalid(
                "purpose",
                format!("at most {MAX_PURPOSE_LEN} characters"),
            ));
        }
        if req.collections.len() > MAX_SCOPES
            || req
                .collections
                .iter()
                .any(|c| c.is_empty() || c.len() > MAX_TOOL_NAME_LEN)
        {
            return Err(invalid(
                "collections",
                format!("at most {MAX_SCOPES} names of 1 to {MAX_TOOL_NAME_LEN} bytes"),
            ));
        }
        // A child inherits its parent's labels (what was read stays read) and its lineage: a SESSION kill
        // switch on any ancestor covers it.
        let (inherited, ancestors) = match &req.parent_session_id {
            None => (Vec::new(), Vec::new()),
            Some(parent) => match self.owned_session(caller, parent).await {
                Ok(p) if p.ancestors.len() >= MAX_SESSION_DEPTH => {
                    return Err(invalid(
                        "parent_session_id",
                        format!("sessions nest at most {MAX_SESSION_DEPTH} deep"),
                    ))
                }
                Ok(p) => {
                    let mut ancestors = Vec::with_capacity(p.ancestors.len() + 1);
                    ancestors.push(p.id);
                    ancestors.extend(p.ancestors);
                    (p.labels, ancestors)
                }
                Err(Error::NotFound(_)) => {
                    return Err(invalid(
                        "parent_session_id",
                        format!("no session `{parent}` for this agent"),
                    ))
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(killed) = self.kill_check_in(caller, None, None, &ancestors, self.now()) {
            return Err(Error::Killed {
                kill_switch_id: killed.kill_switch_id,
                message: killed.message,
            });
        }
        let mut collections = req.collections.clone();
        collections.sort();
        collections.dedup();
        let now = self.now();
        let session = Session {
            id: ids::session_id(),
            agent: caller.subject.clone(),
            user: caller.user.clone(),
            tenant: caller.tenant.clone(),
            tools: scopes,
            purpose: req.purpose,
            created_at: now,
            expires_at: now.saturating_add(micros_of(ttl)),
            max_tool_calls,
            tool_calls_used: 0,
            closed_at: None,
            collections,
            labels: inherited,
            ancestors,
        };
        let event = EventBody::for_session(EventKind::SessionOpened, &session, now);
        // The store adds the labels the agent's principal carries from its other sessions.
        let (_, session) = self
            .store
            .open_session_carrying(&session, event, cfg.taint_carry_over)
            .await?;
        Ok(session)
    }

    pub async fn close_session(
        &self,
        caller: &Principal,
        session_id: &str,
    ) -> Result<Session, Error> {
        require(caller, Role::Agent)?;
        let session = self.owned_session(caller, session_id).await?;
        if session.closed_at.is_some() {
            return Ok(session);
        }
        let now = self.now();
        let event = EventBody::for_session(EventKind::SessionClosed, &session, now);
        let closing = self.store.close_session(&session.id, now, event).await;
        self.sessions.forget(&session.id);
        match closing {
            // Another close won the race: the session is closed either way.
            Err(e) if e.kind() == store::ErrorKind::Conflict => {}
            other => {
                other?;
            }
        }
        self.owned_session(caller, session_id).await
    }

    async fn owned_session(&self, caller: &Principal, session_id: &str) -> Result<Session, Error> {
        if !ids::is_well_formed(session_id, "ses_") {
            return Err(invalid(
                "session_id",
                "not a session id (`ses_` and 32 hex digits)",
            ));
        }
        match self.bounded(self.store.session(session_id)).await? {
            Some(s) if s.agent == caller.subject && s.user == caller.user => {
                if !tenancy::same_tenant(caller, s.tenant.as_deref()) {
                    return Err(tenant_mismatch("session", session_id));
                }
                Ok(s)
            }
            _ => Err(Error::NotFound(format!(
                "no session `{session_id}` for this agent"
            ))),
        }
    }

    /// Decides one tool call. The returned decision is committed to the audit trail.
    pub async fn authorize(
        &self,
        caller: &Principal,
        req: ToolCallRequest,
    ) -> Result<Decision, Error> {
        require(caller, Role::Agent)?;
        let limits = &self.settings.limits;
        if !ids::is_well_formed(&req.session_id, "ses_") {
            return Err(invalid(
                "session_id",
                "not a session id (`ses_` and 32 hex digits)",
            ));
        }
        if req.tool.is_empty() || req.tool.len() > MAX_TOOL_NAME_LEN {
            return Err(invalid(
                "tool",
                format!("must be 1 to {MAX_TOOL_NAME_LEN} bytes"),
            ));
        }
        if req.call_id.is_empty()
            || req.call_id.len() > MAX_CALL_ID_LEN
            || !req.call_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "call_id",
                format!("required: 1 to {MAX_CALL_ID_LEN} printable ASCII characters"),
            ));
        }
        if req.arguments_json.len() > limits.max_arguments_bytes {
            return Err(invalid(
                "arguments_json",
                format!("larger than {} bytes", limits.max_arguments_bytes),
            ));
        }
        let args: Value = if req.arguments_json.trim().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            // Strict: a key named twice is refused, so the policies and the tool cannot read different
            // values (`serde_json` alone keeps the last).
            crate::json::from_str(&req.arguments_json)
                .map_err(|e| invalid("arguments_json", e.to_string()))?
        };
        if json_depth(&args) > limits.max_arguments_depth {
            return Err(invalid(
                "arguments_json",
                format!("nested deeper than {}", limits.max_arguments_depth),
            ));
        }
        let digest =
            audit::arguments_digest(&args).map_err(|e| invalid("arguments_json", e.to_string()))?;
        // The first attempt may decide on the cached session; the writer refuses an ALLOW made on fewer
        // labels than the session has (`Recorded::Stale`), and then the call is decided on a fresh read.
        for attempt in 0..MAX_DECIDE_ATTEMPTS {
            let fresh = attempt > 0;
            if let Some(d) = self
                .decide_and_record(caller, &req, &args, &digest, fresh)
                .await?
            {
                return Ok(d);
            }
            self.sessions.forget(&req.session_id);
        }
        Err(Error::Unavailable(format!(
            "session `{}` kept changing (labels, calls spent) while this call was decided; nothing was recorded, try again",
            req.session_id
        )))
    }

    /// The session as the decision path sees it: cached, unless `fresh` or not cached.
    async fn session_to_decide(
        &self,
        id: &str,
        fresh: bool,
    ) -> Result<Option<Arc<Session>>, Error> {
        if !fresh {
            if let Some(s) = self.sessions.get(id) {
                return Ok(Some(s));
            }
        }
        let read = self.bounded(self.store.session(id)).await?.map(Arc::new);
        if let Some(s) = &read {
            self.sessions.put(Arc::clone(s));
        }
        Ok(read)
    }

    /// One decision and its record. `None`: the writer found it stale (nothing was recorded).
    async fn decide_and_record(
        &self,
        caller: &Principal,
        req: &ToolCallRequest,
        args: &Value,
        digest: &str,
        fresh: bool,
    ) -> Result<Option<Decision>, Error> {
        let now = self.now();
        let engine = self.policies();
        let mut decision = Decision {
            decision_id: ids::decision_id(),
            outcome: Outcome::Deny,
            reasons: Vec::new(),
            policy_version: engine.version().to_owned(),
            session_id: req.session_id.clone(),
            tool: req.tool.clone(),
            call_id: req.call_id.clone(),
            decided_at: now,
            approval_id: None,
        };
        // Calls outside the caller's own session are not remembered, so they cannot poison its call ids.
        let mut remember = true;
        let mut labels_seen = None;
        let mut calls_seen = None;
        let mut pending: Option<(Vec<Requirement>, Option<Duration>)> = None;
        if let Some(killed) = self.kill_check(caller, Some(&req.tool), Some(&req.session_id), now) {
            // Not remembered: once the switch is released, a retry of this call is decided afresh.
            remember = false;
            decision.reasons.push(killed);
        } else {
            match self.session_to_decide(&req.session_id, fresh).await? {
                None => {
                    remember = false;
                    decision.reasons.push(Reason::new(
                        ReasonCode::SessionNotFound,
                        format!("no session `{}`", req.session_id),
                    ));
                }
                Some(s) if s.agent != caller.subject || s.user != caller.user => {
                    remember = false;
                    decision.reasons.push(Reason::new(
                        ReasonCode::SessionNotOwned,
                        format!(
                            "session `{}` belongs to another agent or user",
                            req.session_id
                        ),
                    ));
                }
                // The session's tenant counts, not the token's: a TENANT switch on it holds for every caller.
                Some(s) if !tenancy::same_tenant(caller, s.tenant.as_deref()) => {
                    remember = false;
                    decision.reasons.push(Reason::new(
                        ReasonCode::TenantMismatch,
                        tenancy::mismatch_message("session", &req.session_id),
                    ));
                }
                Some(s) => {
                    // A retry of a call already decided gets the same answer and spends nothing: the writer
                    // finds its key under the chain lock and answers `Replayed` (one read fewer here). Only
                    // calls in the caller's own session are remembered, so nobody else replays its decisions.
                    labels_seen = Some(s.labels.len());
                    if let Some(killed) = self.lineage_kill_check(caller, Some(&req.tool), &s, now)
                    {
                        // A switch on an ancestor session: not remembered either, like any switch.
                        remember = false;
                        decision.reasons.push(killed);
                    } else if let Some(refusal) = s.refusal(now) {
                        // Typed even here: a retry whose arguments would not type-check (`9e2` for an
                        // integer) gets that DENY, never the replay of an earlier ALLOW (below).
                        let mistyped = (refusal.code == ReasonCode::BudgetExhausted)
                            .then(|| engine.argument_error(&req.tool, args))
                            .flatten();
                        decision.reasons.push(match mistyped {
                            Some(message) => Reason::new(ReasonCode::InvalidArguments, message),
                            None => refusal,
                        });
                    } else if !is_tool_name(&req.tool) || !engine.knows_tool(&req.tool) {
                        decision.reasons.push(Reason::new(
                            ReasonCode::UnknownTool,
                            format!("tool `{}` is not in the catalogue", req.tool),
                        ));
                    } else if !s.allows_tool(&req.tool) {
                        decision.reasons.push(Reason::new(
                            ReasonCode::NotInSessionScope,
                            format!("tool `{}` is outside this session's scopes", req.tool),
                        ));
                    } else {
                        let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
                        let verdict = engine.decide(&ToolCall {
                            agent: &s.agent,
                            user: s.user.as_deref(),
                            tenant: caller.tenant.as_deref(),
                            roles,
                            tool: &req.tool,
                            args,
                            session: session_facts(&s),
                            approval: None,
                        });
                        decision.outcome = verdict.outcome;
                        decision.reasons = verdict.reasons;
                        // A policy that read the session's call count decided on a number the writer
                        // checks again under the chain lock (concurrent calls of one session).
                        if decision.is_allow() && engine.reads_session_calls(&req.tool) {
                            calls_seen = Some(s.tool_calls_used);
                        }
                        if verdict.outcome == Outcome::PendingApproval {
                            pending = Some((verdict.requirements, verdict.approval_expires));
                        }
                    }
                }
            }
        }

        let call = CallFacts {
            event_id: ids::event_id(now),
            agent: caller.subject.clone(),
            user: caller.user.clone(),
            arguments_digest: digest.to_owned(),
            arguments_redacted: self.arguments_for_trail(
                &engine,
                &req.tool,
                args,
                decision.outcome,
            )?,
            replay_of: None,
        };
        // What a fresh call gets and a replay of an earlier answer must not hide: a closed or expired
        // session, arguments that do not type-check, a tool no longer known or in scope. Kept (a copy,
        // on this rare path only) in case the writer finds the call id already answered.
        let fresh_denial = (remember && !decision.is_allow() && overrides_replay(&decision))
            .then(|| (decision.clone(), call.clone()));
        let spend_budget = decision.is_allow();
        let approval = match pending {
            Some((requirements, expires)) if decision.outcome == Outcome::PendingApproval => {
                let mut a = self.new_approval(&decision, caller, &call, expires, now);
                a.requirements = requirements;
                decision.approval_id = Some(a.id.clone());
                a.decision_id = decision.decision_id.clone();
                let arguments =
                    serde_jcs::to_string(args).map_err(|e| Error::Internal(e.to_string()))?;
                Some(ApprovalWrite::Request {
                    approval: a,
                    arguments,
                })
            }
            _ => None,
        };
        let asked = match &approval {
            Some(ApprovalWrite::Request { approval, .. }) => Some(approval.clone()),
            _ => None,
        };
        match self
            .store
            .record_decision(DecisionRecord {
                decision,
                call,
                spend_budget,
                remember,
                now,
                approval,
                labels_seen,
                calls_seen,
            })
            .await?
        {
            Recorded::Committed(d) => {
                if d.is_allow() {
                    self.sessions.spent(&d.session_id);
                }
                if let Some(a) = asked.filter(|_| d.outcome == Outcome::PendingApproval) {
                    self.announce_approval(&a);
                }
                self.quarantine_after(&d, caller, now).await;
                Ok(Some(d))
            }
            Recorded::Replayed(prior) => self
                .replayed(caller, req, digest, prior, fresh_denial, now)
                .await
                .map(Some),
            Recorded::Stale => Ok(None),
        }
    }

    /// The arguments as a decision's audit event keeps them: redacted (by name, and as the tool's schema
    /// marks them), and for a DENY at most `audit.denied_arguments_bytes`, so that calls refused without
    /// a session, budget or valid arguments cannot fill the append-only trail.
    fn arguments_for_trail(
        &self,
        engine: &PolicyEngine,
        tool: &str,
        args: &Value,
        outcome: Outcome,
    ) -> Result<String, Error> {
        let redacted = self.redactor.redact(args, engine.sensitive_arguments(tool));
        let text = serde_json::to_string(&redacted).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(match outcome {
            Outcome::Deny => {
                super::redaction::bounded(text, self.settings.audit.denied_arguments_bytes)
            }
            Outcome::Allow | Outcome::PendingApproval => text,
        })
    }

    /// The answer to a call whose `call_id` this session already used. Only the same tool with the same
    /// arguments replays; a session closed or expired since, or arguments that do not type-check, get
    /// the DENY a fresh call gets. Every answer is recorded: a replay as `TOOL_CALL_REPLAYED` naming the
    /// decision it repeats (no budget spent, the arguments not stored again), a DENY standing in for it
    /// as a decision whose `detail` names that earlier one.
    async fn replayed(
        &self,
        caller: &Principal,
        req: &ToolCallRequest,
        digest: &str,
        prior: store::RecordedCall,
        fresh_denial: Option<(Decision, CallFacts)>,
        now: Micros,
    ) -> Result<Decision, Error> {
        if prior.decision.tool != req.tool || prior.arguments_digest != digest {
            return Err(Error::CallIdReused(req.call_id.clone()));
        }
        let earlier = prior.decision.decision_id.clone();
        let (decision, call) = match fresh_denial {
            Some(denial) => denial,
            None => {
                // The cached session may be older than a close through another broker: read it.
                let gone = match self.bounded(self.store.session(&req.session_id)).await? {
                    None => Some(Reason::new(
                        ReasonCode::SessionNotFound,
                        format!("no session `{}`", req.session_id),
                    )),
                    Some(s) => s
                        .refusal(now)
                        .filter(|r| r.code != ReasonCode::BudgetExhausted),
                };
                let call = CallFacts {
                    event_id: ids::event_id(now),
                    agent: caller.subject.clone(),
                    user: caller.user.clone(),
                    arguments_digest: digest.to_owned(),
                    arguments_redacted: String::new(),
                    replay_of: None,
                };
                match gone {
                    Some(reason) => (
                        Decision {
                            decision_id: ids::decision_id(),
                            outcome: Outcome::Deny,
                            reasons: vec![reason],
                            policy_version: self.policies().version().to_owned(),
                            decided_at: now,
                            approval_id: None,
                            ..prior.decision.clone()
                        },
                        call,
                    ),
                    None => (
                        Decision {
                            decided_at: now,
                            ..prior.decision.clone()
                        },
                        call,
                    ),
                }
            }
        };
        let replaying = decision.decision_id == earlier;
        let record = DecisionRecord {
            decision,
            call: CallFacts {
                event_id: ids::event_id(now),
                replay_of: Some(earlier),
                ..call
            },
            spend_budget: false,
            remember: false,
            now,
            approval: None,
            labels_seen: None,
            calls_seen: None,
        };
        match self.store.record_decision(record).await? {
            // The earlier answer, exactly as it was given (its id, its time).
            Recorded::Committed(_) if replaying => Ok(prior.decision),
            Recorded::Committed(d) => Ok(d),
            Recorded::Replayed(_) | Recorded::Stale => Err(Error::Internal(
                "a replay's record was answered as a replay".to_owned(),
            )),
        }
    }

    /// Whether a kill switch stops this caller (and tool, and session) now. A view of the switches too
    /// old to trust stops everything.
    pub(super) fn kill_check(
        &self,
        caller: &Principal,
        tool: Option<&str>,
        session: Option<&str>,
        now: Micros,
    ) -> Option<Reason> {
        self.kill_check_in(caller, tool, session, &[], now)
    }

    /// [`Broker::kill_check`] for a session read from the store: a SESSION switch on one of its
    /// ancestors stops it too.
    pub(super) fn kill_check_session(
        &self,
        caller: &Principal,
        tool: Option<&str>,
        session: &Session,
        now: Micros,
    ) -> Option<Reason> {
        self.kill_check_in(caller, tool, Some(&session.id), &session.ancestors, now)
    }

    /// What [`Broker::kill_check`] on the session's id did not see: a switch on one of its ancestors.
    /// Nothing to do (and nothing read) for a session opened without a parent.
    pub(super) fn lineage_kill_check(
        &self,
        caller: &Principal,
        tool: Option<&str>,
        session: &Session,
        now: Micros,
    ) -> Option<Reason> {
        if session.ancestors.is_empty() {
            return None;
        }
        self.kill_check_session(caller, tool, session, now)
    }

    fn kill_check_in(
        &self,
        caller: &Principal,
        tool: Option<&str>,
        session: Option<&str>,
        ancestors: &[String],
        now: Micros,
    ) -> Option<Reason> {
        let subject = Subject {
            tenant: caller.tenant.as_deref(),
            agent: &caller.subject,
            user: caller.user.as_deref(),
            tool,
            session,
            ancestors,
        };
        let snapshot = self.switchboard.snapshot();
        match snapshot.check(&subject, now, self.switchboard.stale_after()) {
            Check::Clear => None,
            Check::Blocked(k) => Some(Reason::from_kill_switch(
                k.id.clone(),
                format!("stopped by kill switch `{}` ({} {}): {}", k.id, k.scope.as_str(), k.target, k.reason),
            )),
            Check::Unknown { since } => Some(Reason::new(
                ReasonCode::KillSwitch,
                format!(
                    "kill-switch state unknown (the database has not answered for {}); every scope counts as killed",
                    since.map_or_else(|| "ever".to_owned(), |d| format!("{}s", d.as_secs()))
                ),
            )),
        }
    }

    /// Feeds a committed decision to the quarantine rules; a rule that trips engages a switch by itself.
    async fn quarantine_after(&self, d: &Decision, caller: &Principal, now: Micros) {
        // Denials by a kill switch do not count, or a quarantined session would keep re-tripping.
        if d.reasons.iter().any(|r| r.code == ReasonCode::KillSwitch) {
            return;
        }
        // A call naming a session that is not the caller's counts against the caller, never the session.
        let foreign = d.reasons.iter().any(|r| {
            matches!(
                r.code,
                ReasonCode::SessionNotFound | ReasonCode::SessionNotOwned
            )
        });
        let seen = match d.outcome {
            _ if foreign => Seen::ForeignSession,
            Outcome::Deny => Seen::Denied,
            Outcome::Allow | Outcome::PendingApproval => Seen::Allowed,
        };
        let Some(trip) = self
            .quarantine
            .observe(&caller.subject, &d.session_id, seen, now)
        else {
            return;
        };
        let switch = KillSwitch {
            id: ids::kill_switch_id(),
            scope: trip.scope,
            target: trip.target,
            reason: trip.reason,
            engaged_by: QUARANTINE_ACTOR.to_owned(),
            engaged_at: now,
            expires_at: Some(trip.expires_at),
            released: None,
        };
        match self.engage_switch(switch).await {
            Ok(k) => {
                tracing::warn!(kill_switch = %k.id, scope = k.scope.as_str(), target = %k.target, "auto-quarantine engaged")
            }
            Err(e) => tracing::error!(error = %e, "auto-quarantine could not engage its switch"),
        }
    }

    async fn engage_switch(&self, switch: KillSwitch) -> Result<KillSwitch, Error> {
        let event = EventBody::for_kill_switch(
            EventKind::KillSwitchEngaged,
            &switch,
            &switch.engaged_by,
            switch.engaged_at,
        );
        self.store.engage_kill_switch(&switch, event).await?;
        self.switchboard.engaged_here(switch.clone());
        // The switch holds from here; cancelling what was waiting under it is best effort (an approved
        // call is re-checked against the switches before use anyway).
        if let Err(e) = self.cancel_approvals_under(&switch).await {
            tracing::warn!(error = %e, kill_switch = %switch.id, "could not cancel the approvals under a kill switch");
        }
        Ok(switch)
    }

    pub async fn engage(&self, caller: &Principal, req: Engage) -> Result<KillSwitch, Error> {
        require(caller, Role::Admin)?;
        req.scope
            .validate_target(&req.target)
            .map_err(|m| invalid("target", m))?;
        let reason = req.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_LEN {
            return Err(invalid(
                "reason",
                format!("required, at most {MAX_REASON_LEN} characters"),
            ));
        }
        let now = self.now();
        if req.expires_at.is_some_and(|e| e <= now) {
            return Err(invalid("expires_at", "must be in the future"));
        }
        self.engage_switch(KillSwitch {
            id: ids::kill_switch_id(),
            scope: req.scope,
            target: req.target,
            reason: reason.to_owned(),
            engaged_by: caller.subject.clone(),
            engaged_at: now,
            expires_at: req.expires_at,
            released: None,
        })
        .await
    }

    pub async fn release(
        &self,
        caller: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<KillSwitch, Error> {
        require(caller, Role::Admin)?;
        if !ids::is_well_formed(id, "ksw_") {
            return Err(invalid(
                "id",
                "not a kill switch id (`ksw_` and 32 hex digits)",
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_LEN {
            return Err(invalid(
                "reason",
                format!("required, at most {MAX_REASON_LEN} characters"),
            ));
        }
        let release = Release {
            by: caller.subject.clone(),
            at: self.now(),
            reason: reason.to_owned(),
        };
        match self
            .store
            .release_kill_switch(id, &release, release.at)
            .await?
        {
            Some(k) => {
                self.switchboard.released_here(&k.id);
                Ok(k)
            }
            // Unknown, or already released (returned as it is).
            None => self
                .store
                .kill_switch(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no kill switch `{id}`"))),
        }
    }

    pub async fn list_kill_switches(
        &self,
        caller: &Principal,
        include_released: bool,
    ) -> Result<Vec<KillSwitch>, Error> {
        require(caller, Role::Admin)?;
        if include_released {
            Ok(self.store.list_kill_switches(true, 1000).await?)
        } else {
            Ok(self.store.active_kill_switches(self.now()).await?)
        }
    }

    /// The switches in force now, and every change from here on.
    pub fn watch_kill_switches(
        &self,
        caller: &Principal,
    ) -> Result<(Vec<KillSwitch>, broadcast::Receiver<Change>), Error> {
        require(caller, Role::Admin)?;
        let changes = self.switchboard.subscribe();
        let now = self.now();
        let active = self
            .switchboard
            .snapshot()
            .switches
            .iter()
            .filter(|k| k.is_active(now))
            .cloned()
            .collect();
        Ok((active, changes))
    }

    pub async fn list_events(
        &self,
        caller: &Principal,
        filter: EventFilter,
        page: Page,
    ) -> Result<(Vec<audit::AuditEvent>, Option<i64>), Error> {
        require_auditor(caller)?;
        let filter = EventFilter {
            tenant: TenantScope::of(caller),
            ..filter
        };
        Ok(self.store.list_events(&filter, page).await?)
    }

    pub async fn verify_chain(&self, caller: &Principal) -> Result<ChainReport, Error> {
        require_auditor(caller)?;
        Ok(self.store.verify_chain().await?)
    }
}

/// What policies see of a session (`context.session`).
pub(super) fn session_facts(s: &Session) -> SessionFacts<'_> {
    SessionFacts {
        id: &s.id,
        purpose: &s.purpose,
        calls: i64::from(s.tool_calls_used),
        max_calls: i64::from(s.max_tool_calls),
        user: s.user.as_deref().unwrap_or_default(),
        collections: s.collections.iter().map(String::as_str).collect(),
        labels: s.labels.iter().map(String::as_str).collect(),
    }
}

fn require_auditor(caller: &Principal) -> Result<(), Error> {
    if caller.has_role(Role::Auditor) || caller.has_role(Role::Admin) {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            needed: "auditor` or `admin",
        })
    }
}

/// Whether this DENY is one a replay must not hide: the earlier answer no longer holds.
fn overrides_replay(d: &Decision) -> bool {
    d.reasons.iter().any(|r| {
        matches!(
            r.code,
            ReasonCode::SessionClosed
                | ReasonCode::SessionExpired
                | ReasonCode::InvalidArguments
                | ReasonCode::UnknownTool
                | ReasonCode::NotInSessionScope
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_without_recursion() {
        assert_eq!(json_depth(&serde_json::json!(1)), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": 2}]})), 4);
        let mut deep = serde_json::json!(0);
        for _ in 0..1_000 {
            deep = serde_json::json!([deep]);
        }
        assert_eq!(json_depth(&deep), 1_001);
    }
}
