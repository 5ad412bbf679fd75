//! End-to-end: a real broker, a real database (each test runs on SQLite and on Postgres), driven through
//! the SDK as an agent framework would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod approval_requirements;
mod approvals;
mod audit_trail;
mod decisions;
mod example_policies;
mod fairness;
mod fuzz_seeds;
mod hostile_input;
mod identity;
mod kill_switches;
mod least_privilege;
mod outage;
mod replays;
mod retrieval;
mod separation_of_duties;
mod server;
mod session_calls;
mod sessions;
mod tenancy;
mod tls;
