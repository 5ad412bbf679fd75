//! Whether the database's schema is the one this broker embeds, read without DDL rights: a broker
//! connected as a least-privilege role (see [`super::grants`]) serves a database that the owner migrated.

use std::collections::BTreeMap;

use sqlx::Row as _;

use super::sql::db;
use super::{Backend, Error, Store, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

impl Store {
    /// True when exactly the embedded migrations are applied, each with its checksum. Reads only; fails
    /// when the migrations table cannot be read (e.g. a database never migrated).
    pub async fn schema_is_current(&self) -> Result<bool, Error> {
        let migrator = match self.inner.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let embedded: BTreeMap<i64, Vec<u8>> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect();
        let rows = self
            .bounded(async {
                sqlx::query("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.inner.pool)
                    .await
                    .map_err(db)
            })
            .await?;
        let mut applied = BTreeMap::new();
        for row in &rows {
            let version: i64 = row.try_get("version").map_err(db)?;
            let checksum: Vec<u8> = row.try_get("checksum").map_err(db)?;
            applied.insert(version, checksum);
        }
        Ok(applied == embedded)
    }
}
