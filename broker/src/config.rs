//! Layered configuration: documented defaults, then a TOML file (`--config`), then `BROKER_*` environment
//! variables (`__` separates sections: `BROKER_AUTH__ISSUER`), then command-line flags; then `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::store::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        problem: problem.into(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// Threads that serve requests and decide; 0: one per core. A broker that shares a small machine with
    /// its database and its agents may do better with fewer (each decision then crosses fewer threads),
    /// but a long call (a retrieval batch of 1,000 documents decides for about 10 ms) holds its thread.
    pub worker_threads: usize,
    /// Holds the embedded SQLite database and the dev signing key.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; empty means SQLite at `<data_dir>/broker.db`.
    pub database_url: String,
    /// The policy directory: schema, entities, `*.cedar` files and fixtures.
    pub policies: PathBuf,
    /// Issue dev tokens signed with a key kept in the data dir, when no other key source is configured.
    pub dev_issuer: bool,
    /// Serve with the dev issuer on an address other than loopback. Refused without it: anyone who can
    /// read the data dir mints any role, and TLS does not change that. Development on a network only.
    pub allow_dev_issuer_on_network: bool,
    /// At SIGTERM or SIGINT, how long calls in flight may still finish; those still running then are
    /// answered UNAVAILABLE (nothing allowed). The audit writer is flushed and the last checkpoint
    /// written after it, within a few seconds more.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub session: SessionConfig,
    pub audit: AuditConfig,
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub kill_switch: KillSwitchConfig,
    pub approvals: ApprovalsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            worker_threads: 0,
            data_dir: PathBuf::from("broker-data"),
            database_url: String::new(),
            policies: PathBuf::from("policies"),
            dev_issuer: true,
            allow_dev_issuer_on_network: false,
            shutdown_grace: Duration::from_secs(10),
            auth: AuthConfig::default(),
            store: StoreConfig::default(),
            session: SessionConfig::default(),
            audit: AuditConfig::default(),
            tls: None,
            limits: Limits::default(),
            kill_switch: KillSwitchConfig::default(),
            approvals: ApprovalsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long an approval may wait for people, unless its policy says (`@approval_expires`).
    #[serde(with = "humantime_serde")]
    pub default_expiry: Duration,
    /// The longest one AwaitApproval call waits (the agent may call again).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How often a waiting agent and the approval watchers look for changes made through other brokers.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where to announce new pending approvals (signed JSON POST, retried; never blocks a decision).
    pub webhook: Option<crate::notify::WebhookConfig>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            default_expiry: Duration::from_secs(15 * 60),
            max_wait: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            webhook: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KillSwitchConfig {
    /// How often each broker re-reads the switches (Postgres also pushes changes at once with NOTIFY).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// If the switches could not be read for this long, every scope counts as killed until they can.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Rules that engage a switch by themselves (AUTO_QUARANTINE).
    pub quarantine: Vec<QuarantineRule>,
}

impl Default for KillSwitchConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            stale_after: Duration::from_secs(3),
            quarantine: vec![
                QuarantineRule {
                    scope: QuarantineScope::Session,
                    denials: Some(10),
                    calls: None,
                    foreign_sessions: None,
                    within: Duration::from_secs(60),
                    expires_after: DEFAULT_QUARANTINE_EXPIRY,
                },
                // An agent that keeps naming sessions it does not own is probing: stop the agent.
                QuarantineRule {
                    scope: QuarantineScope::Agent,
                    denials: None,
                    calls: None,
                    foreign_sessions: Some(20),
                    within: Duration::from_secs(60),
                    expires_after: DEFAULT_QUARANTINE_EXPIRY,
                },
            ],
        }
    }
}

/// How long an automatic quarantine holds when its rule names no `expires_after`: every one expires, so
/// a rule tripped by mistake (or by someone else's doing) cannot stop a session or an agent for ever.
pub const DEFAULT_QUARANTINE_EXPIRY: Duration = Duration::from_secs(3600);

