//! The figures a database fault reports, computed from what the clients saw and the fault's timeline.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::load::{by_label, ms, Observation};

/// When the fault was injected and lifted.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Just before the fault was injected.
    pub injecting: Instant,
    /// Once it is in effect (e.g. `pg_ctl stop` returned).
    pub injected: Instant,
    /// Just before it was lifted.
    pub lifting: Instant,
    /// Once the database is back (e.g. `pg_ctl start` returned: it accepts connections).
    pub lifted: Instant,
}

#[derive(Debug)]
pub struct OutageFigures {
    pub sent: usize,
    pub allows: usize,
    /// ALLOWs to calls sent after the fault was in effect and answered before it was lifted (must be 0).
    pub allows_during: usize,
    /// Calls sent between injecting and lifted.
    pub sent_during: usize,
    /// Every answer, by outcome or error.
    pub all_answers: BTreeMap<String, usize>,
    /// Answers to the calls sent during the outage.
    pub answers: BTreeMap<String, usize>,
    /// The slowest answer to a call sent between injecting and lifted.
    pub longest_during: Duration,
    /// From the database being back to the first ALLOW.
    pub back_to_first_allow: Option<Duration>,
}

impl OutageFigures {
    pub fn new(observations: &[Observation], t: Timeline) -> Self {
        let during: Vec<&Observation> = observations
            .iter()
            .filter(|o| o.sent >= t.injecting && o.sent <= t.lifted)
            .collect();
        OutageFigures {
            sent: observations.len(),
            allows: observations.iter().filter(|o| o.seen.is_allow()).count(),
            allows_during: observations
                .iter()
                .filter(|o| o.seen.is_allow() && o.sent >= t.injected && o.answered <= t.lifting)
                .count(),
            sent_during: during.len(),
            all_answers: by_label(observations),
            answers: by_label(during.iter().copied()),
            longest_during: during.iter().map(|o| o.latency()).max().unwrap_or_default(),
            back_to_first_allow: observations
                .iter()
                .filter(|o| o.seen.is_allow() && o.answered >= t.lifted)
                .map(|o| o.answered - t.lifted)
                .min(),
        }
    }
}

impl fmt::Display for OutageFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests sent {}, ALLOWs seen {}, answers {:?}; during the outage: {} sent, {} ALLOWs, \
             answers {:?}, longest answer {}; database back -> first ALLOW {}",
            self.sent,
            self.allows,
            self.all_answers,
            self.sent_during,
            self.allows_during,
            self.answers,
            ms(self.longest_during),
            self.back_to_first_allow.map_or("none".into(), ms),
        )
    }
}
