//! Policy slicing: for each tool, only the policies whose scope can match a call of that tool, split into
//! those for one specific agent (`principal == Agent::"..."`) and the rest. A decision evaluates the shared
//! part and, when the caller has policies of its own, that part too, and combines the two answers exactly
//! as Cedar combines policies: any satisfied `forbid` denies; otherwise any satisfied `permit` allows;
//! otherwise deny. So with thousands of policies a call evaluates the tens that can apply to it.
//!
//! A policy is left out of a tool's slice only when its scope can never match that tool's requests:
//! its action scope excludes the tool's action (and every group the action is in), or its resource scope
//! is `==` another entity. Everything else (conditions, `in`, `is`) stays and is evaluated by Cedar.
//! Each part is then split by condition guards (`index`, `guard`): a policy whose guard is false on a
//! call is not evaluated for it.
//! `slice_tests` and `guard_tests` check the equivalence on random policy sets.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Decision as CedarDecision, Entities, Entity, EntityUid, Policy, PolicyId,
    PolicySet, PrincipalConstraint, ResourceConstraint, Response,
};
use serde_json::Value;

use super::args::RecordType;
use super::guard::Cond;
use super::index::GuardedSet;

/// What one tool's calls are evaluated against.
pub(super) struct Slice {
    /// Policies not tied to one agent.
    pub(super) shared: GuardedSet,
    /// Policies with `principal == <uid>`, by that uid.
    pub(super) by_principal: HashMap<EntityUid, GuardedSet>,
    /// Whether some policy here may read `context.session.calls` (or its EST could not be read):
    /// an ALLOW then depends on a counter that concurrent calls move, and is re-checked at commit.
    pub(super) reads_session_calls: bool,
}

/// What slicing needs to know about one tool.
pub(super) struct ToolScope<'a> {
    /// The action and resource every request for the tool carries.
    pub(super) action: &'a EntityUid,
    pub(super) resource: &'a EntityUid,
    /// The tool's entity (its attributes fold into guards) and argument type.
    pub(super) entity: &'a Entity,
    pub(super) args: &'a RecordType,
}

impl ToolScope<'_> {
    /// Whether a policy's scope can match this tool's requests; `groups` are the tool's action and
    /// every group it is in.
    fn can_apply(&self, p: &Policy, groups: &HashSet<&EntityUid>) -> bool {
        let action_ok = match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => &a == self.action,
            ActionConstraint::In(ids) => ids.iter().any(|id| groups.contains(id)),
        };
        let resource_ok = match p.resource_constraint() {
            ResourceConstraint::Eq(r) => &r == self.resource,
            _ => true,
        };
        action_ok && resource_ok
    }
}

impl Slice {
    /// Every tool's slice of `policies`, in the order of `tools`; `actions` are the schema's action
    /// entities (for the groups each action is in). A policy's EST is produced once, when some tool's
    /// calls can match it, and dropped as soon as its guards are built (10,000 of them held at once
    /// would dominate the broker's memory).
    pub(super) fn of_tools(
        policies: &PolicySet,
        tools: &[ToolScope<'_>],
        actions: &Entities,
    ) -> Result<Vec<Self>, String> {
        let groups: Vec<HashSet<&EntityUid>> = tools
            .iter()
            .map(|t| {
                let mut g: HashSet<&EntityUid> = actions
                    .ancestors(t.action)
                    .map(Iterator::collect)
                    .unwrap_or_default();
                g.insert(t.action);
                g
            })
            .collect();
        let mut parts: Vec<(Vec<(Policy, Cond)>, bool)> =
            tools.iter().map(|_| (Vec::new(), false)).collect();
        for p in policies.policies() {
            // `None` until needed; then the EST, if Cedar could produce one (else no guard), and
            // whether it reads a call count (read once per policy, not per tool).
            let mut est: Option<(Option<Value>, bool)> = None;
            for ((tool, groups), (part, reads_calls)) in
                tools.iter().zip(&groups).zip(parts.iter_mut())
            {
                if !tool.can_apply(p, groups) {
                    continue;
                }
                let (est, reads) = est.get_or_insert_with(|| {
                    let est = p.to_json().ok();
                    let reads = est.as_ref().is_none_or(reads_attribute_calls);
                    (est, reads)
                });
                *reads_calls |= *reads;
                let cond = est
                    .as_ref()
                    .map_or(Cond::Opaque, |e| Cond::of_policy(e, tool.args, tool.entity));
                part.push((p.clone(), cond));
            }
        }
        parts
            .into_iter()
            .zip(tools)
            .map(|((part, reads_calls), tool)| Self::split(part, tool.args, reads_calls))
            .collect()
    }

    /// One tool's policies, split by principal and by guards.
    fn split(
        policies: Vec<(Policy, Cond)>,
        args: &RecordType,
        reads_session_calls: bool,
    ) -> Result<Self, String> {
        let mut shared = Vec::new();
        let mut by_principal: HashMap<EntityUid, Vec<(Policy, Cond)>> = HashMap::new();
        for (p, cond) in policies {
            match p.principal_constraint() {
                PrincipalConstraint::Eq(uid) => {
                    by_principal.entry(uid).or_default().push((p, cond))
                }
                _ => shared.push((p, cond)),
            }
        }
        Ok(Self {
            shared: GuardedSet::new(shared, args)?,
            by_principal: by_principal
                .into_iter()
                .map(|(uid, ps)| Ok((uid, GuardedSet::new(ps, args)?)))
                .collect::<Result<_, String>>()?,
            reads_session_calls,
        })
    }
}

/// Whether a policy's EST reads (or tests for) an attribute named `calls` anywhere: over-approximates
/// `context.session.calls` (a record attribute of that name elsewhere only costs a re-check).
fn reads_attribute_calls(est: &Value) -> bool {
    let mut stack = vec![est];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.get("attr").and_then(Value::as_str) == Some("calls") {
                    return true;
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    false
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
    /// The answer of an empty set: deny, nothing decided, no error.
    pub(super) fn none() -> Self {
        Self {
            allow: false,
            deciding: Vec::new(),
            errored: Vec::new(),
        }
    }

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
