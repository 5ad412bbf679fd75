//! The retrieval pre-filter, evaluated in memory: the broker answers `RetrievalFilter` with a condition
//! over a document's attributes (its vector-store metadata); a pipeline translates it into its store's
//! query language, or applies it here with [`apply_filter`] / [`filter_admits`].
//!
//! The filter language (JSON):
//!
//! | filter                              | admits a document when                                         |
//! |-------------------------------------|----------------------------------------------------------------|
//! | `true` / `false`                    | always / never                                                 |
//! | `{"and": [f, ...]}`                 | every `f` admits it (`[]`: always)                              |
//! | `{"or": [f, ...]}`                  | some `f` admits it (`[]`: never)                                |
//! | `{"not": f}`                        | `f` does not admit it                                          |
//! | `{"eq": ["attr", value]}`           | attribute `attr` equals `value`                                |
//! | `{"in": ["attr", [v, ...]]}`        | attribute `attr` equals one of the values                      |
//! | `{"contains": ["attr", value]}`     | attribute `attr` is an array with an element equal to `value`  |
//! | `{"lt"/"le"/"gt"/"ge": ["attr", n]}`| attribute `attr` is an integer `<`/`<=`/`>`/`>=` the integer `n` |
//! | `{"exists": "attr"}`                | attribute `attr` is present and not `null`                     |
//!
//! An atom (`eq`, `in`, `contains`, comparisons) over a missing attribute, or over a value of another
//! type, is false (so `{"not": atom}` is then true); it is never an error. Equality is JSON equality.
//! Only a malformed filter is an error (unknown operator, wrong operands, a non-integer bound, nesting
//! deeper than [`MAX_FILTER_DEPTH`]); it admits nothing.
//!
//! The broker computes the filter for documents whose attributes type-check against the policies'
//! `Document` entity; a document that does not is denied by `AuthorizeRetrieval` whatever the filter says.
//! When the broker reports the filter incomplete, it only ever admits too little, never too much; post-filter
//! the results with `AuthorizeRetrieval` to get exactly the allowed documents.

use serde_json::{Map, Value};

/// How deeply a filter may nest; deeper filters are refused as malformed.
pub const MAX_FILTER_DEPTH: usize = 64;

/// Whether `filter` admits a document with these `attributes` (a JSON object). An error means the
/// filter is malformed (or `attributes` is not an object): admit nothing.
pub fn filter_admits(filter: &Value, attributes: &Value) -> Result<bool, String> {
    let filter = Filter::parse(filter, 0)?;
    let attributes = attributes
        .as_object()
        .ok_or("document attributes must be a JSON object")?;
    Ok(filter.admits(attributes))
}

/// The candidates `filter` admits, in input order. A malformed filter admits nothing (fail closed), as
/// does a candidate whose attributes are not a JSON object.
pub fn apply_filter<'a, T>(
    filter: &Value,
    candidates: impl IntoIterator<Item = (T, &'a Value)>,
) -> Vec<T> {
    let Ok(filter) = Filter::parse(filter, 0) else {
        return Vec::new();
    };
    candidates
        .into_iter()
        .filter_map(|(item, attributes)| {
            attributes
                .as_object()
                .is_some_and(|a| filter.admits(a))
                .then_some(item)
        })
        .collect()
}

