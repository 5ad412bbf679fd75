//! Strict JSON for text that comes from outside (tool arguments, document metadata, JWT headers and
//! claims): an object that names a key twice is refused, and so is a key holding a NUL character.
//!
//! `serde_json` keeps the last of two equal keys; other parsers keep the first or fail. If the broker
//! read `{"amount": 5, "amount": 5000000}` one way and the tool that runs read it the other, a policy
//! on `amount` would decide about a call that never happens. Keys are compared after unescaping, so
//! `"s\u0075b"` and `"sub"` are the same key. Nesting is bounded by `serde_json`'s recursion limit (128).
//!
//! A key with a NUL (`"a\u0000b"`) would reach reasons and the audit trail as a name, where no database
//! text column stores it; refused here, with its path, so callers answer INVALID_ARGUMENT instead of
//! failing once the store sees it. A NUL inside a string *value* is data: it stays escaped (`\u0000`)
//! in every JSON text the broker writes.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest key text echoed back in an error.
const MAX_ECHO_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `path` names the key that appears twice, from the top: `meta.to`, `items[2].id`.
    #[error("duplicate key `{path}`")]
    DuplicateKey { path: String },
    /// `path` names the key holding a NUL character (shown as `?`).
    #[error("key `{path}` contains a NUL character")]
    NulInKey { path: String },
    /// Not JSON at all (syntax, bad escapes such as a lone surrogate, numbers out of range, too deep).
    #[error("not valid JSON: {0}")]
    Syntax(String),
}

/// Parses `text` into a [`Value`], refusing duplicate keys and keys with a NUL at any depth.
pub fn from_str(text: &str) -> Result<Value, Error> {
    from_slice(text.as_bytes())
}

/// Like [`from_str`], from bytes (which must be UTF-8).
///
/// A bad key is reported only for text that is otherwise valid JSON (then the first bad key in
/// document order); anything else is a syntax error, as `serde_json` would report it.
pub fn from_slice(bytes: &[u8]) -> Result<Value, Error> {
    let state = RefCell::new(State::default());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue { state: &state }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, state.into_inner().bad_key) {
        (Err(e), _) => Err(Error::Syntax(e.to_string())),
        (Ok(_), Some(bad)) => Err(bad),
        (Ok(v), None) => Ok(v),
    }
}

