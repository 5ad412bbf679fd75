//! Authentication: who is calling.
//!
//! Every RPC carries a bearer JWT. [`Verifier::verify`] checks it against keys the broker loaded
//! from its own configuration and turns it into a [`Principal`]. The rules it enforces:
//!
//! - accepted algorithms come only from [`AuthConfig::algorithms`], never from the token;
//!   `none` is refused in every spelling, at start and on every token;
//! - a key is only ever used with the algorithm family it was loaded for (an HMAC secret never
//!   verifies an RS256 token, a public key never serves as an HMAC secret);
//! - a token's `kid` selects a key from the map the broker built; `jku`, `x5u`, `jwk` and `x5c`
//!   header fields are ignored, a `crit` header is refused, and so is a `typ` other than `JWT` or
//!   `at+jwt` (RFC 9068), so that other kinds of signed tokens are not taken for access tokens;
//! - header and claims are strict JSON ([`crate::json`]): a field named twice is refused, never
//!   resolved to one of its values (`{"sub": "a", "sub": "admin"}`);
//! - `iss`, `aud`, `exp` and `sub` are required, `nbf` is checked when present, the clock leeway
//!   is explicit; time claims are NumericDates (integer or fractional seconds, RFC 7519) between
//!   1970 and the year 9999, anything else is refused; a token larger than
//!   [`AuthConfig::max_token_bytes`] is refused before parsing.
//! - a token that passed is remembered by its exact text (`token_cache`), and answered from there only
//!   within its own `nbf`..`exp` window and while the keys that verified it are still the broker's.
//!
//! Failures are split in two: [`Error::Unauthenticated`] (a bad token, client-safe message and a
//! stable [`TokenError::reason`]) and every other variant (bad configuration, unreadable keys).
//!
//! [`dev`] is the development issuer: a local HMAC key and a token minter.

mod config;
pub mod dev;
mod jwks_http;
mod keys;
mod token_cache;
mod verifier;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_corpus;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use self::config::{AuthConfig, PublicKeyConfig};
pub use self::verifier::{token_from_authorization_header, Verifier};

/// What a caller may do. Parsed from the roles claim; unknown names are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An AI agent asking whether it may call a tool.
    Agent,
    /// A human (or service) deciding pending approvals.
    Approver,
    /// Operates the broker: policies, kill switches.
    Admin,
    /// Reads the audit trail.
    Auditor,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [Role::Agent, Role::Approver, Role::Admin, Role::Auditor];

    /// The lowercase name used in tokens and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| Error::UnknownRole(sanitize(s)))
    }
}

/// The authenticated caller of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// JWT `sub`: required, non-empty.
    pub subject: String,
    /// The user the caller acts for, from [`AuthConfig::user_claim`].
    pub user: Option<String>,
    /// From [`AuthConfig::tenant_claim`].
    pub tenant: Option<String>,
    /// Who the person behind the token is, from [`AuthConfig::person_claim`] (`sub` by default, so
    /// then the subject): what separation of duties compares (`domain::person`).
    pub person: Option<String>,
    /// From [`AuthConfig::groups_claim`]: who an approver approves for.
    pub groups: BTreeSet<String>,
    /// From [`AuthConfig::roles_claim`]; empty when the claim is missing.
    pub roles: BTreeSet<Role>,
    /// JWT `jti`.
    pub token_id: Option<String>,
    /// JWT `exp`, unix seconds.
    pub expires_at: i64,
}