/// A parsed filter: the whole filter is checked before any document is, so a malformed part cannot hide
/// behind a short circuit.
enum Filter<'f> {
    Const(bool),
    And(Vec<Filter<'f>>),
    Or(Vec<Filter<'f>>),
    Not(Box<Filter<'f>>),
    Eq(&'f str, &'f Value),
    In(&'f str, &'f [Value]),
    Contains(&'f str, &'f Value),
    Cmp(Cmp, &'f str, i64),
    Exists(&'f str),
}

#[derive(Clone, Copy)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// `["attr", operand]`.
fn pair<'f>(op: &str, operands: &'f Value) -> Result<(&'f str, &'f Value), String> {
    match operands.as_array().map(Vec::as_slice) {
        Some([Value::String(attr), operand]) => Ok((attr, operand)),
        _ => Err(format!(
            "`{op}` takes [\"attribute\", operand], got `{operands}`"
        )),
    }
}

impl<'f> Filter<'f> {
    fn parse(value: &'f Value, depth: usize) -> Result<Self, String> {
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "the filter nests deeper than {MAX_FILTER_DEPTH} levels"
            ));
        }
        let (op, operands) = match value {
            Value::Bool(b) => return Ok(Filter::Const(*b)),
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((op, operands)) => (op.as_str(), operands),
                None => return Err("an empty filter object".into()),
            },
            other => {
                return Err(format!(
                    "a filter is `true`, `false` or an object with one operator, got `{other}`"
                ))
            }
        };
        let list = |operands: &'f Value| -> Result<Vec<Filter<'f>>, String> {
            operands
                .as_array()
                .ok_or_else(|| format!("`{op}` takes an array of filters"))?
                .iter()
                .map(|f| Filter::parse(f, depth + 1))
                .collect()
        };
        Ok(match op {
            "and" => Filter::And(list(operands)?),
            "or" => Filter::Or(list(operands)?),
            "not" => Filter::Not(Box::new(Filter::parse(operands, depth + 1)?)),
            "eq" => {
                let (attr, value) = pair(op, operands)?;
                Filter::Eq(attr, value)
            }
            "in" => {
                let (attr, values) = pair(op, operands)?;
                let values = values
                    .as_array()
                    .ok_or_else(|| format!("`in` takes an array of values, got `{values}`"))?;
                Filter::In(attr, values)
            }
            "contains" => {
                let (attr, value) = pair(op, operands)?;
                Filter::Contains(attr, value)
            }
            "lt" | "le" | "gt" | "ge" => {
                let (attr, bound) = pair(op, operands)?;
                let bound = bound
                    .as_i64()
                    .ok_or_else(|| format!("`{op}` takes an integer bound, got `{bound}`"))?;
                let cmp = match op {
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                Filter::Cmp(cmp, attr, bound)
            }
            "exists" => Filter::Exists(
                operands
                    .as_str()
                    .ok_or_else(|| format!("`exists` takes an attribute name, got `{operands}`"))?,
            ),
            other => return Err(format!("unknown filter operator `{other}`")),
        })
    }

    fn admits(&self, doc: &Map<String, Value>) -> bool {
        let present = |attr: &str| doc.get(attr).filter(|v| !v.is_null());
        match self {
            Filter::Const(b) => *b,
            Filter::And(fs) => fs.iter().all(|f| f.admits(doc)),
            Filter::Or(fs) => fs.iter().any(|f| f.admits(doc)),
            Filter::Not(f) => !f.admits(doc),
            Filter::Eq(attr, value) => present(attr) == Some(*value),
            Filter::In(attr, values) => present(attr).is_some_and(|v| values.contains(v)),
            Filter::Contains(attr, value) => present(attr)
                .and_then(Value::as_array)
                .is_some_and(|items| items.contains(value)),
            Filter::Cmp(cmp, attr, bound) => {
                present(attr)
                    .and_then(Value::as_i64)
                    .is_some_and(|v| match cmp {
                        Cmp::Lt => v < *bound,
                        Cmp::Le => v <= *bound,
                        Cmp::Gt => v > *bound,
                        Cmp::Ge => v >= *bound,
                    })
            }
            Filter::Exists(attr) => present(attr).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({
            "tenant": "acme",
            "classification": 2,
            "personal": false,
            "labels": ["pii", "internal"],
            "owner": null,
        })
    }

    #[test]
    fn filter_each_construct_admits_as_documented() {
        let cases = [
            (json!(true), true),
            (json!(false), false),
            (json!({"and": []}), true),
            (json!({"or": []}), false),
            (json!({"and": [true, {"eq": ["tenant", "acme"]}]}), true),
            (json!({"and": [true, {"eq": ["tenant", "other"]}]}), false),
            (json!({"or": [false, {"eq": ["personal", false]}]}), true),
            (json!({"not": {"eq": ["tenant", "acme"]}}), false),
            (json!({"eq": ["classification", 2]}), true),
            (json!({"eq": ["classification", "2"]}), false),
            (json!({"in": ["tenant", ["x", "acme"]]}), true),
            (json!({"in": ["tenant", []]}), false),
            (json!({"contains": ["labels", "pii"]}), true),
            (json!({"contains": ["labels", "secret"]}), false),
            (json!({"contains": ["tenant", "acme"]}), false),
            (json!({"lt": ["classification", 2]}), false),
            (json!({"le": ["classification", 2]}), true),
            (json!({"gt": ["classification", 1]}), true),
            (json!({"ge": ["classification", 3]}), false),
            (json!({"lt": ["tenant", 3]}), false),
            (json!({"exists": "tenant"}), true),
            (json!({"exists": "owner"}), false),
            (json!({"exists": "nope"}), false),
            // Atoms over missing attributes are false, their negation true.
            (json!({"eq": ["owner", "alice"]}), false),
            (json!({"not": {"eq": ["nope", 1]}}), true),
        ];
        for (filter, want) in cases {
            assert_eq!(filter_admits(&filter, &doc()), Ok(want), "{filter}");
        }
    }

    #[test]
    fn filter_malformed_is_an_error_even_behind_a_short_circuit() {
        for filter in [
            json!(null),
            json!(1),
            json!({}),
            json!({"eq": ["a", 1], "ne": ["a", 1]}),
            json!({"xor": []}),
            json!({"or": [true, {"bogus": 1}]}),
            json!({"and": {"eq": ["a", 1]}}),
            json!({"eq": ["a"]}),
            json!({"eq": [1, 1]}),
            json!({"in": ["a", "b"]}),
            json!({"lt": ["a", 1.5]}),
            json!({"exists": ["a"]}),
        ] {
            assert!(filter_admits(&filter, &doc()).is_err(), "{filter}");
            assert!(apply_filter(&filter, [(1, &doc())]).is_empty(), "{filter}");
        }
        assert!(filter_admits(&json!(true), &json!([1])).is_err());
    }

    #[test]
    fn filter_depth_is_limited() {
        let mut deep = json!(true);
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = json!({ "not": deep });
        }
        assert!(filter_admits(&deep, &doc()).unwrap_err().contains("deeper"));
        let mut ok = json!(true);
        for _ in 0..MAX_FILTER_DEPTH {
            ok = json!({ "not": ok });
        }
        assert_eq!(filter_admits(&ok, &doc()), Ok(true));
    }

    #[test]
    fn filter_apply_keeps_input_order() {
        let docs = [
            json!({"classification": 3}),
            json!({"classification": 0}),
            json!("not an object"),
            json!({"classification": 1}),
            json!({}),
        ];
        let kept = apply_filter(
            &json!({"le": ["classification", 1]}),
            docs.iter().enumerate(),
        );
        assert_eq!(kept, [1, 3]);
        let ids = ["a", "b", "c"];
        // `true` admits every object; the third candidate is not one.
        let all = apply_filter(&json!(true), ids.iter().zip(&docs));
        assert_eq!(all, [&"a", &"b"]);
    }
}
