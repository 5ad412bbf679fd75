//! The store's one error type: a kind callers can act on, and a message for the logs. sqlx stays inside.

/// What went wrong, as far as a caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database cannot be reached or refused the work (down, locked, out of connections).
    Unavailable,
    /// Waiting gave up. A write may still commit after this answer; it was never reported as committed.
    Timeout,
    /// The writer's queue is full: shed load.
    Overloaded,
    /// The write contradicts stored state (duplicate id, already closed).
    Conflict,
    /// The row the write refers to does not exist.
    NotFound,
    /// The input cannot be stored (configuration, oversized or malformed values).
    Invalid,
    /// Stored data cannot be read back as the domain type it should be.
    Corrupt,
    /// A bug or an unexpected database answer.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "database unavailable",
            ErrorKind::Timeout => "database timed out",
            ErrorKind::Overloaded => "audit writer overloaded",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not found",
            ErrorKind::Invalid => "invalid input",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::Internal => "internal store error",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store failure: its [`ErrorKind`] and a lowercase message naming the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the database is unreachable, slow or saturated: the caller should answer "unavailable"
    /// (and must not allow anything).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Overloaded
        )
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Classifies a sqlx error. Not a `From` impl, so sqlx never appears in this module's public API.
    pub(crate) fn from_sqlx(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let kind = match &err {
            E::PoolTimedOut
            | E::PoolClosed
            | E::Io(_)
            | E::Tls(_)
            | E::WorkerCrashed
            | E::Protocol(_) => ErrorKind::Unavailable,
            E::Database(db) => classify_database(db.as_ref()),
            E::RowNotFound
            | E::ColumnDecode { .. }
            | E::Decode(_)
            | E::ColumnNotFound(_)
            | E::ColumnIndexOutOfBounds { .. }
            | E::TypeNotFound { .. } => ErrorKind::Corrupt,
            E::Configuration(_) => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        };
        let message = match &err {
            E::PoolTimedOut => "timed out waiting for a database connection".to_owned(),
            // The TLS tunnel's refusal (`pg_tunnel`): its message names the setting and the file as
            // they are written (a path keeps its case).
            E::Database(db) if db.code().as_deref() == Some(super::pg_tunnel::REFUSED_SQLSTATE) => {
                db.message().to_owned()
            }
            other => other.to_string().to_lowercase(),
        };
        Self::new(kind, message)
    }

    /// Classifies an error of the SQLite writer thread's own connection (`sqlite_writer`).
    pub(crate) fn from_rusqlite(err: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        let kind = match &err {
            E::SqliteFailure(e, _) => classify_sqlite_code(e.extended_code),
            E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)
            | E::InvalidColumnType(..)
            | E::InvalidColumnName(_)
            | E::InvalidColumnIndex(_)
            | E::Utf8Error(_) => ErrorKind::Corrupt,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, err.to_string().to_lowercase())
    }

    /// Classifies an error of the Postgres audit writer's own connection (`pg_writer`).
    pub(crate) fn from_tokio_postgres(err: tokio_postgres::Error) -> Self {
        let kind = match err.code() {
            Some(state) => classify_postgres(state.code()),
            // No SQLSTATE: the connection could not be made, or broke.
            None => ErrorKind::Unavailable,
        };
        let message = match err.as_db_error() {
            Some(db) => db.message().to_lowercase(),
            None => err.to_string().to_lowercase(),
        };
        Self::new(kind, message)
    }

    pub(crate) fn from_migrate(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(e) => {
                let inner = Self::from_sqlx(e);
                Self::new(inner.kind, format!("migration failed: {}", inner.message))
            }
            other => Self::internal(format!(
                "migration failed: {}",
                other.to_string().to_lowercase()
            )),
        }
    }
}

fn classify_database(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        classify_postgres(&code)
    } else {
        classify_sqlite(&code)
    }
}

/// SQLSTATE classes: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.
fn classify_postgres(sqlstate: &str) -> ErrorKind {
    match sqlstate {
        // query_canceled (statement_timeout), lock_not_available, idle_in_transaction_session_timeout
        "57014" | "55P03" | "25P03" => ErrorKind::Timeout,
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped, read_only_sql_transaction
        "57P01" | "57P02" | "57P03" | "57P04" | "25006" => ErrorKind::Unavailable,
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => ErrorKind::Conflict,
        _ if sqlstate.starts_with("08")
            || sqlstate.starts_with("53")
            || sqlstate.starts_with("58") =>
        {
            ErrorKind::Unavailable
        }
        _ if sqlstate.starts_with("23") => ErrorKind::Conflict,
        _ if sqlstate.starts_with("XX") => ErrorKind::Corrupt,
        _ => ErrorKind::Internal,
    }
}

/// Result codes: <https://www.sqlite.org/rescode.html>; the primary code is the low byte.
fn classify_sqlite(code: &str) -> ErrorKind {
    match code.parse::<i32>() {
        Ok(code) => classify_sqlite_code(code),
        Err(_) => ErrorKind::Internal,
    }
}

fn classify_sqlite_code(code: i32) -> ErrorKind {
    match code & 0xff {
        // INTERRUPT: the writer thread's statement was stopped at its batch's deadline.
        9 => ErrorKind::Timeout,
        // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL, READONLY, NOLFS
        5 | 6 | 10 | 13 | 14 | 15 | 8 | 22 => ErrorKind::Unavailable,
        // CORRUPT, NOTADB
        11 | 26 => ErrorKind::Corrupt,
        // CONSTRAINT
        19 => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_codes_map_to_kinds_callers_can_act_on() {
        assert_eq!(classify_postgres("57014"), ErrorKind::Timeout);
        assert_eq!(classify_postgres("08006"), ErrorKind::Unavailable);
        assert_eq!(classify_postgres("53300"), ErrorKind::Unavailable);
        assert_eq!(classify_postgres("23505"), ErrorKind::Conflict);
        assert_eq!(classify_postgres("42P01"), ErrorKind::Internal);
        assert_eq!(classify_sqlite("5"), ErrorKind::Unavailable);
        assert_eq!(classify_sqlite("517"), ErrorKind::Unavailable);
        assert_eq!(classify_sqlite("2067"), ErrorKind::Conflict);
        assert_eq!(classify_sqlite("11"), ErrorKind::Corrupt);
        assert_eq!(classify_sqlite("9"), ErrorKind::Timeout);
        assert!(Error::from_sqlx(sqlx::Error::PoolTimedOut).is_unavailable());
        assert_eq!(
            Error::from_sqlx(sqlx::Error::PoolTimedOut).to_string(),
            "database unavailable: timed out waiting for a database connection"
        );
    }
}
