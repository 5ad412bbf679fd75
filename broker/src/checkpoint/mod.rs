//! Signed checkpoints of the audit chain, kept outside the database.
//!
//! The hash chain shows that rows were changed, inserted or deleted, but someone who can write the database
//! can also recompute every hash, or cut the tail off. So a background task ([`Checkpointer`]) signs the
//! chain head with an Ed25519 key soon after it moves (at most `every` after the previous checkpoint,
//! sooner when the chain grew by `every_events`) and appends it to a JSON-lines file ([`sink`]), fsynced
//! per write. The audit writer hands it each committed head without waiting for it, so signing never
//! slows a decision. `broker audit verify` ([`verify`]) then checks every checkpoint's signature against a
//! public key kept elsewhere, that the chain holds each checkpoint's `seq` with exactly that hash, and that
//! it is not shorter than any checkpoint. Events after the last checkpoint (at most `every` of commits,
//! plus one fsync, while the broker runs) are covered only by the chain itself.
//!
//! A checkpoint line is `{"version":1,"seq":S,"hash":H,"time":T,"key_id":K,"signature":G}`: `seq` and
//! `hash` name an event, `time` is when the broker signed (microseconds since the Unix epoch), `key_id` is
//! the first 8 bytes of SHA-256 of the 32-byte public key (hex), and `signature` is the Ed25519 signature
//! (hex, 64 bytes) over [`signed_bytes`]:
//!
//! ```text
//! broker audit checkpoint v1\nseq=S\nhash=H\ntime=T\nkey_id=K\n
//! ```

mod key;
pub mod sink;
mod task;
pub mod verify;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::key::{key_id, parse_public_key, Signer, KEY_FILE_NAME};
pub use self::task::Checkpointer;
pub use ed25519_dalek::VerifyingKey;

use crate::clock::Micros;

/// The only checkpoint format so far.
pub const VERSION: u32 = 1;
/// The first line of what a checkpoint signs: a signature over it cannot be taken for any other message.
pub const DOMAIN: &str = "broker audit checkpoint v1";
/// File name of the checkpoint file inside the data directory, unless configured.
pub const FILE_NAME: &str = "audit-checkpoints.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint key `{path}`: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("public key `{0}`: expected 64 hex characters (an Ed25519 public key), or a file holding them")]
    PublicKey(String),
    #[error("reading the audit chain: {0}")]
    Store(#[from] crate::store::Error),
}

/// `[audit.checkpoints]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write checkpoints, and have `broker audit verify` require them.
    pub enabled: bool,
    /// The JSON-lines file checkpoints are appended to; unset: `<data_dir>/audit-checkpoints.jsonl`.
    pub path: Option<PathBuf>,
    /// The Ed25519 signing key (hex, mode 0600); unset: `<data_dir>/audit-checkpoint-key`, created on
    /// first start. A configured key must exist.
    pub key: Option<PathBuf>,
    /// The public key `broker audit verify` checks signatures with (hex, or a file holding it); unset:
    /// the signing key's own. Keep a copy away from the broker's host and pass it with `--public-key`.
    pub public_key: Option<String>,
    /// Checkpoint sooner when the chain grew by this many events since the last checkpoint (looked at four
    /// times per `every`, or every `poll_interval` if that is shorter)...
    pub every_events: u64,
    /// ...and otherwise this long after the last checkpoint at the latest (at once when it is older), when
    /// the head moved: the longest stretch of commits a cut tail can hide, and at most one checkpoint per
    /// `every` while fewer than `every_events` events arrive in it.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// How often the checkpointer reads the chain head through the database, for heads that other brokers
    /// sharing it committed (this broker's own commits are handed to it as they happen).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            key: None,
            public_key: None,
            every_events: 500,
            every: Duration::from_millis(500),
            poll_interval: Duration::from_millis(500),
        }
    }
}

impl CheckpointConfig {
    /// The checkpoint file in effect.
    pub fn path_in(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join(FILE_NAME))
    }

    /// The signing key file in effect.
    pub fn key_in(&self, data_dir: &Path) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| data_dir.join(KEY_FILE_NAME))
    }

    /// A problem with the values, naming the field.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.every_events == 0 {
            return Some(("audit.checkpoints.every_events", "must be at least 1"));
        }
        if self.every.is_zero() {
            return Some(("audit.checkpoints.every", "must be positive"));
        }
        if self.poll_interval.is_zero() {
            return Some(("audit.checkpoints.poll_interval", "must be positive"));
        }
        None
    }
}

/// A signed statement that the audit chain's event `seq` had hash `hash` at `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    pub seq: i64,
    pub hash: String,
    pub time: Micros,
    pub key_id: String,
    pub signature: String,
}

/// Why a checkpoint does not vouch for the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cannot be read: {0}")]
    Malformed(String),
    #[error("signed by key `{found}`, not by the expected key `{expected}`")]
    OtherKey { found: String, expected: String },
    #[error("the signature is not valid for its content (forged or altered)")]
    BadSignature,
    #[error("event {seq} has hash `{chain}` in the chain but `{signed}` in the checkpoint: the chain was rewritten")]
    Rewritten {
        seq: i64,
        chain: String,
        signed: String,
    },
    #[error("event {seq} is missing from the chain (deleted)")]
    Missing { seq: i64 },
    #[error("the chain ends at event {chain_ends}, before the checkpointed event {seq}: its tail was truncated")]
    Truncated { seq: i64, chain_ends: i64 },
}

/// The bytes a checkpoint's signature covers: [`DOMAIN`], then each field on a line of its own.
pub fn signed_bytes(seq: i64, hash: &str, time: Micros, key_id: &str) -> Vec<u8> {
    format!("{DOMAIN}\nseq={seq}\nhash={hash}\ntime={time}\nkey_id={key_id}\n").into_bytes()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Checkpoint {
    /// Checks the fields' shapes, that `key` signed it, and that the signature is valid (strictly: no
    /// malleable or weak-key signatures).
    pub fn check_signature(&self, key: &VerifyingKey) -> Result<(), Problem> {
        if self.version != VERSION {
            return Err(Problem::Malformed(format!(
                "version `{}` is not {VERSION}",
                self.version
            )));
        }
        if self.seq < 1 {
            return Err(Problem::Malformed(format!(
                "seq `{}` is not positive",
                self.seq
            )));
        }
        if !is_lower_hex(&self.hash, 64) {
            return Err(Problem::Malformed(
                "hash is not 64 lowercase hex characters".into(),
            ));
        }
        if !is_lower_hex(&self.key_id, 16) {
            return Err(Problem::Malformed(
                "key_id is not 16 lowercase hex characters".into(),
            ));
        }
        let expected = key_id(key);
        if self.key_id != expected {
            return Err(Problem::OtherKey {
                found: self.key_id.clone(),
                expected,
            });
        }
        let signature: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Problem::Malformed("signature is not 128 hex characters".into()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        key.verify_strict(
            &signed_bytes(self.seq, &self.hash, self.time, &self.key_id),
            &signature,
        )
        .map_err(|_| Problem::BadSignature)
    }
}
