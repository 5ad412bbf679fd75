//! The JWT corpus: hostile and malformed tokens, each with the exact refusal it must get, beside the
//! valid controls that must pass. One verifier accepts HS256 (a secret), RS256 (kid `rsa-1`) and ES256
//! (kid `ec-1`), so key confusion between families can be tried. The test states the corpus size and
//! the accepted count, which must be exactly the controls.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::tests::{
    claims, jwk, now, token_error, with, without, write, EC256_KEY, EC256_PUB, RSA1_KEY, RSA1_PUB,
    RSA2_KEY, SECRET,
};
use super::*;

const SUBJECT: &str = "agent-7";

/// How a crafted token is signed: by a key over exactly its first two parts, or verbatim.
enum Sig<'a> {
    Hmac(&'a [u8], Algorithm),
    Rsa(&'a [u8], Algorithm),
    Ec(&'a [u8], Algorithm),
    Raw(&'a str),
}

fn enc(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn text(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

/// A token from encoded parts, signed as `sig` says.
fn parts(header_part: &str, payload_part: &str, sig: Sig<'_>) -> String {
    let message = format!("{header_part}.{payload_part}");
    let sign =
        |key: EncodingKey, alg| jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
    let signature = match sig {
        Sig::Hmac(secret, alg) => sign(EncodingKey::from_secret(secret), alg),
        Sig::Rsa(pem, alg) => sign(EncodingKey::from_rsa_pem(pem).unwrap(), alg),
        Sig::Ec(pem, alg) => sign(EncodingKey::from_ec_pem(pem).unwrap(), alg),
        Sig::Raw(s) => s.to_owned(),
    };
    format!("{message}.{signature}")
}

/// A token with this header (JSON) and payload (JSON text, verbatim so it may be odd).
fn token(header: &Value, payload: &str, sig: Sig<'_>) -> String {
    parts(&enc(text(header)), &enc(payload), sig)
}

fn header(alg: &str) -> Value {
    json!({"alg": alg, "typ": "JWT"})
}

fn header_with(alg: &str, field: &str, value: Value) -> Value {
    let mut h = header(alg);
    h[field] = value;
    h
}

/// Signed with the configured HMAC secret.
fn hmac() -> Sig<'static> {
    Sig::Hmac(SECRET, Algorithm::HS256)
}

/// The valid claims as JSON text.
fn valid() -> String {
    text(&claims())
}

/// The valid claims with `extra` (JSON members) appended verbatim, e.g. a second `sub`.
fn valid_and(extra: &str) -> String {
    let base = valid();
    format!("{},{extra}}}", base.strip_suffix('}').unwrap())
}

/// An HS256 token over `payload` (JSON text), with a JWT header.
fn hs256_raw(payload: &str) -> String {
    token(&header("HS256"), payload, hmac())
}

fn hs256_claims(c: &Value) -> String {
    hs256_raw(&text(c))
}

fn rs256_with(h: Value, payload: &str, key: &[u8]) -> String {
    token(&h, payload, Sig::Rsa(key, Algorithm::RS256))
}

fn rs_header(kid: Option<&str>) -> Value {
    let mut h = header("RS256");
    if let Some(kid) = kid {
        h["kid"] = json!(kid);
    }
    h
}

fn es256_token(kid: &str) -> String {
    token(
        &header_with("ES256", "kid", json!(kid)),
        &valid(),
        Sig::Ec(EC256_KEY, Algorithm::ES256),
    )
}

async fn corpus_verifier(dir: &std::path::Path) -> Verifier {
    let cfg = AuthConfig {
        algorithms: vec!["HS256".to_owned(), "RS256".to_owned(), "ES256".to_owned()],
        hmac_secret_file: Some(write(dir, "hmac", SECRET)),
        public_keys: vec![
            PublicKeyConfig {
                kid: Some("rsa-1".to_owned()),
                path: write(dir, "rsa1.pub.pem", RSA1_PUB),
            },
            PublicKeyConfig {
                kid: Some("ec-1".to_owned()),
                path: write(dir, "ec256.pub.pem", EC256_PUB),
            },
        ],
        ..AuthConfig::default()
    };
    Verifier::from_config(&cfg, None).await.unwrap()
}

struct Case {
    name: String,
    token: String,
    /// `Ok(())` for a valid control (its subject must be [`SUBJECT`]), else the refusal.
    expect: Result<(), TokenError>,
}

#[derive(Default)]
struct Corpus {
    cases: Vec<Case>,
}

impl Corpus {
    fn accept(&mut self, name: impl Into<String>, token: String) {
        self.cases.push(Case {
            name: name.into(),
            token,
            expect: Ok(()),
        });
    }

    fn refuse(&mut self, name: impl Into<String>, token: String, error: TokenError) {
        self.cases.push(Case {
            name: name.into(),
            token,
            expect: Err(error),
        });
    }
}

fn controls(c: &mut Corpus) {
    c.accept("hs256", hs256_raw(&valid()));
    c.accept(
        "rs256 kid",
        rs256_with(rs_header(Some("rsa-1")), &valid(), RSA1_KEY),
    );
    c.accept(
        "rs256 without kid: one RSA key",
        rs256_with(rs_header(None), &valid(), RSA1_KEY),
    );
    c.accept("es256 kid", es256_token("ec-1"));
    c.accept("no typ", token(&json!({"alg": "HS256"}), &valid(), hmac()));
    for typ in ["jwt", "at+jwt", "application/at+jwt", "AT+JWT"] {
        c.accept(
            format!("typ {typ}"),
            token(&header_with("HS256", "typ", json!(typ)), &valid(), hmac()),
        );
    }
    // Key-carrying header fields are ignored: signed by the configured key, they change nothing.
    let mut h = rs_header(Some("rsa-1"));
    h["jku"] = json!("https://attacker.example/jwks.json");
    h["x5u"] = json!("https://attacker.example/cert.pem");
    h["jwk"] = serde_json::to_value(jwk(RSA2_KEY, Algorithm::RS256, "attacker")).unwrap();
    h["x5c"] = json!([STANDARD.encode(b"not a certificate")]);
    c.accept(
        "jku, x5u, jwk, x5c beside the real key",
        rs256_with(h, &valid(), RSA1_KEY),
    );
    c.accept(
        "unknown header field",
        token(&header_with("HS256", "foo", json!("bar")), &valid(), hmac()),
    );
    c.accept(
        "fractional exp (RFC 7519 NumericDate)",
        hs256_claims(&with(claims(), "exp", json!(now() as f64 + 600.25))),
    );
    c.accept(
        "aud list naming us",
        hs256_claims(&with(claims(), "aud", json!(["other", "agent-broker"]))),
    );
    c.accept(
        "null optional claims",
        hs256_claims(&with(
            with(claims(), "tenant", Value::Null),
            "jti",
            Value::Null,
        )),
    );
}

fn alg_none(c: &mut Corpus) {
    for alg in ["none", "None", "NONE", "nOnE", " none", "none "] {
        let h = header(alg);
        let message_sig = Sig::Hmac(SECRET, Algorithm::HS256);
        for (label, sig) in [
            ("empty signature", Sig::Raw("")),
            ("junk signature", Sig::Raw("c2lnbmF0dXJl")),
            ("a real HMAC", message_sig),
        ] {
            c.refuse(
                format!("alg {alg:?}, {label}"),
                token(&h, &valid(), sig),
                TokenError::AlgorithmNone,
            );
        }
    }
    c.refuse(
        "alg none naming a real kid",
        token(
            &header_with("none", "kid", json!("rsa-1")),
            &valid(),
            Sig::Raw(""),
        ),
        TokenError::AlgorithmNone,
    );
    let two_parts = format!("{}.{}", enc(text(&header("none"))), enc(valid()));
    c.refuse(
        "alg none without the signature part",
        two_parts,
        TokenError::Malformed,
    );
}

fn key_confusion(c: &mut Corpus) {
    let trimmed = std::str::from_utf8(RSA1_PUB).unwrap().trim().as_bytes();
    for (label, secret) in [
        ("RSA public PEM", RSA1_PUB),
        ("RSA public PEM, trimmed", trimmed),
        ("EC public PEM", EC256_PUB),
    ] {
        c.refuse(
            format!("HS256 keyed with the {label}, no kid"),
            token(
                &header("HS256"),
                &valid(),
                Sig::Hmac(secret, Algorithm::HS256),
            ),
            TokenError::InvalidSignature,
        );
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            c.refuse(
                format!("{alg:?} keyed with the {label}"),
                token(
                    &header(&format!("{alg:?}")),
                    &valid(),
                    Sig::Hmac(secret, alg),
                ),
                TokenError::AlgorithmNotAccepted(format!("{alg:?}")),
            );
        }
    }
    for (kid, secret) in [("rsa-1", RSA1_PUB), ("ec-1", EC256_PUB)] {
        c.refuse(
            format!("HS256 naming `{kid}`, keyed with its public key"),
            token(
                &header_with("HS256", "kid", json!(kid)),
                &valid(),
                Sig::Hmac(secret, Algorithm::HS256),
            ),
            TokenError::KeyAlgorithmMismatch {
                kid: kid.to_owned(),
                alg: "HS256".to_owned(),
            },
        );
    }
    c.refuse(
        "RS256 naming the EC key",
        rs256_with(rs_header(Some("ec-1")), &valid(), RSA1_KEY),
        TokenError::KeyAlgorithmMismatch {
            kid: "ec-1".to_owned(),
            alg: "RS256".to_owned(),
        },
    );
    c.refuse(
        "ES256 naming the RSA key",
        es256_token("rsa-1"),
        TokenError::KeyAlgorithmMismatch {
            kid: "rsa-1".to_owned(),
            alg: "ES256".to_owned(),
        },
    );
    c.refuse(
        "RS256 signed by another RSA key",
        rs256_with(rs_header(Some("rsa-1")), &valid(), RSA2_KEY),
        TokenError::InvalidSignature,
    );
}

fn algorithms_not_configured(c: &mut Corpus) {
    for alg in [
        "RS384", "RS512", "PS256", "PS384", "PS512", "ES384", "EdDSA", "HS384", "HS512",
    ] {
        c.refuse(
            format!("alg {alg} (not configured)"),
            token(&header(alg), &valid(), Sig::Raw("c2ln")),
            TokenError::AlgorithmNotAccepted(alg.to_owned()),
        );
    }
    for (alg, echo) in [
        ("hs256", "hs256"),
        ("HS256 ", "HS256 "),
        (" HS256", " HS256"),
        ("RSA-OAEP", "RSA-OAEP"),
        ("dir", "dir"),
        ("ES256K", "ES256K"),
        ("", ""),
        ("HS256\u{0}", "HS256?"),
        ("HS\u{200b}256", "HS\u{200b}256"),
    ] {
        c.refuse(
            format!("alg {alg:?}"),
            token(&header(alg), &valid(), hmac()),
            TokenError::AlgorithmNotAccepted(echo.to_owned()),
        );
    }
    for alg in [
        json!(256),
        Value::Null,
        json!(["HS256"]),
        json!({"alg": "HS256"}),
        json!(true),
    ] {
        c.refuse(
            format!("alg {alg}"),
            token(&json!({"alg": alg}), &valid(), hmac()),
            TokenError::Malformed,
        );
    }
    c.refuse(
        "no alg",
        token(&json!({"typ": "JWT"}), &valid(), hmac()),
        TokenError::Malformed,
    );
}

fn kid_tricks(c: &mut Corpus) {
    let long = "k".repeat(3000);
    for kid in [
        "rsa-2",
        "../../../../dev/null",
        "/etc/passwd",
        "file:///etc/passwd",
        "https://attacker.example/key.pem",
        "' OR '1'='1",
        "rsa-1'; DROP TABLE keys; --",
        "",
        long.as_str(),
        "rsa-1\u{0}",
        "RSA-1",
        " rsa-1",
        "rsa-1 ",
        "rsа-1", // Cyrillic а
    ] {
        c.refuse(
            format!("kid {:?}", kid.chars().take(40).collect::<String>()),
            rs256_with(rs_header(Some(kid)), &valid(), RSA1_KEY),
            TokenError::UnknownKeyId(sanitize(kid)),
        );
    }
    for kid in [
        Value::Null,
        json!(1),
        json!(["rsa-1"]),
        json!({"$ne": null}),
        json!(true),
    ] {
        c.refuse(
            format!("kid {kid}"),
            rs256_with(header_with("RS256", "kid", kid.clone()), &valid(), RSA1_KEY),
            TokenError::Malformed,
        );
    }
}

fn embedded_keys(c: &mut Corpus) {
    let attacker_jwk = serde_json::to_value(jwk(RSA2_KEY, Algorithm::RS256, "attacker")).unwrap();
    let fields = [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("jku", json!("file:///tmp/attacker-jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", attacker_jwk.clone()),
        ("x5c", json!([STANDARD.encode(b"attacker certificate")])),
    ];
    for (field, value) in fields {
        c.refuse(
            format!("{field} pointing to the attacker's key, signed by it"),
            rs256_with(header_with("RS256", field, value), &valid(), RSA2_KEY),
            TokenError::InvalidSignature,
        );
    }
    let mut h = header_with("RS256", "kid", json!("attacker"));
    h["jwk"] = attacker_jwk;
    c.refuse(
        "kid of an embedded jwk",
        rs256_with(h, &valid(), RSA2_KEY),
        TokenError::UnknownKeyId("attacker".to_owned()),
    );
    let attacker_secret = b"attacker-chosen-secret-attacker-chosen";
    c.refuse(
        "HS256 with an embedded oct jwk, signed with its secret",
        token(
            &header_with(
                "HS256",
                "jwk",
                json!({"kty": "oct", "k": enc(attacker_secret)}),
            ),
            &valid(),
            Sig::Hmac(attacker_secret, Algorithm::HS256),
        ),
        TokenError::InvalidSignature,
    );
}

fn crit_and_typ(c: &mut Corpus) {
    for crit in [
        json!(["exp"]),
        json!(["b64"]),
        json!([]),
        Value::Null,
        json!("b64"),
        json!([1]),
    ] {
        c.refuse(
            format!("crit {crit}"),
            token(
                &header_with("HS256", "crit", crit.clone()),
                &valid(),
                hmac(),
            ),
            TokenError::CriticalHeader,
        );
    }
    for typ in [
        "JWE",
        "dpop+jwt",
        "secevent+jwt",
        "logout+jwt",
        "JOSE",
        "JOSE+JSON",
        "",
        "JWT ",
        "JWT\u{0}",
    ] {
        c.refuse(
            format!("typ {typ:?}"),
            token(&header_with("HS256", "typ", json!(typ)), &valid(), hmac()),
            TokenError::TypeNotAccepted(sanitize(typ)),
        );
    }
    for typ in [json!(1), Value::Null, json!(["JWT"])] {
        c.refuse(
            format!("typ {typ}"),
            token(&header_with("HS256", "typ", typ.clone()), &valid(), hmac()),
            TokenError::TypeNotAccepted(sanitize(&typ.to_string())),
        );
    }
}

fn time_claims(c: &mut Corpus) {
    let invalid = |claim: &str| TokenError::InvalidClaim(claim.to_owned());
    let n = now();
    let cases = [
        ("exp", json!((n + 600).to_string()), invalid("exp")),
        ("exp", json!("1e10"), invalid("exp")),
        ("exp", json!(true), invalid("exp")),
        ("exp", json!([n + 600]), invalid("exp")),
        ("exp", json!({"seconds": n + 600}), invalid("exp")),
        ("exp", json!(-5), invalid("exp")),
        ("exp", json!(1e20), invalid("exp")),
        ("exp", json!(f64::MAX), invalid("exp")),
        ("exp", json!(u64::MAX), invalid("exp")),
        ("exp", json!(i64::MAX), invalid("exp")),
        ("exp", json!(253_402_300_800_i64), invalid("exp")),
        ("exp", json!(0), TokenError::Expired),
        ("exp", json!(n - 3600), TokenError::Expired),
        ("exp", json!(n as f64 - 120.5), TokenError::Expired),
        ("nbf", json!("yesterday"), invalid("nbf")),
        ("nbf", Value::Null, invalid("nbf")),
        ("nbf", json!([n]), invalid("nbf")),
        ("sub", json!({"id": "admin"}), invalid("sub")),
        ("iss", json!({"iss": "broker-dev"}), invalid("iss")),
        ("aud", json!(["agent-broker", 1]), invalid("aud")),
        ("nbf", json!(-1), invalid("nbf")),
        ("nbf", json!(1e30), invalid("nbf")),
        ("nbf", json!(n + 3600), TokenError::NotYetValid),
        ("nbf", json!(u64::MAX), TokenError::NotYetValid),
        ("iat", json!("now"), invalid("iat")),
        ("iat", json!(-1), invalid("iat")),
        ("iat", json!(1e20), invalid("iat")),
        ("iat", json!({}), invalid("iat")),
    ];
    for (claim, value, error) in cases {
        c.refuse(
            format!("{claim} {value}"),
            hs256_claims(&with(claims(), claim, value.clone())),
            error,
        );
    }
}

fn required_claims(c: &mut Corpus) {
    for claim in ["iss", "aud", "exp", "sub"] {
        c.refuse(
            format!("no {claim}"),
            hs256_claims(&without(claims(), claim)),
            TokenError::MissingClaim(claim.to_owned()),
        );
        c.refuse(
            format!("{claim} null"),
            hs256_claims(&with(claims(), claim, Value::Null)),
            TokenError::MissingClaim(claim.to_owned()),
        );
    }
    let cases = [
        ("aud", json!([]), TokenError::InvalidAudience),
        ("aud", json!("other"), TokenError::InvalidAudience),
        ("aud", json!("Agent-Broker"), TokenError::InvalidAudience),
        ("aud", json!(12), TokenError::InvalidClaim("aud".to_owned())),
        ("iss", json!(["broker-dev"]), TokenError::InvalidIssuer),
        ("iss", json!("broker-dev "), TokenError::InvalidIssuer),
        ("sub", json!(""), TokenError::InvalidClaim("sub".to_owned())),
        ("sub", json!(12), TokenError::InvalidClaim("sub".to_owned())),
        (
            "sub",
            json!(["admin"]),
            TokenError::InvalidClaim("sub".to_owned()),
        ),
    ];
    for (claim, value, error) in cases {
        c.refuse(
            format!("{claim} {value}"),
            hs256_claims(&with(claims(), claim, value.clone())),
            error,
        );
    }
}

fn duplicates(c: &mut Corpus) {
    let claims_dup = |name: &str| TokenError::DuplicateField {
        part: "claims",
        name: name.to_owned(),
    };
    let cases = [
        (r#""sub":"admin""#, claims_dup("sub")),
        (r#""s\u0075b":"admin""#, claims_dup("sub")),
        (
            r#""roles":["agent"],"roles":["admin"]"#,
            claims_dup("roles"),
        ),
        (
            r#""on_behalf_of":"a","on_behalf_of":"b""#,
            claims_dup("on_behalf_of"),
        ),
        (r#""exp":1"#, claims_dup("exp")),
        (r#""aud":"other""#, claims_dup("aud")),
        (r#""iss":"evil""#, claims_dup("iss")),
        (r#""ext":{"a":1,"a":2}"#, claims_dup("ext.a")),
    ];
    for (extra, error) in cases {
        c.refuse(
            format!("claims with {extra}"),
            hs256_raw(&valid_and(extra)),
            error,
        );
    }
    let header_dup = |name: &str| TokenError::DuplicateField {
        part: "header",
        name: name.to_owned(),
    };
    for (raw, error) in [
        (r#"{"alg":"HS256","alg":"none"}"#, header_dup("alg")),
        (r#"{"alg":"none","alg":"HS256"}"#, header_dup("alg")),
        (
            r#"{"alg":"HS256","kid":"x","kid":"rsa-1"}"#,
            header_dup("kid"),
        ),
        (
            r#"{"alg":"HS256","typ":"JWT","typ":"dpop+jwt"}"#,
            header_dup("typ"),
        ),
    ] {
        c.refuse(
            format!("header {raw}"),
            parts(&enc(raw), &enc(valid()), hmac()),
            error,
        );
    }
}

fn sizes(c: &mut Corpus) {
    c.refuse(
        "8193 bytes",
        "x".repeat(8193),
        TokenError::TooLarge { max: 8192 },
    );
    c.refuse(
        "1 MiB",
        "a.b.c".repeat(200_000),
        TokenError::TooLarge { max: 8192 },
    );
    // The largest valid token within the limit passes; the next size up is refused unread.
    let padded = |n: usize| hs256_claims(&with(claims(), "pad", json!("p".repeat(n))));
    let mut n = 5000;
    while padded(n + 1).len() <= 8192 {
        n += 1;
    }
    let fits = padded(n);
    assert!(fits.len() > 8150 && fits.len() <= 8192, "{}", fits.len());
    c.accept(format!("{} bytes (within the limit)", fits.len()), fits);
    let over = padded(n + 1);
    c.refuse(
        format!("{} bytes", over.len()),
        over,
        TokenError::TooLarge { max: 8192 },
    );
}

fn malformed(c: &mut Corpus) {
    let good = hs256_raw(&valid());
    let [h, p, s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    c.refuse("empty", String::new(), TokenError::Missing);
    let shapes = [
        " ".to_owned(),
        "a".to_owned(),
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        format!("{good}.extra"),
        format!("{good}."),
        ".".to_owned(),
        "..".to_owned(),
        "...".to_owned(),
        format!(".{p}.{s}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}.{s}\u{e9}"),
        "\u{0}.\u{0}.\u{0}".to_owned(),
    ];
    for t in shapes {
        c.refuse(format!("shape {t:.40?}"), t, TokenError::Malformed);
    }
    // The standard alphabet instead of base64url.
    let url_safe = enc(text(&json!({"alg": "HS256", "typ": "JWT", "x": "??"})));
    assert!(url_safe.contains('_'), "{url_safe}");
    c.refuse(
        "standard base64 header",
        parts(&url_safe.replace('_', "/"), &enc(valid()), hmac()),
        TokenError::Malformed,
    );
    // Headers that are not a JSON object, or not JSON.
    for raw in [
        &b"null"[..],
        b"[]",
        b"\"HS256\"",
        b"{\"alg\":\"HS256\"} x",
        b"\xef\xbb\xbf{\"alg\":\"HS256\"}",
        b"\xff\xfe{\"alg\":\"HS256\"}",
        b"{\"alg\":\"HS256\",\"kid\":\"\\ud800\"}",
        b"{\"alg\":\"HS256\",\"kid\":\"\xc3\x28\"}",
        b"{'alg':'HS256'}",
        b"",
    ] {
        c.refuse(
            format!("header {:?}", String::from_utf8_lossy(raw)),
            parts(&enc(raw), &enc(valid()), hmac()),
            TokenError::Malformed,
        );
    }
    let deep = format!(
        "{{\"alg\":\"HS256\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    c.refuse(
        "header nested 200 deep",
        parts(&enc(deep), &enc(valid()), hmac()),
        TokenError::Malformed,
    );
    // Payloads that are not a JSON object, correctly signed so only the payload is wrong.
    let deep_claims = valid_and(&format!("\"x\":{}{}", "[".repeat(200), "]".repeat(200)));
    let surrogate = valid_and(r#""name":"\ud800""#);
    let nan = valid_and(r#""n":NaN"#);
    let huge_number = valid_and(r#""n":1e400"#);
    let trailing = format!("{} x", valid());
    let mut not_utf8 = valid_and(r#""name":"X""#).into_bytes();
    let x = not_utf8.iter().rposition(|b| *b == b'X').unwrap();
    not_utf8[x] = 0xff;
    for (label, raw) in [
        ("not UTF-8", not_utf8.as_slice()),
        ("an array", b"[1,2]"),
        ("null", b"null"),
        ("empty", b""),
        ("trailing garbage", trailing.as_bytes()),
        ("a lone surrogate", surrogate.as_bytes()),
        ("NaN", nan.as_bytes()),
        ("a number beyond f64", huge_number.as_bytes()),
        ("nested 200 deep", deep_claims.as_bytes()),
    ] {
        c.refuse(
            format!("payload {label}"),
            parts(h, &enc(raw), hmac()),
            TokenError::Malformed,
        );
    }
    c.refuse(
        "payload not base64url",
        parts(h, "!!not-base64!!", hmac()),
        TokenError::Malformed,
    );
    c.refuse(
        "space inside the payload part",
        parts(h, &format!(" {p}"), hmac()),
        TokenError::Malformed,
    );
}

#[tokio::test]
async fn jwt_corpus_refuses_everything_but_the_controls() {
    let dir = TempDir::new().unwrap();
    let verifier = corpus_verifier(dir.path()).await;
    let mut corpus = Corpus::default();
    controls(&mut corpus);
    alg_none(&mut corpus);
    key_confusion(&mut corpus);
    algorithms_not_configured(&mut corpus);
    kid_tricks(&mut corpus);
    embedded_keys(&mut corpus);
    crit_and_typ(&mut corpus);
    time_claims(&mut corpus);
    required_claims(&mut corpus);
    duplicates(&mut corpus);
    sizes(&mut corpus);
    malformed(&mut corpus);

    let mut wrong = Vec::new();
    let mut accepted = 0;
    for case in &corpus.cases {
        let got = verifier.verify(&case.token);
        if got.is_ok() {
            accepted += 1;
        }
        match (&case.expect, got) {
            (Ok(()), Ok(p)) if p.subject == SUBJECT => {}
            (Err(want), Err(Error::Unauthenticated(got))) if *want == got => {
                // A clear, stable refusal: a reason code and a message that says what is wrong.
                assert!(got.reason().starts_with("TOKEN_"), "{}", case.name);
                assert!(!got.to_string().is_empty(), "{}", case.name);
            }
            (want, got) => wrong.push(format!("{}: expected {want:?}, got {got:?}", case.name)),
        }
    }
    let controls = corpus.cases.iter().filter(|c| c.expect.is_ok()).count();
    println!(
        "jwt corpus: {} tokens, {accepted} accepted ({controls} valid controls), {} refused",
        corpus.cases.len(),
        corpus.cases.len() - accepted
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(accepted, controls);
    assert!(corpus.cases.len() >= 150, "{}", corpus.cases.len());
}

#[tokio::test]
async fn refusals_name_what_is_wrong() {
    let dir = TempDir::new().unwrap();
    let verifier = corpus_verifier(dir.path()).await;
    let err = token_error(verifier.verify(&hs256_raw(&valid_and(r#""sub":"admin""#))));
    assert_eq!(
        err.to_string(),
        "`sub` appears more than once in the token claims"
    );
    assert_eq!(err.reason(), "TOKEN_DUPLICATE_FIELD");
    let err = token_error(verifier.verify(&token(
        &header_with("HS256", "typ", json!("dpop+jwt")),
        &valid(),
        hmac(),
    )));
    assert_eq!(
        err.to_string(),
        "token type (`typ`) `dpop+jwt` is not accepted"
    );
    assert_eq!(err.reason(), "TOKEN_TYPE_NOT_ACCEPTED");
    let err = token_error(verifier.verify(&hs256_claims(&with(claims(), "exp", json!(1e20)))));
    assert_eq!(err.to_string(), "token claim `exp` has an invalid value");
    // A very long kid is echoed bounded.
    let err = token_error(verifier.verify(&rs256_with(
        rs_header(Some(&"k".repeat(3000))),
        &valid(),
        RSA1_KEY,
    )));
    assert!(err.to_string().len() < 100, "{err}");
}
