//! What the append-only audit trail keeps of a tool call's arguments: secrets replaced by
//! [`REDACTED`], and, for a DENY, no more than a bounded preview. The arguments digest is computed over
//! the real, whole arguments elsewhere, so a value can still be checked without being kept.
//!
//! A member is redacted, at any depth (nested objects, arrays of objects), when any of these holds:
//!
//! - **Its name looks secret.** The name is split into parts at `_`, `-`, `.`, spaces and other
//!   punctuation, at camelCase and acronym boundaries (`apiKey`, `APIKey`) and between letters and digits,
//!   and the parts are compared case-insensitively: a part equal to one of [`SECRET_PARTS`] (`token`,
//!   `password`, `key`, `auth`, `cookie`, `otp`, `pin`, `ssn`, ...), or ending in one of
//!   [`SECRET_ENDINGS`] (glued names: `accesstoken`, `clientsecret`, `dbpassword`, `privatekey`), or
//!   containing one of [`SECRET_INSIDE`] (`passwordhash`). Parts are whole words, so `monkey`,
//!   `keyboard`, `author` and `tokenizer` stay readable. A false positive only hides a value; the
//!   digest still covers it.
//! - **It is a configured name** (`audit.redact_fields`): the configured name's parts appear, in order,
//!   among the member name's parts (`card_number` also covers `cardNumber` and `credit_card_number`).
//! - **The tool's schema marks it `@sensitive`** ([`Sensitive`], read from the Cedar schema's attribute
//!   annotations by the policy catalogue).
//! - **It is the `value` of a name/value pair** whose `name`, `key` or `header` is a secret name, as
//!   in `{"name": "Authorization", "value": "Bearer ..."}`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What replaces a redacted argument value.
pub const REDACTED: &str = "[REDACTED]";

/// The one member of what a DENY's event keeps when its redacted arguments were longer than the bound:
/// `{"[TRUNCATED]": {"bytes": <length of the whole redacted JSON>, "preview": "<its first bytes>"}}`.
pub const TRUNCATED: &str = "[TRUNCATED]";

/// A name part equal to one of these (case-insensitive) makes the member secret.
pub const SECRET_PARTS: &[&str] = &[
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "pwd",
    "passphrase",
    "passcode",
    "credential",
    "credentials",
    "creds",
    "key",
    "keys",
    "apikey",
    "privkey",
    "auth",
    "oauth",
    "authorization",
    "bearer",
    "jwt",
    "cookie",
    "cookies",
    "otp",
    "totp",
    "pin",
    "ssn",
    "cvv",
    "cvc",
];

/// A name part ending in one of these makes the member secret: words glued without a separator.
pub const SECRET_ENDINGS: &[&str] = &[
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "credentials",
    "cookie",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "signingkey",
    "encryptionkey",
    "sshkey",
    "masterkey",
];

/// A name part containing one of these makes the member secret (no harmless word contains them).
pub const SECRET_INSIDE: &[&str] = &["password", "passwd", "passphrase", "credential"];

/// Members that name the other member of a name/value pair.
const PAIR_NAMES: &[&str] = &["name", "key", "header"];

/// The fields of a tool's arguments that its schema marks `@sensitive`, as a tree following the
/// arguments' shape (a set's elements share their set's tree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sensitive {
    /// The whole value is sensitive.
    pub all: bool,
    /// Members with something sensitive in or at them.
    pub fields: BTreeMap<String, Sensitive>,
}

impl Sensitive {
    /// Marks nothing.
    pub fn is_empty(&self) -> bool {
        !self.all && self.fields.is_empty()
    }

    /// Whole values, as `a.b` paths (a set's elements are not a step): for messages and tests.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect("", &mut out);
        out
    }

    fn collect(&self, prefix: &str, out: &mut Vec<String>) {
        if self.all {
            out.push(prefix.to_owned());
            return;
        }
        for (name, inner) in &self.fields {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            inner.collect(&path, out);
        }
    }
}

/// Redacts arguments by name (built-in parts and configured names) and by schema annotation.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Each configured name's parts, lowercased; names without a part are left out.
    configured: Vec<Vec<String>>,
}

impl Redactor {
    /// A redactor that also redacts `configured` names (`audit.redact_fields`).
    pub fn new(configured: &[String]) -> Self {
        Self {
            configured: configured
                .iter()
                .map(|name| parts(name).map(str::to_ascii_lowercase).collect::<Vec<_>>())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Whether a member named `name` is redacted wherever it appears. Runs for every member of every
    /// call's arguments, so the name is split once, onto the stack.
    pub fn is_secret_name(&self, name: &str) -> bool {
        let list = PartList::of(name);
        let parts = list.as_slice();
        parts.iter().any(|p| secret_part(p))
            || self.configured.iter().any(|run| {
                parts.windows(run.len()).any(|w| {
                    w.iter()
                        .zip(run)
                        .all(|(part, want)| part.eq_ignore_ascii_case(want))
                })
            })
    }

    /// A copy of `args` with every secret member's value replaced by [`REDACTED`]; `sensitive` is what the
    /// tool's schema marks (none for an unknown tool).
    pub fn redact(&self, args: &Value, sensitive: Option<&Sensitive>) -> Value {
        match args {
            _ if sensitive.is_some_and(|s| s.all) => Value::String(REDACTED.to_owned()),
            Value::Object(map) => Value::Object(self.redact_object(map, sensitive)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact(v, sensitive)).collect())
            }
            other => other.clone(),
        }
    }

