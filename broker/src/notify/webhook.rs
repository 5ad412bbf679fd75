//! The approval webhook: a bounded queue, a delivery task, signed `POST`s with retries.
//!
//! The HTTP(S) client is the same minimal one as `auth::jwks_http` (hyper over rustls with the
//! Mozilla roots): one request per connection, no redirects, no proxies, bounded time.
//! See the module documentation of `notify` for the signature scheme receivers verify.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

type HmacSha256 = Hmac<Sha256>;

/// Header naming the event, e.g. `approval.requested`.
pub const EVENT_HEADER: &str = "x-broker-event";
/// Header carrying the delivery id: the same for every attempt of one notification.
pub const DELIVERY_HEADER: &str = "x-broker-delivery";
/// Header carrying the Unix time (seconds) the attempt was signed at.
pub const TIMESTAMP_HEADER: &str = "x-broker-timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-broker-signature";
/// Header carrying the attempt number, from 1 (informational, not signed).
pub const ATTEMPT_HEADER: &str = "x-broker-attempt";

const SIGNATURE_PREFIX: &str = "sha256=";

/// Deliveries in flight at once (each holds its slot through its retries), so one slow
/// receiver answer does not stall the others while memory stays bounded.
pub(super) const MAX_CONCURRENT_DELIVERIES: usize = 8;
/// The secret is at least this long once decoded.
pub const MIN_SECRET_BYTES: usize = 32;
/// A secret file larger than this is refused.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// A notification whose signed body is larger than this is not sent (counted as failed).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Event names: at most this long, ASCII letters, digits, `.`, `_`, `-`.
const MAX_EVENT_LEN: usize = 128;

const MAX_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_ATTEMPTS: u32 = 20;
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const MAX_QUEUE_CAPACITY: usize = 100_000;

/// Errors of the webhook configuration and start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("webhook `url`: {0}")]
    Url(String),
    #[error("webhook `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("webhook secret `{path}`: {source}")]
    SecretIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook secret `{path}`: {reason}")]
    Secret { path: PathBuf, reason: String },
    #[error("webhook tls setup: {0}")]
    Tls(String),
    #[error("webhook delivery needs a running tokio runtime")]
    NoRuntime,
}

/// Where and how approval notifications are delivered. Holds a path to the secret, never the
/// secret itself, so `Debug` is safe; keep credentials out of `url` (use the signature instead).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://...`, or `http://` to 127.0.0.1, `[::1]` or `localhost` only.
    pub url: String,
    /// File holding the HMAC key: hex text, else text (trimmed), else raw bytes; at least 32
    /// bytes once decoded. Never logged.
    pub secret_file: PathBuf,
    /// Deadline of one attempt: connect, TLS, request, response headers.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per notification, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles per retry, with jitter.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Notifications waiting for a delivery slot; beyond this they are dropped.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_attempts() -> u32 {
    6
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(500)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_queue_capacity() -> usize {
    1024
}

impl WebhookConfig {
    /// Checks every field and reads `secret_file` (which must hold at least 32 bytes).
    pub fn validate(&self) -> Result<(), Error> {
        self.check_fields()?;
        load_secret(&self.secret_file).map(|_| ())
    }

    fn check_fields(&self) -> Result<WebhookUrl, Error> {
        let url = WebhookUrl::parse(&self.url).map_err(Error::Url)?;
        let invalid = |field, reason: String| Err(Error::Invalid { field, reason });
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return invalid(
                "timeout",
                format!(
                    "must be more than 0 and at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            );
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return invalid(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            );
        }
        if self.max_backoff > MAX_BACKOFF {
            return invalid(
                "max_backoff",
                format!(
                    "must be at most {}",
                    humantime::format_duration(MAX_BACKOFF)
                ),
            );
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return invalid(
                "initial_backoff",
                "must be more than 0 and at most `max_backoff`".to_owned(),
            );
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return invalid(
                "queue_capacity",
                format!("must be between 1 and {MAX_QUEUE_CAPACITY}"),
            );
        }
        Ok(url)
    }
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Notifications a receiver accepted (2xx).
    pub delivered: u64,
    /// Notifications given up on: attempts exhausted, or a response that retrying cannot fix.
    pub failed: u64,
    /// Notifications refused by `notify` (queue full, delivery stopped, bad event name).
    pub dropped: u64,
    /// Attempts after the first.
    pub retried: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
}

fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

/// A handle on the delivery task; cheap to clone. Delivery stops once every handle is dropped
/// and the notifications in flight are done.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    origin: Arc<str>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("origin", &self.origin)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Job {
    event: String,
    delivery_id: String,
    data: serde_json::Value,
}

