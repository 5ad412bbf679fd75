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
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

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
}

impl Running {
    /// Stops accepting, finishes in-flight calls, and returns.
    /// Then writes a last audit checkpoint if the chain moved.
    pub async fn shutdown(self) -> Result<(), api::Error> {
        let Running {
            shutdown,
            task,
            checkpointer,
            ..
        } = self;
        let _ = shutdown.send(());
        let served = task.await;
        stop_checkpointer(checkpointer).await;
        served.map_err(|e| api::Error::Serve(e.to_string()))?
    }

    /// Serves until the server stops by itself.
    pub async fn wait(self) -> Result<(), api::Error> {
        let served = self.task.await;
        stop_checkpointer(self.checkpointer).await;
        match served {
            Ok(r) => r,
            Err(e) => Err(api::Error::Serve(e.to_string())),
        }
    }

    /// Stops on the first of `signal` or the server ending by itself.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), api::Error> {
        let Running {
            shutdown,
            mut task,
            checkpointer,
            ..
        } = self;
        tokio::select! {
            r = &mut task => {
                stop_checkpointer(checkpointer).await;
                return r.map_err(|e| api::Error::Serve(e.to_string()))?;
            }
            () = signal => {}
        }
        let _ = shutdown.send(());
        let served = task.await;
        stop_checkpointer(checkpointer).await;
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

/// Once the server has stopped (no more decisions), the last checkpoint.
async fn stop_checkpointer(checkpointer: Option<Checkpointer>) {
    if let Some(c) = checkpointer {
        c.stop().await;
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
    let a = &config.auth;
    config.dev_issuer
        && a.hmac_secret_file.is_none()
        && a.public_keys.is_empty()
        && a.jwks_file.is_none()
        && a.jwks_url.is_none()
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
    let task = tokio::spawn(async move {
        api::serve(
            broker,
            verifier,
            clock,
            &limits,
            tls.as_ref(),
            listener,
            async {
                let _ = shutdown_rx.await;
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
    })
}
