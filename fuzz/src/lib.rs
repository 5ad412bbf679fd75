//! The bodies of the fuzz targets. Each builds its fixture once per process and checks, for every
//! input, that nothing panics and that what the broker accepts obeys its rules (the oracles below).
//!
//! Shared by `fuzz_targets/*` (cargo-fuzz, libFuzzer) and the stable-toolchain smoke test
//! `tests/e2e/fuzz_seeds.rs`, which runs each body over `fuzz/corpus/<target>/`. So: no `crate::`
//! paths here, only the crates both have (broker, serde_json, tokio, jsonwebtoken, base64, tempfile).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use broker::auth::{AuthConfig, Principal, PublicKeyConfig, Role, Verifier};
use broker::domain::broker::{
    Broker, Error as DomainError, OpenSession, Settings, ToolCallRequest,
};
use broker::domain::decision::Outcome;
use broker::domain::session::is_tool_name;
use broker::policy::{PolicyEngine, SessionFacts, ToolCall};
use serde_json::Value;

/// The repository's `policies/` (the fuzz crate and the e2e crate are both siblings of it).
fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| PolicyEngine::load(&repo_path("policies")).expect("example policies load"))
}

/// Splits at the first NUL byte: (before, after); no NUL means all of it is `before`.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

// ------------------------------------------------------------------ arguments -> Cedar context

/// Input: one byte choosing the tool, then the arguments as JSON text.
///
/// Oracles: the strict parser accepts exactly what serde_json accepts minus duplicate keys and keys
/// holding a NUL, with the
/// same value; the engine never panics, every verdict has a reason, and an ALLOW names a permit.
/// Returns whether the call was allowed.
pub fn args(data: &[u8]) -> bool {
    let Some((&which, text)) = data.split_first() else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let strict = broker::json::from_str(text);
    let lenient = serde_json::from_str::<Value>(text);
    let args = match (strict, lenient) {
        (Ok(s), Ok(l)) => {
            assert_eq!(s, l, "strict and serde_json disagree on {text:?}");
            s
        }
        (
            Err(broker::json::Error::DuplicateKey { .. } | broker::json::Error::NulInKey { .. }),
            Ok(_),
        ) => return false,
        (Err(broker::json::Error::Syntax(_)), Err(_)) => return false,
        (s, l) => panic!("strict {s:?} but serde_json {l:?} for {text:?}"),
    };
    let engine = engine();
    let mut tools: Vec<&str> = engine.tool_names().collect();
    tools.sort_unstable();
    let tool = tools[usize::from(which) % tools.len()];
    let verdict = engine.decide(&ToolCall {
        agent: "fuzz-agent",
        user: Some("alice"),
        tenant: Some("acme"),
        roles: vec!["agent"],
        tool,
        args: &args,
        session: SessionFacts {
            id: "ses_fuzz",
            purpose: "fuzzing",
            calls: 0,
            max_calls: 10,
            user: "alice",
            collections: vec!["kb"],
            labels: vec![],
        },
        approval: None,
    });
    assert!(!verdict.reasons.is_empty(), "{verdict:?}");
    if verdict.outcome != Outcome::Allow {
        return false;
    }
    assert!(args.is_object(), "ALLOW for non-object arguments {text:?}");
    assert!(
        verdict.reasons.iter().all(|r| r.policy_id.is_some()),
        "{verdict:?}"
    );
    true
}

// ------------------------------------------------------------------ JWT verification

/// The HMAC secret of the fuzz verifier (HS256), beside one RSA public key (RS256, kid `rsa-1`).
pub const JWT_SECRET: &[u8] = b"fuzz-hmac-secret-fuzz-hmac-secret-0123";
/// The latest NumericDate the verifier accepts (seeds expire then).
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<(Verifier, tempfile::TempDir)> = OnceLock::new();
    &VERIFIER
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let hmac = dir.path().join("hmac");
            std::fs::write(&hmac, JWT_SECRET).expect("write secret");
            let cfg = AuthConfig {
                algorithms: vec!["HS256".to_owned(), "RS256".to_owned()],
                hmac_secret_file: Some(hmac),
                public_keys: vec![PublicKeyConfig {
                    kid: Some("rsa-1".to_owned()),
                    path: repo_path("broker/src/auth/testdata/rsa1.pub.pem"),
                }],
                ..AuthConfig::default()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let v = rt
                .block_on(Verifier::from_config(&cfg, None))
                .expect("fuzz verifier");
            (v, dir)
        })
        .0
}

