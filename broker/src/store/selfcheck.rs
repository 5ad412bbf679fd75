//! The database half of the startup self-check: a broker refuses to serve when its audit trail could be
//! rewritten by its own role, or when a commit it waits for might not be durable.
//!
//! Postgres: the broker's role, or any role it can become (`pg_has_role(.., 'MEMBER')`), must not be a
//! superuser, own `audit_events` or its append-only trigger function (either could disable the guard),
//! or hold UPDATE (on any column), DELETE or TRUNCATE on `audit_events`; `synchronous_commit` must not be
//! `off` (neither what the broker's connections run with, nor the role's/database's/server's default) and
//! `fsync` must be on. SQLite: `PRAGMA synchronous` must be FULL or EXTRA.

use sqlx::{AnyConnection, Row as _};

use super::sql::db;
use super::{Backend, Error, Store};

/// What makes the audit trail less trustworthy than it must be, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The broker could rewrite audit rows, or switch off their append-only guard.
    PrivilegedRole { role: String, rights: Vec<String> },
    /// A commit could be acknowledged before it is on disk.
    SynchronousCommitOff { role: String, source: String },
    /// Postgres does not flush to disk at all.
    FsyncOff,
    /// SQLite `PRAGMA synchronous` below FULL (0 OFF, 1 NORMAL).
    SqliteSynchronous { level: i64 },
}

impl Finding {
    /// The one finding `store.allow_privileged_role` waives.
    pub fn is_privileged_role(&self) -> bool {
        matches!(self, Finding::PrivilegedRole { .. })
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::PrivilegedRole { role, rights } => write!(
                f,
                "the database role `{role}` could rewrite the audit trail ({}); fix: connect as a role with only \
                 SELECT and INSERT on `audit_events` (`broker db grants --role NAME` prints the SQL, run by the \
                 owner that runs `broker migrate`), or, for development only, set `store.allow_privileged_role = true`",
                rights.join("; ")
            ),
            Finding::SynchronousCommitOff { role, source } => write!(
                f,
                "`synchronous_commit` is `off` for role `{role}` (set in: {source}): a commit could be acknowledged \
                 before it is durable, so an audited ALLOW could be lost; fix: `ALTER ROLE {role} RESET \
                 synchronous_commit` (or the database's/server's setting) so that it is `on` (or `local`)"
            ),
            Finding::FsyncOff => write!(
                f,
                "the Postgres server runs with `fsync = off`: committed audit events can be lost in a crash; \
                 fix: set `fsync = on` in postgresql.conf and reload"
            ),
            Finding::SqliteSynchronous { level } => write!(
                f,
                "SQLite `PRAGMA synchronous` is {level} (below FULL = 2): a commit could be acknowledged before it \
                 is durable; fix: let the broker open the database with its own settings (it sets FULL)"
            ),
        }
    }
}

impl Store {
    /// Looks at the database as the broker's connections see it. Reads only.
    pub async fn self_check(&self) -> Result<Vec<Finding>, Error> {
        self.bounded(async {
            let mut conn = self.inner.pool.acquire().await.map_err(db)?;
            inspect(&mut conn, self.inner.backend).await
        })
        .await
    }
}

