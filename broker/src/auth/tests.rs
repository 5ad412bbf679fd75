//! Tests of the token verifier and the dev issuer, one security rule per test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::dev::{self, TokenRequest};
use super::*;

/// Not hex, so a secret file holding it is read as raw text.
pub(super) const SECRET: &[u8] = b"test-hmac-secret-for-unit-tests-only";
pub(super) const RSA1_KEY: &[u8] = include_bytes!("testdata/rsa1.key.pem");
pub(super) const RSA1_PUB: &[u8] = include_bytes!("testdata/rsa1.pub.pem");
pub(super) const RSA2_KEY: &[u8] = include_bytes!("testdata/rsa2.key.pem");
const RSA2_PUB: &[u8] = include_bytes!("testdata/rsa2.pub.pem");
const RSA1024_PUB: &[u8] = include_bytes!("testdata/rsa1024.pub.pem");
pub(super) const EC256_KEY: &[u8] = include_bytes!("testdata/ec256.key.pem");
pub(super) const EC256_PUB: &[u8] = include_bytes!("testdata/ec256.pub.pem");
const ED25519_KEY: &[u8] = include_bytes!("testdata/ed25519.key.pem");
const ED25519_PUB: &[u8] = include_bytes!("testdata/ed25519.pub.pem");

pub(super) fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

pub(super) fn claims() -> Value {
    json!({
        "iss": "broker-dev",
        "aud": "agent-broker",
        "sub": "agent-7",
        "iat": now(),
        "exp": now() + 600,
    })
}

pub(super) fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

pub(super) fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

pub(super) fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
}

fn rs256(claims: &Value, kid: Option<&str>, private_pem: &[u8]) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    sign(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(private_pem).unwrap(),
    )
}

pub(super) fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A token assembled by hand, signature given verbatim.
pub(super) fn craft(header: &Value, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims))
}

/// A token assembled by hand, HMAC-signed with `secret` over exactly the given parts.
pub(super) fn craft_hmac(
    header_part: &str,
    payload_part: &str,
    secret: &[u8],
    alg: Algorithm,
) -> String {
    let message = format!("{header_part}.{payload_part}");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), alg)
            .unwrap();
    format!("{message}.{signature}")
}

pub(super) fn token_error(result: Result<Principal, Error>) -> TokenError {
    match result {
        Err(Error::Unauthenticated(e)) => e,
        other => panic!("expected a token error, got {other:?}"),
    }
}

async fn dev_verifier() -> Verifier {
    Verifier::from_config(&AuthConfig::default(), Some(SECRET.to_vec()))
        .await
        .unwrap()
}

pub(super) fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn rs256_config(dir: &Path, kid: Option<&str>) -> AuthConfig {
    AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        public_keys: vec![PublicKeyConfig {
            kid: kid.map(str::to_owned),
            path: write(dir, "rsa1.pub.pem", RSA1_PUB),
        }],
        ..AuthConfig::default()
    }
}

