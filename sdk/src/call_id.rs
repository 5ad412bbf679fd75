//! Idempotency keys for tool calls.

use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh idempotency key: `call_` followed by 32 lowercase hex digits: 48 bits of the time in
/// milliseconds, then 80 random bits.
///
/// The time comes first so that the broker's index of remembered calls grows at its edge instead of
/// at a random page per call; 80 random bits keep keys from colliding.
///
/// Generate one per intended tool call and keep it across retries
/// ([`Client::authorize_with_call_id`](crate::Client::authorize_with_call_id)), so that the broker
/// counts the call against the session's budget once.
pub fn new_call_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut bits: [u8; 16] = rand::random();
    for (b, t) in bits.iter_mut().zip(ms.to_be_bytes().into_iter().skip(2)) {
        *b = t;
    }
    format!("call_{}", hex::encode(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_have_the_documented_shape_and_differ() {
        let a = new_call_id();
        let b = new_call_id();
        assert_ne!(a, b);
        assert_ne!(a[17..], b[17..], "the random part differs");
        let digits = a.strip_prefix("call_").unwrap_or_default();
        assert_eq!(digits.len(), 32);
        assert!(digits
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn call_ids_lead_with_the_time() {
        let a = new_call_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_call_id();
        assert!(a[..17] < b[..17], "{a} then {b}");
    }
}
