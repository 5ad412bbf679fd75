//! Sessions kept in memory for the decision path, so deciding a call does not wait on a database read.
//!
//! What is cached can be trusted for an ALLOW because the writer checks it again under the chain lock:
//! - fixed at opening (owner, scopes, expiry, budget, purpose, collections): never change;
//! - closure and budget: the writer refuses an ALLOW of a closed, expired or spent session
//!   (`Session::refusal` on the row it reads in the commit's transaction);
//! - taint labels: they only accumulate, so the count seen when deciding names the set; an ALLOW made on
//!   fewer labels than the session has at commit is not recorded (`Recorded::Stale`) and is decided again
//!   on a fresh read.
//!
//! What may lag is what policies see of `context.session.calls` when other brokers spend the same session
//! (this broker counts its own ALLOWs), and the reason of a DENY. `ttl` bounds both; zero turns the cache off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::session::Session;

/// Past this many sessions, expired entries are dropped, and if that frees nothing, all of them.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    session: Arc<Session>,
    fetched: Instant,
}

pub(super) struct SessionCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl SessionCache {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The cached session, if it was read less than `ttl` ago.
    pub(super) fn get(&self, id: &str) -> Option<Arc<Session>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(id)
            .filter(|e| e.fetched.elapsed() < self.ttl)
            .map(|e| Arc::clone(&e.session))
    }

    /// Keeps a session just read from the store.
    pub(super) fn put(&self, session: Arc<Session>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&session.id) {
            let ttl = self.ttl;
            entries.retain(|_, e| e.fetched.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            session.id.clone(),
            Entry {
                session,
                fetched: Instant::now(),
            },
        );
    }

    /// Counts one tool call this broker committed, so policies reading `context.session.calls` keep up.
    pub(super) fn spent(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(id) {
            let mut s = Session::clone(&e.session);
            s.tool_calls_used = s.tool_calls_used.saturating_add(1);
            e.session = Arc::new(s);
        }
    }

    /// Forgets a session this broker changed (closed, labelled) or found changed by another broker.
    pub(super) fn forget(&self, id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(crate::domain::session::fixture(id, 5))
    }

    #[test]
    fn keeps_counts_and_forgets() {
        let cache = SessionCache::new(Duration::from_secs(60));
        assert!(cache.get("ses_1").is_none());
        cache.put(session("ses_1"));
        cache.spent("ses_1");
        cache.spent("ses_1");
        assert_eq!(cache.get("ses_1").map(|s| s.tool_calls_used), Some(2));
        cache.forget("ses_1");
        assert!(cache.get("ses_1").is_none());
        cache.spent("ses_1");
        assert!(
            cache.get("ses_1").is_none(),
            "counting does not create entries"
        );
    }

    #[test]
    fn entries_expire_and_zero_ttl_caches_nothing() {
        let cache = SessionCache::new(Duration::from_millis(20));
        cache.put(session("ses_1"));
        assert!(cache.get("ses_1").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.get("ses_1").is_none());

        let off = SessionCache::new(Duration::ZERO);
        off.put(session("ses_1"));
        assert!(off.get("ses_1").is_none());
    }

    #[test]
    fn a_full_cache_makes_room() {
        let cache = SessionCache::new(Duration::from_secs(60));
        for i in 0..MAX_ENTRIES {
            cache.put(session(&format!("ses_{i}")));
        }
        cache.put(session("ses_new"));
        assert!(cache.get("ses_new").is_some());
        assert!(
            cache
                .entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
                <= MAX_ENTRIES
        );
    }
}
