//! The end-to-end harness: a real broker on `127.0.0.1:0` over a real database (SQLite or Postgres, a fresh
//! one per test), with a manual clock, tokens from its dev issuer, and SDK clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: failing loudly is the point"
)]

pub mod proxy;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::auth::{dev, Role};
use broker::clock::ManualClock;
use broker::config::Config;
use broker::store::testing::TestDb;
use broker::store::{Backend, StoreConfig};
use broker::Running;
use broker_sdk::{AuditClient, Client};

pub use broker::store::Backend as DbBackend;

/// Runs an async test body once on each backend: `both!(name);` defines `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::DbBackend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::DbBackend::Postgres).await
            }
        }
    };
}

pub struct Options {
    /// Route the broker's Postgres connections through a proxy the test can cut.
    pub db_proxy: bool,
    pub commit_timeout: Duration,
    /// Serve over TLS (and mTLS when `client_ca` is set).
    pub tls: Option<broker::config::TlsConfig>,
    pub webhook: Option<broker::notify::WebhookConfig>,
    /// `auth.person_claim` (`sub` when unset).
    pub person_claim: Option<String>,
    /// `[limits]`; the defaults unless a test needs small ones (admission, `tests/e2e/fairness.rs`).
    pub limits: broker::config::Limits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            db_proxy: false,
            commit_timeout: Duration::from_secs(2),
            tls: None,
            webhook: None,
            person_claim: None,
            limits: broker::config::Limits::default(),
        }
    }
}

pub struct Harness {
    pub running: Running,
    pub clock: ManualClock,
    pub db: TestDb,
    pub proxy: Option<proxy::Proxy>,
    pub config: Config,
    secret: Vec<u8>,
    _data_dir: tempfile::TempDir,
}