/// Where the parser is, and the first bad key seen (a duplicate, or one with a NUL).
#[derive(Debug, Default)]
struct State {
    path: Vec<Segment>,
    bad_key: Option<Error>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `segments` as a path: `items[2].id`, keys sanitized.
fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&sanitize(k));
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Makes untrusted key text safe to echo: bounded, no control characters or backticks.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| if c.is_control() || c == '`' { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Builds a [`Value`] like `serde_json` does, noting the first duplicate key instead of overwriting.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    state: &'a RefCell<State>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite number from text, but say so rather than assume it.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            self.state
                .borrow_mut()
                .path
                .push(Segment::Index(items.len()));
            let next = seq.next_element_seed(self)?;
            self.state.borrow_mut().path.pop();
            match next {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let mut state = self.state.borrow_mut();
            state.path.push(Segment::Key(key.clone()));
            if state.bad_key.is_none() {
                if out.contains_key(&key) {
                    let path = render(&state.path);
                    state.bad_key = Some(Error::DuplicateKey { path });
                } else if key.contains('\0') {
                    let path = render(&state.path);
                    state.bad_key = Some(Error::NulInKey { path });
                }
            }
            drop(state);
            let value = map.next_value_seed(self)?;
            self.state.borrow_mut().path.pop();
            // The parse goes on to the end, so that bad JSON after a duplicate is a syntax error;
            // the value is never used (the duplicate fails the whole document).
            out.entry(key).or_insert(value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_like_serde_json_when_keys_are_unique() {
        let text = r#"{"a": [1, -2, 3.5, 18446744073709551615, "x", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(from_str("7").unwrap(), json!(7));
        assert_eq!(from_str(" [ ] ").unwrap(), json!([]));
    }

    #[test]
    fn a_duplicate_key_is_refused_with_its_path() {
        let cases = [
            (r#"{"sub": "a", "sub": "admin"}"#, "sub"),
            (r#"{"a": 1, "b": {"x": 1, "x": 2}}"#, "b.x"),
            (
                r#"{"items": [{"id": 1}, {"id": 2, "id": 3}]}"#,
                "items[1].id",
            ),
            (r#"[[{"k": 0, "k": 0}]]"#, "[0][0].k"),
            // The same key after unescaping.
            (r#"{"sub": "a", "s\u0075b": "admin"}"#, "sub"),
            (r#"{"a": 1, "b": 2, "a": 1}"#, "a"),
        ];
        for (text, path) in cases {
            assert_eq!(
                from_str(text),
                Err(Error::DuplicateKey {
                    path: path.to_owned()
                }),
                "{text}"
            );
            // serde_json alone keeps the later value silently: this is what we guard against.
            assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
        }
        let err = from_str(r#"{"amount": 1, "amount": 2}"#).unwrap_err();
        assert_eq!(err.to_string(), "duplicate key `amount`");
    }

    #[test]
    fn keys_in_errors_are_sanitized_and_bounded() {
        let long = "k".repeat(500);
        let text = format!(r#"{{"{long}": 1, "{long}": 2}}"#);
        let Err(Error::DuplicateKey { path }) = from_str(&text) else {
            panic!("expected a duplicate")
        };
        assert_eq!(path.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(path.ends_with('…'));
        let Err(Error::DuplicateKey { path }) = from_str(r#"{"a\n`b": 1, "a\n`b": 2}"#) else {
            panic!("expected a duplicate")
        };
        assert_eq!(path, "a??b");
    }

    #[test]
    fn a_key_with_a_nul_is_refused_with_its_path() {
        let cases = [
            (r#"{"a\u0000b": 1}"#, "a?b"),
            (r#"{"\u0000": 1}"#, "?"),
            (r#"{"a": {"b": [0, {"\u0000c": null}]}}"#, "a.b[1].?c"),
            (r#"[{"ok": 1}, {"x\u0000": 2}]"#, "[1].x?"),
        ];
        for (text, path) in cases {
            assert_eq!(
                from_str(text),
                Err(Error::NulInKey {
                    path: path.to_owned()
                }),
                "{text}"
            );
        }
        assert_eq!(
            from_str(r#"{"a\u0000": 1}"#).unwrap_err().to_string(),
            "key `a?` contains a NUL character"
        );
        // A NUL in a value is data.
        assert_eq!(
            from_str(r#"{"a": "x\u0000y"}"#).unwrap(),
            json!({"a": "x\u{0}y"})
        );
        // Text that is not JSON stays a syntax error; the first bad key in document order is named.
        assert!(matches!(
            from_str(r#"{"a\u0000": }"#),
            Err(Error::Syntax(_))
        ));
        assert_eq!(
            from_str(r#"{"a\u0000": 1, "b": 1, "b": 2}"#),
            Err(Error::NulInKey {
                path: "a?".to_owned()
            })
        );
    }

    #[test]
    fn a_duplicate_in_text_that_is_not_json_is_a_syntax_error() {
        // Found by the `args` fuzz target: the duplicate was reported before the missing `:`.
        let text = "{\"query\": \"q\", \"max_results\": 500, \"max_results\"\u{1a} 5}";
        assert!(serde_json::from_str::<Value>(text).is_err());
        assert!(
            matches!(from_str(text), Err(Error::Syntax(_))),
            "{:?}",
            from_str(text)
        );
        // The first duplicate in document order is the one named.
        assert_eq!(
            from_str(r#"{"a": {"x": 1, "x": 2}, "b": 1, "b": 2}"#),
            Err(Error::DuplicateKey {
                path: "a.x".to_owned()
            })
        );
    }

    #[test]
    fn bad_json_is_a_syntax_error() {
        for text in [
            "",
            "{",
            r#"{"a": 1} x"#,
            r#"{"a": "\ud800"}"#,
            r#"{"a": "\udc00\ud800"}"#,
            r#"{"a": 1e400}"#,
            r#"{"a": NaN}"#,
            r#"{"a": Infinity}"#,
            r#"{a: 1}"#,
            "{\"a\": 1,}",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(from_str(text), Err(Error::Syntax(_))),
                "{text:?}: {:?}",
                from_str(text)
            );
        }
        assert!(matches!(
            from_slice(b"{\"a\": \"\xff\"}"),
            Err(Error::Syntax(_))
        ));
    }

    #[test]
    fn nesting_is_bounded_without_overflowing_the_stack() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = from_str(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(from_str(&ok).is_ok());
    }
}
