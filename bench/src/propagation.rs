//! Kill-switch propagation between two broker processes on one database: engage an AGENT switch
//! through broker A, and time from `Engage` returning there to the first DENY (KILL_SWITCH, that
//! switch) for that agent from broker B; release, wait until B allows again; repeat.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use broker::auth::Role;
use broker::store::Backend;
use broker_sdk::{Client, EngageRequest, KillSwitchClient, KillSwitchScope, SessionRequest};
use serde_json::json;

use crate::scenario::Database;
use crate::server::{BrokerProcess, Serve, Tokens, SESSION_BUDGET};
use crate::stats::Latencies;

/// Longest wait for one round's switch (or its release) to reach broker B.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
const AGENT: &str = "bench-propagation-agent";

pub async fn measure(
    binary: &Path,
    examples: &Path,
    backend: Backend,
    rounds: usize,
) -> anyhow::Result<Latencies> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    let db = Database::fresh(backend).await?;
    // Both processes share the data dir: the dev signing key, and on SQLite the database file.
    let tokens = Tokens::new(data.path())?;
    let serve = Serve {
        binary,
        data_dir: data.path(),
        database_url: db.url.as_deref(),
        policies: examples,
        wrapper: &[],
    };
    let a = BrokerProcess::start(&serve, "broker-a").await?;
    let b = BrokerProcess::start(&serve, "broker-b").await?;
    let result = rounds_between(&a, &b, &tokens, rounds).await;
    a.stop().await;
    b.stop().await;
    result
}

async fn rounds_between(
    a: &BrokerProcess,
    b: &BrokerProcess,
    tokens: &Tokens,
    rounds: usize,
) -> anyhow::Result<Latencies> {
    let agent_token = tokens.mint(AGENT, Role::Agent, Some("alice"), None, &[])?;
    let on_b = Client::from_channel(b.connect().await?, agent_token);
    let admin = KillSwitchClient::from_channel(
        a.connect().await?,
        tokens.mint("bench-admin", Role::Admin, None, None, &[])?,
    );
    let session = on_b
        .open_session(SessionRequest::new(["web.search"]).max_tool_calls(SESSION_BUDGET))
        .await?
        .session_id;
    let args = json!({"query": "propagation"});
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let k = admin
            .engage(EngageRequest::new(
                KillSwitchScope::Agent,
                AGENT,
                "propagation benchmark",
            ))
            .await?;
        let engaged = Instant::now();
        loop {
            let d = on_b.authorize(&session, "web.search", &args).await?;
            if d.reason("KILL_SWITCH")
                .is_some_and(|r| r.kill_switch_id.as_deref() == Some(k.id.as_str()))
            {
                samples.push(engaged.elapsed());
                break;
            }
            if engaged.elapsed() > ROUND_TIMEOUT {
                bail!(
                    "round {round}: broker B did not apply switch `{}` within {ROUND_TIMEOUT:?}",
                    k.id
                );
            }
        }
        admin.release(&k.id, "next round").await?;
        let released = Instant::now();
        while !on_b
            .authorize(&session, "web.search", &args)
            .await?
            .is_allowed()
        {
            if released.elapsed() > ROUND_TIMEOUT {
                bail!("round {round}: broker B still denies {ROUND_TIMEOUT:?} after the release");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(Latencies::new(samples))
}