/// The findings on `conn` (a connection of the broker's, settings applied).
pub(crate) async fn inspect(
    conn: &mut AnyConnection,
    backend: Backend,
) -> Result<Vec<Finding>, Error> {
    match backend {
        Backend::Sqlite => {
            let row = sqlx::query("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .map_err(db)?;
            let level: i64 = row.try_get(0).map_err(db)?;
            Ok(if level < 2 {
                vec![Finding::SqliteSynchronous { level }]
            } else {
                Vec::new()
            })
        }
        Backend::Postgres => {
            let mut findings = Vec::new();
            if let Some(f) = privileges(conn).await? {
                findings.push(f);
            }
            findings.extend(durability(conn).await?);
            Ok(findings)
        }
    }
}

/// Every role the broker's role can act as, and what each could do to `audit_events`.
const PRIVILEGES_SQL: &str = "\
SELECT current_user::text AS me, r.rolname::text AS role, r.rolsuper AS superuser, \
       (has_table_privilege(r.oid, c.oid, 'UPDATE') OR has_any_column_privilege(r.oid, c.oid, 'UPDATE')) AS can_update, \
       has_table_privilege(r.oid, c.oid, 'DELETE') AS can_delete, \
       has_table_privilege(r.oid, c.oid, 'TRUNCATE') AS can_truncate, \
       (c.relowner = r.oid) AS owns_table, \
       EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = 'audit_events_append_only' AND p.proowner = r.oid) AS owns_guard \
FROM pg_roles r, pg_class c \
WHERE c.oid = 'audit_events'::regclass AND pg_has_role(current_user, r.oid, 'MEMBER') \
ORDER BY (r.rolname = current_user) DESC, r.rolname";

async fn privileges(conn: &mut AnyConnection) -> Result<Option<Finding>, Error> {
    let rows = sqlx::query(PRIVILEGES_SQL)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut me = String::new();
    let mut rights = Vec::new();
    for row in &rows {
        let get_bool = |name: &str| row.try_get::<bool, _>(name).map_err(db);
        me = row.try_get("me").map_err(db)?;
        let role: String = row.try_get("role").map_err(db)?;
        let who = if role == me {
            format!("`{role}`")
        } else {
            format!("`{me}` can act as `{role}`, which")
        };
        if get_bool("superuser")? {
            rights.push(format!("{who} is a superuser"));
            if role == me {
                // A superuser can do everything else too, as every role: this says it all.
                break;
            }
            continue;
        }
        let mut can: Vec<&str> = Vec::new();
        for (column, what) in [
            ("can_update", "UPDATE"),
            ("can_delete", "DELETE"),
            ("can_truncate", "TRUNCATE"),
        ] {
            if get_bool(column)? {
                can.push(what);
            }
        }
        if !can.is_empty() {
            rights.push(format!("{who} may {} `audit_events`", can.join(", ")));
        }
        if get_bool("owns_table")? {
            rights.push(format!(
                "{who} owns `audit_events` (and could disable its triggers)"
            ));
        }
        if get_bool("owns_guard")? {
            rights.push(format!(
                "{who} owns the append-only trigger function (and could replace it)"
            ));
        }
    }
    Ok((!rights.is_empty()).then_some(Finding::PrivilegedRole { role: me, rights }))
}

/// `synchronous_commit` as this connection runs it and as the role's sessions start with it (its
/// `reset_val`, which a `SET` on the connection does not change), and `fsync`.
const DURABILITY_SQL: &str = "\
SELECT current_user::text AS me, current_setting('synchronous_commit') AS effective, \
       s.reset_val AS configured, current_setting('fsync') AS fsync, \
       COALESCE((SELECT CASE WHEN d.setrole <> 0 AND d.setdatabase <> 0 THEN 'the role in this database' \
                             WHEN d.setrole <> 0 THEN 'the role' \
                             WHEN d.setdatabase <> 0 THEN 'the database' ELSE 'all roles' END \
                 FROM pg_db_role_setting d, unnest(d.setconfig) AS cfg \
                 WHERE cfg LIKE 'synchronous\\_commit=%' \
                   AND d.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user)) \
                   AND d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
                 ORDER BY (d.setrole <> 0) DESC, (d.setdatabase <> 0) DESC LIMIT 1), \
                'the server configuration or the connection options') AS source \
FROM pg_settings s WHERE s.name = 'synchronous_commit'";

async fn durability(conn: &mut AnyConnection) -> Result<Vec<Finding>, Error> {
    let row = sqlx::query(DURABILITY_SQL)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let text = |name: &str| row.try_get::<Option<String>, _>(name).map_err(db);
    let me = text("me")?.unwrap_or_default();
    let effective = text("effective")?.unwrap_or_default();
    let configured = text("configured")?.unwrap_or_default();
    let source = text("source")?.unwrap_or_else(|| "unknown".into());
    let mut findings = Vec::new();
    if effective == "off" || configured == "off" {
        let source = if effective == "off" {
            "this connection".to_owned()
        } else {
            source
        };
        findings.push(Finding::SynchronousCommitOff { role: me, source });
    }
    if text("fsync")?.as_deref() == Some("off") {
        findings.push(Finding::FsyncOff);
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection as _, Executor as _};

    use super::*;
    use crate::store::testing::TestDb;

    #[tokio::test]
    async fn sqlite_below_full_is_found_and_the_store_itself_passes() {
        let db = TestDb::new(Backend::Sqlite).await.unwrap();
        assert_eq!(db.store().self_check().await.unwrap(), vec![]);

        let mut conn = AnyConnection::connect(&db.config().database_url)
            .await
            .unwrap();
        conn.execute("PRAGMA synchronous = NORMAL").await.unwrap();
        let found = inspect(&mut conn, Backend::Sqlite).await.unwrap();
        assert_eq!(found, vec![Finding::SqliteSynchronous { level: 1 }]);
        assert!(found[0].to_string().contains("synchronous"), "{}", found[0]);
        assert!(!found[0].is_privileged_role());
    }

    #[tokio::test]
    async fn postgres_superuser_is_found() {
        // The test server is reached as its superuser.
        let db = TestDb::new(Backend::Postgres).await.unwrap();
        let found = db.store().self_check().await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].is_privileged_role());
        let text = found[0].to_string();
        assert!(text.contains("`postgres` is a superuser"), "{text}");
        assert!(
            !text.contains("can act as"),
            "a superuser is said once: {text}"
        );
        assert!(text.contains("allow_privileged_role"), "{text}");
    }
}
