//! Approval release latency on one broker: an agent's refund above 1000 waits for a payments approver
//! (`AwaitApproval`); the time measured runs from the approver's `Approve` RPC returning to the agent's
//! waiting call returning its ALLOW.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use broker::auth::Role;
use broker::store::Backend;
use broker_sdk::{ApprovalClient, Client, Outcome, SessionRequest};
use serde_json::json;

use crate::scenario::Database;
use crate::server::{BrokerProcess, Serve, Tokens, SESSION_BUDGET};
use crate::stats::Latencies;

/// Time given to the agent's `AwaitApproval` to reach the broker before the approver votes.
const SETTLE: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ApprovalLatency {
    /// From `Approve` returning to the approver to the agent's ALLOW (zero when the ALLOW came first).
    pub after_approve_returned: Latencies,
    /// From `Approve` being sent to the agent's ALLOW.
    pub after_approve_sent: Latencies,
    /// Rounds whose ALLOW reached the agent before `Approve` returned to the approver.
    pub allow_first: usize,
}

pub async fn measure(
    binary: &Path,
    examples: &Path,
    backend: Backend,
    rounds: usize,
) -> anyhow::Result<ApprovalLatency> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    let db = Database::fresh(backend).await?;
    let tokens = Tokens::new(data.path())?;
    let broker = BrokerProcess::start(
        &Serve {
            binary,
            data_dir: data.path(),
            database_url: db.url.as_deref(),
            policies: examples,
            wrapper: &[],
        },
        "broker",
    )
    .await?;
    let result = rounds_on(&broker, &tokens, rounds).await;
    broker.stop().await;
    result
}

async fn rounds_on(
    broker: &BrokerProcess,
    tokens: &Tokens,
    rounds: usize,
) -> anyhow::Result<ApprovalLatency> {
    let agent = Client::from_channel(
        broker.connect().await?,
        tokens.mint("bench-refund-agent", Role::Agent, Some("alice"), None, &[])?,
    );
    let approver = ApprovalClient::from_channel(
        broker.connect().await?,
        tokens.mint(
            "bench-approver",
            Role::Approver,
            None,
            None,
            &["payments-approvers"],
        )?,
    );
    let session = agent
        .open_session(
            SessionRequest::new(["payments.refund"])
                .max_tool_calls(SESSION_BUDGET)
                .purpose("approval benchmark"),
        )
        .await?
        .session_id;
    let (mut returned, mut sent, mut allow_first) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        let args = json!({"payment_id": format!("pay_{round}"), "amount": 5000, "currency": "EUR"});
        let pending = agent.authorize(&session, "payments.refund", &args).await?;
        let Some(approval_id) = pending.approval_id.clone().filter(|_| pending.is_pending()) else {
            bail!("round {round}: expected PENDING_APPROVAL, got {pending}");
        };
        let waiting = {
            let agent = agent.clone();
            let id = approval_id.clone();
            tokio::spawn(async move {
                let d = agent.await_approval(&id, WAIT).await;
                (d, Instant::now())
            })
        };
        tokio::time::sleep(SETTLE).await;
        let approve_sent = Instant::now();
        approver.approve(&approval_id, "benchmark").await?;
        let approve_returned = Instant::now();
        let (decision, allowed_at) = waiting.await.context("the waiting agent task failed")?;
        let decision = decision?;
        if decision.outcome != Outcome::Allow {
            bail!("round {round}: expected ALLOW after the approval, got {decision}");
        }
        if allowed_at < approve_returned {
            allow_first += 1;
        }
        returned.push(allowed_at.saturating_duration_since(approve_returned));
        sent.push(allowed_at.saturating_duration_since(approve_sent));
    }
    Ok(ApprovalLatency {
        after_approve_returned: Latencies::new(returned),
        after_approve_sent: Latencies::new(sent),
        allow_first,
    })
}
