//! A decision is a value: ALLOW or DENY with reasons. Failing to decide is an error elsewhere, never a variant here.

use serde::{Deserialize, Serialize};

use crate::clock::Micros;

/// Exhaustive on purpose: a new outcome must break every caller at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Allow,
    Deny,
    /// People must approve first; the decision names the approval.
    PendingApproval,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "ALLOW",
            Outcome::Deny => "DENY",
            Outcome::PendingApproval => "PENDING_APPROVAL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ALLOW" => Some(Outcome::Allow),
            "DENY" => Some(Outcome::Deny),
            "PENDING_APPROVAL" => Some(Outcome::PendingApproval),
            _ => None,
        }
    }
}

/// Stable, machine-readable reason codes. Their spelling is part of the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    /// A permit policy allowed the call.
    PolicyAllow,
    /// A forbid policy denied the call.
    PolicyDeny,
    /// No permit policy applied (Cedar's default deny).
    NoPolicyAllows,
    /// A policy failed to evaluate; Cedar skipped it, and no permit applied.
    PolicyError,
    NotInSessionScope,
    SessionNotFound,
    /// The session belongs to another agent.
    SessionNotOwned,
    /// The session belongs to another tenant than the caller's token names (or the token names none).
    TenantMismatch,
    SessionExpired,
    SessionClosed,
    BudgetExhausted,
    UnknownTool,
    InvalidArguments,
    /// A kill switch covers the call (or the switches could not be read: every scope counts as killed).
    KillSwitch,
    /// A policy asks for people to approve the call first.
    ApprovalRequired,
    /// Approvers said no.
    ApprovalDenied,
    ApprovalExpired,
    /// A kill switch or an admin cancelled the approval.
    ApprovalCancelled,
    /// The approval was already used, or covers other arguments.
    ApprovalUsed,
    /// The call is allowed with an approval; names the approvers.
    ApprovalGranted,
    /// The approval's votes do not meet what the policies in effect now ask (a group or quorum added
    /// since, a shorter expiry, a requirement a new taint label brought): no ALLOW; ask again.
    ApprovalInsufficient,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::PolicyAllow => "POLICY_ALLOW",
            ReasonCode::PolicyDeny => "POLICY_DENY",
            ReasonCode::NoPolicyAllows => "NO_POLICY_ALLOWS",
            ReasonCode::PolicyError => "POLICY_ERROR",
            ReasonCode::NotInSessionScope => "NOT_IN_SESSION_SCOPE",
            ReasonCode::SessionNotFound => "SESSION_NOT_FOUND",
            ReasonCode::SessionNotOwned => "SESSION_NOT_OWNED",
            ReasonCode::TenantMismatch => "TENANT_MISMATCH",
            ReasonCode::SessionExpired => "SESSION_EXPIRED",
            ReasonCode::SessionClosed => "SESSION_CLOSED",
            ReasonCode::BudgetExhausted => "BUDGET_EXHAUSTED",
            ReasonCode::UnknownTool => "UNKNOWN_TOOL",
            ReasonCode::InvalidArguments => "INVALID_ARGUMENTS",
            ReasonCode::KillSwitch => "KILL_SWITCH",
            ReasonCode::ApprovalRequired => "APPROVAL_REQUIRED",
            ReasonCode::ApprovalDenied => "APPROVAL_DENIED",
            ReasonCode::ApprovalExpired => "APPROVAL_EXPIRED",
            ReasonCode::ApprovalCancelled => "APPROVAL_CANCELLED",
            ReasonCode::ApprovalUsed => "APPROVAL_USED",
            ReasonCode::ApprovalGranted => "APPROVAL_GRANTED",
            ReasonCode::ApprovalInsufficient => "APPROVAL_INSUFFICIENT",
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    /// The Cedar policy (`@id`) that decided, where one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    pub message: String,
    /// The kill switch that blocked the call, for [`ReasonCode::KillSwitch`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch_id: Option<String>,
}

impl Reason {
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            code,
            policy_id: None,
            message: message.into(),
            kill_switch_id: None,
        }
    }

    pub fn from_policy(
        code: ReasonCode,
        policy_id: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            policy_id: Some(policy_id.into()),
            message: message.into(),
            kill_switch_id: None,
        }
    }

    pub fn from_kill_switch(switch_id: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: ReasonCode::KillSwitch,
            policy_id: None,
            message: message.into(),
            kill_switch_id: Some(switch_id.into()),
        }
    }
}

/// A tool-call decision as the agent receives it and the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub decision_id: String,
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub policy_version: String,
    pub session_id: String,
    pub tool: String,
    pub call_id: String,
    pub decided_at: Micros,
    /// The approval asked for (PENDING_APPROVAL) or used (the ALLOW of an approved call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// Turns this decision into a DENY for `reason`, keeping its identity (used when the budget
    /// runs out between deciding and committing).
    pub fn overrule(&mut self, reason: Reason) {
        self.outcome = Outcome::Deny;
        self.reasons = vec![reason];
    }
}
