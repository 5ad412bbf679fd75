//! Real databases for tests, one per test: SQLite in a fresh temporary directory, or a fresh Postgres
//! database `test_<random hex>` created on the server named by `BROKER_TEST_DATABASE_URL` (default
//! [`DEFAULT_TEST_DATABASE_URL`]). Both are removed (best effort) when the [`TestDb`] is dropped.
//!
//! Public so that the end-to-end test crate can reuse it; nothing here runs in production.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::{AnyConnection, Connection, Executor};

use super::sql::{db, CHAIN_LOCK_KEY};
use super::{Backend, Error, EventFilter, Page, Store, StoreConfig, MAX_PAGE};
use crate::domain::audit::{AuditEvent, EventBody, GENESIS_HASH};

pub const TEST_DATABASE_URL_ENV: &str = "BROKER_TEST_DATABASE_URL";
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long the helpers wait for the test server.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A migrated store on a database of its own.
pub struct TestDb {
    backend: Backend,
    config: StoreConfig,
    store: Store,
    /// Declared last: dropped after the store.
    _scratch: Scratch,
}

/// What to remove when the test is over.
struct Scratch(Cleanup);

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .finish()
    }
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// The URL of the test server (admin database).
pub fn postgres_admin_url() -> String {
    std::env::var(TEST_DATABASE_URL_ENV).unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// `url` pointing at database `name` on the same server, keeping its query.
fn with_database(url: &str, name: &str) -> Result<String, Error> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| Error::invalid(format!("`{TEST_DATABASE_URL_ENV}` is not a url")))?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

async fn admin_connection(url: &str) -> Result<AnyConnection, Error> {
    sqlx::any::install_default_drivers();
    tokio::time::timeout(ADMIN_TIMEOUT, AnyConnection::connect(url))
        .await
        .map_err(|_| Error::unavailable("timed out connecting to the test database server"))?
        .map_err(db)
}

/// Opens only the Postgres audit writer's own connection to `database_url` (a migrated database), with
/// TLS as the URL asks, then closes it: the store's pool connects first and would fail before it.
pub async fn connect_postgres_writer(database_url: &str) -> Result<(), Error> {
    let routes = super::pg_tunnel::PgRoutes::new(database_url, ADMIN_TIMEOUT)?;
    let mut writer =
        super::pg_writer::PgWriter::new(&routes.writer_url, &routes.tls, ADMIN_TIMEOUT, &[])?;
    tokio::time::timeout(ADMIN_TIMEOUT, writer.connect_now())
        .await
        .map_err(|_| Error::unavailable("timed out connecting the audit writer"))?
}

impl TestDb {
    /// The store configuration tests start from: generous timeouts, so a loaded machine does not fail
    /// tests that are not about timeouts.
    pub fn test_config() -> StoreConfig {
        StoreConfig {
            connect_timeout: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(5),
            max_connections: 8,
            ..StoreConfig::default()
        }
    }

    pub async fn new(backend: Backend) -> Result<TestDb, Error> {
        Self::with_config(backend, Self::test_config()).await
    }

