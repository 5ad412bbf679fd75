//! Bad input against the real server. Arguments and tool names: each refused naming the field, or
//! denied with a reason, never an ALLOW. The HTTP/2 edge (raw `h2` where the SDK would not send it):
//! the advertised limits, oversized messages, huge metadata, bad `grpc-timeout` values and a
//! rapid-reset flood; after each, the server still answers a normal call.

use std::time::{Duration, Instant};

use broker::auth::Role;
use broker_e2e::{both, DbBackend, Harness};
use broker_sdk::proto;
use broker_sdk::{AuditFilter, Client, Outcome, SessionRequest};
use bytes::Bytes;
use prost::Message as _;
use serde_json::json;

// ------------------------------------------------------------------ helpers

fn agent_token(h: &Harness) -> String {
    h.token("hostile-agent", &[Role::Agent], Some("alice"))
}

fn with_token<T>(h: &Harness, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", agent_token(h)).parse().unwrap(),
    );
    req
}

async fn grpc(
    h: &Harness,
) -> proto::agent_service_client::AgentServiceClient<tonic::transport::Channel> {
    proto::agent_service_client::AgentServiceClient::connect(h.endpoint())
        .await
        .unwrap()
}

/// AuthorizeToolCall with the arguments as raw text (the SDK only sends what serde_json writes).
async fn authorize_raw(
    h: &Harness,
    session_id: &str,
    tool: &str,
    arguments_json: &str,
) -> Result<proto::Decision, tonic::Status> {
    let message = proto::AuthorizeToolCallRequest {
        session_id: session_id.to_owned(),
        tool: tool.to_owned(),
        arguments_json: arguments_json.to_owned(),
        call_id: broker_sdk::new_call_id(),
    };
    grpc(h)
        .await
        .authorize_tool_call(with_token(h, message))
        .await
        .map(tonic::Response::into_inner)
}

async fn open_session(client: &Client, scopes: &[&str]) -> String {
    client
        .open_session(SessionRequest::new(scopes.iter().copied()).purpose("support"))
        .await
        .unwrap()
        .session_id
}

/// The server still decides: a normal call is allowed (and recorded).
async fn still_serving(h: &Harness) {
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let session = open_session(&agent, &["web.search"]).await;
    let d = agent
        .authorize(&session, "web.search", &json!({"query": "still there?"}))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
}

async fn allow_events(h: &Harness) -> usize {
    h.auditor()
        .await
        .list_events(AuditFilter::new().outcome(Outcome::Allow).page_size(1000))
        .await
        .unwrap()
        .events
        .len()
}

fn reason_codes(d: &proto::Decision) -> Vec<&str> {
    d.reasons.iter().map(|r| r.code.as_str()).collect()
}

// ------------------------------------------------------------------ arguments

async fn duplicate_keys_in_arguments_are_refused(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let session = open_session(&agent, &["*"]).await;
    // Each duplicate would dodge a policy that reads the first value if the last one were kept.
    let cases = [
        (
            "web.search",
            r#"{"query": "q", "max_results": 500, "max_results": 5}"#,
            "max_results",
        ),
        (
            "file.read",
            r#"{"path": "/etc/shadow", "path": "/tmp/notes.txt"}"#,
            "path",
        ),
        (
            "email.send",
            r#"{"to": "m@evil.example", "subject": "s", "body": "b", "to": "bob@example.com"}"#,
            "to",
        ),
        (
            "payments.refund",
            r#"{"payment_id": "p", "amount": 5000000, "currency": "EUR", "amount": 5}"#,
            "amount",
        ),
        (
            "web.search",
            r#"{"query": "q", "q\u0075ery": "other"}"#,
            "query",
        ),
    ];
    for (tool, args, key) in cases {
        let err = authorize_raw(&h, &session, tool, args).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{args}");
        assert_eq!(
            err.message(),
            format!("`arguments_json`: duplicate key `{key}`"),
            "{args}"
        );
    }
    // Without the duplicate, the same call is decided by the policies.
    let d = authorize_raw(
        &h,
        &session,
        "web.search",
        r#"{"query": "q", "max_results": 500}"#,
    )
    .await
    .unwrap();
    assert_eq!(d.outcome(), proto::Outcome::Deny);
    assert_eq!(allow_events(&h).await, 0);
}
both!(duplicate_keys_in_arguments_are_refused);