/// Engage a switch on a session or an agent when it is denied `denials` times, makes `calls` calls, or
/// (scope `agent` only) names `foreign_sessions` times a session that is not its own, within `within`.
/// A session's windows count only its owner's calls; an agent's count every call it made.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRule {
    pub scope: QuarantineScope,
    #[serde(default)]
    pub denials: Option<u32>,
    #[serde(default)]
    pub calls: Option<u32>,
    /// Calls naming a session that does not exist or belongs to another agent or user.
    #[serde(default)]
    pub foreign_sessions: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// The switch releases itself after this long (default [`DEFAULT_QUARANTINE_EXPIRY`], 1h).
    #[serde(default = "default_quarantine_expiry", with = "humantime_serde")]
    pub expires_after: Duration,
}

fn default_quarantine_expiry() -> Duration {
    DEFAULT_QUARANTINE_EXPIRY
}

impl QuarantineRule {
    /// What is wrong with this rule, if anything.
    pub fn problem(&self) -> Option<String> {
        let counts = [self.denials, self.calls, self.foreign_sessions];
        let max = crate::domain::quarantine::MAX_RULE_COUNT;
        if counts.iter().flatten().count() != 1 {
            return Some("set exactly one of `denials`, `calls` or `foreign_sessions`".into());
        }
        if counts.iter().flatten().any(|n| *n == 0 || *n > max) {
            return Some(format!("the count must be 1 to {max}"));
        }
        if self.foreign_sessions.is_some() && self.scope != QuarantineScope::Agent {
            return Some(
                "`foreign_sessions` needs scope `agent`: the calls are counted against their caller"
                    .into(),
            );
        }
        if self.within.is_zero() {
            return Some("`within` must be positive".into());
        }
        if self.expires_after.is_zero() {
            return Some(
                "`expires_after` must be positive (every automatic quarantine expires; default 1h)"
                    .into(),
            );
        }
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuarantineScope {
    Session,
    Agent,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// A longer requested lifetime is refused.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    pub default_max_tool_calls: u32,
    /// A larger requested budget is refused.
    pub max_tool_calls: u32,
    /// How long the decision path trusts a session it read (`0s`: read it for every call). The writer
    /// re-checks closure, budget and taint labels of every ALLOW at commit; what may lag by this much is
    /// `context.session.calls` as spent through other brokers, and the reason given for a DENY.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Taint labels belong to the agent acting for a user (agent, user, tenant), not only to the session
    /// that read: what was read is in the agent's context. They are copied at once to the principal's
    /// other open sessions, and a new session starts with every label a session of the principal held
    /// that is still open or expired (or reported its last result) less than this long ago.
    #[serde(with = "humantime_serde")]
    pub taint_carry_over: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(24 * 3600),
            default_max_tool_calls: 100,
            max_tool_calls: 100_000,
            cache_ttl: Duration::from_secs(5),
            taint_carry_over: Duration::from_secs(24 * 3600),
        }
    }
}

/// The least `audit.denied_arguments_bytes`.
const MIN_DENIED_ARGUMENTS_BYTES: usize = 256;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Argument names stored as "[REDACTED]" in the audit trail, besides those that look secret
    /// (`token`, `secret`, `password`, `key`, ... as parts of the name: `domain::redaction`) and those
    /// the schema marks `@sensitive`. Matched at any depth, case-insensitively, as a run of the name's
    /// parts (`card_number` also covers `cardNumber`). The digest is still computed over the real
    /// arguments, so a value can be checked without being kept.
    pub redact_fields: Vec<String>,
    /// The most of a DENY's redacted arguments (JSON text, in bytes) its audit event keeps; longer ones are
    /// kept as a marked, truncated preview (the digest still covers them whole). ALLOWs and calls waiting
    /// for approval keep their redacted arguments whole: approvers read them.
    pub denied_arguments_bytes: usize,
    /// Signed checkpoints of the chain head, kept outside the database.
    pub checkpoints: crate::checkpoint::CheckpointConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        // Secret-looking names (password, token, api_key, ssn, ...) need no entry.
        let fields = ["credit_card", "card_number", "iban"];
        Self {
            redact_fields: fields.iter().map(|s| (*s).to_owned()).collect(),
            denied_arguments_bytes: 2048,
            checkpoints: crate::checkpoint::CheckpointConfig::default(),
        }
    }
}

