//! Admission: how much of the broker one caller, and one class of caller, may hold at once.
//!
//! Decided after authentication (the caller is the verified token's `sub` within its tenant) and before
//! the handler reads the message, so a shed call costs a counter and a map lookup, and is answered
//! RESOURCE_EXHAUSTED (`OVERLOADED`) before any decision: nothing is allowed, nothing is recorded.
//!
//! - Lanes: admins' and approvers' kill-switch and approval calls ([`Lane::Operators`]) may use the
//!   whole capacity, `limits.max_in_flight + limits.operator_reserve`; everything else
//!   ([`Lane::General`]: agents, auditors, health) at most `limits.max_in_flight`. So agents' load,
//!   however it is spread over identities, always leaves the reserve to the people who stop agents.
//! - Per caller: at most `limits.max_in_flight_per_caller` calls in flight, of which at most
//!   `limits.max_waits_per_caller` long waits (`AwaitApproval`, `WatchApprovals`,
//!   `WatchKillSwitches`). A wait holds its places for as long as it is open, a stream until it ends.
//! - Memory: a caller has an entry only while it holds a place (removed when its last one is
//!   released), so the table never holds more entries than there are calls admitted, which both lanes
//!   bound. Callers are strings chosen by whoever holds a valid token; none is kept after its calls.
//!
//! The cost per call: a compare-and-swap on the lane's counter, one keyed hash of the caller, and a
//! short lock of one of [`SHARDS`] shards of the caller table on admission and on release (never held
//! across an await); a caller already present allocates nothing.
//!
//! [`layer`] applies this to the server's services, and the front limit before authentication.

pub mod layer;

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::{Principal, Role};
use crate::config::Limits;

/// Shards of the caller table: callers on different shards never wait for each other's lock.
pub const SHARDS: usize = 16;

/// Which budget a call is admitted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Kill-switch and approval calls from admins and approvers.
    Operators,
    /// Everything else.
    General,
}

impl Lane {
    /// The lane of a call to a service: operators' only when the service is one of theirs (kill switches,
    /// approvals) *and* the token holds an operator role, so an agent cannot borrow the reserve by
    /// calling an operator's RPC (it would be refused there anyway).
    pub fn of(caller: &Principal, operator_service: bool) -> Lane {
        if operator_service && (caller.has_role(Role::Admin) || caller.has_role(Role::Approver)) {
            Lane::Operators
        } else {
            Lane::General
        }
    }
}

/// How long a call holds its places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Until its answer is ready.
    Call,
    /// A long wait (`AwaitApproval`, a watch stream): until it ends, and within the caller's wait bound.
    Wait,
}

/// Why a call was shed. Each names the limit, so an operator knows which one to raise.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this caller already has {0} calls in flight, its share (`limits.max_in_flight_per_caller`); nothing was allowed, retry later")]
    CallerInFlight(usize),
    #[error("this caller already has {0} long waits open (AwaitApproval, watch streams; `limits.max_waits_per_caller`); nothing was allowed, retry later")]
    CallerWaits(usize),
    #[error("the broker is overloaded: {0} calls in flight (`limits.max_in_flight`); nothing was allowed, retry later")]
    General(usize),
    #[error("the broker is overloaded: {0} operator calls in flight (`limits.max_in_flight` + `limits.operator_reserve`); nothing was allowed, retry later")]
    Operators(usize),
    #[error("the broker is overloaded: {0} requests in flight (`limits.max_in_flight` + `limits.operator_reserve`); nothing was allowed, retry later")]
    Total(usize),
}

impl Refusal {
    /// The configuration key of the limit that was reached (sent as `ErrorInfo` metadata `limit`).
    pub fn limit(&self) -> &'static str {
        match self {
            Refusal::CallerInFlight(_) => "limits.max_in_flight_per_caller",
            Refusal::CallerWaits(_) => "limits.max_waits_per_caller",
            Refusal::General(_) | Refusal::Total(_) => "limits.max_in_flight",
            Refusal::Operators(_) => "limits.operator_reserve",
        }
    }
}

/// A counter with a capacity: the lanes and the front limit.
#[derive(Debug)]
pub struct Gate {
    held: AtomicUsize,
    capacity: usize,
}

impl Gate {
    pub fn new(capacity: usize) -> Arc<Gate> {
        Arc::new(Gate {
            held: AtomicUsize::new(0),
            capacity,
        })
    }

    /// A place, if one is free; released when the ticket drops.
    pub fn try_enter(self: &Arc<Self>) -> Option<Ticket> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Ticket { gate: self.clone() })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// One place in a [`Gate`].
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A caller's entry: who (the token's subject within its tenant; the same `sub` in two tenants is two
/// callers) and what it holds.
#[derive(Debug)]
struct Entry {
    tenant: Option<Box<str>>,
    subject: Box<str>,
    in_flight: usize,
    waits: usize,
}

