//! Kill switches: what an admin engages, what the broker holds, and the changes a watch reports.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use broker_proto::v1 as proto;

use crate::timestamp::{non_empty, optional, required};
use crate::Error;

/// What a kill switch covers.
///
/// Exhaustive on purpose, like [`Outcome`](crate::Outcome): a scope the SDK does not know (including
/// `KILL_SWITCH_SCOPE_UNSPECIFIED`) is an [`Error::Protocol`] when it comes from the broker.
///
/// ```
/// use broker_sdk::KillSwitchScope;
/// let scope: KillSwitchScope = "TOOL".parse()?;
/// assert_eq!(scope, KillSwitchScope::Tool);
/// assert_eq!(scope.as_str(), "TOOL");
/// # Ok::<(), broker_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KillSwitchScope {
    /// Everything; the target must be empty.
    Global,
    /// Every agent whose token carries this tenant.
    Tenant,
    /// One agent (JWT `sub`).
    Agent,
    /// Every agent acting for this user.
    User,
    /// A tool name or prefix pattern such as `payments.*`.
    Tool,
    /// One session id.
    Session,
}

impl KillSwitchScope {
    /// Every scope, widest first.
    pub const ALL: [Self; 6] = [
        Self::Global,
        Self::Tenant,
        Self::Agent,
        Self::User,
        Self::Tool,
        Self::Session,
    ];

    /// The contract's name: `GLOBAL`, `TENANT`, `AGENT`, `USER`, `TOOL` or `SESSION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "GLOBAL",
            Self::Tenant => "TENANT",
            Self::Agent => "AGENT",
            Self::User => "USER",
            Self::Tool => "TOOL",
            Self::Session => "SESSION",
        }
    }

    /// Reads the wire value, failing closed on `KILL_SWITCH_SCOPE_UNSPECIFIED` and unknown values.
    pub fn from_proto(value: i32) -> Result<Self, Error> {
        match proto::KillSwitchScope::try_from(value) {
            Ok(proto::KillSwitchScope::Global) => Ok(Self::Global),
            Ok(proto::KillSwitchScope::Tenant) => Ok(Self::Tenant),
            Ok(proto::KillSwitchScope::Agent) => Ok(Self::Agent),
            Ok(proto::KillSwitchScope::User) => Ok(Self::User),
            Ok(proto::KillSwitchScope::Tool) => Ok(Self::Tool),
            Ok(proto::KillSwitchScope::Session) => Ok(Self::Session),
            Ok(proto::KillSwitchScope::Unspecified) => Err(Error::Protocol(
                "the broker sent KILL_SWITCH_SCOPE_UNSPECIFIED".into(),
            )),
            Err(_) => Err(Error::Protocol(format!(
                "the broker sent an unknown kill switch scope `{value}`"
            ))),
        }
    }
}

impl From<KillSwitchScope> for proto::KillSwitchScope {
    fn from(scope: KillSwitchScope) -> Self {
        match scope {
            KillSwitchScope::Global => Self::Global,
            KillSwitchScope::Tenant => Self::Tenant,
            KillSwitchScope::Agent => Self::Agent,
            KillSwitchScope::User => Self::User,
            KillSwitchScope::Tool => Self::Tool,
            KillSwitchScope::Session => Self::Session,
        }
    }
}

impl FromStr for KillSwitchScope {
    type Err = Error;

    /// Parses the contract's name exactly (`TOOL`, not `tool`); anything else is an
    /// [`Error::InvalidArgument`] naming the field `scope`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument {
                message: format!(
                    "unknown kill switch scope `{s}` (expected GLOBAL, TENANT, AGENT, USER, TOOL or SESSION)"
                ),
                field: Some("scope".into()),
                reason: None,
            })
    }
}

impl fmt::Display for KillSwitchScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to engage.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use broker_sdk::{EngageRequest, KillSwitchScope};
/// let request = EngageRequest::new(KillSwitchScope::Tool, "payments.*", "incident 42: double charges")
///     .expires_at(SystemTime::now() + Duration::from_secs(3600));
/// # let _ = request;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngageRequest {
    scope: KillSwitchScope,
    target: String,
    reason: String,
    expires_at: Option<SystemTime>,
}

