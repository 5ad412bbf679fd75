//! The broker's answer to one tool call: ALLOW, DENY or PENDING_APPROVAL, with reasons.

use std::fmt;
use std::time::SystemTime;

use broker_proto::v1 as proto;

use crate::timestamp::{non_empty, optional};
use crate::Error;

/// What the broker decided.
///
/// Exhaustive on purpose: if the contract ever grows a new outcome, code matching on this enum must stop
/// compiling rather than treat the new outcome as one of these. An outcome the SDK does not know
/// (including `OUTCOME_UNSPECIFIED`) is an [`Error::Protocol`], never an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The tool may run.
    Allow,
    /// The tool must not run; see the decision's reasons.
    Deny,
    /// The tool must not run yet: people must approve the call first. The decision names the approval
    /// in [`Decision::approval_id`]; [`Client::await_approval`](crate::Client::await_approval) waits
    /// for the final ALLOW or DENY.
    PendingApproval,
}

impl Outcome {
    /// The contract's name: `ALLOW`, `DENY` or `PENDING_APPROVAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::PendingApproval => "PENDING_APPROVAL",
        }
    }

    /// Reads the wire value, failing closed on `OUTCOME_UNSPECIFIED` and unknown values.
    pub fn from_proto(value: i32) -> Result<Self, Error> {
        match proto::Outcome::try_from(value) {
            Ok(proto::Outcome::Allow) => Ok(Self::Allow),
            Ok(proto::Outcome::Deny) => Ok(Self::Deny),
            Ok(proto::Outcome::PendingApproval) => Ok(Self::PendingApproval),
            Ok(proto::Outcome::Unspecified) => Err(Error::Protocol(
                "the broker answered OUTCOME_UNSPECIFIED".into(),
            )),
            Err(_) => Err(Error::Protocol(format!(
                "the broker answered an unknown outcome `{value}`"
            ))),
        }
    }
}

impl From<Outcome> for proto::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Allow => Self::Allow,
            Outcome::Deny => Self::Deny,
            Outcome::PendingApproval => Self::PendingApproval,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason behind a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Reason {
    /// Stable machine-readable code, e.g. `POLICY_DENY`, `NOT_IN_SESSION_SCOPE`, `BUDGET_EXHAUSTED`.
    pub code: String,
    /// The Cedar policy (`@id`) that decided, where one did.
    pub policy_id: Option<String>,
    /// For people: the policy's `@reason` annotation, or what the broker found.
    pub message: String,
    /// The kill switch that blocked the call, for code `KILL_SWITCH` (see
    /// [`KillSwitchClient`](crate::KillSwitchClient)).
    pub kill_switch_id: Option<String>,
}

