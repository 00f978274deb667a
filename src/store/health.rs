//! What `/readyz` asks the database: is it reachable, and is its schema this build's.

use super::{Kind, POSTGRES_MIGRATIONS, Result, SQLITE_MIGRATIONS, Store};
use sqlx::Row;

impl Store {
    /// Answers a trivial query: the database is up and a connection can be had.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The versions of this build's migrations that the database has not applied (a process
    /// started against a database another, older process migrated, or a failed migration).
    pub async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let migrator = match self.kind {
            Kind::Postgres => &POSTGRES_MIGRATIONS,
            Kind::Sqlite => &SQLITE_MIGRATIONS,
        };
        let applied: std::collections::HashSet<i64> = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        Ok(migrator
            .iter()
            .filter(|migration| !migration.migration_type.is_down_migration())
            .map(|migration| migration.version)
            .filter(|version| !applied.contains(version))
            .collect())
    }
}
