//! Time is injected: expiry and timestamps read a [`Clock`], so tests move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Microseconds since the Unix epoch, UTC. Stored as-is in both databases.
pub type Micros = i64;

/// A duration in micros, saturating (a lifetime too long to count is "forever", not an overflow).
pub fn micros_of(d: std::time::Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_micros(&self) -> Micros;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> Micros {
        chrono::Utc::now().timestamp_micros()
    }
}

/// A clock that only moves when told to; starts at the wall clock's time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(SystemClock.now_micros())))
    }
}

impl ManualClock {
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(micros_of(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shared handle to the broker's clock.
pub type SharedClock = Arc<dyn Clock>;

/// Formats micros as RFC 3339 for people (CLI, logs).
pub fn rfc3339(micros: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| micros.to_string())
}
