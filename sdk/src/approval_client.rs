//! [`ApprovalClient`]: the approver's side of `ApprovalService` (role `approver`).

use std::fmt;
use std::time::Duration;

use broker_proto::v1 as proto;
use proto::approval_service_client::ApprovalServiceClient;
use tonic::transport::Channel;

use crate::rpc::{Rpc, Watched};
use crate::{connect, Approval, ApprovalFilter, ApprovalPage, Error, TokenSource};

/// A connection to the broker's `ApprovalService`, authenticated with a bearer token whose role is
/// `approver`: list the tool calls that wait for people, and approve or deny them. An approver is never
/// the agent that asked or the user it acts for.
///
/// Cheap to clone: clones share the connection and the token source.
///
/// ```no_run
/// # async fn run() -> Result<(), broker_sdk::Error> {
/// use broker_sdk::{ApprovalClient, ApprovalFilter, ApprovalStatus};
/// let approvals = ApprovalClient::connect("http://127.0.0.1:50051", "approver-jwt".to_owned()).await?;
/// let page = approvals
///     .list(ApprovalFilter::new().status(ApprovalStatus::Pending))
///     .await?;
/// for approval in &page.approvals {
///     println!("{} {} {}", approval.approval_id, approval.tool, approval.arguments_redacted_json);
/// }
///
/// // Or follow them live, as a console does.
/// let mut watch = approvals.watch().await?;
/// while let Some(approval) = watch.next().await {
///     let approval = approval?;
///     if approval.is_pending() && approval.tool == "payments.refund" {
///         approvals.approve(&approval.approval_id, "checked with the customer").await?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ApprovalClient {
    inner: ApprovalServiceClient<Channel>,
    rpc: Rpc,
}

impl ApprovalClient {
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
            inner: ApprovalServiceClient::new(channel),
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

    /// One page of the approvals matching `filter`.
    pub async fn list(&self, filter: ApprovalFilter) -> Result<ApprovalPage, Error> {
        let mut inner = self.inner.clone();
        let page = self
            .rpc
            .call(filter.into_proto(), |req| async move {
                inner.list_approvals(req).await
            })
            .await?;
        ApprovalPage::try_from(page)
    }

    /// The approval `approval_id`.
    pub async fn get(&self, approval_id: &str) -> Result<Approval, Error> {
        let mut inner = self.inner.clone();
        let message = proto::GetApprovalRequest {
            approval_id: approval_id.to_owned(),
        };
        let approval = self
            .rpc
            .call(message, |req| async move { inner.get_approval(req).await })
            .await?;
        Approval::try_from(approval)
    }

    /// Says yes to the pending approval `approval_id`, recording `comment` (may be empty) in the audit
    /// trail. The approval becomes APPROVED once enough approvers of each required group said yes.
    pub async fn approve(&self, approval_id: &str, comment: &str) -> Result<Approval, Error> {
        let mut inner = self.inner.clone();
        let message = proto::ApproveRequest {
            approval_id: approval_id.to_owned(),
            comment: comment.to_owned(),
        };
        let approval = self
            .rpc
            .call(message, |req| async move { inner.approve(req).await })
            .await?;
        Approval::try_from(approval)
    }

    /// Says no to the pending approval `approval_id`, recording `comment` (may be empty) in the audit
    /// trail; one no denies the approval, and the waiting call is denied with `APPROVAL_DENIED`.
    pub async fn deny(&self, approval_id: &str, comment: &str) -> Result<Approval, Error> {
        let mut inner = self.inner.clone();
        let message = proto::DenyRequest {
            approval_id: approval_id.to_owned(),
            comment: comment.to_owned(),
        };
        let approval = self
            .rpc
            .call(message, |req| async move { inner.deny(req).await })
            .await?;
        Approval::try_from(approval)
    }

    /// Opens a watch: first the pending approvals, then every new or changed approval as it happens.
    ///
    /// The deadline bounds opening the stream; the stream itself stays open until the broker ends it or
    /// the [`ApprovalWatch`] is dropped (a dead connection is detected by HTTP/2 keep-alive, see
    /// [`KEEP_ALIVE_TIMEOUT`](crate::KEEP_ALIVE_TIMEOUT)).
    pub async fn watch(&self) -> Result<ApprovalWatch, Error> {
        let mut inner = self.inner.clone();
        let stream = self
            .rpc
            .open_stream(proto::WatchApprovalsRequest {}, |req| async move {
                inner.watch_approvals(req).await
            })
            .await?;
        Ok(ApprovalWatch {
            stream: Watched::new(stream),
        })
    }
}

impl fmt::Debug for ApprovalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalClient")
            .field("timeout", &self.rpc.timeout())
            .finish_non_exhaustive()
    }
}

/// An open watch of the broker's approvals, from [`ApprovalClient::watch`].
///
/// Dropping it cancels the stream.
pub struct ApprovalWatch {
    stream: Watched<proto::Approval>,
}

impl ApprovalWatch {
    /// The next new or changed approval; `None` once the broker has ended the stream.
    ///
    /// An error ends the watch (every later call returns `None`): an approval the SDK cannot read is an
    /// [`Error::Protocol`], and skipping it would leave the caller with a wrong picture of what waits.
    /// Open a new watch to start again from the pending approvals.
    pub async fn next(&mut self) -> Option<Result<Approval, Error>> {
        self.stream.next(Approval::try_from).await
    }

    /// Whether the watch has ended (the broker ended the stream, or an error ended the watch).
    pub fn is_ended(&self) -> bool {
        self.stream.is_ended()
    }
}

impl fmt::Debug for ApprovalWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalWatch")
            .field("ended", &self.is_ended())
            .finish()
    }
}
