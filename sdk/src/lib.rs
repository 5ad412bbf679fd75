//! Client library for agent frameworks: open a session with the authorization broker, ask it about
//! every tool call, and run the tool only when it says ALLOW.
//!
//! A DENY is an answer, not an error: it comes back as a [`Decision`] with reasons. An [`Error`] means
//! the broker could not decide (or its answer could not be trusted), and the tool must not run. The SDK
//! fails closed: an unknown or unspecified outcome from the server is an [`Error::Protocol`], never an
//! allow, and [`Client::guard`] runs the tool only on ALLOW.
//!
//! ```no_run
//! use std::time::Duration;
//! use broker_sdk::{Client, GuardError, SessionRequest, SharedToken};
//!
//! # async fn run() -> Result<(), broker_sdk::Error> {
//! // The token source is asked before every call, so a refreshed token is picked up.
//! let tokens = SharedToken::new("eyJhbGciOi...");
//! let client = Client::connect("http://127.0.0.1:50051", tokens.clone())
//!     .await?
//!     .with_timeout(Duration::from_secs(5));
//!
//! let session = client
//!     .open_session(
//!         SessionRequest::new(["email.*"])
//!             .ttl(Duration::from_secs(600))
//!             .max_tool_calls(10)
//!             .purpose("answer the customer's question"),
//!     )
//!     .await?;
//!
//! let args = serde_json::json!({"to": "alice@example.com", "subject": "Your order"});
//! let sent = client
//!     .guard(&session.session_id, "email.send", &args, || async {
//!         // The real tool runs here, and only here.
//!         "message sent"
//!     })
//!     .await;
//! match sent {
//!     Ok(result) => println!("{result}"),
//!     Err(GuardError::Denied(decision)) => {
//!         // Tell the model why, e.g. `DENY `email.send`: POLICY_DENY (external-email): ...`
//!         println!("{decision}");
//!     }
//!     Err(GuardError::Broker(error)) => println!("the broker could not decide: {error}"),
//! }
//!
//! client.close_session(&session.session_id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Security teams read the audit trail with [`AuditClient`]; admins stop everything, a tenant, an agent,
//! a user, a tool or a session at once with [`KillSwitchClient`]. The raw generated types and clients are
//! in [`proto`]; [`BearerAuth`] authenticates them.

#![warn(missing_docs)]

mod audit;
mod audit_event;
mod call_id;
mod client;
mod connect;
mod decision;
mod error;
mod guard;
mod kill_switch;
mod kill_switch_event;
mod rpc;
mod session;
mod timestamp;
mod token;

/// The generated types and clients of the contract (package `broker.v1`), for callers who need them.
pub use broker_proto::v1 as proto;

pub use audit::AuditClient;
pub use audit_event::{AuditEvent, AuditFilter, AuditPage, ChainBreak, ChainReport};
pub use call_id::new_call_id;
pub use client::Client;
pub use connect::{endpoint, CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
pub use decision::{Decision, Outcome, Reason};
pub use error::Error;
pub use guard::GuardError;
pub use kill_switch::{KillSwitchClient, KillSwitchWatch};
pub use kill_switch_event::{
    EngageRequest, KillSwitch, KillSwitchChange, KillSwitchEvent, KillSwitchScope,
};
pub use rpc::DEFAULT_TIMEOUT;
pub use session::{Session, SessionRequest, SessionState};
pub use token::{BearerAuth, SharedToken, StaticToken, TokenFn, TokenSource, AUTHORIZATION};

/// TLS settings for [`endpoint`] (a private CA, a client identity for mTLS), re-exported from tonic.
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
/// A gRPC status code, as returned by [`Error::code`].
pub use tonic::Code;
