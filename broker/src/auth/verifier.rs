//! The per-RPC token check.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::config::AuthConfig;
use super::jwks_http::{Fetcher, JwksUrl};
use super::keys::{self, JwksOrigin, KeyEntry, KeySet, MAX_JWKS_BYTES, MIN_HMAC_SECRET_BYTES};
use super::token_cache::{TokenCache, MAX_CACHED_TOKEN_BYTES};
use super::{sanitize, Error, Principal, Role, TokenError};

/// At most one `jwks_url` refresh per this interval is triggered by tokens naming an unknown
/// `kid` (the periodic refresh is separate).
const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed refresh, retry after at most this long.
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(30);

/// Verifies bearer tokens. Cheap to clone; all clones share keys and the `jwks_url` refresher,
/// which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// One validation per accepted algorithm: the only algorithms ever accepted.
    validations: HashMap<Algorithm, Validation>,
    static_keys: KeySet,
    remote: Option<Arc<Remote>>,
    refresher: Option<tokio::task::AbortHandle>,
    max_token_bytes: usize,
    /// Tokens already verified (`token_cache.rs`).
    verified: TokenCache,
    roles_claim: String,
    user_claim: String,
    tenant_claim: String,
    groups_claim: String,
    person_claim: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

/// The keys of `jwks_url` and how to refresh them.
struct Remote {
    url: JwksUrl,
    fetcher: Fetcher,
    keys: RwLock<Generation>,
    /// Kids of the static keys: a remote key may not shadow them.
    static_kids: HashSet<String>,
    wake: Notify,
    last_kid_refresh: Mutex<Option<Instant>>,
}

/// The keys of one successful fetch, numbered: tokens verified with an older generation are verified
/// again (the verified-token cache checks it).
struct Generation {
    number: u64,
    keys: Arc<KeySet>,
}

impl Remote {
    fn snapshot(&self) -> Arc<KeySet> {
        self.generation().1
    }

    fn generation(&self) -> (u64, Arc<KeySet>) {
        let current = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        (current.number, Arc::clone(&current.keys))
    }

    /// Asks the refresher for a fetch, at most once per [`UNKNOWN_KID_REFRESH_INTERVAL`].
    fn request_refresh(&self) {
        let mut last = self
            .last_kid_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_REFRESH_INTERVAL) {
            *last = Some(now);
            self.wake.notify_one();
        }
    }

    /// Fetches the set and swaps it in; on failure the previous keys stay.
    async fn refresh(&self) -> Result<usize, String> {
        let body = self
            .fetcher
            .get(
                &self.url,
                usize::try_from(MAX_JWKS_BYTES).unwrap_or(usize::MAX),
            )
            .await?;
        let parsed = keys::parse_jwks(&body, JwksOrigin::Url, self.url.as_str())?;
        for skipped in &parsed.skipped {
            tracing::debug!(jwks = %self.url.as_str(), "skipped {skipped}");
        }
        let mut entries = parsed.keys;
        entries.retain(|e| match &e.kid {
            Some(kid) if self.static_kids.contains(kid) => {
                tracing::warn!(
                    jwks = %self.url.as_str(),
                    kid = %sanitize(kid),
                    "jwks key ignored: its kid is already used by a configured key"
                );
                false
            }
            _ => true,
        });
        let set = KeySet::new(entries)?;
        if set.len() == 0 {
            return Err("the key set holds no usable signature key".to_owned());
        }
        let count = set.len();
        let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        current.number += 1;
        current.keys = Arc::new(set);
        Ok(count)
    }
}

