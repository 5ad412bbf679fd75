//! Authentication configuration: documented defaults and `validate()`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Serialize};

use super::jwks_http::JwksUrl;
use super::Error;

/// Largest accepted clock leeway.
pub(super) const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Bounds of [`AuthConfig::max_token_bytes`].
const MIN_TOKEN_BYTES: usize = 256;
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Bounds of [`AuthConfig::jwks_refresh`].
const MIN_JWKS_REFRESH: Duration = Duration::from_secs(10);
const MAX_JWKS_REFRESH: Duration = Duration::from_secs(24 * 60 * 60);
/// Claims the verifier reads itself; the configurable claims may not reuse them.
const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];
/// Names accepted in [`AuthConfig::algorithms`].
const ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// How tokens are verified. Holds paths and URLs only, never secret material, so `Debug` and
/// serialization are safe to log.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss` of every token.
    pub issuer: String,
    /// Required member of every token's `aud`.
    pub audience: String,
    /// Accepted signature algorithms (jsonwebtoken names: `HS256`, `RS256`, `ES256`, `EdDSA`...).
    /// The token's header never widens this list; `none` is refused.
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf` (at most 300s).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the roles: an array of role names or one name.
    pub roles_claim: String,
    /// Claim holding the user the caller acts for.
    pub user_claim: String,
    /// Claim holding the tenant.
    pub tenant_claim: String,
    /// Claim holding the caller's groups (a string or an array of strings); approvers are matched
    /// against the groups an approval policy names.
    pub groups_claim: String,
    /// Claim naming the person behind a token, for separation of duties: `sub` (the default), or a
    /// claim such as `email` that stays the same across a person's several accounts. An approver whose
    /// token lacks it cannot vote.
    pub person_claim: String,
    /// File holding the HMAC secret (hex, or raw bytes), at least 32 bytes once decoded.
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519).
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JWK set on disk (public keys only), read at start.
    pub jwks_file: Option<PathBuf>,
    /// A JWK set fetched at start and every `jwks_refresh`. `https`, or `http` to
    /// `127.0.0.1`, `[::1]` or `localhost` only.
    pub jwks_url: Option<String>,
    /// Refresh period of `jwks_url`.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_bytes: usize,
}

/// One PEM public key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// Key id the tokens name in their `kid` header; a key without one is only used for tokens
    /// without `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// PEM file (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    pub path: PathBuf,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "broker-dev".to_owned(),
            audience: "agent-broker".to_owned(),
            algorithms: vec!["HS256".to_owned()],
            leeway: Duration::from_secs(30),
            roles_claim: "roles".to_owned(),
            user_claim: "on_behalf_of".to_owned(),
            tenant_claim: "tenant".to_owned(),
            groups_claim: "groups".to_owned(),
            person_claim: "sub".to_owned(),
            hmac_secret_file: None,
            public_keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            max_token_bytes: 8192,
        }
    }
}

impl AuthConfig {
    /// Checks everything that can be checked without reading key files or the network.
    pub fn validate(&self) -> Result<(), Error> {
        if self.issuer.trim().is_empty() {
            return Err(invalid("`issuer` must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(invalid("`audience` must not be empty"));
        }
        let algorithms = self.accepted_algorithms()?;
        if self.leeway > MAX_LEEWAY {
            return Err(invalid(format!(
                "`leeway` is {}, at most {} is allowed",
                humantime::format_duration(self.leeway),
                humantime::format_duration(MAX_LEEWAY)
            )));
        }
        self.validate_claim_names()?;
        if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&self.max_token_bytes) {
            return Err(invalid(format!(
                "`max_token_bytes` is {}, expected {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES}",
                self.max_token_bytes
            )));
        }
        if !(MIN_JWKS_REFRESH..=MAX_JWKS_REFRESH).contains(&self.jwks_refresh) {
            return Err(invalid(format!(
                "`jwks_refresh` is {}, expected {} to {}",
                humantime::format_duration(self.jwks_refresh),
                humantime::format_duration(MIN_JWKS_REFRESH),
                humantime::format_duration(MAX_JWKS_REFRESH)
            )));
        }
        if let Some(url) = &self.jwks_url {
            JwksUrl::parse(url).map_err(|reason| invalid(format!("`jwks_url`: {reason}")))?;
        }
        let mut kids = HashSet::new();
        for key in &self.public_keys {
            if let Some(kid) = &key.kid {
                if kid.is_empty() {
                    return Err(invalid(format!(
                        "public key `{}` has an empty `kid`",
                        key.path.display()
                    )));
                }
                if !kids.insert(kid.as_str()) {
                    return Err(invalid(format!(
                        "public key id `{kid}` is configured twice"
                    )));
                }
            }
        }
        if self.hmac_secret_file.is_some()
            && !algorithms
                .iter()
                .any(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err(invalid(
                "`hmac_secret_file` is set but no HMAC algorithm (HS256, HS384, HS512) is accepted",
            ));
        }
        Ok(())
    }

    /// Whether any key source besides the dev issuer's is configured.
    pub(super) fn has_key_source(&self) -> bool {
        self.hmac_secret_file.is_some()
            || !self.public_keys.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// The accepted algorithms, parsed and deduplicated.
    pub(super) fn accepted_algorithms(&self) -> Result<Vec<Algorithm>, Error> {
        if self.algorithms.is_empty() {
            return Err(invalid("`algorithms` must not be empty"));
        }
        let mut out: Vec<Algorithm> = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let alg = parse_algorithm(name)?;
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }

    fn validate_claim_names(&self) -> Result<(), Error> {
        let claims = [
            ("roles_claim", &self.roles_claim),
            ("user_claim", &self.user_claim),
            ("tenant_claim", &self.tenant_claim),
            ("groups_claim", &self.groups_claim),
        ];
        for (field, name) in claims {
            if name.is_empty() {
                return Err(invalid(format!("`{field}` must not be empty")));
            }
            if REGISTERED_CLAIMS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "`{field}` is `{name}`, a registered claim the verifier reads itself"
                )));
            }
        }
        let mut names: Vec<&String> = claims.iter().map(|(_, n)| *n).collect();
        names.sort();
        names.dedup();
        if names.len() != claims.len() {
            return Err(invalid(
                "`roles_claim`, `user_claim`, `tenant_claim` and `groups_claim` must be different claims",
            ));
        }
        // `sub` is the default; any other registered claim, or one of the above, names no person.
        let person = &self.person_claim;
        if person != "sub" {
            if person.is_empty() {
                return Err(invalid("`person_claim` must not be empty"));
            }
            if REGISTERED_CLAIMS.contains(&person.as_str()) {
                return Err(invalid(format!(
                    "`person_claim` is `{person}`, a registered claim other than `sub`"
                )));
            }
            if let Some((field, _)) = claims.iter().find(|(_, n)| *n == person) {
                return Err(invalid(format!(
                    "`person_claim` is `{person}`, already used as `{field}`"
                )));
            }
        }
        Ok(())
    }
}

/// Parses a configured algorithm name; `none` (any casing) is refused.
fn parse_algorithm(name: &str) -> Result<Algorithm, Error> {
    if name.trim().eq_ignore_ascii_case("none") {
        return Err(invalid("algorithm `none` is never accepted"));
    }
    Algorithm::from_str(name).map_err(|_| {
        invalid(format!(
            "unknown algorithm `{name}`: expected one of {ALGORITHM_NAMES}"
        ))
    })
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConfig(reason.into())
}
