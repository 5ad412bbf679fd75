//! In-process figures, without gRPC or a database: `PolicyEngine::decide` against the size of the
//! policy set, and the retrieval batch of 1,000 documents (`decide_retrieval`) and pre-filter.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::domain::decision::Outcome;
use broker::policy::{Caller, PolicyEngine, SessionFacts, ToolCall};
use serde_json::{json, Value};

use crate::mix;
use crate::scenario::PolicySet;
use crate::stats::Latencies;

/// Samples taken at most per set (fewer when the time budget runs out first).
const MAX_SAMPLES: usize = 20_000;
/// Samples taken at least per set, whatever the budget.
const MIN_SAMPLES: usize = 30;
const DOCUMENTS: usize = 1000;

#[derive(Debug, Clone)]
pub struct DecisionTiming {
    pub label: String,
    /// As [`PolicySet::name`].
    pub name: String,
    /// Parsing and strictly validating the directory, and building the engine.
    pub load: Duration,
    pub latencies: Latencies,
    pub allow: u64,
    pub deny: u64,
}

fn session() -> SessionFacts<'static> {
    SessionFacts {
        id: "ses_bench",
        purpose: mix::SESSION_PURPOSE,
        calls: 0,
        max_calls: 1_000_000,
        user: mix::USER,
        collections: vec!["kb", "tickets"],
        labels: vec![],
    }
}

/// Decides the load's call mix one call at a time, timing each, for `budget` per set.
pub fn decision_times(sets: &[PolicySet], budget: Duration) -> anyhow::Result<Vec<DecisionTiming>> {
    let calls = mix::pool();
    let agents: Vec<String> = (0..mix::AGENTS).map(mix::agent_name).collect();
    let mut out = Vec::with_capacity(sets.len());
    for set in sets {
        let started = Instant::now();
        let engine = PolicyEngine::load(&set.dir)
            .with_context(|| format!("loading `{}`", set.dir.display()))?;
        let load = started.elapsed();
        let mut samples = Vec::new();
        let (mut allow, mut deny) = (0, 0);
        let until = Instant::now() + budget;
        let mut i = 0usize;
        while samples.len() < MAX_SAMPLES && (Instant::now() < until || samples.len() < MIN_SAMPLES)
        {
            let (Some(c), Some(agent)) = (calls.get(i % calls.len()), agents.get(i % agents.len()))
            else {
                break;
            };
            let call = ToolCall {
                agent,
                user: Some(mix::USER),
                tenant: Some(mix::TENANT),
                roles: vec!["agent"],
                tool: c.tool,
                args: &c.args,
                session: session(),
                approval: None,
            };
            let t = Instant::now();
            let verdict = engine.decide(&call);
            let took = t.elapsed();
            // The first ten calls are not timed (first-use costs).
            if i >= 10 {
                samples.push(took);
                match verdict.outcome {
                    Outcome::Allow => allow += 1,
                    Outcome::Deny | Outcome::PendingApproval => deny += 1,
                }
            }
            i += 1;
        }
        out.push(DecisionTiming {
            label: set.label.clone(),
            name: set.name(),
            load,
            latencies: Latencies::new(samples),
            allow,
            deny,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct RetrievalTiming {
    pub policies: usize,
    pub documents: usize,
    pub allowed: usize,
    pub batch: Latencies,
    pub filter: Latencies,
}

/// The batch of 1,000 candidate documents on the example policies (as `broker/benches/retrieval.rs`).
pub fn retrieval(examples: &Path, budget: Duration) -> anyhow::Result<RetrievalTiming> {
    let engine = PolicyEngine::load(examples)
        .with_context(|| format!("loading `{}`", examples.display()))?;
    let caller = Caller {
        agent: "rag-agent",
        user: Some(mix::USER),
        tenant: Some(mix::TENANT),
        roles: vec!["agent"],
    };
    let session = session();
    let docs: Vec<(String, Value)> = (0..DOCUMENTS)
        .map(|i| {
            let tenant = if i % 7 == 0 { "globex" } else { mix::TENANT };
            let collection = if i % 5 == 0 { "hr" } else { "kb" };
            // Confidential and above carry their label, as the example policies require.
            let labels = if i % 4 >= 2 {
                json!(["internal", "confidential"])
            } else {
                json!(["internal"])
            };
            let v = json!({"tenant": tenant, "collection": collection, "classification": i % 4,
                           "personal": i % 11 == 0, "owner": mix::USER, "source": "wiki",
                           "labels": labels});
            (format!("doc-{i}"), v)
        })
        .collect();
    let refs: Vec<(&str, &Value)> = docs.iter().map(|(id, v)| (id.as_str(), v)).collect();
    let mut batch = Vec::new();
    let mut allowed = 0;
    let until = Instant::now() + budget;
    while batch.len() < 200 && (Instant::now() < until || batch.len() < 10) {
        let t = Instant::now();
        let verdicts = engine.decide_retrieval(&caller, &session, &refs);
        batch.push(t.elapsed());
        allowed = verdicts
            .iter()
            .filter(|v| v.outcome == Outcome::Allow)
            .count();
    }
    let mut filter = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let f = engine.retrieval_filter(&caller, &session);
        filter.push(t.elapsed());
        std::hint::black_box(f);
    }
    Ok(RetrievalTiming {
        policies: engine.policy_count(),
        documents: DOCUMENTS,
        allowed,
        batch: Latencies::new(batch),
        filter: Latencies::new(filter),
    })
}
