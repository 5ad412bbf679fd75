//! [`KillSwitchClient`]: the admin's side of `KillSwitchService` (role `admin`).

use std::fmt;
use std::time::Duration;

use broker_proto::v1 as proto;
use proto::kill_switch_service_client::KillSwitchServiceClient;
use tonic::transport::Channel;

use crate::rpc::{Rpc, Watched};
use crate::{connect, EngageRequest, Error, KillSwitch, KillSwitchEvent, TokenSource};

/// A connection to the broker's `KillSwitchService`, authenticated with a bearer token whose role is
/// `admin`: stop everything, a tenant, an agent, a user, a tool or one session, on every broker replica.
///
/// Cheap to clone: clones share the connection and the token source.
///
/// ```no_run
/// # async fn run() -> Result<(), broker_sdk::Error> {
/// use std::time::{Duration, SystemTime};
/// use broker_sdk::{EngageRequest, KillSwitchClient, KillSwitchScope};
/// let admin = KillSwitchClient::connect("http://127.0.0.1:50051", "admin-jwt".to_owned()).await?;
/// let switch = admin
///     .engage(
///         EngageRequest::new(KillSwitchScope::Tool, "payments.*", "incident 42: double charges")
///             .expires_at(SystemTime::now() + Duration::from_secs(3600)),
///     )
///     .await?;
///
/// let mut watch = admin.watch().await?;
/// while let Some(event) = watch.next().await {
///     let event = event?;
///     println!("{} {} {} {}", event.change, event.switch.id, event.switch.scope, event.switch.target);
/// }
///
/// admin.release(&switch.id, "incident 42 resolved").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KillSwitchClient {
    inner: KillSwitchServiceClient<Channel>,
    rpc: Rpc,
}

impl KillSwitchClient {
    /// Connects to `endpoint` now; see [`Client::connect`](crate::Client::connect).
    pub async fn connect(
        endpoint: impl Into<String>,
        tokens: impl TokenSource,
    ) -> Result<Self, Error> {
        Ok(Self::from_channel(
            connect::connect(endpoint).await?,
            tokens,
        ))
    }

    /// Connects on first use; see [`Client::connect_lazy`](crate::Client::connect_lazy).
    pub fn connect_lazy(
        endpoint: impl Into<String>,
        tokens: impl TokenSource,
    ) -> Result<Self, Error> {
        Ok(Self::from_channel(connect::connect_lazy(endpoint)?, tokens))
    }

    /// Uses a channel the caller built.
    pub fn from_channel(channel: Channel, tokens: impl TokenSource) -> Self {
        Self {
            inner: KillSwitchServiceClient::new(channel),
            rpc: Rpc::new(tokens),
        }
    }

    /// Sets the per-RPC deadline; the default is 10 s. For [`watch`](Self::watch) it bounds opening the
    /// stream only, never the stream itself.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.rpc.set_timeout(timeout);
        self
    }

    /// The per-RPC deadline.
    pub fn timeout(&self) -> Duration {
        self.rpc.timeout()
    }

    /// Engages a switch: every broker denies what it covers (reason `KILL_SWITCH`, naming the switch in
    /// [`Reason::kill_switch_id`](crate::Reason::kill_switch_id)) from the moment it sees it.
    pub async fn engage(&self, request: EngageRequest) -> Result<KillSwitch, Error> {
        let mut inner = self.inner.clone();
        let switch = self
            .rpc
            .call(request.into_proto(), |req| async move {
                inner.engage(req).await
            })
            .await?;
        KillSwitch::try_from(switch)
    }

    /// Releases the engaged switch `id`, recording `reason` in the audit trail.
    pub async fn release(&self, id: &str, reason: &str) -> Result<KillSwitch, Error> {
        let mut inner = self.inner.clone();
        let message = proto::ReleaseKillSwitchRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let switch = self
            .rpc
            .call(message, |req| async move { inner.release(req).await })
            .await?;
        KillSwitch::try_from(switch)
    }

    /// The switches in force; with `include_released`, also released and expired ones (newest first,
    /// at most 1000).
    pub async fn list(&self, include_released: bool) -> Result<Vec<KillSwitch>, Error> {
        let mut inner = self.inner.clone();
        let message = proto::ListKillSwitchesRequest { include_released };
        let list = self
            .rpc
            .call(
                message,
                |req| async move { inner.list_kill_switches(req).await },
            )
            .await?;
        list.switches
            .into_iter()
            .map(KillSwitch::try_from)
            .collect()
    }

    /// Opens a watch: first one [`Active`](crate::KillSwitchChange::Active) event per switch in force,
    /// then every change as it happens.
    ///
    /// The deadline bounds opening the stream; the stream itself stays open until the broker ends it or
    /// the [`KillSwitchWatch`] is dropped (a dead connection is detected by HTTP/2 keep-alive, see
    /// [`KEEP_ALIVE_TIMEOUT`](crate::KEEP_ALIVE_TIMEOUT)).
    pub async fn watch(&self) -> Result<KillSwitchWatch, Error> {
        let mut inner = self.inner.clone();
        let stream = self
            .rpc
            .open_stream(proto::WatchKillSwitchesRequest {}, |req| async move {
                inner.watch_kill_switches(req).await
            })
            .await?;
        Ok(KillSwitchWatch {
            stream: Watched::new(stream),
        })
    }
}

impl fmt::Debug for KillSwitchClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillSwitchClient")
            .field("timeout", &self.rpc.timeout())
            .finish_non_exhaustive()
    }
}

/// An open watch of the broker's kill switches, from [`KillSwitchClient::watch`].
///
/// Dropping it cancels the stream.
pub struct KillSwitchWatch {
    stream: Watched<proto::KillSwitchEvent>,
}

impl KillSwitchWatch {
    /// The next event; `None` once the broker has ended the stream.
    ///
    /// An error ends the watch (every later call returns `None`): an event the SDK cannot read is an
    /// [`Error::Protocol`], and skipping it would leave the caller with a wrong picture of what is in
    /// force. Open a new watch to start again from the switches in force.
    pub async fn next(&mut self) -> Option<Result<KillSwitchEvent, Error>> {
        self.stream.next(KillSwitchEvent::try_from).await
    }

    /// Whether the watch has ended (the broker ended the stream, or an error ended the watch).
    pub fn is_ended(&self) -> bool {
        self.stream.is_ended()
    }
}

impl fmt::Debug for KillSwitchWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillSwitchWatch")
            .field("ended", &self.is_ended())
            .finish()
    }
}
