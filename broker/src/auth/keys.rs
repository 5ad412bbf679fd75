//! Key sources: HMAC secret file, PEM public keys, JWK sets. Every key is loaded with the one
//! algorithm family (and, when known, the one algorithm) it may verify.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::{sanitize, Error};

/// Shortest accepted HMAC secret (256 bits).
pub(super) const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Shortest accepted RSA modulus.
const MIN_RSA_BITS: usize = 2048;
/// Largest key or secret file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Largest JWK set read (file or URL).
pub(super) const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// Most keys taken from one JWK set.
const MAX_JWKS_KEYS: usize = 100;

/// One verification key and what it may verify.
#[derive(Clone)]
pub(super) struct KeyEntry {
    pub(super) kid: Option<String>,
    pub(super) family: AlgorithmFamily,
    /// The only algorithm this key verifies, when the source says (JWK `alg`, EC curve).
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
    /// Where the key came from, for logs and configuration errors.
    pub(super) origin: String,
}

impl KeyEntry {
    fn new(kid: Option<String>, alg: Option<Algorithm>, key: DecodingKey, origin: String) -> Self {
        KeyEntry {
            kid,
            family: key.family(),
            alg,
            key,
            origin,
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub(super) fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Keys by `kid`, plus the keys without one.
#[derive(Clone, Debug, Default)]
pub(super) struct KeySet {
    by_kid: HashMap<String, KeyEntry>,
    anonymous: Vec<KeyEntry>,
}

impl KeySet {
    /// Builds the set; a `kid` given twice is an error.
    pub(super) fn new(entries: Vec<KeyEntry>) -> Result<Self, String> {
        let mut set = KeySet::default();
        for entry in entries {
            match entry.kid.clone() {
                Some(kid) => {
                    if set.by_kid.contains_key(&kid) {
                        return Err(format!("key id `{}` appears twice", sanitize(&kid)));
                    }
                    set.by_kid.insert(kid, entry);
                }
                None => set.anonymous.push(entry),
            }
        }
        Ok(set)
    }

    pub(super) fn get(&self, kid: &str) -> Option<&KeyEntry> {
        self.by_kid.get(kid)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &KeyEntry> {
        self.by_kid.values().chain(self.anonymous.iter())
    }

    pub(super) fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
}

/// Reads at most `max` bytes of `path`; a larger file is an error.
pub(super) fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: format!("file is larger than {max} bytes"),
        });
    }
    Ok(buf)
}

/// Decodes a secret file: hex text (surrounding whitespace ignored), else other UTF-8 text with
/// surrounding whitespace trimmed, else the raw bytes.
pub(super) fn parse_secret(raw: &[u8]) -> Vec<u8> {
    let trimmed = raw.trim_ascii();
    // Odd-length hex fails to decode and is taken as text.
    if !trimmed.is_empty() && trimmed.iter().all(u8::is_ascii_hexdigit) {
        if let Ok(bytes) = hex::decode(trimmed) {
            return bytes;
        }
    }
    if std::str::from_utf8(raw).is_ok() {
        trimmed.to_vec()
    } else {
        raw.to_vec()
    }
}

/// Loads the HMAC secret of `hmac_secret_file`.
pub(super) fn load_hmac_secret(path: &Path) -> Result<KeyEntry, Error> {
    let raw = read_limited(path, MAX_KEY_FILE_BYTES)?;
    warn_if_shared(path);
    let secret = parse_secret(&raw);
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            reason: format!(
                "hmac secret is {} bytes, at least {MIN_HMAC_SECRET_BYTES} are required",
                secret.len()
            ),
        });
    }
    Ok(hmac_entry(
        &secret,
        format!("hmac secret `{}`", path.display()),
    ))
}

