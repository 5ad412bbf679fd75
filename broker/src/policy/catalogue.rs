//! The tool catalogue, read from the Cedar schema: each action in `Action::"call_tool"` is a tool, and the
//! type of its `context.args` is what its arguments must type-check against. An argument attribute
//! annotated [`SENSITIVE`] (at any depth, e.g. `@sensitive "password": String`) is redacted in the audit
//! trail whatever its name.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::args::{ArgType, ExtensionType, RecordType};
use crate::domain::redaction::Sensitive;
use crate::domain::session::is_tool_name;

/// The action group every tool belongs to.
pub const CALL_TOOL: &str = "call_tool";

/// The schema annotation marking an argument the audit trail keeps only redacted.
pub const SENSITIVE: &str = "sensitive";

#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub args: RecordType,
    /// The whole declared `context` (`args`, `session`, ...).
    pub context: RecordType,
    /// The arguments annotated [`SENSITIVE`].
    pub sensitive: Sensitive,
}

/// Reads the catalogue from the schema in Cedar's JSON form (types resolved). Errors are messages for
/// the policy author.
pub fn from_schema_json(schema: &Value) -> Result<HashMap<String, ToolSpec>, String> {
    let root = schema.as_object().ok_or("schema is not an object")?;
    if let Some(ns) = root.keys().find(|k| !k.is_empty()) {
        return Err(format!(
            "namespace `{ns}`: the broker's catalogue lives in the empty namespace"
        ));
    }
    let ns = root
        .get("")
        .and_then(Value::as_object)
        .ok_or("schema declares nothing")?;
    let empty = Map::new();
    let common = ns
        .get("commonTypes")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let actions = ns
        .get("actions")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if !actions.contains_key(CALL_TOOL) {
        return Err(format!("the schema has no `action {CALL_TOOL};` group"));
    }
    let mut tools = HashMap::new();
    for (name, action) in actions {
        let in_call_tool = action
            .get("memberOf")
            .and_then(Value::as_array)
            .is_some_and(|groups| {
                groups
                    .iter()
                    .any(|g| g.get("id").and_then(Value::as_str) == Some(CALL_TOOL))
            });
        if !in_call_tool {
            continue;
        }
        let at = |what: &str| format!("action `{name}`: {what}");
        if !is_tool_name(name) {
            return Err(at(
                "a tool name must be dot-separated lowercase ASCII segments such as `email.send`",
            ));
        }
        let applies = action
            .get("appliesTo")
            .ok_or_else(|| at("has no appliesTo"))?;
        let only = |key: &str, want: &str| {
            applies
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(|v| v.len() == 1 && v.first().and_then(Value::as_str) == Some(want))
        };
        if !only("principalTypes", "Agent") || !only("resourceTypes", "Tool") {
            return Err(at("must apply to principal [Agent] and resource [Tool]"));
        }
        let context = applies.get("context").ok_or_else(|| at("has no context"))?;
        let sensitive = sensitive_in(context, common, 0)
            .fields
            .remove("args")
            .unwrap_or_default();
        let context =
            match parse_type(context, common, 0).map_err(|e| at(&format!("context: {e}")))? {
                ArgType::Record(r) => r,
                _ => return Err(at("context must be a record")),
            };
        let args = match context.fields.get("args") {
            Some((ArgType::Record(r), true)) => r.clone(),
            _ => return Err(at("context must have a required record `args`")),
        };
        if !matches!(
            context.fields.get("session"),
            Some((ArgType::Record(_), true))
        ) {
            return Err(at("context must have a required `session` of type Session"));
        }
        tools.insert(
            name.clone(),
            ToolSpec {
                args,
                context,
                sensitive,
            },
        );
    }
    Ok(tools)
}