    /// A fresh database and a migrated store on it, configured as `template` except for the URL.
    pub async fn with_config(backend: Backend, template: StoreConfig) -> Result<TestDb, Error> {
        let (database_url, scratch) = match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(random_name("broker-test-"));
                let url = format!("sqlite://{}", dir.join("broker.db").display());
                (url, Scratch(Cleanup::Dir(dir)))
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = random_name("test_");
                let mut admin = admin_connection(&admin_url).await?;
                let created = admin
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .map_err(db);
                let _ = admin.close().await;
                created?;
                let scratch = Scratch(Cleanup::Postgres {
                    admin_url: admin_url.clone(),
                    name: name.clone(),
                });
                (with_database(&admin_url, &name)?, scratch)
            }
        };
        let config = StoreConfig {
            database_url,
            ..template
        };
        // On failure `scratch` is dropped here, removing the database.
        let store = Store::connect(&config).await?;
        store.migrate().await?;
        Ok(TestDb {
            backend,
            config,
            store,
            _scratch: scratch,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Another store on the same database (another broker process, as far as the database can tell),
    /// configured as `template` except for the URL.
    pub async fn connect_another(&self, template: StoreConfig) -> Result<Store, Error> {
        Store::connect(&StoreConfig {
            database_url: self.config.database_url.clone(),
            ..template
        })
        .await
    }

    /// Runs raw SQL on a connection of its own (to tamper with rows, or to look at them).
    pub async fn execute(&self, sql: &str) -> Result<u64, Error> {
        let mut conn = admin_connection(&self.config.database_url).await?;
        let done = conn.execute(sql).await.map_err(db);
        let _ = conn.close().await;
        Ok(done?.rows_affected())
    }

    /// Creates a login role on the test server holding exactly the broker's least-privilege grants on
    /// this database ([`super::postgres_grants`]). Postgres only. The role and its grants are dropped
    /// when the [`TestRole`] is.
    pub async fn least_privilege_role(&self) -> Result<TestRole, Error> {
        if self.backend != Backend::Postgres {
            return Err(Error::invalid("database roles exist on Postgres only"));
        }
        let name = random_name("broker_app_");
        let admin_url = postgres_admin_url();
        let mut admin = admin_connection(&admin_url).await?;
        let created = admin
            .execute(format!("CREATE ROLE {name} LOGIN").as_str())
            .await
            .map_err(db);
        let _ = admin.close().await;
        created?;
        let role = TestRole {
            database_url: with_user(&self.config.database_url, &name)?,
            owner_url: self.config.database_url.clone(),
            admin_url,
            name,
        };
        self.execute(&super::postgres_grants(&role.name)?).await?;
        Ok(role)
    }

    /// Lets raw SQL rewrite and delete audit rows, as someone with the owner's or a superuser's rights
    /// could: SQLite drops the append-only triggers, Postgres disables them.
    pub async fn drop_append_only_guard(&self) -> Result<(), Error> {
        match self.backend {
            Backend::Sqlite => {
                self.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
                    .await?;
                self.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
                    .await?;
            }
            Backend::Postgres => {
                self.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
                    .await?;
            }
        }
        Ok(())
    }

    /// Rewrites the whole chain as an attacker with write access would, so that walking the chain alone
    /// still passes: applies `modify` to every event's body, then re-links and re-hashes every event and
    /// replaces all rows in one transaction. Returns how many events were rewritten.
    pub async fn rewrite_chain(
        &self,
        mut modify: impl FnMut(&mut EventBody),
    ) -> Result<u64, Error> {
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut page = Page {
            after_seq: 0,
            limit: MAX_PAGE,
        };
        loop {
            let (batch, next) = self
                .store
                .list_events(&EventFilter::default(), page)
                .await?;
            events.extend(batch);
            match next {
                Some(after_seq) => page.after_seq = after_seq,
                None => break,
            }
        }
        let mut prev = GENESIS_HASH.to_owned();
        let mut rewritten = Vec::with_capacity(events.len());
        for event in events {
            let mut body = event.body;
            modify(&mut body);
            let event = AuditEvent::chain(event.seq, prev, body)
                .map_err(|e| Error::invalid(e.to_string()))?;
            prev = event.hash.clone();
            rewritten.push(event);
        }
        self.drop_append_only_guard().await?;
        let mut conn = admin_connection(&self.config.database_url).await?;
        let mut tx = conn.begin().await.map_err(db)?;
        tx.execute("DELETE FROM audit_events").await.map_err(db)?;
        super::bulk::insert_events(&mut tx, self.backend, &rewritten).await?;
        tx.commit().await.map_err(db)?;
        let _ = conn.close().await;
        Ok(u64::try_from(rewritten.len()).unwrap_or(u64::MAX))
    }

    /// Deletes every audit event after `seq` (the guard dropped first): the chain walk alone cannot
    /// tell a cut tail from a shorter history. Returns how many events were deleted.
    pub async fn truncate_chain_after(&self, seq: i64) -> Result<u64, Error> {
        self.drop_append_only_guard().await?;
        self.execute(&format!("DELETE FROM audit_events WHERE seq > {seq}"))
            .await
    }

    /// Holds the lock every audit write needs, from another connection, until released: SQLite
    /// `BEGIN EXCLUSIVE`; Postgres the chain's advisory lock.
    pub async fn hold_write_lock(&self) -> Result<WriteLock, Error> {
        let mut conn = admin_connection(&self.config.database_url).await?;
        match self.backend {
            Backend::Sqlite => conn.execute("BEGIN EXCLUSIVE").await.map_err(db)?,
            Backend::Postgres => sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(CHAIN_LOCK_KEY)
                .execute(&mut conn)
                .await
                .map_err(db)?,
        };
        Ok(WriteLock {
            conn,
            backend: self.backend,
        })
    }
}

/// `url` with its user info replaced by `user` (no password: the test server trusts local connections).
fn with_user(url: &str, user: &str) -> Result<String, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::invalid("the test database url has no scheme"))?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!("{scheme}://{user}@{host}"))
}