impl Webhook {
    /// Reads the secret and starts the delivery task (on the current tokio runtime).
    pub fn start(cfg: &WebhookConfig) -> Result<Webhook, Error> {
        let url = cfg.check_fields()?;
        let secret = load_secret(&cfg.secret_file)?;
        let mac = HmacSha256::new_from_slice(&secret).map_err(|e| Error::Secret {
            path: cfg.secret_file.clone(),
            reason: e.to_string(),
        })?;
        let tls = if url.tls {
            Some(tls_connector()?)
        } else {
            None
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let counters = Arc::new(Counters::default());
        let origin: Arc<str> = Arc::from(url.origin());
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let shared = Arc::new(Shared {
            url,
            tls,
            mac,
            timeout: cfg.timeout,
            max_attempts: cfg.max_attempts,
            initial_backoff: cfg.initial_backoff,
            max_backoff: cfg.max_backoff,
            counters: counters.clone(),
            origin: origin.clone(),
        });
        runtime.spawn(dispatch(shared, rx));
        tracing::info!(origin = %origin, "approval webhook started");
        Ok(Webhook {
            tx,
            counters,
            origin,
        })
    }

    /// Queues one notification; never blocks and never fails the caller: when the queue is full
    /// the notification is dropped and counted (with a warning). Returns whether it was queued.
    pub fn notify(&self, event: &str, body: serde_json::Value) -> bool {
        if !valid_event(event) {
            let dropped = bump(&self.counters.dropped);
            tracing::warn!(
                origin = %self.origin,
                dropped,
                "webhook notification dropped: invalid event name"
            );
            return false;
        }
        let job = Job {
            event: event.to_owned(),
            delivery_id: hex::encode(rand::random::<[u8; 16]>()),
            data: body,
        };
        let delivery_id = job.delivery_id.clone();
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "delivery stopped",
                };
                let dropped = bump(&self.counters.dropped);
                tracing::warn!(
                    origin = %self.origin,
                    event,
                    delivery_id,
                    dropped,
                    "webhook notification dropped: {why}"
                );
                false
            }
        }
    }

    pub fn stats(&self) -> WebhookStats {
        let c = &self.counters;
        WebhookStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
        }
    }
}

fn valid_event(event: &str) -> bool {
    !event.is_empty()
        && event.len() <= MAX_EVENT_LEN
        && event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 under `secret` of `"<timestamp>.<body>"`.
/// The comparison is constant-time. Receivers must also check that `timestamp` is recent (say,
/// within five minutes of their clock) to refuse replays, and may dedupe on the delivery id.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// `sha256=<hex>` for `"<timestamp>.<body>"` with a keyed `mac`.
fn sign(mac: &HmacSha256, timestamp: &str, body: &[u8]) -> String {
    let mut mac = mac.clone();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

// ---------------------------------------------------------------------------------------------
// Secret

/// Reads and decodes the secret; at least [`MIN_SECRET_BYTES`].
fn load_secret(path: &Path) -> Result<Vec<u8>, Error> {
    let raw = read_limited(path, MAX_SECRET_FILE_BYTES)?;
    warn_if_shared(path);
    let secret = parse_secret(&raw);
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::Secret {
            path: path.to_path_buf(),
            reason: format!(
                "secret is {} bytes, at least {MIN_SECRET_BYTES} are required",
                secret.len()
            ),
        });
    }
    Ok(secret)
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    let io = |source| Error::SecretIo {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
        return Err(Error::Secret {
            path: path.to_path_buf(),
            reason: format!("file is larger than {max} bytes"),
        });
    }
    Ok(buf)
}

