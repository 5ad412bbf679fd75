//! The switchboard keeps this broker's view of the kill switches current: it reads them at start (before
//! the broker serves), then again whenever Postgres announces a change (NOTIFY), on a short poll as a
//! fallback, and at once after a change made through this broker. Decisions read its snapshot; watchers
//! get each change. If the database stops answering, the snapshot ages until every scope counts as killed.

use std::collections::HashMap;
use std::sync::Arc;
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
        self.local.send_modify(|s| {
            let mut next = (**s).clone();
            next.switches.push(switch);
            *s = Arc::new(next);
        });
        self.poke.notify_one();
    }

    /// A switch released through this broker: stop enforcing it here at once, then re-read.
    pub fn released_here(&self, id: &str) {
        self.local.send_modify(|s| {
            let mut next = (**s).clone();
            next.switches.retain(|k| k.id != id);
            *s = Arc::new(next);
        });
        self.poke.notify_one();
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
        let active = store.active_kill_switches(now).await?;
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
        self.local.send_replace(Arc::new(Snapshot::loaded(active)));
        Ok(())
    }
}
