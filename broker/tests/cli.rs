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
