//! The entities of a tool call's request, by tool and caller: built once, then shared by every call of
//! that caller to that tool. Building them per call (the principal's entities, a copy of the tool's,
//! their hierarchy) was about a twentieth of the broker's CPU per decision.
//!
//! What they hold depends only on the tool, the caller (agent, user, tenant, roles) and the users of
//! `entities.json`, all fixed for the engine's life: a policy reload builds a new engine, and with it a
//! new, empty cache. Bounded in entries: when full, it starts over.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use cedar_policy::{Entities, EntityUid};

use super::Caller;

/// Entries kept at most (each is a few entities: a kilobyte or two).
const MAX_ENTRIES: usize = 4096;

/// A request's principal and entities.
pub(super) type RequestEntities = Arc<(EntityUid, Entities)>;

#[derive(Default)]
pub(super) struct CallerEntities {
    by_key: RwLock<HashMap<String, RequestEntities>>,
}

impl CallerEntities {
    /// The entities for `caller` calling `tool`, built by `build` when not cached.
    pub(super) fn get_or_build(
        &self,
        tool: &str,
        caller: &Caller<'_>,
        build: impl FnOnce() -> Result<(EntityUid, Entities), String>,
    ) -> Result<RequestEntities, String> {
        let key = key(tool, caller);
        if let Some(found) = self
            .by_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(found));
        }
        let built = Arc::new(build()?);
        let mut by_key = self.by_key.write().unwrap_or_else(PoisonError::into_inner);
        if by_key.len() >= MAX_ENTRIES {
            by_key.clear();
        }
        by_key.insert(key, Arc::clone(&built));
        Ok(built)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Every part length-prefixed, so that no two different callers share a key whatever their names hold.
fn key(tool: &str, caller: &Caller<'_>) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(64);
    let mut part = |tag: char, s: &str| {
        let _ = write!(key, "{tag}{}:{s}", s.len());
    };
    part('t', tool);
    part('a', caller.agent);
    if let Some(user) = caller.user {
        part('u', user);
    }
    if let Some(tenant) = caller.tenant {
        part('n', tenant);
    }
    let mut roles = caller.roles.clone();
    roles.sort_unstable();
    roles.dedup();
    for role in roles {
        part('r', role);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller<'a>(
        agent: &'a str,
        user: Option<&'a str>,
        tenant: Option<&'a str>,
        roles: &[&'a str],
    ) -> Caller<'a> {
        Caller {
            agent,
            user,
            tenant,
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn keys_tell_every_caller_apart() {
        let keys = [
            key("t", &caller("a", None, None, &[])),
            key("t", &caller("a", Some("b"), None, &[])),
            key("t", &caller("a", None, Some("b"), &[])),
            key("t", &caller("a", None, None, &["b"])),
            key("t", &caller("ab", None, None, &[])),
            key("t", &caller("a", Some("u1:x"), None, &[])),
            key("t", &caller("a", Some("u1"), None, &["x"])),
            key("t2", &caller("a", None, None, &[])),
            key("t", &caller("a", None, None, &["agent", "admin"])),
        ];
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        // The order of roles does not matter.
        assert_eq!(
            key("t", &caller("a", None, None, &["admin", "agent"])),
            key("t", &caller("a", None, None, &["agent", "admin", "agent"]))
        );
    }
}
