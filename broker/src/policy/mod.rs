//! The policy engine: Cedar policies over the tool catalogue. Loaded once, strictly validated, then
//! asked per tool call. A verdict is a value (ALLOW or DENY with reasons); nothing here fails open.

mod args;
mod caller_entities;
mod catalogue;
mod filter;
pub mod fixtures;
mod guard;
mod index;
mod load;
mod request;
mod slice;
mod taint;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema,
};
use request::session_record;

pub use args::{ArgError, ArgType, RecordType};
pub use filter::{filter_admits, RetrievalFilter};
pub use load::{ENTITIES_FILE, SCHEMA_FILE};

use crate::domain::approval::Requirement;
use crate::domain::decision::{Outcome, Reason, ReasonCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// A problem in a policy file, at a place the author can find.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Source {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: no policies found (expected `*.cedar` files); refusing to start without policies", dir.display())]
    NoPolicies { dir: PathBuf },
    #[error("{}: {message}", path.display())]
    Catalogue { path: PathBuf, message: String },
}

/// What a tool call looks like to the policies.
#[derive(Debug, Clone)]
pub struct ToolCall<'a> {
    pub agent: &'a str,
    pub user: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub roles: Vec<&'a str>,
    pub tool: &'a str,
    pub args: &'a serde_json::Value,
    pub session: SessionFacts<'a>,
    /// Set when people approved this call: `context.approval`.
    pub approval: Option<ApprovalFacts<'a>>,
}

/// Who is asking, as policies see the principal.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub agent: &'a str,
    pub user: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub roles: Vec<&'a str>,
}

impl<'a> ToolCall<'a> {
    pub fn caller(&self) -> Caller<'a> {
        Caller {
            agent: self.agent,
            user: self.user,
            tenant: self.tenant,
            roles: self.roles.clone(),
        }
    }
}

/// What the engine holds for `Action::"retrieve"`.
struct Retrieval {
    attributes: RecordType,
    action: EntityUid,
    action_entity: Entity,
    /// The policies whose action scope can include `retrieve` (the others can never apply to it).
    policies: PolicySet,
}

/// `context.approval` as policies see it.
#[derive(Debug, Clone)]
pub struct ApprovalFacts<'a> {
    pub id: &'a str,
    pub approvers: Vec<&'a str>,
}

/// What an `@approval` forbid asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApprovalPolicy {
    group: String,
    quorum: u32,
    expires: Option<std::time::Duration>,
}

/// The most approvers a policy may require.
pub const MAX_QUORUM: u32 = 10;

/// `context.session` as policies see it.
#[derive(Debug, Clone)]
pub struct SessionFacts<'a> {
    pub id: &'a str,
    pub purpose: &'a str,
    pub calls: i64,
    pub max_calls: i64,
    /// The user the agent acts for ("" for none).
    pub user: &'a str,
    pub collections: Vec<&'a str>,
    pub labels: Vec<&'a str>,
}

/// The policy engine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    /// For PENDING_APPROVAL: who must approve.
    pub requirements: Vec<Requirement>,
    /// For PENDING_APPROVAL: the shortest `@approval_expires` of the policies that asked, if any set one.
    pub approval_expires: Option<std::time::Duration>,
}

impl Verdict {
    fn deny(code: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Deny,
            reasons: vec![Reason::new(code, message)],
            requirements: Vec::new(),
            approval_expires: None,
        }
    }

    fn decided(outcome: Outcome, reasons: Vec<Reason>) -> Self {
        Self {
            outcome,
            reasons,
            requirements: Vec::new(),
            approval_expires: None,
        }
    }

    /// The ids of the policies that decided, in the order given.
    pub fn policy_ids(&self) -> Vec<&str> {
        self.reasons
            .iter()
            .filter_map(|r| r.policy_id.as_deref())
            .collect()
    }
}

/// A tool as the engine holds it: its argument type and the entities every request about it needs.
struct Tool {
    args: RecordType,
    /// The arguments the schema marks `@sensitive`: redacted in the audit trail.
    sensitive: crate::domain::redaction::Sensitive,
    action: EntityUid,
    resource: EntityUid,
    /// The tool's entity and its action entities (with their groups), their hierarchy computed once per
    /// load; each request adds the principal's.
    entities: Entities,
    /// Whether each request's context must be checked against the schema (it need not when every
    /// context the engine builds conforms: `request::context_conforms`).
    check_context: bool,
    /// The policies that can apply to this tool's calls (`None` only in tests: evaluate the whole set).
    slice: Option<slice::Slice>,
}