pub(super) fn jwk(private_pem: &[u8], alg: Algorithm, kid: &str) -> Jwk {
    let key = match alg.family() {
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(private_pem),
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(private_pem),
        _ => EncodingKey::from_rsa_pem(private_pem),
    };
    let mut jwk = Jwk::from_encoding_key(&key.unwrap(), alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

fn jwks_json(keys: Vec<Jwk>) -> String {
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

// ---------------------------------------------------------------- the happy path

#[tokio::test]
async fn valid_hs256_token_gives_its_principal() {
    let verifier = dev_verifier().await;
    let mut c = claims();
    c["roles"] = json!(["agent", "auditor"]);
    c["on_behalf_of"] = json!("alice@example.com");
    c["tenant"] = json!("acme");
    c["jti"] = json!("tok-1");
    let exp = c["exp"].as_i64().unwrap();
    let principal = verifier.verify(&hs256(&c)).unwrap();
    assert_eq!(
        principal,
        Principal {
            subject: "agent-7".to_owned(),
            user: Some("alice@example.com".to_owned()),
            tenant: Some("acme".to_owned()),
            person: Some("agent-7".to_owned()),
            roles: [Role::Agent, Role::Auditor].into_iter().collect(),
            groups: Default::default(),
            token_id: Some("tok-1".to_owned()),
            expires_at: exp,
        }
    );
    assert!(principal.has_role(Role::Agent));
    assert!(!principal.has_role(Role::Admin));
}

#[tokio::test]
async fn roles_claim_shapes() {
    let verifier = dev_verifier().await;
    let roles = |value: Option<Value>| {
        let c = match value {
            Some(v) => with(claims(), "roles", v),
            None => claims(),
        };
        verifier
            .verify(&hs256(&c))
            .map(|p| p.roles.into_iter().collect::<Vec<_>>())
    };
    assert_eq!(
        roles(Some(json!("approver"))).unwrap(),
        vec![Role::Approver]
    );
    assert_eq!(
        roles(Some(json!(["admin", "superuser", "Agent", "admin"]))).unwrap(),
        vec![Role::Admin],
        "unknown and miscased names are ignored"
    );
    assert!(roles(None).unwrap().is_empty());
    assert!(roles(Some(json!([]))).unwrap().is_empty());
    assert_eq!(
        token_error(roles(Some(json!(["agent", 7]))).map(|_| unreachable_principal())),
        TokenError::InvalidClaim("roles".to_owned())
    );
    assert_eq!(
        token_error(roles(Some(json!({"agent": true}))).map(|_| unreachable_principal())),
        TokenError::InvalidClaim("roles".to_owned())
    );
}

fn unreachable_principal() -> Principal {
    panic!("the token should have been refused")
}

#[tokio::test]
async fn configured_claim_names_are_used() {
    let cfg = AuthConfig {
        roles_claim: "https://example.com/roles".to_owned(),
        user_claim: "act_for".to_owned(),
        tenant_claim: "org".to_owned(),
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg, Some(SECRET.to_vec()))
        .await
        .unwrap();
    let mut c = claims();
    c["https://example.com/roles"] = json!(["admin"]);
    c["act_for"] = json!("bob");
    c["org"] = json!("initech");
    c["roles"] = json!(["agent"]);
    c["tenant"] = json!("ignored");
    let p = verifier.verify(&hs256(&c)).unwrap();
    assert_eq!(p.roles.into_iter().collect::<Vec<_>>(), vec![Role::Admin]);
    assert_eq!(p.user.as_deref(), Some("bob"));
    assert_eq!(p.tenant.as_deref(), Some("initech"));
}

#[tokio::test]
async fn the_person_is_the_subject_or_the_configured_claim() {
    let p = dev_verifier().await.verify(&hs256(&claims())).unwrap();
    assert_eq!(p.person, Some(p.subject.clone()), "`sub` by default");

    let cfg = AuthConfig {
        person_claim: "email".to_owned(),
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg, Some(SECRET.to_vec()))
        .await
        .unwrap();
    let p = verifier
        .verify(&hs256(&with(claims(), "email", json!("Bob@Example.com"))))
        .unwrap();
    assert_eq!(p.person.as_deref(), Some("Bob@Example.com"));
    assert_eq!(verifier.verify(&hs256(&claims())).unwrap().person, None);
    assert_eq!(
        token_error(verifier.verify(&hs256(&with(claims(), "email", json!(["a"]))))),
        TokenError::InvalidClaim("email".to_owned())
    );

    for bad in ["", "exp", "roles", "groups", "tenant", "on_behalf_of"] {
        let cfg = AuthConfig {
            person_claim: bad.to_owned(),
            ..AuthConfig::default()
        };
        assert!(cfg.validate().is_err(), "person_claim `{bad}`");
    }
}

#[tokio::test]
async fn user_and_tenant_claims_must_be_non_empty_strings() {
    let verifier = dev_verifier().await;
    let err = |key: &str, v: Value| token_error(verifier.verify(&hs256(&with(claims(), key, v))));
    assert_eq!(
        err("tenant", json!(42)),
        TokenError::InvalidClaim("tenant".to_owned())
    );
    assert_eq!(
        err("tenant", json!("")),
        TokenError::InvalidClaim("tenant".to_owned())
    );
    assert_eq!(
        err("on_behalf_of", json!(["a"])),
        TokenError::InvalidClaim("on_behalf_of".to_owned())
    );
    assert_eq!(
        err("jti", json!(1)),
        TokenError::InvalidClaim("jti".to_owned())
    );
    let p = verifier
        .verify(&hs256(&with(claims(), "tenant", Value::Null)))
        .unwrap();
    assert_eq!(p.tenant, None);
}

// ---------------------------------------------------------------- time claims

#[tokio::test]
async fn expired_token_is_refused() {
    let verifier = dev_verifier().await;
    let err = token_error(verifier.verify(&hs256(&with(claims(), "exp", json!(now() - 120)))));
    assert_eq!(err, TokenError::Expired);
    assert_eq!(err.to_string(), "token expired");
    assert_eq!(err.reason(), "TOKEN_EXPIRED");
    // Within the 30s leeway.
    assert!(verifier
        .verify(&hs256(&with(claims(), "exp", json!(now() - 10))))
        .is_ok());
}

#[tokio::test]
async fn leeway_comes_from_config() {
    let cfg = AuthConfig {
        leeway: Duration::ZERO,
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg, Some(SECRET.to_vec()))
        .await
        .unwrap();
    let err = token_error(verifier.verify(&hs256(&with(claims(), "exp", json!(now() - 10)))));
    assert_eq!(err, TokenError::Expired);
}

#[tokio::test]
async fn token_not_valid_yet_is_refused() {
    let verifier = dev_verifier().await;
    let err = token_error(verifier.verify(&hs256(&with(claims(), "nbf", json!(now() + 300)))));
    assert_eq!(err, TokenError::NotYetValid);
    assert!(verifier
        .verify(&hs256(&with(claims(), "nbf", json!(now() + 5))))
        .is_ok());
}

#[tokio::test]
async fn time_claims_of_the_wrong_type_are_refused() {
    let verifier = dev_verifier().await;
    let exp_str = json!((now() + 600).to_string());
    let err = |key: &str, v: Value| token_error(verifier.verify(&hs256(&with(claims(), key, v))));
    assert_eq!(
        err("exp", exp_str),
        TokenError::InvalidClaim("exp".to_owned())
    );
    assert_eq!(
        err("exp", json!(-5)),
        TokenError::InvalidClaim("exp".to_owned())
    );
    assert_eq!(
        err("nbf", json!("yesterday")),
        TokenError::InvalidClaim("nbf".to_owned())
    );
    assert_eq!(
        err("iat", json!("now")),
        TokenError::InvalidClaim("iat".to_owned())
    );
    // A fractional NumericDate is valid.
    let exp = now() + 600;
    let p = verifier
        .verify(&hs256(&with(claims(), "exp", json!(exp as f64 + 0.5))))
        .unwrap();
    assert_eq!(p.expires_at, exp);
}

// ---------------------------------------------------------------- iss, aud, sub

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let verifier = dev_verifier().await;
    let err = token_error(verifier.verify(&hs256(&with(claims(), "iss", json!("evil-idp")))));
    assert_eq!(err, TokenError::InvalidIssuer);
    assert_eq!(err.to_string(), "token issuer is not accepted");
    // A token has one issuer, never a list.
    let err = token_error(verifier.verify(&hs256(&with(claims(), "iss", json!(["broker-dev"])))));
    assert_eq!(err, TokenError::InvalidIssuer);
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let verifier = dev_verifier().await;
    let err = token_error(verifier.verify(&hs256(&with(claims(), "aud", json!("other-service")))));
    assert_eq!(err, TokenError::InvalidAudience);
    assert_eq!(err.to_string(), "token audience is not accepted");
    let err = token_error(verifier.verify(&hs256(&with(claims(), "aud", json!(["a", "b"])))));
    assert_eq!(err, TokenError::InvalidAudience);
    // An audience list naming us is fine.
    let ok = hs256(&with(claims(), "aud", json!(["other", "agent-broker"])));
    assert_eq!(verifier.verify(&ok).unwrap().subject, "agent-7");
}

#[tokio::test]
async fn required_claims_are_required() {
    let verifier = dev_verifier().await;
    for claim in ["iss", "aud", "exp", "sub"] {
        let err = token_error(verifier.verify(&hs256(&without(claims(), claim))));
        assert_eq!(
            err,
            TokenError::MissingClaim(claim.to_owned()),
            "without `{claim}`"
        );
        assert_eq!(err.to_string(), format!("token has no `{claim}` claim"));
    }
    let err = token_error(verifier.verify(&hs256(&with(claims(), "sub", json!("")))));
    assert_eq!(err, TokenError::InvalidClaim("sub".to_owned()));
    let err = token_error(verifier.verify(&hs256(&with(claims(), "sub", json!(12)))));
    assert_eq!(err, TokenError::InvalidClaim("sub".to_owned()));
    let err = token_error(verifier.verify(&hs256(&with(claims(), "aud", json!(12)))));
    assert_eq!(err, TokenError::InvalidClaim("aud".to_owned()));
    let err = token_error(verifier.verify(&hs256(&with(claims(), "iss", Value::Null))));
    assert_eq!(err, TokenError::MissingClaim("iss".to_owned()));
}

// ---------------------------------------------------------------- algorithms

#[tokio::test]
async fn alg_none_is_refused_in_every_spelling() {
    let verifier = dev_verifier().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        for signature in ["", "garbage", "AAAA"] {
            let err = token_error(verifier.verify(&craft(&header, &claims(), signature)));
            assert_eq!(
                err,
                TokenError::AlgorithmNone,
                "alg {alg}, signature {signature:?}"
            );
            assert_eq!(err.to_string(), "algorithm `none` is not accepted");
        }
    }
}

#[tokio::test]
async fn algorithm_not_configured_is_refused() {
    let verifier = dev_verifier().await;
    let header = Header::new(Algorithm::HS512);
    let token = sign(&header, &claims(), &EncodingKey::from_secret(SECRET));
    let err = token_error(verifier.verify(&token));
    assert_eq!(err, TokenError::AlgorithmNotAccepted("HS512".to_owned()));
    assert_eq!(err.to_string(), "algorithm `HS512` is not accepted");

    let header = json!({"alg": "XS256`\u{7}"});
    let err = token_error(verifier.verify(&craft(&header, &claims(), "sig")));
    assert_eq!(
        err,
        TokenError::AlgorithmNotAccepted("XS256??".to_owned()),
        "sanitized echo"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let dir = TempDir::new().unwrap();
    // The classic key confusion: the attacker HMACs with the (public) PEM bytes.
    let forged = sign(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(RSA1_PUB),
    );

    let verifier = Verifier::from_config(&rs256_config(dir.path(), None), None)
        .await
        .unwrap();
    let err = token_error(verifier.verify(&forged));
    assert_eq!(err, TokenError::AlgorithmNotAccepted("HS256".to_owned()));

    // Even with HS256 accepted, the public key never serves as an HMAC secret.
    let mut cfg = rs256_config(dir.path(), None);
    cfg.algorithms = vec!["RS256".to_owned(), "HS256".to_owned()];
    let verifier = Verifier::from_config(&cfg, None).await.unwrap();
    assert_eq!(
        token_error(verifier.verify(&forged)),
        TokenError::NoKey("HS256".to_owned())
    );

    cfg.hmac_secret_file = Some(write(dir.path(), "hmac", SECRET));
    let verifier = Verifier::from_config(&cfg, None).await.unwrap();
    assert_eq!(
        token_error(verifier.verify(&forged)),
        TokenError::InvalidSignature
    );
    // The genuine tokens of both families still pass.
    assert!(verifier.verify(&hs256(&claims())).is_ok());
    assert!(verifier.verify(&rs256(&claims(), None, RSA1_KEY)).is_ok());
}

#[tokio::test]
async fn tampered_signature_is_refused() {
    let verifier = dev_verifier().await;
    let wrong = sign(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    );
    let err = token_error(verifier.verify(&wrong));
    assert_eq!(err, TokenError::InvalidSignature);
    assert_eq!(err.to_string(), "token signature is invalid");

    let token = hs256(&claims());
    let (message, _) = token.rsplit_once('.').unwrap();
    let err = token_error(verifier.verify(&format!("{message}.")));
    assert_eq!(err, TokenError::InvalidSignature);
    // Claims swapped under a valid signature.
    let other = hs256(&with(claims(), "sub", json!("admin")));
    let payload = other.split('.').nth(1).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let spliced = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(
        token_error(verifier.verify(&spliced)),
        TokenError::InvalidSignature
    );
}

// ---------------------------------------------------------------- header fields

#[tokio::test]
async fn crit_header_is_refused() {
    let verifier = dev_verifier().await;
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".to_owned()]);
    let token = sign(&header, &claims(), &EncodingKey::from_secret(SECRET));
    let err = token_error(verifier.verify(&token));
    assert_eq!(err, TokenError::CriticalHeader);
    // `b64: false` (RFC 7797) with crit.
    let header_part = b64(&json!({"alg": "HS256", "b64": false, "crit": ["b64"]}));
    let token = craft_hmac(&header_part, &b64(&claims()), SECRET, Algorithm::HS256);
    assert_eq!(
        token_error(verifier.verify(&token)),
        TokenError::CriticalHeader
    );
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let dir = TempDir::new().unwrap();
    let verifier = Verifier::from_config(&rs256_config(dir.path(), Some("k1")), None)
        .await
        .unwrap();
    assert!(verifier
        .verify(&rs256(&claims(), Some("k1"), RSA1_KEY))
        .is_ok());
    let err = token_error(verifier.verify(&rs256(&claims(), Some("k2"), RSA1_KEY)));
    assert_eq!(err, TokenError::UnknownKeyId("k2".to_owned()));
    assert_eq!(err.to_string(), "token key id `k2` is not known");
    // A key that has no kid is not a wildcard for any kid.
    let verifier = dev_verifier().await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("whatever".to_owned());
    let token = sign(&header, &claims(), &EncodingKey::from_secret(SECRET));
    assert_eq!(
        token_error(verifier.verify(&token)),
        TokenError::UnknownKeyId("whatever".to_owned())
    );
    // A kid that is not a string is malformed.
    let header_part = b64(&json!({"alg": "HS256", "kid": 1}));
    let token = craft_hmac(&header_part, &b64(&claims()), SECRET, Algorithm::HS256);
    assert_eq!(token_error(verifier.verify(&token)), TokenError::Malformed);
}

#[tokio::test]
async fn jku_x5u_jwk_headers_are_ignored() {
    let dir = TempDir::new().unwrap();
    let verifier = Verifier::from_config(&rs256_config(dir.path(), None), None)
        .await
        .unwrap();
    let attacker_url = "https://attacker.example/jwks.json";

    // Signed by the configured key: the extra fields change nothing.
    let mut header = Header::new(Algorithm::RS256);
    header.jku = Some(attacker_url.to_owned());
    header.x5u = Some(attacker_url.to_owned());
    let token = sign(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(RSA1_KEY).unwrap(),
    );
    assert_eq!(verifier.verify(&token).unwrap().subject, "agent-7");

    // Signed by the attacker's key, which the header points to or embeds: refused.
    let token = sign(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(RSA2_KEY).unwrap(),
    );
    assert_eq!(
        token_error(verifier.verify(&token)),
        TokenError::InvalidSignature
    );
    let mut header = Header::new(Algorithm::RS256);
    header.jwk = Some(jwk(RSA2_KEY, Algorithm::RS256, "attacker"));
    header.x5c = Some(vec![
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA".to_owned()
    ]);
    let token = sign(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(RSA2_KEY).unwrap(),
    );
    assert_eq!(
        token_error(verifier.verify(&token)),
        TokenError::InvalidSignature
    );
}

// ---------------------------------------------------------------- shape and size

#[tokio::test]
async fn oversized_token_is_refused_before_parsing() {
    let verifier = dev_verifier().await;
    let huge = "x".repeat(8193);
    let err = token_error(verifier.verify(&huge));
    assert_eq!(err, TokenError::TooLarge { max: 8192 });
    assert_eq!(err.to_string(), "token is larger than 8192 bytes");
    // A valid token padded past the limit with a huge claim.
    let padded = hs256(&with(claims(), "pad", json!("y".repeat(9000))));
    assert_eq!(
        token_error(verifier.verify(&padded)),
        TokenError::TooLarge { max: 8192 }
    );
    assert_eq!(token_error(verifier.verify("")), TokenError::Missing);
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let verifier = dev_verifier().await;
    let good = hs256(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        "!!!.abc.def".to_owned(),
        "abc".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            b64(&json!(["alg", "HS256"])),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("not json"),
            parts[1],
            parts[2]
        ),
        craft(&json!({"typ": "JWT"}), &claims(), "sig"),
        craft(&json!({"alg": 256}), &claims(), "sig"),
    ];
    for token in &cases {
        let err = token_error(verifier.verify(token));
        assert_eq!(err, TokenError::Malformed, "{token}");
        assert_eq!(err.to_string(), "token is malformed");
    }
    // A correctly signed token whose payload is not base64url.
    let token = craft_hmac(parts[0], "!!not-base64!!", SECRET, Algorithm::HS256);
    assert_eq!(token_error(verifier.verify(&token)), TokenError::Malformed);
    // ... or not a JSON object.
    let token = craft_hmac(
        parts[0],
        &URL_SAFE_NO_PAD.encode("[1,2]"),
        SECRET,
        Algorithm::HS256,
    );
    assert_eq!(token_error(verifier.verify(&token)), TokenError::Malformed);
}

// ---------------------------------------------------------------- public keys

#[tokio::test]
async fn rs256_with_a_pem_public_key() {
    let dir = TempDir::new().unwrap();
    let verifier = Verifier::from_config(&rs256_config(dir.path(), None), None)
        .await
        .unwrap();
    let token = rs256(&with(claims(), "roles", json!(["admin"])), None, RSA1_KEY);
    let p = verifier.verify(&token).unwrap();
    assert_eq!(p.subject, "agent-7");
    assert!(p.has_role(Role::Admin));
    assert_eq!(
        token_error(verifier.verify(&rs256(&claims(), None, RSA2_KEY))),
        TokenError::InvalidSignature
    );
    // RS384 is the same family but not accepted.
    let header = Header::new(Algorithm::RS384);
    let token = sign(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(RSA1_KEY).unwrap(),
    );
    assert_eq!(
        token_error(verifier.verify(&token)),
        TokenError::AlgorithmNotAccepted("RS384".to_owned())
    );

    // Two PEM keys with kids: the kid picks one; without kid it is ambiguous.
    let mut cfg = rs256_config(dir.path(), Some("one"));
    cfg.public_keys.push(PublicKeyConfig {
        kid: Some("two".to_owned()),
        path: write(dir.path(), "rsa2.pub.pem", RSA2_PUB),
    });
    let verifier = Verifier::from_config(&cfg, None).await.unwrap();
    assert!(verifier
        .verify(&rs256(&claims(), Some("one"), RSA1_KEY))
        .is_ok());
    assert!(verifier
        .verify(&rs256(&claims(), Some("two"), RSA2_KEY))
        .is_ok());
    assert_eq!(
        token_error(verifier.verify(&rs256(&claims(), Some("two"), RSA1_KEY))),
        TokenError::InvalidSignature
    );
    assert_eq!(
        token_error(verifier.verify(&rs256(&claims(), None, RSA1_KEY))),
        TokenError::AmbiguousKey
    );
}

#[tokio::test]
async fn es256_and_eddsa_with_pem_public_keys() {
    let dir = TempDir::new().unwrap();
    let cfg = AuthConfig {
        algorithms: vec!["ES256".to_owned(), "EdDSA".to_owned(), "ES384".to_owned()],
        public_keys: vec![
            PublicKeyConfig {
                kid: Some("ec".to_owned()),
                path: write(dir.path(), "ec.pem", EC256_PUB),
            },
            PublicKeyConfig {
                kid: Some("ed".to_owned()),
                path: write(dir.path(), "ed.pem", ED25519_PUB),
            },
        ],
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg, None).await.unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec".to_owned());
    let es = sign(
        &header,
        &claims(),
        &EncodingKey::from_ec_pem(EC256_KEY).unwrap(),
    );
    assert_eq!(verifier.verify(&es).unwrap().subject, "agent-7");

    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed".to_owned());
    let ed = sign(
        &header,
        &claims(),
        &EncodingKey::from_ed_pem(ED25519_KEY).unwrap(),
    );
    assert_eq!(verifier.verify(&ed).unwrap().subject, "agent-7");
    // Without kid, exactly one key can verify EdDSA.
    let ed = sign(
        &Header::new(Algorithm::EdDSA),
        &claims(),
        &EncodingKey::from_ed_pem(ED25519_KEY).unwrap(),
    );
    assert!(verifier.verify(&ed).is_ok());

    // The Ed25519 key named by kid never verifies an ES256 token.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ed".to_owned());
    let token = sign(
        &header,
        &claims(),
        &EncodingKey::from_ec_pem(EC256_KEY).unwrap(),
    );
    let err = token_error(verifier.verify(&token));
    assert_eq!(
        err,
        TokenError::KeyAlgorithmMismatch {
            kid: "ed".to_owned(),
            alg: "ES256".to_owned()
        }
    );
    // The P-256 key is pinned to ES256.
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("ec".to_owned());
    let token = craft(&serde_json::to_value(&header).unwrap(), &claims(), "AAAA");
    assert!(matches!(
        token_error(verifier.verify(&token)),
        TokenError::KeyAlgorithmMismatch { .. }
    ));
}

#[tokio::test]
async fn jwks_file_with_two_kids() {
    let dir = TempDir::new().unwrap();
    let jwks = jwks_json(vec![
        jwk(RSA1_KEY, Algorithm::RS256, "key-a"),
        jwk(RSA2_KEY, Algorithm::RS256, "key-b"),
        jwk(EC256_KEY, Algorithm::ES256, "key-ec"),
    ]);
    let cfg = AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        jwks_file: Some(write(dir.path(), "jwks.json", jwks.as_bytes())),
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg, None).await.unwrap();
    let a = verifier
        .verify(&rs256(
            &with(claims(), "sub", json!("a")),
            Some("key-a"),
            RSA1_KEY,
        ))
        .unwrap();
    assert_eq!(a.subject, "a");
    let b = verifier
        .verify(&rs256(
            &with(claims(), "sub", json!("b")),
            Some("key-b"),
            RSA2_KEY,
        ))
        .unwrap();
    assert_eq!(b.subject, "b");
    // The kid selects the key: naming the wrong one fails the signature.
    let err = token_error(verifier.verify(&rs256(&claims(), Some("key-a"), RSA2_KEY)));
    assert_eq!(err, TokenError::InvalidSignature);
    // No kid and two RSA keys: refused rather than tried in turn.
    let err = token_error(verifier.verify(&rs256(&claims(), None, RSA1_KEY)));
    assert_eq!(err, TokenError::AmbiguousKey);
    // The EC key of the set is left out: ES256 is not accepted.
    assert!(
        format!("{verifier:?}").contains("static_keys: 2"),
        "{verifier:?}"
    );
}

