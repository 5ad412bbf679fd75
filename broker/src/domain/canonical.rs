//! The canonical JSON the hash chain and the arguments digest are computed over, written without
//! `serde_jcs`'s per-member buffers.
//!
//! The chain has always hashed `serde_jcs` 0.1 output, so this must stay byte for byte the same: members
//! sorted by their key as serialized (quotes and escapes included), strings escaped as `serde_json` does,
//! integers in decimal. Floats (written by `serde_jcs` in ECMAScript form) and deep nesting are not
//! handled here: [`to_vec`] then returns `None` and the caller uses `serde_jcs`. `canonical_tests` checks
//! the two agree on random events and random tool arguments.

use serde::Serialize;
use serde_json::Value;

/// Nesting beyond which [`to_vec`] leaves the value to `serde_jcs` (audit events nest three deep).
const MAX_DEPTH: usize = 16;

/// `value` as `serde_jcs` 0.1 would write it, or `None` where this writer does not apply.
pub fn to_vec<T: Serialize>(value: &T) -> Option<Vec<u8>> {
    value_to_vec(&serde_json::to_value(value).ok()?)
}

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
            if serde_json::to_writer(&mut *out, s).is_err() {
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
