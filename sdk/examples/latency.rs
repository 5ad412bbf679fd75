//! `AuthorizeToolCall` latency against a running broker: N calls, K in flight on one connection.
//! A quick probe of the decision path, durable audit included; the benchmark proper is `broker-bench`.
//!
//! ```sh
//! export BROKER_TOKEN=$(broker token --sub probe --role agent --on-behalf-of alice)
//! cargo run --release -p broker-sdk --example latency -- 2000      # 1 in flight
//! cargo run --release -p broker-sdk --example latency -- 20000 64  # 64 in flight
//! ```

use std::time::Instant;

use broker_sdk::{Client, SessionRequest};
use futures::StreamExt;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let in_flight: usize = std::env::args().nth(2).map_or(Ok(1), |a| a.parse())?;
    let endpoint =
        std::env::var("BROKER_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let token = std::env::var("BROKER_TOKEN").map_err(|_| "set BROKER_TOKEN")?;
    let client = Client::connect(endpoint, token).await?;
    let budget = u32::try_from(n + 10)?;
    let session = client
        .open_session(SessionRequest::new(["web.search"]).max_tool_calls(budget))
        .await?;
    let started = Instant::now();
    let results: Vec<Result<u128, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let session_id = session.session_id.clone();
            async move {
                let t = Instant::now();
                let d = client
                    .authorize(
                        &session_id,
                        "web.search",
                        &json!({"query": format!("q{i}")}),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !d.is_allowed() {
                    return Err(format!("unexpected {d:?}"));
                }
                Ok(t.elapsed().as_micros())
            }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let total = started.elapsed();
    let mut micros = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    micros.sort_unstable();
    let at = |q: f64| {
        micros
            .get(((micros.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{n} ALLOWs, {in_flight} in flight, in {:.2}s: {:.0}/s, p50 {} us, p90 {} us, p99 {} us, max {} us",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
