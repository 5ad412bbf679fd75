//! Identifiers the broker mints: a type prefix and 128 bits from the OS RNG, so they cannot be guessed.

use rand::RngCore;

fn mint(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

pub fn session_id() -> String {
    mint("ses_")
}

pub fn decision_id() -> String {
    mint("dec_")
}

pub fn event_id() -> String {
    mint("evt_")
}

pub fn approval_id() -> String {
    mint("apr_")
}

pub fn kill_switch_id() -> String {
    mint("ksw_")
}

/// True when `id` has the shape of an id minted with `prefix` (prefix + 32 lowercase hex digits).
pub fn is_well_formed(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_well_formed() {
        let a = session_id();
        let b = session_id();
        assert_ne!(a, b);
        assert!(is_well_formed(&a, "ses_"), "{a}");
        assert!(is_well_formed(&decision_id(), "dec_"));
        assert!(!is_well_formed("ses_123", "ses_"));
        assert!(!is_well_formed(&a.to_uppercase(), "ses_"));
        assert!(!is_well_formed(&a, "dec_"));
    }
}
