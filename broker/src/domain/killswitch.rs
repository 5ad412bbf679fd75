//! Kill switches: an admin stops everything, a tenant, an agent, a user, a tool or one session at once.
//! Decisions read a [`Snapshot`] that a refresher keeps current; a snapshot too old to trust blocks
//! everything (fail closed).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::session::ToolScope;
use crate::clock::Micros;

pub const MAX_TARGET_LEN: usize = 256;
pub const MAX_REASON_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    Global,
    Tenant,
    Agent,
    User,
    Tool,
    Session,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "GLOBAL",
            Scope::Tenant => "TENANT",
            Scope::Agent => "AGENT",
            Scope::User => "USER",
            Scope::Tool => "TOOL",
            Scope::Session => "SESSION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "GLOBAL" => Scope::Global,
            "TENANT" => Scope::Tenant,
            "AGENT" => Scope::Agent,
            "USER" => Scope::User,
            "TOOL" => Scope::Tool,
            "SESSION" => Scope::Session,
            _ => return None,
        })
    }

    /// Checks a target for this scope; the message names what is wrong.
    pub fn validate_target(self, target: &str) -> Result<(), String> {
        match self {
            Scope::Global if target.is_empty() => Ok(()),
            Scope::Global => Err("must be empty for scope GLOBAL".into()),
            Scope::Tool => ToolScope::parse(target)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Scope::Session if crate::ids::is_well_formed(target, "ses_") => Ok(()),
            Scope::Session => Err("not a session id (`ses_` and 32 hex digits)".into()),
            _ if target.is_empty() => Err(format!("required for scope {}", self.as_str())),
            _ if target.len() > MAX_TARGET_LEN => Err(format!("at most {MAX_TARGET_LEN} bytes")),
            _ => Ok(()),
        }
    }
}

/// How a switch ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub by: String,
    pub at: Micros,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitch {
    /// `ksw_` + 128 random bits.
    pub id: String,
    pub scope: Scope,
    pub target: String,
    pub reason: String,
    pub engaged_by: String,
    pub engaged_at: Micros,
    pub expires_at: Option<Micros>,
    pub released: Option<Release>,
}

/// Who and what a call concerns, as far as kill switches care.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: Option<&'a str>,
    pub agent: &'a str,
    pub user: Option<&'a str>,
    pub tool: Option<&'a str>,
    pub session: Option<&'a str>,
    /// The session's ancestors (nearest first): a SESSION switch on any of them covers the call too.
    pub ancestors: &'a [String],
}

impl KillSwitch {
    pub fn is_active(&self, now: Micros) -> bool {
        self.released.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    pub fn covers(&self, s: &Subject<'_>) -> bool {
        let t = self.target.as_str();
        match self.scope {
            Scope::Global => true,
            Scope::Tenant => s.tenant == Some(t),
            Scope::Agent => s.agent == t,
            Scope::User => s.user == Some(t),
            Scope::Tool => s
                .tool
                .is_some_and(|tool| ToolScope::parse(t).is_ok_and(|scope| scope.matches(tool))),
            Scope::Session => s.session == Some(t) || s.ancestors.iter().any(|a| a == t),
        }
    }
}

/// What a decision learns from the snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Check<'a> {
    Clear,
    Blocked(&'a KillSwitch),
    /// The broker has not been able to read the switches recently: treat every scope as killed.
    Unknown {
        since: Option<Duration>,
    },
}

/// The switches in force, as last read from the database.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub switches: Vec<KillSwitch>,
    /// When the database last answered; `None` before the first read.
    pub fresh_at: Option<Instant>,
}

impl Snapshot {
    pub fn loaded(switches: Vec<KillSwitch>) -> Self {
        Self {
            switches,
            fresh_at: Some(Instant::now()),
        }
    }