async fn hostile_arguments_are_refused_or_denied(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let session = open_session(&agent, &["*"]).await;
    let deep = |n: usize| {
        format!(
            r#"{{"query": "q", "x": {}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let huge_object = format!(
        "{{{}\"query\": \"q\"}}",
        (0..10_000)
            .map(|i| format!("\"k{i}\": {i}, "))
            .collect::<String>()
    );
    let too_big = format!(r#"{{"query": "{}"}}"#, "q".repeat(300 * 1024));

    // Not decisions: errors naming `arguments_json`.
    let refused = [
        (r#"{"query": "\ud800"}"#.to_owned(), "not valid JSON"),
        (
            r#"{"query": "\udc00 and \ud800\u0041"}"#.to_owned(),
            "not valid JSON",
        ),
        (
            r#"{"query": "q", "n": 1e400}"#.to_owned(),
            "number out of range",
        ),
        (r#"{"query": NaN}"#.to_owned(), "not valid JSON"),
        (deep(40), "nested deeper than 32"),
        (deep(100_000), "recursion limit"),
        (too_big, "larger than 262144 bytes"),
        (
            "{\"query\": \"q\"} trailing".to_owned(),
            "trailing characters",
        ),
    ];
    for (args, problem) in &refused {
        let err = authorize_raw(&h, &session, "web.search", args)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{args:.60}");
        assert!(
            err.message().starts_with("`arguments_json`: "),
            "{args:.60}: {}",
            err.message()
        );
        assert!(
            err.message().contains(problem),
            "{args:.60}: {}",
            err.message()
        );
    }

    // Decisions: DENY INVALID_ARGUMENTS naming the argument.
    let denied = [
        (
            r#"{"query": "q", "max_results": 18446744073709551616}"#.to_owned(),
            "`args.max_results`: integer is out of range",
        ),
        (
            r#"{"query": "q", "max_results": 1e30}"#.to_owned(),
            "`args.max_results`: integer is out of range",
        ),
        (
            r#"{"query": "q", "max_results": -9223372036854775809}"#.to_owned(),
            "`args.max_results`: integer is out of range",
        ),
        (
            r#"{"query": "q", "max_results": 5.5}"#.to_owned(),
            "`args.max_results`: expected an integer, got a fractional number",
        ),
        (
            r#"{"query": "q", "max_results": "NaN"}"#.to_owned(),
            "`args.max_results`: expected an integer, got a string",
        ),
        (
            r#"{"query": {"__entity": {"type": "Role", "id": "admin"}}}"#.to_owned(),
            "`args.query`: expected a string, got an object",
        ),
        (
            r#"{"query": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}}"#.to_owned(),
            "`args.query`: expected a string, got an object",
        ),
        (
            r#"{"query": "q", "__entity": {"type": "Role", "id": "admin"}}"#.to_owned(),
            "`args.__entity`: is not an argument of this tool",
        ),
        (huge_object, "is not an argument of this tool"),
        ("[1]".to_owned(), "`args`: expected an object, got an array"),
        ("null".to_owned(), "`args`: expected an object, got null"),
    ];
    for (args, message) in &denied {
        // A fresh session each: ten denials in one session engage its auto-quarantine kill switch.
        let session = open_session(&agent, &["*"]).await;
        let d = authorize_raw(&h, &session, "web.search", args)
            .await
            .unwrap();
        assert_eq!(d.outcome(), proto::Outcome::Deny, "{args:.60}");
        assert_eq!(reason_codes(&d), ["INVALID_ARGUMENTS"], "{args:.60}");
        assert!(
            d.reasons[0].message.contains(message),
            "{args:.60}: {}",
            d.reasons[0].message
        );
    }
    // Paths the file system reads as a forbidden file, written so that text rules would miss them.
    for path in [
        "//etc/shadow",
        "/srv/../etc/shadow",
        "/srv/./../etc/shadow",
        "etc/shadow",
        "/home/dev/..",
        "",
    ] {
        let session = open_session(&agent, &["*"]).await;
        let args = json!({ "path": path }).to_string();
        let d = authorize_raw(&h, &session, "file.read", &args)
            .await
            .unwrap();
        assert_eq!(d.outcome(), proto::Outcome::Deny, "{path}");
        assert!(
            d.reasons
                .iter()
                .any(|r| r.policy_id == "file-read-canonical-paths-only"),
            "{path}: {:?}",
            d.reasons
        );
    }
    assert_eq!(allow_events(&h).await, 0);
}
both!(hostile_arguments_are_refused_or_denied);

/// Names an executor might take for `email.send`, `shell.exec` or `payments.refund`.
const LOOK_ALIKES: [&str; 20] = [
    "\u{0435}mail.send",      // Cyrillic е
    "email.s\u{0435}nd",      // Cyrillic е
    "\u{200b}email.send",     // zero-width space
    "email.\u{200d}send",     // zero-width joiner
    "email.send\u{feff}",     // zero-width no-break space
    "\u{202e}dnes.liame",     // right-to-left override
    "email\u{2024}send",      // one dot leader
    "\u{ff45}mail.send",      // fullwidth e
    "email.send.",            // trailing dot
    "email.send ",            // trailing space
    " email.send",            // leading space
    "Email.Send",             // case
    "EMAIL.SEND",             // case
    "email..send",            // empty segment
    "email/send",             // another separator
    "sh\u{0435}ll.exec",      // Cyrillic е
    "shell.exec\u{a0}",       // no-break space
    "Shell.exec",             // case
    "payments.refund\t",      // tab
    "p\u{0430}yments.refund", // Cyrillic а
];

async fn look_alike_tool_names_never_dodge_a_forbid(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let session = open_session(&agent, &["*"]).await;
    let args_for = |name: &str| {
        if name.contains("ell") {
            r#"{"command": "rm -rf /"}"#
        } else if name.contains("yments") {
            r#"{"payment_id": "p", "amount": 200000, "currency": "EUR"}"#
        } else {
            r#"{"to": "m@evil.example", "subject": "s", "body": "b"}"#
        }
    };
    // The genuine names are held by their policies.
    for (tool, outcome) in [
        ("email.send", proto::Outcome::PendingApproval),
        ("shell.exec", proto::Outcome::PendingApproval),
        ("payments.refund", proto::Outcome::Deny),
    ] {
        let d = authorize_raw(&h, &session, tool, args_for(tool))
            .await
            .unwrap();
        assert_eq!(d.outcome(), outcome, "{tool}");
    }
    // Every look-alike is an unknown tool: a recorded DENY, never the genuine tool's answer. (A fresh
    // session each: ten denials in one session engage its auto-quarantine kill switch.)
    for name in LOOK_ALIKES {
        let session = open_session(&agent, &["*"]).await;
        let d = authorize_raw(&h, &session, name, args_for(name))
            .await
            .unwrap();
        assert_eq!(d.outcome(), proto::Outcome::Deny, "{name:?}");
        assert_eq!(reason_codes(&d), ["UNKNOWN_TOOL"], "{name:?}");
    }
    // As session scopes: refused, naming `tools`.
    let mut scopes: Vec<String> = LOOK_ALIKES.iter().map(|s| (*s).to_owned()).collect();
    scopes.extend(
        [
            "Email.*",
            "\u{0435}mail.*",
            "email.*\u{200b}",
            "email .*",
            "*.",
        ]
        .map(String::from),
    );
    for scope in &scopes {
        let err = agent
            .open_session(SessionRequest::new([scope.as_str()]))
            .await
            .unwrap_err();
        match &err {
            broker_sdk::Error::InvalidArgument { field, message, .. } => {
                assert_eq!(field.as_deref(), Some("tools"), "{scope:?}");
                assert!(
                    message.contains("is not a tool name"),
                    "{scope:?}: {message}"
                );
                // Invisible characters are shown escaped, so a person reading the error sees them.
                assert!(
                    message
                        .chars()
                        .all(|c| !c.is_control() && c != '\u{200b}' && c != '\u{202e}'),
                    "{scope:?}: {message:?}"
                );
            }
            other => panic!("{scope:?}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    // A session scoped to the genuine tool does not cover its look-alikes either.
    let scoped = open_session(&agent, &["email.send"]).await;
    let d = authorize_raw(&h, &scoped, "Email.Send", args_for("email"))
        .await
        .unwrap();
    assert_eq!(reason_codes(&d), ["UNKNOWN_TOOL"]);
    assert_eq!(allow_events(&h).await, 0);
}
both!(look_alike_tool_names_never_dodge_a_forbid);

// ------------------------------------------------------------------ gRPC and HTTP/2

async fn start() -> Harness {
    // The protocol edge does not depend on the database: SQLite is enough.
    Harness::start(DbBackend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_a_clear_status() {
    let h = start().await;
    let session = open_session(&h.agent("hostile-agent", Some("alice")).await, &["*"]).await;
    // Beyond the gRPC message limit (1 MiB): refused while decoding.
    let huge = format!(r#"{{"query": "{}"}}"#, "q".repeat(2 * 1024 * 1024));
    let err = authorize_raw(&h, &session, "web.search", &huge)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
    // Within the message limit but beyond `max_arguments_bytes`: named.
    let big = format!(r#"{{"query": "{}"}}"#, "q".repeat(512 * 1024));
    let err = authorize_raw(&h, &session, "web.search", &big)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("`arguments_json`: larger than"),
        "{}",
        err.message()
    );
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_metadata_is_refused_and_the_server_stays_up() {
    let h = start().await;
    let session = open_session(&h.agent("hostile-agent", Some("alice")).await, &["*"]).await;
    let call = || proto::AuthorizeToolCallRequest {
        session_id: session.clone(),
        tool: "web.search".into(),
        arguments_json: r#"{"query": "q"}"#.into(),
        call_id: broker_sdk::new_call_id(),
    };
    // One 64 KiB header, and 2,000 small ones: both beyond the 16 KiB header list limit.
    let mut one_big = with_token(&h, call());
    one_big
        .metadata_mut()
        .insert("x-padding", "p".repeat(64 * 1024).parse().unwrap());
    let mut many = with_token(&h, call());
    for i in 0..2000 {
        many.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(format!("x-pad-{i}").as_bytes()).unwrap(),
            "0123456789".parse().unwrap(),
        );
    }
    for req in [one_big, many] {
        let err = grpc(&h).await.authorize_tool_call(req).await.unwrap_err();
        assert_ne!(err.code(), tonic::Code::Ok, "{err:?}");
    }
    // Raw, so no client library stops it first: the server itself refuses the header list (431, a
    // refused stream, or GOAWAY for a list far over the limit), and new connections are served.
    for headers in [
        vec![("x-padding", "p".repeat(17 * 1024))],
        vec![("x-padding", "p".repeat(64 * 1024))],
        (0..2000)
            .map(|_| ("x-pad", "0123456789".to_owned()))
            .collect(),
    ] {
        let (send, _connection) = h2_connect(&h).await;
        let mut send = send.ready().await.unwrap();
        let (response, mut body) = send
            .send_request(grpc_request(HEALTH_CHECK, &headers), false)
            .unwrap();
        let _ = body.send_data(grpc_frame(&[]), true);
        match response.await {
            Ok(r) => assert_eq!(
                r.status(),
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            Err(e) => assert!(
                matches!(
                    e.reason(),
                    Some(h2::Reason::REFUSED_STREAM | h2::Reason::ENHANCE_YOUR_CALM)
                ),
                "{e:?}"
            ),
        }
        let (mut fresh, _connection) = h2_connect(&h).await;
        assert_eq!(
            raw_unary(&mut fresh, HEALTH_CHECK, &[], &[])
                .await
                .as_deref(),
            Some("0")
        );
    }
    // A bearer token past the token limit but within the header limit: refused by the verifier.
    let mut long_token = tonic::Request::new(call());
    long_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", "t".repeat(10_000)).parse().unwrap(),
    );
    let err = grpc(&h)
        .await
        .authorize_tool_call(long_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "token is larger than 8192 bytes");
    // Bytes that are not text in the authorization header.
    let mut binary = tonic::Request::new(call());
    binary.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::try_from(&b"Bearer \xff\xfe.\x80.\x81"[..]).unwrap(),
    );
    let err = grpc(&h)
        .await
        .authorize_tool_call(binary)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "token is malformed");
    still_serving(&h).await;
    assert_eq!(allow_events(&h).await, 1, "only the normal call");
}

/// A raw HTTP/2 connection to the broker.
async fn h2_connect(
    h: &Harness,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(connection))
}

fn grpc_request(path: &str, headers: &[(&str, String)]) -> http::Request<()> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://broker{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    req.body(()).unwrap()
}

/// The gRPC frame of one message: uncompressed flag, big-endian length, bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// Sends one unary gRPC call and returns its `grpc-status` (from the trailers, or the headers of a
/// trailers-only answer).
async fn raw_unary(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, String)],
    message: &[u8],
) -> Option<String> {
    let ready = send.clone().ready().await.unwrap();
    *send = ready;
    let (response, mut body) = send
        .send_request(grpc_request(path, headers), false)
        .unwrap();
    body.send_data(grpc_frame(message), true).unwrap();
    let response = response.await.unwrap();
    let header_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap();
    header_status.or_else(|| {
        trailers.and_then(|t| t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()))
    })
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const AUTHORIZE: &str = "/broker.v1.AgentService/AuthorizeToolCall";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_advertises_its_stream_limit() {
    let h = start().await;
    let (mut send, _connection) = h2_connect(&h).await;
    assert_eq!(
        raw_unary(&mut send, HEALTH_CHECK, &[], &[])
            .await
            .as_deref(),
        Some("0")
    );
    // SETTINGS_MAX_CONCURRENT_STREAMS from `limits.max_concurrent_streams`.
    assert_eq!(
        send.current_max_send_streams(),
        usize::try_from(h.config.limits.max_concurrent_streams).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_timeout_values_are_ignored_and_tiny_ones_end_the_call() {
    let h = start().await;
    let session = open_session(&h.agent("hostile-agent", Some("alice")).await, &["*"]).await;
    let bearer = format!("Bearer {}", agent_token(&h));
    let (mut send, _connection) = h2_connect(&h).await;
    let authorize = |query: &str| {
        proto::AuthorizeToolCallRequest {
            session_id: session.clone(),
            tool: "web.search".into(),
            arguments_json: json!({"query": query}).to_string(),
            call_id: broker_sdk::new_call_id(),
        }
        .encode_to_vec()
    };
    // Unparseable: ignored, so the server's own `request_timeout` bounds the call, which succeeds.
    for timeout in [
        "",
        "abc",
        "1",
        "S",
        "-1S",
        "1.5S",
        "1X",
        "999999999S",
        "0x10S",
        "1 S",
        "１S",
        "99999999H",
    ] {
        let headers = [
            ("grpc-timeout", timeout.to_owned()),
            ("authorization", bearer.clone()),
        ];
        assert_eq!(
            raw_unary(&mut send, AUTHORIZE, &headers, &authorize(timeout))
                .await
                .as_deref(),
            Some("0"),
            "grpc-timeout {timeout:?}"
        );
    }
    // Tiny: the call may end before the decision (CANCELLED or DEADLINE_EXCEEDED), but it is answered.
    for timeout in ["0n", "1n", "1u", "0S"] {
        let headers = [
            ("grpc-timeout", timeout.to_owned()),
            ("authorization", bearer.clone()),
        ];
        let status = raw_unary(&mut send, AUTHORIZE, &headers, &authorize(timeout)).await;
        assert!(
            matches!(status.as_deref(), Some("0" | "1" | "4")),
            "grpc-timeout {timeout:?}: {status:?}"
        );
    }
    still_serving(&h).await;
}

/// Opens up to `streams` streams on `send`, resetting each at once (HEADERS then RST_STREAM, as the
/// attack does); returns how many went out before the connection refused more.
async fn open_and_reset(
    send: &mut h2::client::SendRequest<Bytes>,
    bearer: &str,
    streams: usize,
) -> usize {
    let mut opened = 0;
    while opened < streams {
        let Ok(ready) = send.clone().ready().await else {
            break;
        };
        *send = ready;
        let req = grpc_request(AUTHORIZE, &[("authorization", bearer.to_owned())]);
        let Ok((_response, mut body)) = send.send_request(req, false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_does_not_take_the_server_down() {
    let h = start().await;
    let bearer = format!("Bearer {}", agent_token(&h));

    // Fewer resets than `MAX_PENDING_ACCEPT_RESET_STREAMS` (64) can never trip the limit: the
    // connection stays usable.
    let (mut send, _connection) = h2_connect(&h).await;
    assert_eq!(open_and_reset(&mut send, &bearer, 50).await, 50);
    assert_eq!(
        raw_unary(&mut send, HEALTH_CHECK, &[], &[])
            .await
            .as_deref(),
        Some("0")
    );

    // A flood: the server cuts this connection (GOAWAY, then close) rather than serve it.
    const STREAMS: usize = 20_000;
    for round in 0..3 {
        let (mut send, connection) = h2_connect(&h).await;
        let started = Instant::now();
        let opened = open_and_reset(&mut send, &bearer, STREAMS).await;
        drop(send);
        let ended = tokio::time::timeout(Duration::from_secs(30), connection)
            .await
            .expect("the flooding connection ends")
            .unwrap();
        println!(
            "rapid reset, round {round}: {opened} of {STREAMS} streams opened and reset in {:?}; \
             connection ended with {ended:?}",
            started.elapsed()
        );
        match &ended {
            Ok(()) => assert_eq!(
                opened, STREAMS,
                "the connection ended early without an error"
            ),
            Err(e) => {
                assert!(
                    e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
                        || e.is_io()
                        || e.is_go_away(),
                    "{e:?}"
                );
            }
        }
        // A new connection is served normally.
        let (mut fresh, _connection) = h2_connect(&h).await;
        assert_eq!(
            raw_unary(&mut fresh, HEALTH_CHECK, &[], &[])
                .await
                .as_deref(),
            Some("0")
        );
    }
    still_serving(&h).await;
}

async fn nul_characters_are_refused_naming_the_field(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let mut c = grpc(&h).await;
    let field = |e: broker_sdk::Error| match e {
        broker_sdk::Error::InvalidArgument { field, message, .. } => {
            assert!(message.contains("NUL"), "{message}");
            field.unwrap_or_default()
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let status_field = |e: tonic::Status| {
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("NUL"), "{}", e.message());
        e.message().split('`').nth(1).unwrap_or_default().to_owned()
    };
    // No database column stores a NUL: each is refused at the boundary, not failed as INTERNAL.
    let open =
        |purpose: &str, collections: Vec<String>, tools: Vec<String>| proto::OpenSessionRequest {
            tools,
            purpose: purpose.to_owned(),
            collections,
            ..Default::default()
        };
    let star = || vec!["*".to_owned()];
    for (req, want) in [
        (open("a\0b", vec![], star()), "purpose"),
        (open("p", vec!["kb\0".into()], star()), "collections"),
        (open("p", vec![], vec!["email.send\0".into()]), "tools"),
    ] {
        let err = c.open_session(with_token(&h, req)).await.unwrap_err();
        assert_eq!(status_field(err), want);
    }
    let session = open_session(&agent, &["*"]).await;
    let err = authorize_raw(&h, &session, "shell.exec\0", "{}")
        .await
        .unwrap_err();
    assert_eq!(status_field(err), "tool");

    let pending = agent
        .authorize(&session, "shell.exec", &json!({"command": "id"}))
        .await
        .unwrap();
    let approver = h.approver("bob", &["platform-oncall"]).await;
    let err = approver
        .approve(pending.approval_id.as_deref().unwrap(), "ok\0")
        .await
        .unwrap_err();
    assert_eq!(field(err), "comment");
    let admin = h.admin().await;
    for (target, reason, want) in [("x", "r\0", "reason"), ("x\0", "r", "target")] {
        let err = admin
            .engage(broker_sdk::EngageRequest::new(
                broker_sdk::KillSwitchScope::Agent,
                target,
                reason,
            ))
            .await
            .unwrap_err();
        assert_eq!(field(err), want);
    }
    // A document whose labels could not be matched exactly is denied, naming `labels`.
    let token = h.token_in_tenant("hostile-agent", &[Role::Agent], Some("alice"), Some("acme"));
    let tenant_agent = h.client_with_token(token.clone()).await;
    let s = tenant_agent
        .open_session(SessionRequest::new(["*"]).purpose("p").collections(["kb"]))
        .await
        .unwrap()
        .session_id;
    let doc = |labels: &str| proto::Document {
        id: "doc-1".into(),
        attributes_json: format!(
            r#"{{"tenant":"acme","collection":"kb","classification":0,"personal":false,"source":"s","labels":{labels}}}"#
        ),
    };
    for labels in [
        r#"["a\u0000"]"#,
        r#"["Untrusted"]"#,
        r#"["untrusted\u200b"]"#,
        r#"[""]"#,
    ] {
        let mut req = tonic::Request::new(proto::AuthorizeRetrievalRequest {
            session_id: s.clone(),
            documents: vec![doc(labels)],
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let r = grpc(&h)
            .await
            .authorize_retrieval(req)
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed_ids.is_empty(), "{labels}");
        let reason = &r.documents[0].reasons[0];
        assert_eq!(reason.code, "INVALID_ARGUMENTS", "{labels}");
        assert!(
            reason.message.contains("`labels`"),
            "{labels}: {}",
            reason.message
        );
    }
    // The well-formed document is allowed: the refusals above were about the labels alone.
    let mut req = tonic::Request::new(proto::AuthorizeRetrievalRequest {
        session_id: s.clone(),
        documents: vec![doc(r#"["untrusted"]"#)],
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let r = grpc(&h)
        .await
        .authorize_retrieval(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.allowed_ids, ["doc-1"]);
    still_serving(&h).await;
}
both!(nul_characters_are_refused_naming_the_field);

// ------------------------------------------------------------------ NUL, one test per field class

/// `tonic::Request` carrying `token`.
fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The call was refused as INVALID_ARGUMENT naming `field` (never INTERNAL, never answered).
#[track_caller]
fn refused_naming<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let err = r.expect_err("a NUL must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
    assert!(
        err.message().starts_with(&format!("`{field}`")),
        "{field}: {}",
        err.message()
    );
}

async fn event_count(h: &Harness) -> usize {
    h.auditor()
        .await
        .list_events(AuditFilter::new().page_size(1000))
        .await
        .unwrap()
        .events
        .len()
}

const NUL_SESSION: &str = "ses_0000000000000000000000000000000\0";

async fn nul_in_argument_keys_is_refused_naming_arguments_json(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let session = open_session(&agent, &["*"]).await;
    let before = event_count(&h).await;
    for args in [
        r#"{"query": "q", "a\u0000b": 1}"#,
        r#"{"query": "q", "\u0000": 1}"#,
        r#"{"query": "q", "meta": {"x": {"k\u0000": true}}}"#,
        r#"{"query": "q", "list": [1, {"ok": [{"\u0000deep": null}]}]}"#,
        r#"{"to": "bob@example.com", "subject": "s", "body": "b", "c\u0000c": "m@evil.example"}"#,
    ] {
        let err = authorize_raw(&h, &session, "web.search", args)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{args}: {err:?}");
        assert!(
            err.message().starts_with("`arguments_json`: ") && err.message().contains("NUL"),
            "{args}: {}",
            err.message()
        );
        assert!(!err.message().contains('\0'), "{:?}", err.message());
    }
    // Refused before anything is decided: nothing in the trail, nothing spent.
    assert_eq!(event_count(&h).await, before);
    still_serving(&h).await;
}
both!(nul_in_argument_keys_is_refused_naming_arguments_json);

/// A NUL inside a string *value* is data: decided as any other value, and recorded (escaped as
/// `\u0000` in the trail's JSON text, which every backend stores).
async fn nul_in_argument_values_is_decided_and_recorded(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let session = open_session(&agent, &["*"]).await;
    let d = authorize_raw(&h, &session, "web.search", r#"{"query": "a\u0000b"}"#)
        .await
        .unwrap();
    assert_eq!(d.outcome(), proto::Outcome::Allow, "{d:?}");
    // Denied with a reason (a path where NUL ends a C string), and recorded too.
    let d = authorize_raw(
        &h,
        &session,
        "file.read",
        r#"{"path": "/etc/shadow\u0000.txt"}"#,
    )
    .await
    .unwrap();
    assert_eq!(d.outcome(), proto::Outcome::Deny, "{d:?}");
    let events = h
        .auditor()
        .await
        .list_events(AuditFilter::new().session_id(&session))
        .await
        .unwrap()
        .events;
    let recorded: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "TOOL_CALL_DECIDED")
        .map(|e| e.arguments_redacted_json.as_str())
        .collect();
    assert_eq!(recorded.len(), 2, "{events:?}");
    assert!(recorded[0].contains(r"a\u0000b"), "{recorded:?}");
    assert!(recorded.iter().all(|a| !a.contains('\0')), "{recorded:?}");
    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(nul_in_argument_values_is_decided_and_recorded);

async fn nul_in_document_ids_is_refused_naming_documents(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let token = h.token_in_tenant("hostile-agent", &[Role::Agent], Some("alice"), Some("acme"));
    let agent = h.client_with_token(token.clone()).await;
    let s = agent
        .open_session(SessionRequest::new(["*"]).purpose("p").collections(["kb"]))
        .await
        .unwrap()
        .session_id;
    let good = r#"{"tenant":"acme","collection":"kb","classification":0,"personal":false,"source":"s","labels":[]}"#;
    let before = event_count(&h).await;
    for id in ["doc\0", "\0", "a\0b"] {
        let r = grpc(&h)
            .await
            .authorize_retrieval(authed(
                &token,
                proto::AuthorizeRetrievalRequest {
                    session_id: s.clone(),
                    documents: vec![
                        proto::Document {
                            id: "fine".into(),
                            attributes_json: good.into(),
                        },
                        proto::Document {
                            id: id.into(),
                            attributes_json: good.into(),
                        },
                    ],
                },
            ))
            .await;
        refused_naming(r, "documents");
    }
    assert_eq!(event_count(&h).await, before);
    still_serving(&h).await;
}
both!(nul_in_document_ids_is_refused_naming_documents);

/// Malformed metadata denies that document alone (the batch design): a NUL in a key at any depth is
/// malformed, named in the reason, and never echoed raw.
async fn nul_in_document_metadata_keys_denies_that_document(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let token = h.token_in_tenant("hostile-agent", &[Role::Agent], Some("alice"), Some("acme"));
    let agent = h.client_with_token(token.clone()).await;
    let s = agent
        .open_session(SessionRequest::new(["*"]).purpose("p").collections(["kb"]))
        .await
        .unwrap()
        .session_id;
    let good = r#"{"tenant":"acme","collection":"kb","classification":0,"personal":false,"source":"s","labels":[]}"#;
    for bad in [
        r#"{"tenant":"acme","collection":"kb","classification":0,"personal":false,"source":"s","labels":[],"x\u0000":1}"#,
        r#"{"tenant\u0000":"acme","collection":"kb","classification":0,"personal":false,"source":"s","labels":[]}"#,
        r#"{"tenant":"acme","collection":"kb","classification":0,"personal":false,"source":"s","labels":[],"owner":{"\u0000":1}}"#,
    ] {
        let r = grpc(&h)
            .await
            .authorize_retrieval(authed(
                &token,
                proto::AuthorizeRetrievalRequest {
                    session_id: s.clone(),
                    documents: vec![
                        proto::Document {
                            id: "bad".into(),
                            attributes_json: bad.into(),
                        },
                        proto::Document {
                            id: "good".into(),
                            attributes_json: good.into(),
                        },
                    ],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.allowed_ids, ["good"], "{bad}");
        let reason = &r.documents[0].reasons[0];
        assert_eq!(reason.code, "INVALID_ARGUMENTS", "{bad}");
        assert!(reason.message.contains("NUL"), "{bad}: {}", reason.message);
        assert!(!reason.message.contains('\0'), "{:?}", reason.message);
    }
    assert!(h.auditor().await.verify_chain().await.unwrap().is_ok());
}
both!(nul_in_document_metadata_keys_denies_that_document);

/// Every id an RPC takes: session, parent session, call, decision, approval and kill switch ids.
async fn nul_in_ids_is_refused_naming_the_field(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let token = agent_token(&h);
    let session = open_session(&agent, &["*"]).await;
    let decided = agent
        .authorize(&session, "web.search", &json!({"query": "q"}))
        .await
        .unwrap();
    let pending = agent
        .authorize(&session, "shell.exec", &json!({"command": "id"}))
        .await
        .unwrap();
    let approval_id = pending.approval_id.clone().unwrap();
    let nul_approval = format!("{approval_id}\0");
    let before = event_count(&h).await;
    let mut c = grpc(&h).await;

    refused_naming(
        c.close_session(authed(
            &token,
            proto::CloseSessionRequest {
                session_id: format!("{session}\0"),
            },
        ))
        .await,
        "session_id",
    );
    refused_naming(
        c.open_session(authed(
            &token,
            proto::OpenSessionRequest {
                tools: vec!["*".into()],
                parent_session_id: format!("{session}\0"),
                ..Default::default()
            },
        ))
        .await,
        "parent_session_id",
    );
    for (session_id, call_id, field) in [
        (NUL_SESSION.to_owned(), "c1".to_owned(), "session_id"),
        (session.clone(), "c\0".to_owned(), "call_id"),
    ] {
        refused_naming(
            c.authorize_tool_call(authed(
                &token,
                proto::AuthorizeToolCallRequest {
                    session_id,
                    tool: "web.search".into(),
                    arguments_json: r#"{"query": "q"}"#.into(),
                    call_id,
                },
            ))
            .await,
            field,
        );
    }
    refused_naming(
        c.authorize_retrieval(authed(
            &token,
            proto::AuthorizeRetrievalRequest {
                session_id: NUL_SESSION.into(),
                documents: vec![],
            },
        ))
        .await,
        "session_id",
    );
    refused_naming(
        c.retrieval_filter(authed(
            &token,
            proto::RetrievalFilterRequest {
                session_id: NUL_SESSION.into(),
                ..Default::default()
            },
        ))
        .await,
        "session_id",
    );
    for (session_id, decision_id, field) in [
        (
            NUL_SESSION.to_owned(),
            decided.decision_id.clone(),
            "session_id",
        ),
        (
            session.clone(),
            format!("{}\0", decided.decision_id),
            "decision_id",
        ),
    ] {
        refused_naming(
            c.report_tool_result(authed(
                &token,
                proto::ReportToolResultRequest {
                    decision_id,
                    session_id,
                    status: "ok".into(),
                    labels: vec![],
                },
            ))
            .await,
            field,
        );
    }
    refused_naming(
        c.await_approval(authed(
            &token,
            proto::AwaitApprovalRequest {
                approval_id: nul_approval.clone(),
                timeout: None,
            },
        ))
        .await,
        "approval_id",
    );

    let approver = h.approver_token("bob", &["platform-oncall"]);
    let mut a = proto::approval_service_client::ApprovalServiceClient::connect(h.endpoint())
        .await
        .unwrap();
    refused_naming(
        a.get_approval(authed(
            &approver,
            proto::GetApprovalRequest {
                approval_id: nul_approval.clone(),
            },
        ))
        .await,
        "approval_id",
    );
    refused_naming(
        a.approve(authed(
            &approver,
            proto::ApproveRequest {
                approval_id: nul_approval.clone(),
                comment: "ok".into(),
            },
        ))
        .await,
        "approval_id",
    );
    refused_naming(
        a.deny(authed(
            &approver,
            proto::DenyRequest {
                approval_id: nul_approval.clone(),
                comment: "no".into(),
            },
        ))
        .await,
        "approval_id",
    );

    let admin_token = h.token("ops-admin", &[Role::Admin], None);
    let mut k = proto::kill_switch_service_client::KillSwitchServiceClient::connect(h.endpoint())
        .await
        .unwrap();
    refused_naming(
        k.release(authed(
            &admin_token,
            proto::ReleaseKillSwitchRequest {
                id: "ksw_0000000000000000000000000000000\0".into(),
                reason: "r".into(),
            },
        ))
        .await,
        "id",
    );
    assert_eq!(event_count(&h).await, before, "nothing recorded");
    still_serving(&h).await;
}
both!(nul_in_ids_is_refused_naming_the_field);

/// Labels and the other words a report carries.
async fn nul_in_labels_is_refused_naming_the_field(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let agent = h.agent("hostile-agent", Some("alice")).await;
    let token = agent_token(&h);
    let session = open_session(&agent, &["*"]).await;
    let decided = agent
        .authorize(&session, "web.search", &json!({"query": "q"}))
        .await
        .unwrap();
    let before = event_count(&h).await;
    let mut c = grpc(&h).await;
    for (status, labels, field) in [
        ("ok", vec!["untrusted\0".to_owned()], "labels"),
        ("ok", vec!["\0".to_owned()], "labels"),
        ("ok\0", vec![], "status"),
    ] {
        refused_naming(
            c.report_tool_result(authed(
                &token,
                proto::ReportToolResultRequest {
                    decision_id: decided.decision_id.clone(),
                    session_id: session.clone(),
                    status: status.into(),
                    labels,
                },
            ))
            .await,
            field,
        );
    }
    refused_naming(
        c.retrieval_filter(authed(
            &token,
            proto::RetrievalFilterRequest {
                session_id: session.clone(),
                exclude_labels: vec!["confidential\0".into()],
            },
        ))
        .await,
        "exclude_labels",
    );
    assert_eq!(event_count(&h).await, before, "nothing recorded");
    still_serving(&h).await;
}
both!(nul_in_labels_is_refused_naming_the_field);

/// Listing filters and page tokens reach the store as query parameters (Postgres refuses a NUL there).
async fn nul_in_list_filters_is_refused_naming_the_field(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let auditor = h.token("security-team", &[Role::Auditor], None);
    let mut audit = proto::audit_service_client::AuditServiceClient::connect(h.endpoint())
        .await
        .unwrap();
    let list = |f: fn(&mut proto::ListAuditEventsRequest)| {
        let mut r = proto::ListAuditEventsRequest::default();
        f(&mut r);
        r
    };
    for (req, field) in [
        (list(|r| r.session_id = NUL_SESSION.into()), "session_id"),
        (list(|r| r.agent = "hostile-agent\0".into()), "agent"),
        (list(|r| r.tool = "web.search\0".into()), "tool"),
        (list(|r| r.page_token = "1\0".into()), "page_token"),
    ] {
        refused_naming(audit.list_audit_events(authed(&auditor, req)).await, field);
    }
    let approver = h.approver_token("bob", &["platform-oncall"]);
    let mut a = proto::approval_service_client::ApprovalServiceClient::connect(h.endpoint())
        .await
        .unwrap();
    for (req, field) in [
        (
            proto::ListApprovalsRequest {
                tool: "shell.exec\0".into(),
                ..Default::default()
            },
            "tool",
        ),
        (
            proto::ListApprovalsRequest {
                agent: "hostile-agent\0".into(),
                ..Default::default()
            },
            "agent",
        ),
        (
            proto::ListApprovalsRequest {
                page_token: "\0".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        refused_naming(a.list_approvals(authed(&approver, req)).await, field);
    }
    still_serving(&h).await;
}
both!(nul_in_list_filters_is_refused_naming_the_field);

/// Claims become the trail's agent, user and tenant: a token whose claims hold a NUL is refused
/// (UNAUTHENTICATED), never an INTERNAL error once the store sees it.
async fn nul_in_token_claims_is_refused(backend: DbBackend) {
    let h = Harness::start(backend).await;
    let before = event_count(&h).await;
    let claims = h.valid_claims("hostile-agent");
    let mut cases = Vec::new();
    for (claim, value) in [
        ("sub", json!("hostile\0agent")),
        ("on_behalf_of", json!("alice\0")),
        ("tenant", json!("acme\0")),
        ("groups", json!(["security\0"])),
    ] {
        let mut c = claims.clone();
        c[claim] = value;
        cases.push((claim, c));
    }
    let mut nul_key = claims.clone();
    nul_key["x\0"] = json!(1);
    cases.push(("a key", nul_key));
    for (what, claims) in cases {
        let token = h.sign(&claims);
        let r = grpc(&h)
            .await
            .open_session(authed(
                &token,
                proto::OpenSessionRequest {
                    tools: vec!["*".into()],
                    ..Default::default()
                },
            ))
            .await;
        let err = r.expect_err(what);
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}: {err:?}");
    }
    assert_eq!(event_count(&h).await, before, "nothing recorded");
    still_serving(&h).await;
}
both!(nul_in_token_claims_is_refused);
