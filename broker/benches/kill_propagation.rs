//! Kill-switch propagation between two broker processes on one database.
//!
//! Starts two real `broker serve` processes on the same database, engages an AGENT switch through the
//! first, and measures the time from `Engage` returning there to the first DENY (KILL_SWITCH) for that
//! agent from the second; then releases and waits until the second allows again. Prints the figures;
//! asserts nothing (speed targets are not tests).
//!
//! ```sh
//! cargo bench -p broker --bench kill_propagation            # Postgres and SQLite, 30 rounds each
//! cargo bench -p broker --bench kill_propagation -- postgres 100
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark driver"
)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use broker::auth::{dev, AuthConfig, Role};
use broker::store::testing::TestDb;
use broker::store::Backend;
use broker_sdk::{Client, EngageRequest, KillSwitchClient, KillSwitchScope, SessionRequest};
use serde_json::json;

struct Broker {
    child: tokio::process::Child,
    endpoint: String,
}

async fn spawn(db_url: &str, data_dir: &Path) -> Broker {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--database-url",
            db_url,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--policies")
        .arg(policies)
        .env("RUST_LOG", "warn")
        // The test server is reached as its superuser, which the startup self-check refuses by default.
        .env("BROKER_STORE__ALLOW_PRIVILEGED_ROLE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Broker {
        child,
        endpoint: format!("http://{addr}"),
    }
}

async fn connect_agent(endpoint: &str, token: &str) -> Client {
    let start = Instant::now();
    loop {
        if let Ok(c) = Client::connect(endpoint.to_owned(), token.to_owned()).await {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "broker at {endpoint} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn run(backend: Backend, rounds: usize) {
    let db = TestDb::new(backend)
        .await
        .expect("database (is Postgres running on 127.0.0.1:5432?)");
    let url = db.config().database_url.clone();
    let data = tempfile::tempdir().unwrap();
    // Both processes share the data dir, hence the dev signing key.
    let (secret, _) = dev::load_or_create_secret(data.path()).unwrap();
    let cfg = AuthConfig::default();
    let mint = |sub: &str, role: Role| {
        let req = dev::TokenRequest {
            subject: sub.into(),
            roles: vec![role],
            on_behalf_of: Some("alice".into()),
            tenant: None,
            groups: vec![],
            ttl: Duration::from_secs(3600),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        };
        dev::mint(&secret, &cfg, &req).unwrap()
    };
    let mut a = spawn(&url, data.path()).await;
    let mut b = spawn(&url, data.path()).await;
    let agent_token = mint("bench-agent", Role::Agent);
    let on_b = connect_agent(&b.endpoint, &agent_token).await;
    connect_agent(&a.endpoint, &agent_token).await;
    let admin = KillSwitchClient::connect(a.endpoint.clone(), mint("bench-admin", Role::Admin))
        .await
        .unwrap();
    let session = on_b
        .open_session(SessionRequest::new(["web.search"]).max_tool_calls(100_000))
        .await
        .unwrap()
        .session_id;
    let args = json!({"query": "propagation"});

    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let k = admin
            .engage(EngageRequest::new(
                KillSwitchScope::Agent,
                "bench-agent",
                "propagation bench",
            ))
            .await
            .unwrap();
        let engaged = Instant::now();
        loop {
            let d = on_b.authorize(&session, "web.search", &args).await.unwrap();
            if d.reason("KILL_SWITCH")
                .is_some_and(|r| r.kill_switch_id.as_deref() == Some(k.id.as_str()))
            {
                samples.push(engaged.elapsed());
                break;
            }
            assert!(
                engaged.elapsed() < Duration::from_secs(10),
                "no propagation within 10 s"
            );
        }
        admin.release(&k.id, "next round").await.unwrap();
        while !on_b
            .authorize(&session, "web.search", &args)
            .await
            .unwrap()
            .is_allowed()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    samples.sort();
    println!(
        "{:<8} kill-switch propagation broker A -> broker B ({rounds} rounds, separate processes, one database): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        backend.as_str(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
    let _ = a.child.kill().await;
    let _ = b.child.kill().await;
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; positional words choose the backend and the number of rounds.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rounds = args.iter().find_map(|a| a.parse().ok()).unwrap_or(30);
    let backends: Vec<Backend> = match args
        .iter()
        .find(|a| a.parse::<usize>().is_err())
        .map(String::as_str)
    {
        Some("postgres") => vec![Backend::Postgres],
        Some("sqlite") => vec![Backend::Sqlite],
        _ => vec![Backend::Postgres, Backend::Sqlite],
    };
    for backend in backends {
        run(backend, rounds).await;
    }
}