/// Hex text (surrounding whitespace ignored), else other UTF-8 text with surrounding whitespace
/// trimmed, else the raw bytes. The same rules as the broker's JWT HMAC secret.
fn parse_secret(raw: &[u8]) -> Vec<u8> {
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

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "webhook secret file is accessible to group or others; restrict it to mode 0600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

// ---------------------------------------------------------------------------------------------
// Delivery

/// What the delivery task and its deliveries share.
struct Shared {
    url: WebhookUrl,
    tls: Option<TlsConnector>,
    /// Keyed with the secret; cloned per signature.
    mac: HmacSha256,
    timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    counters: Arc<Counters>,
    /// `scheme://host:port` only: the path may hold a token, so it is never logged.
    origin: Arc<str>,
}

/// Takes a delivery slot, then a notification, and runs it; ends when every handle is dropped.
async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(job) = rx.recv().await else {
            break;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            deliver(&shared, job).await;
            drop(slot);
        });
    }
    tracing::debug!(origin = %shared.origin, "approval webhook stopped");
}

/// The signed JSON body. Field order is fixed; receivers verify the raw bytes, not a re-encoding.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    event: &'a str,
    delivery_id: &'a str,
    sent_at: &'a str,
    data: &'a serde_json::Value,
}

/// The result of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered(u16),
    /// Worth another attempt; `not_before` comes from a `Retry-After` header.
    Retry {
        reason: String,
        not_before: Option<Duration>,
    },
    GiveUp(String),
}

/// 2xx delivered; 408, 429 and 5xx retried; anything else (3xx, other 4xx) given up on.
fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        Outcome::Delivered(code)
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry {
            reason: format!("http status {code}"),
            not_before: retry_after,
        }
    } else {
        Outcome::GiveUp(format!("http status {code}"))
    }
}

/// The wait before attempt `failed + 1`: `initial * 2^(failed - 1)` capped at `max`, of which
/// the upper half is random ("equal jitter"), so the wait is in `[base / 2, base]`.
fn backoff(failed: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failed.saturating_sub(1));
    let base = initial.saturating_mul(factor).min(max);
    let half = base / 2;
    let spread = u64::try_from((base - half).as_micros()).unwrap_or(u64::MAX);
    let jitter = if spread == 0 {
        0
    } else {
        rand::Rng::gen_range(&mut rand::thread_rng(), 0..=spread)
    };
    half.saturating_add(Duration::from_micros(jitter))
}

