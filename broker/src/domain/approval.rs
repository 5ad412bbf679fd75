//! Human approval: a policy marks an action as needing people; the call waits as an [`Approval`] until
//! enough approvers of the right group say yes (or one says no), bound to exactly the arguments they saw.

use serde::{Deserialize, Serialize};

use super::decision::Reason;
use super::person;
use crate::clock::Micros;

pub const MAX_COMMENT_LEN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "PENDING",
            ApprovalStatus::Approved => "APPROVED",
            ApprovalStatus::Denied => "DENIED",
            ApprovalStatus::Expired => "EXPIRED",
            ApprovalStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => ApprovalStatus::Pending,
            "APPROVED" => ApprovalStatus::Approved,
            "DENIED" => ApprovalStatus::Denied,
            "EXPIRED" => ApprovalStatus::Expired,
            "CANCELLED" => ApprovalStatus::Cancelled,
            _ => return None,
        })
    }
}

/// `quorum` distinct members of `group` must approve, for the policy `policy_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub policy_id: String,
    pub group: String,
    pub quorum: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Vote {
    Approve,
    Deny,
}

impl Vote {
    pub fn as_str(self) -> &'static str {
        match self {
            Vote::Approve => "APPROVE",
            Vote::Deny => "DENY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "APPROVE" => Some(Vote::Approve),
            "DENY" => Some(Vote::Deny),
            _ => None,
        }
    }
}

/// One approver's say, with the groups their token carried when they said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    /// The token's `sub`.
    pub approver: String,
    /// The person, from the configured `auth.person_claim` (`sub` by default), as the token said it;
    /// compared normalised ([`super::person`]). Votes stored before it existed carry the approver.
    pub person: String,
    pub groups: Vec<String>,
    pub vote: Vote,
    pub comment: String,
    pub at: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `apr_` + 128 random bits.
    pub id: String,
    pub status: ApprovalStatus,
    pub session_id: String,
    /// The session's tenant: only callers of this tenant wait on it or vote on it.
    pub tenant: Option<String>,
    pub agent: String,
    pub user: Option<String>,
    pub tool: String,
    /// The call that asked (its decision was PENDING_APPROVAL).
    pub call_id: String,
    pub decision_id: String,
    /// What approvers see: secret fields redacted.
    pub arguments_redacted: String,
    /// SHA-256 of the canonical arguments: the approval covers exactly these.
    pub arguments_digest: String,
    pub requirements: Vec<Requirement>,
    pub reasons: Vec<Reason>,
    pub requested_at: Micros,
    pub expires_at: Micros,
    pub votes: Vec<VoteRecord>,
    /// When the approved call was allowed; an approval is used at most once.
    pub consumed_at: Option<Micros>,
    /// The ALLOW decision that used it.
    pub consumed_by: Option<String>,
    /// Last change (for watchers).
    pub updated_at: Micros,
}

/// Why someone may not vote on an approval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the agent that asked cannot approve its own call")]
    IsAgent,
    #[error("the user the agent acts for cannot approve the call")]
    IsUser,
    #[error("a token with role `agent` never votes on approvals")]
    AgentToken,
    #[error("the token has no `{0}` claim, which identifies the person voting")]
    NoPerson(String),
    #[error("approver is in none of the required groups ({0})")]
    NotInGroup(String),
    #[error("approver has already decided this approval")]
    AlreadyVoted,
    #[error("approval is {0}, not pending")]
    NotPending(&'static str),
}

impl Approval {
    /// The status as of `now`: a pending approval past its expiry is expired, even before the sweeper says so.
    pub fn status_at(&self, now: Micros) -> ApprovalStatus {
        if self.status == ApprovalStatus::Pending && now >= self.expires_at {
            ApprovalStatus::Expired
        } else {
            self.status
        }
    }

