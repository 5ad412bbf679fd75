//! Why a guarded tool did not run, and how long a guard waits for people to approve a call.

use std::fmt;
use std::time::Duration;

use crate::{Decision, Error};

/// The shortest time between the starts of two `AwaitApproval` calls made by
/// [`Client::guard_with_approval`](crate::Client::guard_with_approval), so that a broker answering
/// PENDING_APPROVAL at once (e.g. with a small `approvals.max_wait`) is not asked in a tight loop.
pub const AWAIT_MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Why [`Client::guard`](crate::Client::guard) (or
/// [`guard_with_approval`](crate::Client::guard_with_approval)) did not run the tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The broker answered DENY; the decision carries the reasons (boxed: it is large).
    #[error("tool call denied: {0}")]
    Denied(Box<Decision>),
    /// The call waits for people to approve it: [`Client::guard`](crate::Client::guard) does not wait,
    /// and [`guard_with_approval`](crate::Client::guard_with_approval) waited as long as it was told to.
    /// The decision names the approval in [`Decision::approval_id`]: once approvers decide,
    /// [`Client::await_approval`](crate::Client::await_approval) returns the final decision (but the tool
    /// was not run, and is not run later by the SDK).
    #[error("tool call pending approval: {0}")]
    PendingApproval(Box<Decision>),
    /// The broker could not decide (or its answer could not be trusted).
    #[error(transparent)]
    Broker(#[from] Error),
}

impl GuardError {
    /// The DENY or PENDING_APPROVAL decision, if that is why the tool did not run.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Self::Denied(decision) | Self::PendingApproval(decision) => Some(decision),
            Self::Broker(_) => None,
        }
    }

    /// The approval the call waits for, if that is why the tool did not run.
    pub fn approval_id(&self) -> Option<&str> {
        match self {
            Self::PendingApproval(decision) => decision.approval_id.as_deref(),
            Self::Denied(_) | Self::Broker(_) => None,
        }
    }

    /// The broker error, if that is why the tool did not run.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Self::Denied(_) | Self::PendingApproval(_) => None,
            Self::Broker(error) => Some(error),
        }
    }
}

/// The callback of [`ApprovalWait::on_pending`].
type OnPending = Box<dyn FnOnce(&Decision) + Send>;

/// How [`Client::guard_with_approval`](crate::Client::guard_with_approval) waits when the broker
/// answers PENDING_APPROVAL.
///
/// ```
/// use std::time::Duration;
/// use broker_sdk::ApprovalWait;
/// let wait = ApprovalWait::up_to(Duration::from_secs(300)).on_pending(|decision| {
///     // Tell the user who to ask, e.g. `PENDING_APPROVAL `payments.refund` (approval apr_..): ...`
///     println!("waiting for approval: {decision}");
/// });
/// # let _ = wait;
/// ```
pub struct ApprovalWait {
    timeout: Duration,
    on_pending: Option<OnPending>,
}

impl ApprovalWait {
    /// Waits at most `timeout` (counted from the PENDING_APPROVAL answer) for approvers to decide.
    pub fn up_to(timeout: Duration) -> Self {
        Self {
            timeout,
            on_pending: None,
        }
    }

    /// Called once with the PENDING_APPROVAL decision, before waiting, so the application can show its
    /// user the [`approval_id`](Decision::approval_id) and the reasons. Not called when the first answer
    /// is final.
    pub fn on_pending(mut self, f: impl FnOnce(&Decision) + Send + 'static) -> Self {
        self.on_pending = Some(Box::new(f));
        self
    }

    /// How long to wait at most.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn into_parts(self) -> (Duration, Option<OnPending>) {
        (self.timeout, self.on_pending)
    }
}

impl fmt::Debug for ApprovalWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalWait")
            .field("timeout", &self.timeout)
            .field("on_pending", &self.on_pending.is_some())
            .finish()
    }
}