impl Principal {
    /// Whether the token granted `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a token was refused. Messages are safe to send to the client: they never carry key
/// material or internals, and token-supplied text is truncated and sanitized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("bearer token is missing")]
    Missing,
    #[error("token is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("token is malformed")]
    Malformed,
    #[error("algorithm `none` is not accepted")]
    AlgorithmNone,
    #[error("algorithm `{0}` is not accepted")]
    AlgorithmNotAccepted(String),
    #[error("token header has critical extensions (`crit`), which are not supported")]
    CriticalHeader,
    #[error("token type (`typ`) `{0}` is not accepted")]
    TypeNotAccepted(String),
    /// A JSON object of the token names a key twice (`part` is `header` or `claims`).
    #[error("`{name}` appears more than once in the token {part}")]
    DuplicateField { part: &'static str, name: String },
    #[error("token key id `{0}` is not known")]
    UnknownKeyId(String),
    #[error("token has no key id (`kid`) and several keys could verify it")]
    AmbiguousKey,
    #[error("no key is available for algorithm `{0}`")]
    NoKey(String),
    #[error("token key `{kid}` cannot verify algorithm `{alg}`")]
    KeyAlgorithmMismatch { kid: String, alg: String },
    #[error("token signature is invalid")]
    InvalidSignature,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    InvalidIssuer,
    #[error("token audience is not accepted")]
    InvalidAudience,
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` has an invalid value")]
    InvalidClaim(String),
}

impl TokenError {
    /// A stable, machine-readable reason for the API layer's error details.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "TOKEN_MISSING",
            TokenError::TooLarge { .. } => "TOKEN_TOO_LARGE",
            TokenError::Malformed => "TOKEN_MALFORMED",
            TokenError::AlgorithmNone | TokenError::AlgorithmNotAccepted(_) => {
                "TOKEN_ALGORITHM_NOT_ACCEPTED"
            }
            TokenError::CriticalHeader => "TOKEN_CRITICAL_HEADER",
            TokenError::TypeNotAccepted(_) => "TOKEN_TYPE_NOT_ACCEPTED",
            TokenError::DuplicateField { .. } => "TOKEN_DUPLICATE_FIELD",
            TokenError::UnknownKeyId(_) => "TOKEN_UNKNOWN_KEY_ID",
            TokenError::AmbiguousKey => "TOKEN_AMBIGUOUS_KEY",
            TokenError::NoKey(_) => "TOKEN_NO_KEY",
            TokenError::KeyAlgorithmMismatch { .. } => "TOKEN_KEY_ALGORITHM_MISMATCH",
            TokenError::InvalidSignature => "TOKEN_SIGNATURE_INVALID",
            TokenError::Expired => "TOKEN_EXPIRED",
            TokenError::NotYetValid => "TOKEN_NOT_YET_VALID",
            TokenError::InvalidIssuer => "TOKEN_ISSUER_NOT_ACCEPTED",
            TokenError::InvalidAudience => "TOKEN_AUDIENCE_NOT_ACCEPTED",
            TokenError::MissingClaim(_) => "TOKEN_CLAIM_MISSING",
            TokenError::InvalidClaim(_) => "TOKEN_CLAIM_INVALID",
        }
    }
}

/// Errors of the auth module.
///
/// [`Error::Unauthenticated`] is a bad token (map it to `UNAUTHENTICATED`); every other variant
/// is a configuration or environment failure, raised at start or by the dev tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Unauthenticated(#[from] TokenError),
    #[error("invalid auth config: {0}")]
    InvalidConfig(String),
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file `{path}`: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("jwks from `{source_name}`: {reason}")]
    Jwks { source_name: String, reason: String },
    #[error("unknown role `{0}`: expected one of agent, approver, admin, auditor")]
    UnknownRole(String),
    #[error("cannot mint token: {0}")]
    Mint(String),
}

impl Error {
    /// Whether this is a refused token (as opposed to a configuration failure).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Error::Unauthenticated(_))
    }

    /// The token failure, if this is one.
    pub fn token_error(&self) -> Option<&TokenError> {
        match self {
            Error::Unauthenticated(e) => Some(e),
            _ => None,
        }
    }
}

/// Longest token-supplied text echoed back in an error message.
const MAX_ECHO_CHARS: usize = 64;

/// Makes untrusted text safe to echo: at most [`MAX_ECHO_CHARS`] characters, control characters
/// and backticks replaced.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| if c.is_control() || c == '`' { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push('…');
    }
    out
}
