//! `broker.v1.ApprovalService`.

use std::pin::Pin;

use broker_proto::v1 as pb;
use broker_proto::v1::approval_service_server::ApprovalService;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{authn, convert, status};
use crate::domain::approval::{ApprovalStatus, Vote};
use crate::domain::broker::Broker;
use crate::domain::tenancy::TenantScope;
use crate::store::ApprovalFilter;

pub struct ApprovalApi {
    pub broker: Broker,
    /// Flips when the server stops, ending watch streams (see `killswitch`).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type ApprovalStream = Pin<Box<dyn Stream<Item = Result<pb::Approval, Status>> + Send>>;

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {
    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        let status = match pb::ApprovalStatus::try_from(r.status)
            .map_err(|_| status::invalid("status", "unknown status"))?
        {
            pb::ApprovalStatus::Unspecified => None,
            pb::ApprovalStatus::Pending => Some(ApprovalStatus::Pending),
            pb::ApprovalStatus::Approved => Some(ApprovalStatus::Approved),
            pb::ApprovalStatus::Denied => Some(ApprovalStatus::Denied),
            pb::ApprovalStatus::Expired => Some(ApprovalStatus::Expired),
            pb::ApprovalStatus::Cancelled => Some(ApprovalStatus::Cancelled),
        };
        convert::no_nul("tool", [&r.tool])?;
        convert::no_nul("agent", [&r.agent])?;
        convert::no_nul("page_token", [&r.page_token])?;
        let page = convert::page(r.page_size, &r.page_token)?;
        let filter = ApprovalFilter {
            status,
            tool: non_empty(r.tool),
            agent: non_empty(r.agent),
            // Set by the domain from the caller.
            tenant: TenantScope::default(),
        };
        let (approvals, next) = self
            .broker
            .list_approvals(&caller, filter, page)
            .await
            .map_err(status::from_domain)?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: approvals.iter().map(convert::approval).collect(),
            next_page_token: next.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_approval(
        &self,
        req: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let caller = authn::principal(&req)?;
        let approval_id = req.into_inner().approval_id;
        convert::no_nul("approval_id", [&approval_id])?;
        let a = self
            .broker
            .get_approval(&caller, &approval_id)
            .await
            .map_err(status::from_domain)?;
        Ok(Response::new(convert::approval(&a)))
    }

    #[tracing::instrument(name = "Approve", skip_all, fields(approver, approval_id))]
    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        tracing::Span::current()
            .record("approver", caller.subject.as_str())
            .record("approval_id", r.approval_id.as_str());
        convert::no_nul("approval_id", [&r.approval_id])?;
        convert::no_nul("comment", [&r.comment])?;
        let a = self
            .broker
            .vote(&caller, &r.approval_id, Vote::Approve, &r.comment)
            .await
            .map_err(status::from_domain)?;
        tracing::info!(status = a.status.as_str(), "approval vote counted");
        Ok(Response::new(convert::approval(&a)))
    }

    #[tracing::instrument(name = "Deny", skip_all, fields(approver, approval_id))]
    async fn deny(&self, req: Request<pb::DenyRequest>) -> Result<Response<pb::Approval>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        tracing::Span::current()
            .record("approver", caller.subject.as_str())
            .record("approval_id", r.approval_id.as_str());
        convert::no_nul("approval_id", [&r.approval_id])?;
        convert::no_nul("comment", [&r.comment])?;
        let a = self
            .broker
            .vote(&caller, &r.approval_id, Vote::Deny, &r.comment)
            .await
            .map_err(status::from_domain)?;
        tracing::info!(status = a.status.as_str(), "approval denied");
        Ok(Response::new(convert::approval(&a)))
    }

    type WatchApprovalsStream = ApprovalStream;

    async fn watch_approvals(
        &self,
        req: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<ApprovalStream>, Status> {
        let caller = authn::principal(&req)?;
        let (pending, changes, scope) = self
            .broker
            .watch_approvals(&caller)
            .await
            .map_err(status::from_domain)?;
        let first: Vec<Result<pb::Approval, Status>> =
            pending.iter().map(|a| Ok(convert::approval(a))).collect();
        let updates = BroadcastStream::new(changes).filter_map(move |c| match c {
            Ok(a) if scope.sees(a.tenant.as_deref()) => Some(Ok(convert::approval(&a))),
            // Another tenant's change: not this watcher's to see.
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(format!(
                "watcher fell {n} changes behind; watch again"
            )))),
        });
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let stream =
            futures::StreamExt::take_until(tokio_stream::iter(first).chain(updates), stopped);
        Ok(Response::new(Box::pin(stream)))
    }
}
