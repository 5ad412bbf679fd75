//! The broker's domain: sessions, decisions and the audit trail's content. Knows neither tonic nor sqlx.

pub mod approval;
pub mod approving;
pub mod audit;
pub mod broker;
mod canonical;
#[cfg(test)]
mod canonical_tests;
pub mod decision;
pub mod killswitch;
pub mod person;
pub mod quarantine;
pub mod redaction;
#[cfg(test)]
mod redaction_tests;
pub mod retrieving;
pub mod session;
mod session_cache;
pub mod switchboard;
pub mod tenancy;
