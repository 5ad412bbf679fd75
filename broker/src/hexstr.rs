//! Lowercase hex of bytes, for what the decision path writes every call: ids, the arguments digest, the
//! audit chain's hash. `hex::encode` builds its string one `char` at a time through an iterator, about
//! a thousand instructions for a 32-byte hash; this takes a few per byte.

/// `bytes` as lowercase hex, as `hex::encode` writes it.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex to `out`.
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        for d in [b >> 4, b & 0x0f] {
            out.push(char::from(if d < 10 { b'0' + d } else { b'a' - 10 + d }));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn writes_what_the_hex_crate_writes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(super::encode(&bytes), hex::encode(&bytes));
            let mut out = "evt_".to_owned();
            super::push(&mut out, &bytes);
            prop_assert_eq!(out, format!("evt_{}", hex::encode(&bytes)));
        }
    }
}