    fn redact_object(
        &self,
        map: &Map<String, Value>,
        sensitive: Option<&Sensitive>,
    ) -> Map<String, Value> {
        let pair_is_secret = PAIR_NAMES.iter().any(|n| {
            map.get(*n)
                .and_then(Value::as_str)
                .is_some_and(|name| self.is_secret_name(name))
        });
        map.iter()
            .map(|(k, v)| {
                let marked = sensitive.and_then(|s| s.fields.get(k));
                let secret = marked.is_some_and(|m| m.all)
                    || (pair_is_secret && k == "value")
                    || self.is_secret_name(k);
                let v = if secret {
                    Value::String(REDACTED.to_owned())
                } else {
                    self.redact(v, marked)
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// `redacted` (JSON text) as a DENY's event keeps it: whole when at most `max_bytes` long, else a
/// [`TRUNCATED`] object holding its length and its first bytes, at most `max_bytes` of JSON in all (it
/// only cuts what was already redacted).
pub fn bounded(redacted: String, max_bytes: usize) -> String {
    if redacted.len() <= max_bytes {
        return redacted;
    }
    let bytes = redacted.len();
    // The wrapper's own length with an empty preview, then as much preview as fits once escaped.
    let empty = wrapper(bytes, "");
    let mut room = max_bytes.saturating_sub(empty.len());
    let mut end = 0;
    for (i, c) in redacted.char_indices() {
        let cost = escaped_len(c);
        if cost > room {
            break;
        }
        room -= cost;
        end = i + c.len_utf8();
    }
    wrapper(bytes, redacted.get(..end).unwrap_or_default())
}

fn wrapper(bytes: usize, preview: &str) -> String {
    let mut outer = Map::new();
    outer.insert(
        TRUNCATED.to_owned(),
        serde_json::json!({ "bytes": bytes, "preview": preview }),
    );
    Value::Object(outer).to_string()
}

/// The length of `c` inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn secret_part(part: &str) -> bool {
    // The shortest pattern has three letters (`pin`, `key`, `otp`).
    if part.len() < 3 {
        return false;
    }
    SECRET_PARTS.iter().any(|s| part.eq_ignore_ascii_case(s))
        || SECRET_ENDINGS
            .iter()
            .any(|s| ends_with_ignore_case(part, s))
        || SECRET_INSIDE.iter().any(|s| contains_ignore_case(part, s))
}

fn ends_with_ignore_case(part: &str, suffix: &str) -> bool {
    part.len() >= suffix.len()
        && part
            .as_bytes()
            .get(part.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
}

fn contains_ignore_case(part: &str, needle: &str) -> bool {
    part.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Parts kept on the stack; a name with more spills into a `Vec`.
const INLINE_PARTS: usize = 8;

/// A name's parts, split once.
struct PartList<'a> {
    inline: [&'a str; INLINE_PARTS],
    len: usize,
    spilled: Vec<&'a str>,
}

impl<'a> PartList<'a> {
    fn of(name: &'a str) -> Self {
        let mut list = PartList {
            inline: [""; INLINE_PARTS],
            len: 0,
            spilled: Vec::new(),
        };
        for part in parts(name) {
            if !list.spilled.is_empty() {
                list.spilled.push(part);
            } else if let Some(slot) = list.inline.get_mut(list.len) {
                *slot = part;
                list.len += 1;
            } else {
                list.spilled.extend_from_slice(&list.inline);
                list.spilled.push(part);
            }
        }
        list
    }

    fn as_slice(&self) -> &[&'a str] {
        if self.spilled.is_empty() {
            self.inline.get(..self.len).unwrap_or_default()
        } else {
            &self.spilled
        }
    }
}

/// The parts of a member name (see the module comment), as slices of it.
pub fn parts(name: &str) -> Parts<'_> {
    Parts { name, at: 0 }
}

#[derive(Clone)]
pub struct Parts<'a> {
    name: &'a str,
    at: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Upper,
    Lower,
    Digit,
}

fn class(c: char) -> Option<Class> {
    if c.is_uppercase() {
        Some(Class::Upper)
    } else if c.is_numeric() {
        Some(Class::Digit)
    } else if c.is_alphanumeric() {
        Some(Class::Lower)
    } else {
        None
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.name.get(self.at..)?;
        // Skip separators.
        let skip = rest
            .char_indices()
            .find(|(_, c)| class(*c).is_some())
            .map(|(i, _)| i)?;
        let start = self.at + skip;
        let word = self.name.get(start..)?;
        let mut chars = word.char_indices().peekable();
        let mut prev: Option<Class> = None;
        let mut end = word.len();
        while let Some((i, c)) = chars.next() {
            let Some(now) = class(c) else {
                end = i;
                break;
            };
            let next = chars.peek().and_then(|(_, n)| class(*n));
            let boundary = match (prev, now) {
                (None, _) => false,
                (Some(Class::Lower), Class::Upper) => true,
                (Some(Class::Digit), Class::Upper | Class::Lower) => true,
                (Some(Class::Upper | Class::Lower), Class::Digit) => true,
                // The last capital of an acronym starts the next word: `APIKey` -> `API`, `Key`.
                (Some(Class::Upper), Class::Upper) => next == Some(Class::Lower),
                _ => false,
            };
            if boundary {
                end = i;
                break;
            }
            prev = Some(now);
        }
        self.at = start + end;
        word.get(..end)
    }
}
