//! Identifiers the broker mints: a type prefix and 32 lowercase hex digits from a CSPRNG (the thread's
//! ChaCha generator, seeded and reseeded from the OS: one `getrandom` call per id cost a syscall on the
//! decision path), so they cannot be guessed.
//!
//! Event ids lead with the time instead: 48 bits of milliseconds, then 80 random bits. Their unique index
//! then grows at its right edge; with 128 random bits every batch dirtied a random leaf page per event,
//! and the write volume grew with the trail.

use rand::RngCore;

fn mint(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    crate::hexstr::push(&mut id, &bytes);
    id
}

/// `prefix` + 12 hex digits of `unix_ms` (48 bits) + 20 random hex digits (80 bits).
fn mint_ordered(prefix: &str, unix_ms: i64) -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let ms = u64::try_from(unix_ms).unwrap_or(0);
    for (b, t) in bytes.iter_mut().zip(ms.to_be_bytes().into_iter().skip(2)) {
        *b = t;
    }
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    crate::hexstr::push(&mut id, &bytes);
    id
}

pub fn session_id() -> String {
    mint("ses_")
}

pub fn decision_id() -> String {
    mint("dec_")
}

/// An event id for an event at `now` (microseconds since the epoch): time-ordered, see the module doc.
pub fn event_id(now: crate::clock::Micros) -> String {
    mint_ordered("evt_", now.div_euclid(1000))
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

    #[test]
    fn event_ids_are_well_formed_and_ordered_by_time() {
        let early = event_id(1_700_000_000_000_000);
        let late = event_id(1_700_000_000_001_000);
        assert!(is_well_formed(&early, "evt_"), "{early}");
        assert!(early < late, "{early} !< {late}");
        assert_eq!(&early[4..16], "018bcfe56800", "milliseconds, big-endian");
        assert_ne!(
            event_id(0)[16..],
            event_id(0)[16..],
            "80 random bits follow"
        );
        assert!(
            is_well_formed(&event_id(-5), "evt_"),
            "before the epoch: zero time"
        );
    }
}