/// Server TLS (rustls); with `client_ca`, clients must present a certificate it signed (mTLS).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Every limit explicit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest `arguments_json`, in bytes.
    pub max_arguments_bytes: usize,
    /// Deepest nesting of `arguments_json`.
    pub max_arguments_depth: usize,
    pub max_concurrent_streams: u32,
    pub max_header_list_bytes: u32,
    /// Calls in flight at once (a long wait for as long as it is open), every caller but operators
    /// together; past it, RESOURCE_EXHAUSTED `OVERLOADED` at once, never queued (`api::admission`).
    pub max_in_flight: usize,
    /// Places on top of `max_in_flight` that only admins' and approvers' kill-switch and approval calls
    /// may take: agents' load, however many identities it comes from, never sheds the people who stop it.
    pub operator_reserve: usize,
    /// One caller's share: calls it may have in flight at once (a caller is a token's `sub` within its
    /// tenant).
    pub max_in_flight_per_caller: usize,
    /// Long waits (AwaitApproval, WatchApprovals, WatchKillSwitches) one caller may have open at once,
    /// within its share.
    pub max_waits_per_caller: usize,
    /// Most candidate documents in one AuthorizeRetrieval call.
    pub max_retrieval_batch: usize,
    /// Upper bound on one RPC, whatever the client's deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_arguments_bytes: 256 * 1024,
            max_arguments_depth: 32,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 * 1024,
            max_in_flight: 4096,
            operator_reserve: 256,
            max_in_flight_per_caller: 1024,
            max_waits_per_caller: 64,
            max_retrieval_batch: 1000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_dev_issuer_on_network: Option<bool>,
}

