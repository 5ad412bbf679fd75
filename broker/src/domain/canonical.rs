//! The canonical JSON the hash chain and the arguments digest are computed over, written without
//! `serde_jcs`'s per-member buffers.
//!
//! The chain has always hashed `serde_jcs` 0.1 output, so this must stay byte for byte the same: members
//! sorted by their key as serialized (quotes and escapes included), strings escaped as `serde_json` does,
//! integers in decimal. Floats (written by `serde_jcs` in ECMAScript form) and deep nesting are not
//! handled here: [`value_to_vec`] then returns `None` and the caller uses `serde_jcs`. Events are written
//! by [`hashed_event`], member by member. `canonical_tests` checks both against `serde_jcs` on random
//! events and random tool arguments.

use serde::Serialize;
use serde_json::Value;

use super::audit::EventBody;
use super::decision::Reason;

/// Nesting beyond which [`value_to_vec`] leaves the value to `serde_jcs` (audit events nest three deep).
const MAX_DEPTH: usize = 16;

/// A JSON value as `serde_jcs` 0.1 would write it, or `None` where this writer does not apply.
pub fn value_to_vec(value: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(1024);
    write(value, &mut out, 0).then_some(out)
}

fn write(value: &Value, out: &mut Vec<u8>, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
            } else {
                return false;
            }
        }
        Value::String(s) => {
            if !string(out, s) {
                return false;
            }
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write(item, out, depth + 1) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut keyed: Vec<(Vec<u8>, &Value)> = Vec::with_capacity(members.len());
            for (k, v) in members {
                match serde_json::to_vec(k) {
                    Ok(key) => keyed.push((key, v)),
                    Err(_) => return false,
                }
            }
            keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (key, v)) in keyed.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                out.push(b':');
                if !write(v, out, depth + 1) {
                    return false;
                }
            }
            out.push(b'}');
        }
    }
    true
}

/// What the chain hashes for an event (`audit::Hashed`: `seq`, `prev_hash` and the body's members), written
/// member by member in sorted key order, with no `Value` tree in between: the audit writer hashes every
/// event of a batch in its one task, and building the tree was most of that. `canonical_tests` checks the
/// bytes against `serde_jcs` on random events; the destructuring below is exhaustive, so a new field does
/// not compile until it is written here.
pub fn hashed_event(seq: i64, prev_hash: &str, body: &EventBody) -> Option<Vec<u8>> {
    let EventBody {
        event_id,
        time,
        kind,
        agent,
        user,
        session_id,
        decision_id,
        tool,
        call_id,
        outcome,
        reasons,
        policy_version,
        arguments_digest,
        arguments_redacted,
        detail,
    } = body;
    let mut w = Members::new(512 + arguments_redacted.as_deref().map_or(0, str::len));
    // Sorted by key: serde_jcs sorts members by their serialized keys, and these are plain ASCII.
    w.member_str("agent", agent)?;
    w.member_opt_str("arguments_digest", arguments_digest.as_deref())?;
    w.member_opt_str("arguments_redacted", arguments_redacted.as_deref())?;
    w.member_opt_str("call_id", call_id.as_deref())?;
    w.member_opt_str("decision_id", decision_id.as_deref())?;
    if detail.is_some() {
        w.member_opt_str("detail", detail.as_deref())?;
    }
    w.member_str("event_id", event_id)?;
    w.member("kind", kind)?;
    w.member("outcome", outcome)?;
    w.member_opt_str("policy_version", policy_version.as_deref())?;
    w.member_str("prev_hash", prev_hash)?;
    w.key("reasons");
    w.out.push(b'[');
    for (i, reason) in reasons.iter().enumerate() {
        if i > 0 {
            w.out.push(b',');
        }
        reason_members(&mut w.out, reason)?;
    }
    w.out.push(b']');
    w.member("seq", &seq)?;
    w.member_opt_str("session_id", session_id.as_deref())?;
    w.member("time", time)?;
    w.member_opt_str("tool", tool.as_deref())?;
    w.member_opt_str("user", user.as_deref())?;
    Some(w.finish())
}

fn reason_members(out: &mut Vec<u8>, reason: &Reason) -> Option<()> {
    let Reason {
        code,
        policy_id,
        message,
        kill_switch_id,
    } = reason;
    let mut w = Members {
        out: std::mem::take(out),
        first: true,
    };
    w.out.push(b'{');
    w.member("code", code)?;
    if kill_switch_id.is_some() {
        w.member_opt_str("kill_switch_id", kill_switch_id.as_deref())?;
    }
    w.member_str("message", message)?;
    if policy_id.is_some() {
        w.member_opt_str("policy_id", policy_id.as_deref())?;
    }
    *out = w.finish();
    Some(())
}

/// An object's members, written in the order given (the caller's: sorted).
struct Members {
    out: Vec<u8>,
    first: bool,
}

impl Members {
    fn new(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        Self { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// Integers and unit enums: serde_json writes them as serde_jcs does.
    fn member<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Option<()> {
        self.key(key);
        serde_json::to_writer(&mut self.out, value).ok()
    }

    fn member_str(&mut self, key: &str, value: &str) -> Option<()> {
        self.key(key);
        string(&mut self.out, value).then_some(())
    }

    fn member_opt_str(&mut self, key: &str, value: Option<&str>) -> Option<()> {
        match value {
            Some(v) => self.member_str(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
                Some(())
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// `s` as a JSON string, escaped exactly as serde_json escapes (and serde_jcs, which uses it): only `"`,
/// `\` and control characters below U+0020. Most strings here have none, and are copied as they are.
fn string(out: &mut Vec<u8>, s: &str) -> bool {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        true
    } else {
        serde_json::to_writer(&mut *out, s).is_ok()
    }
}
