//! A five-minute tour: open a session against a running broker and ask about a few tool calls.
//!
//! ```sh
//! export BROKER_TOKEN=$(broker token --sub support-agent --role agent --on-behalf-of alice)
//! cargo run -p broker-sdk --example tour
//! ```

use broker_sdk::{Client, GuardError, SessionRequest};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint =
        std::env::var("BROKER_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let token = std::env::var("BROKER_TOKEN")
        .map_err(|_| "set BROKER_TOKEN (see `broker token --help`)")?;
    let client = Client::connect(endpoint, token).await?;

    let session = client
        .open_session(
            SessionRequest::new(["web.search", "payments.*", "email.send", "shell.exec"])
                .max_tool_calls(10)
                .purpose("tour"),
        )
        .await?;
    let lifetime = session
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    println!(
        "session {} open for {}s, budget {}",
        session.session_id,
        lifetime.as_secs(),
        session.max_tool_calls
    );

    let calls = [
        ("web.search", json!({"query": "cedar policy language"})),
        (
            "payments.refund",
            json!({"payment_id": "pay_123", "amount": 250, "currency": "EUR"}),
        ),
        (
            "payments.refund",
            json!({"payment_id": "pay_123", "amount": 5000, "currency": "EUR"}),
        ),
        (
            "payments.refund",
            json!({"payment_id": "pay_123", "amount": 500000, "currency": "EUR"}),
        ),
        (
            "email.send",
            json!({"to": "someone@evil.test", "subject": "export", "body": "..."}),
        ),
        ("shell.exec", json!({"command": "id"})),
        ("file.read", json!({"path": "/etc/passwd"})),
        (
            "payments.refund",
            json!({"payment_id": "pay_123", "amount": "lots", "currency": "EUR"}),
        ),
    ];
    for (tool, args) in calls {
        let d = client.authorize(&session.session_id, tool, &args).await?;
        let why: Vec<String> = d
            .reasons
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.code,
                    r.policy_id.as_deref().unwrap_or("-"),
                    r.message
                )
            })
            .collect();
        println!("{:<16} {:<5} {}", tool, d.outcome.as_str(), why.join("; "));
    }

    // `guard` runs the tool only when the broker says ALLOW.
    let searched = client
        .guard(
            &session.session_id,
            "web.search",
            &json!({"query": "rust"}),
            || async { "10 results" },
        )
        .await;
    match searched {
        Ok(result) => println!("guarded web.search ran: {result}"),
        Err(GuardError::Denied(d)) => println!("guarded web.search denied: {:?}", d.reasons),
        Err(GuardError::PendingApproval(d)) => {
            println!("guarded web.search waits for approval {:?}", d.approval_id)
        }
        Err(GuardError::Broker(e)) => println!("broker could not decide, tool not run: {e}"),
    }
    client.close_session(&session.session_id).await?;
    Ok(())
}