/// A kid-less HMAC key.
pub(super) fn hmac_entry(secret: &[u8], origin: String) -> KeyEntry {
    KeyEntry::new(None, None, DecodingKey::from_secret(secret), origin)
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "hmac secret file is accessible to group or others; restrict it to mode 0600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// Loads one PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`): RSA (2048 bits or more),
/// EC P-256 or P-384, Ed25519.
pub(super) fn load_pem(path: &Path, kid: Option<String>) -> Result<KeyEntry, Error> {
    let raw = read_limited(path, MAX_KEY_FILE_BYTES)?;
    let fail = |reason: String| Error::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let (key, alg) = parse_public_pem(&raw).map_err(fail)?;
    Ok(KeyEntry::new(
        kid,
        alg,
        key,
        format!("public key `{}`", path.display()),
    ))
}

fn parse_public_pem(raw: &[u8]) -> Result<(DecodingKey, Option<Algorithm>), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not a PEM file".to_owned())?;
    const BEGIN: &str = "-----BEGIN ";
    if text.matches(BEGIN).count() != 1 {
        return Err("expected exactly one PEM block".to_owned());
    }
    let label = text
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once("-----"))
        .map(|(label, _)| label)
        .ok_or_else(|| "not a PEM file".to_owned())?;
    match label {
        "RSA PUBLIC KEY" => {
            let key = DecodingKey::from_rsa_pem(raw).map_err(|_| "invalid RSA public key")?;
            check_rsa_der(key.as_bytes())?;
            Ok((key, None))
        }
        "PUBLIC KEY" => {
            if let Ok(key) = DecodingKey::from_rsa_pem(raw) {
                check_rsa_der(key.as_bytes())?;
                return Ok((key, None));
            }
            if let Ok(key) = DecodingKey::from_ec_pem(raw) {
                let alg = match key.as_bytes().len() {
                    // SEC1 points, uncompressed or compressed.
                    65 | 33 => Algorithm::ES256,
                    97 | 49 => Algorithm::ES384,
                    _ => return Err("unsupported EC curve: P-256 and P-384 are supported".into()),
                };
                return Ok((key, Some(alg)));
            }
            if let Ok(key) = DecodingKey::from_ed_pem(raw) {
                if key.as_bytes().len() != 32 {
                    return Err("invalid Ed25519 public key".to_owned());
                }
                return Ok((key, Some(Algorithm::EdDSA)));
            }
            Err("unsupported public key: RSA, EC P-256/P-384 and Ed25519 are supported".to_owned())
        }
        "CERTIFICATE" => Err(
            "certificates are not supported; extract the public key with `openssl x509 -pubkey -noout`"
                .to_owned(),
        ),
        l if l.contains("PRIVATE") => {
            Err("file holds a private key; configure the public key only".to_owned())
        }
        _ => Err("unsupported PEM block: expected `PUBLIC KEY` or `RSA PUBLIC KEY`".to_owned()),
    }
}

/// Checks the modulus size of a PKCS#1 `RSAPublicKey`.
fn check_rsa_der(der: &[u8]) -> Result<(), String> {
    let bits = rsa_modulus_bits(der).ok_or_else(|| "invalid RSA public key".to_owned())?;
    check_rsa_bits(bits)
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key has {bits} bits, at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(())
}

/// Bit length of the modulus of a DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, ... }`.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (tag, seq, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, modulus, _) = der_tlv(seq)?;
    if tag != 0x02 {
        return None;
    }
    Some(unsigned_bits(modulus))
}

/// Bit length of a big-endian unsigned integer.
fn unsigned_bits(bytes: &[u8]) -> usize {
    let significant: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => bytes.get(i..).unwrap_or_default(),
        None => &[],
    };
    match significant.first() {
        Some(first) => (significant.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

/// Splits one DER tag-length-value off `input`: `(tag, value, rest)`.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// Where a JWK set came from: symmetric (`oct`) keys are refused from a file and skipped from a
/// URL (a published key set holds no secrets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JwksOrigin {
    File,
    Url,
}

/// The result of reading a JWK set: the usable keys and what was skipped.
#[derive(Debug)]
pub(super) struct ParsedJwks {
    pub(super) keys: Vec<KeyEntry>,
    pub(super) skipped: Vec<String>,
}

/// Parses a JWK set. Keys that are not signature keys, or of an unsupported type, are skipped
/// (and listed); with [`JwksOrigin::File`] an invalid key is an error, with [`JwksOrigin::Url`]
/// it is skipped.
pub(super) fn parse_jwks(
    raw: &[u8],
    origin: JwksOrigin,
    source: &str,
) -> Result<ParsedJwks, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(raw)
        .map_err(|_| "not a JWK set (`{\"keys\": [...]}`)".to_owned())?;
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(format!("more than {MAX_JWKS_KEYS} keys"));
    }
    let mut parsed = ParsedJwks {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (index, value) in set.keys.into_iter().enumerate() {
        let label = match value.get("kid").and_then(serde_json::Value::as_str) {
            Some(kid) => format!("key `{}`", sanitize(kid)),
            None => format!("key #{index}"),
        };
        match jwk_entry(value, origin, source) {
            Ok(Some(entry)) => parsed.keys.push(entry),
            Ok(None) => parsed
                .skipped
                .push(format!("{label}: not a supported signature key")),
            Err(reason) if origin == JwksOrigin::Url => {
                parsed.skipped.push(format!("{label}: {reason}"))
            }
            Err(reason) => return Err(format!("{label}: {reason}")),
        }
    }
    Ok(parsed)
}