/// More request threads than this is a typo, not a tuning.
const MAX_WORKER_THREADS: usize = 1024;
/// A longer grace outlasts what orchestrators wait before SIGKILL (Kubernetes 30 s, systemd 90 s):
/// the broker would be killed without its final checkpoint.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// Top-level keys read from `BROKER_*`; other `BROKER_` variables (e.g. test settings) are not config.
const ENV_KEYS: &[&str] = &[
    "approvals",
    "kill_switch",
    "listen",
    "worker_threads",
    "data_dir",
    "database_url",
    "policies",
    "dev_issuer",
    "allow_dev_issuer_on_network",
    "shutdown_grace",
    "auth",
    "store",
    "session",
    "audit",
    "tls",
    "limits",
];

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid(
                    "config",
                    format!("file `{}` does not exist", file.display()),
                ));
            }
            figment = figment.merge(Toml::file(file));
        }
        let env = Env::prefixed("BROKER_").split("__").filter(|key| {
            // Figment shows the key as written (`AUTH__ISSUER`) or split (`auth.issuer`): match either.
            let key = key.as_str().to_ascii_lowercase();
            let top = key
                .split(['.'])
                .next()
                .unwrap_or_default()
                .split("__")
                .next()
                .unwrap_or_default();
            ENV_KEYS.contains(&top)
        });
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| Error::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The database URL in effect: explicit, or SQLite in the data dir.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("broker.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The checkpoint file in effect.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.audit.checkpoints.path_in(&self.data_dir)
    }

    /// The checkpoint signing key file in effect.
    pub fn checkpoint_key_path(&self) -> PathBuf {
        self.audit.checkpoints.key_in(&self.data_dir)
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            database_url: self.effective_database_url(),
            ..self.store.clone()
        }
    }

    /// Whether tokens are verified with the dev issuer's key (no other key source configured).
    pub fn uses_dev_issuer(&self) -> bool {
        let a = &self.auth;
        self.dev_issuer
            && a.hmac_secret_file.is_none()
            && a.public_keys.is_empty()
            && a.jwks_file.is_none()
            && a.jwks_url.is_none()
    }

    /// The dev issuer signs tokens of any role with a key kept on disk: on loopback only, unless the
    /// operator says otherwise. TLS does not help (it protects tokens in transit, not their minting).
    fn check_dev_issuer(&self) -> Result<(), Error> {
        let ip = self.listen.ip().to_canonical();
        if !self.uses_dev_issuer() || ip.is_loopback() || self.allow_dev_issuer_on_network {
            return Ok(());
        }
        let tls = if self.tls.is_some() {
            "with TLS"
        } else {
            "without TLS"
        };
        Err(invalid(
            "dev_issuer",
            format!(
                "the dev issuer is on (dev_issuer = true and no key source under [auth]) and `listen` = `{}` is not a loopback address ({tls}): \
                 anyone who can read the key in the data dir mints tokens of any role for this broker; \
                 fix: configure a key source (auth.jwks_url, auth.jwks_file, auth.public_keys or auth.hmac_secret_file) and set dev_issuer = false, \
                 or listen on 127.0.0.1; for development on a network only, set allow_dev_issuer_on_network = true \
                 (BROKER_ALLOW_DEV_ISSUER_ON_NETWORK=true, or `serve --allow-dev-issuer-on-network`)",
                self.listen
            ),
        ))
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "worker_threads",
                format!("at most {MAX_WORKER_THREADS} (0: one per core)"),
            ));
        }
        self.auth
            .validate()
            .map_err(|e| invalid("auth", e.to_string()))?;
        self.check_dev_issuer()?;
        if self.shutdown_grace > MAX_SHUTDOWN_GRACE {
            return Err(invalid(
                "shutdown_grace",
                format!(
                    "at most {}: orchestrators kill a broker that takes longer to stop",
                    humantime::format_duration(MAX_SHUTDOWN_GRACE)
                ),
            ));
        }
        let url = self.effective_database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with `sqlite:` or `postgres://`",
            ));
        }
        let s = &self.session;
        if s.default_ttl.is_zero() || s.default_ttl > s.max_ttl {
            return Err(invalid(
                "session.default_ttl",
                "must be positive and at most session.max_ttl",
            ));
        }
        if s.default_max_tool_calls == 0 || s.default_max_tool_calls > s.max_tool_calls {
            return Err(invalid(
                "session.default_max_tool_calls",
                "must be positive and at most session.max_tool_calls",
            ));
        }
        if self.audit.denied_arguments_bytes < MIN_DENIED_ARGUMENTS_BYTES {
            return Err(invalid(
                "audit.denied_arguments_bytes",
                "must be at least 256 (a truncated preview needs room for its marker)",
            ));
        }
        if let Some((field, problem)) = self.audit.checkpoints.problem() {
            return Err(invalid(field, problem));
        }
        if self.store.commit_timeout.is_zero() {
            return Err(invalid("store.commit_timeout", "must be positive"));
        }
        let l = &self.limits;
        for (field, value) in [
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.max_arguments_bytes", l.max_arguments_bytes),
            ("limits.max_arguments_depth", l.max_arguments_depth),
            ("limits.max_in_flight", l.max_in_flight),
            ("limits.operator_reserve", l.operator_reserve),
            (
                "limits.max_in_flight_per_caller",
                l.max_in_flight_per_caller,
            ),
            ("limits.max_waits_per_caller", l.max_waits_per_caller),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        let a = &self.approvals;
        if a.default_expiry.is_zero() || a.max_wait.is_zero() || a.poll_interval.is_zero() {
            return Err(invalid(
                "approvals",
                "default_expiry, max_wait and poll_interval must be positive",
            ));
        }
        if a.poll_interval > Duration::from_secs(1) {
            return Err(invalid(
                "approvals.poll_interval",
                "at most 1s: approvals must reach waiting agents on every broker within a second",
            ));
        }
        if let Some(hook) = &a.webhook {
            hook.validate()
                .map_err(|e| invalid("approvals.webhook", e.to_string()))?;
        }
        let k = &self.kill_switch;
        if k.poll_interval.is_zero() || k.stale_after <= k.poll_interval {
            return Err(invalid(
                "kill_switch.stale_after",
                "must be longer than kill_switch.poll_interval",
            ));
        }
        for (i, rule) in k.quarantine.iter().enumerate() {
            if let Some(problem) = rule.problem() {
                return Err(invalid(
                    "kill_switch.quarantine",
                    format!("rule {i}: {problem}"),
                ));
            }
        }
        if l.max_in_flight.checked_add(l.operator_reserve).is_none() {
            return Err(invalid(
                "limits.operator_reserve",
                "limits.max_in_flight + limits.operator_reserve is out of range",
            ));
        }
        if l.max_waits_per_caller > l.max_in_flight_per_caller {
            return Err(invalid(
                "limits.max_waits_per_caller",
                "must not exceed limits.max_in_flight_per_caller (a wait is a call in flight too)",
            ));
        }
        if l.max_arguments_bytes > l.max_message_bytes {
            return Err(invalid(
                "limits.max_arguments_bytes",
                "must not exceed limits.max_message_bytes",
            ));
        }
        if let Some(tls) = &self.tls {
            for (field, path) in [
                ("tls.cert", Some(&tls.cert)),
                ("tls.key", Some(&tls.key)),
                ("tls.client_ca", tls.client_ca.as_ref()),
            ] {
                if let Some(p) = path {
                    if !p.is_file() {
                        return Err(invalid(
                            field,
                            format!("file `{}` does not exist", p.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_laptop_setup() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.effective_database_url(), "sqlite://broker-data/broker.db");
        assert_eq!(c.policies, PathBuf::from("policies"));
    }

    #[test]
    fn file_then_flags_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:6000\"\npolicies = \"/srv/policies\"\n[session]\ndefault_ttl = \"10m\"\n").unwrap();
        let c = Config::load(
            Some(&file),
            &Overrides {
                listen: Some("127.0.0.1:7000".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.listen.to_string(),
            "127.0.0.1:7000",
            "flag wins over file"
        );
        assert_eq!(c.policies, PathBuf::from("/srv/policies"));
        assert_eq!(c.session.default_ttl, Duration::from_secs(600));
    }

    #[test]
    fn bad_values_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(&file, "[session]\ndefault_ttl = \"0s\"\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("session.default_ttl"), "{err}");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::load(
            None,
            &Overrides {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("database_url"), "{err}");
    }

    #[test]
    fn the_dev_issuer_is_refused_on_a_network_address_with_or_without_tls() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "not checked here").unwrap();
        let tls = TlsConfig {
            cert: pem.clone(),
            key: pem,
            client_ca: None,
        };
        let at = |listen: &str, tls: Option<TlsConfig>| Config {
            listen: listen.parse().unwrap(),
            tls,
            ..Config::default()
        };
        for listen in [
            "0.0.0.0:50051",
            "[::]:50051",
            "10.1.2.3:50051",
            "192.168.0.10:50051",
        ] {
            for tls in [None, Some(tls.clone())] {
                let with_tls = tls.is_some();
                let err = at(listen, tls.clone()).validate().unwrap_err().to_string();
                assert!(err.contains("`dev_issuer`"), "{err}");
                assert!(err.contains(&format!("`listen` = `{listen}`")), "{err}");
                assert!(
                    err.contains(if with_tls { "with TLS" } else { "without TLS" }),
                    "{err}"
                );
                assert!(err.contains("allow_dev_issuer_on_network = true"), "{err}");
                assert!(err.contains("dev_issuer = false"), "{err}");
                let allowed = Config {
                    allow_dev_issuer_on_network: true,
                    ..at(listen, tls)
                };
                allowed.validate().unwrap();
            }
        }
        // Loopback, with or without TLS: a laptop.
        for listen in [
            "127.0.0.1:50051",
            "127.8.9.1:1",
            "[::1]:50051",
            "[::ffff:127.0.0.1]:1",
        ] {
            at(listen, None).validate().unwrap();
            at(listen, Some(tls.clone())).validate().unwrap();
        }
        // With a key source the dev issuer is off, whatever `dev_issuer` says.
        let mut keyed = at("0.0.0.0:50051", None);
        keyed.auth.jwks_url = Some("https://idp.example.com/jwks.json".into());
        keyed.validate().unwrap();
        let off = Config {
            dev_issuer: false,
            ..at("0.0.0.0:50051", None)
        };
        off.validate().unwrap();
    }

    #[test]
    fn the_dev_issuer_flag_and_shutdown_grace_load_from_the_environment() {
        std::env::set_var("BROKER_LISTEN", "0.0.0.0:50051");
        let err = Config::load(None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`dev_issuer`"), "{err}");
        std::env::set_var("BROKER_ALLOW_DEV_ISSUER_ON_NETWORK", "true");
        std::env::set_var("BROKER_SHUTDOWN_GRACE", "2s");
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert!(c.allow_dev_issuer_on_network);
        assert_eq!(c.shutdown_grace, Duration::from_secs(2));
        std::env::set_var("BROKER_SHUTDOWN_GRACE", "1h");
        let err = Config::load(None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`shutdown_grace`: at most 5m"), "{err}");
    }

    #[test]
    fn admission_limits_are_positive_and_waits_fit_in_the_callers_share() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        for (toml, field) in [
            ("operator_reserve = 0", "limits.operator_reserve"),
            (
                "max_in_flight_per_caller = 0",
                "limits.max_in_flight_per_caller",
            ),
            ("max_waits_per_caller = 0", "limits.max_waits_per_caller"),
            (
                "max_in_flight_per_caller = 8\nmax_waits_per_caller = 9",
                "limits.max_waits_per_caller",
            ),
        ] {
            std::fs::write(&file, format!("[limits]\n{toml}\n")).unwrap();
            let err = Config::load(Some(&file), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(
            (
                c.limits.operator_reserve,
                c.limits.max_in_flight_per_caller,
                c.limits.max_waits_per_caller
            ),
            (256, 1024, 64)
        );
    }

    #[test]
    fn environment_sits_between_file_and_flags() {
        // nextest runs each test in its own process, so setting variables here touches no other test.
        std::env::set_var("BROKER_POLICIES", "/from/env");
        std::env::set_var("BROKER_AUTH__ISSUER", "https://idp.example.com/");
        std::env::set_var("BROKER_TEST_DATABASE_URL", "postgres://not-config");
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.policies, PathBuf::from("/from/env"));
        assert_eq!(c.auth.issuer, "https://idp.example.com/");
        let c = Config::load(
            None,
            &Overrides {
                policies: Some("/from/flag".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.policies, PathBuf::from("/from/flag"));
    }
    #[test]
    fn every_quarantine_rule_expires_and_bad_rules_are_refused() {
        let defaults = KillSwitchConfig::default();
        assert!(defaults
            .quarantine
            .iter()
            .all(|r| r.expires_after == DEFAULT_QUARANTINE_EXPIRY && r.problem().is_none()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "[[kill_switch.quarantine]]\nscope = \"session\"\ndenials = 3\nwithin = \"10s\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(
            c.kill_switch.quarantine[0].expires_after,
            Duration::from_secs(3600),
            "a rule without `expires_after` expires after the default, 1h"
        );
        for (rule, problem) in [
            (
                "scope = \"session\"\ndenials = 3\nwithin = \"10s\"\nexpires_after = \"0s\"",
                "expires_after",
            ),
            (
                "scope = \"session\"\nforeign_sessions = 3\nwithin = \"10s\"",
                "scope `agent`",
            ),
            (
                "scope = \"agent\"\ndenials = 3\ncalls = 3\nwithin = \"10s\"",
                "exactly one",
            ),
            (
                "scope = \"agent\"\ncalls = 10001\nwithin = \"10s\"",
                "1 to 10000",
            ),
        ] {
            std::fs::write(&file, format!("[[kill_switch.quarantine]]\n{rule}\n")).unwrap();
            let err = Config::load(Some(&file), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("kill_switch.quarantine") && err.contains(problem),
                "{rule}: {err}"
            );
        }
    }
}
