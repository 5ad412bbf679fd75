//! Why a guarded tool did not run.

use crate::{Decision, Error};

/// Why [`Client::guard`](crate::Client::guard) did not run the tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The broker answered DENY; the decision carries the reasons (boxed: it is large).
    #[error("tool call denied: {0}")]
    Denied(Box<Decision>),
    /// The broker could not decide (or its answer could not be trusted).
    #[error(transparent)]
    Broker(#[from] Error),
}

impl GuardError {
    /// The DENY decision, if that is why the tool did not run.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Self::Denied(decision) => Some(decision),
            Self::Broker(_) => None,
        }
    }

    /// The broker error, if that is why the tool did not run.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Self::Denied(_) => None,
            Self::Broker(error) => Some(error),
        }
    }
}