async fn refresh_loop(remote: Arc<Remote>, period: Duration) {
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = remote.wake.notified() => {}
        }
        match remote.refresh().await {
            Ok(count) => {
                tracing::debug!(jwks = %remote.url.as_str(), keys = count, "jwks refreshed");
                next = tokio::time::Instant::now() + period;
            }
            Err(reason) => {
                tracing::warn!(
                    jwks = %remote.url.as_str(),
                    %reason,
                    "jwks refresh failed; keeping the previous keys"
                );
                next = tokio::time::Instant::now() + period.min(FAILED_REFRESH_RETRY);
            }
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut algorithms: Vec<String> = self
            .inner
            .validations
            .keys()
            .map(|a| format!("{a:?}"))
            .collect();
        algorithms.sort();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .field("static_keys", &self.inner.static_keys.len())
            .field(
                "jwks_url",
                &self
                    .inner
                    .remote
                    .as_ref()
                    .map(|r| r.url.as_str().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Validates `cfg`, loads every key source and, with `jwks_url`, fetches the key set once
    /// and starts its refresher (this needs a Tokio runtime).
    ///
    /// `dev_secret`: the dev issuer's HMAC key, used when no other key source is configured.
    pub async fn from_config(cfg: &AuthConfig, dev_secret: Option<Vec<u8>>) -> Result<Self, Error> {
        cfg.validate()?;
        let algorithms = cfg.accepted_algorithms()?;
        let accepted_list = algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");

        // Keys named explicitly must be usable with an accepted algorithm.
        let mut explicit: Vec<KeyEntry> = Vec::new();
        if cfg.has_key_source() {
            if dev_secret.is_some() {
                tracing::debug!("dev issuer key not used: other key sources are configured");
            }
        } else {
            let secret = dev_secret.ok_or_else(|| {
                Error::InvalidConfig(
                    "no key source is configured: set `hmac_secret_file`, `public_keys`, \
                     `jwks_file` or `jwks_url`"
                        .to_owned(),
                )
            })?;
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(Error::InvalidConfig(format!(
                    "the dev issuer key is {} bytes, at least {MIN_HMAC_SECRET_BYTES} are required",
                    secret.len()
                )));
            }
            explicit.push(keys::hmac_entry(&secret, "dev issuer key".to_owned()));
        }
        if let Some(path) = &cfg.hmac_secret_file {
            explicit.push(keys::load_hmac_secret(path)?);
        }
        for pk in &cfg.public_keys {
            explicit.push(keys::load_pem(&pk.path, pk.kid.clone())?);
        }
        for entry in &explicit {
            if !algorithms.iter().any(|a| entry.accepts(*a)) {
                return Err(Error::InvalidConfig(format!(
                    "{} cannot verify any accepted algorithm ({accepted_list})",
                    entry.origin
                )));
            }
        }
        // A key set may hold keys for algorithms we do not accept: those are left out.
        if let Some(path) = &cfg.jwks_file {
            let mut from_file = keys::load_jwks_file(path)?;
            from_file.retain(|e| algorithms.iter().any(|a| e.accepts(*a)));
            explicit.extend(from_file);
        }
        let static_keys = KeySet::new(explicit).map_err(Error::InvalidConfig)?;

        let accepts_any = |e: &KeyEntry| algorithms.iter().any(|a| e.accepts(*a));
        let remote = match &cfg.jwks_url {
            None => None,
            Some(url) => {
                let url = JwksUrl::parse(url)
                    .map_err(|reason| Error::InvalidConfig(format!("`jwks_url`: {reason}")))?;
                let jwks_error = |reason: String| Error::Jwks {
                    source_name: url.as_str().to_owned(),
                    reason,
                };
                let fetcher = Fetcher::new().map_err(jwks_error)?;
                let remote = Arc::new(Remote {
                    url: url.clone(),
                    fetcher,
                    keys: RwLock::new(Generation {
                        number: 0,
                        keys: Arc::new(KeySet::default()),
                    }),
                    static_kids: static_keys.iter().filter_map(|e| e.kid.clone()).collect(),
                    wake: Notify::new(),
                    last_kid_refresh: Mutex::new(None),
                });
                let count = remote.refresh().await.map_err(jwks_error)?;
                tracing::info!(jwks = %url.as_str(), keys = count, "jwks loaded");
                Some(remote)
            }
        };

        let usable = static_keys.iter().any(accepts_any)
            || remote
                .as_ref()
                .is_some_and(|r| r.snapshot().iter().any(accepts_any));
        if !usable {
            return Err(Error::InvalidConfig(format!(
                "no configured key can verify an accepted algorithm ({accepted_list})"
            )));
        }
        // Started last, so that no error path leaves a refresher behind.
        let refresher = remote
            .as_ref()
            .map(|r| tokio::spawn(refresh_loop(Arc::clone(r), cfg.jwks_refresh)).abort_handle());

        let leeway = cfg.leeway.as_secs();
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.leeway = leeway;
                v.reject_tokens_expiring_in_less_than = 0;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[cfg.issuer.as_str()]);
                v.set_audience(&[cfg.audience.as_str()]);
                (*alg, v)
            })
            .collect();

        Ok(Verifier {
            inner: Arc::new(Inner {
                validations,
                static_keys,
                remote,
                refresher,
                max_token_bytes: cfg.max_token_bytes,
                verified: TokenCache::new(MAX_CACHED_TOKEN_BYTES),
                roles_claim: cfg.roles_claim.clone(),
                user_claim: cfg.user_claim.clone(),
                tenant_claim: cfg.tenant_claim.clone(),
                groups_claim: cfg.groups_claim.clone(),
                person_claim: cfg.person_claim.clone(),
            }),
        })
    }

    /// Verifies a bearer token (without the `Bearer ` prefix) and returns its principal.
    ///
    /// Synchronous, no I/O: it runs on every RPC. A token naming a `kid` unknown to
    /// a `jwks_url` verifier is refused, and triggers one (rate-limited) background refresh so
    /// that a retry can succeed after the identity provider rotated its keys.
    pub fn verify(&self, bearer_token: &str) -> Result<Principal, Error> {
        self.verify_token(bearer_token)
            .map_err(Error::Unauthenticated)
    }

    fn verify_token(&self, token: &str) -> Result<Principal, TokenError> {
        let inner = &*self.inner;
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > inner.max_token_bytes {
            return Err(TokenError::TooLarge {
                max: inner.max_token_bytes,
            });
        }
        // Static keys never change: generation 0 when there is no `jwks_url`.
        let (generation, remote_keys) = match &inner.remote {
            Some(remote) => {
                let (number, keys) = remote.generation();
                (number, Some(keys))
            }
            None => (0, None),
        };
        let now = unix_now();
        if let Some(principal) = inner.verified.get(token, generation, now) {
            return Ok(principal);
        }
        let header = parse_header(token)?;
        let validation = inner
            .validations
            .get(&header.alg)
            .ok_or_else(|| TokenError::AlgorithmNotAccepted(format!("{:?}", header.alg)))?;
        let key = match select_key(&inner.static_keys, remote_keys.as_deref(), &header) {
            Ok(key) => key,
            Err(e @ TokenError::UnknownKeyId(_)) => {
                if let Some(remote) = &inner.remote {
                    remote.request_refresh();
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // jsonwebtoken checks the signature, then the registered claims; the claims themselves are
        // read once more below, strictly (its own parse would keep the last of two equal keys).
        jsonwebtoken::decode::<IgnoredAny>(token, key, validation)
            .map_err(|e| map_jwt_error(&e, token))?;
        let claims = strict_claims(token)?;
        let not_before = claims.get("nbf").and_then(numeric_date);
        let principal = self.principal(claims)?;
        inner
            .verified
            .put(token, generation, not_before, &principal, now);
        Ok(principal)
    }

    fn principal(&self, mut claims: Map<String, Value>) -> Result<Principal, TokenError> {
        let inner = &*self.inner;
        let subject = match claims.remove("sub") {
            None | Some(Value::Null) => return Err(TokenError::MissingClaim("sub".to_owned())),
            Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => s,
            Some(_) => return Err(TokenError::InvalidClaim("sub".to_owned())),
        };
        // jsonwebtoken also accepts an array `iss`; a token has exactly one issuer.
        if !matches!(claims.get("iss"), Some(Value::String(_))) {
            return Err(TokenError::InvalidIssuer);
        }
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or_else(|| TokenError::InvalidClaim("exp".to_owned()))?;
        for optional in ["iat", "nbf"] {
            if claims
                .get(optional)
                .is_some_and(|v| !v.is_null() && numeric_date(v).is_none())
            {
                return Err(TokenError::InvalidClaim(optional.to_owned()));
            }
        }
        // Read before the claims below are taken out of the map (validate() keeps it apart from them).
        let person = if inner.person_claim == "sub" {
            Some(subject.clone())
        } else {
            optional_string(&mut claims, &inner.person_claim)?
        };
        let token_id = optional_string(&mut claims, "jti")?;
        let user = optional_string(&mut claims, &inner.user_claim)?;
        let tenant = optional_string(&mut claims, &inner.tenant_claim)?;
        let roles = roles(claims.get(&inner.roles_claim), &inner.roles_claim)?;
        let groups = groups(claims.get(&inner.groups_claim), &inner.groups_claim)?;
        Ok(Principal {
            subject,
            user,
            tenant,
            person,
            roles,
            groups,
            token_id,
            expires_at,
        })
    }
}

/// What the verifier reads from the header before choosing a key.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

/// `typ` values accepted (compared ignoring ASCII case, RFC 7515 4.1.9): a JWT, or an OAuth access
/// token (RFC 9068). Other signed tokens (`dpop+jwt`, `secevent+jwt`, `logout+jwt`, ...) are not
/// access tokens, even when the same key signed them.
const ACCEPTED_TYPES: [&str; 3] = ["JWT", "at+jwt", "application/at+jwt"];

/// Reads `alg`, `crit`, `typ` and `kid`; every other header field (`jku`, `x5u`, `jwk`, `x5c`...)
/// is ignored.
fn parse_header(token: &str) -> Result<Header, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let fields = strict_object(header, "header")?;
    let alg = match fields.get("alg") {
        Some(Value::String(alg)) => alg,
        _ => return Err(TokenError::Malformed),
    };
    if alg.trim().eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgorithmNone);
    }
    let alg =
        Algorithm::from_str(alg).map_err(|_| TokenError::AlgorithmNotAccepted(sanitize(alg)))?;
    if fields.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    match fields.get("typ") {
        None => {}
        Some(Value::String(typ)) if ACCEPTED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(typ)) => {}
        Some(Value::String(typ)) => return Err(TokenError::TypeNotAccepted(sanitize(typ))),
        Some(other) => return Err(TokenError::TypeNotAccepted(sanitize(&other.to_string()))),
    }
    let kid = match fields.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(Header { alg, kid })
}

