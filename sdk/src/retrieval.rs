//! Retrieval authorization from the agent's side: decide a batch of candidate documents (post-filter),
//! ask for the filter to put into the vector-store query (pre-filter), and report tool results so their
//! labels join the session. [`Client::retrieve`](crate::Client::retrieve) does filter, query and report
//! in one call.

use broker_proto::v1 as proto;

use crate::{Client, Error, Outcome, Reason, Session};

/// The broker's answer for one candidate document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentDecision {
    /// The candidate's id, as sent.
    pub id: String,
    /// ALLOW: the agent may use it; DENY: withheld.
    pub outcome: Outcome,
    /// Why (the deciding policies, or what was wrong with the metadata).
    pub reasons: Vec<Reason>,
}

/// The answer for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievalDecision {
    /// The batch's id in the audit trail.
    pub decision_id: String,
    /// One per candidate, in input order.
    pub documents: Vec<DocumentDecision>,
    /// The ids the agent may use, in input order.
    pub allowed_ids: Vec<String>,
    /// The policy set that decided.
    pub policy_version: String,
    /// The session's labels after this retrieval.
    pub session_labels: Vec<String>,
}

/// The pre-filter: JSON in the broker's filter language (see [`crate::filter_admits`]).
///
/// The broker cannot see what a query run with it returns, so answering it taints the session: the
/// labels the policies test that an admitted document may carry ([`Self::admitted_labels`]) have joined
/// the session's labels already. Exclude labels you want none of with
/// [`Client::retrieval_filter_excluding`] to keep them out.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalFilter {
    /// The condition, in the broker's filter language.
    pub filter: serde_json::Value,
    /// False when some policy could not be expressed: post-filter with [`Client::authorize_retrieval`].
    pub complete: bool,
    /// The policy set it was computed from.
    pub policy_version: String,
    /// The answer's id in the audit trail (its `RETRIEVAL_FILTERED` event).
    pub decision_id: String,
    /// Labels the policies test that an admitted document may carry: they joined the session.
    pub admitted_labels: Vec<String>,
    /// The session's labels after this answer.
    pub session_labels: Vec<String>,
}

impl Client {
    /// Decides candidate documents `(id, metadata)`. Fail closed: an error means nothing was allowed.
    pub async fn authorize_retrieval(
        &self,
        session_id: &str,
        documents: &[(&str, &serde_json::Value)],
    ) -> Result<RetrievalDecision, Error> {
        let mut inner = self.agent_client();
        let message = proto::AuthorizeRetrievalRequest {
            session_id: session_id.to_owned(),
            documents: documents
                .iter()
                .map(|(id, attrs)| proto::Document {
                    id: (*id).to_owned(),
                    attributes_json: attrs.to_string(),
                })
                .collect(),
        };
        let r = self
            .rpc()
            .call(message, |req| async move {
                inner.authorize_retrieval(req).await
            })
            .await?;
        if r.documents.len() != documents.len() {
            return Err(Error::Protocol(format!(
                "the broker decided {} of {} documents",
                r.documents.len(),
                documents.len()
            )));
        }
        let decided = r
            .documents
            .into_iter()
            .map(|d| {
                Ok(DocumentDecision {
                    id: d.id,
                    outcome: Outcome::from_proto(d.outcome)?,
                    reasons: d.reasons.into_iter().map(Reason::from).collect(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Only ids the broker allowed *and* that were asked about count.
        let allowed: Vec<String> = decided
            .iter()
            .filter(|d| d.outcome == Outcome::Allow)
            .map(|d| d.id.clone())
            .collect();
        if allowed != r.allowed_ids {
            return Err(Error::Protocol(
                "the broker's allowed ids disagree with its per-document outcomes".into(),
            ));
        }
        Ok(RetrievalDecision {
            decision_id: r.decision_id,
            documents: decided,
            allowed_ids: allowed,
            policy_version: r.policy_version,
            session_labels: r.session_labels,
        })
    }

    /// The pre-filter for this session's retrievals. Recorded, and it taints the session with the labels
    /// it may admit (see [`RetrievalFilter`]).
    pub async fn retrieval_filter(&self, session_id: &str) -> Result<RetrievalFilter, Error> {
        self.retrieval_filter_excluding(session_id, &[]).await
    }

    /// The pre-filter, also excluding every document whose `labels` hold one of `exclude_labels`: those
    /// labels then cannot taint the session (e.g. `&["confidential"]` keeps external tools usable under
    /// the example policies, at the cost of never retrieving confidential documents in this call).
    pub async fn retrieval_filter_excluding(
        &self,
        session_id: &str,
        exclude_labels: &[&str],
    ) -> Result<RetrievalFilter, Error> {
        let mut inner = self.agent_client();
        let message = proto::RetrievalFilterRequest {
            session_id: session_id.to_owned(),
            exclude_labels: exclude_labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        let r = self
            .rpc()
            .call(
                message,
                |req| async move { inner.retrieval_filter(req).await },
            )
            .await?;
        let filter = serde_json::from_str(&r.filter_json).map_err(|e| {
            Error::Protocol(format!("the broker sent a filter that is not JSON: {e}"))
        })?;
        Ok(RetrievalFilter {
            filter,
            complete: r.complete,
            policy_version: r.policy_version,
            decision_id: r.decision_id,
            admitted_labels: r.admitted_labels,
            session_labels: r.session_labels,
        })
    }

    /// Reports what the tool of an allowed call returned; its labels (e.g. `untrusted`) join the session.
    pub async fn report_tool_result(
        &self,
        session_id: &str,
        decision_id: &str,
        ok: bool,
        labels: &[&str],
    ) -> Result<Session, Error> {
        let mut inner = self.agent_client();
        let message = proto::ReportToolResultRequest {
            decision_id: decision_id.to_owned(),
            session_id: session_id.to_owned(),
            status: if ok { "ok" } else { "error" }.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        let s = self
            .rpc()
            .call(
                message,
                |req| async move { inner.report_tool_result(req).await },
            )
            .await?;
        Session::try_from(s)
    }
}
