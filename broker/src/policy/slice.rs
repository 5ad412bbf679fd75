//! Policy slicing: for each tool, only the policies whose scope can match a call of that tool, split into
//! those for one specific agent (`principal == Agent::"..."`) and the rest. A decision evaluates the shared
//! part and, when the caller has policies of its own, that part too, and combines the two answers exactly
//! as Cedar combines policies: any satisfied `forbid` denies; otherwise any satisfied `permit` allows;
//! otherwise deny. So with thousands of policies a call evaluates the tens that can apply to it.
//!
//! A policy is left out of a tool's slice only when its scope can never match that tool's requests:
//! its action scope excludes the tool's action (and every group the action is in), or its resource scope
//! is `==` another entity. Everything else (conditions, `in`, `is`) stays and is evaluated by Cedar.
//! `tests::sliced_decisions_equal_whole_set_decisions` checks the equivalence on random policy sets.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Decision as CedarDecision, Entities, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint, Response,
};

/// What one tool's calls are evaluated against.
pub(super) struct Slice {
    /// Policies not tied to one agent.
    pub(super) shared: PolicySet,
    /// Policies with `principal == <uid>`, by that uid.
    pub(super) by_principal: HashMap<EntityUid, PolicySet>,
}

impl Slice {
    /// The tool's slice of `policies`; `action` and `resource` are what every request for the tool
    /// carries, `actions` the schema's action entities (for the groups `action` is in).
    pub(super) fn of(
        policies: &PolicySet,
        action: &EntityUid,
        resource: &EntityUid,
        actions: &Entities,
    ) -> Result<Self, String> {
        let mut groups: HashSet<&EntityUid> = actions
            .ancestors(action)
            .map(Iterator::collect)
            .unwrap_or_default();
        groups.insert(action);
        let can_apply = |p: &Policy| {
            let action_ok = match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => &a == action,
                ActionConstraint::In(ids) => ids.iter().any(|id| groups.contains(id)),
            };
            let resource_ok = match p.resource_constraint() {
                ResourceConstraint::Eq(r) => &r == resource,
                _ => true,
            };
            action_ok && resource_ok
        };
        let mut shared = Vec::new();
        let mut by_principal: HashMap<EntityUid, Vec<Policy>> = HashMap::new();
        for p in policies.policies().filter(|p| can_apply(p)) {
            match p.principal_constraint() {
                PrincipalConstraint::Eq(uid) => {
                    by_principal.entry(uid).or_default().push(p.clone())
                }
                _ => shared.push(p.clone()),
            }
        }
        let set = |ps: Vec<Policy>| PolicySet::from_policies(ps).map_err(|e| e.to_string());
        Ok(Self {
            shared: set(shared)?,
            by_principal: by_principal
                .into_iter()
                .map(|(uid, ps)| Ok((uid, set(ps)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

/// Cedar's answer, in a form two answers can be combined in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    pub(super) allow: bool,
    /// The satisfied `forbid`s when denied, the satisfied `permit`s when allowed, sorted.
    pub(super) deciding: Vec<PolicyId>,
    /// Policies that failed to evaluate (Cedar skipped them), sorted.
    pub(super) errored: Vec<PolicyId>,
}

impl From<&Response> for Answer {
    fn from(r: &Response) -> Self {
        let mut deciding: Vec<PolicyId> = r.diagnostics().reason().cloned().collect();
        deciding.sort();
        let mut errored: Vec<PolicyId> = r
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id().clone(),
            })
            .collect();
        errored.sort();
        Self {
            allow: r.decision() == CedarDecision::Allow,
            deciding,
            errored,
        }
    }
}

impl Answer {
    /// The answer of evaluating both policy sets as one. An answer that denies with reasons names every
    /// satisfied `forbid` of its set; an answer without a satisfied `forbid` names every satisfied `permit`.
    pub(super) fn and(self, other: Self) -> Self {
        let mut errored = self.errored;
        errored.extend(other.errored);
        errored.sort();
        let (mut forbids, mut permits) = (Vec::new(), Vec::new());
        for a in [self.deciding, other.deciding]
            .into_iter()
            .zip([self.allow, other.allow])
        {
            match a {
                (ids, true) => permits.extend(ids),
                (ids, false) => forbids.extend(ids),
            }
        }
        let (allow, mut deciding) = if forbids.is_empty() {
            (!permits.is_empty(), permits)
        } else {
            (false, forbids)
        };
        deciding.sort();
        Self {
            allow,
            deciding,
            errored,
        }
    }
}
