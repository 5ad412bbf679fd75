//! Tool arguments reach Cedar only through this typed conversion: each JSON value is checked against the
//! type the schema declares for it and built with Cedar's typed constructors. JSON is never handed to
//! Cedar's own JSON parser, so `{"__entity": ...}` or `{"__extn": ...}` stays plain data (and, not being
//! a declared field, is refused).

use std::collections::BTreeMap;

use cedar_policy::RestrictedExpression;
use serde_json::Value;

/// A type an argument may have. Entity types are not among them, so arguments can never name an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgType {
    String,
    Long,
    Bool,
    Set(Box<ArgType>),
    Record(RecordType),
    /// `decimal`, `ipaddr`, `datetime` or `duration`, given as a JSON string.
    Extension(ExtensionType),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionType {
    Decimal,
    IpAddr,
    Datetime,
    Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordType {
    /// Field name -> (type, required).
    pub fields: BTreeMap<String, (ArgType, bool)>,
}

/// Why arguments do not type-check; `field` is the path from `args`, e.g. `args.cc[2]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct ArgError {
    pub field: String,
    pub problem: String,
}

/// The longest field path an error names: an undeclared key can be as long as the arguments, and the
/// error becomes a DENY reason kept in the audit trail.
const MAX_FIELD_PATH_BYTES: usize = 256;

impl ArgError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        let field = if field.len() <= MAX_FIELD_PATH_BYTES {
            field.to_owned()
        } else {
            let mut end = MAX_FIELD_PATH_BYTES;
            while !field.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", field.get(..end).unwrap_or_default())
        };
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// 2^63: integral JSON numbers at least this large (in magnitude) do not fit a Cedar `Long`.
const LONG_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// An integer written in JSON that does not fit 64 bits (serde_json reads it as a float).
fn beyond_64_bits(n: &serde_json::Number) -> bool {
    (n.is_u64() && n.as_i64().is_none())
        || n.as_f64()
            .is_some_and(|f| n.is_f64() && f.fract() == 0.0 && f.abs() >= LONG_LIMIT)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if beyond_64_bits(n) => "an integer beyond 64 bits",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ArgType {
    fn describe(&self) -> &'static str {
        match self {
            ArgType::String => "a string",
            ArgType::Long => "an integer",
            ArgType::Bool => "a boolean",
            ArgType::Set(_) => "an array",
            ArgType::Record(_) => "an object",
            ArgType::Extension(ExtensionType::Decimal) => "a decimal string such as \"12.3400\"",
            ArgType::Extension(ExtensionType::IpAddr) => "an IP address string",
            ArgType::Extension(ExtensionType::Datetime) => "a datetime string",
            ArgType::Extension(ExtensionType::Duration) => "a duration string such as \"1h30m\"",
        }
    }

    /// Converts `value`, found at `path`, into a Cedar value of this type.
    pub fn convert(&self, value: &Value, path: &str) -> Result<RestrictedExpression, ArgError> {
        let mismatch = || {
            ArgError::new(
                path,
                format!("expected {}, got {}", self.describe(), kind(value)),
            )
        };
        match (self, value) {
            (ArgType::String, Value::String(s)) => Ok(RestrictedExpression::new_string(s.clone())),
            (ArgType::Long, Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(RestrictedExpression::new_long(i)),
                None if beyond_64_bits(n) => Err(ArgError::new(
                    path,
                    "integer is out of range (beyond 64-bit signed)",
                )),
                None => Err(mismatch()),
            },
            (ArgType::Bool, Value::Bool(b)) => Ok(RestrictedExpression::new_bool(*b)),
            (ArgType::Set(elem), Value::Array(items)) => {
                let converted = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| elem.convert(v, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RestrictedExpression::new_set(converted))
            }
            (ArgType::Record(rec), Value::Object(_)) => rec.convert(value, path),
            (ArgType::Extension(ext), Value::String(s)) => {
                if s.len() > 256 {
                    return Err(ArgError::new(
                        path,
                        "extension value is longer than 256 characters",
                    ));
                }
                Ok(match ext {
                    ExtensionType::Decimal => RestrictedExpression::new_decimal(s),
                    ExtensionType::IpAddr => RestrictedExpression::new_ip(s),
                    ExtensionType::Datetime => RestrictedExpression::new_datetime(s),
                    ExtensionType::Duration => RestrictedExpression::new_duration(s),
                })
            }
            _ => Err(mismatch()),
        }
    }
}