/// Picks the key for `header` from the broker's own key map, never from the token: the `kid`
/// names a key of the map, or, without `kid`, the one key able to verify `alg` is used.
fn select_key<'k>(
    static_keys: &'k KeySet,
    remote: Option<&'k KeySet>,
    header: &Header,
) -> Result<&'k DecodingKey, TokenError> {
    match &header.kid {
        Some(kid) => {
            let entry = static_keys
                .get(kid)
                .or_else(|| remote.and_then(|r| r.get(kid)))
                .ok_or_else(|| TokenError::UnknownKeyId(sanitize(kid)))?;
            if !entry.accepts(header.alg) {
                return Err(TokenError::KeyAlgorithmMismatch {
                    kid: sanitize(kid),
                    alg: format!("{:?}", header.alg),
                });
            }
            Ok(&entry.key)
        }
        None => {
            let mut candidates = static_keys
                .iter()
                .chain(remote.into_iter().flat_map(KeySet::iter))
                .filter(|e| e.accepts(header.alg));
            match (candidates.next(), candidates.next()) {
                (Some(entry), None) => Ok(&entry.key),
                (None, _) => Err(TokenError::NoKey(format!("{:?}", header.alg))),
                (Some(_), Some(_)) => Err(TokenError::AmbiguousKey),
            }
        }
    }
}

