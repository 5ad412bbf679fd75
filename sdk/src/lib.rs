//! Client library for agent frameworks: open a session with the authorization broker, ask it about
//! every tool call, and run the tool only when it says ALLOW.
//!
//! A DENY is an answer, not an error: it comes back as a [`Decision`] with reasons. An [`Error`] means
//! the broker could not decide (or its answer could not be trusted), and the tool must not run. The SDK
//! fails closed: an unknown or unspecified outcome from the server is an [`Error::Protocol`], never an
//! allow, and [`Client::guard`] runs the tool only on ALLOW.
//!
//! Some calls need a person's yes first: the broker then answers PENDING_APPROVAL
//! ([`Outcome::PendingApproval`]), naming the approval in [`Decision::approval_id`], and the tool must
//! not run yet. [`Client::await_approval`] waits for the approvers' final ALLOW or DENY;
//! [`Client::guard_with_approval`] tells the application once (so it can show its user what is
//! awaited) and waits up to an [`ApprovalWait`], running the tool only on a final ALLOW.
//! [`Client::guard`] does not wait: a pending call is [`GuardError::PendingApproval`].
//!
//! ```no_run
//! use std::time::Duration;
//! use broker_sdk::{ApprovalWait, Client, GuardError, SessionRequest, SharedToken};
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
//!         SessionRequest::new(["email.*", "payments.refund"])
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
//!     Err(GuardError::PendingApproval(decision)) => {
//!         // A person must approve first; `guard_with_approval` would have waited.
//!         println!("{decision}");
//!     }
//!     Err(GuardError::Broker(error)) => println!("the broker could not decide: {error}"),
//! }
//!
//! // Wait up to five minutes for a person to approve a large refund.
//! let refund = serde_json::json!({"payment_id": "pay_123", "amount": 5000, "currency": "EUR"});
//! let wait = ApprovalWait::up_to(Duration::from_secs(300)).on_pending(|decision| {
//!     println!("asked for approval {:?}: {decision}", decision.approval_id);
//! });
//! let refunded = client
//!     .guard_with_approval(&session.session_id, "payments.refund", &refund, wait, || async {
//!         "refunded"
//!     })
//!     .await;
//! if let Err(GuardError::PendingApproval(decision)) = &refunded {
//!     println!("nobody decided in time; the refund did not run: {decision}");
//! }
//!
//! client.close_session(&session.session_id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Approvers (role `approver`) list, watch, approve and deny the waiting calls with [`ApprovalClient`].
//! Security teams read the audit trail with [`AuditClient`]; admins stop everything, a tenant, an agent,
//! a user, a tool or a session at once with [`KillSwitchClient`]. The raw generated types and clients are
//! in [`proto`]; [`BearerAuth`] authenticates them.

#![warn(missing_docs)]

mod approval;
mod approval_client;
mod audit;
mod audit_event;
mod call_id;
mod client;
mod connect;
mod decision;
mod error;
mod filter;
mod guard;
mod kill_switch;
mod kill_switch_event;
mod retrieval;
mod retrieve;
mod rpc;
mod session;
mod timestamp;
mod token;

/// The generated types and clients of the contract (package `broker.v1`), for callers who need them.
pub use broker_proto::v1 as proto;

pub use approval::{
    Approval, ApprovalFilter, ApprovalPage, ApprovalRequirement, ApprovalStatus, ApprovalVote, Vote,
};
pub use approval_client::{ApprovalClient, ApprovalWatch};
pub use audit::AuditClient;
pub use audit_event::{AuditEvent, AuditFilter, AuditPage, ChainBreak, ChainReport};
pub use call_id::new_call_id;
pub use client::Client;
pub use connect::{endpoint, CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
pub use decision::{Decision, Outcome, Reason};
pub use error::Error;
pub use filter::{apply_filter, filter_admits, MAX_FILTER_DEPTH};
pub use guard::{ApprovalWait, GuardError, AWAIT_MIN_INTERVAL};
pub use kill_switch::{KillSwitchClient, KillSwitchWatch};
pub use kill_switch_event::{
    EngageRequest, KillSwitch, KillSwitchChange, KillSwitchEvent, KillSwitchScope,
};
pub use retrieval::{DocumentDecision, RetrievalDecision, RetrievalFilter};
pub use retrieve::{RetrieveError, Retrieved};
pub use rpc::DEFAULT_TIMEOUT;
pub use session::{Session, SessionRequest, SessionState};
pub use token::{BearerAuth, SharedToken, StaticToken, TokenFn, TokenSource, AUTHORIZATION};

/// TLS settings for [`endpoint`] (a private CA, a client identity for mTLS), re-exported from tonic.
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
/// A gRPC status code, as returned by [`Error::code`].
pub use tonic::Code;
