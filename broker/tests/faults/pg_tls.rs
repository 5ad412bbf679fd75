//! TLS to Postgres (issue 22, item 8): clusters of the suite's own with `ssl=on` and certificates from test
//! CAs (rcgen), reached with each `sslmode` by a real `broker serve` (its pool, its listeners and its audit
//! writer), `broker migrate` and `broker audit verify`; the database's own `pg_stat_ssl` says which
//! connections are encrypted. Refusals are asserted on the operator's error message, which must name the
//! URL parameter and never the password.

use std::path::PathBuf;
use std::time::Duration;

use broker::auth::{dev, AuthConfig, Role};
use broker_sdk::{Client, Outcome};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use crate::broker_process::{broker_bin, BrokerProcess, BrokerSettings};
use crate::load::open_session;
use crate::postgres::{Extra, Postgres};
use crate::world::{BROKER_ROLE, COMMIT_TIMEOUT};

/// The password every test URL carries: no message may show it (trust authentication ignores it).
const PASSWORD: &str = "pw-never-shown";
/// The role whose connections must present a client certificate (`cert` authentication, CN = role).
const CERT_ROLE: &str = "broker_cert";

/// A test CA: its certificate (PEM) and what it needs to sign.
struct Ca {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// (certificate PEM, key PEM) with common name `cn` and these subject names (an IP address string
    /// becomes an IP name), signed by this CA.
    fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A cluster with `ssl=on`, its certificate issued by `ca` for `names`; clients may also connect in
/// plaintext (trust), except [`CERT_ROLE`], which must present a certificate `ca` signed.
async fn tls_cluster(ca: &Ca, names: &[&str]) -> Postgres {
    let (cert, key) = ca.issue("postgres", names, ExtendedKeyUsagePurpose::ServerAuth);
    let hba = format!(
        "local all all trust\n\
         hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n\
         host all {CERT_ROLE} 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 trust\n"
    );
    let file = |name: &str, text: &str| (name.to_owned(), text.to_owned());
    let setting = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    Postgres::start_new_with(Extra {
        files: vec![
            file("server.crt", &cert),
            file("server.key", &key),
            file("client-ca.crt", &ca.pem),
            file("pg_hba.conf", &hba),
        ],
        settings: vec![
            setting("ssl", "on"),
            setting("ssl_cert_file", "{dir}/server.crt"),
            setting("ssl_key_file", "{dir}/server.key"),
            setting("ssl_ca_file", "{dir}/client-ca.crt"),
            setting("hba_file", "{dir}/pg_hba.conf"),
        ],
    })
    .await
}

/// Files the broker reads (CA certificates, a client certificate and key), mode 0600.
struct ClientFiles(tempfile::TempDir);

impl ClientFiles {
    fn new() -> ClientFiles {
        ClientFiles(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

/// `postgres://<user>:<PASSWORD>@<host>:<port>/<database>?<query>`.
fn url(pg: &Postgres, host: &str, user: &str, database: &str, query: &str) -> String {
    let sep = if query.is_empty() { "" } else { "?" };
    format!(
        "postgres://{user}:{PASSWORD}@{host}:{}/{database}{sep}{query}",
        pg.port()
    )
}

/// Runs the `broker` binary with `args` (no config file); its exit status and its whole output.
async fn broker_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(broker_bin())
            .args(args)
            .env_remove("BROKER_CONFIG")
            .env_remove("PGSSLMODE")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the broker command returns within 60 s")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASSWORD), "the password is shown: {text}");
    (out.status.success(), text)
}

/// `broker migrate` with `database_url`: succeeds, or fails with a message.
async fn migrate(database_url: &str) -> Result<(), String> {
    match broker_cli(&["--database-url", database_url, "migrate"]).await {
        (true, _) => Ok(()),
        (false, text) => Err(text),
    }
}

/// A fresh database `name`, migrated as the superuser over `migrate_url` (TLS as it asks), on which
/// `role` (created if missing; not the owner) may do what the broker needs, as in the suite's world.
async fn create_database(pg: &Postgres, name: &str, role: &str, migrate_url: &str) {
    let mut admin = pg.superuser("postgres").await;
    sqlx::query(&format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    migrate(migrate_url)
        .await
        .unwrap_or_else(|e| panic!("`broker migrate` over {migrate_url}: {e}"));
    let mut db = pg.superuser(name).await;
    for sql in [
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("REVOKE UPDATE ON audit_events FROM {role}"),
    ] {
        sqlx::query(&sql).execute(&mut db).await.unwrap();
    }
}

/// Every connection to `database` (the admin's own is to `postgres`): application name, the start of
/// its last query, and whether it is encrypted.
async fn connections(pg: &Postgres, database: &str) -> Vec<(String, String, bool)> {
    let mut admin = pg.superuser("postgres").await;
    sqlx::query_as(
        "SELECT a.application_name, left(a.query, 40), s.ssl FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1 AND a.backend_type = 'client backend'",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

/// A `broker serve` on `database_url`: it starts (migrations checked, policies, kill switches and
/// approvals listened to), an agent's call is ALLOWed (committed by the audit writer), and `broker audit
/// verify` passes over the same URL. Returns the connections the database saw meanwhile.
async fn serve_and_decide(
    pg: &Postgres,
    database: &str,
    database_url: &str,
) -> Vec<(String, String, bool)> {
    let data_dir = tempfile::tempdir().unwrap();
    let (secret, _) = dev::load_or_create_secret(data_dir.path()).unwrap();
    let broker = BrokerProcess::start(&BrokerSettings {
        database_url: database_url.to_owned(),
        data_dir: data_dir.path().to_path_buf(),
        commit_timeout: COMMIT_TIMEOUT,
        max_in_flight: None,
        queue_capacity: None,
    })
    .await;
    let auth = AuthConfig::default();
    let token = dev::mint(
        &secret,
        &auth,
        &dev::TokenRequest {
            subject: "tls-agent".to_owned(),
            roles: vec![Role::Agent],
            on_behalf_of: Some("alice".to_owned()),
            tenant: None,
            groups: Vec::new(),
            ttl: Duration::from_secs(3600),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        },
    )
    .unwrap();
    let agent = Client::connect_lazy(broker.endpoint(), token)
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    let session = open_session(&agent).await;
    let decision = agent
        .authorize(&session, "web.search", &serde_json::json!({"query": "tls"}))
        .await
        .unwrap_or_else(|e| panic!("a call over {database_url}: {e}; {}", broker.log_tail()));
    assert_eq!(decision.outcome, Outcome::Allow, "{decision:?}");
    let seen = connections(pg, database).await;
    let (verified, text) = broker_cli(&[
        "--database-url",
        database_url,
        "--data-dir",
        &data_dir.path().display().to_string(),
        "audit",
        "verify",
        "--no-checkpoints",
    ])
    .await;
    assert!(
        verified,
        "`broker audit verify` over {database_url}: {text}"
    );
    assert_eq!(
        broker.log_count(PASSWORD),
        0,
        "the broker logged the password"
    );
    drop(broker);
    seen
}

/// The broker's connections as `pg_stat_ssl` saw them: all encrypted (or all not), the audit writer's
/// and a listener's among them.
fn assert_connections(seen: &[(String, String, bool)], encrypted: bool, what: &str) {
    assert!(
        seen.iter().all(|(_, _, ssl)| *ssl == encrypted),
        "{what}: every connection has ssl={encrypted}: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(app, _, _)| app == "agent-broker audit writer"),
        "{what}: the audit writer's connection is there: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, query, _)| query.starts_with("LISTEN")),
        "{what}: a listener's connection is there: {seen:?}"
    );
    assert!(seen.len() >= 3, "{what}: pool, writer, listeners: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_every_sslmode_encrypts_every_broker_connection() {
    let ca = Ca::new("broker test CA");
    let pg = tls_cluster(&ca, &["127.0.0.1", "localhost"]).await;
    let files = ClientFiles::new();
    let ca_file = files.write("ca.pem", &ca.pem).display().to_string();
    let (client_cert, client_key) = ca.issue(CERT_ROLE, &[], ExtendedKeyUsagePurpose::ClientAuth);
    let cert_file = files
        .write("client.crt", &client_cert)
        .display()
        .to_string();
    let key_file = files.write("client.key", &client_key).display().to_string();
    let cases = [
        ("prefer", BROKER_ROLE, "sslmode=prefer".to_owned()),
        ("require", BROKER_ROLE, "sslmode=require".to_owned()),
        (
            "require_ca",
            BROKER_ROLE,
            format!("sslmode=require&sslrootcert={ca_file}"),
        ),
        (
            "verify_ca",
            BROKER_ROLE,
            format!("sslmode=verify-ca&sslrootcert={ca_file}"),
        ),
        (
            "verify_full",
            BROKER_ROLE,
            format!("sslmode=verify-full&sslrootcert={ca_file}"),
        ),
        // No sslmode: with sslrootcert, the default is verify-full.
        ("default_ca", BROKER_ROLE, format!("sslrootcert={ca_file}")),
        // A client certificate, which the server demands of this role.
        (
            "client_cert",
            CERT_ROLE,
            format!(
                "sslmode=verify-full&sslrootcert={ca_file}&sslcert={cert_file}&sslkey={key_file}"
            ),
        ),
    ];
    for (name, role, query) in &cases {
        let database = format!("tls_{name}");
        create_database(
            &pg,
            &database,
            role,
            &url(&pg, "127.0.0.1", "postgres", &database, query),
        )
        .await;
        let seen = serve_and_decide(
            &pg,
            &database,
            &url(&pg, "127.0.0.1", role, &database, query),
        )
        .await;
        assert_connections(&seen, true, name);
        println!(
            "faults [pg_tls] {name} ({query}): {} connections, all encrypted",
            seen.len()
        );
    }
    // The server refuses the certificate role without its certificate: the URL's files are what is sent.
    let without = url(
        &pg,
        "127.0.0.1",
        CERT_ROLE,
        "tls_client_cert",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let refused = migrate(&without).await.err().unwrap_or_default();
    assert!(refused.contains("certificate"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_refuses_another_host_name_and_verify_ca_another_ca() {
    let ca = Ca::new("broker test CA");
    let other = Ca::new("someone else's CA");
    // A certificate for `localhost` only: not for 127.0.0.1.
    let pg = tls_cluster(&ca, &["localhost"]).await;
    let files = ClientFiles::new();
    let ca_file = files.write("ca.pem", &ca.pem).display().to_string();
    let other_file = files
        .write("other-ca.pem", &other.pem)
        .display()
        .to_string();
    let db = "tls_names";
    create_database(&pg, db, BROKER_ROLE, &pg.url("postgres", db)).await;
    let at = |host: &str, query: &str| url(&pg, host, "postgres", db, query);

    let full = at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let refused = migrate(&full).await.err().unwrap_or_default();
    assert!(
        refused.contains("store.database_url sslmode=verify-full")
            && refused.contains("not valid for host `127.0.0.1`"),
        "{refused}"
    );
    // The audit writer's own connection refuses it too (the pool's fails first at start).
    let writer = broker::store::testing::connect_postgres_writer(&full)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        writer.contains("sslmode=verify-full") && writer.contains("not valid for host `127.0.0.1`"),
        "{writer}"
    );
    assert!(!writer.contains(PASSWORD), "{writer}");
    // The name the certificate is for is fine; verify-ca does not look at names.
    migrate(&at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    ))
    .await
    .unwrap();
    migrate(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca_file}"),
    ))
    .await
    .unwrap();
    broker::store::testing::connect_postgres_writer(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca_file}"),
    ))
    .await
    .unwrap();

    // A certificate from another CA: refused by verify-ca, verify-full, and require with sslrootcert.
    for mode in ["verify-ca", "verify-full", "require"] {
        let wrong = at(
            "localhost",
            &format!("sslmode={mode}&sslrootcert={other_file}"),
        );
        let refused = migrate(&wrong).await.err().unwrap_or_default();
        assert!(
            refused.contains(&format!("sslmode={mode}"))
                && refused.contains(&format!("not signed by a CA of sslrootcert `{other_file}`")),
            "{mode}: {refused}"
        );
        let writer = broker::store::testing::connect_postgres_writer(&wrong)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            writer.contains("not signed by a CA of sslrootcert"),
            "{mode}: {writer}"
        );
    }
    // require without sslrootcert encrypts without checking.
    migrate(&at("127.0.0.1", "sslmode=require")).await.unwrap();
    // The public roots (verify-full without sslrootcert) do not know the test CA.
    let public = migrate(&at("localhost", "sslmode=verify-full"))
        .await
        .err()
        .unwrap_or_default();
    assert!(
        public.contains("not signed by a CA of the public web roots"),
        "{public}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_refuses_a_server_without_tls_and_prefer_connects_in_plaintext() {
    // The suite's usual cluster: ssl=off.
    let pg = Postgres::start_new().await;
    let db = "tls_off";
    create_database(&pg, db, BROKER_ROLE, &pg.url("postgres", db)).await;
    for query in ["sslmode=require", "sslmode=verify-full"] {
        let required = url(&pg, "127.0.0.1", "postgres", db, query);
        let refused = migrate(&required).await.err().unwrap_or_default();
        assert!(
            refused.contains(&format!("store.database_url {query}"))
                && refused.contains("the server does not offer TLS"),
            "{refused}"
        );
        let writer = broker::store::testing::connect_postgres_writer(&required)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            writer.contains(query) && writer.contains("tls"),
            "{query}: {writer}"
        );
        assert!(!writer.contains(PASSWORD), "{writer}");
    }
    let prefer = url(&pg, "127.0.0.1", BROKER_ROLE, db, "sslmode=prefer");
    let seen = serve_and_decide(&pg, db, &prefer).await;
    assert_connections(&seen, false, "prefer against ssl=off");
}
