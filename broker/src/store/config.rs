//! Store configuration: where the database is and every limit the store works within.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Backend, Error};

/// How to reach the database and how long to wait for it. `Debug` hides any password in the URL.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://<path>` (the file and its directory are created if missing; `sqlite:///abs/path` for an
    /// absolute path) or `postgres://user:password@host:port/database`.
    pub database_url: String,
    /// Pool size; the audit writer holds one of it (for batches with more than plain decisions), reads
    /// share the rest. The writer also opens one connection of its own for plain decisions (SQLite: on its
    /// thread; Postgres: beyond this pool).
    pub max_connections: u32,
    /// How long to wait for a pooled connection (and to open one). Short, so that a lost database makes the
    /// broker answer "unavailable" fast instead of queueing callers.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a caller waits for its audit write to commit. Every database statement and writer
    /// transaction is bounded by [`StoreConfig::transaction_timeout`], a multiple of this.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// The most writes the audit writer commits in one transaction.
    pub max_batch: usize,
    /// Writes waiting for the writer; when full, writes fail at once with `Overloaded`.
    pub queue_capacity: usize,
    /// Serve even when the database role could rewrite the audit trail (a superuser, the tables' owner,
    /// or UPDATE/DELETE/TRUNCATE on `audit_events`). Development and tests only; logged loudly.
    pub allow_privileged_role: bool,
    /// Apply pending migrations at start. When false, a broker whose schema is not current refuses to
    /// start: the owner runs `broker migrate`, the broker's least-privilege role only serves.
    pub migrate_on_start: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: "sqlite://broker-data/broker.db".to_owned(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(2),
            commit_timeout: Duration::from_millis(500),
            max_batch: 256,
            queue_capacity: 4096,
            allow_privileged_role: false,
            migrate_on_start: true,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("commit_timeout", &self.commit_timeout)
            .field("max_batch", &self.max_batch)
            .field("queue_capacity", &self.queue_capacity)
            .field("allow_privileged_role", &self.allow_privileged_role)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

impl StoreConfig {
    /// The bound on one writer transaction and on any single statement: a frozen database cannot wedge
    /// the writer longer than this.
    pub fn transaction_timeout(&self) -> Duration {
        self.commit_timeout.saturating_mul(5)
    }

    /// Which database the URL names.
    pub fn backend(&self) -> Result<Backend, Error> {
        Backend::from_url(&self.database_url)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let backend = self.backend()?;
        if backend == Backend::Sqlite {
            let path = sqlite_path(&self.database_url)?;
            if path.is_empty() || path.starts_with(':') || self.database_url.contains("mode=memory")
            {
                return Err(Error::invalid(
                    "store.database_url must name a SQLite file, not an in-memory database",
                ));
            }
        } else {
            // TLS parameters (`sslmode`, `sslrootcert`, ...): checked here, their files read at connect.
            super::pg_tls::PgUrl::parse(&self.database_url)?;
        }
        if self.max_connections == 0 {
            return Err(Error::invalid("store.max_connections must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("store.connect_timeout must be positive"));
        }
        if self.commit_timeout.is_zero() {
            return Err(Error::invalid("store.commit_timeout must be positive"));
        }
        if self.max_batch == 0 {
            return Err(Error::invalid("store.max_batch must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(Error::invalid("store.queue_capacity must be at least 1"));
        }
        Ok(())
    }
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend, Error> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            let scheme = url.split_once(':').map_or("", |(s, _)| s);
            Err(Error::invalid(format!(
                "store.database_url scheme `{scheme}` is not supported (use `sqlite://` or `postgres://`)"
            )))
        }
    }
}

/// The file path of a `sqlite:` URL, percent-decoded, without its query.
pub(crate) fn sqlite_path(url: &str) -> Result<String, Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    percent_decode(path)
        .ok_or_else(|| Error::invalid("store.database_url has a malformed percent-encoded path"))
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with the password of its user info and any `password` query parameter replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((authority, tail)) = rest.split_at_checked(end) else {
        return format!("{scheme}://***");
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        let cfg = StoreConfig {
            database_url: "postgres://broker:s3cret@db:5432/broker?sslmode=require&password=other"
                .into(),
            ..StoreConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert!(
            shown.contains("postgres://broker:***@db:5432/broker?sslmode=require&password=***"),
            "{shown}"
        );
        assert_eq!(
            redact_url("sqlite://broker-data/broker.db"),
            "sqlite://broker-data/broker.db"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
    }

    #[test]
    fn config_parses_durations_and_refuses_unknown_fields() -> Result<(), serde_json::Error> {
        let cfg: StoreConfig =
            serde_json::from_str(r#"{"commit_timeout": "250ms", "max_batch": 8}"#)?;
        assert_eq!(cfg.commit_timeout, Duration::from_millis(250));
        assert_eq!(cfg.max_batch, 8);
        assert_eq!(cfg.connect_timeout, Duration::from_secs(2));
        assert!(serde_json::from_str::<StoreConfig>(r#"{"commit_timout": "1s"}"#).is_err());
        Ok(())
    }

    #[test]
    fn validation_names_the_bad_field() {
        let bad = |cfg: StoreConfig| {
            cfg.validate()
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert!(StoreConfig::default().validate().is_ok());
        assert!(bad(StoreConfig {
            max_batch: 0,
            ..StoreConfig::default()
        })
        .contains("store.max_batch"));
        assert!(bad(StoreConfig {
            database_url: "mysql://x".into(),
            ..StoreConfig::default()
        })
        .contains("`mysql`"));
        assert!(bad(StoreConfig {
            database_url: "sqlite::memory:".into(),
            ..StoreConfig::default()
        })
        .contains("in-memory"));
        assert_eq!(
            sqlite_path("sqlite:///tmp/a%20b/x.db?mode=rwc")
                .ok()
                .as_deref(),
            Some("/tmp/a b/x.db")
        );
        assert_eq!(
            sqlite_path("sqlite://rel/x.db").ok().as_deref(),
            Some("rel/x.db")
        );
    }
}
