//! Tokens already verified, so that an agent's every call does not check the same signature and parse
//! the same claims again (about a twentieth of the broker's CPU per decision under load).
//!
//! An entry is keyed by the exact token text and only ever answers for it while:
//! - the time is within the token's own window, `nbf <= now < exp`: stricter than the verifier, which
//!   allows the clock leeway on both sides; a token inside the leeway is simply verified again;
//! - the keys it was verified with are still the broker's: every `jwks_url` refresh starts a new key
//!   generation, and entries of an older one are not used (a key dropped by the identity provider
//!   stops verifying its tokens at once, cached or not).
//!
//! Failures are never cached. The cache is bounded in bytes of token text: when a token would not fit,
//! expired entries are dropped first, then everything.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use super::Principal;

/// Bytes of token text the cache holds at most (a token is about 0.5 to 1 KB: thousands of callers).
pub(super) const MAX_CACHED_TOKEN_BYTES: usize = 4 << 20;

struct Entry {
    principal: Principal,
    not_before: Option<i64>,
    generation: u64,
}

pub(super) struct TokenCache {
    entries: RwLock<Entries>,
    max_bytes: usize,
}

#[derive(Default)]
struct Entries {
    by_token: HashMap<Box<str>, Entry>,
    bytes: usize,
}

impl TokenCache {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            entries: RwLock::new(Entries::default()),
            max_bytes,
        }
    }

    /// The principal of `token`, verified under key `generation`, when it is valid at `now` (unix
    /// seconds).
    pub(super) fn get(&self, token: &str, generation: u64, now: i64) -> Option<Principal> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.by_token.get(token)?;
        let valid = entry.generation == generation
            && entry.not_before.is_none_or(|nbf| nbf <= now)
            && now < entry.principal.expires_at;
        valid.then(|| entry.principal.clone())
    }

    /// Remembers a token that was just verified with the keys of `generation`.
    pub(super) fn put(
        &self,
        token: &str,
        generation: u64,
        not_before: Option<i64>,
        principal: &Principal,
        now: i64,
    ) {
        if token.len() > self.max_bytes {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.by_token.contains_key(token) {
            return;
        }
        if entries.bytes + token.len() > self.max_bytes {
            entries
                .by_token
                .retain(|_, e| e.generation == generation && now < e.principal.expires_at);
            entries.bytes = entries.by_token.keys().map(|t| t.len()).sum();
            if entries.bytes + token.len() > self.max_bytes {
                entries.by_token.clear();
                entries.bytes = 0;
            }
        }
        entries.bytes += token.len();
        entries.by_token.insert(
            token.into(),
            Entry {
                principal: principal.clone(),
                not_before,
                generation,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_token
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, expires_at: i64) -> Principal {
        Principal {
            subject: subject.to_owned(),
            user: Some("alice".to_owned()),
            tenant: None,
            person: Some(subject.to_owned()),
            groups: Default::default(),
            roles: Default::default(),
            token_id: None,
            expires_at,
        }
    }

    #[test]
    fn answers_only_within_the_tokens_own_window() {
        let cache = TokenCache::new(MAX_CACHED_TOKEN_BYTES);
        cache.put("t1", 0, Some(100), &principal("a", 200), 100);
        assert_eq!(cache.get("t1", 0, 99), None, "before nbf");
        assert_eq!(
            cache.get("t1", 0, 100).map(|p| p.subject),
            Some("a".to_owned())
        );
        assert_eq!(
            cache.get("t1", 0, 199).map(|p| p.subject),
            Some("a".to_owned())
        );
        assert_eq!(cache.get("t1", 0, 200), None, "at exp");
        assert_eq!(cache.get("t2", 0, 150), None, "another token");
        assert_eq!(
            cache.get("t1x", 0, 150),
            None,
            "a token extending a cached one"
        );
        assert_eq!(cache.get("t", 0, 150), None, "a prefix of a cached token");
    }

    #[test]
    fn entries_of_an_older_key_generation_are_not_used() {
        let cache = TokenCache::new(MAX_CACHED_TOKEN_BYTES);
        cache.put("t1", 3, None, &principal("a", 200), 100);
        assert!(cache.get("t1", 3, 150).is_some());
        assert_eq!(cache.get("t1", 4, 150), None);
    }

    #[test]
    fn stays_within_its_bound() {
        let cache = TokenCache::new(10);
        cache.put("aaaa", 0, None, &principal("a", 200), 100);
        cache.put("bbbb", 0, None, &principal("b", 120), 100);
        assert_eq!(cache.len(), 2);
        // No room: the expired entry goes first.
        cache.put("cccc", 0, None, &principal("c", 200), 150);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("aaaa", 0, 150).is_some());
        assert!(cache.get("cccc", 0, 150).is_some());
        // Still no room once nothing has expired: everything goes.
        cache.put("dddd", 0, None, &principal("d", 200), 150);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("dddd", 0, 150).is_some());
        // Larger than the whole cache: not kept.
        cache.put("eeeeeeeeeeee", 0, None, &principal("e", 200), 150);
        assert!(cache.get("eeeeeeeeeeee", 0, 150).is_none());
        assert_eq!(cache.len(), 1);
    }
}
