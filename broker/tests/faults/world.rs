//! One scenario's world: a Postgres cluster of its own, a database owned by an ordinary role (so that a
//! REVOKE bites), a broker process running as that role, and tokens from the broker's dev issuer.

use std::time::Duration;

use broker::auth::{dev, AuthConfig, Role};
use broker_sdk::Client;

use crate::broker_process::{BrokerProcess, BrokerSettings};
use crate::postgres::Postgres;

/// The broker's database role: not a superuser, not the owner of the tables.
pub const BROKER_ROLE: &str = "broker_app";
pub const DATABASE: &str = "faults";
/// The production default of `store.commit_timeout`, the audit bound.
pub const COMMIT_TIMEOUT: Duration = Duration::from_millis(500);
/// Generous enough for a loaded 2-core machine: a client gives up on an RPC only after this.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    pub max_in_flight: Option<usize>,
    pub queue_capacity: Option<usize>,
}

pub struct World {
    // Declared first, dropped first: the broker goes before its database.
    pub broker: BrokerProcess,
    pub pg: Postgres,
    secret: Vec<u8>,
    _data_dir: tempfile::TempDir,
}

/// A fresh cluster with the broker's database on it, migrated by the superuser, and the broker's role:
/// no superuser, not the owner, and on `audit_events` only SELECT and INSERT (as in production), so a
/// REVOKE bites. CREATE on the schema only because the broker's start runs sqlx's migrator, whose
/// `CREATE TABLE IF NOT EXISTS _sqlx_migrations` needs it even when the table exists.
pub async fn database() -> Postgres {
    let pg = Postgres::start_new().await;
    let mut admin = pg.superuser("postgres").await;
    for sql in [
        format!("CREATE ROLE {BROKER_ROLE} LOGIN"),
        format!("CREATE DATABASE {DATABASE}"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    migrate(&pg).await;
    let mut db = pg.superuser(DATABASE).await;
    for sql in [
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {BROKER_ROLE}"),
        format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {BROKER_ROLE}"),
        format!("REVOKE UPDATE ON audit_events FROM {BROKER_ROLE}"),
    ] {
        sqlx::query(&sql).execute(&mut db).await.unwrap();
    }
    let rewrite: bool = sqlx::query_scalar(&format!(
        "SELECT has_table_privilege('{BROKER_ROLE}', 'audit_events', 'UPDATE') \
             OR has_table_privilege('{BROKER_ROLE}', 'audit_events', 'DELETE')"
    ))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        !rewrite,
        "the broker's role may only SELECT and INSERT audit rows"
    );
    pg
}

/// `broker migrate` as the superuser.
async fn migrate(pg: &Postgres) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(crate::broker_process::broker_bin())
            .arg("--database-url")
            .arg(pg.url("postgres", DATABASE))
            .arg("migrate")
            .env_remove("BROKER_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("`broker migrate` within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "`broker migrate`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl World {
    pub async fn start(options: WorldOptions) -> World {
        let pg = database().await;
        let data_dir = tempfile::Builder::new()
            .prefix("broker-faults-")
            .tempdir()
            .unwrap();
        // Made here, so the suite can mint tokens the broker accepts.
        let (secret, _) = dev::load_or_create_secret(data_dir.path()).unwrap();
        let broker = BrokerProcess::start(&BrokerSettings {
            database_url: pg.url(BROKER_ROLE, DATABASE),
            data_dir: data_dir.path().to_path_buf(),
            commit_timeout: COMMIT_TIMEOUT,
            max_in_flight: options.max_in_flight,
            queue_capacity: options.queue_capacity,
        })
        .await;
        World {
            broker,
            pg,
            secret,
            _data_dir: data_dir,
        }
    }

    /// The brokers' data directory (dev issuer key, checkpoint key and checkpoints).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }

    pub fn token(&self, sub: &str, role: Role, user: Option<&str>, groups: &[&str]) -> String {
        let auth = AuthConfig::default();
        let req = dev::TokenRequest {
            subject: sub.to_owned(),
            roles: vec![role],
            on_behalf_of: user.map(str::to_owned),
            tenant: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ttl: Duration::from_secs(3 * 3600),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        };
        dev::mint(&self.secret, &auth, &req).unwrap()
    }

    /// An agent acting for `user`, on a connection of its own that (re)connects on demand, so it
    /// survives the broker restarting.
    pub fn agent(&self, sub: &str, user: &str) -> Client {
        Client::connect_lazy(
            self.broker.endpoint(),
            self.token(sub, Role::Agent, Some(user), &[]),
        )
        .unwrap()
        .with_timeout(CLIENT_TIMEOUT)
    }

    /// A superuser connection to the broker's database (for reconciliation and for the faults).
    pub async fn superuser(&self) -> sqlx::PgConnection {
        self.pg.superuser(DATABASE).await
    }
}

impl Drop for World {
    /// A failed scenario shows what the broker and Postgres logged last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- broker log (tail) ---\n{}\n--- postgres log (tail) ---\n{}",
                self.broker.log_tail(),
                self.pg.log_tail()
            );
        }
    }
}