pub fn policies_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, opts: Options) -> Harness {
        let store = StoreConfig {
            connect_timeout: Duration::from_secs(1),
            commit_timeout: opts.commit_timeout,
            // The test server is reached as its superuser (see `least_privilege.rs` for a restricted role).
            allow_privileged_role: true,
            ..StoreConfig::default()
        };
        let db = TestDb::with_config(backend, store.clone())
            .await
            .expect("test database (is Postgres running on 127.0.0.1:5432?)");
        let mut database_url = db.config().database_url.clone();
        let proxy = if opts.db_proxy && backend == Backend::Postgres {
            let p = proxy::Proxy::start("127.0.0.1:5432").await;
            database_url = database_url.replacen("127.0.0.1:5432", &p.addr().to_string(), 1);
            Some(p)
        } else {
            None
        };
        let data_dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_path_buf(),
            database_url,
            policies: policies_dir(),
            store,
            tls: opts.tls,
            limits: opts.limits,
            approvals: broker::config::ApprovalsConfig {
                poll_interval: Duration::from_millis(100),
                webhook: opts.webhook,
                ..broker::config::ApprovalsConfig::default()
            },
            // Fast enough that tests of staleness and expiry take about a second.
            kill_switch: broker::config::KillSwitchConfig {
                poll_interval: Duration::from_millis(100),
                stale_after: Duration::from_millis(800),
                ..broker::config::KillSwitchConfig::default()
            },
            ..Config::default()
        };
        let mut config = config;
        if let Some(claim) = opts.person_claim {
            config.auth.person_claim = claim;
        }
        let clock = ManualClock::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = broker::start(config.clone(), Some(listener), Arc::new(clock.clone()))
            .await
            .expect("broker starts");
        let secret = running.dev_secret.clone().expect("dev issuer in use");
        Harness {
            running,
            clock,
            db,
            proxy,
            config,
            secret,
            _data_dir: data_dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    pub fn token(&self, sub: &str, roles: &[Role], user: Option<&str>) -> String {
        self.token_in_tenant(sub, roles, user, None)
    }

    pub fn token_in_tenant(
        &self,
        sub: &str,
        roles: &[Role],
        user: Option<&str>,
        tenant: Option<&str>,
    ) -> String {
        self.token_full(sub, roles, user, tenant, &[])
    }

    /// An approver's token: role `approver` in `groups`.
    pub fn approver_token(&self, sub: &str, groups: &[&str]) -> String {
        self.token_full(sub, &[Role::Approver], None, None, groups)
    }

    pub fn token_full(
        &self,
        sub: &str,
        roles: &[Role],
        user: Option<&str>,
        tenant: Option<&str>,
        groups: &[&str],
    ) -> String {
        let req = dev::TokenRequest {
            subject: sub.to_owned(),
            roles: roles.to_vec(),
            on_behalf_of: user.map(str::to_owned),
            tenant: tenant.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ttl: Duration::from_secs(600),
            issuer: self.config.auth.issuer.clone(),
            audience: self.config.auth.audience.clone(),
        };
        dev::mint(&self.secret, &self.config.auth, &req).unwrap()
    }

    /// Signs arbitrary claims with the dev issuer's key (HS256), for tests of claim checks.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(&self.secret);
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &key,
        )
        .unwrap()
    }

    /// Claims the broker accepts, expiring in ten minutes.
    pub fn valid_claims(&self, sub: &str) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        serde_json::json!({
            "iss": self.config.auth.issuer, "aud": self.config.auth.audience, "sub": sub,
            "iat": now, "nbf": now, "exp": now + 600, "roles": ["agent"]
        })
    }

    /// An SDK client with an agent token acting for `user`.
    pub async fn agent(&self, sub: &str, user: Option<&str>) -> Client {
        self.client_with_token(self.token(sub, &[Role::Agent], user))
            .await
    }

    pub async fn client_with_token(&self, token: String) -> Client {
        Client::connect(self.endpoint(), token).await.unwrap()
    }

    pub async fn admin(&self) -> broker_sdk::KillSwitchClient {
        broker_sdk::KillSwitchClient::connect(
            self.endpoint(),
            self.token("ops-admin", &[Role::Admin], None),
        )
        .await
        .unwrap()
    }

    /// Another broker on the same database (as another replica would be), with its own pool and view of
    /// the kill switches. Its address is `running.addr`.
    pub async fn another_broker(&self) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        broker::start(
            self.config.clone(),
            Some(listener),
            Arc::new(self.clock.clone()),
        )
        .await
        .expect("second broker starts")
    }

    /// Stops the broker and starts a new one on the same database and data dir.
    pub async fn restart(mut self) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let next = broker::start(
            self.config.clone(),
            Some(listener),
            Arc::new(self.clock.clone()),
        )
        .await
        .expect("broker restarts");
        let old = std::mem::replace(&mut self.running, next);
        old.shutdown().await.unwrap();
        self
    }

    pub async fn approver(&self, sub: &str, groups: &[&str]) -> broker_sdk::ApprovalClient {
        broker_sdk::ApprovalClient::connect(self.endpoint(), self.approver_token(sub, groups))
            .await
            .unwrap()
    }

    /// The example policies plus `extra` (file name, Cedar text), in effect from the next call (what
    /// `kill -HUP` does in `broker serve`).
    pub fn reload_with(&self, extra: &[(&str, &str)]) {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(policies_dir()).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        for (name, text) in extra {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let engine = broker::policy::PolicyEngine::load(dir.path()).unwrap();
        self.running.policies.send_replace(Arc::new(engine));
    }

    /// An auditor of `tenant` (auditors read their own tenant's trail).
    pub async fn auditor_in(&self, tenant: &str) -> AuditClient {
        AuditClient::connect(
            self.endpoint(),
            self.token_in_tenant("security-team", &[Role::Auditor], None, Some(tenant)),
        )
        .await
        .unwrap()
    }

    pub async fn auditor(&self) -> AuditClient {
        AuditClient::connect(
            self.endpoint(),
            self.token("security-team", &[Role::Auditor], None),
        )
        .await
        .unwrap()
    }

    /// Drops the append-only triggers and runs `sql`, as an attacker with database rights would.
    pub async fn tamper(&self, sql: &str) {
        let drop = match self.db.backend() {
            Backend::Sqlite => "DROP TRIGGER IF EXISTS audit_events_no_update; DROP TRIGGER IF EXISTS audit_events_no_delete;",
            Backend::Postgres => "DROP TRIGGER IF EXISTS audit_events_no_update_or_delete ON audit_events;",
        };
        self.db.execute(drop).await.unwrap();
        self.db.execute(sql).await.unwrap();
    }
}
