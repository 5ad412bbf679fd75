//! The checkpointer: a background task that signs the chain head soon after it moves, and once more at a
//! clean shutdown.
//!
//! Where heads come from: this broker's audit writer publishes the head each of its commits leaves on a
//! watch channel ([`Store::committed_heads`]); the writer only replaces the channel's value, so a slow
//! checkpoint file never slows a decision. Heads other brokers sharing the database committed are found by
//! reading the chain head through the store every `poll_interval`. A head that moved is signed `every`
//! after the previous checkpoint at the latest (at once when the last one is older), or sooner when the
//! chain grew by `every_events` (looked at four times per `every`, or every `poll_interval` if shorter):
//! one fsynced line per checkpoint, never more than the disk keeps up with (the newest head waiting is
//! signed, the ones it covers are skipped). The task wakes for the first commit after a checkpoint, not
//! for every commit. Failures are logged and retried, never raised.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{sink, Checkpoint, CheckpointConfig, Signer};
use crate::clock::SharedClock;
use crate::store::{ChainHead, Store};

/// The longest [`Checkpointer::stop`] waits for the last checkpoint: a healthy database and disk answer in
/// milliseconds, and a broker stopping while its database is down must not hang on it.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// How often, per `every`, a waiting head is compared with the newest published one for `every_events`
/// (or every `poll_interval`, when that is shorter).
const PEEKS_PER_EVERY: u32 = 4;
/// The shortest interval between those looks.
const MIN_PEEK: Duration = Duration::from_millis(10);

/// The running checkpointer; [`stop`](Self::stop) it at shutdown for a last checkpoint.
#[derive(Debug)]
pub struct Checkpointer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<ChainHead>>,
}

impl Checkpointer {
    /// Starts the task. It first reads the file's last checkpoint (so a restart does not repeat it) and
    /// logs an error if the chain no longer holds it.
    pub fn start(
        store: Store,
        clock: SharedClock,
        signer: Signer,
        path: PathBuf,
        cfg: &CheckpointConfig,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let heads = store.committed_heads();
        let state = State {
            store,
            clock,
            signer: Arc::new(signer),
            path,
            every_events: i64::try_from(cfg.every_events).unwrap_or(i64::MAX),
            every: cfg.every,
            last: None,
            last_at: None,
            waiting: None,
            failures: 0,
        };
        let task = tokio::spawn(state.run(Some(heads), cfg.poll_interval, stopped));
        Self { stop, task }
    }

    /// Writes a last checkpoint if the head moved since the last one, and stops; gives up after 3 s.
    /// Returns the head the file's last checkpoint names, as far as this broker knows.
    pub async fn stop(self) -> Option<ChainHead> {
        let _ = self.stop.send(());
        match tokio::time::timeout(STOP_BOUND, self.task).await {
            Ok(Ok(last)) => last,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the audit checkpointer failed");
                None
            }
            Err(_) => {
                tracing::error!(
                    "the audit checkpointer did not finish its last checkpoint in time"
                );
                None
            }
        }
    }
}

struct State {
    store: Store,
    clock: SharedClock,
    signer: Arc<Signer>,
    path: PathBuf,
    every_events: i64,
    every: Duration,
    /// The head the last checkpoint named (in the file, as far as this broker knows).
    last: Option<ChainHead>,
    /// When the last checkpoint was written, or last attempted (a failure waits `every` too).
    last_at: Option<Instant>,
    /// The newest head seen that differs from `last`: the next one to sign.
    waiting: Option<ChainHead>,
    /// Consecutive failed attempts; only the first is logged at length.
    failures: u64,
}

/// The next head the writer publishes; never, once the writer is gone.
async fn published(heads: &mut Option<watch::Receiver<Option<ChainHead>>>) -> ChainHead {
    loop {
        let Some(rx) = heads.as_mut() else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            *heads = None;
            continue;
        }
        // Cloned at once: the writer's next send waits for no borrow held across an await.
        if let Some(head) = rx.borrow_and_update().clone() {
            return head;
        }
    }
}