    /// Separation of duties: whether `vote` may be cast on this approval now. Checked before the vote and
    /// again inside the store's transaction, where every vote so far is visible. People are compared as
    /// [`super::person`] says: by the token's subject and the configured person claim, normalised.
    pub fn check_voter(&self, vote: &VoteRecord, now: Micros) -> Result<(), Refusal> {
        let status = self.status_at(now);
        if status != ApprovalStatus::Pending {
            return Err(Refusal::NotPending(status.as_str()));
        }
        let voter = vote.identities();
        if person::any_same(voter, [self.agent.as_str()]) {
            return Err(Refusal::IsAgent);
        }
        if let Some(user) = self.user.as_deref() {
            if person::any_same(voter, [user]) {
                return Err(Refusal::IsUser);
            }
        }
        if !self
            .requirements
            .iter()
            .any(|r| vote.groups.contains(&r.group))
        {
            let wanted: Vec<&str> = self.requirements.iter().map(|r| r.group.as_str()).collect();
            return Err(Refusal::NotInGroup(wanted.join(", ")));
        }
        if self.votes.iter().any(|v| v.same_person(vote)) {
            return Err(Refusal::AlreadyVoted);
        }
        Ok(())
    }

    /// True when every requirement has its quorum of distinct approving people in its group, counting
    /// only votes that could have been cast (never the agent or its user): two tokens of one person
    /// (`bob`, `Bob@example.com`) count once.
    pub fn quorum_met(&self) -> bool {
        self.requirements
            .iter()
            .all(|req| self.approvals_from(&req.group) >= quorum(req))
    }

    /// How many distinct people of `group` approved, counting only votes that could have been cast.
    fn approvals_from(&self, group: &str) -> usize {
        let requester: Vec<&str> = std::iter::once(self.agent.as_str())
            .chain(self.user.as_deref())
            .collect();
        let mut counted: Vec<&VoteRecord> = Vec::new();
        for v in self
            .votes
            .iter()
            .filter(|v| v.vote == Vote::Approve && v.groups.iter().any(|g| g == group))
            .filter(|v| !person::any_same(v.identities(), requester.iter().copied()))
        {
            if !counted.iter().any(|c| c.same_person(v)) {
                counted.push(v);
            }
        }
        counted.len()
    }

    /// What of `requirements` (the policies in effect now) this approval's votes do not meet, for
    /// people: each group short of its quorum, and an approval older than `expires` (the shortest
    /// `@approval_expires` asked now) allows. Empty: every requirement is met.
    pub fn unmet(
        &self,
        requirements: &[Requirement],
        expires: Option<std::time::Duration>,
        now: Micros,
    ) -> Vec<String> {
        let mut unmet: Vec<String> = requirements
            .iter()
            .filter_map(|req| {
                let have = self.approvals_from(&req.group);
                (have < quorum(req)).then(|| {
                    format!(
                        "{} of `{}` for policy `{}` ({have} so far)",
                        req.quorum, req.group, req.policy_id
                    )
                })
            })
            .collect();
        if let Some(e) = expires {
            let limit = self.requested_at.saturating_add(crate::clock::micros_of(e));
            if now >= limit {
                unmet.push(format!(
                    "an approval asked for at most {} ago",
                    humantime::format_duration(e)
                ));
            }
        }
        unmet
    }

    /// The status after `vote` is added: a denial ends it, an approval may complete the quorum.
    pub fn status_after_votes(&self) -> ApprovalStatus {
        if self.votes.iter().any(|v| v.vote == Vote::Deny) {
            ApprovalStatus::Denied
        } else if self.quorum_met() {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Pending
        }
    }

    /// The approvers who said yes, for `context.approval.approvers`.
    pub fn approvers(&self) -> Vec<String> {
        self.votes
            .iter()
            .filter(|v| v.vote == Vote::Approve)
            .map(|v| v.approver.clone())
            .collect()
    }
}

fn quorum(req: &Requirement) -> usize {
    usize::try_from(req.quorum).unwrap_or(usize::MAX)
}

impl VoteRecord {
    /// The strings that identify who voted: subject and person.
    fn identities(&self) -> [&str; 2] {
        [self.approver.as_str(), self.person.as_str()]
    }

