//! Retrieval on the broker: deciding a batch of candidate documents (post-filter), the pre-filter for the
//! vector-store query, and taint: labels from what the session read (allowed documents, reported tool
//! results) join the session's labels, durably, and policies see them as `context.session.labels`.

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::audit::{EventBody, EventKind};
use super::broker::{invalid, require, session_facts, tenant_mismatch, Broker, Error};
use super::decision::{Outcome, Reason, ReasonCode};
use super::session::{Session, SessionState};
use super::tenancy;
use crate::auth::{Principal, Role};
use crate::ids;
use crate::policy::{Caller, RetrievalFilter};

/// Batches of more documents than this are decided on a blocking thread: 1,000 documents take about
/// 10 ms, and decided on a runtime worker they would hold up every call queued behind them there.
const INLINE_DOCUMENTS: usize = 64;

pub const MAX_DOCUMENT_ID_LEN: usize = 512;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_LEN: usize = 64;

/// A filter's text is recorded in its event up to this size; its SHA-256 always.
const MAX_RECORDED_FILTER_BYTES: usize = 4096;

/// One candidate as received: its id and its metadata as JSON text.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub attributes_json: String,
}

#[derive(Debug, Clone)]
pub struct DocumentVerdict {
    pub id: String,
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
}

/// A pre-filter answer, as recorded.
#[derive(Debug, Clone)]
pub struct FilterAnswer {
    /// The id of its `RETRIEVAL_FILTERED` event.
    pub decision_id: String,
    pub filter: RetrievalFilter,
    /// `filter.filter` as sent, the text the event's digest is of.
    pub filter_json: String,
    pub policy_version: String,
    /// Labels the filter may admit documents with, which joined the session.
    pub admitted_labels: Vec<String>,
    pub session_labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RetrievalOutcome {
    pub decision_id: String,
    pub documents: Vec<DocumentVerdict>,
    pub allowed_ids: Vec<String>,
    pub policy_version: String,
    pub session_labels: Vec<String>,
}

/// Labels are short machine words: `untrusted`, `pii`, `source:web`.
pub fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= MAX_LABEL_LEN
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-:.".contains(&b))
}

fn caller_facts(caller: &Principal) -> Caller<'_> {
    Caller {
        agent: &caller.subject,
        user: caller.user.as_deref(),
        tenant: caller.tenant.as_deref(),
        roles: caller.roles.iter().map(|r| r.as_str()).collect(),
    }
}

impl Broker {
    /// The caller's own session, open and unexpired, or the reason it cannot be used.
    async fn usable_session(
        &self,
        caller: &Principal,
        session_id: &str,
    ) -> Result<Result<Session, Reason>, Error> {
        if !ids::is_well_formed(session_id, "ses_") {
            return Err(invalid(
                "session_id",
                "not a session id (`ses_` and 32 hex digits)",
            ));
        }
        let now = self.now();
        Ok(match self.bounded(self.store.session(session_id)).await? {
            None => Err(Reason::new(
                ReasonCode::SessionNotFound,
                format!("no session `{session_id}`"),
            )),
            Some(s) if s.agent != caller.subject || s.user != caller.user => Err(Reason::new(
                ReasonCode::SessionNotOwned,
                format!("session `{session_id}` belongs to another agent or user"),
            )),
            // Refused outright, not a DENY per document: nothing is recorded in another tenant's session.
            Some(s) if !tenancy::same_tenant(caller, s.tenant.as_deref()) => {
                return Err(tenant_mismatch("session", session_id))
            }
            Some(s) => match s.state(now) {
                SessionState::Closed => Err(Reason::new(
                    ReasonCode::SessionClosed,
                    format!("session `{session_id}` is closed"),
                )),
                SessionState::Expired => Err(Reason::new(
                    ReasonCode::SessionExpired,
                    format!("session `{session_id}` has expired"),
                )),
                SessionState::Open => Ok(s),
            },
        })
    }