/// A login role made by [`TestDb::least_privilege_role`].
pub struct TestRole {
    name: String,
    database_url: String,
    /// The test database, as its owner.
    owner_url: String,
    admin_url: String,
}

impl std::fmt::Debug for TestRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRole")
            .field("name", &self.name)
            .finish()
    }
}

impl TestRole {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test database, reached as this role.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Runs raw SQL as this role, on a connection of its own.
    pub async fn execute(&self, sql: &str) -> Result<u64, Error> {
        let mut conn = admin_connection(&self.database_url).await?;
        let done = conn.execute(sql).await.map_err(db);
        let _ = conn.close().await;
        Ok(done?.rows_affected())
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, owner_url, admin_url) = (
            self.name.clone(),
            self.owner_url.clone(),
            self.admin_url.clone(),
        );
        let dropping = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                // Its grants first (they hold the role), then the role; best effort.
                for (url, sql) in [
                    (owner_url, format!("DROP OWNED BY {name}")),
                    (admin_url, format!("DROP ROLE IF EXISTS {name}")),
                ] {
                    if let Ok(mut conn) = admin_connection(&url).await {
                        let _ =
                            tokio::time::timeout(ADMIN_TIMEOUT, conn.execute(sql.as_str())).await;
                        let _ = conn.close().await;
                    }
                }
            });
        });
        let _ = dropping.join();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match &self.0 {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } => {
                // Drop is synchronous; a thread with a runtime of its own does the async work.
                let (admin_url, name) = (admin_url.clone(), name.clone());
                let dropping = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async {
                        if let Ok(mut admin) = admin_connection(&admin_url).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ =
                                tokio::time::timeout(ADMIN_TIMEOUT, admin.execute(sql.as_str()))
                                    .await;
                            let _ = admin.close().await;
                        }
                    });
                });
                let _ = dropping.join();
            }
        }
    }
}

/// A write lock held by [`TestDb::hold_write_lock`]; dropping it without `release` also releases it (the
/// connection closes).
pub struct WriteLock {
    conn: AnyConnection,
    backend: Backend,
}

impl std::fmt::Debug for WriteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLock")
            .field("backend", &self.backend)
            .finish()
    }
}

impl WriteLock {
    pub async fn release(mut self) -> Result<(), Error> {
        match self.backend {
            Backend::Sqlite => self.conn.execute("ROLLBACK").await.map_err(db)?,
            Backend::Postgres => sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(CHAIN_LOCK_KEY)
                .execute(&mut self.conn)
                .await
                .map_err(db)?,
        };
        self.conn.close().await.map_err(db)
    }
}
