//! The switchboard keeps this broker's view of the kill switches current: it reads them at start (before
//! the broker serves), then again whenever Postgres announces a change (NOTIFY), on a short poll as a
//! fallback, and at once after a change made through this broker. Decisions read its snapshot; watchers
//! get each change. If the database stops answering, the snapshot ages until every scope counts as killed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};

use super::killswitch::{KillSwitch, Snapshot};
use crate::clock::SharedClock;
use crate::store::{self, Store};

/// Who releases switches that expire.
pub const EXPIRY_ACTOR: &str = "broker";
pub const EXPIRY_REASON: &str = "expired";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Engaged,
    Released,
    Expired,
}

#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub switch: KillSwitch,
}

#[derive(Clone)]
pub struct Switchboard {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    local: Arc<watch::Sender<Arc<Snapshot>>>,
    changes: broadcast::Sender<Change>,
    poke: Arc<Notify>,
    stale_after: Duration,
    /// Changes made here that a refresh may not see yet: a refresh whose read began before their commit
    /// must neither drop a switch just engaged here (that would fail open) nor revive one just released.
    made_here: Arc<Mutex<MadeHere>>,
}

#[derive(Default)]
struct MadeHere {
    /// Engaged here, not yet seen in a read of the active switches.
    engaged: HashMap<String, KillSwitch>,
    /// Released here, still seen in a read of the active switches.
    released: HashSet<String>,
}

impl Switchboard {
    /// Reads the switches once (failing if the database cannot say), then keeps them current in the
    /// background until the returned switchboard and all its clones are dropped... or forever, as the
    /// broker runs.
    pub async fn start(
        store: Store,
        clock: SharedClock,
        poll: Duration,
        stale_after: Duration,
    ) -> Result<Self, store::Error> {
        let first = store.active_kill_switches(clock.now_micros()).await?;
        let (tx, rx) = watch::channel(Arc::new(Snapshot::loaded(first)));
        let (changes, _) = broadcast::channel(1024);
        let board = Self {
            snapshot: rx,
            local: Arc::new(tx),
            changes,
            poke: Arc::new(Notify::new()),
            stale_after,
            made_here: Arc::default(),
        };
        tokio::spawn(board.clone().refresh_forever(store, clock, poll));
        Ok(board)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A switch engaged through this broker: enforce it here at once, then re-read.
    pub fn engaged_here(&self, switch: KillSwitch) {
        {
            // Under the lock a refresh publishes under too: its snapshot either holds this switch or
            // is published before it, never after without it.
            let mut made = self.made_here();
            made.engaged.insert(switch.id.clone(), switch.clone());
            self.local.send_modify(|s| {
                let mut next = (**s).clone();
                next.switches.push(switch);
                *s = Arc::new(next);
            });
        }
        self.poke.notify_one();
    }

    /// A switch released through this broker: stop enforcing it here at once, then re-read.
    pub fn released_here(&self, id: &str) {
        {
            let mut made = self.made_here();
            made.engaged.remove(id);
            made.released.insert(id.to_owned());
            self.local.send_modify(|s| {
                let mut next = (**s).clone();
                next.switches.retain(|k| k.id != id);
                *s = Arc::new(next);
            });
        }
        self.poke.notify_one();
    }

    /// The record is a plain map and set: a panic elsewhere cannot leave it half-updated.
    fn made_here(&self) -> std::sync::MutexGuard<'_, MadeHere> {
        self.made_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn refresh_forever(self, store: Store, clock: SharedClock, poll: Duration) {
        let mut listener = None;
        let mut last_error_logged: Option<std::time::Instant> = None;
        let mut known: HashMap<String, KillSwitch> = self
            .snapshot()
            .switches
            .iter()
            .map(|k| (k.id.clone(), k.clone()))
            .collect();
        loop {
            if listener.is_none() {
                listener = store.kill_switch_listener().await.ok().flatten();
            }
            let heard = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = heard => if r.is_err() { listener = None },
                () = tokio::time::sleep(poll) => {},
                () = self.poke.notified() => {},
            }
            // Bounded: a database that stops answering must not wedge the refresher past the staleness bound.
            let refreshed =
                tokio::time::timeout(self.stale_after, self.refresh(&store, &clock, &mut known))
                    .await
                    .unwrap_or_else(|_| {
                        Err(store::Error::new(
                            store::ErrorKind::Timeout,
                            "kill switch refresh timed out",
                        ))
                    });
            match refreshed {
                Ok(()) => last_error_logged = None,
                Err(e) => {
                    // Logged once per stale period: the snapshot ages, and decisions fail closed.
                    if last_error_logged.is_none_or(|t| t.elapsed() > self.stale_after) {
                        tracing::warn!(error = %e, "cannot read kill switches; every scope counts as killed once the view is older than {:?}", self.stale_after);
                        last_error_logged = Some(std::time::Instant::now());
                    }
                }
            }
        }
    }