impl Entry {
    fn is(&self, tenant: Option<&str>, subject: &str) -> bool {
        self.tenant.as_deref() == tenant && &*self.subject == subject
    }
}

/// The table is keyed by the caller's keyed hash (SipHash, computed once per call): the map does not
/// hash again, and a call of a caller already present allocates nothing.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here (`write_u64`); fold anything else rather than drop it.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Table = HashMap<u64, Entry, BuildHasherDefault<Prehashed>>;

#[derive(Debug)]
struct Callers {
    shards: Vec<Mutex<Table>>,
    /// Random per process, so a caller can neither choose names that land on one shard nor collide.
    hasher: RandomState,
    max_in_flight: usize,
    max_waits: usize,
}

impl Callers {
    fn shard(&self, i: usize) -> Option<MutexGuard<'_, Table>> {
        // Nothing panics while a shard is locked, so a poisoned lock still holds consistent counts.
        self.shards
            .get(i)
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn admit(
        self: &Arc<Self>,
        tenant: Option<&str>,
        subject: &str,
        kind: Kind,
    ) -> Result<CallerPlace, Refusal> {
        let hash = self.hasher.hash_one((tenant, subject));
        // Bits the map's own bucket index and tag (the low and the top ones) do not use.
        let shard = usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0);
        // Fails closed: a shard that does not exist (it always does) admits nobody.
        let mut table = self
            .shard(shard)
            .ok_or(Refusal::CallerInFlight(self.max_in_flight))?;
        let wait = kind == Kind::Wait;
        match table.entry(hash) {
            MapEntry::Occupied(mut e) => {
                let held = e.get_mut();
                // Two callers with one 64-bit keyed hash: never seen in practice; fail closed.
                if !held.is(tenant, subject) {
                    return Err(Refusal::CallerInFlight(held.in_flight));
                }
                if held.in_flight >= self.max_in_flight {
                    return Err(Refusal::CallerInFlight(held.in_flight));
                }
                if wait && held.waits >= self.max_waits {
                    return Err(Refusal::CallerWaits(held.waits));
                }
                held.in_flight += 1;
                held.waits += usize::from(wait);
            }
            MapEntry::Vacant(v) => {
                // Both bounds are positive (`Config::validate`); a zero one admits nobody.
                if self.max_in_flight == 0 {
                    return Err(Refusal::CallerInFlight(0));
                }
                if wait && self.max_waits == 0 {
                    return Err(Refusal::CallerWaits(0));
                }
                v.insert(Entry {
                    tenant: tenant.map(Box::from),
                    subject: Box::from(subject),
                    in_flight: 1,
                    waits: usize::from(wait),
                });
            }
        }
        drop(table);
        Ok(CallerPlace {
            callers: self.clone(),
            shard,
            hash,
            wait,
        })
    }

    fn release(&self, shard: usize, hash: u64, wait: bool) {
        let Some(mut table) = self.shard(shard) else {
            return;
        };
        if let MapEntry::Occupied(mut e) = table.entry(hash) {
            let held = e.get_mut();
            held.in_flight = held.in_flight.saturating_sub(1);
            if wait {
                held.waits = held.waits.saturating_sub(1);
            }
            // Idle: forget the caller, so the table holds only callers with calls admitted.
            if held.in_flight == 0 {
                e.remove();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        (0..SHARDS)
            .filter_map(|i| self.shard(i))
            .map(|t| t.len())
            .sum()
    }
}

/// A caller's place (its entry is the one with this hash, which admission checked is this caller's);
/// released when dropped.
#[derive(Debug)]
struct CallerPlace {
    callers: Arc<Callers>,
    shard: usize,
    hash: u64,
    wait: bool,
}

impl Drop for CallerPlace {
    fn drop(&mut self) {
        self.callers.release(self.shard, self.hash, self.wait);
    }
}

/// An admitted call: holds its places (lane and caller) until dropped.
#[derive(Debug)]
pub struct Admitted {
    _lane: Ticket,
    _caller: Option<CallerPlace>,
}

/// The broker's admission state, shared by every service (cheap to clone).
#[derive(Clone, Debug)]
pub struct Admission {
    operators: Arc<Gate>,
    general: Arc<Gate>,
    callers: Arc<Callers>,
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Self {
            operators: Gate::new(total(limits)),
            general: Gate::new(limits.max_in_flight),
            callers: Arc::new(Callers {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                max_in_flight: limits.max_in_flight_per_caller,
                max_waits: limits.max_waits_per_caller,
            }),
        }
    }

    /// Admits a call of `caller` (none: an unauthenticated service such as health) in `lane`, or says
    /// which limit it reached. The caller's own bounds are checked first, so a caller that floods is
    /// told it is its own share that is full.
    pub fn admit(
        &self,
        caller: Option<&Principal>,
        lane: Lane,
        kind: Kind,
    ) -> Result<Admitted, Refusal> {
        let place = caller
            .map(|p| self.callers.admit(p.tenant.as_deref(), &p.subject, kind))
            .transpose()?;
        let gate = match lane {
            Lane::Operators => &self.operators,
            Lane::General => &self.general,
        };
        let ticket = gate.try_enter().ok_or_else(|| match lane {
            Lane::Operators => Refusal::Operators(gate.capacity()),
            Lane::General => Refusal::General(gate.capacity()),
        })?;
        Ok(Admitted {
            _lane: ticket,
            _caller: place,
        })
    }
}