#[tokio::test]
async fn jwks_file_rules() {
    let dir = TempDir::new().unwrap();
    let load = |name: &str, body: String| {
        let cfg = AuthConfig {
            algorithms: vec!["RS256".to_owned(), "HS256".to_owned()],
            jwks_file: Some(write(dir.path(), name, body.as_bytes())),
            ..AuthConfig::default()
        };
        async move { Verifier::from_config(&cfg, None).await }
    };
    let oct = json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "kid": "s"}]});
    assert!(
        matches!(load("oct.json", oct.to_string()).await, Err(Error::Jwks { reason, .. }) if reason.contains("oct"))
    );
    let dup = jwks_json(vec![
        jwk(RSA1_KEY, Algorithm::RS256, "k"),
        jwk(RSA2_KEY, Algorithm::RS256, "k"),
    ]);
    assert!(
        matches!(load("dup.json", dup).await, Err(Error::InvalidConfig(r)) if r.contains("twice"))
    );
    // Encryption keys are skipped; only they: no usable key at all.
    let mut enc = jwk(RSA1_KEY, Algorithm::RS256, "enc");
    enc.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
    assert!(
        matches!(load("enc.json", jwks_json(vec![enc])).await, Err(Error::InvalidConfig(r)) if r.contains("no configured key"))
    );
    assert!(matches!(
        load("bad.json", "{\"k\": 1}".to_owned()).await,
        Err(Error::Jwks { .. })
    ));
}