/// Input: a first byte choosing the mode, then
/// - even: the token itself (so signatures, encodings and shapes are fuzzed);
/// - odd: header JSON, a NUL byte, claims JSON; the harness encodes both and signs them with the
///   HMAC secret, so that header and claim handling past the signature check is fuzzed too.
///
/// Oracle: an accepted token has a strict JSON header (alg HS256 or RS256, no `crit`, an accepted
/// `typ`) and strict JSON claims (no duplicate keys) naming the principal's subject, and its
/// signature verifies. Returns whether the token was accepted.
pub fn jwt(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = split(rest);
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET);
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .expect("hmac signs");
        format!("{message}.{signature}")
    };
    match verifier().verify(&token) {
        Ok(principal) => {
            check_accepted(&token, &principal);
            true
        }
        Err(e) => {
            let t = e
                .token_error()
                .expect("a token error, never a configuration error");
            assert!(t.reason().starts_with("TOKEN_"), "{t:?}");
            false
        }
    }
}

fn check_accepted(token: &str, principal: &Principal) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted {token:?}");
    let part = |i: usize| {
        let raw = URL_SAFE_NO_PAD.decode(parts[i]).expect("base64url");
        match broker::json::from_slice(&raw).expect("strict JSON") {
            Value::Object(map) => map,
            other => panic!("accepted a non-object part {other}"),
        }
    };
    let header = part(0);
    let claims = part(1);
    assert!(!header.contains_key("crit"), "accepted crit {token:?}");
    if let Some(typ) = header.get("typ") {
        let typ = typ.as_str().expect("typ is a string");
        assert!(
            ["JWT", "at+jwt", "application/at+jwt"]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(typ)),
            "accepted typ {typ:?}"
        );
    }
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(principal.subject.as_str())
    );
    assert!((0..=MAX_NUMERIC_DATE).contains(&principal.expires_at));
    // Claims become the trail's agent, user and tenant: no NUL gets through.
    assert!(
        [
            Some(&principal.subject),
            principal.user.as_ref(),
            principal.tenant.as_ref()
        ]
        .into_iter()
        .flatten()
        .chain(&principal.groups)
        .all(|s| !s.contains('\0')),
        "accepted a NUL in {principal:?}"
    );
    let message = format!("{}.{}", parts[0], parts[1]);
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => assert!(
            jsonwebtoken::crypto::verify(
                parts[2],
                message.as_bytes(),
                &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET),
                jsonwebtoken::Algorithm::HS256,
            )
            .expect("verify runs"),
            "accepted a bad HS256 signature {token:?}"
        ),
        // Only the configured RSA key can have signed it; the fuzzer cannot forge that.
        Some("RS256") => panic!("accepted an RS256 token the fuzzer made: {token:?}"),
        other => panic!("accepted alg {other:?}"),
    }
}

// ------------------------------------------------------------------ the whole authorize path

