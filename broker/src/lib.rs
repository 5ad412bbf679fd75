//! The authorization broker: every agent tool call passes through here before it happens.
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod clock;
pub mod domain;
pub mod ids;
pub mod policy;