pub struct PolicyEngine {
    schema: Schema,
    policies: PolicySet,
    tools: HashMap<String, Tool>,
    reasons: HashMap<PolicyId, String>,
    approvals: HashMap<PolicyId, ApprovalPolicy>,
    /// Users known from `entities.json` (their clearance), by id.
    users: HashMap<String, Entity>,
    retrieval: Option<Retrieval>,
    /// How the policies read `context.session.labels`, for taint on filter.
    label_reads: taint::LabelReads,
    version: String,
    authorizer: Authorizer,
    types: request::Types,
    /// Each request's principal and entities, by tool and caller (`caller_entities.rs`).
    caller_entities: caller_entities::CallerEntities,
    dir: PathBuf,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("version", &self.version)
            .field("tools", &self.tools.len())
            .field("policies", &self.reasons.len())
            .finish()
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| e.to_string())
}

/// Entity uids are built from typed parts, never by formatting Cedar source.
fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        type_name(ty)?,
        EntityId::new(id),
    ))
}

impl PolicyEngine {
    /// Loads and strictly validates a policy directory; any problem stops the load with file and line.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let loaded = load::load(dir)?;
        let catalogue_err = |message: String| Error::Catalogue {
            path: dir.join(SCHEMA_FILE),
            message,
        };
        let specs = catalogue::from_schema_json(&loaded.schema_json).map_err(catalogue_err)?;
        let actions = loaded
            .schema
            .action_entities()
            .map_err(|e| catalogue_err(e.to_string()))?;
        let call_tool = uid("Action", catalogue::CALL_TOOL).map_err(catalogue_err)?;
        let call_tool_entity = actions
            .get(&call_tool)
            .cloned()
            .ok_or_else(|| catalogue_err("no call_tool action".into()))?;

        // Each tool's action, resource and entities, then every tool's slice in one pass over the policies.
        struct Parts {
            name: String,
            spec: catalogue::ToolSpec,
            action: EntityUid,
            resource: EntityUid,
            tool_entity: Entity,
            action_entity: Entity,
        }
        let mut parts = Vec::with_capacity(specs.len());
        for (name, spec) in specs {
            let action = uid("Action", &name).map_err(catalogue_err)?;
            let resource = uid("Tool", &name).map_err(catalogue_err)?;
            let tool_entity =
                loaded
                    .entities
                    .get(&resource)
                    .cloned()
                    .ok_or_else(|| Error::Catalogue {
                        path: dir.join(ENTITIES_FILE),
                        message: format!(
                            "tool `{name}` is in the schema but has no `Tool::\"{name}\"` entity"
                        ),
                    })?;
            let action_entity = actions
                .get(&action)
                .cloned()
                .ok_or_else(|| catalogue_err(format!("no action entity for `{name}`")))?;
            parts.push(Parts {
                name,
                spec,
                action,
                resource,
                tool_entity,
                action_entity,
            });
        }
        // `load` refuses templates, so every policy is static and can be sliced.
        let scopes: Vec<slice::ToolScope<'_>> = parts
            .iter()
            .map(|p| slice::ToolScope {
                action: &p.action,
                resource: &p.resource,
                entity: &p.tool_entity,
                args: &p.spec.args,
            })
            .collect();
        let slices =
            slice::Slice::of_tools(&loaded.policies, &scopes, &actions).map_err(catalogue_err)?;
        let mut tools = HashMap::new();
        for (p, slice) in parts.into_iter().zip(slices) {
            let entities = Entities::from_entities(
                [p.tool_entity, p.action_entity, call_tool_entity.clone()],
                None,
            )
            .map_err(|e| catalogue_err(e.to_string()))?;
            tools.insert(
                p.name,
                Tool {
                    check_context: !request::context_conforms(&p.spec.context),
                    args: p.spec.args,
                    sensitive: p.spec.sensitive,
                    action: p.action,
                    resource: p.resource,
                    entities,
                    slice: Some(slice),
                },
            );
        }

