//! The `broker` command as an operator runs it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use broker::checkpoint::Signer;
use broker::clock::SystemClock;
use broker::config::Config;
use broker::domain::audit::{EventBody, EventKind};
use broker::domain::session::{Session, ToolScope};
use broker::store::testing::TestDb;
use broker::store::{Backend, Store};

fn broker(args: &[&str]) -> Output {
    broker_with_env(args, &[])
}

fn broker_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .env_remove("BROKER_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn policies() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .display()
        .to_string()
}

#[test]
fn policy_check_and_test_pass_on_the_examples() {
    let check = broker(&["policy", "check", &policies()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("are valid"), "{}", text(&check));
    let test = broker(&["policy", "test", &policies()]);
    assert!(test.status.success(), "{}", text(&test));
    assert!(text(&test).contains(" passed, 0 failed"), "{}", text(&test));
}

#[test]
fn policy_check_names_file_and_line_of_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["schema.cedarschema", "entities.json"] {
        std::fs::copy(Path::new(&policies()).join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("bad.cedar"), "@id(\"x\")\npermit (principal, action == Action::\"web.search\", resource)\nwhen { context.args.nope };\n").unwrap();
    let out = broker(&["policy", "check", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad.cedar:"), "{}", text(&out));
}

#[test]
fn token_prints_a_jwt_and_keeps_the_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = broker(&[
        "token",
        "--sub",
        "agent-1",
        "--role",
        "agent",
        "--on-behalf-of",
        "alice",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("dev-signing-key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bad = broker(&[
        "token",
        "--sub",
        "a",
        "--role",
        "superuser",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("superuser"), "{}", text(&bad));
}

/// Opens `n` sessions, one audit event each.
async fn open_sessions(store: &Store, n: i64) {
    for i in 0..n {
        let session = Session {
            id: broker::ids::session_id(),
            agent: "agent-1".into(),
            user: None,
            tenant: None,
            tools: vec![ToolScope::All],
            purpose: format!("p{i}"),
            created_at: i,
            expires_at: 1_000_000,
            max_tool_calls: 1,
            tool_calls_used: 0,
            closed_at: None,
            collections: vec![],
            labels: vec![],
            ancestors: vec![],
        };
        let event = EventBody::for_session(EventKind::SessionOpened, &session, i);
        store.open_session(&session, event).await.unwrap();
    }
}

#[tokio::test]
async fn audit_verify_passes_then_names_the_tampered_event() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    open_sessions(db.store(), 3).await;
    let url = db.config().database_url.clone();
    // No broker wrote these events, so there are no checkpoints: the chain alone is checked.
    let verify = [
        "audit",
        "verify",
        "--no-checkpoints",
        "--database-url",
        &url,
    ];
    let ok = broker(&verify);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("3 events verified"), "{}", text(&ok));
    let list = broker(&["audit", "list", "--database-url", &url]);
    assert_eq!(
        text(&list).matches("SESSION_OPENED").count(),
        3,
        "{}",
        text(&list)
    );

    db.execute("DROP TRIGGER audit_events_no_update")
        .await
        .unwrap();
    db.execute("UPDATE audit_events SET agent = 'someone-else' WHERE seq = 2")
        .await
        .unwrap();
    let broken = broker(&verify);
    assert!(!broken.status.success());
    assert!(
        text(&broken).contains("BROKEN at event 2"),
        "{}",
        text(&broken)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_a_rewritten_chain_with_the_checkpoints_a_broker_signed() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let url = db.config().database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();

    // A broker serving this database signs checkpoints into its data dir, the last one as it stops.
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        database_url: url.clone(),
        policies: policies().into(),
        ..Config::default()
    };
    let running = broker::start(config, None, Arc::new(SystemClock))
        .await
        .unwrap();
    open_sessions(db.store(), 3).await;
    running.shutdown().await.unwrap();

    // The security team keeps the public key elsewhere.
    let key = broker(&["audit", "checkpoint-key", "--data-dir", data_arg]);
    assert!(key.status.success(), "{}", text(&key));
    let public_key = String::from_utf8(key.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(public_key.len(), 64, "{public_key}");
    let key_file = dir.path().join("checkpoint.pub");
    std::fs::write(&key_file, format!("{public_key}\n")).unwrap();

    let verify = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            "--database-url",
            &url,
            "--data-dir",
            data_arg,
        ];
        args.extend_from_slice(extra);
        broker(&args)
    };
    let ok = verify(&["--public-key", &public_key]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("audit chain ok: 3 events verified"),
        "{}",
        text(&ok)
    );
    assert!(
        text(&ok).contains("match the chain up to event 3"),
        "{}",
        text(&ok)
    );
    let from_file = verify(&["--public-key", key_file.to_str().unwrap()]);
    assert!(from_file.status.success(), "{}", text(&from_file));

    // Checkpoints are only as good as the key they are checked with.
    let other = hex::encode(Signer::from_seed(&[1; 32]).public_key().as_bytes());
    let wrong_key = verify(&["--public-key", &other]);
    assert_eq!(wrong_key.status.code(), Some(1), "{}", text(&wrong_key));
    assert!(
        text(&wrong_key).contains("not by the expected key"),
        "{}",
        text(&wrong_key)
    );

    // Rewrite event 2 and recompute every hash: the walk passes, the checkpoints do not.
    let mut n = 0;
    db.rewrite_chain(|body| {
        n += 1;
        if n == 2 {
            body.agent = "someone-else".into();
        }
    })
    .await
    .unwrap();
    let rewritten = verify(&["--public-key", &public_key]);
    assert_eq!(rewritten.status.code(), Some(1), "{}", text(&rewritten));
    let out = text(&rewritten);
    assert!(out.contains("audit chain ok: 3 events verified"), "{out}");
    assert!(out.contains("checkpoints FAILED"), "{out}");
    assert!(out.contains("(event 3, signed "), "{out}");
    assert!(out.contains("the chain was rewritten"), "{out}");

    // A checkpoint file that is not there is reported, not skipped.
    let missing = verify(&[
        "--public-key",
        &public_key,
        "--checkpoints",
        "/nonexistent/checkpoints.jsonl",
    ]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(
        text(&missing).contains("checkpoints MISSING"),
        "{}",
        text(&missing)
    );
}

/// Waits at most `bound` for the checkpoint file's last line to name event `seq`.
async fn wait_for_checkpoint(path: &Path, seq: i64, bound: std::time::Duration) {
    let start = std::time::Instant::now();
    while broker::checkpoint::sink::last(path)
        .unwrap()
        .is_none_or(|c| c.seq != seq)
    {
        assert!(
            start.elapsed() < bound,
            "no checkpoint of event {seq} within {bound:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_the_last_commit_cut_from_a_running_broker() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let url = db.config().database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        database_url: url.clone(),
        policies: policies().into(),
        ..Config::default()
    };
    let checkpoints = config.checkpoint_path();
    let running = broker::start(config, None, Arc::new(SystemClock))
        .await
        .unwrap();
    // Commits through the broker's own writer; the first is signed at once.
    open_sessions(&running.store, 1).await;
    wait_for_checkpoint(&checkpoints, 1, std::time::Duration::from_secs(20)).await;
    // A burst: its last commit is signed within `audit.checkpoints.every` (500 ms) while the broker runs,
    // with no shutdown to write it. The bound is half the 10 s the broker used to leave unsigned.
    open_sessions(&running.store, 20).await;
    wait_for_checkpoint(&checkpoints, 21, std::time::Duration::from_secs(5)).await;

    // Someone with database access cuts the last event.
    assert_eq!(db.truncate_chain_after(20).await.unwrap(), 1);
    let cut = broker(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut));
    let out = text(&cut);
    assert!(out.contains("audit chain ok: 20 events verified"), "{out}");
    assert!(out.contains("(event 21, signed "), "{out}");
    assert!(out.contains("its tail was truncated"), "{out}");
    running.shutdown().await.unwrap();
}

#[test]
fn db_grants_give_the_audit_trail_only_select_and_insert() {
    let out = broker(&["db", "grants", "--role", "broker_app"]);
    assert!(out.status.success(), "{}", text(&out));
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(
        sql.contains("GRANT SELECT, INSERT ON audit_events TO \"broker_app\";"),
        "{sql}"
    );
    let bad = broker(&["db", "grants", "--role", "x; DROP TABLE audit_events"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("role `x; DROP TABLE audit_events`"),
        "{}",
        text(&bad)
    );
}

#[test]
fn serve_refuses_to_start_without_policies() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in ["schema.cedarschema", "entities.json"] {
        std::fs::copy(Path::new(&self::policies()).join(f), policies.join(f)).unwrap();
    }
    let out = broker(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--policies",
        policies.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no policies found"), "{}", text(&out));
}

#[test]
fn worker_threads_sets_the_runtime_and_a_bad_count_is_refused_by_name() {
    let run = |threads: &str| {
        broker_with_env(
            &["policy", "check", &policies()],
            &[("BROKER_WORKER_THREADS", threads)],
        )
    };
    let one = run("1");
    assert!(one.status.success(), "{}", text(&one));
    assert!(text(&one).contains("are valid"), "{}", text(&one));
    let absurd = run("100000");
    assert!(!absurd.status.success());
    assert!(
        text(&absurd).contains("`worker_threads`: at most 1024"),
        "{}",
        text(&absurd)
    );
}

/// `broker serve`, as an operator runs it: SQLite in `data`, the policies in `policies`, logs at `info`
/// into `log`.
fn serve(policies: &Path, data: &Path, log: &Path) -> (std::process::Child, String) {
    serve_with_env(policies, data, log, &[])
}

fn serve_with_env(
    policies: &Path,
    data: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["serve", "--listen", &addr.to_string()])
        .arg("--policies")
        .arg(policies)
        .arg("--data-dir")
        .arg(data)
        .env_remove("BROKER_CONFIG")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (child, format!("http://{addr}"))
}

/// Kills the child when the test ends, passing or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hangup(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Polls `check` every 50 ms until it holds; fails after 30 s naming `what`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_policies_and_an_invalid_set_leaves_the_one_in_effect() {
    use broker::auth::{dev, AuthConfig, Role};
    use broker_sdk::{Client, Outcome, SessionRequest};

    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(self::policies()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, policies.join(p.file_name().unwrap())).unwrap();
        }
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The dev issuer's key, created here so that this test can mint the agent's token.
    let (secret, _) = dev::load_or_create_secret(&data).unwrap();
    let cfg = AuthConfig::default();
    let token = dev::mint(
        &secret,
        &cfg,
        &dev::TokenRequest {
            subject: "agent-1".into(),
            roles: vec![Role::Agent],
            on_behalf_of: Some("alice".into()),
            tenant: None,
            groups: vec![],
            ttl: std::time::Duration::from_secs(600),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        },
    )
    .unwrap();
    let log = dir.path().join("broker.log");
    let (child, endpoint) = serve(&policies, &data, &log);
    let child = Killed(child);
    let connect = || Client::connect(endpoint.clone(), token.clone());
    eventually("the broker to start", || async { connect().await.is_ok() }).await;
    let agent = connect().await.unwrap();
    let session = agent
        .open_session(SessionRequest::new(["web.search"]).max_tool_calls(10_000))
        .await
        .unwrap()
        .session_id;
    let query = serde_json::json!({"query": "x"});
    let search = || agent.authorize(&session, "web.search", &query);
    assert!(search().await.unwrap().is_allowed());

    std::fs::write(
        policies.join("freeze.cedar"),
        "@id(\"web-search-frozen\")\n@reason(\"web search is paused\")\nforbid (principal, action == Action::\"web.search\", resource);\n",
    )
    .unwrap();
    hangup(&child.0);
    let frozen = || async {
        let d = search().await.unwrap();
        d.outcome == Outcome::Deny
            && d.reason("POLICY_DENY")
                .is_some_and(|r| r.policy_id.as_deref() == Some("web-search-frozen"))
    };
    eventually("the reloaded forbid to deny", frozen).await;

    // A set that fails validation is refused whole: the freeze stays, nothing opens.
    std::fs::write(
        policies.join("typo.cedar"),
        "permit (principal, action == Action::\"no.such.tool\", resource);\n",
    )
    .unwrap();
    hangup(&child.0);
    eventually("the broker to refuse the invalid set", || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("policy reload refused")
    })
    .await;
    assert!(frozen().await, "the set in effect stays");
}