    /// Whether two votes may come from one person (any identity of one matching any of the other).
    pub fn same_person(&self, other: &VoteRecord) -> bool {
        person::any_same(self.identities(), other.identities())
    }
}

/// What no vote from this token may get past, whatever the approval: agents never vote (an agent that
/// could approve would approve itself through another session), a token acting for a user votes for
/// nobody's request of that user, and the person must be known.
pub fn check_voter_token(
    approval: &Approval,
    is_agent: bool,
    acts_for: Option<&str>,
    person: Option<&str>,
    person_claim: &str,
) -> Result<(), Refusal> {
    if is_agent {
        return Err(Refusal::AgentToken);
    }
    if person.is_none() {
        return Err(Refusal::NoPerson(person_claim.to_owned()));
    }
    if let Some(acts_for) = acts_for {
        let requester = std::iter::once(approval.agent.as_str()).chain(approval.user.as_deref());
        if person::any_same([acts_for], requester) {
            return Err(Refusal::IsUser);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(quorum: u32) -> Approval {
        Approval {
            id: "apr_1".into(),
            status: ApprovalStatus::Pending,
            session_id: "ses_1".into(),
            tenant: None,
            agent: "agent-1".into(),
            user: Some("alice".into()),
            tool: "payments.refund".into(),
            call_id: "c".into(),
            decision_id: "dec_1".into(),
            arguments_redacted: "{}".into(),
            arguments_digest: "d".into(),
            requirements: vec![Requirement {
                policy_id: "p".into(),
                group: "payments".into(),
                quorum,
            }],
            reasons: vec![],
            requested_at: 0,
            expires_at: 1_000,
            votes: vec![],
            consumed_at: None,
            consumed_by: None,
            updated_at: 0,
        }
    }

    fn vote(who: &str, groups: &[&str], v: Vote) -> VoteRecord {
        VoteRecord {
            approver: who.into(),
            person: who.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            vote: v,
            comment: String::new(),
            at: 1,
        }
    }

    fn check(a: &Approval, who: &str, groups: &[&str], now: Micros) -> Result<(), Refusal> {
        a.check_voter(&vote(who, groups, Vote::Approve), now)
    }

    #[test]
    fn separation_of_duties() {
        let a = approval(1);
        assert_eq!(
            check(&a, "agent-1", &["payments"], 1),
            Err(Refusal::IsAgent)
        );
        assert_eq!(check(&a, "alice", &["payments"], 1), Err(Refusal::IsUser));
        assert!(matches!(
            check(&a, "bob", &["hr"], 1),
            Err(Refusal::NotInGroup(_))
        ));
        assert_eq!(check(&a, "bob", &["payments"], 1), Ok(()));
        assert_eq!(
            check(&a, "bob", &["payments"], 1_000),
            Err(Refusal::NotPending("EXPIRED"))
        );
        let mut voted = a.clone();
        voted.votes.push(vote("bob", &["payments"], Vote::Approve));
        assert_eq!(
            check(&voted, "bob", &["payments"], 1),
            Err(Refusal::AlreadyVoted)
        );
    }

    #[test]
    fn unmet_names_each_requirement_the_votes_do_not_meet() {
        let mut a = approval(1);
        a.votes.push(vote("bob", &["payments"], Vote::Approve));
        a.status = a.status_after_votes();
        assert_eq!(a.status, ApprovalStatus::Approved);
        assert!(a.unmet(&a.requirements, None, 10).is_empty());
        let raised = vec![
            a.requirements[0].clone(),
            Requirement {
                policy_id: "cfo".into(),
                group: "cfo-office".into(),
                quorum: 2,
            },
        ];
        let unmet = a.unmet(&raised, None, 10);
        assert_eq!(unmet.len(), 1, "{unmet:?}");
        assert!(unmet[0].contains("`cfo-office`") && unmet[0].contains("0 so far"));
        // A quorum raised in the same group: one vote is not two.
        let mut two = a.requirements.clone();
        two[0].quorum = 2;
        assert_eq!(a.unmet(&two, None, 10).len(), 1);
        // An expiry shorter than the approval's age.
        let short = Some(std::time::Duration::from_micros(5));
        assert!(a.unmet(&a.requirements, short, 4).is_empty());
        assert_eq!(a.unmet(&a.requirements, short, 5).len(), 1);
    }

    #[test]
    fn the_user_under_another_spelling_is_still_the_user() {
        let a = approval(1);
        for alias in [
            "Alice",
            "ALICE ",
            "alice@example.com",
            "Alice+x@Example.com",
        ] {
            assert_eq!(
                check(&a, alias, &["payments"], 1),
                Err(Refusal::IsUser),
                "{alias}"
            );
        }
        assert_eq!(
            check(&a, "Agent-1", &["payments"], 1),
            Err(Refusal::IsAgent)
        );
        // The person claim counts as much as the subject.
        let mut v = vote("u-42", &["payments"], Vote::Approve);
        v.person = "alice@example.com".into();
        assert_eq!(a.check_voter(&v, 1), Err(Refusal::IsUser));
    }

    #[test]
    fn a_second_identity_of_a_voter_has_already_voted() {
        let mut a = approval(2);
        a.votes.push(vote("bob", &["payments"], Vote::Approve));
        assert_eq!(
            check(&a, "Bob@example.com", &["payments"], 1),
            Err(Refusal::AlreadyVoted)
        );
        let mut other_sub = vote("bob-admin", &["payments"], Vote::Approve);
        other_sub.person = "BOB".into();
        assert_eq!(a.check_voter(&other_sub, 1), Err(Refusal::AlreadyVoted));
    }

    #[test]
    fn agent_tokens_and_unknown_people_never_vote() {
        let a = approval(1);
        assert_eq!(
            check_voter_token(&a, true, None, Some("bob"), "sub"),
            Err(Refusal::AgentToken)
        );
        assert_eq!(
            check_voter_token(&a, false, None, None, "email"),
            Err(Refusal::NoPerson("email".into()))
        );
        assert_eq!(
            check_voter_token(&a, false, Some("ALICE"), Some("bob"), "sub"),
            Err(Refusal::IsUser)
        );
        assert_eq!(
            check_voter_token(&a, false, None, Some("bob"), "sub"),
            Ok(())
        );
    }

    #[test]
    fn quorum_counts_distinct_members_of_the_group() {
        let mut a = approval(2);
        a.votes.push(vote("bob", &["payments"], Vote::Approve));
        assert_eq!(a.status_after_votes(), ApprovalStatus::Pending);
        a.votes.push(vote("bob", &["payments"], Vote::Approve));
        assert_eq!(
            a.status_after_votes(),
            ApprovalStatus::Pending,
            "the same approver counts once"
        );
        a.votes
            .push(vote("Bob@Example.com", &["payments"], Vote::Approve));
        assert_eq!(
            a.status_after_votes(),
            ApprovalStatus::Pending,
            "the same person under another identity counts once"
        );
        a.votes.push(vote("eve", &["marketing"], Vote::Approve));
        assert_eq!(
            a.status_after_votes(),
            ApprovalStatus::Pending,
            "other groups do not count"
        );
        a.votes.push(vote("alice", &["payments"], Vote::Approve));
        a.votes
            .push(vote("ALICE@example.com", &["payments"], Vote::Approve));
        assert_eq!(
            a.status_after_votes(),
            ApprovalStatus::Pending,
            "the user never counts, under any spelling"
        );
        a.votes.push(vote("carol", &["payments"], Vote::Approve));
        assert_eq!(a.status_after_votes(), ApprovalStatus::Approved);
        a.votes.push(vote("dave", &["payments"], Vote::Deny));
        assert_eq!(
            a.status_after_votes(),
            ApprovalStatus::Denied,
            "a denial ends it"
        );
    }
}
