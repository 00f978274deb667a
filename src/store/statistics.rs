//! Fresh planner statistics for tables that grow fast (PostgreSQL).
//!
//! PostgreSQL plans with the statistics of a table's last `ANALYZE`, and a connection keeps a
//! generic plan (ours, and the per-row foreign key checks') until those change. Autovacuum
//! analyzes a table once a tenth of it changed, but looks only once a minute per database. A
//! table that grows from a few rows to tens of thousands inside that minute (a new install, a
//! campaign's first burst) is planned as if it were still tiny: the foreign key check of every
//! history row scanned all of `enrollments`, and the batch compare-and-set hashed every active
//! enrollment. Measured on the reference bench: one 696-row history insert took 6 s.
//!
//! So the process analyzes a table itself once it holds more than twice its rows at the last
//! analyze (and at least `MIN_ROWS`): a table that doubles. The work is geometric in the
//! table's growth, and a big, settled table is left to autovacuum. Updates do not count: a
//! small table updated all the time (a rep's open leads, a team's cursor, contacts' last seen)
//! was analyzed every two seconds, and each analyze made every connection plan its statements
//! again; the first email's p99 at 500 events/s had a spike every two seconds from it.

use super::{Kind, Result, Store};
use sqlx::Row;

/// Tables smaller than this are never analyzed here: small tables plan well enough either way.
const MIN_ROWS: i64 = 1_000;

impl Store {
    /// Analyzes each of our tables that more than doubled since its last analyze.
    /// Returns the tables analyzed. Nothing to do on SQLite, whose plans do not rest on
    /// statistics nurture keeps.
    pub async fn analyze_grown_tables(&self) -> Result<Vec<String>> {
        if self.kind != Kind::Postgres {
            return Ok(Vec::new());
        }
        // `reltuples` is -1 for a table never analyzed; `n_live_tup` counts inserts less
        // deletes, kept by the statistics collector as rows change.
        let rows = sqlx::query(
            "SELECT CAST(s.relname AS TEXT) FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
             WHERE s.schemaname = current_schema()
               AND s.n_live_tup >= $1
               AND s.n_live_tup > 2 * c.reltuples
             ORDER BY s.n_live_tup DESC",
        )
        .bind(MIN_ROWS)
        .fetch_all(&self.pool)
        .await?;
        let mut analyzed = Vec::with_capacity(rows.len());
        for row in rows {
            let table: String = row.try_get(0)?;
            // Names come from the catalog; only plain ones are ours.
            if !table
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            // A tenth of the default sample (3,000 rows): plenty to tell a big table from a
            // tiny one, at a tenth of the cost (a default ANALYZE of a table in a burst took
            // ~200 ms of the database's CPU). Autovacuum's own analyze refines it later.
            let mut tx = self.begin().await?;
            sqlx::query("SET LOCAL default_statistics_target = 10")
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            analyzed.push(table);
        }
        Ok(analyzed)
    }
}