        let reasons = loaded
            .policies
            .policies()
            .map(|p| {
                let message = p
                    .annotation("reason")
                    .map_or_else(|| format!("policy `{}`", p.id()), str::to_owned);
                (p.id().clone(), message)
            })
            .collect();
        let approvals = approval_policies(&loaded.policies, dir)?;
        let types = request::Types::new().map_err(catalogue_err)?;
        let users = loaded
            .entities
            .iter()
            .filter(|e| e.uid().type_name() == types.user())
            .map(|e| (e.uid().id().unescaped().to_owned(), e.clone()))
            .collect();
        let retrieval = match catalogue::document_type(&loaded.schema_json)
            .map_err(catalogue_err)?
        {
            None => None,
            Some(attributes) => {
                let action = uid("Action", "retrieve").map_err(catalogue_err)?;
                let action_entity = actions.get(&action).cloned().ok_or_else(|| {
                    catalogue_err("the schema declares `Document` but no `retrieve` action".into())
                })?;
                // Conservative slice: a policy is left out only when its action scope names tools or the
                // `call_tool` group and nothing else, none of which is or contains `retrieve`.
                let tool_actions: HashSet<EntityUid> = tools
                    .values()
                    .map(|t: &Tool| t.action.clone())
                    .chain([call_tool.clone()])
                    .collect();
                let relevant = loaded
                    .policies
                    .policies()
                    .filter(|p| match p.action_constraint() {
                        cedar_policy::ActionConstraint::Any => true,
                        cedar_policy::ActionConstraint::Eq(a) => a == action,
                        cedar_policy::ActionConstraint::In(ids) => {
                            ids.iter().any(|id| !tool_actions.contains(id))
                        }
                    });
                let policies = PolicySet::from_policies(relevant.cloned())
                    .map_err(|e| catalogue_err(e.to_string()))?;
                Some(Retrieval {
                    attributes,
                    action,
                    action_entity,
                    policies,
                })
            }
        };
        let label_reads = taint::LabelReads::of(&loaded.policies);
        Ok(Self {
            label_reads,
            schema: loaded.schema,
            policies: loaded.policies,
            tools,
            reasons,
            approvals,
            users,
            retrieval,
            version: loaded.version,
            authorizer: Authorizer::new(),
            types,
            caller_entities: caller_entities::CallerEntities::default(),
            dir: dir.to_path_buf(),
        })
    }

    /// The same engine evaluating the whole policy set for every call, each request checked against
    /// the schema: the reference for slicing, guards and unchecked contexts.
    #[cfg(test)]
    fn without_slices(mut self) -> Self {
        for tool in self.tools.values_mut() {
            tool.slice = None;
            tool.check_context = true;
        }
        self
    }

    /// SHA-256 of the schema, entities and policy files that decide.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn policy_count(&self) -> usize {
        self.reasons.len()
    }

    pub fn tool_names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    pub fn knows_tool(&self, tool: &str) -> bool {
        self.tools.contains_key(tool)
    }

    /// Why `args` do not type-check for `tool`, if they do not (`None` too for a tool not known).
    pub fn argument_error(&self, tool: &str, args: &serde_json::Value) -> Option<String> {
        let tool = self.tools.get(tool)?;
        tool.args.convert(args, "args").err().map(|e| e.to_string())
    }

    /// Whether the policies for `tool` may read the session's call count (`context.session.calls`):
    /// then an ALLOW is re-checked against the count at commit. Unknown tools: true.
    pub fn reads_session_calls(&self, tool: &str) -> bool {
        self.tools
            .get(tool)
            .is_none_or(|t| t.slice.as_ref().is_none_or(|s| s.reads_session_calls))
    }

    /// The arguments of `tool` its schema marks `@sensitive`; `None` for a tool not in the catalogue.
    pub fn sensitive_arguments(&self, tool: &str) -> Option<&crate::domain::redaction::Sensitive> {
        self.tools.get(tool).map(|t| &t.sensitive)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decides one tool call. Unknown tools and ill-typed arguments are DENY; so is any evaluation error
    /// (Cedar skips a policy that errors, which for a `forbid` would fail open: we refuse instead).
    pub fn decide(&self, call: &ToolCall<'_>) -> Verdict {
        let Some(tool) = self.tools.get(call.tool) else {
            return Verdict::deny(
                ReasonCode::UnknownTool,
                format!("tool `{}` is not in the catalogue", call.tool),
            );
        };
        let args = match tool.args.convert(call.args, "args") {
            Ok(a) => a,
            Err(e) => return Verdict::deny(ReasonCode::InvalidArguments, e.to_string()),
        };
        let verdict = match self.evaluate(tool, call, args.clone()) {
            Ok(v) => v,
            Err(message) => return Verdict::deny(ReasonCode::PolicyError, message),
        };
        if call.approval.is_some() || verdict.outcome != Outcome::Deny {
            return verdict;
        }
        // Approval-curable: every policy that denied asks for approval, and with an approval in context
        // the call would be allowed. Then people decide; otherwise the DENY stands.
        let asking: Vec<(&PolicyId, &ApprovalPolicy)> = verdict
            .reasons
            .iter()
            .filter(|r| r.code == ReasonCode::PolicyDeny)
            .filter_map(|r| r.policy_id.as_deref())
            .filter_map(|id| self.approvals.get_key_value(&PolicyId::new(id)))
            .collect();
        let denying = verdict
            .reasons
            .iter()
            .filter(|r| r.code == ReasonCode::PolicyDeny)
            .count();
        if asking.is_empty() || asking.len() != denying || denying != verdict.reasons.len() {
            return verdict;
        }
        let hypothetical = ToolCall {
            approval: Some(ApprovalFacts {
                id: "apr_hypothetical",
                approvers: Vec::new(),
            }),
            ..call.clone()
        };
        match self.evaluate(tool, &hypothetical, args) {
            Ok(v) if v.outcome == Outcome::Allow => {}
            _ => return verdict,
        }
        let reasons = asking
            .iter()
            .map(|(id, _)| {
                let message = self
                    .reasons
                    .get(*id)
                    .cloned()
                    .unwrap_or_else(|| format!("policy `{id}`"));
                Reason::from_policy(ReasonCode::ApprovalRequired, id.to_string(), message)
            })
            .collect();
        Verdict {
            outcome: Outcome::PendingApproval,
            reasons,
            requirements: asking
                .iter()
                .map(|(id, a)| Requirement {
                    policy_id: id.to_string(),
                    group: a.group.clone(),
                    quorum: a.quorum,
                })
                .collect(),
            approval_expires: asking.iter().filter_map(|(_, a)| a.expires).min(),
        }
    }

    fn evaluate(
        &self,
        tool: &Tool,
        call: &ToolCall<'_>,
        args: RestrictedExpression,
    ) -> Result<Verdict, String> {
        let context = request::tool_context(args, &call.session, call.approval.as_ref())?;
        let caller = call.caller();
        let built = self.caller_entities.get_or_build(call.tool, &caller, || {
            let (principal, principal_entities) =
                self.types.principal_entities(&self.users, &caller)?;
            let entities = tool
                .entities
                .clone()
                .add_entities(principal_entities, None)
                .map_err(|e| e.to_string())?;
            Ok((principal, entities))
        })?;
        let (principal, entities) = &*built;
        // Checking the request against the schema would refuse nothing when the context conforms by
        // construction; otherwise it is checked, and a context that does not match is a DENY.
        let schema = tool.check_context.then_some(&self.schema);
        let request = Request::new(
            principal.clone(),
            tool.action.clone(),
            tool.resource.clone(),
            context,
            schema,
        )
        .map_err(|e| format!("request does not match the schema: {e}"))?;
        let answer = |set: &PolicySet| {
            slice::Answer::from(&self.authorizer.is_authorized(&request, set, entities))
        };
        let facts = guard::Facts::new(call.args, &call.session, call.approval.is_some());
        let answer = match &tool.slice {
            Some(slice) => {
                let shared = slice.shared.answer(&facts, &answer);
                match slice.by_principal.get(principal) {
                    Some(own) => shared.and(own.answer(&facts, &answer)),
                    None => shared,
                }
            }
            None => answer(&self.policies),
        };
        Ok(self.verdict(&answer, call.tool))
    }

    /// Cedar's answer as a verdict: deciding policies become reasons; any evaluation error denies.
    fn verdict(&self, answer: &slice::Answer, what: &str) -> Verdict {
        let errored: Vec<String> = answer.errored.iter().map(ToString::to_string).collect();
        let deciding: Vec<&PolicyId> = answer.deciding.iter().collect();
        let reason_for = |code: ReasonCode, id: &PolicyId| {
            let message = self
                .reasons
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("policy `{id}`"));
            Reason::from_policy(code, id.to_string(), message)
        };
        match answer.allow {
            true if errored.is_empty() => Verdict::decided(
                Outcome::Allow,
                deciding
                    .into_iter()
                    .map(|id| reason_for(ReasonCode::PolicyAllow, id))
                    .collect(),
            ),
            true => Verdict::deny(
                ReasonCode::PolicyError,
                format!(
                    "policies {} failed to evaluate; refusing rather than skipping them",
                    errored.join(", ")
                ),
            ),
            false if !deciding.is_empty() => Verdict::decided(
                Outcome::Deny,
                deciding
                    .into_iter()
                    .map(|id| reason_for(ReasonCode::PolicyDeny, id))
                    .collect(),
            ),
            false => {
                let mut v = Verdict::deny(
                    ReasonCode::NoPolicyAllows,
                    format!("no policy allows `{what}` for this agent"),
                );
                if !errored.is_empty() {
                    v.reasons.push(Reason::new(
                        ReasonCode::PolicyError,
                        format!("policies {} failed to evaluate", errored.join(", ")),
                    ));
                }
                v
            }
        }
    }

    /// Decides each candidate document for `Action::"retrieve"`, in input order. A document whose
    /// attributes do not type-check against the schema's `Document` is denied INVALID_ARGUMENTS by itself.
    pub fn decide_retrieval(
        &self,
        caller: &Caller<'_>,
        session: &SessionFacts<'_>,
        documents: &[(&str, &serde_json::Value)],
    ) -> Vec<Verdict> {
        let Some(retrieval) = &self.retrieval else {
            return documents
                .iter()
                .map(|_| {
                    Verdict::deny(
                        ReasonCode::UnknownTool,
                        "the schema declares no `retrieve` action",
                    )
                })
                .collect();
        };
        let shared = (|| -> Result<_, String> {
            let context = Context::from_pairs([("session".to_owned(), session_record(session)?)])
                .map_err(|e| e.to_string())?;
            let (principal, entities) = self.types.principal_entities(&self.users, caller)?;
            Ok((context, principal, entities))
        })();
        let (context, principal, base) = match shared {
            Ok(x) => x,
            Err(e) => {
                return documents
                    .iter()
                    .map(|_| Verdict::deny(ReasonCode::PolicyError, e.clone()))
                    .collect()
            }
        };
        // Type every candidate, then build one entity store for the batch (its hierarchy computed once).
        let mut verdicts: Vec<Option<Verdict>> = vec![None; documents.len()];
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(documents.len());
        let mut entities = base;
        entities.push(retrieval.action_entity.clone());
        let mut decidable: Vec<(usize, EntityUid)> = Vec::with_capacity(documents.len());
        for (i, (id, attrs)) in documents.iter().enumerate() {
            let slot = verdicts.get_mut(i);
            if let Some(first) = seen.insert(id, i) {
                // Two candidates with one id cannot be told apart: neither is allowed.
                let dup = Verdict::deny(
                    ReasonCode::InvalidArguments,
                    format!("document id `{id}` appears more than once in the batch"),
                );
                if let Some(v) = verdicts.get_mut(first) {
                    *v = Some(dup.clone());
                }
                decidable.retain(|(j, _)| *j != first);
                if let Some(v) = verdicts.get_mut(i) {
                    *v = Some(dup);
                }
                continue;
            }
            let built = retrieval
                .attributes
                .convert_fields(attrs, "attributes")
                .map_err(|e| {
                    Verdict::deny(
                        ReasonCode::InvalidArguments,
                        format!("document `{id}`: {e}"),
                    )
                })
                .and_then(|typed| {
                    let doc_uid = uid("Document", id)
                        .map_err(|e| Verdict::deny(ReasonCode::PolicyError, e))?;
                    let doc =
                        Entity::new(doc_uid.clone(), typed.into_iter().collect(), HashSet::new())
                            .map_err(|e| {
                            Verdict::deny(
                                ReasonCode::InvalidArguments,
                                format!("document `{id}`: {e}"),
                            )
                        })?;
                    Ok((doc_uid, doc))
                });
            match built {
                Ok((doc_uid, doc)) => {
                    entities.push(doc);
                    decidable.push((i, doc_uid));
                }
                Err(v) => {
                    if let Some(s) = slot {
                        *s = Some(v);
                    }
                }
            }
        }
        // Duplicates dropped above must not reach the entity store either.
        let keep: HashSet<&EntityUid> = decidable.iter().map(|(_, u)| u).collect();
        let document_type = type_name("Document").ok();
        entities.retain(|e| {
            Some(e.uid().type_name()) != document_type.as_ref() || keep.contains(&e.uid())
        });
        match Entities::from_entities(entities, None) {
            Err(e) => {
                for (i, _) in &decidable {
                    if let Some(v) = verdicts.get_mut(*i) {
                        *v = Some(Verdict::deny(ReasonCode::PolicyError, e.to_string()));
                    }
                }
            }
            Ok(store) => {
                for (i, doc_uid) in decidable {
                    // The context and the document were typed against the schema already; only the policies
                    // whose action scope can include `retrieve` are evaluated.
                    let v = Request::new(
                        principal.clone(),
                        retrieval.action.clone(),
                        doc_uid,
                        context.clone(),
                        None,
                    )
                    .map(|request| {
                        self.verdict(
                            &slice::Answer::from(&self.authorizer.is_authorized(
                                &request,
                                &retrieval.policies,
                                &store,
                            )),
                            "retrieve",
                        )
                    })
                    .unwrap_or_else(|e| Verdict::deny(ReasonCode::PolicyError, e.to_string()));
                    if let Some(slot) = verdicts.get_mut(i) {
                        *slot = Some(v);
                    }
                }
            }
        }
        verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| Verdict::deny(ReasonCode::PolicyError, "not decided")))
            .collect()
    }
}

