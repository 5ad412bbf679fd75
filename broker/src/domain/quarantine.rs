//! Automatic quarantine: configured rules that engage a SESSION or AGENT kill switch by themselves when
//! a session is denied too often, an agent calls too fast, or an agent keeps naming sessions that are
//! not its own. Windows are kept in this broker's memory, so with several replicas each counts what it
//! decided.
//!
//! Who can move a window: a session's windows count only calls its owner made in it (a call naming a
//! session that does not exist or belongs to someone else feeds no session window, so nobody can get
//! another's session quarantined); an agent's windows count every call the agent made, its probing of
//! other sessions included ([`Seen::ForeignSession`], which rules with `foreign_sessions` count).
//!
//! Memory is bounded: at most [`MAX_WINDOWS`] windows and [`MAX_TIMES`] remembered call times, all rules
//! together. Past either, windows whose calls all left their rule's `within` are dropped first, then the
//! least recently moved, down to half the bound (amortised: one sweep per many calls).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::killswitch::Scope;
use crate::clock::{micros_of, Micros};
use crate::config::{QuarantineRule, QuarantineScope};

/// The most windows kept, all rules together.
pub const MAX_WINDOWS: usize = 65_536;
/// The most call times kept, all windows together (8 bytes each).
pub const MAX_TIMES: usize = 1 << 20;
/// The largest count a rule may name (`denials`, `calls`, `foreign_sessions`): a window of one rule holds
/// fewer times than this, so any window fits in the bound many times over.
pub const MAX_RULE_COUNT: u32 = 10_000;

/// What one committed decision was, as the rules count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Allowed (or waiting for approval) in the caller's own session.
    Allowed,
    /// Denied in the caller's own session.
    Denied,
    /// Denied because the session named does not exist or belongs to another agent or user.
    ForeignSession,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub scope: Scope,
    pub target: String,
    pub reason: String,
    pub expires_at: Micros,
}

#[derive(Debug, Default)]
struct Windows {
    /// Per rule (by index): target -> times of the calls counted, oldest first; never empty.
    by_rule: Vec<HashMap<String, VecDeque<Micros>>>,
    /// Times held by all windows.
    times: usize,
}

impl Windows {
    fn count(&self) -> usize {
        self.by_rule.iter().map(HashMap::len).sum()
    }
}

#[derive(Debug, Default)]
pub struct Quarantine {
    rules: Vec<QuarantineRule>,
    windows: Mutex<Windows>,
}

impl Quarantine {
    pub fn new(rules: Vec<QuarantineRule>) -> Self {
        let by_rule = rules.iter().map(|_| HashMap::new()).collect();
        Self {
            rules,
            windows: Mutex::new(Windows { by_rule, times: 0 }),
        }
    }

    /// Counts one decision of `agent` naming `session`; returns the switch to engage when a rule trips
    /// (its window then starts again).
    pub fn observe(&self, agent: &str, session: &str, seen: Seen, now: Micros) -> Option<Trigger> {
        if self.rules.is_empty() {
            return None;
        }
        let mut guard = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let w = &mut *guard;
        let mut tripped = None;
        for (rule, windows) in self.rules.iter().zip(w.by_rule.iter_mut()) {
            let Some((limit, what)) = counted(rule, seen) else {
                continue;
            };
            let (scope, target) = match rule.scope {
                QuarantineScope::Session => (Scope::Session, session),
                QuarantineScope::Agent => (Scope::Agent, agent),
            };
            let cutoff = now.saturating_sub(micros_of(rule.within));
            let window = match windows.get_mut(target) {
                Some(window) => window,
                None => windows.entry(target.to_owned()).or_default(),
            };
            let before = window.len();
            window.push_back(now);
            while window.front().is_some_and(|t| *t <= cutoff) {
                window.pop_front();
            }
            let trips = window.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
            let after = if trips { 0 } else { window.len() };
            if trips {
                windows.remove(target);
            }
            w.times = w.times.saturating_add(after).saturating_sub(before);
            if trips && tripped.is_none() {
                tripped = Some(Trigger {
                    scope,
                    target: target.to_owned(),
                    reason: format!(
                        "AUTO_QUARANTINE: {limit} {what} within {} ({} {target})",
                        humantime::format_duration(rule.within),
                        scope.as_str().to_lowercase()
                    ),
                    expires_at: now.saturating_add(micros_of(rule.expires_after)),
                });
            }
        }
        if w.times > MAX_TIMES || w.count() > MAX_WINDOWS {
            self.shrink(w, now);
        }
        tripped
    }

