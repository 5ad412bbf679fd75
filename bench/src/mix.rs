//! The tool calls the load sends: a fixed, deterministic mix of calls the example policies allow and
//! deny (about 3 in 8 denied), none of which needs an approval (PENDING_APPROVAL would leave approvals
//! behind and is measured on its own). The generated policy sets deny a few more of the same calls.

use serde_json::{json, Value};

/// The agents the load runs as (`sub` of their tokens); generated policies name some of them.
pub const AGENTS: usize = 4;
/// The user every agent acts for (`on_behalf_of`): the example refund permit needs one.
pub const USER: &str = "alice";
pub const TENANT: &str = "acme";
/// What the load's sessions are opened with.
pub const SESSION_TOOLS: [&str; 4] = [
    "web.search",
    "file.read",
    "payments.refund",
    "calendar.create_event",
];
pub const SESSION_PURPOSE: &str = "benchmark";
/// Distinct calls in the pool the workers cycle through.
pub const POOL: usize = 800;
/// The second attendee of the mix's events: people in the example directory (`internal_recipients`).
pub const ATTENDEES: [&str; 2] = ["bob@example.com", "carol@example.com"];

pub fn agent_name(index: usize) -> String {
    format!("bench-agent-{index}")
}

/// One tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub tool: &'static str,
    pub args: Value,
}

/// Call number `i` of the mix; `k` varies the arguments so that argument-dependent policies sometimes
/// match.
pub fn call(i: usize) -> Call {
    let k = (i / 8) % 200;
    let currency = match k % 3 {
        0 => "EUR",
        1 => "USD",
        _ => "GBP",
    };
    let (tool, args) = match i % 8 {
        0 => (
            "web.search",
            json!({"query": format!("topic-{k} latest news"), "max_results": 10}),
        ),
        // Above the example cap of 50 results: DENY.
        1 => (
            "web.search",
            json!({"query": format!("topic-{k}"), "max_results": 80}),
        ),
        2 => (
            "file.read",
            json!({"path": format!("/srv/reports/q{k}.txt")}),
        ),
        // Outside the example roots (`/srv/`, `/workspace/`): DENY.
        3 => ("file.read", json!({"path": "/etc/passwd"})),
        // At most 1000: no approval needed.
        4 => (
            "payments.refund",
            json!({"payment_id": format!("pay_{i}"), "amount": 20 + (k * 4) % 900,
                   "currency": currency, "reason": "damaged item"}),
        ),
        // Above 100000: DENY outright (the non-approval forbid applies too).
        5 => (
            "payments.refund",
            json!({"payment_id": format!("pay_{i}"), "amount": 250_000, "currency": "EUR"}),
        ),
        // Attendees from the company directory: an outsider would need an approval.
        6 => (
            "calendar.create_event",
            json!({"title": format!("sync {k}"), "start": "2026-03-01T10:00:00Z",
                   "duration_minutes": 30 + k % 90,
                   "attendees": ["alice@example.com", ATTENDEES.get(k % ATTENDEES.len())]}),
        ),
        _ => (
            "file.read",
            json!({"path": format!("/srv/restricted-{}/plan.txt", k % 40)}),
        ),
    };
    Call { tool, args }
}

/// The pool of calls the load cycles through.
pub fn pool() -> Vec<Call> {
    (0..POOL).map(call).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_deterministic_and_stays_in_the_session_scope() {
        assert_eq!(pool(), pool());
        for c in pool() {
            assert!(
                SESSION_TOOLS.contains(&c.tool),
                "{} outside the scope",
                c.tool
            );
        }
    }

    #[test]
    fn refunds_in_the_mix_never_need_an_approval() {
        // The example policies ask for approval between 1001 and 100000.
        for c in pool().iter().filter(|c| c.tool == "payments.refund") {
            let amount = c.args["amount"].as_i64().unwrap();
            assert!(
                amount <= 1000 || amount > 100_000,
                "amount {amount} would need approval"
            );
        }
    }
}