impl RecordType {
    /// Converts a JSON object: every required field present, no field the schema does not declare.
    pub fn convert(&self, value: &Value, path: &str) -> Result<RestrictedExpression, ArgError> {
        let fields = self.convert_fields(value, path)?;
        RestrictedExpression::new_record(fields).map_err(|e| ArgError::new(path, e.to_string()))
    }

    /// Like [`RecordType::convert`], field by field (for entity attributes).
    pub fn convert_fields(
        &self,
        value: &Value,
        path: &str,
    ) -> Result<Vec<(String, RestrictedExpression)>, ArgError> {
        let Value::Object(map) = value else {
            return Err(ArgError::new(
                path,
                format!("expected an object, got {}", kind(value)),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !self.fields.contains_key(k.as_str())) {
            return Err(ArgError::new(
                &format!("{path}.{unknown}"),
                "is not an argument of this tool",
            ));
        }
        let mut fields = Vec::with_capacity(map.len());
        for (name, (ty, required)) in &self.fields {
            let field_path = format!("{path}.{name}");
            match map.get(name) {
                Some(v) => fields.push((name.clone(), ty.convert(v, &field_path)?)),
                None if *required => return Err(ArgError::new(&field_path, "is required")),
                None => {}
            }
        }
        Ok(fields)
    }
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod hostile_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refund() -> RecordType {
        let mut fields = BTreeMap::new();
        fields.insert("amount".to_owned(), (ArgType::Long, true));
        fields.insert(
            "to".to_owned(),
            (ArgType::Set(Box::new(ArgType::String)), false),
        );
        fields.insert(
            "meta".to_owned(),
            (ArgType::Record(RecordType::default()), false),
        );
        RecordType { fields }
    }

    #[test]
    fn well_typed_arguments_convert() {
        assert!(refund()
            .convert(&json!({"amount": 5, "to": ["a", "b"]}), "args")
            .is_ok());
    }

    #[test]
    fn type_errors_name_the_field() {
        let cases = [
            (
                json!({"amount": "5"}),
                "args.amount",
                "expected an integer, got a string",
            ),
            (
                json!({"amount": 1.5}),
                "args.amount",
                "expected an integer, got a fractional number",
            ),
            (json!({"amount": u64::MAX}), "args.amount", "out of range"),
            (json!({}), "args.amount", "is required"),
            (
                json!({"amount": 1, "to": ["a", 3]}),
                "args.to[1]",
                "expected a string",
            ),
            (
                json!({"amount": 1, "extra": true}),
                "args.extra",
                "is not an argument",
            ),
            (
                json!({"amount": 1, "__entity": {"type": "Agent", "id": "root"}}),
                "args.__entity",
                "is not an argument",
            ),
            (
                json!({"amount": 1, "meta": {"__extn": {"fn": "ip", "arg": "1.2.3.4"}}}),
                "args.meta.__extn",
                "is not an argument",
            ),
        ];
        for (value, field, problem) in cases {
            let err = refund().convert(&value, "args").unwrap_err();
            assert_eq!(err.field, field, "{value}");
            assert!(err.problem.contains(problem), "{value}: {}", err.problem);
        }
    }

    #[test]
    fn an_entity_shaped_string_argument_stays_a_string() {
        let mut fields = BTreeMap::new();
        fields.insert("q".to_owned(), (ArgType::String, true));
        let rec = RecordType { fields };
        assert!(rec
            .convert(
                &json!({"q": {"__entity": {"type": "Agent", "id": "x"}}}),
                "args"
            )
            .is_err());
        assert!(rec
            .convert(&json!({"q": "{\"__entity\":{}}"}), "args")
            .is_ok());
    }
}