/// Reads `@approval("group")`, `@quorum("n")` and `@approval_expires("15m")`. Only a `forbid` may ask for
/// approval (its `unless { context has approval }` is what an approval lifts).
fn approval_policies(
    policies: &PolicySet,
    dir: &Path,
) -> Result<HashMap<PolicyId, ApprovalPolicy>, Error> {
    let mut out = HashMap::new();
    for p in policies.policies() {
        let bad = |message: String| Error::Catalogue {
            path: dir.to_path_buf(),
            message: format!("policy `{}`: {message}", p.id()),
        };
        let Some(group) = p.annotation("approval") else {
            if p.annotation("quorum").is_some() || p.annotation("approval_expires").is_some() {
                return Err(bad(
                    "`@quorum` and `@approval_expires` need `@approval(\"group\")`".into(),
                ));
            }
            continue;
        };
        if p.effect() != cedar_policy::Effect::Forbid {
            return Err(bad("only a `forbid` can ask for approval".into()));
        }
        if group.trim().is_empty() {
            return Err(bad("`@approval` names the approvers' group".into()));
        }
        let quorum = match p.annotation("quorum") {
            None => 1,
            Some(q) => q
                .parse::<u32>()
                .ok()
                .filter(|q| (1..=MAX_QUORUM).contains(q))
                .ok_or_else(|| bad(format!("`@quorum(\"{q}\")` must be 1 to {MAX_QUORUM}")))?,
        };
        let expires = p
            .annotation("approval_expires")
            .map(|e| {
                humantime::parse_duration(e).map_err(|_| {
                    bad(format!(
                        "`@approval_expires(\"{e}\")` is not a duration such as \"15m\""
                    ))
                })
            })
            .transpose()?;
        out.insert(
            p.id().clone(),
            ApprovalPolicy {
                group: group.to_owned(),
                quorum,
                expires,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod example_tests;
#[cfg(test)]
mod guard_diff_tests;
#[cfg(test)]
mod sensitive_tests;
#[cfg(test)]
mod slice_tests;
#[cfg(test)]
mod tests;