/// A token signed with the dev issuer's key in `data` (created if missing).
fn mint(
    data: &Path,
    sub: &str,
    role: broker::auth::Role,
    user: Option<&str>,
    groups: &[&str],
) -> String {
    use broker::auth::{dev, AuthConfig};
    let (secret, _) = dev::load_or_create_secret(data).unwrap();
    let cfg = AuthConfig::default();
    dev::mint(
        &secret,
        &cfg,
        &dev::TokenRequest {
            subject: sub.into(),
            roles: vec![role],
            on_behalf_of: user.map(Into::into),
            tenant: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ttl: std::time::Duration::from_secs(600),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        },
    )
    .unwrap()
}

fn terminate(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits (at most `bound`) for the child to exit.
async fn exit_within(
    child: &mut std::process::Child,
    bound: std::time::Duration,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < bound,
            "the broker did not exit within {bound:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every event of the trail, oldest first.
async fn all_events(store: &Store) -> Vec<broker::domain::audit::AuditEvent> {
    let mut events = Vec::new();
    loop {
        let after_seq = events
            .last()
            .map_or(0, |e: &broker::domain::audit::AuditEvent| e.seq);
        let (page, _) = store
            .list_events(
                &broker::store::EventFilter::default(),
                broker::store::Page {
                    after_seq,
                    limit: 1000,
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_call_in_flight_flushes_the_trail_signs_a_last_checkpoint_and_exits_0_sqlite(
) {
    sigterm_with_calls_in_flight(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_call_in_flight_flushes_the_trail_signs_a_last_checkpoint_and_exits_0_postgres(
) {
    sigterm_with_calls_in_flight(Backend::Postgres).await;
}

async fn sigterm_with_calls_in_flight(backend: Backend) {
    use broker::auth::Role;
    use broker_sdk::{Client, SessionRequest};

    let db = TestDb::new(backend).await.unwrap();
    let url = db.config().database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let agent_token = mint(&data, "agent-1", Role::Agent, Some("alice"), &[]);
    let log = dir.path().join("broker.log");
    let (child, endpoint) = serve_with_env(
        Path::new(&policies()),
        &data,
        &log,
        &[
            ("BROKER_SHUTDOWN_GRACE", "1s"),
            ("BROKER_DATABASE_URL", &url),
            // The test database's role owns the tables.
            ("BROKER_STORE__ALLOW_PRIVILEGED_ROLE", "true"),
        ],
    );
    let mut child = Killed(child);
    let connect = || Client::connect(endpoint.clone(), agent_token.clone());
    eventually("the broker to start", || async { connect().await.is_ok() }).await;
    let agent = connect().await.unwrap();
    let session = agent
        .open_session(
            SessionRequest::new(["web.search", "payments.refund"]).max_tool_calls(100_000),
        )
        .await
        .unwrap()
        .session_id;

    // A call that would wait 8 s for approvers: the grace period (1 s) cuts it short.
    let refund = serde_json::json!({"payment_id": "pay_1", "amount": 5000, "currency": "EUR"});
    let pending = agent
        .authorize(&session, "payments.refund", &refund)
        .await
        .unwrap();
    assert!(pending.is_pending(), "{pending:?}");
    let approval_id = pending.approval_id.clone().unwrap();
    let waiter = agent.clone();
    let waiting = tokio::spawn(async move {
        let r = waiter
            .await_approval(&approval_id, std::time::Duration::from_secs(8))
            .await;
        (r, std::time::Instant::now())
    });

    // Calls in flight all along: each loop records every ALLOW it is given, until the broker is gone.
    let allowed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let agent = connect().await.unwrap();
        let session = session.clone();
        let allowed = Arc::clone(&allowed);
        loops.push(tokio::spawn(async move {
            let query = serde_json::json!({"query": "x"});
            loop {
                match agent.authorize(&session, "web.search", &query).await {
                    Ok(d) => {
                        assert!(d.is_allowed(), "{d:?}");
                        allowed.lock().unwrap().push(d.decision_id);
                    }
                    Err(e) => return e,
                }
            }
        }));
    }
    eventually("calls to be answered", || async {
        allowed.lock().unwrap().len() >= 100
    })
    .await;

    terminate(&child.0);
    let signalled = std::time::Instant::now();
    let status = exit_within(&mut child.0, std::time::Duration::from_secs(30)).await;
    let stopped_in = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // The waiting call was answered, at the end of the grace period, and not with an approval.
    let (waited, answered_at) = waiting.await.unwrap();
    let err = waited.unwrap_err();
    assert_eq!(err.reason(), Some("SHUTTING_DOWN"), "{err}");
    let cut_after = answered_at.duration_since(signalled);
    assert!(
        cut_after < std::time::Duration::from_secs(5),
        "cut after {cut_after:?}"
    );
    assert!(
        stopped_in < std::time::Duration::from_secs(8),
        "stopped in {stopped_in:?}"
    );
    eprintln!("{backend:?}: the waiting call was answered {cut_after:?} after SIGTERM, the broker exited after {stopped_in:?}");
    // Each loop ended on an error (could not decide: the tool does not run): UNAVAILABLE from the broker
    // or its closed port, or, for a call sent as the broker closed the connection, what the client's
    // HTTP/2 stack makes of the GOAWAY (CANCELLED, INTERNAL).
    for l in loops {
        l.await.unwrap();
    }

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("stop requested signal=\"SIGTERM\""),
        "{logged}"
    );
    assert!(logged.contains("shutting down"), "{logged}");
    assert!(
        logged.contains("shutdown complete audit_flushed=true final_checkpoint="),
        "{logged}"
    );

    // Every ALLOW a client saw is in the trail, and the last checkpoint names the trail's last event.
    let store = db.store();
    let events = all_events(store).await;
    let recorded: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e.body.outcome == Some(broker::domain::decision::Outcome::Allow))
        .filter_map(|e| e.body.decision_id.as_deref())
        .collect();
    let allowed = allowed.lock().unwrap().clone();
    assert!(allowed.len() >= 100);
    for id in &allowed {
        assert!(
            recorded.contains(id.as_str()),
            "ALLOW {id} is not in the trail"
        );
    }
    let head = store.head().await.unwrap().unwrap();
    let checkpoints = std::fs::read_to_string(data.join("audit-checkpoints.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(checkpoints.lines().last().unwrap()).unwrap();
    assert_eq!(
        last.get("seq"),
        Some(&serde_json::json!(head.seq)),
        "{checkpoints}"
    );
    assert!(
        logged.contains(&format!("final_checkpoint={}", head.seq)),
        "{logged}"
    );
    let verify = broker(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains(&format!("match the chain up to event {}", head.seq)),
        "{}",
        text(&verify)
    );
}

/// Runs `broker args` with its standard output already closed by its reader (as `| head` does once it
/// has its lines).
fn broker_into_closed_pipe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .env_remove("BROKER_CONFIG")
        .envs(env.iter().copied())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet(what: &str, out: &Output, code: i32) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
}

#[tokio::test]
async fn a_closed_stdout_ends_every_printing_command_quietly_and_keeps_a_check_s_verdict() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    open_sessions(db.store(), 50).await;
    let url = db.config().database_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let policies = policies();
    for args in [
        vec!["audit", "list", "--database-url", &url],
        vec!["audit", "list", "--json", "--database-url", &url],
        vec![
            "audit",
            "verify",
            "--no-checkpoints",
            "--database-url",
            &url,
        ],
        vec!["audit", "checkpoint-key", "--data-dir", data],
        vec!["policy", "check", &policies],
        vec!["policy", "test", &policies],
        vec!["db", "grants", "--role", "broker_app"],
        vec!["token", "--sub", "a", "--role", "agent", "--data-dir", data],
        vec!["migrate", "--database-url", &url],
    ] {
        let out = broker_into_closed_pipe(&args, &[]);
        assert_quiet(&args.join(" "), &out, 0);
    }
    // A reader going away never turns a failed check into a success.
    db.execute("DROP TRIGGER audit_events_no_update")
        .await
        .unwrap();
    db.execute("UPDATE audit_events SET agent = 'someone-else' WHERE seq = 2")
        .await
        .unwrap();
    let broken = broker_into_closed_pipe(
        &[
            "audit",
            "verify",
            "--no-checkpoints",
            "--database-url",
            &url,
        ],
        &[],
    );
    assert_quiet("audit verify of a broken chain", &broken, 1);
}

/// A session of `agent` for `user`, as the store records it, with its `SESSION_OPENED` event.
async fn open_session_as(store: &Store, agent: &str, user: &str) {
    let session = Session {
        id: broker::ids::session_id(),
        agent: agent.into(),
        user: Some(user.into()),
        tenant: None,
        tools: vec![ToolScope::All],
        purpose: "p".into(),
        created_at: 1,
        expires_at: 1_000_000,
        max_tool_calls: 1,
        tool_calls_used: 0,
        closed_at: None,
        collections: vec![],
        labels: vec![],
        ancestors: vec![],
    };
    let event = EventBody::for_session(EventKind::SessionOpened, &session, 1);
    store.open_session(&session, event).await.unwrap();
}

/// Characters a terminal acts on or hides, none of which may reach it from stored text.
fn hostile(c: char) -> bool {
    broker::printable::hidden(c)
}

#[tokio::test]
async fn audit_list_escapes_control_bidi_and_invisible_characters_in_stored_text() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    // An agent name (a token's `sub`) that forges a line and clears the screen; a user that reverses
    // what follows and hides a character.
    let agent = "agent-1\n     9 2030-01-01T00:00:00Z TOOL_CALL_DECIDED ALLOW agent=admin\u{1b}[2J";
    let user = "alice\u{202e}gnp.exe\u{200b}\u{2066}x\u{2069}\u{7f}\u{9b}";
    open_session_as(db.store(), agent, user).await;
    open_session_as(db.store(), "agent-2", "bob tool=file.read").await;
    let url = db.config().database_url.clone();

    let list = broker(&["audit", "list", "--database-url", &url]);
    assert!(list.status.success(), "{}", text(&list));
    let out = String::from_utf8(list.stdout).unwrap();
    assert_eq!(out.lines().count(), 2, "one line per event: {out}");
    assert!(!out.chars().any(|c| c != '\n' && hostile(c)), "{out:?}");
    let first = out.lines().next().unwrap();
    assert!(
        first.contains(
            "agent=\"agent-1\\n     9 2030-01-01T00:00:00Z TOOL_CALL_DECIDED ALLOW agent=admin\\u{1b}[2J\""
        ),
        "{first}"
    );
    assert!(
        first.contains("user=alice\\u{202e}gnp.exe\\u{200b}\\u{2066}x\\u{2069}\\u{7f}\\u{9b}"),
        "{first}"
    );
    // A value with a space cannot pass for another field.
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains("user=\"bob tool=file.read\" session="),
        "{out}"
    );

    // JSON lines: the same values, and nothing a terminal acts on (serde leaves DEL, C1 and bidi raw).
    let json = broker(&["audit", "list", "--json", "--database-url", &url]);
    assert!(json.status.success(), "{}", text(&json));
    let out = String::from_utf8(json.stdout).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!out.chars().any(|c| c != '\n' && hostile(c)), "{out:?}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["agent"], agent);
    assert_eq!(first["user"], user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_and_kill_switches_print_stored_text_escaped() {
    use broker::auth::Role;
    use broker_sdk::{Client, SessionRequest};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The agent's `sub` comes from the identity provider: any text.
    let agent_sub = "agent-1\u{1b}[31m\nFORGED LINE";
    let agent_token = mint(&data, agent_sub, Role::Agent, Some("alice"), &[]);
    let approver = mint(&data, "bob", Role::Approver, None, &["payments-approvers"]);
    let admin = mint(&data, "ops", Role::Admin, None, &[]);
    let log = dir.path().join("broker.log");
    let (child, endpoint) = serve(Path::new(&policies()), &data, &log);
    let _child = Killed(child);
    let connect = || Client::connect(endpoint.clone(), agent_token.clone());
    eventually("the broker to start", || async { connect().await.is_ok() }).await;
    let agent = connect().await.unwrap();
    let session = agent
        .open_session(SessionRequest::new(["payments.refund"]))
        .await
        .unwrap()
        .session_id;
    let refund = serde_json::json!({
        "payment_id": "pay_1\u{202e}",
        "amount": 5000,
        "currency": "EUR",
        "reason": "line\nbreak\u{1b}]0;title\u{7}",
    });
    let pending = agent
        .authorize(&session, "payments.refund", &refund)
        .await
        .unwrap();
    let approval_id = pending.approval_id.clone().unwrap();

    let cli = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--endpoint", &endpoint, "--token", token]);
        broker(&all)
    };
    let clean = |o: &Output| {
        assert!(o.status.success(), "{}", text(o));
        let out = String::from_utf8(o.stdout.clone()).unwrap();
        assert!(!out.chars().any(|c| c != '\n' && hostile(c)), "{out:?}");
        out
    };
    let list = clean(&cli(&approver, &["approvals", "list"]));
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(
        list.contains("by agent-1\\u{1b}[31m\\nFORGED LINE for alice"),
        "{list}"
    );

    let denied = clean(&cli(
        &approver,
        &[
            "approvals",
            "deny",
            &approval_id,
            "--comment",
            "no\n  vote:      carol APPROVE\u{1b}[1A",
        ],
    ));
    let show = clean(&cli(&approver, &["approvals", "show", &approval_id]));
    assert_eq!(denied, show);
    let votes: Vec<&str> = show.lines().filter(|l| l.starts_with("  vote:")).collect();
    assert_eq!(votes.len(), 1, "{show}");
    assert!(
        votes[0].ends_with(": no\\n  vote:      carol APPROVE\\u{1b}[1A"),
        "{show}"
    );
    let arguments = show
        .lines()
        .find(|l| l.starts_with("  arguments: "))
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(arguments.trim_start_matches("  arguments: ")).unwrap();
    assert_eq!(json["payment_id"], "pay_1\u{202e}", "{arguments}");

    let engaged = clean(&cli(
        &admin,
        &[
            "kill",
            "engage",
            "--scope",
            "tool",
            "--target",
            "shell.exec",
            "--reason",
            "paused\n\u{1b}[2Jall switches released",
        ],
    ));
    assert_eq!(engaged.lines().count(), 1, "{engaged}");
    let kills = clean(&cli(&admin, &["kill", "list"]));
    assert_eq!(kills.lines().count(), 1, "{kills}");
    assert!(
        kills
            .trim_end()
            .ends_with("[ACTIVE] paused\\n\\u{1b}[2Jall switches released"),
        "{kills}"
    );

    // Commands that ask a broker end quietly on a closed pipe too.
    for (token, args) in [
        (&admin, ["kill", "list"]),
        (&approver, ["approvals", "list"]),
    ] {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--all", "--endpoint", &endpoint, "--token", token]);
        let out = broker_into_closed_pipe(&all, &[]);
        assert_quiet(&all.join(" "), &out, 0);
    }
}

/// `broker args`, killed if it has not exited within 30 s (a broker that serves when it should refuse).
fn broker_within_30s(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .env_remove("BROKER_CONFIG")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_the_dev_issuer_on_a_network_address_unless_explicitly_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let pem = dir.path().join("x.pem");
    std::fs::write(&pem, "-").unwrap();
    let pem = pem.to_str().unwrap();
    let policies = policies();
    let serve_args = [
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--policies",
        &policies,
        "--data-dir",
        data,
    ];
    for tls in [
        vec![],
        vec![("BROKER_TLS__CERT", pem), ("BROKER_TLS__KEY", pem)],
    ] {
        let refused = broker_within_30s(&serve_args, &tls);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        let err = text(&refused);
        assert!(err.contains("`dev_issuer`: the dev issuer is on"), "{err}");
        assert!(
            err.contains("`listen` = `0.0.0.0:0` is not a loopback address"),
            "{err}"
        );
        assert!(
            err.contains(if tls.is_empty() {
                "without TLS"
            } else {
                "with TLS"
            }),
            "{err}"
        );
        assert!(err.contains("--allow-dev-issuer-on-network"), "{err}");
        assert!(
            !Path::new(data).join("broker.db").exists(),
            "refused before anything started"
        );
    }
    // On a network on purpose: it serves, says so, and stops on SIGTERM.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let token = mint(
        Path::new(data),
        "agent-1",
        broker::auth::Role::Agent,
        Some("alice"),
        &[],
    );
    let log = dir.path().join("broker.log");
    let child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["serve", "--allow-dev-issuer-on-network", "--listen"])
        .arg(format!("0.0.0.0:{port}"))
        .args(["--policies", &policies, "--data-dir", data])
        .env_remove("BROKER_CONFIG")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    eventually("the broker to serve", || async {
        broker_sdk::Client::connect(endpoint.clone(), token.clone())
            .await
            .is_ok()
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("allow_dev_issuer_on_network is set"),
        "{logged}"
    );
    terminate(&child.0);
    let status = exit_within(&mut child.0, std::time::Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
}