    /// Brings the windows to about half of each bound: first those whose calls all left their rule's
    /// `within` (they could trip nothing any more), then the least recently moved. Two passes and a
    /// selection, no sort: it runs once per many thousand calls, and with the broker's lock held.
    fn shrink(&self, w: &mut Windows, now: Micros) {
        let cutoffs: Vec<Micros> = self
            .rules
            .iter()
            .map(|r| now.saturating_sub(micros_of(r.within)))
            .collect();
        let moved = |times: &VecDeque<Micros>| times.back().copied().unwrap_or(Micros::MIN);
        let mut ages: Vec<(Micros, usize)> = Vec::new();
        for (map, cutoff) in w.by_rule.iter().zip(&cutoffs) {
            ages.extend(
                map.values()
                    .map(|t| (moved(t), t.len()))
                    .filter(|(t, _)| t > cutoff),
            );
        }
        let (max_windows, max_times) = (MAX_WINDOWS / 2, MAX_TIMES / 2);
        // Keep windows that moved after `last`, and `at_last` of those that moved last at `last`.
        let (last, mut at_last) = oldest_kept(&mut ages, max_windows, max_times);
        for (map, cutoff) in w.by_rule.iter_mut().zip(&cutoffs) {
            map.retain(|_, times| {
                let t = moved(times);
                if t <= *cutoff || t < last {
                    return false;
                }
                if t > last {
                    return true;
                }
                let stays = at_last > 0;
                at_last = at_last.saturating_sub(1);
                stays
            });
        }
        w.times = w
            .by_rule
            .iter()
            .flat_map(HashMap::values)
            .map(VecDeque::len)
            .sum();
    }

    /// How many windows and call times are kept now (for tests and diagnostics).
    pub fn size(&self) -> (usize, usize) {
        let w = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (w.count(), w.times)
    }
}

/// Of windows `(last moved, times held)`, the newest that fit in `max_windows` and `max_times`: the
/// oldest time kept and how many windows that moved then may stay. `(MIN, 0)` keeps all of them.
fn oldest_kept(
    ages: &mut [(Micros, usize)],
    max_windows: usize,
    max_times: usize,
) -> (Micros, usize) {
    let held: usize = ages.iter().map(|a| a.1).sum();
    if ages.len() <= max_windows && held <= max_times {
        return (Micros::MIN, 0);
    }
    let keep = ages.len().min(max_windows);
    let newest_first = |a: &(Micros, usize), b: &(Micros, usize)| b.0.cmp(&a.0);
    if keep > 0 {
        ages.select_nth_unstable_by(keep - 1, newest_first);
    }
    let (chosen, _) = ages.split_at_mut(keep);
    if chosen.iter().map(|a| a.1).sum::<usize>() > max_times {
        // Long windows: take them newest first until the times run out.
        chosen.sort_unstable_by(newest_first);
        let mut times = 0usize;
        let fit = chosen
            .iter()
            .take_while(|a| {
                times = times.saturating_add(a.1);
                times <= max_times
            })
            .count();
        return last_of(chosen.get(..fit).unwrap_or_default());
    }
    last_of(chosen)
}

/// The oldest time among `kept` and how many of them moved then; `(MAX, 0)` keeps nothing.
fn last_of(kept: &[(Micros, usize)]) -> (Micros, usize) {
    let last = kept.iter().map(|a| a.0).min().unwrap_or(Micros::MAX);
    (last, kept.iter().filter(|a| a.0 == last).count())
}