impl State {
    async fn run(
        mut self,
        mut heads: Option<watch::Receiver<Option<ChainHead>>>,
        poll: Duration,
        mut stopped: oneshot::Receiver<()>,
    ) -> Option<ChainHead> {
        self.resume().await;
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut peeks =
            tokio::time::interval((self.every / PEEKS_PER_EVERY).min(poll).max(MIN_PEEK));
        peeks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let due = self.due();
            // Woken by the first commit after a checkpoint only: while a head waits, newer ones are
            // read from the channel at a few peeks per `every` (for `every_events`) and when it is due,
            // not on every commit (a wake-up per batch would cost more than the signatures).
            let waiting = self.waiting.is_some();
            tokio::select! {
                biased;
                // Stopped, or the handle dropped (the broker went away without stopping): a last look.
                _ = &mut stopped => {
                    let _ = tokio::time::timeout(STOP_BOUND, self.finish(heads.as_ref())).await;
                    return self.last;
                }
                head = published(&mut heads), if !waiting => self.saw(head),
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.newest_published(heads.as_mut());
                    self.sign().await;
                }
                _ = peeks.tick(), if waiting => self.newest_published(heads.as_mut()),
                _ = ticks.tick() => self.poll().await,
            }
        }
    }

    /// Takes the newest head the writer published, if it changed since the last look.
    fn newest_published(&mut self, heads: Option<&mut watch::Receiver<Option<ChainHead>>>) {
        let Some(rx) = heads else { return };
        if rx.has_changed().unwrap_or(false) {
            if let Some(head) = rx.borrow_and_update().clone() {
                self.saw(head);
            }
        }
    }

    /// Reads the file's last checkpoint and checks that the chain still holds it.
    async fn resume(&mut self) {
        let path = self.path.clone();
        let last = match tokio::task::spawn_blocking(move || sink::last(&path)).await {
            Ok(Ok(last)) => last,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the last audit checkpoint; the next one is written at once");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last audit checkpoint");
                None
            }
        };
        let Some(last) = last else { return };
        match self.store.event_hashes(&[last.seq]).await {
            Ok(found) => match found.first() {
                None => tracing::error!(
                    seq = last.seq,
                    "the audit chain no longer holds the last checkpointed event (truncated?): run `broker audit verify`"
                ),
                Some((_, hash)) if *hash != last.hash => tracing::error!(
                    seq = last.seq,
                    "the audit chain's event differs from the last checkpoint (rewritten?): run `broker audit verify`"
                ),
                Some(_) => {}
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot compare the audit chain with the last checkpoint")
            }
        }
        self.last = Some(ChainHead {
            seq: last.seq,
            hash: last.hash,
        });
    }

    /// A head seen (published by the writer, or read from the database). The newest one waits to be
    /// signed. A head read behind the last checkpoint (the chain was cut) is signed too: the checkpoint
    /// before it still names the cut, and `broker audit verify` reports it.
    fn saw(&mut self, head: ChainHead) {
        if self.last.as_ref() == Some(&head) {
            return;
        }
        let newer = self.waiting.as_ref().is_none_or(|w| head.seq >= w.seq);
        if newer {
            self.waiting = Some(head);
        }
    }

    /// When the waiting head is to be signed; `None` when none waits.
    fn due(&self) -> Option<Instant> {
        let waiting = self.waiting.as_ref()?;
        let (Some(last), Some(at)) = (&self.last, self.last_at) else {
            return Some(Instant::now());
        };
        if waiting.seq.saturating_sub(last.seq) >= self.every_events {
            return Some(Instant::now());
        }
        Some(at + self.every)
    }

    /// Reads the head through the store: heads other brokers committed.
    async fn poll(&mut self) {
        match self.store.head().await {
            Ok(Some(head)) => self.saw(head),
            Ok(None) => {}
            Err(e) => self.failed("cannot read the audit chain head", &e.to_string()),
        }
    }

    /// Signs the waiting head and appends it.
    async fn sign(&mut self) {
        let Some(head) = self.waiting.take() else {
            return;
        };
        if self.last.as_ref() == Some(&head) {
            return;
        }
        // Only what the database holds is signed: a head published for a batch that did not commit
        // after all (a pipelined write refused, a commit cut short) would sign events that do not exist,
        // and every later `audit verify` would report the chain truncated. One read per checkpoint.
        match self.store.event_hashes(&[head.seq]).await {
            Ok(found)
                if found
                    .iter()
                    .any(|(seq, hash)| *seq == head.seq && *hash == head.hash) => {}
            Ok(_) => {
                tracing::warn!(
                    seq = head.seq,
                    "a published chain head is not in the database; not signed"
                );
                return;
            }
            Err(e) => {
                if self.waiting.is_none() {
                    self.waiting = Some(head);
                }
                self.failed("cannot confirm the chain head to sign", &e.to_string());
                return;
            }
        }
        let checkpoint = self
            .signer
            .sign(head.seq, &head.hash, self.clock.now_micros());
        self.last_at = Some(Instant::now());
        match self.write(checkpoint).await {
            Ok(()) => {
                if self.failures > 0 {
                    tracing::info!(
                        failures = self.failures,
                        "audit checkpoints are written again"
                    );
                }
                self.failures = 0;
                self.last = Some(head);
            }
            Err(e) => {
                // Tried again after `every`, unless a newer head arrived meanwhile.
                if self.waiting.is_none() {
                    self.waiting = Some(head);
                }
                self.failed("cannot write an audit checkpoint", &e);
            }
        }
    }

    /// At shutdown: the newest head published or in the database, signed now if it moved.
    async fn finish(&mut self, heads: Option<&watch::Receiver<Option<ChainHead>>>) {
        if let Some(head) = heads.and_then(|rx| rx.borrow().clone()) {
            self.saw(head);
        }
        self.poll().await;
        self.sign().await;
    }

    async fn write(&self, checkpoint: Checkpoint) -> Result<(), String> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || sink::append(&path, &checkpoint))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    fn failed(&mut self, what: &str, error: &str) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::error!(error, path = %self.path.display(), "{what}; retrying");
        } else {
            tracing::debug!(error, failures = self.failures, "{what}");
        }
    }
}