    pub fn check(&self, subject: &Subject<'_>, now: Micros, stale_after: Duration) -> Check<'_> {
        let age = self.fresh_at.map(|t| t.elapsed());
        if age.is_none_or(|a| a > stale_after) {
            return Check::Unknown { since: age };
        }
        match self
            .switches
            .iter()
            .find(|k| k.is_active(now) && k.covers(subject))
        {
            Some(k) => Check::Blocked(k),
            None => Check::Clear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(scope: Scope, target: &str) -> KillSwitch {
        KillSwitch {
            id: "ksw_1".into(),
            scope,
            target: target.into(),
            reason: "r".into(),
            engaged_by: "admin".into(),
            engaged_at: 0,
            expires_at: None,
            released: None,
        }
    }

    const CALL: Subject<'static> = Subject {
        tenant: Some("acme"),
        agent: "agent-1",
        user: Some("alice"),
        tool: Some("payments.refund"),
        session: Some("ses_00000000000000000000000000000001"),
        ancestors: &[],
    };

    #[test]
    fn each_scope_covers_its_own_and_nothing_else() {
        let covered = [
            (Scope::Global, ""),
            (Scope::Tenant, "acme"),
            (Scope::Agent, "agent-1"),
            (Scope::User, "alice"),
            (Scope::Tool, "payments.refund"),
            (Scope::Tool, "payments.*"),
            (Scope::Session, "ses_00000000000000000000000000000001"),
        ];
        for (scope, target) in covered {
            assert!(switch(scope, target).covers(&CALL), "{scope:?} {target}");
        }
        let not_covered = [
            (Scope::Tenant, "globex"),
            (Scope::Agent, "agent-2"),
            (Scope::User, "bob"),
            (Scope::Tool, "email.*"),
            (Scope::Tool, "payments"),
            (Scope::Session, "ses_00000000000000000000000000000002"),
        ];
        for (scope, target) in not_covered {
            assert!(!switch(scope, target).covers(&CALL), "{scope:?} {target}");
        }
        let no_tenant = Subject {
            tenant: None,
            user: None,
            ..CALL
        };
        assert!(!switch(Scope::Tenant, "acme").covers(&no_tenant));
        assert!(!switch(Scope::User, "alice").covers(&no_tenant));
    }

    #[test]
    fn a_session_switch_covers_the_sessions_descendants() {
        let lineage = [
            "ses_00000000000000000000000000000010".to_owned(),
            "ses_00000000000000000000000000000020".to_owned(),
        ];
        let grandchild = Subject {
            ancestors: &lineage,
            ..CALL
        };
        for ancestor in &lineage {
            assert!(switch(Scope::Session, ancestor).covers(&grandchild));
        }
        assert!(switch(Scope::Session, "ses_00000000000000000000000000000001").covers(&grandchild));
        assert!(
            !switch(Scope::Session, "ses_00000000000000000000000000000030").covers(&grandchild)
        );
        assert!(
            !switch(Scope::Session, &lineage[0]).covers(&CALL),
            "a switch on a child does not stop its parent"
        );
    }

    #[test]
    fn released_and_expired_switches_do_not_block() {
        let mut k = switch(Scope::Global, "");
        k.expires_at = Some(100);
        assert!(k.is_active(99));
        assert!(!k.is_active(100));
        k.expires_at = None;
        k.released = Some(Release {
            by: "a".into(),
            at: 5,
            reason: "ok".into(),
        });
        assert!(!k.is_active(6));
    }

    #[test]
    fn a_stale_or_unloaded_snapshot_blocks_everything() {
        let never = Snapshot::default();
        assert!(matches!(
            never.check(&CALL, 0, Duration::from_secs(5)),
            Check::Unknown { since: None }
        ));
        let fresh = Snapshot::loaded(vec![]);
        assert_eq!(fresh.check(&CALL, 0, Duration::from_secs(5)), Check::Clear);
        assert!(matches!(
            fresh.check(&CALL, 0, Duration::ZERO),
            Check::Unknown { since: Some(_) }
        ));
        let blocking = Snapshot::loaded(vec![switch(Scope::Agent, "agent-1")]);
        assert!(
            matches!(blocking.check(&CALL, 0, Duration::from_secs(5)), Check::Blocked(k) if k.id == "ksw_1")
        );
    }

    #[test]
    fn targets_are_validated_per_scope() {
        assert!(Scope::Global.validate_target("").is_ok());
        assert!(Scope::Global.validate_target("x").is_err());
        assert!(Scope::Tool.validate_target("payments.*").is_ok());
        assert!(Scope::Tool.validate_target("Payments").is_err());
        assert!(Scope::Session.validate_target("ses_1").is_err());
        assert!(Scope::Agent.validate_target("").is_err());
        assert!(Scope::Agent
            .validate_target(&"a".repeat(MAX_TARGET_LEN + 1))
            .is_err());
        assert_eq!(Scope::parse("tenant"), Some(Scope::Tenant));
    }
}