    /// Decides each candidate; one audit event for the batch; allowed documents' labels join the session.
    pub async fn authorize_retrieval(
        &self,
        caller: &Principal,
        session_id: &str,
        candidates: Vec<Candidate>,
    ) -> Result<RetrievalOutcome, Error> {
        require(caller, Role::Agent)?;
        let limits = &self.settings.limits;
        if candidates.len() > limits.max_retrieval_batch {
            return Err(invalid(
                "documents",
                format!(
                    "{} documents; at most {} per call",
                    candidates.len(),
                    limits.max_retrieval_batch
                ),
            ));
        }
        if let Some(bad) = candidates
            .iter()
            .find(|c| c.id.is_empty() || c.id.len() > MAX_DOCUMENT_ID_LEN)
        {
            return Err(invalid(
                "documents",
                format!(
                    "document id `{}` must be 1 to {MAX_DOCUMENT_ID_LEN} bytes",
                    bad.id.chars().take(64).collect::<String>()
                ),
            ));
        }
        let now = self.now();
        let engine = self.policies();
        let decision_id = ids::decision_id();
        // Malformed metadata denies that document alone.
        let parsed: Vec<Result<Value, String>> = candidates
            .iter()
            .map(|c| {
                if c.attributes_json.len() > limits.max_arguments_bytes {
                    return Err(format!(
                        "document `{}`: attributes larger than {} bytes",
                        c.id, limits.max_arguments_bytes
                    ));
                }
                // Strict: a key named twice is refused, never resolved to one of its values.
                let attributes = crate::json::from_str(&c.attributes_json)
                    .map_err(|e| format!("document `{}`: attributes: {e}", c.id))?;
                // Labels become session labels that policies match exactly: the same rule as for
                // reported tool results, so `Untrusted` or `untrusted\u{200b}` cannot pass for another.
                let bad_label = attributes
                    .get("labels")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|l| !is_label(l));
                match bad_label {
                    Some(l) => Err(format!(
                        "document `{}`: `labels`: `{}` is not a label (lowercase letters, digits and \
                         `_-:.`, 1 to {MAX_LABEL_LEN} characters)",
                        c.id,
                        crate::domain::session::visible(l)
                    )),
                    None => Ok(attributes),
                }
            })
            .collect();

