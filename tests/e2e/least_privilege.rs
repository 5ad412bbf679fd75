//! The startup self-check on Postgres (roles exist only there): a broker connected as a role holding only
//! `broker db grants` serves and audits; a superuser, a role that may DELETE audit rows, and a role whose
//! commits are not synchronous are refused with the problem and the fix named.

use std::sync::Arc;
use std::time::Duration;

use broker::auth::{dev, Role};
use broker::clock::SystemClock;
use broker::config::Config;
use broker::store::testing::TestDb;
use broker::store::{Backend, StoreConfig};
use broker_e2e::policies_dir;
use broker_sdk::{AuditClient, AuditFilter, Client, Outcome, SessionRequest};
use serde_json::json;

fn config(database_url: &str, data_dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        database_url: database_url.to_owned(),
        policies: policies_dir(),
        store: StoreConfig {
            connect_timeout: Duration::from_secs(2),
            commit_timeout: Duration::from_secs(2),
            allow_privileged_role: false,
            ..StoreConfig::default()
        },
        ..Config::default()
    }
}

async fn start(config: &Config) -> Result<broker::Running, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    broker::start(config.clone(), Some(listener), Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())
}

fn token(running: &broker::Running, config: &Config, sub: &str, role: Role) -> String {
    let req = dev::TokenRequest {
        subject: sub.into(),
        roles: vec![role],
        on_behalf_of: Some("alice".into()),
        tenant: None,
        groups: vec![],
        ttl: Duration::from_secs(600),
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
    };
    dev::mint(running.dev_secret.as_ref().unwrap(), &config.auth, &req).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_least_privilege_role_serves_and_risky_roles_are_refused() {
    // Migrated by the superuser, who owns the tables: the restricted role only serves.
    let db = TestDb::new(Backend::Postgres).await.unwrap();
    let role = db.least_privilege_role().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let restricted = config(role.database_url(), data.path());

    // The self-check passes, and the schema check (`migrate` finds nothing to apply) needs no DDL rights.
    let running = start(&restricted)
        .await
        .expect("the least-privilege role serves");
    let endpoint = format!("http://{}", running.addr);
    let agent = Client::connect(
        endpoint.clone(),
        token(&running, &restricted, "assistant", Role::Agent),
    )
    .await
    .unwrap();
    let session = agent
        .open_session(SessionRequest::new(["web.search"]))
        .await
        .unwrap();
    let decision = agent
        .authorize(
            &session.session_id,
            "web.search",
            &json!({"query": "least privilege"}),
        )
        .await
        .unwrap();
    assert!(decision.is_allowed(), "{decision:?}");
    let auditor = AuditClient::connect(
        endpoint,
        token(&running, &restricted, "security", Role::Auditor),
    )
    .await
    .unwrap();
    let events = auditor
        .list_events(AuditFilter::new().session_id(&session.session_id))
        .await
        .unwrap()
        .events;
    let decided: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "TOOL_CALL_DECIDED")
        .collect();
    assert_eq!(decided.len(), 1, "{events:?}");
    assert_eq!(decided[0].outcome, Some(Outcome::Allow));
    assert_eq!(
        decided[0].decision_id.as_deref(),
        Some(decision.decision_id.as_str())
    );
    running.shutdown().await.unwrap();

    // Postgres itself refuses the role a rewrite, not only the trigger.
    let update = role
        .execute("UPDATE audit_events SET agent = 'someone-else'")
        .await
        .unwrap_err()
        .to_string();
    assert!(update.contains("permission denied"), "{update}");
    let disable = role
        .execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
        .await
        .unwrap_err()
        .to_string();
    assert!(disable.contains("must be owner"), "{disable}");

    // The superuser the tests usually connect as is refused unless allowed.
    let superuser = config(&db.config().database_url, data.path());
    let err = start(&superuser)
        .await
        .err()
        .expect("a superuser is refused");
    assert!(err.contains("startup self-check failed"), "{err}");
    assert!(err.contains("is a superuser"), "{err}");
    assert!(err.contains("allow_privileged_role"), "{err}");
    let mut allowed = superuser.clone();
    allowed.store.allow_privileged_role = true;
    start(&allowed)
        .await
        .expect("allowed explicitly")
        .shutdown()
        .await
        .unwrap();

    // A role that may delete audit rows is refused, naming the right.
    let name = role.name();
    db.execute(&format!("GRANT DELETE ON audit_events TO {name}"))
        .await
        .unwrap();
    let err = start(&restricted).await.err().expect("DELETE is refused");
    assert!(
        err.contains(&format!("`{name}` may DELETE `audit_events`")),
        "{err}"
    );
    db.execute(&format!("REVOKE DELETE ON audit_events FROM {name}"))
        .await
        .unwrap();
    // So is one that can act as a role that may write every table.
    db.execute(&format!("GRANT pg_write_all_data TO {name}"))
        .await
        .unwrap();
    let err = start(&restricted)
        .await
        .err()
        .expect("membership is refused");
    assert!(
        err.contains(&format!(
            "`{name}` can act as `pg_write_all_data`, which may UPDATE, DELETE"
        )),
        "{err}"
    );
    db.execute(&format!("REVOKE pg_write_all_data FROM {name}"))
        .await
        .unwrap();

    // Commits that are not synchronous are refused, even though the broker's own connections set it on;
    // `local` is durable on this server and accepted.
    db.execute(&format!("ALTER ROLE {name} SET synchronous_commit = off"))
        .await
        .unwrap();
    let err = start(&restricted)
        .await
        .err()
        .expect("synchronous_commit=off is refused");
    assert!(
        err.contains("`synchronous_commit` is `off`") && err.contains("set in: the role"),
        "{err}"
    );
    db.execute(&format!("ALTER ROLE {name} SET synchronous_commit = local"))
        .await
        .unwrap();
    start(&restricted)
        .await
        .expect("synchronous_commit=local serves")
        .shutdown()
        .await
        .unwrap();

    // A schema behind the broker's: the restricted role cannot migrate it, and with migrate_on_start off
    // the broker says who must.
    db.execute(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .await
    .unwrap();
    let err = start(&restricted).await.err().expect("cannot migrate");
    assert!(
        err.contains("permission denied for schema public") && err.contains("run `broker migrate`"),
        "{err}"
    );
    let mut no_migrate = restricted.clone();
    no_migrate.store.migrate_on_start = false;
    let err = start(&no_migrate).await.err().expect("schema not current");
    assert!(err.contains("run `broker migrate`"), "{err}");
}