/// Everything in flight at once, before authentication: the general lane plus the operators' reserve.
pub fn total(limits: &Limits) -> usize {
    limits.max_in_flight.saturating_add(limits.operator_reserve)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn limits(in_flight: usize, reserve: usize, per_caller: usize, waits: usize) -> Limits {
        Limits {
            max_in_flight: in_flight,
            operator_reserve: reserve,
            max_in_flight_per_caller: per_caller,
            max_waits_per_caller: waits,
            ..Limits::default()
        }
    }

    fn principal(sub: &str, tenant: Option<&str>, roles: &[Role]) -> Principal {
        Principal {
            subject: sub.to_owned(),
            person: Some(sub.to_owned()),
            user: None,
            tenant: tenant.map(str::to_owned),
            groups: BTreeSet::new(),
            roles: roles.iter().copied().collect(),
            token_id: None,
            expires_at: 0,
        }
    }

    fn agent(sub: &str) -> Principal {
        principal(sub, None, &[Role::Agent])
    }

    #[test]
    fn one_caller_gets_its_share_and_no_more() {
        let a = Admission::new(&limits(100, 10, 3, 2));
        let (x, y) = (agent("x"), agent("y"));
        let held: Vec<Admitted> = (0..3)
            .map(|_| a.admit(Some(&x), Lane::General, Kind::Call).unwrap())
            .collect();
        assert_eq!(
            a.admit(Some(&x), Lane::General, Kind::Call).unwrap_err(),
            Refusal::CallerInFlight(3)
        );
        // Another caller is not affected, and a place freed is a place again.
        assert!(a.admit(Some(&y), Lane::General, Kind::Call).is_ok());
        drop(held);
        assert!(a.admit(Some(&x), Lane::General, Kind::Call).is_ok());
    }

    #[test]
    fn waits_have_their_own_bound_inside_the_callers_share() {
        let a = Admission::new(&limits(100, 10, 4, 2));
        let x = agent("x");
        let waits: Vec<Admitted> = (0..2)
            .map(|_| a.admit(Some(&x), Lane::General, Kind::Wait).unwrap())
            .collect();
        let refused = a.admit(Some(&x), Lane::General, Kind::Wait).unwrap_err();
        assert_eq!(refused, Refusal::CallerWaits(2));
        assert_eq!(refused.limit(), "limits.max_waits_per_caller");
        // Short calls still go through, up to the share that the waits are part of.
        let calls: Vec<Admitted> = (0..2)
            .map(|_| a.admit(Some(&x), Lane::General, Kind::Call).unwrap())
            .collect();
        assert_eq!(
            a.admit(Some(&x), Lane::General, Kind::Call).unwrap_err(),
            Refusal::CallerInFlight(4)
        );
        drop(calls);
        drop(waits);
        assert!(a.admit(Some(&x), Lane::General, Kind::Wait).is_ok());
    }

    #[test]
    fn the_same_subject_in_another_tenant_is_another_caller() {
        let a = Admission::new(&limits(100, 10, 1, 1));
        let acme = principal("bot", Some("acme"), &[Role::Agent]);
        let globex = principal("bot", Some("globex"), &[Role::Agent]);
        let _held = a.admit(Some(&acme), Lane::General, Kind::Call).unwrap();
        assert!(a.admit(Some(&acme), Lane::General, Kind::Call).is_err());
        assert!(a.admit(Some(&globex), Lane::General, Kind::Call).is_ok());
        assert!(a
            .admit(Some(&agent("bot")), Lane::General, Kind::Call)
            .is_ok());
    }

    #[test]
    fn agents_together_never_take_the_operators_reserve() {
        let a = Admission::new(&limits(4, 2, 100, 100));
        let agents: Vec<Admitted> = (0..4)
            .map(|i| {
                a.admit(Some(&agent(&format!("a{i}"))), Lane::General, Kind::Wait)
                    .unwrap()
            })
            .collect();
        let refused = a
            .admit(Some(&agent("a9")), Lane::General, Kind::Call)
            .unwrap_err();
        assert_eq!(
            (refused.clone(), refused.limit()),
            (Refusal::General(4), "limits.max_in_flight")
        );
        // Health and other unauthenticated services share the general lane.
        assert!(a.admit(None, Lane::General, Kind::Call).is_err());
        let admin = principal("ops", None, &[Role::Admin]);
        let ops: Vec<Admitted> = (0..6)
            .map(|_| a.admit(Some(&admin), Lane::Operators, Kind::Call).unwrap())
            .collect();
        assert_eq!(
            a.admit(Some(&admin), Lane::Operators, Kind::Call)
                .unwrap_err(),
            Refusal::Operators(6)
        );
        drop((agents, ops));
    }

    #[test]
    fn only_operators_calling_operator_services_use_the_operators_lane() {
        let admin = principal("ops", None, &[Role::Admin]);
        let approver = principal("bob", None, &[Role::Approver]);
        let auditor = principal("sec", None, &[Role::Auditor]);
        assert_eq!(Lane::of(&admin, true), Lane::Operators);
        assert_eq!(Lane::of(&approver, true), Lane::Operators);
        assert_eq!(Lane::of(&agent("x"), true), Lane::General);
        assert_eq!(Lane::of(&auditor, true), Lane::General);
        assert_eq!(Lane::of(&admin, false), Lane::General);
    }

    #[test]
    fn a_caller_is_forgotten_when_its_last_call_ends() {
        let a = Admission::new(&limits(10_000, 10, 2, 1));
        // Many distinct names, as an attacker with a token factory would send: none is kept after.
        let held: Vec<Admitted> = (0..1000)
            .map(|i| {
                a.admit(
                    Some(&agent(&format!("agent-{i}"))),
                    Lane::General,
                    Kind::Call,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(a.callers.len(), 1000);
        drop(held);
        assert_eq!(a.callers.len(), 0);
        // Refused calls leave nothing behind either.
        let x = agent("x");
        let w = a.admit(Some(&x), Lane::General, Kind::Wait).unwrap();
        assert!(a.admit(Some(&x), Lane::General, Kind::Wait).is_err());
        drop(w);
        assert_eq!((a.callers.len(), a.general.held()), (0, 0));
        let full = Admission::new(&limits(1, 1, 5, 5));
        let _only = full.admit(None, Lane::General, Kind::Call).unwrap();
        assert!(full.admit(Some(&x), Lane::General, Kind::Call).is_err());
        assert_eq!(full.callers.len(), 0);
    }

    #[test]
    fn concurrent_admissions_never_exceed_a_bound() {
        let a = Admission::new(&limits(10_000, 10, 8, 8));
        let x = agent("x");
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        // Four threads each try to hold three places at once: twelve wanted, eight allowed.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        let held: Vec<Admitted> = (0..3)
                            .filter_map(|_| a.admit(Some(&x), Lane::General, Kind::Call).ok())
                            .collect();
                        let n = now.fetch_add(held.len(), Ordering::SeqCst) + held.len();
                        peak.fetch_max(n, Ordering::SeqCst);
                        now.fetch_sub(held.len(), Ordering::SeqCst);
                        drop(held);
                    }
                });
            }
        });
        assert!(peak.load(Ordering::SeqCst) <= 8, "{peak:?}");
        assert_eq!((a.callers.len(), a.general.held()), (0, 0));
    }

    #[test]
    fn two_callers_with_one_hash_are_refused_not_merged() {
        let a = Admission::new(&limits(100, 10, 5, 5));
        let hash = a.callers.hasher.hash_one((None::<&str>, "x"));
        let shard = usize::try_from((hash >> 32) % SHARDS as u64).unwrap();
        a.callers.shard(shard).unwrap().insert(
            hash,
            Entry {
                tenant: None,
                subject: "y".into(),
                in_flight: 1,
                waits: 0,
            },
        );
        assert_eq!(
            a.admit(Some(&agent("x")), Lane::General, Kind::Call)
                .unwrap_err(),
            Refusal::CallerInFlight(1)
        );
    }

    #[test]
    fn a_gate_counts_its_tickets() {
        let g = Gate::new(2);
        let t1 = g.try_enter().unwrap();
        let _t2 = g.try_enter().unwrap();
        assert!(g.try_enter().is_none());
        drop(t1);
        assert_eq!(g.held(), 1);
        assert!(g.try_enter().is_some());
    }
}