/// The attributes of the schema's `Document` entity type, if it declares one (for retrieval).
pub fn document_type(schema: &Value) -> Result<Option<RecordType>, String> {
    let Some(shape) = schema
        .get("")
        .and_then(|ns| ns.get("entityTypes"))
        .and_then(|t| t.get("Document"))
        .and_then(|d| d.get("shape"))
    else {
        return Ok(None);
    };
    let empty = Map::new();
    let common = schema
        .get("")
        .and_then(|ns| ns.get("commonTypes"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    match parse_type(shape, common, 0).map_err(|e| format!("entity `Document`: {e}"))? {
        ArgType::Record(r) => Ok(Some(r)),
        _ => Err("entity `Document` must have a record shape".into()),
    }
}

/// What a type (already checked by [`parse_type`]) marks [`SENSITIVE`]: its record attributes that carry
/// the annotation, and what is marked inside the others.
fn sensitive_in(v: &Value, common: &Map<String, Value>, depth: usize) -> Sensitive {
    let mut found = Sensitive::default();
    if depth > 32 {
        return found;
    }
    let resolve = |name: &str| common.get(name).map(|t| sensitive_in(t, common, depth + 1));
    match v.get("type").and_then(Value::as_str) {
        Some("Record") => {
            let attrs = v.get("attributes").and_then(Value::as_object);
            for (k, a) in attrs.into_iter().flatten() {
                let marked = a
                    .get("annotations")
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.contains_key(SENSITIVE));
                let inner = if marked {
                    Sensitive {
                        all: true,
                        ..Sensitive::default()
                    }
                } else {
                    sensitive_in(a, common, depth + 1)
                };
                if !inner.is_empty() {
                    found.fields.insert(k.clone(), inner);
                }
            }
        }
        // A set's elements share one tree: arguments are redacted element by element.
        Some("Set") => {
            if let Some(element) = v.get("element") {
                found = sensitive_in(element, common, depth + 1);
            }
        }
        Some("EntityOrCommon") => {
            if let Some(t) = v.get("name").and_then(Value::as_str).and_then(resolve) {
                found = t;
            }
        }
        Some(
            "String" | "Long" | "Bool" | "Boolean" | "Extension" | "Entity" | "decimal" | "ipaddr"
            | "datetime" | "duration",
        )
        | None => {}
        Some(other) => {
            if let Some(t) = resolve(other) {
                found = t;
            }
        }
    }
    found
}

fn parse_type(v: &Value, common: &Map<String, Value>, depth: usize) -> Result<ArgType, String> {
    if depth > 32 {
        return Err("types nest too deeply".into());
    }
    let ty = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a type without `type`")?;
    let name = v.get("name").and_then(Value::as_str);
    Ok(match ty {
        "String" => ArgType::String,
        "Long" => ArgType::Long,
        "Bool" | "Boolean" => ArgType::Bool,
        "Set" => ArgType::Set(Box::new(parse_type(
            v.get("element").ok_or("a Set without `element`")?,
            common,
            depth + 1,
        )?)),
        "Record" => {
            if v.get("additionalAttributes").and_then(Value::as_bool) == Some(true) {
                return Err(
                    "records with additionalAttributes cannot be checked; declare every field"
                        .into(),
                );
            }
            let mut fields = BTreeMap::new();
            if let Some(attrs) = v.get("attributes").and_then(Value::as_object) {
                for (k, a) in attrs {
                    let required = a.get("required").and_then(Value::as_bool).unwrap_or(true);
                    let t = parse_type(a, common, depth + 1).map_err(|e| format!("`{k}`: {e}"))?;
                    fields.insert(k.clone(), (t, required));
                }
            }
            ArgType::Record(RecordType { fields })
        }
        "Extension" => ArgType::Extension(match name {
            Some("decimal") => ExtensionType::Decimal,
            Some("ipaddr") => ExtensionType::IpAddr,
            Some("datetime") => ExtensionType::Datetime,
            Some("duration") => ExtensionType::Duration,
            other => return Err(format!("unknown extension type `{}`", other.unwrap_or(""))),
        }),
        "Entity" => {
            return Err(format!(
                "entity type `{}` is not allowed in a tool's context",
                name.unwrap_or("")
            ))
        }
        "EntityOrCommon" => {
            let n = name.ok_or("a type reference without `name`")?;
            let t = common.get(n).ok_or_else(|| {
                format!("`{n}` is not a common type (entity types are not allowed)")
            })?;
            parse_type(t, common, depth + 1)?
        }
        // The resolved schema JSON names extension types directly.
        "decimal" => ArgType::Extension(ExtensionType::Decimal),
        "ipaddr" => ArgType::Extension(ExtensionType::IpAddr),
        "datetime" => ArgType::Extension(ExtensionType::Datetime),
        "duration" => ArgType::Extension(ExtensionType::Duration),
        other => {
            let t = common
                .get(other)
                .ok_or_else(|| format!("unknown type `{other}`"))?;
            parse_type(t, common, depth + 1)?
        }
    })
}