impl From<proto::Reason> for Reason {
    fn from(reason: proto::Reason) -> Self {
        Self {
            code: reason.code,
            policy_id: non_empty(reason.policy_id),
            message: reason.message,
            kill_switch_id: non_empty(reason.kill_switch_id),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(policy_id) = &self.policy_id {
            write!(f, " ({policy_id})")?;
        }
        if let Some(kill_switch_id) = &self.kill_switch_id {
            write!(f, " (kill switch {kill_switch_id})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The broker's answer to one tool call. A DENY (and a PENDING_APPROVAL) is a decision too, not an
/// error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// `dec_` followed by 128 random bits; the key of the audit event.
    pub decision_id: String,
    /// ALLOW, DENY or PENDING_APPROVAL.
    pub outcome: Outcome,
    /// Why; for a DENY, at least the first reason that applied.
    pub reasons: Vec<Reason>,
    /// SHA-256 of the policy set that decided.
    pub policy_version: String,
    /// The session the call was made in.
    pub session_id: String,
    /// The tool's catalogue name.
    pub tool: String,
    /// The idempotency key of the call.
    pub call_id: String,
    /// When the broker decided.
    pub decided_at: Option<SystemTime>,
    /// The approval (`apr_` followed by 128 random bits) the call waits for, when the outcome is
    /// PENDING_APPROVAL (always set then); on the final decision of an approved call, the approval it
    /// used.
    pub approval_id: Option<String>,
}

impl Decision {
    /// Whether the tool may run.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// Whether the call waits for people to approve it (see [`approval_id`](Self::approval_id)).
    pub fn is_pending(&self) -> bool {
        self.outcome == Outcome::PendingApproval
    }

    /// Whether one of the reasons has this code (e.g. `"BUDGET_EXHAUSTED"`).
    pub fn has_reason(&self, code: &str) -> bool {
        self.reasons.iter().any(|reason| reason.code == code)
    }

    /// The first reason with this code.
    pub fn reason(&self, code: &str) -> Option<&Reason> {
        self.reasons.iter().find(|reason| reason.code == code)
    }

    /// Reads the server's answer to the call (`session_id`, `tool`, `call_id`) the SDK asked about.
    ///
    /// Fails closed: an unknown outcome, an invalid timestamp, an ALLOW that names another call
    /// or no decision id, or a PENDING_APPROVAL without an approval id is an [`Error::Protocol`].
    pub(crate) fn from_answer(
        answer: proto::Decision,
        session_id: &str,
        tool: &str,
        call_id: &str,
    ) -> Result<Self, Error> {
        let decision = Self::try_from(answer)?;
        if decision.is_allowed() {
            decision.ensure_allow_names_call(session_id, tool, call_id)?;
        }
        if decision.is_pending() && decision.approval_id.is_none() {
            return Err(Error::Protocol(
                "the broker sent a PENDING_APPROVAL without an approval id".into(),
            ));
        }
        Ok(decision)
    }

    /// Reads the server's answer to `AwaitApproval` for `approval_id`.
    ///
    /// Fails closed: an unknown outcome, an invalid timestamp, an ALLOW without a decision id, or an
    /// ALLOW or PENDING_APPROVAL that names another approval (or none) is an [`Error::Protocol`].
    pub(crate) fn from_await(answer: proto::Decision, approval_id: &str) -> Result<Self, Error> {
        let decision = Self::try_from(answer)?;
        if decision.is_allowed() && decision.decision_id.is_empty() {
            return Err(Error::Protocol(
                "the broker sent an ALLOW without a decision id".into(),
            ));
        }
        let sent = decision.approval_id.as_deref().unwrap_or_default();
        if (decision.is_allowed() || decision.is_pending()) && sent != approval_id {
            return Err(Error::Protocol(format!(
                "the broker sent {} for approval_id `{sent}` when asked about `{approval_id}`",
                decision.outcome
            )));
        }
        Ok(decision)
    }

    /// Fails unless this ALLOW has a decision id and names the call (`session_id`, `tool`,
    /// `call_id`) the SDK asked about.
    pub(crate) fn ensure_allow_names_call(
        &self,
        session_id: &str,
        tool: &str,
        call_id: &str,
    ) -> Result<(), Error> {
        if self.decision_id.is_empty() {
            return Err(Error::Protocol(
                "the broker sent an ALLOW without a decision id".into(),
            ));
        }
        for (field, sent, asked) in [
            ("session_id", self.session_id.as_str(), session_id),
            ("tool", self.tool.as_str(), tool),
            ("call_id", self.call_id.as_str(), call_id),
        ] {
            if sent != asked {
                return Err(Error::Protocol(format!(
                    "the broker sent an ALLOW for {field} `{sent}` when asked about `{asked}`"
                )));
            }
        }
        Ok(())
    }
}

impl TryFrom<proto::Decision> for Decision {
    type Error = Error;

    fn try_from(decision: proto::Decision) -> Result<Self, Error> {
        Ok(Self {
            outcome: Outcome::from_proto(decision.outcome)?,
            decided_at: optional(decision.decided_at, "decided_at")?,
            decision_id: decision.decision_id,
            reasons: decision.reasons.into_iter().map(Reason::from).collect(),
            policy_version: decision.policy_version,
            session_id: decision.session_id,
            tool: decision.tool,
            call_id: decision.call_id,
            approval_id: non_empty(decision.approval_id),
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.outcome, self.tool)?;
        if let Some(approval_id) = &self.approval_id {
            write!(f, " (approval {approval_id})")?;
        }
        let mut reasons = self.reasons.iter();
        if let Some(first) = reasons.next() {
            write!(f, ": {first}")?;
            for reason in reasons {
                write!(f, "; {reason}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(outcome: proto::Outcome) -> proto::Decision {
        proto::Decision {
            decision_id: "dec_1".into(),
            outcome: outcome.into(),
            reasons: vec![proto::Reason {
                code: "POLICY_DENY".into(),
                policy_id: String::new(),
                message: "no".into(),
                kill_switch_id: String::new(),
            }],
            policy_version: "v".into(),
            session_id: "ses_1".into(),
            tool: "email.send".into(),
            call_id: "call_1".into(),
            decided_at: None,
            approval_id: String::new(),
        }
    }

    #[test]
    fn unspecified_and_unknown_outcomes_are_protocol_errors() {
        assert!(
            matches!(Outcome::from_proto(0), Err(Error::Protocol(m)) if m.contains("OUTCOME_UNSPECIFIED"))
        );
        assert!(matches!(Outcome::from_proto(7), Err(Error::Protocol(m)) if m.contains("`7`")));
        assert_eq!(Outcome::from_proto(1), Ok(Outcome::Allow));
        assert_eq!(Outcome::from_proto(2), Ok(Outcome::Deny));
        assert_eq!(Outcome::from_proto(3), Ok(Outcome::PendingApproval));
    }

    #[test]
    fn outcomes_round_trip_through_the_wire() {
        for outcome in [Outcome::Allow, Outcome::Deny, Outcome::PendingApproval] {
            let wire: i32 = proto::Outcome::from(outcome).into();
            assert_eq!(Outcome::from_proto(wire), Ok(outcome));
        }
        assert_eq!(Outcome::PendingApproval.as_str(), "PENDING_APPROVAL");
        assert_eq!(
            serde_json::to_value(Outcome::PendingApproval).ok(),
            Some(serde_json::json!("PENDING_APPROVAL"))
        );
    }

    #[test]
    fn a_pending_decision_must_name_its_approval() {
        let mut pending = answer(proto::Outcome::PendingApproval);
        let anonymous = Decision::from_answer(pending.clone(), "ses_1", "email.send", "call_1");
        assert!(matches!(anonymous, Err(Error::Protocol(m)) if m.contains("approval id")));
        pending.approval_id = "apr_1".into();
        let named = Decision::from_answer(pending, "ses_1", "email.send", "call_1");
        assert!(named.is_ok_and(|d| d.is_pending()
            && !d.is_allowed()
            && d.approval_id.as_deref() == Some("apr_1")));
    }

    #[test]
    fn an_awaited_allow_or_pending_must_name_the_approval_asked_about() {
        for outcome in [proto::Outcome::Allow, proto::Outcome::PendingApproval] {
            let mut awaited = answer(outcome);
            assert!(
                matches!(Decision::from_await(awaited.clone(), "apr_1"), Err(Error::Protocol(m)) if m.contains("`apr_1`")),
                "{outcome:?} without an approval id"
            );
            awaited.approval_id = "apr_2".into();
            assert!(
                matches!(Decision::from_await(awaited.clone(), "apr_1"), Err(Error::Protocol(m)) if m.contains("`apr_2`")),
                "{outcome:?} for another approval"
            );
            awaited.approval_id = "apr_1".into();
            assert!(Decision::from_await(awaited, "apr_1").is_ok());
        }
        let mut anonymous = answer(proto::Outcome::Allow);
        anonymous.approval_id = "apr_1".into();
        anonymous.decision_id.clear();
        assert!(matches!(
            Decision::from_await(anonymous, "apr_1"),
            Err(Error::Protocol(_))
        ));
        let deny = Decision::from_await(answer(proto::Outcome::Deny), "apr_1");
        assert!(deny.is_ok_and(|d| d.outcome == Outcome::Deny));
    }

    #[test]
    fn empty_policy_id_is_none() {
        let decision = Decision::try_from(answer(proto::Outcome::Deny));
        let reason = decision.as_ref().ok().and_then(|d| d.reasons.first());
        assert_eq!(reason.map(|r| r.policy_id.clone()), Some(None));
    }

    #[test]
    fn a_kill_switch_reason_names_the_switch() {
        let reason = Reason::from(proto::Reason {
            code: "KILL_SWITCH".into(),
            policy_id: String::new(),
            message: "incident 42".into(),
            kill_switch_id: "ksw_1".into(),
        });
        assert_eq!(reason.kill_switch_id.as_deref(), Some("ksw_1"));
        assert_eq!(
            reason.to_string(),
            "KILL_SWITCH (kill switch ksw_1): incident 42"
        );
    }

    #[test]
    fn an_allow_for_another_call_is_refused() {
        let ok = Decision::from_answer(
            answer(proto::Outcome::Allow),
            "ses_1",
            "email.send",
            "call_1",
        );
        assert!(ok.is_ok_and(|d| d.is_allowed()));
        let other_tool = Decision::from_answer(
            answer(proto::Outcome::Allow),
            "ses_1",
            "email.delete",
            "call_1",
        );
        assert!(matches!(other_tool, Err(Error::Protocol(m)) if m.contains("tool")));
        let other_call = Decision::from_answer(
            answer(proto::Outcome::Allow),
            "ses_1",
            "email.send",
            "call_2",
        );
        assert!(matches!(other_call, Err(Error::Protocol(m)) if m.contains("call_id")));
        let mut anonymous = answer(proto::Outcome::Allow);
        anonymous.decision_id.clear();
        assert!(matches!(
            Decision::from_answer(anonymous, "ses_1", "email.send", "call_1"),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn a_deny_is_kept_even_when_it_names_no_call() {
        let mut deny = answer(proto::Outcome::Deny);
        deny.session_id.clear();
        deny.call_id.clear();
        let decision = Decision::from_answer(deny, "ses_x", "email.send", "call_1");
        assert!(decision.is_ok_and(|d| !d.is_allowed() && d.has_reason("POLICY_DENY")));
    }

    #[test]
    fn display_names_outcome_tool_and_reasons() {
        let decision = Decision::try_from(answer(proto::Outcome::Deny)).map(|d| d.to_string());
        assert_eq!(
            decision,
            Ok("DENY `email.send`: POLICY_DENY: no".to_owned())
        );
        let mut pending = answer(proto::Outcome::PendingApproval);
        pending.approval_id = "apr_1".into();
        pending.reasons = vec![proto::Reason {
            code: "APPROVAL_REQUIRED".into(),
            policy_id: "big-refunds".into(),
            message: "refunds over 1000 EUR need finance".into(),
            kill_switch_id: String::new(),
        }];
        assert_eq!(
            Decision::try_from(pending).map(|d| d.to_string()),
            Ok("PENDING_APPROVAL `email.send` (approval apr_1): APPROVAL_REQUIRED (big-refunds): refunds over 1000 EUR need finance".to_owned())
        );
    }
}