/// Runs every attempt of one notification and counts the result.
async fn deliver(shared: &Shared, job: Job) {
    let Job {
        event,
        delivery_id,
        data,
    } = job;
    let origin = &shared.origin;
    let mut attempt: u32 = 1;
    loop {
        let now = chrono::Utc::now();
        let timestamp = now.timestamp().to_string();
        let sent_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = match serde_json::to_vec(&Envelope {
            event: &event,
            delivery_id: &delivery_id,
            sent_at: &sent_at,
            data: &data,
        }) {
            Ok(b) if b.len() <= MAX_BODY_BYTES => b,
            Ok(b) => {
                give_up(
                    shared,
                    &event,
                    &delivery_id,
                    attempt,
                    &format!(
                        "body is {} bytes, at most {MAX_BODY_BYTES} are sent",
                        b.len()
                    ),
                );
                return;
            }
            Err(e) => {
                give_up(
                    shared,
                    &event,
                    &delivery_id,
                    attempt,
                    &format!("encode: {e}"),
                );
                return;
            }
        };
        let signature = sign(&shared.mac, &timestamp, &body);
        let headers = Headers {
            event: &event,
            delivery_id: &delivery_id,
            timestamp: &timestamp,
            signature: &signature,
            attempt,
        };
        let outcome = match tokio::time::timeout(shared.timeout, post(shared, &headers, body)).await
        {
            Err(_) => Outcome::Retry {
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(shared.timeout)
                ),
                not_before: None,
            },
            Ok(Err(reason)) => Outcome::Retry {
                reason,
                not_before: None,
            },
            Ok(Ok((status, retry_after))) => classify(status, retry_after),
        };
        match outcome {
            Outcome::Delivered(status) => {
                bump(&shared.counters.delivered);
                tracing::debug!(%origin, event, delivery_id, attempt, status, "webhook delivered");
                return;
            }
            Outcome::GiveUp(reason) => {
                give_up(shared, &event, &delivery_id, attempt, &reason);
                return;
            }
            Outcome::Retry { reason, not_before } => {
                if attempt >= shared.max_attempts {
                    give_up(shared, &event, &delivery_id, attempt, &reason);
                    return;
                }
                let mut wait = backoff(attempt, shared.initial_backoff, shared.max_backoff);
                if let Some(asked) = not_before {
                    wait = wait.max(asked.min(shared.max_backoff));
                }
                tracing::debug!(
                    %origin,
                    event,
                    delivery_id,
                    attempt,
                    reason,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "webhook attempt failed; retrying"
                );
                tokio::time::sleep(wait).await;
                bump(&shared.counters.retried);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn give_up(shared: &Shared, event: &str, delivery_id: &str, attempts: u32, reason: &str) {
    let failed = bump(&shared.counters.failed);
    tracing::warn!(
        origin = %shared.origin,
        event,
        delivery_id,
        attempts,
        reason,
        failed,
        "webhook delivery given up"
    );
}

/// The per-attempt headers.
struct Headers<'a> {
    event: &'a str,
    delivery_id: &'a str,
    timestamp: &'a str,
    signature: &'a str,
    attempt: u32,
}

/// One `POST`: the status and any `Retry-After` (in seconds) of the answer.
async fn post(
    shared: &Shared,
    headers: &Headers<'_>,
    body: Vec<u8>,
) -> Result<(StatusCode, Option<Duration>), String> {
    let url = &shared.url;
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // Best effort: small request/response, no need for Nagle.
    let _ = tcp.set_nodelay(true);
    match &shared.tls {
        Some(tls) => {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| "invalid tls server name".to_owned())?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            request(stream, url, headers, body).await
        }
        None => request(tcp, url, headers, body).await,
    }
}

async fn request<IO>(
    io: IO,
    url: &WebhookUrl,
    headers: &Headers<'_>,
    body: Vec<u8>,
) -> Result<(StatusCode, Option<Duration>), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection ended with an error");
        }
    });
    let result = async {
        let value =
            |v: &str| HeaderValue::from_str(v).map_err(|_| "invalid header value".to_owned());
        let req = Request::builder()
            .method(Method::POST)
            .uri(url.path_and_query.as_str())
            .header(HOST, url.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .header(
                USER_AGENT,
                concat!("agent-broker/", env!("CARGO_PKG_VERSION")),
            )
            .header(EVENT_HEADER, value(headers.event)?)
            .header(DELIVERY_HEADER, value(headers.delivery_id)?)
            .header(TIMESTAMP_HEADER, value(headers.timestamp)?)
            .header(SIGNATURE_HEADER, value(headers.signature)?)
            .header(ATTEMPT_HEADER, headers.attempt)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The response body is not read: the status says it all, and the connection is closed.
        Ok((resp.status(), retry_after))
    }
    .await;
    conn.abort();
    result
}

fn tls_connector() -> Result<TlsConnector, Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

// ---------------------------------------------------------------------------------------------
// URL

/// A validated webhook URL.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WebhookUrl {
    tls: bool,
    /// Host as written (IPv6 with brackets), for the `Host` header.
    authority: String,
    /// Host to connect to and to name in TLS (IPv6 without brackets).
    host: String,
    port: u16,
    path_and_query: String,
}

