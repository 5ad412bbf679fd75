//! Two sizes: FAST (the default, what CI runs) and LONG (`FAULTS_LONG=1`, run by hand; see README).

use std::time::Duration;

/// The environment variable that selects the long run.
pub const LONG_ENV: &str = "FAULTS_LONG";

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub name: &'static str,
    /// How long Postgres stays stopped, frozen, locked or revoked.
    pub outage: Duration,
    /// Clients of the steady load, each with its own connection and session.
    pub clients: usize,
    pub sigkill_rounds: usize,
    /// Cancelled RPCs the cancellation scenario aims at...
    pub cancellations: usize,
    /// ...within this time (a slow machine gets fewer; the scenario needs a tenth of the aim).
    pub cancellations_within: Duration,
    /// How long the overload lasts.
    pub overload_for: Duration,
    /// How long the load runs with fail points firing at random.
    pub failpoint_load_for: Duration,
}

pub fn sizes() -> Sizes {
    let long = std::env::var(LONG_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    if long {
        Sizes {
            name: "LONG",
            outage: Duration::from_secs(10),
            clients: 8,
            sigkill_rounds: 40,
            cancellations: 20_000,
            cancellations_within: Duration::from_secs(900),
            overload_for: Duration::from_secs(20),
            failpoint_load_for: Duration::from_secs(20),
        }
    } else {
        Sizes {
            name: "FAST",
            outage: Duration::from_millis(2500),
            clients: 8,
            sigkill_rounds: 4,
            cancellations: 3_000,
            cancellations_within: Duration::from_secs(25),
            overload_for: Duration::from_secs(3),
            failpoint_load_for: Duration::from_secs(3),
        }
    }
}
