//! Approvals: a tool call that waits for people to say yes, bound to exactly the arguments they saw,
//! and how to ask for a slice of them.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use broker_proto::v1 as proto;

use crate::timestamp::{non_empty, optional, required};
use crate::{Error, Reason};

/// Where an approval is in its life.
///
/// Exhaustive on purpose, like [`Outcome`](crate::Outcome): a status the SDK does not know (including
/// `APPROVAL_STATUS_UNSPECIFIED`) is an [`Error::Protocol`] when it comes from the broker.
///
/// ```
/// use broker_sdk::ApprovalStatus;
/// let status: ApprovalStatus = "PENDING".parse()?;
/// assert_eq!(status, ApprovalStatus::Pending);
/// assert!(!status.is_final());
/// # Ok::<(), broker_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalStatus {
    /// Waiting for approvers.
    Pending,
    /// Enough approvers said yes; the call may be allowed once (the broker re-checks it first).
    Approved,
    /// An approver said no.
    Denied,
    /// Nobody decided before `expires_at`.
    Expired,
    /// Cancelled (e.g. by a kill switch) before approvers decided.
    Cancelled,
}

impl ApprovalStatus {
    /// Every status, in the contract's order.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Expired,
        Self::Cancelled,
    ];

    /// The contract's name: `PENDING`, `APPROVED`, `DENIED`, `EXPIRED` or `CANCELLED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Denied => "DENIED",
            Self::Expired => "EXPIRED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether approvers can no longer change it (anything but [`Pending`](Self::Pending)).
    pub fn is_final(self) -> bool {
        self != Self::Pending
    }

    /// Reads the wire value, failing closed on `APPROVAL_STATUS_UNSPECIFIED` and unknown values.
    pub fn from_proto(value: i32) -> Result<Self, Error> {
        match proto::ApprovalStatus::try_from(value) {
            Ok(proto::ApprovalStatus::Pending) => Ok(Self::Pending),
            Ok(proto::ApprovalStatus::Approved) => Ok(Self::Approved),
            Ok(proto::ApprovalStatus::Denied) => Ok(Self::Denied),
            Ok(proto::ApprovalStatus::Expired) => Ok(Self::Expired),
            Ok(proto::ApprovalStatus::Cancelled) => Ok(Self::Cancelled),
            Ok(proto::ApprovalStatus::Unspecified) => Err(Error::Protocol(
                "the broker sent APPROVAL_STATUS_UNSPECIFIED".into(),
            )),
            Err(_) => Err(Error::Protocol(format!(
                "the broker sent an unknown approval status `{value}`"
            ))),
        }
    }
}

impl From<ApprovalStatus> for proto::ApprovalStatus {
    fn from(status: ApprovalStatus) -> Self {
        match status {
            ApprovalStatus::Pending => Self::Pending,
            ApprovalStatus::Approved => Self::Approved,
            ApprovalStatus::Denied => Self::Denied,
            ApprovalStatus::Expired => Self::Expired,
            ApprovalStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl FromStr for ApprovalStatus {
    type Err = Error;

    /// Parses the contract's name exactly (`PENDING`, not `pending`); anything else is an
    /// [`Error::InvalidArgument`] naming the field `status`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument {
                message: format!(
                    "unknown approval status `{s}` (expected PENDING, APPROVED, DENIED, EXPIRED or CANCELLED)"
                ),
                field: Some("status".into()),
                reason: None,
            })
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one approver said.
///
/// Exhaustive on purpose: a vote the SDK does not know is an [`Error::Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vote {
    /// Yes.
    Approve,
    /// No (one is enough to deny the approval).
    Deny,
}

impl Vote {
    /// The contract's name: `APPROVE` or `DENY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "APPROVE",
            Self::Deny => "DENY",
        }
    }

    /// Reads the wire value, failing closed on anything unknown (including the empty string).
    fn from_wire(vote: &str) -> Result<Self, Error> {
        match vote {
            "APPROVE" => Ok(Self::Approve),
            "DENY" => Ok(Self::Deny),
            other => Err(Error::Protocol(format!(
                "the broker sent an unknown vote `{other}`"
            ))),
        }
    }
}

impl fmt::Display for Vote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who must approve: `quorum` distinct members of `group`, for the policy that asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApprovalRequirement {
    /// The Cedar policy (`@id`) that asked for approval.
    pub policy_id: String,
    /// The approvers' group.
    pub group: String,
    /// How many distinct members of the group must approve.
    pub quorum: u32,
}

impl From<proto::ApprovalRequirement> for ApprovalRequirement {
    fn from(requirement: proto::ApprovalRequirement) -> Self {
        Self {
            policy_id: requirement.policy_id,
            group: requirement.group,
            quorum: requirement.quorum,
        }
    }
}

