//! `broker.v1.AgentService`.

use broker_proto::v1 as pb;
use broker_proto::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::{authn, convert, status};
use crate::clock::SharedClock;
use crate::domain::broker::{Broker, OpenSession, ToolCallRequest};
use crate::domain::retrieving::Candidate;

pub struct AgentApi {
    pub broker: Broker,
    pub clock: SharedClock,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    #[tracing::instrument(name = "OpenSession", skip_all, fields(agent, session_id))]
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = authn::principal(&req)?;
        tracing::Span::current().record("agent", caller.subject.as_str());
        let r = req.into_inner();
        convert::no_nul("tools", &r.tools)?;
        convert::no_nul("purpose", [&r.purpose])?;
        convert::no_nul("collections", &r.collections)?;
        convert::no_nul("parent_session_id", [&r.parent_session_id])?;
        let ttl = r
            .ttl
            .map(|d| {
                std::time::Duration::try_from(d)
                    .map_err(|_| status::invalid("ttl", "must not be negative"))
            })
            .transpose()?;
        let parent_session_id = (!r.parent_session_id.is_empty()).then_some(r.parent_session_id);
        let open = OpenSession {
            collections: r.collections,
            parent_session_id,
            tools: r.tools,
            ttl,
            max_tool_calls: r.max_tool_calls,
            purpose: r.purpose,
        };
        let session = self
            .broker
            .open_session(&caller, open)
            .await
            .map_err(status::from_domain)?;
        tracing::Span::current().record("session_id", session.id.as_str());
        Ok(Response::new(convert::session(
            &session,
            self.clock.now_micros(),
        )))
    }

    #[tracing::instrument(name = "CloseSession", skip_all, fields(agent, session_id))]
    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        tracing::Span::current()
            .record("agent", caller.subject.as_str())
            .record("session_id", r.session_id.as_str());
        convert::no_nul("session_id", [&r.session_id])?;
        let session = self
            .broker
            .close_session(&caller, &r.session_id)
            .await
            .map_err(status::from_domain)?;
        Ok(Response::new(convert::session(
            &session,
            self.clock.now_micros(),
        )))
    }

    #[tracing::instrument(
        name = "AuthorizeToolCall",
        skip_all,
        fields(agent, session_id, tool, decision, decision_id)
    )]
    async fn authorize_tool_call(
        &self,
        req: Request<pb::AuthorizeToolCallRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        let span = tracing::Span::current();
        span.record("agent", caller.subject.as_str())
            .record("session_id", r.session_id.as_str())
            .record("tool", r.tool.as_str());
        convert::no_nul("session_id", [&r.session_id])?;
        convert::no_nul("tool", [&r.tool])?;
        convert::no_nul("call_id", [&r.call_id])?;
        let call = ToolCallRequest {
            session_id: r.session_id,
            tool: r.tool,
            arguments_json: r.arguments_json,
            call_id: r.call_id,
        };
        // The decision is committed by the store's writer task, which outlives this future: a client that
        // cancels mid-flight cannot leave an ALLOW half-recorded.
        let decision = self
            .broker
            .authorize(&caller, call)
            .await
            .map_err(status::from_domain)?;
        span.record("decision", decision.outcome.as_str())
            .record("decision_id", decision.decision_id.as_str());
        // Debug, not info: the audit trail already records every decision, and a log line per decision
        // was a twentieth of the broker's CPU under load.
        tracing::debug!("decided");
        Ok(Response::new(convert::decision(&decision)))
    }

    #[tracing::instrument(name = "AwaitApproval", skip_all, fields(agent, approval_id, decision))]
    async fn await_approval(
        &self,
        req: Request<pb::AwaitApprovalRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        let span = tracing::Span::current();
        span.record("agent", caller.subject.as_str())
            .record("approval_id", r.approval_id.as_str());
        convert::no_nul("approval_id", [&r.approval_id])?;
        let wait = r
            .timeout
            .map(|d| {
                std::time::Duration::try_from(d)
                    .map_err(|_| status::invalid("timeout", "must not be negative"))
            })
            .transpose()?
            .unwrap_or_default();
        let decision = self
            .broker
            .await_approval(&caller, &r.approval_id, wait)
            .await
            .map_err(status::from_domain)?;
        span.record("decision", decision.outcome.as_str());
        Ok(Response::new(convert::decision(&decision)))
    }

    #[tracing::instrument(
        name = "AuthorizeRetrieval",
        skip_all,
        fields(agent, session_id, documents, allowed)
    )]
    async fn authorize_retrieval(
        &self,
        req: Request<pb::AuthorizeRetrievalRequest>,
    ) -> Result<Response<pb::RetrievalDecision>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        let span = tracing::Span::current();
        span.record("agent", caller.subject.as_str())
            .record("session_id", r.session_id.as_str())
            .record("documents", r.documents.len());
        convert::no_nul("session_id", [&r.session_id])?;
        // Ids are echoed back and recorded in the trail.
        convert::no_nul("documents", r.documents.iter().map(|d| &d.id))?;
        let candidates = r
            .documents
            .into_iter()
            .map(|d| Candidate {
                id: d.id,
                attributes_json: d.attributes_json,
            })
            .collect();
        let out = self
            .broker
            .authorize_retrieval(&caller, &r.session_id, candidates)
            .await
            .map_err(status::from_domain)?;
        span.record("allowed", out.allowed_ids.len());
        Ok(Response::new(convert::retrieval(out)))
    }

    #[tracing::instrument(
        name = "RetrievalFilter",
        skip_all,
        fields(agent, session_id, complete)
    )]
    async fn retrieval_filter(
        &self,
        req: Request<pb::RetrievalFilterRequest>,
    ) -> Result<Response<pb::RetrievalFilterResponse>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        let span = tracing::Span::current();
        span.record("agent", caller.subject.as_str())
            .record("session_id", r.session_id.as_str());
        convert::no_nul("session_id", [&r.session_id])?;
        convert::no_nul("exclude_labels", &r.exclude_labels)?;
        let a = self
            .broker
            .retrieval_filter(&caller, &r.session_id, r.exclude_labels)
            .await
            .map_err(status::from_domain)?;
        span.record("complete", a.filter.complete);
        Ok(Response::new(pb::RetrievalFilterResponse {
            filter_json: a.filter_json,
            complete: a.filter.complete,
            policy_version: a.policy_version,
            decision_id: a.decision_id,
            admitted_labels: a.admitted_labels,
            session_labels: a.session_labels,
        }))
    }

    #[tracing::instrument(
        name = "ReportToolResult",
        skip_all,
        fields(agent, session_id, decision_id)
    )]
    async fn report_tool_result(
        &self,
        req: Request<pb::ReportToolResultRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = authn::principal(&req)?;
        let r = req.into_inner();
        tracing::Span::current()
            .record("agent", caller.subject.as_str())
            .record("session_id", r.session_id.as_str())
            .record("decision_id", r.decision_id.as_str());
        convert::no_nul("session_id", [&r.session_id])?;
        convert::no_nul("decision_id", [&r.decision_id])?;
        convert::no_nul("status", [&r.status])?;
        convert::no_nul("labels", &r.labels)?;
        let s = self
            .broker
            .report_tool_result(&caller, &r.session_id, &r.decision_id, &r.status, r.labels)
            .await
            .map_err(status::from_domain)?;
        Ok(Response::new(convert::session(&s, self.clock.now_micros())))
    }
}
