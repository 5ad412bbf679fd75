//! Checking the audit chain against a checkpoint file: every checkpoint must be signed by the expected
//! key, name an event the chain holds with exactly the signed hash, and none may lie past the chain's end.
//! Together with the chain walk (each hash covers its predecessor), a valid checkpoint at `seq` vouches
//! for every event up to `seq`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{key_id, sink, Checkpoint, Error, Problem, VerifyingKey};
use crate::clock::{rfc3339, Micros};
use crate::store::Store;

/// How many checkpoints are compared with the chain per query.
const BATCH: usize = 500;
/// How many problems a report lists (it counts them all).
pub const MAX_LISTED: usize = 20;

/// A checkpoint that does not vouch for the chain, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The line of the checkpoint file (from 1).
    pub line: u64,
    /// The checkpointed event and the signing time, when the line could be read.
    pub seq: Option<i64>,
    pub time: Option<Micros>,
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "checkpoint on line {}", self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (event {seq}")?;
            if let Some(time) = self.time {
                write!(f, ", signed {}", rfc3339(time))?;
            }
            write!(f, ")")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub path: PathBuf,
    pub key_id: String,
    /// The file does not exist.
    pub file_missing: bool,
    /// The chain's last event (0 when empty).
    pub chain_ends: i64,
    /// Checkpoints (lines) read.
    pub checkpoints: u64,
    /// Checkpoints that vouch for the chain.
    pub valid: u64,
    /// The highest event a valid checkpoint vouches for (0 when none).
    pub covered_to: i64,
    /// The first [`MAX_LISTED`] problems, in file order.
    pub findings: Vec<Finding>,
    /// All problems.
    pub problems: u64,
    /// The file ended in the middle of a line (a write in progress), which was not read.
    pub incomplete_tail: bool,
}

impl Report {
    /// No problem, and, when the chain has events, at least one checkpoint vouching for them.
    pub fn ok(&self) -> bool {
        self.problems == 0 && (self.chain_ends == 0 || self.valid > 0)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.path.display();
        if self.file_missing && self.chain_ends > 0 {
            return write!(
                f,
                "checkpoints MISSING: `{file}` does not exist, so nothing shows the chain was not rewritten or truncated \
                 (the broker writes one as soon as events exist; pass `--checkpoints PATH` if it is elsewhere)"
            );
        }
        if self.problems > 0 {
            writeln!(
                f,
                "checkpoints FAILED: {} of {} checkpoints in `{file}` do not match the chain (key {}):",
                self.problems, self.checkpoints, self.key_id
            )?;
            for finding in &self.findings {
                writeln!(f, "  {finding}")?;
            }
            if self.problems > self.findings.len() as u64 {
                writeln!(
                    f,
                    "  ... and {} more",
                    self.problems - self.findings.len() as u64
                )?;
            }
            return Ok(());
        }
        if self.chain_ends > 0 && self.valid == 0 {
            return write!(
                f,
                "checkpoints MISSING: `{file}` holds no checkpoint, so nothing shows the chain was not rewritten or truncated"
            );
        }
        if self.chain_ends == 0 {
            return write!(
                f,
                "checkpoints ok: the chain is empty, there is nothing to vouch for"
            );
        }
        write!(
            f,
            "checkpoints ok: {} checkpoints signed by key {} match the chain up to event {}",
            self.valid, self.key_id, self.covered_to
        )?;
        if self.chain_ends > self.covered_to {
            write!(
                f,
                "; events {} to {} are newer than the last checkpoint",
                self.covered_to + 1,
                self.chain_ends
            )?;
        }
        if self.incomplete_tail {
            write!(
                f,
                "; an incomplete last line (a write in progress?) was not read"
            )?;
        }
        Ok(())
    }
}

/// Checks the chain in `store` against the checkpoints in `path`, signed by `key`. Reads the file a line
/// at a time and the chain a batch of checkpoints at a time.
pub async fn verify(store: &Store, path: &Path, key: &VerifyingKey) -> Result<Report, Error> {
    let chain_ends = store.head().await?.map_or(0, |h| h.seq);
    let mut report = Report {
        path: path.to_path_buf(),
        key_id: key_id(key),
        file_missing: false,
        chain_ends,
        checkpoints: 0,
        valid: 0,
        covered_to: 0,
        findings: Vec::new(),
        problems: 0,
        incomplete_tail: false,
    };
    let Some(mut reader) = sink::Reader::open(path)? else {
        report.file_missing = true;
        return Ok(report);
    };
    let mut batch: Vec<(u64, Checkpoint)> = Vec::with_capacity(BATCH);
    loop {
        let entry = reader.next_entry()?;
        let end = entry.is_none();
        if let Some(entry) = entry {
            report.checkpoints += 1;
            match entry.checkpoint {
                Err(e) => report.add(Finding {
                    line: entry.line,
                    seq: None,
                    time: None,
                    problem: Problem::Malformed(e),
                }),
                Ok(cp) => match cp.check_signature(key) {
                    Err(problem) => report.add(Finding {
                        line: entry.line,
                        seq: Some(cp.seq),
                        time: Some(cp.time),
                        problem,
                    }),
                    Ok(()) => batch.push((entry.line, cp)),
                },
            }
        }
        if batch.len() >= BATCH || (end && !batch.is_empty()) {
            compare(store, &mut report, std::mem::take(&mut batch)).await?;
        }
        if end {
            report.incomplete_tail = reader.incomplete_tail();
            return Ok(report);
        }
    }
}

/// Compares signed checkpoints with the chain.
async fn compare(
    store: &Store,
    report: &mut Report,
    batch: Vec<(u64, Checkpoint)>,
) -> Result<(), Error> {
    // A running broker signs new heads while this reads: a checkpoint past the head read at the start
    // may name an event committed since. Read the head again before calling the tail cut.
    if batch.iter().any(|(_, cp)| cp.seq > report.chain_ends) {
        report.chain_ends = store.head().await?.map_or(0, |h| h.seq);
    }
    let seqs: Vec<i64> = batch
        .iter()
        .map(|(_, cp)| cp.seq)
        .filter(|seq| *seq <= report.chain_ends)
        .collect();
    let hashes: HashMap<i64, String> = store.event_hashes(&seqs).await?.into_iter().collect();
    for (line, cp) in batch {
        let problem = if cp.seq > report.chain_ends {
            Some(Problem::Truncated {
                seq: cp.seq,
                chain_ends: report.chain_ends,
            })
        } else {
            match hashes.get(&cp.seq) {
                None => Some(Problem::Missing { seq: cp.seq }),
                Some(hash) if *hash != cp.hash => Some(Problem::Rewritten {
                    seq: cp.seq,
                    chain: hash.clone(),
                    signed: cp.hash.clone(),
                }),
                Some(_) => None,
            }
        };
        match problem {
            Some(problem) => report.add(Finding {
                line,
                seq: Some(cp.seq),
                time: Some(cp.time),
                problem,
            }),
            None => {
                report.valid += 1;
                report.covered_to = report.covered_to.max(cp.seq);
            }
        }
    }
    Ok(())
}

impl Report {
    fn add(&mut self, finding: Finding) {
        self.problems += 1;
        if self.findings.len() < MAX_LISTED {
            self.findings.push(finding);
        }
    }
}