/// One approver's say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalVote {
    /// The approver (their JWT `sub`).
    pub approver: String,
    /// The person who voted (the broker's configured person claim; `sub` by default): one person's
    /// several tokens count once toward a quorum.
    pub person: String,
    /// Yes or no.
    pub vote: Vote,
    /// Their comment; empty when they left none.
    pub comment: String,
    /// When they said it.
    pub at: SystemTime,
}

impl TryFrom<proto::ApprovalVote> for ApprovalVote {
    type Error = Error;

    fn try_from(vote: proto::ApprovalVote) -> Result<Self, Error> {
        Ok(Self {
            vote: Vote::from_wire(&vote.vote)?,
            at: required(vote.at, "at")?,
            // A broker from before persons were recorded: the subject was the person.
            person: if vote.person.is_empty() {
                vote.approver.clone()
            } else {
                vote.person
            },
            approver: vote.approver,
            comment: vote.comment,
        })
    }
}

/// A tool call waiting for (or settled by) approvers, as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// `apr_` followed by 128 random bits; the PENDING_APPROVAL decision names it in
    /// [`Decision::approval_id`](crate::Decision::approval_id).
    pub approval_id: String,
    /// Where it is in its life.
    pub status: ApprovalStatus,
    /// The session the call was made in.
    pub session_id: String,
    /// The session's tenant, if it has one: only approvers of this tenant vote on it.
    pub tenant: Option<String>,
    /// The agent that asked (it can never approve its own call).
    pub agent: String,
    /// The user the agent acts for, if any (who can never approve the call either).
    pub user: Option<String>,
    /// The tool's catalogue name.
    pub tool: String,
    /// The arguments as the approver sees them: configured secret fields redacted.
    pub arguments_redacted_json: String,
    /// SHA-256 of the canonical arguments: the approval covers exactly these.
    pub arguments_digest: String,
    /// Who must approve.
    pub requirements: Vec<ApprovalRequirement>,
    /// Why approval is needed: the policies that asked, with their reasons.
    pub reasons: Vec<Reason>,
    /// When the call asked.
    pub requested_at: SystemTime,
    /// When it expires unless approvers decided.
    pub expires_at: SystemTime,
    /// What approvers said so far, in order.
    pub votes: Vec<ApprovalVote>,
    /// When the approved call was allowed (an approval is used at most once).
    pub consumed_at: Option<SystemTime>,
    /// The decision that used it.
    pub decision_id: Option<String>,
}

impl Approval {
    /// Whether it still waits for approvers.
    pub fn is_pending(&self) -> bool {
        self.status == ApprovalStatus::Pending
    }
}

impl TryFrom<proto::Approval> for Approval {
    type Error = Error;

    fn try_from(approval: proto::Approval) -> Result<Self, Error> {
        if approval.approval_id.is_empty() {
            return Err(Error::Protocol(
                "the broker sent an approval without an id".into(),
            ));
        }
        Ok(Self {
            status: ApprovalStatus::from_proto(approval.status)?,
            requested_at: required(approval.requested_at, "requested_at")?,
            expires_at: required(approval.expires_at, "expires_at")?,
            consumed_at: optional(approval.consumed_at, "consumed_at")?,
            votes: approval
                .votes
                .into_iter()
                .map(ApprovalVote::try_from)
                .collect::<Result<_, _>>()?,
            approval_id: approval.approval_id,
            session_id: approval.session_id,
            tenant: non_empty(approval.tenant),
            agent: approval.agent,
            user: non_empty(approval.user),
            tool: approval.tool,
            arguments_redacted_json: approval.arguments_redacted_json,
            arguments_digest: approval.arguments_digest,
            requirements: approval
                .requirements
                .into_iter()
                .map(ApprovalRequirement::from)
                .collect(),
            reasons: approval.reasons.into_iter().map(Reason::from).collect(),
            decision_id: non_empty(approval.decision_id),
        })
    }
}

/// Which approvals to list; every criterion left out matches everything.
///
/// ```
/// use broker_sdk::{ApprovalFilter, ApprovalStatus};
/// let filter = ApprovalFilter::new().status(ApprovalStatus::Pending).tool("payments.refund");
/// # let _ = filter;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalFilter {
    status: Option<ApprovalStatus>,
    tool: Option<String>,
    agent: Option<String>,
    page_size: u32,
    page_token: Option<String>,
}

impl ApprovalFilter {
    /// Matches every approval, first page, the broker's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only approvals with this status.
    pub fn status(mut self, status: ApprovalStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only approvals for this tool.
    pub fn tool(mut self, tool: impl Into<String>) -> Self {
        self.tool = Some(tool.into());
        self
    }

    /// Only approvals this agent asked for.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// Approvals per page (the broker allows at most 1000; 0 means its default of 100).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Continues from [`ApprovalPage::next_page_token`].
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.page_token = Some(page_token.into());
        self
    }

