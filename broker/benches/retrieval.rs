//! In-process retrieval decisions on the example policies: a batch of 1,000 candidate documents
//! (post-filter) and the pre-filter computation. Prints medians; asserts nothing.
//!
//! ```sh
//! cargo bench -p broker --bench retrieval
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark driver"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use broker::policy::{Caller, PolicyEngine, SessionFacts};
use serde_json::{json, Value};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let engine =
        PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")).unwrap();
    let caller = Caller {
        agent: "rag-agent",
        user: Some("alice"),
        tenant: Some("acme"),
        roles: vec!["agent"],
    };
    let session = SessionFacts {
        id: "ses_bench",
        purpose: "bench",
        calls: 0,
        max_calls: 100,
        user: "alice",
        collections: vec!["kb", "tickets"],
        labels: vec![],
    };
    let docs: Vec<(String, Value)> = (0..1000)
        .map(|i| {
            let tenant = if i % 7 == 0 { "globex" } else { "acme" };
            // Confidential and above carry their label, as the example policies require.
            let labels = if i % 4 >= 2 { json!(["internal", "confidential"]) } else { json!(["internal"]) };
            let v = json!({"tenant": tenant, "collection": if i % 5 == 0 { "hr" } else { "kb" }, "classification": i % 4,
                           "personal": i % 11 == 0, "owner": "alice", "source": "wiki", "labels": labels});
            (format!("doc-{i}"), v)
        })
        .collect();
    let refs: Vec<(&str, &Value)> = docs.iter().map(|(id, v)| (id.as_str(), v)).collect();

    let runs = 50;
    let mut batch = Vec::with_capacity(runs);
    let mut allowed = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let v = engine.decide_retrieval(&caller, &session, &refs);
        batch.push(t.elapsed());
        allowed = v
            .iter()
            .filter(|v| v.outcome == broker::domain::decision::Outcome::Allow)
            .count();
    }
    let mut filters = Vec::with_capacity(runs);
    let mut complete = false;
    for _ in 0..runs {
        let t = Instant::now();
        let f = engine.retrieval_filter(&caller, &session);
        filters.push(t.elapsed());
        complete = f.complete;
    }
    println!(
        "retrieval, {} policies, in process: batch of 1000 documents median {:.2} ms ({} allowed, {runs} runs); filter median {:.3} ms (complete: {complete})",
        engine.policy_count(),
        median(batch).as_secs_f64() * 1e3,
        allowed,
        median(filters).as_secs_f64() * 1e3,
    );
}