struct Fixture {
    rt: tokio::runtime::Runtime,
    broker: Broker,
    store: broker::store::Store,
    caller: Principal,
    session_id: String,
    calls: AtomicU64,
    _db: broker::store::testing::TestDb,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // One thread: the store's writer and the switchboard run whenever a call is awaited.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let parts = rt.block_on(async {
            let db = broker::store::testing::TestDb::new(broker::store::Backend::Sqlite)
                .await
                .expect("sqlite test database");
            let store = db.store().clone();
            // A frozen clock: the session never expires.
            let clock: broker::clock::SharedClock = Arc::new(broker::clock::ManualClock::default());
            let (_, policies) = tokio::sync::watch::channel(Arc::new(
                PolicyEngine::load(&repo_path("policies")).expect("policies"),
            ));
            let settings = Settings {
                session: broker::config::SessionConfig {
                    max_tool_calls: u32::MAX,
                    ..Default::default()
                },
                audit: broker::config::AuditConfig::default(),
                limits: broker::config::Limits::default(),
                store_bound: Duration::from_secs(5),
                // No auto-quarantine: denials are most of what a fuzzer produces.
                quarantine: Vec::new(),
                approvals: broker::config::ApprovalsConfig::default(),
                person_claim: "sub".to_owned(),
            };
            let switchboard = broker::domain::switchboard::Switchboard::start(
                store.clone(),
                clock.clone(),
                Duration::from_secs(3600),
                Duration::from_secs(24 * 3600),
            )
            .await
            .expect("switchboard");
            let broker = Broker::new(store.clone(), policies, clock, settings, switchboard, None);
            let caller = Principal {
                subject: "fuzz-agent".to_owned(),
                user: Some("alice".to_owned()),
                tenant: Some("acme".to_owned()),
                person: Some("fuzz-agent".to_owned()),
                groups: Default::default(),
                roles: [Role::Agent].into_iter().collect(),
                token_id: None,
                expires_at: MAX_NUMERIC_DATE,
            };
            let session = broker
                .open_session(
                    &caller,
                    OpenSession {
                        tools: vec!["*".to_owned()],
                        max_tool_calls: u32::MAX,
                        purpose: "fuzzing".to_owned(),
                        ..OpenSession::default()
                    },
                )
                .await
                .expect("session opens");
            (broker, store, caller, session.id, db)
        });
        let (broker, store, caller, session_id, db) = parts;
        Fixture {
            rt,
            broker,
            store,
            caller,
            session_id,
            calls: AtomicU64::new(0),
            _db: db,
        }
    })
}

/// What `AgentService.AuthorizeToolCall` refuses before the domain sees the call (see
/// `broker::api::agent`): a NUL in the tool name, arguments naming a key twice.
fn handler_refuses(tool: &str, arguments_json: &str) -> bool {
    tool.contains('\0')
        || matches!(
            broker::json::from_str(arguments_json),
            Err(broker::json::Error::DuplicateKey { .. })
        )
}

/// Input: the tool name, a NUL byte, the arguments as JSON text (both as lossy UTF-8).
///
/// Oracles: never an internal error (bad input is refused naming its field, or denied); an ALLOW
/// only for a catalogue tool with arguments that are a strict JSON object, and only once its
/// decision is recorded in the audit trail. Returns whether the call was allowed.
pub fn authorize(data: &[u8]) -> bool {
    let (tool, args) = split(data);
    let tool = String::from_utf8_lossy(tool).into_owned();
    let arguments_json = String::from_utf8_lossy(args).into_owned();
    if handler_refuses(&tool, &arguments_json) {
        return false;
    }
    let f = fixture();
    let call_id = format!("fuzz-{}", f.calls.fetch_add(1, Ordering::Relaxed));
    let request = ToolCallRequest {
        session_id: f.session_id.clone(),
        tool: tool.clone(),
        arguments_json: arguments_json.clone(),
        call_id: call_id.clone(),
    };
    f.rt.block_on(async {
        match f.broker.authorize(&f.caller, request).await {
            Ok(d) => {
                assert!(!d.reasons.is_empty(), "{d:?}");
                if d.outcome != Outcome::Allow {
                    return false;
                }
                assert!(
                    is_tool_name(&tool) && engine().knows_tool(&tool),
                    "ALLOW for {tool:?}"
                );
                assert!(
                    matches!(
                        broker::json::from_str(&arguments_json),
                        Ok(Value::Object(_))
                    ) || arguments_json.trim().is_empty(),
                    "ALLOW for arguments {arguments_json:?}"
                );
                let recorded = f
                    .store
                    .recorded_call(&f.session_id, &f.caller.subject, &call_id)
                    .await
                    .expect("store reads")
                    .expect("an ALLOW is recorded");
                assert_eq!(recorded.decision.decision_id, d.decision_id);
                true
            }
            Err(DomainError::InvalidArgument { field, .. }) => {
                assert!(
                    ["tool", "arguments_json"].contains(&field),
                    "refused naming `{field}`"
                );
                false
            }
            Err(e) => panic!("{tool:?} {arguments_json:?}: {e}"),
        }
    })
}