    pub(crate) fn into_proto(self) -> proto::ListApprovalsRequest {
        proto::ListApprovalsRequest {
            status: self
                .status
                .map_or(
                    proto::ApprovalStatus::Unspecified,
                    proto::ApprovalStatus::from,
                )
                .into(),
            tool: self.tool.unwrap_or_default(),
            agent: self.agent.unwrap_or_default(),
            page_size: self.page_size,
            page_token: self.page_token.unwrap_or_default(),
        }
    }
}

/// One page of approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPage {
    /// The approvals, in the broker's order.
    pub approvals: Vec<Approval>,
    /// Pass to [`ApprovalFilter::page_token`] for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl TryFrom<proto::ListApprovalsResponse> for ApprovalPage {
    type Error = Error;

    fn try_from(page: proto::ListApprovalsResponse) -> Result<Self, Error> {
        Ok(Self {
            approvals: page
                .approvals
                .into_iter()
                .map(Approval::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: non_empty(page.next_page_token),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn approval() -> proto::Approval {
        proto::Approval {
            approval_id: "apr_1".into(),
            status: proto::ApprovalStatus::Pending.into(),
            requested_at: timestamp(10),
            expires_at: timestamp(20),
            ..Default::default()
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names_and_the_wire() {
        for status in ApprovalStatus::ALL {
            assert_eq!(status.as_str().parse::<ApprovalStatus>(), Ok(status));
            let wire: i32 = proto::ApprovalStatus::from(status).into();
            assert_eq!(ApprovalStatus::from_proto(wire), Ok(status));
            assert_eq!(status.is_final(), status != ApprovalStatus::Pending);
        }
    }

    #[test]
    fn an_unknown_status_name_is_an_invalid_argument() {
        for name in ["pending", "APPROVAL_STATUS_UNSPECIFIED", ""] {
            let parsed = name.parse::<ApprovalStatus>();
            assert!(
                matches!(&parsed, Err(Error::InvalidArgument { field: Some(f), .. }) if f == "status"),
                "{name}: {parsed:?}"
            );
        }
    }

    #[test]
    fn unspecified_and_unknown_statuses_are_protocol_errors() {
        assert!(matches!(
            ApprovalStatus::from_proto(0),
            Err(Error::Protocol(m)) if m.contains("UNSPECIFIED")
        ));
        assert!(matches!(
            ApprovalStatus::from_proto(42),
            Err(Error::Protocol(m)) if m.contains("`42`")
        ));
    }

    #[test]
    fn an_empty_filter_asks_for_everything() {
        assert_eq!(
            ApprovalFilter::new().into_proto(),
            proto::ListApprovalsRequest::default()
        );
    }

    #[test]
    fn an_approval_needs_an_id_and_its_times() {
        let read = Approval::try_from(approval());
        assert!(read.is_ok_and(|a| a.is_pending()
            && a.user.is_none()
            && a.consumed_at.is_none()
            && a.decision_id.is_none()
            && a.expires_at == UNIX_EPOCH + Duration::from_secs(20)));
        let anonymous = proto::Approval {
            approval_id: String::new(),
            ..approval()
        };
        assert!(matches!(
            Approval::try_from(anonymous),
            Err(Error::Protocol(_))
        ));
        let timeless = proto::Approval {
            expires_at: None,
            ..approval()
        };
        assert!(matches!(
            Approval::try_from(timeless),
            Err(Error::Protocol(m)) if m.contains("`expires_at`")
        ));
    }

    #[test]
    fn an_unknown_vote_or_a_vote_without_time_is_a_protocol_error() {
        let with_vote = |vote: &str, at| proto::Approval {
            votes: vec![proto::ApprovalVote {
                approver: "carol".into(),
                person: String::new(),
                vote: vote.into(),
                comment: String::new(),
                at,
            }],
            ..approval()
        };
        let approved = Approval::try_from(with_vote("APPROVE", timestamp(15)));
        assert!(approved
            .is_ok_and(|a| a.votes.first().map(|v| (v.vote, v.comment.as_str()))
                == Some((Vote::Approve, ""))));
        for unknown in ["ABSTAIN", "approve", ""] {
            assert!(
                matches!(Approval::try_from(with_vote(unknown, timestamp(15))), Err(Error::Protocol(m)) if m.contains("vote")),
                "{unknown}"
            );
        }
        assert!(matches!(
            Approval::try_from(with_vote("DENY", None)),
            Err(Error::Protocol(m)) if m.contains("`at`")
        ));
    }
}
