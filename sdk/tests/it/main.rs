//! The SDK against an in-process fake broker whose answers each test controls.

#![expect(clippy::expect_used, reason = "a test fails loudly on setup errors")]

mod approval;
mod audit;
mod auth;
mod authorize;
mod await_approval;
mod errors;
mod fake;
mod guard;
mod kill_switch;
mod session;