// ---------------------------------------------------------------- jwks_url

/// Serves `bodies` in turn (the last one repeatedly) on 127.0.0.1, one response per connection.
async fn serve_jwks(bodies: Vec<String>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let body = bodies[n.min(bodies.len() - 1)].clone();
            tokio::spawn(async move {
                let request = read_head(&stream).await;
                assert!(
                    request.starts_with("GET /.well-known/jwks.json HTTP/1.1\r\n"),
                    "{request}"
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                write_all(&stream, response.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

async fn read_head(stream: &tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        stream.readable().await.unwrap();
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8(head).unwrap()
}

async fn write_all(stream: &tokio::net::TcpStream, mut data: &[u8]) {
    while !data.is_empty() {
        stream.writable().await.unwrap();
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

fn jwks_url_config(url: String) -> AuthConfig {
    AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        jwks_url: Some(url),
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn jwks_url_is_fetched_at_start() {
    let (url, hits) = serve_jwks(vec![jwks_json(vec![jwk(
        RSA1_KEY,
        Algorithm::RS256,
        "idp-1",
    )])])
    .await;
    let verifier = Verifier::from_config(&jwks_url_config(url), None)
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let p = verifier
        .verify(&rs256(&claims(), Some("idp-1"), RSA1_KEY))
        .unwrap();
    assert_eq!(p.subject, "agent-7");
    // The one key of the set also serves tokens without kid.
    assert!(verifier.verify(&rs256(&claims(), None, RSA1_KEY)).is_ok());
    assert_eq!(
        token_error(verifier.verify(&rs256(&claims(), Some("idp-1"), RSA2_KEY))),
        TokenError::InvalidSignature
    );
}

#[tokio::test]
async fn unknown_kid_triggers_one_rate_limited_refresh() {
    let v1 = jwks_json(vec![jwk(RSA1_KEY, Algorithm::RS256, "old")]);
    let v2 = jwks_json(vec![
        jwk(RSA1_KEY, Algorithm::RS256, "old"),
        jwk(RSA2_KEY, Algorithm::RS256, "new"),
    ]);
    let (url, hits) = serve_jwks(vec![v1, v2]).await;
    let verifier = Verifier::from_config(&jwks_url_config(url), None)
        .await
        .unwrap();
    let rotated = rs256(&claims(), Some("new"), RSA2_KEY);
    assert_eq!(
        token_error(verifier.verify(&rotated)),
        TokenError::UnknownKeyId("new".to_owned())
    );

    let mut accepted = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if verifier.verify(&rotated).is_ok() {
            accepted = true;
            break;
        }
    }
    assert!(
        accepted,
        "the rotated key should be fetched after the unknown kid"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Another unknown kid right away: refused, and no new fetch (rate limit).
    let unknown = rs256(&claims(), Some("nope"), RSA2_KEY);
    assert_eq!(
        token_error(verifier.verify(&unknown)),
        TokenError::UnknownKeyId("nope".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// The verified-token cache must not outlive the key: a token the broker verified (and cached) is
/// refused once a refresh drops its key.
#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_is_dropped() {
    let v1 = jwks_json(vec![jwk(RSA1_KEY, Algorithm::RS256, "old")]);
    let v2 = jwks_json(vec![jwk(RSA2_KEY, Algorithm::RS256, "new")]);
    let (url, hits) = serve_jwks(vec![v1, v2]).await;
    let verifier = Verifier::from_config(&jwks_url_config(url), None)
        .await
        .unwrap();
    let old = rs256(&claims(), Some("old"), RSA1_KEY);
    let first = verifier.verify(&old).unwrap();
    assert_eq!(
        verifier.verify(&old).unwrap(),
        first,
        "a second check of the same token"
    );

    // A token naming the new kid makes the broker fetch the set again, which no longer holds "old".
    let rotated = rs256(&claims(), Some("new"), RSA2_KEY);
    let mut rotated_ok = false;
    for _ in 0..200 {
        if verifier.verify(&rotated).is_ok() {
            rotated_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(rotated_ok, "the rotated key should be fetched");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        token_error(verifier.verify(&old)),
        TokenError::UnknownKeyId("old".to_owned())
    );
}

#[tokio::test]
async fn jwks_url_failures_at_start_are_configuration_errors() {
    let (url, _) = serve_jwks(vec!["<html>".to_owned()]).await;
    let err = Verifier::from_config(&jwks_url_config(url), None)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Jwks { .. }), "{err:?}");
    assert!(!err.is_unauthenticated());

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let err = Verifier::from_config(&jwks_url_config(url), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Jwks { reason, .. } if reason.starts_with("connect")),
        "{err:?}"
    );

    let cfg = jwks_url_config("http://idp.example.com/jwks".to_owned());
    assert!(matches!(
        Verifier::from_config(&cfg, None).await,
        Err(Error::InvalidConfig(_))
    ));
}

// ---------------------------------------------------------------- configuration

#[test]
fn default_config_is_valid_and_documented() {
    let cfg = AuthConfig::default();
    assert!(cfg.validate().is_ok());
    assert_eq!(cfg.issuer, "broker-dev");
    assert_eq!(cfg.audience, "agent-broker");
    assert_eq!(cfg.algorithms, vec!["HS256".to_owned()]);
    assert_eq!(cfg.leeway, Duration::from_secs(30));
    assert_eq!(cfg.max_token_bytes, 8192);
    assert_eq!(cfg.jwks_refresh, Duration::from_secs(300));
    let parsed: AuthConfig =
        serde_json::from_value(json!({"leeway": "1m", "algorithms": ["RS256"]})).unwrap();
    assert_eq!(parsed.leeway, Duration::from_secs(60));
    assert_eq!(parsed.issuer, "broker-dev");
    assert!(serde_json::from_value::<AuthConfig>(json!({"secret": "x"})).is_err());
}

#[test]
fn invalid_configs_are_refused() {
    let refused = |cfg: AuthConfig| match cfg.validate() {
        Err(Error::InvalidConfig(reason)) => reason,
        other => panic!("expected a config error, got {other:?}"),
    };
    let base = AuthConfig::default;
    for none in ["none", "None", "NONE"] {
        let reason = refused(AuthConfig {
            algorithms: vec![none.to_owned()],
            ..base()
        });
        assert!(reason.contains("`none`"), "{reason}");
    }
    assert!(refused(AuthConfig {
        algorithms: vec!["HS1024".to_owned()],
        ..base()
    })
    .contains("HS1024"));
    assert!(refused(AuthConfig {
        algorithms: vec![],
        ..base()
    })
    .contains("algorithms"));
    assert!(refused(AuthConfig {
        leeway: Duration::from_secs(301),
        ..base()
    })
    .contains("leeway"));
    assert!(AuthConfig {
        leeway: Duration::from_secs(300),
        ..base()
    }
    .validate()
    .is_ok());
    assert!(refused(AuthConfig {
        issuer: String::new(),
        ..base()
    })
    .contains("issuer"));
    assert!(refused(AuthConfig {
        audience: " ".to_owned(),
        ..base()
    })
    .contains("audience"));
    assert!(refused(AuthConfig {
        roles_claim: "sub".to_owned(),
        ..base()
    })
    .contains("registered"));
    assert!(refused(AuthConfig {
        tenant_claim: "roles".to_owned(),
        ..base()
    })
    .contains("different"));
    assert!(refused(AuthConfig {
        max_token_bytes: 10,
        ..base()
    })
    .contains("max_token_bytes"));
    assert!(refused(AuthConfig {
        jwks_url: Some("http://idp.example.com/k".to_owned()),
        ..base()
    })
    .contains("https"));
    assert!(AuthConfig {
        jwks_url: Some("http://localhost:8080/k".to_owned()),
        ..base()
    }
    .validate()
    .is_ok());
    let reason = refused(AuthConfig {
        algorithms: vec!["RS256".to_owned()],
        hmac_secret_file: Some("/etc/secret".into()),
        ..base()
    });
    assert!(reason.contains("hmac_secret_file"), "{reason}");
    let key = |kid: &str| PublicKeyConfig {
        kid: Some(kid.to_owned()),
        path: "/k.pem".into(),
    };
    assert!(refused(AuthConfig {
        public_keys: vec![key("a"), key("a")],
        ..base()
    })
    .contains("twice"));
}

#[tokio::test]
async fn key_sources_are_checked_at_start() {
    let dir = TempDir::new().unwrap();
    // Nothing configured and no dev key.
    let err = Verifier::from_config(&AuthConfig::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig(r) if r.contains("no key source")),
        "{err}"
    );
    assert!(!err.is_unauthenticated());
    // Short secrets.
    let err = Verifier::from_config(&AuthConfig::default(), Some(vec![1; 31]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)));
    let short = AuthConfig {
        hmac_secret_file: Some(write(dir.path(), "short", b"0011223344")),
        ..AuthConfig::default()
    };
    assert!(matches!(
        Verifier::from_config(&short, None).await,
        Err(Error::KeyFile { .. })
    ));
    // Missing file.
    let missing = AuthConfig {
        hmac_secret_file: Some(dir.path().join("absent")),
        ..AuthConfig::default()
    };
    assert!(matches!(
        Verifier::from_config(&missing, None).await,
        Err(Error::Io { .. })
    ));
    // Public key files: private key, short RSA, family not accepted.
    let pem = |name: &str, bytes: &[u8], algs: &[&str]| AuthConfig {
        algorithms: algs.iter().map(|a| (*a).to_owned()).collect(),
        public_keys: vec![PublicKeyConfig {
            kid: None,
            path: write(dir.path(), name, bytes),
        }],
        ..AuthConfig::default()
    };
    let err = Verifier::from_config(&pem("priv.pem", RSA1_KEY, &["RS256"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::KeyFile { reason, .. } if reason.contains("private key")),
        "{err}"
    );
    let err = Verifier::from_config(&pem("short.pem", RSA1024_PUB, &["RS256"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::KeyFile { reason, .. } if reason.contains("1024 bits")),
        "{err}"
    );
    let err = Verifier::from_config(&pem("rsa.pem", RSA1_PUB, &["HS256"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig(r) if r.contains("cannot verify")),
        "{err}"
    );
    // The key file contents never reach an error message.
    assert!(!err.to_string().contains("MII"));
}

#[tokio::test]
async fn hmac_secret_file_in_hex_or_raw() {
    let dir = TempDir::new().unwrap();
    for (name, contents) in [
        ("hex", format!("{}\n", hex::encode(SECRET))),
        ("raw", format!("{}\n", String::from_utf8_lossy(SECRET))),
    ] {
        let cfg = AuthConfig {
            hmac_secret_file: Some(write(dir.path(), name, contents.as_bytes())),
            ..AuthConfig::default()
        };
        // The dev key is not used once a real key source is configured.
        let verifier =
            Verifier::from_config(&cfg, Some(b"some-other-dev-key-some-other-dev".to_vec()))
                .await
                .unwrap();
        assert_eq!(
            verifier.verify(&hs256(&claims())).unwrap().subject,
            "agent-7",
            "{name}"
        );
    }
}

// ---------------------------------------------------------------- dev issuer

#[cfg(unix)]
#[test]
fn dev_secret_is_created_private_and_reloaded() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    let (secret, created) = dev::load_or_create_secret(&data_dir).unwrap();
    assert!(created);
    assert_eq!(secret.len(), 32);
    let path = data_dir.join(dev::SECRET_FILE_NAME);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        hex::encode(&secret)
    );

    let (again, created) = dev::load_or_create_secret(&data_dir).unwrap();
    assert!(!created);
    assert_eq!(again, secret);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = dev::load_or_create_secret(&data_dir).unwrap_err();
    assert!(
        matches!(&err, Error::KeyFile { reason, .. } if reason.contains("group or others")),
        "{err}"
    );
    assert!(!err.to_string().contains(&hex::encode(&secret)));

    std::fs::write(&path, hex::encode([7u8; 16])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = dev::load_or_create_secret(&data_dir).unwrap_err();
    assert!(
        matches!(&err, Error::KeyFile { reason, .. } if reason.contains("16 bytes")),
        "{err}"
    );
}

fn request() -> TokenRequest {
    TokenRequest {
        subject: "agent-42".to_owned(),
        roles: vec![Role::Agent, Role::Approver],
        on_behalf_of: Some("carol".to_owned()),
        tenant: Some("globex".to_owned()),
        groups: vec!["payments".to_owned(), "oncall".to_owned()],
        ttl: Duration::from_secs(900),
        issuer: "broker-dev".to_owned(),
        audience: "agent-broker".to_owned(),
    }
}

#[tokio::test]
async fn minted_token_round_trips() {
    let dir = TempDir::new().unwrap();
    let (secret, _) = dev::load_or_create_secret(dir.path()).unwrap();
    let cfg = AuthConfig::default();
    let verifier = Verifier::from_config(&cfg, Some(secret.clone()))
        .await
        .unwrap();
    let before = now();
    let token = dev::mint(&secret, &cfg, &request()).unwrap();
    let p = verifier.verify(&token).unwrap();
    assert_eq!(p.subject, "agent-42");
    assert_eq!(p.user.as_deref(), Some("carol"));
    assert_eq!(p.tenant.as_deref(), Some("globex"));
    assert_eq!(
        p.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::Agent, Role::Approver]
    );
    assert_eq!(p.token_id.as_ref().map(String::len), Some(32));
    assert!((before + 900..=now() + 900).contains(&p.expires_at));
    // jti is random.
    let other = verifier
        .verify(&dev::mint(&secret, &cfg, &request()).unwrap())
        .unwrap();
    assert_ne!(other.token_id, p.token_id);
    // Header: HS256, no kid.
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!((header.alg, header.kid), (Algorithm::HS256, None));
}

#[tokio::test]
async fn minted_tokens_obey_the_verifier() {
    let cfg = AuthConfig::default();
    let verifier = Verifier::from_config(&cfg, Some(SECRET.to_vec()))
        .await
        .unwrap();
    let expired = dev::mint_at(SECRET, &cfg, &request(), now() - 2000).unwrap();
    assert_eq!(token_error(verifier.verify(&expired)), TokenError::Expired);
    let future = dev::mint_at(SECRET, &cfg, &request(), now() + 2000).unwrap();
    assert_eq!(
        token_error(verifier.verify(&future)),
        TokenError::NotYetValid
    );
    let foreign = TokenRequest {
        audience: "someone-else".to_owned(),
        ..request()
    };
    let token = dev::mint(SECRET, &cfg, &foreign).unwrap();
    assert_eq!(
        token_error(verifier.verify(&token)),
        TokenError::InvalidAudience
    );
    // Custom claim names are written where the verifier reads them.
    let custom = AuthConfig {
        roles_claim: "grants".to_owned(),
        ..AuthConfig::default()
    };
    let v2 = Verifier::from_config(&custom, Some(SECRET.to_vec()))
        .await
        .unwrap();
    let token = dev::mint(SECRET, &custom, &request()).unwrap();
    assert!(v2.verify(&token).unwrap().has_role(Role::Approver));
}

#[test]
fn mint_refuses_bad_requests() {
    let cfg = AuthConfig::default();
    let bad = [
        (
            SECRET,
            TokenRequest {
                subject: String::new(),
                ..request()
            },
        ),
        (
            SECRET,
            TokenRequest {
                ttl: Duration::ZERO,
                ..request()
            },
        ),
        (
            SECRET,
            TokenRequest {
                ttl: dev::MAX_TTL + Duration::from_secs(1),
                ..request()
            },
        ),
        (
            SECRET,
            TokenRequest {
                tenant: Some(String::new()),
                ..request()
            },
        ),
        (&SECRET[..16], request()),
    ];
    for (secret, req) in bad {
        assert!(
            matches!(dev::mint(secret, &cfg, &req), Err(Error::Mint(_))),
            "{req:?}"
        );
    }
}

// ---------------------------------------------------------------- small API pieces

#[test]
fn roles_parse_and_print() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        assert_eq!(role.to_string(), role.as_str());
        assert_eq!(serde_json::to_value(role).unwrap(), json!(role.as_str()));
    }
    assert!(matches!("Admin".parse::<Role>(), Err(Error::UnknownRole(r)) if r == "Admin"));
    assert_eq!(
        serde_json::from_value::<Role>(json!("auditor")).unwrap(),
        Role::Auditor
    );
}

#[test]
fn authorization_header_parsing() {
    assert_eq!(
        token_from_authorization_header("Bearer abc.def.ghi").unwrap(),
        "abc.def.ghi"
    );
    assert_eq!(
        token_from_authorization_header("bearer   abc ").unwrap(),
        "abc"
    );
    for bad in [
        "",
        "Bearer",
        "Bearer  ",
        "Basic dXNlcjpwdw==",
        "abc.def.ghi",
    ] {
        let err = token_from_authorization_header(bad).unwrap_err();
        assert_eq!(err.token_error(), Some(&TokenError::Missing), "{bad:?}");
    }
}

#[tokio::test]
async fn errors_are_classified_and_debug_is_redacted() {
    let verifier = dev_verifier().await;
    let err = verifier.verify("a.b.c").unwrap_err();
    assert!(err.is_unauthenticated());
    assert_eq!(
        err.token_error().map(TokenError::reason),
        Some("TOKEN_MALFORMED")
    );
    let debug = format!("{verifier:?}");
    assert!(debug.contains("HS256"), "{debug}");
    assert!(!debug.contains("test-hmac-secret"), "{debug}");
    assert!(!debug.contains(&hex::encode(SECRET)), "{debug}");
    let clone = verifier.clone();
    assert!(clone.verify(&hs256(&claims())).is_ok());
}

#[test]
fn verifier_is_shareable_across_tasks() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<Verifier>();
    assert_shareable::<Principal>();
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<Error>();
}

#[tokio::test]
async fn groups_come_from_the_configured_claim() {
    let cfg = AuthConfig::default();
    let secret = [9u8; 32];
    let verifier = Verifier::from_config(&cfg, Some(secret.to_vec()))
        .await
        .unwrap();
    let token = dev::mint(&secret, &cfg, &request()).unwrap();
    let p = verifier.verify(&token).unwrap();
    assert_eq!(
        p.groups.iter().map(String::as_str).collect::<Vec<_>>(),
        ["oncall", "payments"]
    );
}
