//! The audit chain's hash of one decision event (canonical JSON, then SHA-256), as the audit writer
//! computes it for every event of a batch in its one task. Prints the median of five runs; asserts nothing.
//!
//! ```sh
//! cargo bench -p broker --bench chain_hash
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark driver"
)]

use std::time::{Duration, Instant};

use broker::domain::audit::{chain_hash, EventBody, EventKind};
use broker::domain::decision::{Outcome, Reason, ReasonCode};

fn main() {
    // A DENY as the load's mix produces it: one policy reason, redacted arguments.
    let body = EventBody {
        event_id: broker::ids::event_id(1_733_000_000_000_000),
        time: 1_733_000_000_000_000,
        kind: EventKind::ToolCallDecided,
        agent: "bench-agent-1".into(),
        user: Some("alice".into()),
        session_id: Some(broker::ids::session_id()),
        decision_id: Some(broker::ids::decision_id()),
        tool: Some("web.search".into()),
        call_id: Some("call-123456".into()),
        outcome: Some(Outcome::Deny),
        reasons: vec![Reason {
            code: ReasonCode::PolicyDeny,
            policy_id: Some("search-result-cap".into()),
            message: "too many results requested".into(),
            kill_switch_id: None,
        }],
        policy_version: Some(format!("sha256:{}", "0123456789abcdef".repeat(4))),
        arguments_digest: Some("0123456789abcdef".repeat(4)),
        arguments_redacted: Some(r#"{"max_results":80,"query":"topic-12 latest news"}"#.into()),
        detail: None,
    };
    let prev = "ab".repeat(32);
    let n: i64 = 200_000;
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for seq in 1..=n {
                std::hint::black_box(chain_hash(seq, &prev, &body).unwrap());
            }
            start.elapsed()
        })
        .collect();
    runs.sort();
    let median = runs[2];
    println!(
        "chain hash of a decision event: {:.3} us (median of 5 runs of {n})",
        median.as_secs_f64() * 1e6 / n as f64
    );
}
