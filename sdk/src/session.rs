//! Sessions: what an agent asks for before calling tools, and what the broker granted.

use std::time::{Duration, SystemTime};

use broker_proto::v1 as proto;

use crate::timestamp::{non_empty, required};
use crate::Error;

/// What to ask for when opening a session.
///
/// ```
/// use std::time::Duration;
/// use broker_sdk::SessionRequest;
/// let request = SessionRequest::new(["email.*", "calendar.read"])
///     .ttl(Duration::from_secs(15 * 60))
///     .max_tool_calls(20)
///     .purpose("triage the inbox");
/// # let _ = request;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    tools: Vec<String>,
    ttl: Option<Duration>,
    max_tool_calls: u32,
    purpose: String,
    collections: Vec<String>,
    parent_session_id: Option<String>,
}

impl SessionRequest {
    /// Asks for these tool names or prefix patterns (`email.*`; `*` for the whole catalogue).
    pub fn new<I, S>(tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            tools: tools.into_iter().map(Into::into).collect(),
            ttl: None,
            max_tool_calls: 0,
            purpose: String::new(),
            collections: Vec::new(),
            parent_session_id: None,
        }
    }

    /// Opens a child of this session: it starts with the parent's labels (what was read stays read).
    pub fn parent(mut self, session_id: impl Into<String>) -> Self {
        self.parent_session_id = Some(session_id.into());
        self
    }

    /// Document collections the session may retrieve from (`context.session.collections`).
    pub fn collections<I, S>(mut self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.collections = collections.into_iter().map(Into::into).collect();
        self
    }

    /// Lifetime; without it the broker's default applies, and the broker caps it at its maximum.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Budget of tool calls; 0 (the default) means the broker's default.
    pub fn max_tool_calls(mut self, max_tool_calls: u32) -> Self {
        self.max_tool_calls = max_tool_calls;
        self
    }

    /// Why the agent is working; policies see it and the audit trail keeps it.
    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = purpose.into();
        self
    }

    pub(crate) fn into_proto(self) -> Result<proto::OpenSessionRequest, Error> {
        let ttl = self
            .ttl
            .map(prost_types::Duration::try_from)
            .transpose()
            .map_err(|e| Error::InvalidArgument {
                message: format!("ttl is out of range: {e}"),
                field: Some("ttl".into()),
                reason: None,
            })?;
        Ok(proto::OpenSessionRequest {
            tools: self.tools,
            ttl,
            max_tool_calls: self.max_tool_calls,
            purpose: self.purpose,
            collections: self.collections,
            parent_session_id: self.parent_session_id.unwrap_or_default(),
        })
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Tool calls may be allowed.
    Open,
    /// Closed by the agent; later calls are denied with `SESSION_CLOSED`.
    Closed,
    /// Past its `expires_at`; later calls are denied with `SESSION_EXPIRED`.
    Expired,
}

impl SessionState {
    /// Reads the wire value, failing closed on `SESSION_STATE_UNSPECIFIED` and unknown values.
    pub fn from_proto(value: i32) -> Result<Self, Error> {
        match proto::SessionState::try_from(value) {
            Ok(proto::SessionState::Open) => Ok(Self::Open),
            Ok(proto::SessionState::Closed) => Ok(Self::Closed),
            Ok(proto::SessionState::Expired) => Ok(Self::Expired),
            Ok(proto::SessionState::Unspecified) => Err(Error::Protocol(
                "the broker answered SESSION_STATE_UNSPECIFIED".into(),
            )),
            Err(_) => Err(Error::Protocol(format!(
                "the broker answered an unknown session state `{value}`"
            ))),
        }
    }
}

/// A session as the broker granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `ses_` followed by 128 random bits.
    pub session_id: String,
    /// The agent (JWT `sub`) the session belongs to.
    pub agent: String,
    /// The user the agent acts for, when the token names one.
    pub user: Option<String>,
    /// The granted tool scopes, normalised.
    pub tools: Vec<String>,
    /// Why the agent is working.
    pub purpose: String,
    /// When the session was opened.
    pub created_at: SystemTime,
    /// When the session stops allowing calls.
    pub expires_at: SystemTime,
    /// The budget of allowed tool calls.
    pub max_tool_calls: u32,
    /// How much of the budget is spent.
    pub tool_calls_used: u32,
    /// Open, closed or expired.
    pub state: SessionState,
    /// Document collections the session may retrieve from.
    pub collections: Vec<String>,
    /// Labels from what the session read (`untrusted`, `confidential`, ...); they only accumulate.
    pub labels: Vec<String>,
}

impl Session {
    /// Whether the session is open (the broker still checks expiry and budget on every call).
    pub fn is_open(&self) -> bool {
        self.state == SessionState::Open
    }

    /// Tool calls left in the budget.
    pub fn remaining_tool_calls(&self) -> u32 {
        self.max_tool_calls.saturating_sub(self.tool_calls_used)
    }
}

impl TryFrom<proto::Session> for Session {
    type Error = Error;

    fn try_from(session: proto::Session) -> Result<Self, Error> {
        if session.session_id.is_empty() {
            return Err(Error::Protocol(
                "the broker sent a session without an id".into(),
            ));
        }
        Ok(Self {
            state: SessionState::from_proto(session.state)?,
            created_at: required(session.created_at, "created_at")?,
            expires_at: required(session.expires_at, "expires_at")?,
            session_id: session.session_id,
            agent: session.agent,
            user: non_empty(session.user),
            tools: session.tools,
            purpose: session.purpose,
            max_tool_calls: session.max_tool_calls,
            tool_calls_used: session.tool_calls_used,
            collections: session.collections,
            labels: session.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_the_request() {
        let request = SessionRequest::new(["email.*"])
            .ttl(Duration::from_millis(1500))
            .max_tool_calls(3)
            .purpose("p")
            .into_proto();
        assert_eq!(
            request,
            Ok(proto::OpenSessionRequest {
                tools: vec!["email.*".into()],
                ttl: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000
                }),
                max_tool_calls: 3,
                purpose: "p".into(),
                collections: vec![],
                parent_session_id: String::new(),
            })
        );
    }

    #[test]
    fn defaults_leave_the_choice_to_the_broker() {
        let request = SessionRequest::new(Vec::<String>::new()).into_proto();
        assert_eq!(request, Ok(proto::OpenSessionRequest::default()));
    }

    #[test]
    fn an_out_of_range_ttl_names_the_field() {
        let request = SessionRequest::new(["a"]).ttl(Duration::MAX).into_proto();
        assert!(
            matches!(request, Err(Error::InvalidArgument { field: Some(f), .. }) if f == "ttl")
        );
    }

    #[test]
    fn unspecified_state_is_a_protocol_error() {
        assert!(matches!(
            SessionState::from_proto(0),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            SessionState::from_proto(9),
            Err(Error::Protocol(_))
        ));
        assert_eq!(SessionState::from_proto(3), Ok(SessionState::Expired));
    }
}