impl EngageRequest {
    /// Covers `target` in `scope` (empty for [`KillSwitchScope::Global`]); `reason` is required, recorded
    /// in the audit trail and shown in denials. Without [`expires_at`](Self::expires_at) the switch holds
    /// until released.
    pub fn new(
        scope: KillSwitchScope,
        target: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            scope,
            target: target.into(),
            reason: reason.into(),
            expires_at: None,
        }
    }

    /// When the switch releases itself.
    pub fn expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    pub(crate) fn into_proto(self) -> proto::EngageKillSwitchRequest {
        proto::EngageKillSwitchRequest {
            scope: proto::KillSwitchScope::from(self.scope).into(),
            target: self.target,
            reason: self.reason,
            expires_at: self.expires_at.map(prost_types::Timestamp::from),
        }
    }
}

/// A kill switch as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSwitch {
    /// `ksw_` followed by 128 random bits; denials name it in [`Reason::kill_switch_id`](crate::Reason).
    pub id: String,
    /// What it covers.
    pub scope: KillSwitchScope,
    /// The tenant, agent, user, tool pattern or session it covers; empty for [`KillSwitchScope::Global`].
    pub target: String,
    /// Why it was engaged.
    pub reason: String,
    /// Who engaged it (the admin's JWT `sub`).
    pub engaged_by: String,
    /// When it was engaged.
    pub engaged_at: SystemTime,
    /// When it releases itself; `None` means until released.
    pub expires_at: Option<SystemTime>,
    /// Whether it is in force now.
    pub active: bool,
    /// Who released it, once released.
    pub released_by: Option<String>,
    /// When it was released (or expired).
    pub released_at: Option<SystemTime>,
    /// Why it was released.
    pub release_reason: Option<String>,
}

impl TryFrom<proto::KillSwitch> for KillSwitch {
    type Error = Error;

    fn try_from(switch: proto::KillSwitch) -> Result<Self, Error> {
        if switch.id.is_empty() {
            return Err(Error::Protocol(
                "the broker sent a kill switch without an id".into(),
            ));
        }
        Ok(Self {
            scope: KillSwitchScope::from_proto(switch.scope)?,
            engaged_at: required(switch.engaged_at, "engaged_at")?,
            expires_at: optional(switch.expires_at, "expires_at")?,
            released_at: optional(switch.released_at, "released_at")?,
            id: switch.id,
            target: switch.target,
            reason: switch.reason,
            engaged_by: switch.engaged_by,
            active: switch.active,
            released_by: non_empty(switch.released_by),
            release_reason: non_empty(switch.release_reason),
        })
    }
}

/// What happened to a switch, as a watch reports it.
///
/// Exhaustive on purpose: a change the SDK does not know is an [`Error::Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KillSwitchChange {
    /// Engaged before the watch started (sent once per switch in force when it starts).
    Active,
    /// Engaged now.
    Engaged,
    /// Released by an admin.
    Released,
    /// Reached its `expires_at`.
    Expired,
}

impl KillSwitchChange {
    /// The contract's name: `ACTIVE`, `ENGAGED`, `RELEASED` or `EXPIRED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Engaged => "ENGAGED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
        }
    }

    /// Whether the switch is in force after this change.
    pub fn is_in_force(self) -> bool {
        matches!(self, Self::Active | Self::Engaged)
    }

    /// Reads the wire value, failing closed on anything unknown (including the empty string).
    fn from_wire(change: &str) -> Result<Self, Error> {
        match change {
            "ACTIVE" => Ok(Self::Active),
            "ENGAGED" => Ok(Self::Engaged),
            "RELEASED" => Ok(Self::Released),
            "EXPIRED" => Ok(Self::Expired),
            other => Err(Error::Protocol(format!(
                "the broker sent an unknown kill switch change `{other}`"
            ))),
        }
    }
}