/// What `rule` counts of a decision seen as `seen`: its limit and the word for it, or `None`.
fn counted(rule: &QuarantineRule, seen: Seen) -> Option<(u32, &'static str)> {
    let agent = rule.scope == QuarantineScope::Agent;
    match (rule.denials, rule.calls, rule.foreign_sessions, seen) {
        // A session's windows see only its owner's calls; an agent's see all of its own.
        (_, _, _, Seen::ForeignSession) if !agent => None,
        (Some(n), _, _, Seen::Denied | Seen::ForeignSession) => Some((n, "denials")),
        (_, Some(n), _, _) => Some((n, "calls")),
        (_, _, Some(n), Seen::ForeignSession) => Some((n, "calls naming sessions not its own")),
        _ => None,
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
            foreign_sessions: None,
            within: Duration::from_secs(10),
            expires_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn denials_within_the_window_trip_once() {
        let q = Quarantine::new(vec![rule(QuarantineScope::Session, Some(3), None)]);
        assert_eq!(q.observe("a", "s1", Seen::Denied, 0), None);
        assert_eq!(
            q.observe("a", "s1", Seen::Allowed, 1),
            None,
            "allows do not count"
        );
        assert_eq!(q.observe("a", "s1", Seen::Denied, 2), None);
        let t = q.observe("a", "s1", Seen::Denied, 3).unwrap();
        assert_eq!((t.scope, t.target.as_str()), (Scope::Session, "s1"));
        assert!(t.reason.starts_with("AUTO_QUARANTINE"), "{}", t.reason);
        assert_eq!(t.expires_at, 3 + 60_000_000, "every quarantine expires");
        assert_eq!(
            q.observe("a", "s1", Seen::Denied, 4),
            None,
            "the window restarts after tripping"
        );
    }

    #[test]
    fn old_events_leave_the_window_and_sessions_count_apart() {
        let q = Quarantine::new(vec![rule(QuarantineScope::Session, Some(2), None)]);
        assert_eq!(q.observe("a", "s1", Seen::Denied, 0), None);
        assert_eq!(q.observe("a", "s2", Seen::Denied, 1), None);
        assert_eq!(
            q.observe("a", "s1", Seen::Denied, 10_000_001),
            None,
            "the first denial is older than 10 s"
        );
        assert!(q.observe("a", "s1", Seen::Denied, 10_000_002).is_some());
    }

    #[test]
    fn call_rate_trips_an_agent_switch() {
        let q = Quarantine::new(vec![rule(QuarantineScope::Agent, None, Some(3))]);
        assert_eq!(q.observe("fast", "s1", Seen::Allowed, 0), None);
        assert_eq!(q.observe("fast", "s2", Seen::Denied, 1), None);
        let t = q.observe("fast", "s3", Seen::Allowed, 2).unwrap();
        assert_eq!((t.scope, t.target.as_str()), (Scope::Agent, "fast"));
    }

    #[test]
    fn calls_naming_someone_elses_session_never_move_its_window() {
        let q = Quarantine::new(vec![
            rule(QuarantineScope::Session, Some(2), None),
            rule(QuarantineScope::Session, None, Some(2)),
        ]);
        for t in 0..100 {
            assert_eq!(
                q.observe("intruder", "victim", Seen::ForeignSession, t),
                None
            );
        }
        assert_eq!(
            q.size(),
            (0, 0),
            "nothing kept for a session not the caller's"
        );
        // The owner's own calls still count from zero.
        assert_eq!(q.observe("owner", "victim", Seen::Denied, 100), None);
        assert!(q.observe("owner", "victim", Seen::Denied, 101).is_some());
    }

    #[test]
    fn probing_other_sessions_counts_against_the_prober() {
        let mut probing = rule(QuarantineScope::Agent, None, None);
        probing.foreign_sessions = Some(3);
        let q = Quarantine::new(vec![probing, rule(QuarantineScope::Agent, Some(5), None)]);
        assert_eq!(
            q.observe("a", "s1", Seen::Denied, 0),
            None,
            "its own denials are not probing"
        );
        assert_eq!(q.observe("a", "x1", Seen::ForeignSession, 1), None);
        assert_eq!(q.observe("a", "x2", Seen::ForeignSession, 2), None);
        let t = q.observe("a", "x3", Seen::ForeignSession, 3).unwrap();
        assert_eq!((t.scope, t.target.as_str()), (Scope::Agent, "a"));
        assert!(t.reason.contains("sessions not its own"), "{}", t.reason);
        // An agent's denials rule counts the probes as denials too: 1 own + 3 probes + 1.
        assert!(q.observe("a", "x4", Seen::ForeignSession, 4).is_some());
    }

    #[test]
    fn a_million_distinct_sessions_keep_memory_bounded() {
        let q = Quarantine::new(vec![
            rule(QuarantineScope::Session, Some(10), None),
            rule(QuarantineScope::Agent, Some(10_000), None),
        ]);
        let mut session = String::new();
        let mut trips = 0;
        for i in 0..1_000_000u32 {
            session.clear();
            std::fmt::Write::write_fmt(&mut session, format_args!("ses_{i:032x}")).unwrap();
            // All within `within` (a microsecond per 64 calls): none expired, so the least recently moved go.
            if q.observe("a", &session, Seen::Denied, i64::from(i / 64))
                .is_some()
            {
                trips += 1;
            }
            if i % 1_024 == 0 {
                let (windows, times) = q.size();
                assert!(
                    windows <= MAX_WINDOWS && times <= MAX_TIMES,
                    "{i}: {windows} windows, {times} times"
                );
            }
        }
        let (windows, times) = q.size();
        assert!(
            windows <= MAX_WINDOWS && times <= MAX_TIMES,
            "{windows} windows, {times} times"
        );
        assert_eq!(
            trips, 100,
            "the agent's busy window is never the one dropped"
        );
        // Distinct sessions over a long time: windows whose calls left `within` go first.
        let q = Quarantine::new(vec![rule(QuarantineScope::Session, Some(2), None)]);
        for i in 0..100_000u32 {
            session.clear();
            std::fmt::Write::write_fmt(&mut session, format_args!("ses_{i:032x}")).unwrap();
            q.observe("a", &session, Seen::Denied, i64::from(i) * 1_000);
        }
        assert!(q.size().0 <= MAX_WINDOWS);
        assert!(
            q.observe("a", &session, Seen::Denied, 100_000_000)
                .is_some(),
            "a window still inside `within` outlives the sweeps of idle ones"
        );
    }
}