/// One JWK: `Ok(None)` when it is not a signature key we support.
fn jwk_entry(
    value: serde_json::Value,
    origin: JwksOrigin,
    source: &str,
) -> Result<Option<KeyEntry>, String> {
    let jwk: Jwk = match serde_json::from_value(value) {
        Ok(jwk) => jwk,
        // Unknown `kty` and the like: not a key we could use.
        Err(_) => return Ok(None),
    };
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Ok(None),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return Ok(None);
        }
    }
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => match signature_algorithm(alg) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
    };
    let kid = match &jwk.common.key_id {
        Some(kid) if kid.is_empty() => return Err("empty `kid`".to_owned()),
        other => other.clone(),
    };
    let (key, alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let n = URL_SAFE_NO_PAD
                .decode(&params.n)
                .map_err(|_| "invalid RSA modulus")?;
            check_rsa_bits(unsigned_bits(&n))?;
            let key = DecodingKey::from_rsa_components(&params.n, &params.e)
                .map_err(|_| "invalid RSA key")?;
            (key, declared)
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let alg = match params.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Ok(None),
            };
            let key = DecodingKey::from_ec_components(&params.x, &params.y)
                .map_err(|_| "invalid EC key")?;
            (key, Some(alg))
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Ok(None);
            }
            let key =
                DecodingKey::from_ed_components(&params.x).map_err(|_| "invalid Ed25519 key")?;
            if key.as_bytes().len() != 32 {
                return Err("invalid Ed25519 key".to_owned());
            }
            (key, Some(Algorithm::EdDSA))
        }
        AlgorithmParameters::OctetKey(_) => {
            return match origin {
                JwksOrigin::Url => {
                    Err("symmetric (`oct`) keys are not taken from a URL".to_owned())
                }
                JwksOrigin::File => Err(
                    "symmetric (`oct`) keys are not supported in a JWK set; use `hmac_secret_file`"
                        .to_owned(),
                ),
            };
        }
    };
    if let (Some(declared), Some(alg)) = (declared, alg) {
        if declared != alg {
            return Err("`alg` does not match the key type".to_owned());
        }
    }
    let entry = KeyEntry::new(kid, alg.or(declared), key, format!("jwks `{source}`"));
    if let Some(alg) = entry.alg {
        if alg.family() != entry.family {
            return Err("`alg` does not match the key type".to_owned());
        }
    }
    Ok(Some(entry))
}

/// The signature algorithm a JWK `alg` names; `None` for encryption algorithms.
fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::RSA1_5
        | KeyAlgorithm::RSA_OAEP
        | KeyAlgorithm::RSA_OAEP_256
        | KeyAlgorithm::UNKNOWN_ALGORITHM => return None,
    })
}

/// Loads `jwks_file`.
pub(super) fn load_jwks_file(path: &Path) -> Result<Vec<KeyEntry>, Error> {
    let raw = read_limited(path, MAX_JWKS_BYTES)?;
    let source = path.display().to_string();
    let parsed = parse_jwks(&raw, JwksOrigin::File, &source).map_err(|reason| Error::Jwks {
        source_name: source.clone(),
        reason,
    })?;
    for skipped in &parsed.skipped {
        tracing::info!(jwks = %source, "skipped {skipped}");
    }
    Ok(parsed.keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_parser_reads_rsa_modulus_size() {
        let key = DecodingKey::from_rsa_pem(include_bytes!("testdata/rsa1.pub.pem"));
        assert!(matches!(
            key.as_ref().map(|k| rsa_modulus_bits(k.as_bytes())),
            Ok(Some(2048))
        ));
        let short = DecodingKey::from_rsa_pem(include_bytes!("testdata/rsa1024.pub.pem"));
        assert!(matches!(
            short.as_ref().map(|k| rsa_modulus_bits(k.as_bytes())),
            Ok(Some(1024))
        ));
        assert_eq!(rsa_modulus_bits(&[0x30, 0x05, 0x02]), None);
        assert_eq!(rsa_modulus_bits(&[]), None);
        assert_eq!(unsigned_bits(&[0x00, 0x01, 0x00]), 9);
        assert_eq!(unsigned_bits(&[0x00]), 0);
    }

    #[test]
    fn secret_file_formats() {
        assert_eq!(parse_secret(b"  0a0B\n"), vec![0x0a, 0x0b]);
        assert_eq!(
            parse_secret(b"not hex at all\n"),
            b"not hex at all".to_vec()
        );
        assert_eq!(parse_secret(&[0xff, 0x00, b'\n']), vec![0xff, 0x00, b'\n']);
    }

    #[test]
    fn pem_kinds_are_recognized() {
        let alg = |pem: &[u8]| parse_public_pem(pem).map(|(k, a)| (k.family(), a));
        assert!(matches!(
            alg(include_bytes!("testdata/rsa1.pub.pem")),
            Ok((AlgorithmFamily::Rsa, None))
        ));
        assert!(matches!(
            alg(include_bytes!("testdata/ec256.pub.pem")),
            Ok((AlgorithmFamily::Ec, Some(Algorithm::ES256)))
        ));
        assert!(matches!(
            alg(include_bytes!("testdata/ec384.pub.pem")),
            Ok((AlgorithmFamily::Ec, Some(Algorithm::ES384)))
        ));
        assert!(matches!(
            alg(include_bytes!("testdata/ed25519.pub.pem")),
            Ok((AlgorithmFamily::Ed, Some(Algorithm::EdDSA)))
        ));
        assert!(
            matches!(alg(include_bytes!("testdata/rsa1.key.pem")), Err(e) if e.contains("private key"))
        );
        assert!(
            matches!(alg(include_bytes!("testdata/rsa1024.pub.pem")), Err(e) if e.contains("1024 bits"))
        );
        assert!(matches!(alg(b"hello"), Err(e) if e.contains("one PEM block")));
    }
}