impl WebhookUrl {
    /// `https://...`, or `http://` to 127.0.0.1, `[::1]` or `localhost` only. No user info.
    /// Errors never repeat the URL's path, which may hold a token.
    fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must use https".to_owned()),
        };
        let authority = uri.authority().ok_or_else(|| "has no host".to_owned())?;
        if authority.as_str().contains('@') {
            return Err("must not carry credentials".to_owned());
        }
        let host_raw = authority.host();
        if host_raw.is_empty() {
            return Err("has no host".to_owned());
        }
        let host = host_raw
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !tls && !matches!(host.as_str(), "127.0.0.1" | "::1" | "localhost") {
            return Err(format!(
                "plain http to `{}` refused: it is only allowed to 127.0.0.1, [::1] or localhost; use https",
                authority.as_str()
            ));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(WebhookUrl {
            tls,
            authority: authority.as_str().to_owned(),
            host,
            port,
            path_and_query,
        })
    }

    /// `scheme://authority`, safe to log.
    fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn secret_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f.flush().unwrap();
        f
    }

    fn config(url: &str, secret: &Path) -> WebhookConfig {
        serde_json::from_value(serde_json::json!({
            "url": url,
            "secret_file": secret,
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_durations() {
        let cfg = config("https://hooks.example.com/x", Path::new("/s"));
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_attempts, 6);
        assert_eq!(cfg.initial_backoff, Duration::from_millis(500));
        assert_eq!(cfg.max_backoff, Duration::from_secs(30));
        assert_eq!(cfg.queue_capacity, 1024);

        let cfg: WebhookConfig = serde_json::from_value(serde_json::json!({
            "url": "https://hooks.example.com/x",
            "secret_file": "/s",
            "timeout": "250ms",
            "initial_backoff": "2ms",
            "max_backoff": "1m",
        }))
        .unwrap();
        assert_eq!(cfg.timeout, Duration::from_millis(250));
        assert_eq!(cfg.initial_backoff, Duration::from_millis(2));
        assert_eq!(cfg.max_backoff, Duration::from_secs(60));

        let unknown = serde_json::from_value::<WebhookConfig>(serde_json::json!({
            "url": "https://hooks.example.com/x",
            "secret_file": "/s",
            "secret": "inline secrets are not a field",
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn validation() {
        let good = secret_file(&[7u8; 32]);
        let short = secret_file(b"only-twenty-bytes-xx");
        // 31 bytes as hex: decoded length counts, not text length.
        let short_hex = secret_file("ab".repeat(31).as_bytes());
        let hex32 = secret_file(format!("{}\n", "cd".repeat(32)).as_bytes());

        assert!(config("https://hooks.example.com/approvals", good.path())
            .validate()
            .is_ok());
        assert!(config("http://127.0.0.1:9000/hook", good.path())
            .validate()
            .is_ok());
        assert!(config("http://localhost/hook", hex32.path())
            .validate()
            .is_ok());

        for url in [
            "http://hooks.example.com/approvals",
            "http://10.0.0.1/hook",
            "http://127.0.0.1.nip.io/hook",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "/hook",
            "not a url",
        ] {
            let err = config(url, good.path()).validate();
            assert!(matches!(err, Err(Error::Url(_))), "{url} must be refused");
        }
        let msg = config("http://hooks.example.com/T0K3N", good.path())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("plain http"), "{msg}");
        assert!(!msg.contains("T0K3N"), "the path must not be echoed: {msg}");

        for file in [&short, &short_hex] {
            let err = config("https://hooks.example.com/", file.path()).validate();
            assert!(
                matches!(&err, Err(Error::Secret { reason, .. }) if reason.contains("at least 32")),
                "{err:?}"
            );
        }
        let missing = config(
            "https://hooks.example.com/",
            Path::new("/nonexistent/secret"),
        );
        assert!(matches!(missing.validate(), Err(Error::SecretIo { .. })));

        let base = config("https://hooks.example.com/", good.path());
        let bad = [
            WebhookConfig {
                timeout: Duration::ZERO,
                ..base.clone()
            },
            WebhookConfig {
                max_attempts: 0,
                ..base.clone()
            },
            WebhookConfig {
                max_attempts: 21,
                ..base.clone()
            },
            WebhookConfig {
                initial_backoff: Duration::ZERO,
                ..base.clone()
            },
            WebhookConfig {
                initial_backoff: Duration::from_secs(60),
                ..base.clone()
            },
            WebhookConfig {
                queue_capacity: 0,
                ..base.clone()
            },
        ];
        for cfg in bad {
            assert!(
                matches!(cfg.validate(), Err(Error::Invalid { .. })),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn start_needs_a_runtime() {
        let good = secret_file(&[7u8; 32]);
        let err = Webhook::start(&config("http://127.0.0.1:9/", good.path()));
        assert!(matches!(err, Err(Error::NoRuntime)));
    }

    #[test]
    fn signatures() {
        let secret = [1u8; 32];
        let mac = HmacSha256::new_from_slice(&secret).unwrap();
        let body = br#"{"event":"approval.requested"}"#;
        let sig = sign(&mac, "1700000000", body);
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert!(verify_signature(&secret, "1700000000", body, &sig));
        assert!(verify_signature(
            &secret,
            "1700000000",
            body,
            &sig.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_signature(&[2u8; 32], "1700000000", body, &sig));
        assert!(!verify_signature(&secret, "1700000001", body, &sig));
        assert!(!verify_signature(&secret, "1700000000", b"{}", &sig));
        assert!(!verify_signature(&secret, "1700000000", body, &sig[7..]));
        assert!(!verify_signature(&secret, "1700000000", body, "sha256=zz"));
        assert!(!verify_signature(&secret, "1700000000", body, "sha256="));
        assert!(!verify_signature(
            &secret,
            "1700000000",
            body,
            &sig[..sig.len() - 2]
        ));

        // A known vector, so receivers in other languages can check their implementation:
        // HMAC-SHA256(key = 32 bytes of 0x01, "1700000000.{}")
        let vector = sign(&mac, "1700000000", b"{}");
        let mut check = HmacSha256::new_from_slice(&secret).unwrap();
        check.update(b"1700000000.{}");
        assert_eq!(
            vector,
            format!("sha256={}", hex::encode(check.finalize().into_bytes()))
        );
    }

    #[test]
    fn classification() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        assert_eq!(classify(s(200), None), Outcome::Delivered(200));
        assert_eq!(classify(s(204), None), Outcome::Delivered(204));
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(classify(s(code), None), Outcome::Retry { .. }),
                "{code}"
            );
        }
        for code in [301, 302, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(classify(s(code), None), Outcome::GiveUp(_)),
                "{code}"
            );
        }
        assert!(matches!(
            classify(s(429), Some(Duration::from_secs(3))),
            Outcome::Retry { not_before: Some(d), .. } if d == Duration::from_secs(3)
        ));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let initial = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        for _ in 0..200 {
            for (failed, base_ms) in [(1, 500), (2, 1000), (3, 2000), (4, 4000), (7, 30_000)] {
                let base = Duration::from_millis(base_ms);
                let wait = backoff(failed, initial, max);
                assert!(wait >= base / 2 && wait <= base, "{failed}: {wait:?}");
            }
            assert!(backoff(u32::MAX, initial, max) <= max);
        }
    }

    #[test]
    fn event_names() {
        assert!(valid_event("approval.requested"));
        assert!(valid_event("approval_expired-v2"));
        assert!(!valid_event(""));
        assert!(!valid_event("bad\nname"));
        assert!(!valid_event("with space"));
        assert!(!valid_event(&"x".repeat(MAX_EVENT_LEN + 1)));
    }

    #[test]
    fn url_rules() {
        let u = WebhookUrl::parse("https://hooks.example.com/a?b=c").unwrap();
        assert!(u.tls && u.port == 443 && u.path_and_query == "/a?b=c");
        assert_eq!(u.origin(), "https://hooks.example.com");
        let u = WebhookUrl::parse("http://[::1]:8080").unwrap();
        assert!(!u.tls && u.host == "::1" && u.path_and_query == "/");
        assert_eq!(u.origin(), "http://[::1]:8080");
    }

    #[test]
    fn secret_parsing() {
        assert_eq!(parse_secret(b"  abcd\n"), vec![0xab, 0xcd]);
        assert_eq!(parse_secret(b"abc"), b"abc".to_vec());
        assert_eq!(parse_secret(b" text secret \n"), b"text secret".to_vec());
        assert_eq!(parse_secret(&[0xff, b' ']), vec![0xff, b' ']);
    }
}
