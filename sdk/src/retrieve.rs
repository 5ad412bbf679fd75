//! Retrieval with the pre-filter, done for you: filter, query, report.

use std::future::Future;

use serde_json::Value;

use crate::{apply_filter, Client, Error, Outcome, RetrievalDecision, RetrievalFilter};

/// What [`Client::retrieve`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieved<D> {
    /// The documents the broker allowed, `(id, document)`, in the order the query returned them.
    pub documents: Vec<(String, D)>,
    /// The filter the query ran with.
    pub filter: RetrievalFilter,
    /// The broker's decision on what the query returned (`None` when nothing was left to report).
    pub decision: Option<RetrievalDecision>,
}

/// Why [`Client::retrieve`] returned no documents.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError<E> {
    /// The query failed.
    #[error("retrieval query failed: {0}")]
    Query(E),
    /// The broker could not answer (the filter or the report); use none of the documents.
    #[error(transparent)]
    Broker(#[from] Error),
}

impl Client {
    /// Retrieval through the pre-filter with nothing left out of the trail:
    ///
    /// 1. asks the broker for the filter, excluding documents carrying any of `exclude_labels` (the
    ///    answer is recorded and taints the session with the labels it may admit);
    /// 2. runs `query` with it: the pipeline's vector-store search, returning `(id, metadata, document)`;
    /// 3. keeps what the filter admits, in memory (a store's translation of the filter may be looser; for
    ///    an incomplete filter only the exclusions are applied, as the query had to search wider);
    /// 4. reports the rest with [`Client::authorize_retrieval`], which decides each document again (exact
    ///    even when the filter was incomplete), records their ids and adds all their labels to the
    ///    session;
    ///
    /// and returns only the documents the broker allowed. At most the broker's
    /// `limits.max_retrieval_batch` (1000) documents per call. Fail closed: any broker error is an error.
    ///
    /// ```no_run
    /// # async fn run(client: broker_sdk::Client) -> Result<(), broker_sdk::Error> {
    /// let found = client
    ///     .retrieve("ses_..", &["confidential"], |filter| async move {
    ///         // Translate `filter.filter` into the vector store's query; here, every candidate.
    ///         let _ = filter;
    ///         Ok::<_, std::io::Error>(vec![(
    ///             "doc-1".to_owned(),
    ///             serde_json::json!({"tenant": "acme", "collection": "kb", "classification": 0,
    ///                                "personal": false, "source": "wiki", "labels": []}),
    ///             "the text".to_owned(),
    ///         )])
    ///     })
    ///     .await;
    /// # let _ = found;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retrieve<D, Q, Fut, E>(
        &self,
        session_id: &str,
        exclude_labels: &[&str],
        query: Q,
    ) -> Result<Retrieved<D>, RetrieveError<E>>
    where
        Q: FnOnce(RetrievalFilter) -> Fut,
        Fut: Future<Output = Result<Vec<(String, Value, D)>, E>>,
    {
        let filter = self
            .retrieval_filter_excluding(session_id, exclude_labels)
            .await?;
        let found = query(filter.clone()).await.map_err(RetrieveError::Query)?;
        let kept: Vec<(String, Value, D)> = if filter.complete {
            let mut admitted = vec![false; found.len()];
            let indices = apply_filter(
                &filter.filter,
                found.iter().enumerate().map(|(i, (_, meta, _))| (i, meta)),
            );
            for i in indices {
                if let Some(a) = admitted.get_mut(i) {
                    *a = true;
                }
            }
            found
                .into_iter()
                .zip(admitted)
                .filter_map(|(doc, admitted)| admitted.then_some(doc))
                .collect()
        } else {
            found
                .into_iter()
                .filter(|(_, meta, _)| !carries_any(meta, exclude_labels))
                .collect()
        };
        if kept.is_empty() {
            return Ok(Retrieved {
                documents: Vec::new(),
                filter,
                decision: None,
            });
        }
        let refs: Vec<(&str, &Value)> = kept
            .iter()
            .map(|(id, meta, _)| (id.as_str(), meta))
            .collect();
        let decision = self.authorize_retrieval(session_id, &refs).await?;
        // `authorize_retrieval` checked one verdict per document, in input order.
        let documents = kept
            .into_iter()
            .zip(&decision.documents)
            .filter(|(_, d)| d.outcome == Outcome::Allow)
            .map(|((id, _, doc), _)| (id, doc))
            .collect();
        Ok(Retrieved {
            documents,
            filter,
            decision: Some(decision),
        })
    }
}

/// Whether the metadata's `labels` hold one of `labels`.
fn carries_any(metadata: &Value, labels: &[&str]) -> bool {
    metadata
        .get("labels")
        .and_then(Value::as_array)
        .is_some_and(|have| {
            have.iter()
                .filter_map(Value::as_str)
                .any(|l| labels.contains(&l))
        })
}
