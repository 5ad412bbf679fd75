//! Idempotency keys for tool calls.

/// A fresh idempotency key: `call_` followed by 128 random bits as 32 lowercase hex digits.
///
/// Generate one per intended tool call and keep it across retries
/// ([`Client::authorize_with_call_id`](crate::Client::authorize_with_call_id)), so that the broker
/// counts the call against the session's budget once.
pub fn new_call_id() -> String {
    let bits: [u8; 16] = rand::random();
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
        let digits = a.strip_prefix("call_").unwrap_or_default();
        assert_eq!(digits.len(), 32);
        assert!(digits
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
