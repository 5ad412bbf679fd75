//! Who is calling: bad tokens are UNAUTHENTICATED with a clear reason; roles gate the services.

use base64::Engine as _;
use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::{AuditClient, AuditFilter, SessionRequest};
use serde_json::json;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn bad_tokens_are_unauthenticated(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let claims = h.valid_claims("agent-1");
    let with = |patch: serde_json::Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        h.sign(&c)
    };
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"a-secret-that-is-not-the-brokers-at-all!!"),
    )
    .unwrap();
    let cases = [
        ("garbage", "not-a-jwt".to_owned(), "TOKEN_MALFORMED"),
        ("alg none", alg_none, "TOKEN_ALGORITHM_NOT_ACCEPTED"),
        (
            "algorithm not configured",
            hs512,
            "TOKEN_ALGORITHM_NOT_ACCEPTED",
        ),
        ("another key", other_key, "TOKEN_SIGNATURE_INVALID"),
        (
            "wrong audience",
            with(json!({"aud": "someone-else"})),
            "TOKEN_AUDIENCE_NOT_ACCEPTED",
        ),
        (
            "wrong issuer",
            with(json!({"iss": "evil"})),
            "TOKEN_ISSUER_NOT_ACCEPTED",
        ),
        (
            "expired",
            with(json!({"exp": 1_000_000_000})),
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            with(json!({"nbf": 4_000_000_000_u64, "exp": 4_000_000_600_u64})),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "no audience",
            with(json!({"aud": null})),
            "TOKEN_CLAIM_MISSING",
        ),
        (
            "no expiry",
            with(json!({"exp": null})),
            "TOKEN_CLAIM_MISSING",
        ),
    ];
    for (name, token, reason) in cases {
        let client = h.client_with_token(token).await;
        let err = client
            .open_session(SessionRequest::new(["web.search"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{name}: {err:?}");
        assert_eq!(err.reason(), Some(reason), "{name}: {err:?}");
        assert!(
            !err.message().to_lowercase().contains("secret"),
            "{name}: no internals: {}",
            err.message()
        );
    }
    // No token at all.
    let mut grpc =
        broker_proto::v1::agent_service_client::AgentServiceClient::connect(h.endpoint())
            .await
            .unwrap();
    let err = grpc
        .open_session(broker_proto::v1::OpenSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}
both!(bad_tokens_are_unauthenticated);

async fn roles_gate_the_services(backend: DbBackend) {
    let h = Harness::start(backend).await;
    // An agent cannot read the audit trail.
    let agent_reading =
        AuditClient::connect(h.endpoint(), h.token("agent-1", &[Role::Agent], None))
            .await
            .unwrap();
    let err = agent_reading
        .list_events(AuditFilter::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(
        agent_reading.verify_chain().await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    // An auditor cannot open sessions or authorize tool calls.
    let auditor_acting = h
        .client_with_token(h.token("security-team", &[Role::Auditor], None))
        .await;
    let err = auditor_acting
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = auditor_acting
        .authorize(
            "ses_00000000000000000000000000000000",
            "web.search",
            &json!({"query": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Admins may read the audit trail too.
    let admin = AuditClient::connect(h.endpoint(), h.token("root", &[Role::Admin], None))
        .await
        .unwrap();
    assert!(admin.verify_chain().await.unwrap().is_ok());
}
both!(roles_gate_the_services);