impl fmt::Display for KillSwitchChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change reported by a [`KillSwitchWatch`](crate::KillSwitchWatch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSwitchEvent {
    /// What happened.
    pub change: KillSwitchChange,
    /// The switch after the change.
    pub switch: KillSwitch,
}

impl TryFrom<proto::KillSwitchEvent> for KillSwitchEvent {
    type Error = Error;

    fn try_from(event: proto::KillSwitchEvent) -> Result<Self, Error> {
        let change = KillSwitchChange::from_wire(&event.change)?;
        let switch = event.switch.ok_or_else(|| {
            Error::Protocol(format!(
                "the broker sent a `{change}` event without a switch"
            ))
        })?;
        Ok(Self {
            change,
            switch: KillSwitch::try_from(switch)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn switch() -> proto::KillSwitch {
        proto::KillSwitch {
            id: "ksw_1".into(),
            scope: proto::KillSwitchScope::Agent.into(),
            target: "agent-1".into(),
            reason: "r".into(),
            engaged_by: "admin".into(),
            engaged_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            active: true,
            ..Default::default()
        }
    }

    #[test]
    fn scopes_round_trip_through_their_names_and_the_wire() {
        for scope in KillSwitchScope::ALL {
            assert_eq!(scope.as_str().parse::<KillSwitchScope>(), Ok(scope));
            let wire: i32 = proto::KillSwitchScope::from(scope).into();
            assert_eq!(KillSwitchScope::from_proto(wire), Ok(scope));
        }
    }

    #[test]
    fn an_unknown_scope_name_is_an_invalid_argument() {
        for name in ["tool", "KILL_SWITCH_SCOPE_UNSPECIFIED", ""] {
            let parsed = name.parse::<KillSwitchScope>();
            assert!(
                matches!(&parsed, Err(Error::InvalidArgument { field: Some(f), .. }) if f == "scope"),
                "{name}: {parsed:?}"
            );
        }
    }

    #[test]
    fn unspecified_and_unknown_scopes_are_protocol_errors() {
        assert!(matches!(
            KillSwitchScope::from_proto(0),
            Err(Error::Protocol(m)) if m.contains("UNSPECIFIED")
        ));
        assert!(matches!(
            KillSwitchScope::from_proto(42),
            Err(Error::Protocol(m)) if m.contains("`42`")
        ));
    }

    #[test]
    fn engage_request_leaves_expiry_out_unless_asked() {
        let request = EngageRequest::new(KillSwitchScope::Global, "", "stop").into_proto();
        assert_eq!(
            request,
            proto::EngageKillSwitchRequest {
                scope: proto::KillSwitchScope::Global.into(),
                target: String::new(),
                reason: "stop".into(),
                expires_at: None,
            }
        );
        let at = UNIX_EPOCH + Duration::from_millis(1_500);
        let request = EngageRequest::new(KillSwitchScope::Session, "ses_1", "stop")
            .expires_at(at)
            .into_proto();
        assert_eq!(
            request.expires_at,
            Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            })
        );
    }

    #[test]
    fn a_switch_needs_an_id_and_an_engaged_at() {
        assert!(
            KillSwitch::try_from(switch()).is_ok_and(|s| s.released_by.is_none()
                && s.expires_at.is_none()
                && s.scope == KillSwitchScope::Agent)
        );
        let anonymous = proto::KillSwitch {
            id: String::new(),
            ..switch()
        };
        assert!(matches!(
            KillSwitch::try_from(anonymous),
            Err(Error::Protocol(_))
        ));
        let timeless = proto::KillSwitch {
            engaged_at: None,
            ..switch()
        };
        assert!(matches!(
            KillSwitch::try_from(timeless),
            Err(Error::Protocol(m)) if m.contains("`engaged_at`")
        ));
    }

    #[test]
    fn an_unknown_change_or_a_missing_switch_is_a_protocol_error() {
        let event = |change: &str, switch: Option<proto::KillSwitch>| {
            KillSwitchEvent::try_from(proto::KillSwitchEvent {
                change: change.into(),
                switch,
            })
        };
        assert!(event("ENGAGED", Some(switch())).is_ok_and(|e| e.change.is_in_force()));
        assert!(
            matches!(event("PAUSED", Some(switch())), Err(Error::Protocol(m)) if m.contains("`PAUSED`"))
        );
        assert!(matches!(event("", Some(switch())), Err(Error::Protocol(_))));
        assert!(matches!(
            event("engaged", Some(switch())),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(event("EXPIRED", None), Err(Error::Protocol(_))));
    }
}