        let session = self.usable_session(caller, session_id).await?;
        let killed = match &session {
            Ok(s) => self.kill_check_session(caller, None, s, now),
            Err(_) => self.kill_check(caller, None, Some(session_id), now),
        };
        let mut verdicts: Vec<(Outcome, Vec<Reason>)> = match (&session, killed) {
            (_, Some(k)) => candidates
                .iter()
                .map(|_| (Outcome::Deny, vec![k.clone()]))
                .collect(),
            (Err(r), None) => candidates
                .iter()
                .map(|_| (Outcome::Deny, vec![r.clone()]))
                .collect(),
            (Ok(s), None) => {
                let ok: Vec<(usize, &str, &Value)> = parsed
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        p.as_ref()
                            .ok()
                            .map(|v| (i, candidates.get(i).map_or("", |c| c.id.as_str()), v))
                    })
                    .collect();
                let docs: Vec<(&str, &Value)> = ok.iter().map(|(_, id, v)| (*id, *v)).collect();
                let decided = if docs.len() <= INLINE_DOCUMENTS {
                    engine.decide_retrieval(&caller_facts(caller), &session_facts(s), &docs)
                } else {
                    let owned: Vec<(String, Value)> = docs
                        .iter()
                        .map(|(id, v)| ((*id).to_owned(), (*v).clone()))
                        .collect();
                    let (engine, caller, s) = (Arc::clone(&engine), caller.clone(), s.clone());
                    tokio::task::spawn_blocking(move || {
                        let docs: Vec<(&str, &Value)> =
                            owned.iter().map(|(id, v)| (id.as_str(), v)).collect();
                        engine.decide_retrieval(&caller_facts(&caller), &session_facts(&s), &docs)
                    })
                    .await
                    .map_err(|e| {
                        Error::Internal(format!("deciding the retrieval batch failed: {e}"))
                    })?
                };
                let mut out: Vec<(Outcome, Vec<Reason>)> = parsed
                    .iter()
                    .map(|p| match p {
                        Ok(_) => (
                            Outcome::Deny,
                            vec![Reason::new(ReasonCode::PolicyError, "not decided")],
                        ),
                        Err(e) => (
                            Outcome::Deny,
                            vec![Reason::new(ReasonCode::InvalidArguments, e.clone())],
                        ),
                    })
                    .collect();
                for ((i, _, _), v) in ok.iter().zip(decided) {
                    if let Some(slot) = out.get_mut(*i) {
                        *slot = (v.outcome, v.reasons);
                    }
                }
                out
            }
        };
        // Retrieval has no approval step: anything but ALLOW withholds the document.
        for v in &mut verdicts {
            if v.0 == Outcome::PendingApproval {
                v.0 = Outcome::Deny;
            }
        }
        let documents: Vec<DocumentVerdict> = candidates
            .iter()
            .zip(verdicts)
            .map(|(c, (outcome, reasons))| DocumentVerdict {
                id: c.id.clone(),
                outcome,
                reasons,
            })
            .collect();
        let allowed_ids: Vec<String> = documents
            .iter()
            .filter(|d| d.outcome == Outcome::Allow)
            .map(|d| d.id.clone())
            .collect();
        let mut labels: Vec<String> = documents
            .iter()
            .zip(&parsed)
            .filter(|(d, _)| d.outcome == Outcome::Allow)
            .filter_map(|(_, p)| p.as_ref().ok())
            .filter_map(|v| v.get("labels").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        labels.sort();
        labels.dedup();
        let denied: Vec<Value> = documents
            .iter()
            .filter(|d| d.outcome != Outcome::Allow)
            .map(|d| json!({"id": d.id, "codes": d.reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>()}))
            .collect();
        let event = EventBody {
            decision_id: Some(decision_id.clone()),
            policy_version: Some(engine.version().to_owned()),
            outcome: None,
            detail: Some(
                json!({"allowed": allowed_ids, "denied": denied, "labels_added": labels})
                    .to_string(),
            ),
            ..EventBody::in_session(
                EventKind::RetrievalDecided,
                &caller.subject,
                caller.user.clone(),
                session_id,
                now,
            )
        };
        // The batch is recorded (and the labels stick) before any document id leaves the broker.
        let labelled = self
            .store
            .add_session_labels(session_id, &labels, event, now)
            .await;
        self.sessions.forget(session_id);
        let session_labels = match labelled? {
            Some(s) => s.labels,
            None => Vec::new(),
        };
        Ok(RetrievalOutcome {
            decision_id,
            documents,
            allowed_ids,
            policy_version: engine.version().to_owned(),
            session_labels,
        })
    }

    /// A tool's result: its labels join the session's (taint); recorded in the audit trail.
    pub async fn report_tool_result(
        &self,
        caller: &Principal,
        session_id: &str,
        decision_id: &str,
        status: &str,
        labels: Vec<String>,
    ) -> Result<Session, Error> {
        require(caller, Role::Agent)?;
        if !ids::is_well_formed(decision_id, "dec_") {
            return Err(invalid(
                "decision_id",
                "not a decision id (`dec_` and 32 hex digits)",
            ));
        }
        if !matches!(status, "ok" | "error") {
            return Err(invalid("status", "`ok` or `error`"));
        }
        if labels.len() > MAX_LABELS || labels.iter().any(|l| !is_label(l)) {
            return Err(invalid("labels", format!("at most {MAX_LABELS} labels of lowercase letters, digits and `_-:.`, 1 to {MAX_LABEL_LEN} characters")));
        }
        let session = match self.usable_session(caller, session_id).await? {
            Ok(s) => s,
            Err(r)
                if r.code == ReasonCode::SessionNotFound
                    || r.code == ReasonCode::SessionNotOwned =>
            {
                return Err(Error::NotFound(format!(
                    "no session `{session_id}` for this agent"
                )))
            }
            // A closed or expired session still records what its tools returned.
            Err(_) => self
                .store
                .session(session_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no session `{session_id}`")))?,
        };
        let now = self.now();
        let event = EventBody {
            decision_id: Some(decision_id.to_owned()),
            detail: Some(json!({"status": status, "labels": labels}).to_string()),
            ..EventBody::in_session(
                EventKind::ToolResultReported,
                &caller.subject,
                caller.user.clone(),
                &session.id,
                now,
            )
        };
        let labelled = self
            .store
            .add_session_labels(&session.id, &labels, event, now)
            .await;
        self.sessions.forget(&session.id);
        labelled?.ok_or_else(|| Error::NotFound(format!("no session `{session_id}`")))
    }

    /// The pre-filter: when a document would be allowed in this session, excluding documents carrying
    /// any of `exclude_labels`. The broker never sees what the pipeline's query returns, so the answer
    /// taints the session at once: the labels the policies test that an admitted document may carry
    /// (`PolicyEngine::filter_taint`) join its labels, in the same writer transaction as the answer's
    /// `RETRIEVAL_FILTERED` event, before the answer leaves. Policies that read the labels in a way that
    /// cannot be tainted for get the filter `false`, incomplete: the pipeline post-filters then.
    pub async fn retrieval_filter(
        &self,
        caller: &Principal,
        session_id: &str,
        exclude_labels: Vec<String>,
    ) -> Result<FilterAnswer, Error> {
        require(caller, Role::Agent)?;
        if exclude_labels.len() > MAX_LABELS || exclude_labels.iter().any(|l| !is_label(l)) {
            return Err(invalid("exclude_labels", format!("at most {MAX_LABELS} labels of lowercase letters, digits and `_-:.`, 1 to {MAX_LABEL_LEN} characters")));
        }
        let mut exclude_labels = exclude_labels;
        exclude_labels.sort();
        exclude_labels.dedup();
        let engine = self.policies();
        let now = self.now();
        let nothing = |complete| RetrievalFilter {
            filter: json!(false),
            complete,
        };
        // What the filter is, and why it admits nothing when it does not come from the policies.
        let (filter, taint, why): (RetrievalFilter, Vec<String>, Option<Reason>) =
            match self.usable_session(caller, session_id).await? {
                // As for a tool result: no event in a session that is not the caller's.
                Err(r)
                    if r.code == ReasonCode::SessionNotFound
                        || r.code == ReasonCode::SessionNotOwned =>
                {
                    return Err(Error::NotFound(format!(
                        "no session `{session_id}` for this agent"
                    )))
                }
                // A session that cannot retrieve admits nothing.
                Err(r) => (nothing(true), Vec::new(), Some(r)),
                Ok(s) => match self.kill_check_session(caller, None, &s, now) {
                    Some(k) => (nothing(true), Vec::new(), Some(k)),
                    None => {
                        let f = engine.retrieval_filter_excluding(
                            &caller_facts(caller),
                            &session_facts(&s),
                            &exclude_labels,
                        );
                        match engine.filter_taint(&f.filter) {
                            Ok(taint) => (f, taint, None),
                            Err(e) => (
                                nothing(false),
                                Vec::new(),
                                Some(Reason::new(ReasonCode::PolicyError, e)),
                            ),
                        }
                    }
                },
            };
        let decision_id = ids::decision_id();
        let filter_json = filter.filter.to_string();
        let mut detail = json!({
            "filter_sha256": crate::hexstr::encode(&Sha256::digest(filter_json.as_bytes())),
            "complete": filter.complete,
            "exclude_labels": exclude_labels,
            "labels_added": taint,
        });
        // The text too while it is short (the digest always names it: SHA-256 of `filter_json`).
        if filter_json.len() <= MAX_RECORDED_FILTER_BYTES {
            if let Some(d) = detail.as_object_mut() {
                d.insert("filter".to_owned(), json!(filter_json));
            }
        }
        let event = EventBody {
            decision_id: Some(decision_id.clone()),
            policy_version: Some(engine.version().to_owned()),
            reasons: why.into_iter().collect(),
            detail: Some(detail.to_string()),
            ..EventBody::in_session(
                EventKind::RetrievalFiltered,
                &caller.subject,
                caller.user.clone(),
                session_id,
                now,
            )
        };
        let labelled = self
            .store
            .add_session_labels(session_id, &taint, event, now)
            .await;
        self.sessions.forget(session_id);
        let session =
            labelled?.ok_or_else(|| Error::NotFound(format!("no session `{session_id}`")))?;
        Ok(FilterAnswer {
            decision_id,
            filter,
            filter_json,
            policy_version: engine.version().to_owned(),
            admitted_labels: taint,
            session_labels: session.labels,
        })
    }
}