/// One base64url part of the token as a strict JSON object (`part` names it in errors).
fn strict_object(encoded: &str, part: &'static str) -> Result<Map<String, Value>, TokenError> {
    let raw = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed)?;
    match crate::json::from_slice(&raw) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) | Err(crate::json::Error::Syntax(_) | crate::json::Error::NulInKey { .. }) => {
            Err(TokenError::Malformed)
        }
        Err(crate::json::Error::DuplicateKey { path }) => {
            Err(TokenError::DuplicateField { part, name: path })
        }
    }
}

/// The claims, strictly parsed. Called once the signature has been verified.
fn strict_claims(token: &str) -> Result<Map<String, Value>, TokenError> {
    let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
    strict_object(payload, "claims")
}

/// The clock jsonwebtoken checks `exp` and `nbf` against, in unix seconds.
fn unix_now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z. Later (or negative) dates are not
/// dates any issuer means; refusing them keeps arithmetic on them far from overflow.
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A NumericDate (integer or fractional seconds, RFC 7519), as unix seconds, within
/// `0..=MAX_NUMERIC_DATE`.
fn numeric_date(value: &Value) -> Option<i64> {
    let seconds = match value.as_i64() {
        Some(i) => i,
        // Integers beyond i64 and fractions: `as` saturates, non-finite values are refused.
        None => value
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)?,
    };
    (0..=MAX_NUMERIC_DATE).contains(&seconds).then_some(seconds)
}

/// A claim that is absent (or null), or a non-empty string. Claims become the trail's agent, user and
/// tenant, which no database column stores with a NUL: such a token is refused.
fn optional_string(
    claims: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, TokenError> {
    match claims.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Ok(Some(s)),
        Some(_) => Err(TokenError::InvalidClaim(name.to_owned())),
    }
}

