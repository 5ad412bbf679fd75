//! The `broker` command as an operator runs it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use std::path::Path;
use std::process::{Command, Output};

use broker::domain::audit::{EventBody, EventKind};
use broker::domain::session::{Session, ToolScope};
use broker::store::testing::TestDb;
use broker::store::Backend;

fn broker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .env_remove("BROKER_CONFIG")
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

#[tokio::test]
async fn audit_verify_passes_then_names_the_tampered_event() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    for i in 0..3 {
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
        db.store().open_session(&session, event).await.unwrap();
    }
    let url = db.config().database_url.clone();
    let ok = broker(&["audit", "verify", "--database-url", &url]);
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
    let broken = broker(&["audit", "verify", "--database-url", &url]);
    assert!(!broken.status.success());
    assert!(
        text(&broken).contains("BROKEN at event 2"),
        "{}",
        text(&broken)
    );
}
