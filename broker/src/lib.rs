//! The authorization broker: every agent tool call passes through here before it happens.
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod api;
pub mod auth;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod domain;
pub mod hexstr;
pub mod ids;
pub mod json;
pub mod notify;
pub mod policy;
pub mod printable;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::auth::Verifier;
use crate::checkpoint::{Checkpointer, Signer};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::domain::broker::{Broker, Settings};
use crate::domain::switchboard::Switchboard;
use crate::policy::PolicyEngine;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error("policies: {0}")]
    Policy(#[from] policy::Error),
    #[error("database: {0}")]
    Store(#[from] store::Error),
    #[error("listen on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error(transparent)]
    Api(#[from] api::Error),
    #[error("approvals webhook: {0}")]
    Webhook(#[from] notify::Error),
    #[error("audit checkpoints: {0}")]
    Checkpoint(#[from] checkpoint::Error),
    #[error("startup self-check failed, refusing to serve:\n  - {}", .0.join("\n  - "))]
    SelfCheck(Vec<String>),
}

/// A running broker.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Store,
    pub backend: store::Backend,
    /// Swap the policy set in effect (a reload).
    pub policies: watch::Sender<Arc<PolicyEngine>>,
    /// Set when the dev issuer is in use: the HMAC key tokens are signed with.
    pub dev_secret: Option<Vec<u8>>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), api::Error>>,
    checkpointer: Option<Checkpointer>,
    /// `shutdown_grace`: how long calls in flight may still finish once a shutdown begins.
    grace: Duration,
}

/// Past the grace period (every call answered), how long connections may take to close before the
/// server is dropped with them.
const CLOSE_BOUND: Duration = Duration::from_secs(2);
/// How long the audit writer may take to drain its queue at shutdown: milliseconds on a healthy
/// database, and a broker stopping while its database is down must not hang on it.
const FLUSH_BOUND: Duration = Duration::from_secs(3);

impl Running {
    /// Stops: no new connections; calls in flight get `shutdown_grace`, then UNAVAILABLE; the audit
    /// writer is flushed and a last checkpoint written if the chain moved. Bounded: about
    /// `shutdown_grace` + 8 s at worst.
    pub async fn shutdown(self) -> Result<(), api::Error> {
        self.run_until(std::future::ready(())).await
    }

    /// Serves until the server stops by itself.
    pub async fn wait(self) -> Result<(), api::Error> {
        self.run_until(std::future::pending()).await
    }

    /// Stops on the first of `signal` or the server ending by itself.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), api::Error> {
        let Running {
            store,
            shutdown,
            mut task,
            checkpointer,
            grace,
            ..
        } = self;
        let served = tokio::select! {
            r = &mut task => Some(r),
            () = signal => None,
        };
        let served = match served {
            Some(r) => {
                tracing::warn!("the server stopped by itself; flushing the audit writer");
                r
            }
            None => {
                tracing::info!(
                    grace = %humantime::format_duration(grace),
                    "shutting down: no new connections; calls in flight may finish within the grace period, then are answered UNAVAILABLE"
                );
                let _ = shutdown.send(());
                match tokio::time::timeout(grace.saturating_add(CLOSE_BOUND), &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Every call was answered at the end of the grace period; what remains is a
                        // connection that would not close (a client streaming health checks, say).
                        tracing::warn!(
                            "connections still open after the grace period: dropping them"
                        );
                        task.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        let flushed = store.flush(FLUSH_BOUND).await;
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "the audit writer could not be flushed: writes still queued are not covered by the last checkpoint");
        }
        let checkpoint = stop_checkpointer(checkpointer).await;
        tracing::info!(
            audit_flushed = flushed.is_ok(),
            final_checkpoint = checkpoint.map(|head| head.seq),
            "shutdown complete"
        );
        served.map_err(|e| api::Error::Serve(e.to_string()))?
    }
}

/// A migration refused for lack of rights says who can run it.
fn migrate_error(e: store::Error) -> StartError {
    let message = e.message();
    if message.contains("permission denied") || message.contains("must be owner") {
        StartError::SelfCheck(vec![format!(
            "the database schema is not current and this role may not change it ({message}); fix: run `broker migrate` as the role that owns the tables"
        )])
    } else {
        StartError::Store(e)
    }
}

/// Once the server has stopped (no more decisions), the last checkpoint: the event it names.
async fn stop_checkpointer(checkpointer: Option<Checkpointer>) -> Option<store::ChainHead> {
    match checkpointer {
        Some(c) => c.stop().await,
        None => None,
    }
}

/// The checkpoint signing key: a configured key must exist; the default one is created on first start.
fn checkpoint_signer(config: &Config) -> Result<Signer, StartError> {
    let path = config.checkpoint_key_path();
    if config.audit.checkpoints.key.is_some() {
        return Ok(Signer::load(&path)?);
    }
    let (signer, created) = Signer::load_or_create(&path)?;
    if created {
        tracing::info!(path = %path.display(), key_id = signer.key_id(), "created the audit checkpoint signing key; keep its public key elsewhere (`broker audit checkpoint-key`)");
    }
    Ok(signer)
}

/// The startup self-check: no serving when the broker's own database role could rewrite the audit
/// trail, when a commit might not be durable, or with no policies. `store.allow_privileged_role` waives
/// the first (development and tests), loudly.
async fn self_check(
    store: &Store,
    engine: &PolicyEngine,
    allow_privileged_role: bool,
) -> Result<(), StartError> {
    let mut refusals = Vec::new();
    if engine.policy_count() == 0 {
        refusals.push(format!(
            "no policies are loaded from `{}`: every call would be denied; fix: add `*.cedar` files",
            engine.dir().display()
        ));
    }
    if allow_privileged_role {
        tracing::warn!("store.allow_privileged_role is set: the broker serves even if its database role could rewrite the audit trail; never in production");
    }
    for finding in store.self_check().await? {
        if finding.is_privileged_role() && allow_privileged_role {
            tracing::warn!("{finding}");
        } else {
            refusals.push(finding.to_string());
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(StartError::SelfCheck(refusals))
    }
}

/// Whether tokens are verified with the dev issuer's key (no other key source configured).
pub fn uses_dev_issuer(config: &Config) -> bool {
    config.uses_dev_issuer()
}

/// Starts the broker: keys, then policies (strictly validated), then the database (migrated), and
/// only then the server, so that health says SERVING only when all of them are ready.
pub async fn start(
    config: Config,
    listener: Option<TcpListener>,
    clock: SharedClock,
) -> Result<Running, StartError> {
    config.validate()?;
    let dev_secret = if uses_dev_issuer(&config) {
        if !config.listen.ip().to_canonical().is_loopback() {
            tracing::warn!(listen = %config.listen, "allow_dev_issuer_on_network is set: the dev issuer serves on a network address, and anyone who can read its key mints tokens of any role; development only");
        }
        let (secret, created) = auth::dev::load_or_create_secret(&config.data_dir)?;
        if created {
            tracing::info!(path = %config.data_dir.join("dev-signing-key").display(), "created a development signing key");
        }
        Some(secret)
    } else {
        None
    };
    let verifier = Verifier::from_config(&config.auth, dev_secret.clone()).await?;

    let engine = PolicyEngine::load(&config.policies)?;
    tracing::info!(dir = %config.policies.display(), policies = engine.policy_count(), version = engine.version(), "policies loaded");
    let (policies_tx, policies_rx) = watch::channel(Arc::new(engine));

    let signer = if config.audit.checkpoints.enabled {
        let signer = checkpoint_signer(&config)?;
        checkpoint::sink::ensure(&config.checkpoint_path())?;
        Some(signer)
    } else {
        tracing::warn!("audit checkpoints are off (audit.checkpoints.enabled = false): a rewrite of the whole chain would go unnoticed");
        None
    };

    let store = Store::connect(&config.store_config()).await?;
    if config.store.migrate_on_start {
        store.migrate().await.map_err(migrate_error)?;
    } else if !store.schema_is_current().await? {
        return Err(StartError::SelfCheck(vec![
            "the database schema is not the one this broker expects and store.migrate_on_start is false; fix: run `broker migrate` as the role that owns the tables".to_owned(),
        ]));
    }
    let in_effect = Arc::clone(&policies_rx.borrow());
    self_check(&store, &in_effect, config.store.allow_privileged_role).await?;
    let backend = store.backend();
    tracing::info!(backend = ?backend, "database ready");

    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Listen {
                addr: config.listen,
                message: e.to_string(),
            })?,
    };
    let addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: config.listen,
        message: e.to_string(),
    })?;

    let settings = Settings {
        session: config.session.clone(),
        audit: config.audit.clone(),
        limits: config.limits.clone(),
        store_bound: config.store.commit_timeout,
        quarantine: config.kill_switch.quarantine.clone(),
        approvals: config.approvals.clone(),
        person_claim: config.auth.person_claim.clone(),
    };
    let webhook = config
        .approvals
        .webhook
        .as_ref()
        .map(notify::Webhook::start)
        .transpose()?;
    // Kill switches are read before the broker serves: a broker that cannot say what is stopped does not start.
    let switchboard = Switchboard::start(
        store.clone(),
        clock.clone(),
        config.kill_switch.poll_interval,
        config.kill_switch.stale_after,
    )
    .await?;
    let broker = Broker::new(
        store.clone(),
        policies_rx,
        clock.clone(),
        settings,
        switchboard,
        webhook,
    );
    tokio::spawn(domain::approving::watch_store(
        broker.clone(),
        config.approvals.poll_interval,
    ));
    let checkpointer = signer.map(|signer| {
        let path = config.checkpoint_path();
        tracing::info!(path = %path.display(), key_id = signer.key_id(), "audit checkpoints on");
        Checkpointer::start(
            store.clone(),
            clock.clone(),
            signer,
            path,
            &config.audit.checkpoints,
        )
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let limits = config.limits.clone();
    let tls = config.tls.clone();
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        api::serve(
            broker,
            verifier,
            clock,
            &limits,
            tls.as_ref(),
            listener,
            api::Shutdown {
                signal: async {
                    let _ = shutdown_rx.await;
                },
                grace,
            },
        )
        .await
    });
    Ok(Running {
        addr,
        store,
        backend,
        policies: policies_tx,
        dev_secret,
        shutdown: shutdown_tx,
        task,
        checkpointer,
        grace,
    })
}
