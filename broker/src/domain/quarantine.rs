//! Automatic quarantine: configured rules that engage a SESSION or AGENT kill switch by themselves when
//! a session is denied too often, or an agent calls too fast. Windows are kept in this broker's memory,
//! so with several replicas each counts what it decided.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::killswitch::Scope;
use crate::clock::{micros_of, Micros};
use crate::config::{QuarantineRule, QuarantineScope};

/// The most windows kept; beyond it the oldest-looking are dropped (a bound on memory, not a rule).
const MAX_WINDOWS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub scope: Scope,
    pub target: String,
    pub reason: String,
    pub expires_at: Option<Micros>,
}

#[derive(Debug, Default)]
pub struct Quarantine {
    rules: Vec<QuarantineRule>,
    windows: Mutex<HashMap<(usize, String), VecDeque<Micros>>>,
}

impl Quarantine {
    pub fn new(rules: Vec<QuarantineRule>) -> Self {
        Self {
            rules,
            windows: Mutex::default(),
        }
    }

    /// Counts one decision; returns the switch to engage when a rule trips (and restarts its window).
    pub fn observe(
        &self,
        agent: &str,
        session: &str,
        denied: bool,
        now: Micros,
    ) -> Option<Trigger> {
        if self.rules.is_empty() {
            return None;
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tripped = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let (limit, what) = match (rule.denials, rule.calls) {
                (Some(n), _) if denied => (n, "denials"),
                (_, Some(n)) => (n, "calls"),
                _ => continue,
            };
            let (scope, target) = match rule.scope {
                QuarantineScope::Session => (Scope::Session, session),
                QuarantineScope::Agent => (Scope::Agent, agent),
            };
            let within = micros_of(rule.within);
            let window = windows.entry((i, target.to_owned())).or_default();
            window.push_back(now);
            while window
                .front()
                .is_some_and(|t| *t <= now.saturating_sub(within))
            {
                window.pop_front();
            }
            if window.len() >= usize::try_from(limit).unwrap_or(usize::MAX) && tripped.is_none() {
                window.clear();
                tripped = Some(Trigger {
                    scope,
                    target: target.to_owned(),
                    reason: format!(
                        "AUTO_QUARANTINE: {limit} {what} within {} ({} {target})",
                        humantime::format_duration(rule.within),
                        scope.as_str().to_lowercase()
                    ),
                    expires_at: rule.expires_after.map(|d| now.saturating_add(micros_of(d))),
                });
            }
        }
        if windows.len() > MAX_WINDOWS {
            windows.retain(|_, w| !w.is_empty());
        }
        tripped
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rule(scope: QuarantineScope, denials: Option<u32>, calls: Option<u32>) -> QuarantineRule {
        QuarantineRule {
            scope,
            denials,
            calls,
            within: Duration::from_secs(10),
            expires_after: None,
        }
    }

    #[test]
    fn denials_within_the_window_trip_once() {
        let q = Quarantine::new(vec![rule(QuarantineScope::Session, Some(3), None)]);
        assert_eq!(q.observe("a", "s1", true, 0), None);
        assert_eq!(q.observe("a", "s1", false, 1), None, "allows do not count");
        assert_eq!(q.observe("a", "s1", true, 2), None);
        let t = q.observe("a", "s1", true, 3).unwrap();
        assert_eq!((t.scope, t.target.as_str()), (Scope::Session, "s1"));
        assert!(t.reason.starts_with("AUTO_QUARANTINE"), "{}", t.reason);
        assert_eq!(
            q.observe("a", "s1", true, 4),
            None,
            "the window restarts after tripping"
        );
    }

    #[test]
    fn old_events_leave_the_window_and_sessions_count_apart() {
        let q = Quarantine::new(vec![rule(QuarantineScope::Session, Some(2), None)]);
        assert_eq!(q.observe("a", "s1", true, 0), None);
        assert_eq!(q.observe("a", "s2", true, 1), None);
        assert_eq!(
            q.observe("a", "s1", true, 10_000_001),
            None,
            "the first denial is older than 10 s"
        );
        assert!(q.observe("a", "s1", true, 10_000_002).is_some());
    }

    #[test]
    fn call_rate_trips_an_agent_switch() {
        let q = Quarantine::new(vec![rule(QuarantineScope::Agent, None, Some(3))]);
        assert_eq!(q.observe("fast", "s1", false, 0), None);
        assert_eq!(q.observe("fast", "s2", true, 1), None);
        let t = q.observe("fast", "s3", false, 2).unwrap();
        assert_eq!((t.scope, t.target.as_str()), (Scope::Agent, "fast"));
    }
}
