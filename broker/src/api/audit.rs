//! `broker.v1.AuditService`.

use broker_proto::v1 as pb;
use broker_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::{authn, convert, status};
use crate::domain::broker::Broker;

pub struct AuditApi {
    pub broker: Broker,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    #[tracing::instrument(name = "ListAuditEvents", skip_all, fields(caller))]
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = authn::principal(&req)?;
        tracing::Span::current().record("caller", caller.subject.as_str());
        let (filter, page) = convert::event_query(req.into_inner())?;
        let (events, next) = self
            .broker
            .list_events(&caller, filter, page)
            .await
            .map_err(status::from_domain)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(convert::event).collect(),
            next_page_token: next.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "VerifyAuditChain", skip_all, fields(caller))]
    async fn verify_audit_chain(
        &self,
        req: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let caller = authn::principal(&req)?;
        tracing::Span::current().record("caller", caller.subject.as_str());
        let report = self
            .broker
            .verify_chain(&caller)
            .await
            .map_err(status::from_domain)?;
        let brk = report.first_break.as_ref();
        Ok(Response::new(pb::VerifyAuditChainResponse {
            ok: report.ok,
            events_checked: report.events_checked,
            first_bad_seq: brk.map_or(0, |b| u64::try_from(b.seq).unwrap_or_default()),
            first_bad_event_id: brk.map(|b| b.event_id.clone()).unwrap_or_default(),
            problem: brk.map(|b| b.problem.clone()).unwrap_or_default(),
        }))
    }
}
