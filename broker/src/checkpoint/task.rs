//! The checkpointer: a background task that reads the chain head through the store (reads only) and
//! appends a signed checkpoint when the chain grew by `every_events`, or `every` after the last one,
//! and once more at a clean shutdown. It never touches the decision path: its failures are logged and
//! retried at the next poll, never raised.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{sink, Checkpoint, CheckpointConfig, Signer};
use crate::clock::SharedClock;
use crate::store::{ChainHead, Store};

/// The longest [`Checkpointer::stop`] waits for the last checkpoint: a healthy database and disk answer in
/// milliseconds, and a broker stopping while its database is down must not hang on it.
const STOP_BOUND: Duration = Duration::from_secs(3);

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
        let state = State {
            store,
            clock,
            signer: Arc::new(signer),
            path,
            every_events: i64::try_from(cfg.every_events).unwrap_or(i64::MAX),
            every: cfg.every,
            last: None,
            last_at: Instant::now(),
            failures: 0,
        };
        let task = tokio::spawn(state.run(cfg.poll_interval, stopped));
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
    last_at: Instant,
    /// Consecutive failed attempts; only the first is logged at length.
    failures: u64,
}

impl State {
    async fn run(
        mut self,
        poll: Duration,
        mut stopped: oneshot::Receiver<()>,
    ) -> Option<ChainHead> {
        self.resume().await;
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.tick(false).await,
                // Stopped, or the handle dropped (the broker went away without stopping): a last look.
                _ = &mut stopped => {
                    let _ = tokio::time::timeout(STOP_BOUND, self.tick(true)).await;
                    return self.last;
                }
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

    /// Checkpoints the head if it moved and a checkpoint is due (always due when `force`).
    async fn tick(&mut self, force: bool) {
        let head = match self.store.head().await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => return self.failed("cannot read the audit chain head", &e.to_string()),
        };
        let due = match &self.last {
            None => true,
            Some(last) if *last == head => return,
            Some(last) => {
                force
                    || head.seq < last.seq
                    || head.seq.saturating_sub(last.seq) >= self.every_events
                    || self.last_at.elapsed() >= self.every
            }
        };
        if !due {
            return;
        }
        let checkpoint = self
            .signer
            .sign(head.seq, &head.hash, self.clock.now_micros());
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
                self.last_at = Instant::now();
            }
            Err(e) => self.failed("cannot write an audit checkpoint", &e),
        }
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
            tracing::error!(error, path = %self.path.display(), "{what}; retrying at every poll");
        } else {
            tracing::debug!(error, failures = self.failures, "{what}");
        }
    }
}