    async fn refresh(
        &self,
        store: &Store,
        clock: &SharedClock,
        known: &mut HashMap<String, KillSwitch>,
    ) -> Result<(), store::Error> {
        let now = clock.now_micros();
        store.expire_kill_switches(now).await?;
        let mut active = store.active_kill_switches(now).await?;
        // Switches engaged here but missing from this read: still engaged unless the store says they ended
        // (released elsewhere, or expired) — otherwise the read began before their commit.
        let unseen: Vec<String> = {
            let made = self.made_here();
            made.engaged
                .keys()
                .filter(|id| !active.iter().any(|k| &k.id == *id))
                .cloned()
                .collect()
        };
        let mut ended = HashSet::new();
        for id in unseen {
            if store
                .kill_switch(&id)
                .await?
                .is_some_and(|k| !k.is_active(now))
            {
                ended.insert(id);
            }
        }
        {
            let mut made = self.made_here();
            made.engaged
                .retain(|id, _| !ended.contains(id) && !active.iter().any(|k| &k.id == id));
            made.released
                .retain(|id| active.iter().any(|k| &k.id == id));
            active.retain(|k| !made.released.contains(&k.id));
            active.extend(made.engaged.values().cloned());
        }
        let ids: std::collections::HashSet<&str> = active.iter().map(|k| k.id.as_str()).collect();
        for k in &active {
            if !known.contains_key(&k.id) {
                let _ = self.changes.send(Change {
                    kind: ChangeKind::Engaged,
                    switch: k.clone(),
                });
            }
        }
        let gone: Vec<String> = known
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            let ended = store.kill_switch(&id).await?;
            if let Some(switch) = ended.or_else(|| known.get(&id).cloned()) {
                let expired = switch
                    .released
                    .as_ref()
                    .is_none_or(|r| r.by == EXPIRY_ACTOR && r.reason == EXPIRY_REASON);
                let kind = if expired {
                    ChangeKind::Expired
                } else {
                    ChangeKind::Released
                };
                let _ = self.changes.send(Change { kind, switch });
            }
        }
        *known = active.iter().map(|k| (k.id.clone(), k.clone())).collect();
        // Published under the lock, with what was engaged or released here since the merge above
        // (while this refresh awaited the store): a switch engaged meanwhile is never dropped, which
        // would let calls through it until the next refresh.
        let made = self.made_here();
        active.retain(|k| !made.released.contains(&k.id));
        for (id, k) in &made.engaged {
            if !active.iter().any(|a| &a.id == id) {
                active.push(k.clone());
            }
        }
        self.local.send_replace(Arc::new(Snapshot::loaded(active)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::domain::killswitch::{Release, Scope};
    use crate::store::testing::TestDb;
    use crate::store::Backend;

    fn switch(id: &str) -> KillSwitch {
        KillSwitch {
            id: id.to_owned(),
            scope: Scope::Agent,
            target: "agent-1".to_owned(),
            reason: "test".to_owned(),
            engaged_by: "admin".to_owned(),
            engaged_at: SystemClock.now_micros(),
            expires_at: None,
            released: None,
        }
    }

    fn ids(board: &Switchboard) -> Vec<String> {
        board
            .snapshot()
            .switches
            .iter()
            .map(|k| k.id.clone())
            .collect()
    }

    /// Waits (bounded) until the refresher has made `cond` true.
    async fn eventually(board: &Switchboard, cond: impl Fn(&Switchboard) -> bool) {
        for _ in 0..250 {
            if cond(board) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the switchboard never got there: {:?}", ids(board));
    }

    /// A refresh whose read began before a change made here committed must not undo that change.
    #[tokio::test]
    async fn a_refresh_that_read_too_early_keeps_changes_made_here() {
        let db = TestDb::new(Backend::Sqlite).await.unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let poll = Duration::from_millis(20);
        let board = Switchboard::start(db.store().clone(), clock, poll, Duration::from_secs(5))
            .await
            .unwrap();
        // Engaged here, not (yet) in what the refresher reads: it keeps holding.
        board.engaged_here(switch("ksw_early"));
        tokio::time::sleep(poll * 5).await;
        assert_eq!(ids(&board), vec!["ksw_early".to_owned()]);

        // Stored and active, then released here before the store says so: it stays released here.
        let stored = switch("ksw_stored");
        let event = crate::domain::audit::EventBody::for_kill_switch(
            crate::domain::audit::EventKind::KillSwitchEngaged,
            &stored,
            "admin",
            stored.engaged_at,
        );
        db.store().engage_kill_switch(&stored, event).await.unwrap();
        eventually(&board, |b| ids(b).contains(&"ksw_stored".to_owned())).await;
        board.released_here("ksw_stored");
        // Several refreshes read it active meanwhile; none revives it.
        tokio::time::sleep(poll * 5).await;
        assert!(!ids(&board).contains(&"ksw_stored".to_owned()));
        assert!(board.made_here().released.contains("ksw_stored"));

        // Once the store records the release, the record of it here is dropped.
        let release = Release {
            by: "admin".to_owned(),
            at: SystemClock.now_micros(),
            reason: "done".to_owned(),
        };
        db.store()
            .release_kill_switch("ksw_stored", &release, SystemClock.now_micros())
            .await
            .unwrap();
        eventually(&board, |b| b.made_here().released.is_empty()).await;
        assert_eq!(ids(&board), vec!["ksw_early".to_owned()]);
    }
}
