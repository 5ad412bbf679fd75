//! The checkpoint signing key: an Ed25519 seed in a private file (hex, mode 0600), and public keys given
//! as hex or as a file holding the hex.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use super::{signed_bytes, Checkpoint, Error, VERSION};
use crate::auth::dev::check_private;
use crate::clock::Micros;

/// File name of the signing key inside the data directory, unless configured.
pub const KEY_FILE_NAME: &str = "audit-checkpoint-key";
/// Largest key file read (a hex seed and a newline fit many times over).
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// The id of a public key: the first 8 bytes of SHA-256 of its 32 bytes, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(digest.get(..8).unwrap_or_default())
}

/// A public key from `arg`: 64 hex characters, or the path of a file holding them.
pub fn parse_public_key(arg: &str) -> Result<VerifyingKey, Error> {
    let bad = || Error::PublicKey(arg.to_owned());
    let text = arg.trim();
    let hex_text = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        text.to_owned()
    } else {
        let path = Path::new(arg);
        if !path.is_file() {
            return Err(bad());
        }
        let raw = read_limited(path)?;
        String::from_utf8(raw).map_err(|_| bad())?.trim().to_owned()
    };
    let bytes: [u8; 32] = hex::decode(&hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
    if key.is_weak() {
        return Err(bad());
    }
    Ok(key)
}

/// Signs checkpoints. `Debug` shows only the key id.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Signer {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// Loads the key at `path`. Refuses a file that group or others may access, that is not a regular
    /// file, or that does not hold 32 bytes in hex.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let meta = std::fs::symlink_metadata(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let refuse = |reason: String| Error::Key {
            path: path.to_path_buf(),
            reason,
        };
        if !meta.file_type().is_file() {
            return Err(refuse("not a regular file".into()));
        }
        check_private(&meta).map_err(refuse)?;
        let raw = read_limited(path)?;
        let seed: [u8; 32] = std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("expected 64 hex characters (an Ed25519 seed)".into()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Loads the key at `path`, or creates it (32 bytes from the OS random generator, hex, mode 0600,
    /// its directory 0700 if missing). Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), Error> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Self::load(path).map(|s| (s, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
            Err(source) => Err(Error::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A checkpoint of event `seq` with hash `hash`, signed at `time`.
    pub fn sign(&self, seq: i64, hash: &str, time: Micros) -> Checkpoint {
        let signature = self.key.sign(&signed_bytes(seq, hash, time, &self.key_id));
        Checkpoint {
            version: VERSION,
            seq,
            hash: hash.to_owned(),
            time,
            key_id: self.key_id.clone(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

fn create(path: &Path) -> Result<(Signer, bool), Error> {
    let io = |p: &Path| {
        let p: PathBuf = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io(dir))?;
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| Error::Key {
            path: path.to_path_buf(),
            reason: format!("os random generator failed: {e}"),
        })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another broker sharing the data dir created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Signer::load(path).map(|s| (s, false));
        }
        Err(source) => return Err(io(path)(source)),
    };
    let written = file
        .write_all(format!("{}\n", hex::encode(seed)).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // Never leave a truncated key behind.
        let _ = std::fs::remove_file(path);
        return Err(io(path)(source));
    }
    Ok((Signer::from_seed(&seed), true))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_KEY_FILE_BYTES {
        return Err(Error::Key {
            path: path.to_path_buf(),
            reason: format!("file is larger than {MAX_KEY_FILE_BYTES} bytes"),
        });
    }
    Ok(buf)
}
