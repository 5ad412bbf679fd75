//! The only place that knows tonic and proto types: authentication, handlers, error -> status, and the
//! server with its limits. See [`serve`] for the order of the layers.

pub mod admission;
mod agent;
mod approval;
mod audit;
mod authn;
mod convert;
mod grace;
mod http2;
mod killswitch;
mod status;

use std::future::Future;
use std::time::Duration;

use broker_proto::v1::agent_service_server::AgentServiceServer;
use broker_proto::v1::approval_service_server::ApprovalServiceServer;
use broker_proto::v1::audit_service_server::AuditServiceServer;
use broker_proto::v1::kill_switch_service_server::KillSwitchServiceServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use self::admission::layer::{Admit, Audience, ShedLayer};
use self::admission::Admission;
use crate::auth::Verifier;
use crate::clock::SharedClock;
use crate::config::{Limits, TlsConfig};
use crate::domain::broker::Broker;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tls: {0}")]
    Tls(String),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("server: {0}")]
    Serve(String),
}

fn tls_config(tls: &TlsConfig) -> Result<ServerTlsConfig, Error> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("`{}`: {e}", p.display())))
    };
    let mut cfg =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(ca) = &tls.client_ca {
        // With a client CA, a certificate it signed is required (mTLS), not merely accepted.
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    Ok(cfg)
}

/// When to stop serving, and how long calls in flight may take then.
pub struct Shutdown<F> {
    pub signal: F,
    /// From the signal on, calls in flight may finish within this; those still running are then
    /// answered UNAVAILABLE (`SHUTTING_DOWN`).
    pub grace: Duration,
}

/// Serves the broker on `listener` until `shutdown.signal` resolves: then stops accepting, ends the watch
/// streams, and returns once every call in flight is answered and the connections closed. Health reports
/// SERVING from the start: the caller only gets here once migrations ran and the policies loaded.
pub async fn serve(
    broker: Broker,
    verifier: Verifier,
    clock: SharedClock,
    limits: &Limits,
    tls: Option<&TlsConfig>,
    listener: TcpListener,
    shutdown: Shutdown<impl Future<Output = ()> + Send>,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<agent::AgentApi>>()
        .await;
    health
        .set_serving::<AuditServiceServer<audit::AuditApi>>()
        .await;
    health
        .set_serving::<KillSwitchServiceServer<killswitch::KillSwitchApi>>()
        .await;
    health
        .set_serving::<ApprovalServiceServer<approval::ApprovalApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(broker_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;

    let authenticate = authn::Authenticate::new(verifier);
    let agent_service = AgentServiceServer::new(agent::AgentApi {
        broker: broker.clone(),
        clock: clock.clone(),
    })
    .max_decoding_message_size(limits.max_message_bytes)
    .max_encoding_message_size(limits.max_message_bytes);
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let kill_switch_service = KillSwitchServiceServer::new(killswitch::KillSwitchApi {
        broker: broker.clone(),
        clock,
        stopping: stopping.clone(),
    })
    .max_decoding_message_size(limits.max_message_bytes)
    .max_encoding_message_size(limits.max_message_bytes);
    let approval_service = ApprovalServiceServer::new(approval::ApprovalApi {
        broker: broker.clone(),
        stopping,
    })
    .max_decoding_message_size(limits.max_message_bytes)
    .max_encoding_message_size(limits.max_message_bytes);
    let audit_service = AuditServiceServer::new(audit::AuditApi { broker })
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);

    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls_config(tls)?)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    // The order, outside in, and why:
    // 1. HTTP/2 limits (per connection: streams, headers, resets, windows, keepalive) and tonic's own
    //    per-RPC timeout (`limits.request_timeout`): they bound every request before it costs anything.
    // 2. The front limit (`ShedLayer`): everything in flight at once, `max_in_flight + operator_reserve`,
    //    shed at once with OVERLOADED. Before authentication, as the last resort: it cannot tell who
    //    calls, so it is sized for everyone, and the admission below keeps every caller but operators to
    //    `max_in_flight` of it, which leaves the reserve free for admins and approvers however the
    //    agents' load is spread. (A request it sheds, or that authentication or admission refuse, holds
    //    its place only while it is refused, within the same poll.)
    // 3. Authentication (`authn`, per broker service): puts the verified `Principal` in the extensions.
    // 4. Admission (`Admit`, per service): needs the principal, so it comes after authentication, and
    //    runs before the message is read. Per caller (`max_in_flight_per_caller`, `max_waits_per_caller`)
    //    and per lane (operators' kill-switch and approval calls vs everything else). Health and
    //    reflection are unauthenticated and admitted in the general lane.
    // 5. The handler, which names the role it needs.
    //    Inside the front limit: at shutdown, a call still running when the grace period ends is
    //    answered UNAVAILABLE `SHUTTING_DOWN` (`grace`), and frees its place.
    let admission = Admission::new(limits);
    let (grace_over_tx, grace_over) = tokio::sync::watch::channel(false);
    let mut server = http2::limit(server, limits).layer(
        tower::ServiceBuilder::new()
            .layer(ShedLayer::new(admission::total(limits)))
            .layer(grace::GraceLayer::new(grace_over)),
    );
    let Shutdown { signal, grace } = shutdown;
    let (began_tx, began) = tokio::sync::oneshot::channel::<()>();
    // The grace period runs from the signal, while the server drains; it never ends the server itself.
    let grace_timer = async move {
        if began.await.is_ok() {
            tokio::time::sleep(grace).await;
            let _ = grace_over_tx.send(true);
        }
        std::future::pending::<()>().await;
    };

    let serving = server
        .add_service(Admit::new(
            health_service,
            admission.clone(),
            Audience::Public,
        ))
        .add_service(Admit::new(reflection, admission.clone(), Audience::Public))
        // Authentication wraps each broker service, so no handler runs without a verified principal.
        .add_service(InterceptedService::new(
            Admit::new(agent_service, admission.clone(), Audience::Callers),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            Admit::new(audit_service, admission.clone(), Audience::Callers),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            Admit::new(kill_switch_service, admission.clone(), Audience::Operators),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            Admit::new(approval_service, admission.clone(), Audience::Operators),
            authenticate,
        ))
        // Our own listener (so tests can bind port 0) skips the builder's socket options: set them here.
        // Without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to every unary call.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            async move {
                signal.await;
                let _ = stopping_tx.send(true);
                let _ = began_tx.send(());
            },
        );
    tokio::select! {
        served = serving => served.map_err(|e| Error::Serve(e.to_string()))?,
        () = grace_timer => {}
    }
    health
        .set_not_serving::<AgentServiceServer<agent::AgentApi>>()
        .await;
    Ok(())
}
