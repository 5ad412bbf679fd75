//! The parts of a Cedar request built per call: the context and the principal's entities, from typed
//! parts only. What is the same for every call (entity type names, a tool's entities, whether its
//! context needs checking against the schema) is prepared once per load.

use std::collections::{BTreeMap, HashMap, HashSet};

use cedar_policy::{Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use super::args::{ArgType, RecordType};
use super::{type_name, ApprovalFacts, Caller, SessionFacts};

/// The entity types a request names, parsed once (parsing a type name runs Cedar's parser).
pub(super) struct Types {
    agent: EntityTypeName,
    role: EntityTypeName,
    user: EntityTypeName,
}

impl Types {
    pub(super) fn new() -> Result<Self, String> {
        Ok(Self {
            agent: type_name("Agent")?,
            role: type_name("Role")?,
            user: type_name("User")?,
        })
    }

    pub(super) fn user(&self) -> &EntityTypeName {
        &self.user
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    /// The agent entity (with its user and tenant) and the user entity, built from typed parts. A user
    /// known from `entities.json` (`users`) keeps its attributes (clearance); any other has clearance 0.
    pub(super) fn principal_entities(
        &self,
        users: &HashMap<String, Entity>,
        p: &Caller<'_>,
    ) -> Result<(EntityUid, Vec<Entity>), String> {
        let principal = Self::uid(&self.agent, p.agent);
        let roles: HashSet<EntityUid> = p.roles.iter().map(|r| Self::uid(&self.role, r)).collect();
        let mut attrs = HashMap::new();
        let mut entities = Vec::with_capacity(2);
        if let Some(user) = p.user {
            let user_uid = Self::uid(&self.user, user);
            attrs.insert(
                "user".to_owned(),
                RestrictedExpression::new_entity_uid(user_uid.clone()),
            );
            let user_entity = match users.get(user) {
                Some(e) => e.clone(),
                None => Entity::new(
                    user_uid,
                    HashMap::from([("clearance".to_owned(), RestrictedExpression::new_long(0))]),
                    HashSet::new(),
                )
                .map_err(|e| e.to_string())?,
            };
            entities.push(user_entity);
        }
        if let Some(tenant) = p.tenant {
            attrs.insert(
                "tenant".to_owned(),
                RestrictedExpression::new_string(tenant.to_owned()),
            );
        }
        entities.push(Entity::new(principal.clone(), attrs, roles).map_err(|e| e.to_string())?);
        Ok((principal, entities))
    }
}

/// `context.session` as a Cedar record.
pub(super) fn session_record(s: &SessionFacts<'_>) -> Result<RestrictedExpression, String> {
    let strings = |v: &[&str]| {
        RestrictedExpression::new_set(
            v.iter()
                .map(|x| RestrictedExpression::new_string((*x).to_owned()))
                .collect::<Vec<_>>(),
        )
    };
    RestrictedExpression::new_record([
        (
            "id".to_owned(),
            RestrictedExpression::new_string(s.id.to_owned()),
        ),
        (
            "purpose".to_owned(),
            RestrictedExpression::new_string(s.purpose.to_owned()),
        ),
        ("calls".to_owned(), RestrictedExpression::new_long(s.calls)),
        (
            "max_calls".to_owned(),
            RestrictedExpression::new_long(s.max_calls),
        ),
        (
            "user".to_owned(),
            RestrictedExpression::new_string(s.user.to_owned()),
        ),
        ("collections".to_owned(), strings(&s.collections)),
        ("labels".to_owned(), strings(&s.labels)),
    ])
    .map_err(|e| e.to_string())
}

/// A tool call's context: `args` (already typed by `args.rs`), `session` and, when approved,
/// `approval`.
pub(super) fn tool_context(
    args: RestrictedExpression,
    session: &SessionFacts<'_>,
    approval: Option<&ApprovalFacts<'_>>,
) -> Result<Context, String> {
    let mut pairs = vec![
        ("args".to_owned(), args),
        ("session".to_owned(), session_record(session)?),
    ];
    if let Some(approval) = approval {
        let approvers = approval
            .approvers
            .iter()
            .map(|a| RestrictedExpression::new_string((*a).to_owned()));
        let record = RestrictedExpression::new_record([
            (
                "id".to_owned(),
                RestrictedExpression::new_string(approval.id.to_owned()),
            ),
            (
                "approvers".to_owned(),
                RestrictedExpression::new_set(approvers),
            ),
        ])
        .map_err(|e| e.to_string())?;
        pairs.push(("approval".to_owned(), record));
    }
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}

fn record(fields: &[(&str, ArgType, bool)]) -> ArgType {
    ArgType::Record(RecordType {
        fields: fields
            .iter()
            .map(|(n, t, req)| ((*n).to_owned(), (t.clone(), *req)))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// Whether every context [`tool_context`] builds conforms to a tool's declared `context`, so that
/// checking each request against the schema would never refuse one: `session` and `approval` are
/// declared exactly as built (required, optional), and nothing else is required. `args` conforms by
/// construction (`args.rs` types it with the declared `args`); the catalogue has checked that the tool
/// applies to `Agent` and `Tool`, and a tool context holds no entity uid. When this is false, the
/// engine checks every request against the schema, as Cedar would refuse some.
pub(super) fn context_conforms(declared: &RecordType) -> bool {
    let strings = || ArgType::Set(Box::new(ArgType::String));
    let session = record(&[
        ("id", ArgType::String, true),
        ("purpose", ArgType::String, true),
        ("calls", ArgType::Long, true),
        ("max_calls", ArgType::Long, true),
        ("user", ArgType::String, true),
        ("collections", strings(), true),
        ("labels", strings(), true),
    ]);
    let approval = record(&[
        ("id", ArgType::String, true),
        ("approvers", strings(), true),
    ]);
    declared
        .fields
        .iter()
        .all(|(name, (ty, required))| match name.as_str() {
            "args" => *required && matches!(ty, ArgType::Record(_)),
            "session" => *required && *ty == session,
            "approval" => !*required && *ty == approval,
            _ => !*required,
        })
        && ["args", "session", "approval"]
            .iter()
            .all(|f| declared.fields.contains_key(*f))
}
