//! The development issuer: a local HMAC key and a token minter, so that a broker can run
//! without an identity provider. Tokens it mints pass the same [`super::Verifier`] checks as any
//! other.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use serde_json::{Map, Value};

use super::keys::{parse_secret, read_limited, MIN_HMAC_SECRET_BYTES};
use super::{AuthConfig, Error, Role};

/// File name of the dev key inside the data directory.
pub const SECRET_FILE_NAME: &str = "dev-signing-key";
/// Longest lifetime of a minted token.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Bytes of a newly created key.
const NEW_SECRET_BYTES: usize = 32;
/// Largest key file read.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// Loads `<data_dir>/dev-signing-key`, or creates it (32 random bytes from the OS RNG, hex) with
/// mode 0600, creating `data_dir` (mode 0700) if missing. Refuses an existing key file that group
/// or others may access, that is not a regular file, or that holds fewer than 32 bytes.
///
/// Returns the key and whether it was created.
pub fn load_or_create_secret(data_dir: &Path) -> Result<(Vec<u8>, bool), Error> {
    let path = data_dir.join(SECRET_FILE_NAME);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => load_secret(&path).map(|secret| (secret, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_secret(data_dir, &path),
        Err(source) => Err(Error::Io { path, source }),
    }
}

fn load_secret(path: &Path) -> Result<Vec<u8>, Error> {
    let key_error = |reason: String| Error::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(key_error("not a regular file".to_owned()));
    }
    check_private(&meta).map_err(key_error)?;
    let secret = parse_secret(&read_limited(path, MAX_SECRET_FILE_BYTES)?);
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(key_error(format!(
            "key is {} bytes, at least {MIN_HMAC_SECRET_BYTES} are required",
            secret.len()
        )));
    }
    Ok(secret)
}

/// Refuses a key file that group or others can read (also the checkpoint signing key's check).
#[cfg(unix)]
pub(crate) fn check_private(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode is {mode:o}: the key must not be accessible to group or others (`chmod 600`)"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_private(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

fn create_secret(data_dir: &Path, path: &Path) -> Result<(Vec<u8>, bool), Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        dir.mode(0o700);
    }
    dir.create(data_dir).map_err(io(data_dir))?;

    let mut secret = vec![0u8; NEW_SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|e| Error::KeyFile {
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
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_secret(path).map(|secret| (secret, false));
        }
        Err(source) => return Err(io(path)(source)),
    };
    let written = file
        .write_all(format!("{}\n", hex::encode(&secret)).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // Do not leave a truncated key behind.
        let _ = std::fs::remove_file(path);
        return Err(io(path)(source));
    }
    Ok((secret, true))
}

/// What to put in a dev token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `sub`: non-empty.
    pub subject: String,
    /// Written to the configured roles claim.
    pub roles: Vec<Role>,
    /// Written to the configured user claim when set.
    pub on_behalf_of: Option<String>,
    /// Written to the configured tenant claim when set.
    pub tenant: Option<String>,
    /// Written to the configured groups claim when not empty.
    pub groups: Vec<String>,
    /// Lifetime, 1s to [`MAX_TTL`].
    pub ttl: Duration,
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
}

/// An HS256 token with `iss`, `aud`, `sub`, `iat`, `nbf`, `exp`, a random `jti`, and the
/// configured roles, user and tenant claims.
pub fn mint(secret: &[u8], cfg: &AuthConfig, req: &TokenRequest) -> Result<String, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Mint("the system clock is before 1970".to_owned()))?
        .as_secs();
    mint_at(secret, cfg, req, i64::try_from(now).unwrap_or(i64::MAX))
}

/// [`mint`] with an explicit issue time (unix seconds).
pub fn mint_at(
    secret: &[u8],
    cfg: &AuthConfig,
    req: &TokenRequest,
    issued_at: i64,
) -> Result<String, Error> {
    cfg.validate()?;
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(Error::Mint(format!(
            "the key is {} bytes, at least {MIN_HMAC_SECRET_BYTES} are required",
            secret.len()
        )));
    }
    if req.subject.is_empty() {
        return Err(Error::Mint("the subject must not be empty".to_owned()));
    }
    if req.issuer.is_empty() || req.audience.is_empty() {
        return Err(Error::Mint(
            "the issuer and audience must not be empty".to_owned(),
        ));
    }
    if req.ttl < Duration::from_secs(1) || req.ttl > MAX_TTL {
        return Err(Error::Mint(format!(
            "ttl `{}` is out of range (1s to {})",
            humantime::format_duration(req.ttl),
            humantime::format_duration(MAX_TTL)
        )));
    }
    if req.on_behalf_of.as_deref() == Some("") || req.tenant.as_deref() == Some("") {
        return Err(Error::Mint(
            "the user and tenant must not be empty when set".to_owned(),
        ));
    }
    let ttl = i64::try_from(req.ttl.as_secs()).unwrap_or(i64::MAX);
    let mut jti = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut jti)
        .map_err(|e| Error::Mint(format!("os random generator failed: {e}")))?;

    let mut claims = Map::new();
    claims.insert("iss".to_owned(), Value::from(req.issuer.as_str()));
    claims.insert("aud".to_owned(), Value::from(req.audience.as_str()));
    claims.insert("sub".to_owned(), Value::from(req.subject.as_str()));
    claims.insert("iat".to_owned(), Value::from(issued_at));
    claims.insert("nbf".to_owned(), Value::from(issued_at));
    claims.insert("exp".to_owned(), Value::from(issued_at.saturating_add(ttl)));
    claims.insert("jti".to_owned(), Value::from(hex::encode(jti)));
    let roles: Vec<Value> = req.roles.iter().map(|r| Value::from(r.as_str())).collect();
    claims.insert(cfg.roles_claim.clone(), Value::Array(roles));
    if let Some(user) = &req.on_behalf_of {
        claims.insert(cfg.user_claim.clone(), Value::from(user.as_str()));
    }
    if let Some(tenant) = &req.tenant {
        claims.insert(cfg.tenant_claim.clone(), Value::from(tenant.as_str()));
    }
    if !req.groups.is_empty() {
        let groups: Vec<Value> = req.groups.iter().map(|g| Value::from(g.as_str())).collect();
        claims.insert(cfg.groups_claim.clone(), Value::Array(groups));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Mint(e.to_string()))
}
