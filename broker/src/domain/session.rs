//! Sessions: what an agent may do (tool scopes), for how long, and how many calls it may spend.

use serde::{Deserialize, Serialize};

use super::decision::{Reason, ReasonCode};
use crate::clock::Micros;

/// The longest tool name or scope accepted at the boundary.
pub const MAX_TOOL_NAME_LEN: usize = 128;

/// How deep sessions nest: a session has at most this many ancestors. Each is checked against the SESSION
/// kill switches on every call, so the chain stays short.
pub const MAX_SESSION_DEPTH: usize = 32;

/// True for a catalogue-shaped tool name: dot-separated lowercase ASCII segments (`email.send`).
/// Anything else (look-alike letters, invisible characters, upper case) can never match a scope or a tool.
pub fn is_tool_name(name: &str) -> bool {
    name.len() <= MAX_TOOL_NAME_LEN
        && !name.is_empty()
        && name.split('.').all(|seg| {
            let mut bytes = seg.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_lowercase())
                && bytes
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// One granted scope: a tool name, a prefix pattern (`email.*`) or every tool (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ToolScope {
    All,
    Prefix(String),
    Exact(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tool scope `{}` is not a tool name, a prefix pattern like `email.*`, or `*`", visible(.0))]
pub struct InvalidScope(pub String);

/// Longest untrusted name [`visible`] shows.
const MAX_VISIBLE_CHARS: usize = 64;

/// An untrusted name as a person should see it in an error: printable ASCII as it is, anything else
/// escaped (`\u{435}` for a Cyrillic е, `\u{200b}` for a zero-width space), at most 64 characters.
pub fn visible(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(MAX_VISIBLE_CHARS) {
        if (c.is_ascii_graphic() && c != '`' && c != '\\') || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    if s.chars().nth(MAX_VISIBLE_CHARS).is_some() {
        out.push('…');
    }
    out
}

impl TryFrom<String> for ToolScope {
    type Error = InvalidScope;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        ToolScope::parse(&s)
    }
}

impl From<ToolScope> for String {
    fn from(s: ToolScope) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for ToolScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolScope::All => f.write_str("*"),
            ToolScope::Prefix(p) => write!(f, "{p}.*"),
            ToolScope::Exact(t) => f.write_str(t),
        }
    }
}

impl ToolScope {
    pub fn parse(s: &str) -> Result<Self, InvalidScope> {
        if s == "*" {
            return Ok(ToolScope::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            if is_tool_name(prefix) {
                return Ok(ToolScope::Prefix(prefix.to_owned()));
            }
        } else if is_tool_name(s) {
            return Ok(ToolScope::Exact(s.to_owned()));
        }
        Err(InvalidScope(s.to_owned()))
    }

    pub fn matches(&self, tool: &str) -> bool {
        match self {
            ToolScope::All => true,
            // `email.*` covers `email.send` and `email.draft.create`, never `emailer.send` or `email` itself.
            ToolScope::Prefix(p) => tool
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
            ToolScope::Exact(t) => t == tool,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Open,
    Closed,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub agent: String,
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub tools: Vec<ToolScope>,
    pub purpose: String,
    pub created_at: Micros,
    pub expires_at: Micros,
    pub max_tool_calls: u32,
    pub tool_calls_used: u32,
    pub closed_at: Option<Micros>,
    /// Document collections the session may retrieve from.
    pub collections: Vec<String>,
    /// Labels from what the session read (sorted, unique); they only ever accumulate.
    pub labels: Vec<String>,
    /// The sessions this one descends from, nearest first (parent, grandparent, ...; at most
    /// [`MAX_SESSION_DEPTH`]): a SESSION kill switch on any of them covers this session.
    pub ancestors: Vec<String>,
}

impl Session {
    pub fn state(&self, now: Micros) -> SessionState {
        if self.closed_at.is_some() {
            SessionState::Closed
        } else if now >= self.expires_at {
            SessionState::Expired
        } else {
            SessionState::Open
        }
    }

    pub fn allows_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|s| s.matches(tool))
    }

    pub fn budget_left(&self) -> bool {
        self.tool_calls_used < self.max_tool_calls
    }

    /// Why this session cannot spend a call now, or `None` when it can.
    pub fn refusal(&self, now: Micros) -> Option<Reason> {
        match self.state(now) {
            SessionState::Closed => Some(Reason::new(
                ReasonCode::SessionClosed,
                format!("session `{}` is closed", self.id),
            )),
            SessionState::Expired => Some(Reason::new(
                ReasonCode::SessionExpired,
                format!("session `{}` has expired", self.id),
            )),
            SessionState::Open if !self.budget_left() => Some(Reason::new(
                ReasonCode::BudgetExhausted,
                format!(
                    "session `{}` has used all {} of its tool calls",
                    self.id, self.max_tool_calls
                ),
            )),
            SessionState::Open => None,
        }
    }
}

/// A session for tests: agent `a`, every tool, open from 0 until 100, nothing spent.
#[cfg(test)]
pub(crate) fn fixture(id: &str, max_tool_calls: u32) -> Session {
    Session {
        id: id.into(),
        agent: "a".into(),
        user: None,
        tenant: None,
        tools: vec![ToolScope::All],
        purpose: String::new(),
        created_at: 0,
        expires_at: 100,
        max_tool_calls,
        tool_calls_used: 0,
        closed_at: None,
        collections: vec![],
        labels: vec![],
        ancestors: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_match_by_whole_segments() {
        let p = ToolScope::parse("email.*").unwrap();
        assert!(p.matches("email.send"));
        assert!(p.matches("email.draft.create"));
        assert!(!p.matches("emailer.send"));
        assert!(!p.matches("email"));
        assert!(ToolScope::parse("*").unwrap().matches("shell.exec"));
        let e = ToolScope::parse("web.search").unwrap();
        assert!(e.matches("web.search"));
        assert!(!e.matches("web.search.deep"));
    }

    #[test]
    fn malformed_scopes_and_look_alike_names_are_refused() {
        for bad in [
            "",
            "Email.send",
            "email.",
            ".send",
            "email.**",
            "e mail",
            "emaіl.send",
            "email\u{200b}.send",
            "*.send",
        ] {
            assert!(ToolScope::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(!is_tool_name("emaіl.send"), "Cyrillic i");
        assert!(!is_tool_name(&"a".repeat(MAX_TOOL_NAME_LEN + 1)));
        assert!(is_tool_name("payments.refund"));
    }

    #[test]
    fn invalid_scopes_show_hidden_characters_escaped() {
        let err = ToolScope::parse("\u{435}mail.\u{200b}send\u{202e}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tool scope `\\u{435}mail.\\u{200b}send\\u{202e}` is not a tool name, a prefix pattern like `email.*`, or `*`"
        );
        assert_eq!(visible("a`b\\c\n"), "a\\u{60}b\\u{5c}c\\u{a}");
        assert_eq!(
            visible(&"x".repeat(100)).chars().count(),
            MAX_VISIBLE_CHARS + 1
        );
        assert_eq!(visible("Email.Send *"), "Email.Send *");
    }

    #[test]
    fn state_follows_close_and_expiry() {
        let mut s = fixture("ses_x", 1);
        assert_eq!(s.state(99), SessionState::Open);
        assert_eq!(s.state(100), SessionState::Expired);
        s.closed_at = Some(50);
        assert_eq!(s.state(10), SessionState::Closed);
    }
}
