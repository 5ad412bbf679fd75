//! [`AuditClient`]: the security team's side of `AuditService` (role `auditor` or `admin`).

use std::fmt;
use std::time::Duration;

use broker_proto::v1 as proto;
use proto::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

use crate::rpc::Rpc;
use crate::{connect, AuditFilter, AuditPage, ChainReport, Error, TokenSource};

/// A connection to the broker's `AuditService`, authenticated with a bearer token whose role is
/// `auditor` or `admin`.
///
/// ```no_run
/// # async fn run() -> Result<(), broker_sdk::Error> {
/// use broker_sdk::{AuditClient, AuditFilter};
/// let audit = AuditClient::connect("http://127.0.0.1:50051", "auditor-jwt".to_owned()).await?;
/// let mut filter = AuditFilter::new().tool("email.send");
/// loop {
///     let page = audit.list_events(filter.clone()).await?;
///     for event in &page.events {
///         println!("{} {} {:?}", event.seq, event.kind, event.outcome);
///     }
///     match page.next_page_token {
///         Some(token) => filter = filter.page_token(token),
///         None => break,
///     }
/// }
/// assert!(audit.verify_chain().await?.is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AuditClient {
    inner: AuditServiceClient<Channel>,
    rpc: Rpc,
}

impl AuditClient {
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
            inner: AuditServiceClient::new(channel),
            rpc: Rpc::new(tokens),
        }
    }

    /// Sets the per-RPC deadline; the default is 10 s (verifying a long chain may need more).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.rpc.set_timeout(timeout);
        self
    }

    /// The per-RPC deadline.
    pub fn timeout(&self) -> Duration {
        self.rpc.timeout()
    }

    /// One page of the events matching `filter`, in chain order.
    pub async fn list_events(&self, filter: AuditFilter) -> Result<AuditPage, Error> {
        let mut inner = self.inner.clone();
        let page = self
            .rpc
            .call(filter.into_proto(), |req| async move {
                inner.list_audit_events(req).await
            })
            .await?;
        AuditPage::try_from(page)
    }

    /// Walks the hash chain from the first event and reports the first event that was modified,
    /// inserted or deleted.
    pub async fn verify_chain(&self) -> Result<ChainReport, Error> {
        let mut inner = self.inner.clone();
        let report = self
            .rpc
            .call(proto::VerifyAuditChainRequest {}, |req| async move {
                inner.verify_audit_chain(req).await
            })
            .await?;
        ChainReport::try_from(report)
    }
}

impl fmt::Debug for AuditClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditClient")
            .field("timeout", &self.rpc.timeout())
            .finish_non_exhaustive()
    }
}