/// The roles claim: an array of names or one name; unknown names are ignored.
fn roles(value: Option<&Value>, name: &str) -> Result<BTreeSet<Role>, TokenError> {
    let invalid = || TokenError::InvalidClaim(name.to_owned());
    let mut out = BTreeSet::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(role)) => out.extend(Role::from_str(role).ok()),
        Some(Value::Array(items)) => {
            for item in items {
                let role = item.as_str().ok_or_else(invalid)?;
                out.extend(Role::from_str(role).ok());
            }
        }
        Some(_) => return Err(invalid()),
    }
    Ok(out)
}

/// The most groups, and the longest group name, a token may carry.
const MAX_GROUPS: usize = 256;
const MAX_GROUP_LEN: usize = 256;

/// Groups: one string or an array of strings; anything else (or too many, or too long) is refused.
fn groups(value: Option<&Value>, name: &str) -> Result<BTreeSet<String>, TokenError> {
    let invalid = || TokenError::InvalidClaim(name.to_owned());
    let names: Vec<&str> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(g)) => vec![g.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(invalid))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid()),
    };
    if names.len() > MAX_GROUPS
        || names
            .iter()
            .any(|g| g.is_empty() || g.len() > MAX_GROUP_LEN || g.contains('\0'))
    {
        return Err(invalid());
    }
    Ok(names.into_iter().map(str::to_owned).collect())
}

/// Maps jsonwebtoken's failures to client-safe reasons.
fn map_jwt_error(e: &jsonwebtoken::errors::Error, token: &str) -> TokenError {
    match e.kind() {
        JwtErrorKind::InvalidSignature
        | JwtErrorKind::InvalidEcdsaKey
        | JwtErrorKind::InvalidEddsaKey
        | JwtErrorKind::InvalidRsaKey(_)
        | JwtErrorKind::InvalidKeyFormat => TokenError::InvalidSignature,
        JwtErrorKind::ExpiredSignature => TokenError::Expired,
        JwtErrorKind::ImmatureSignature => TokenError::NotYetValid,
        JwtErrorKind::InvalidIssuer => TokenError::InvalidIssuer,
        JwtErrorKind::InvalidAudience => TokenError::InvalidAudience,
        // jsonwebtoken reports a required claim of the wrong type (a string `exp`) as missing.
        JwtErrorKind::MissingRequiredClaim(claim) if claim_present(token, claim) => {
            TokenError::InvalidClaim(claim.clone())
        }
        JwtErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        JwtErrorKind::InvalidClaimFormat(claim) => TokenError::InvalidClaim(claim.clone()),
        // jsonwebtoken fails on a registered claim named twice, or shaped as an array or object;
        // say which rather than "malformed".
        JwtErrorKind::Json(_) => match strict_claims(token) {
            Err(e @ TokenError::DuplicateField { .. }) => e,
            Ok(claims) => mistyped_claim(&claims).map_or(TokenError::Malformed, |name| {
                TokenError::InvalidClaim(name.to_owned())
            }),
            Err(_) => TokenError::Malformed,
        },
        _ => TokenError::Malformed,
    }
}

/// The first registered claim whose JSON type is wrong: time claims are numbers, `iss` and `sub`
/// strings, `aud` a string or an array of strings.
fn mistyped_claim(claims: &Map<String, Value>) -> Option<&'static str> {
    fn aud_shaped(v: &Value) -> bool {
        v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    }
    type Check = (&'static str, fn(&Value) -> bool);
    let checks: [Check; 6] = [
        ("exp", Value::is_number),
        ("nbf", Value::is_number),
        ("iat", Value::is_number),
        ("iss", Value::is_string),
        ("sub", Value::is_string),
        ("aud", aud_shaped),
    ];
    checks.into_iter().find_map(|(name, ok)| {
        claims
            .get(name)
            .is_some_and(|v| !v.is_null() && !ok(v))
            .then_some(name)
    })
}

/// Whether the payload has `claim` with a non-null value. Only called once the signature has
/// been verified (claims are validated after the signature).
fn claim_present(token: &str, claim: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|raw| serde_json::from_slice::<Map<String, Value>>(&raw).ok())
        .is_some_and(|claims| claims.get(claim).is_some_and(|v| !v.is_null()))
}

/// Extracts the token of an `authorization: Bearer <token>` header value.
pub fn token_from_authorization_header(value: &str) -> Result<&str, Error> {
    let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing.into());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing.into());
    }
    Ok(token)
}
