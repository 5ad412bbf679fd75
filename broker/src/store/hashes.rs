//! Reads of stored event hashes by position, for checking the chain against signed checkpoints.

use sqlx::Row as _;

use super::sql::db;
use super::{Error, Store};

/// How many positions one query asks for.
const HASHES_PER_QUERY: usize = 500;

impl Store {
    /// The stored `(seq, hash)` of each event in `seqs` that exists, in `seq` order. Reads only.
    pub async fn event_hashes(&self, seqs: &[i64]) -> Result<Vec<(i64, String)>, Error> {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let mut found = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(HASHES_PER_QUERY) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT seq, hash FROM audit_events WHERE seq IN ({}) ORDER BY seq",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for seq in chunk {
                query = query.bind(*seq);
            }
            let rows = self
                .bounded(async { query.fetch_all(&self.inner.pool).await.map_err(db) })
                .await?;
            for row in rows {
                let seq: i64 = row
                    .try_get("seq")
                    .map_err(|e| Error::corrupt(format!("column `seq`: {e}")))?;
                let hash: String = row
                    .try_get("hash")
                    .map_err(|e| Error::corrupt(format!("column `hash`: {e}")))?;
                found.push((seq, hash));
            }
        }
        Ok(found)
    }
}
