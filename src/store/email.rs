//! What email feedback keeps: the secret that signs links, suppressed addresses (hard bounces
//! and complaints), and the lookups unsubscribe and tracking links need.

use super::{Result, Tx, from_ms, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

/// The secret called `name`: `generated` the first time, whatever was kept ever after. Two
/// processes starting at once agree (the first insert wins, both read it back).
pub async fn server_secret(
    connection: &mut AnyConnection,
    name: &str,
    generated: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    sqlx::query("INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(name)
        .bind(generated)
        .bind(ms(now))
        .execute(&mut *connection)
        .await?;
    let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// A suppressed address, as the 360 view and the admin API show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Suppression {
    pub channel: String,
    pub address: String,
    /// `hard_bounce` or `complaint`.
    pub reason: String,
    /// What the provider said (`550 5.1.1 user unknown`).
    pub detail: String,
    /// Who reported it: `postmark`, `generic`, ...
    pub source: String,
    pub since: DateTime<Utc>,
    /// Set once an admin lifted it: the address may be mailed again.
    pub lifted_at: Option<DateTime<Utc>>,
    pub lifted_by: Option<String>,
}

const SUPPRESSION_COLUMNS: &str = "channel, address, reason, detail, source, created_at, lifted_at, lifted_by";

fn suppression(row: &sqlx::any::AnyRow) -> Result<Suppression> {
    Ok(Suppression {
        channel: row.try_get("channel")?,
        address: row.try_get("address")?,
        reason: row.try_get("reason")?,
        detail: row.try_get("detail")?,
        source: row.try_get("source")?,
        since: from_ms(row.try_get("created_at")?),
        lifted_at: super::opt_ms(row, "lifted_at"),
        lifted_by: row.try_get("lifted_by")?,
    })
}

/// Suppresses an address; returns whether it is newly suppressed. An address already
/// suppressed keeps its first reason; a lifted one is suppressed again.
pub async fn suppress(
    tx: &mut Tx<'_>,
    channel: &str,
    address: &str,
    reason: &str,
    detail: &str,
    source: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "INSERT INTO suppressions (channel, address, reason, detail, source, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (channel, address) DO UPDATE SET reason = excluded.reason, detail = excluded.detail,
             source = excluded.source, created_at = excluded.created_at, lifted_at = NULL, lifted_by = NULL
         WHERE suppressions.lifted_at IS NOT NULL",
    )
    .bind(channel)
    .bind(address)
    .bind(reason)
    .bind(detail)
    .bind(source)
    .bind(ms(now))
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Lifts an address's suppression; returns it as lifted, or `None` if it was not suppressed.
pub async fn lift(
    connection: &mut AnyConnection,
    channel: &str,
    address: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Option<Suppression>> {
    let sql = format!(
        "UPDATE suppressions SET lifted_at = $1, lifted_by = $2 WHERE channel = $3 AND address = $4 AND lifted_at IS NULL
         RETURNING {SUPPRESSION_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)))
        .bind(ms(now))
        .bind(by)
        .bind(channel)
        .bind(address)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(suppression).transpose()
}

/// Suppressions of these addresses, lifted ones too, newest first: `(channel, address)` pairs.
pub async fn of_addresses(connection: &mut AnyConnection, addresses: &[(&str, &str)]) -> Result<Vec<Suppression>> {
    let mut found = Vec::new();
    for (channel, address) in addresses {
        let sql = format!("SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE channel = $1 AND address = $2");
        for row in sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)))
            .bind(*channel)
            .bind(*address)
            .fetch_all(&mut *connection)
            .await?
        {
            found.push(suppression(&row)?);
        }
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.since));
    Ok(found)
}

/// Addresses suppressed now, newest first, up to `limit`.
pub async fn active(connection: &mut AnyConnection, limit: i64) -> Result<Vec<Suppression>> {
    let sql = format!(
        "SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE lifted_at IS NULL ORDER BY created_at DESC, address LIMIT $1"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)))
        .bind(limit)
        .fetch_all(connection)
        .await?;
    rows.iter().map(suppression).collect()
}

/// Contacts whose email address is `address`.
pub async fn contacts_with_email(connection: &mut AnyConnection, address: &str) -> Result<Vec<i64>> {
    let rows = sqlx::query("SELECT id FROM contacts WHERE email = $1 ORDER BY id")
        .bind(address)
        .fetch_all(connection)
        .await?;
    rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
}

/// The contact a link sent to `id` belongs to now: `id` itself, or the contact it was merged
/// into. `None` if it was erased or is gone.
pub async fn surviving_contact(connection: &mut AnyConnection, id: i64) -> Result<Option<i64>> {
    let mut current = id;
    // Merges chain rarely; a bound keeps a corrupt cycle from looping.
    for _ in 0..16 {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM contacts WHERE id = $1) AS present,
                    (SELECT COUNT(*) FROM contact_merges WHERE merged_id = $1 AND survivor_id = $1) AS erased,
                    (SELECT MAX(survivor_id) FROM contact_merges WHERE merged_id = $1 AND survivor_id <> $1) AS survivor",
        )
        .bind(current)
        .fetch_one(&mut *connection)
        .await?;
        if row.try_get::<i64, _>("erased")? > 0 {
            return Ok(None);
        }
        if row.try_get::<i64, _>("present")? > 0 {
            return Ok(Some(current));
        }
        match row.try_get::<Option<i64>, _>("survivor")? {
            Some(survivor) => current = survivor,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// What enrollments that were made to exit still owed (mail, assignments) is not owed any more.
pub async fn cancel_unsent(tx: &mut Tx<'_>, enrollment_ids: &[i64]) -> Result<u64> {
    let mut cancelled = 0;
    for chunk in enrollment_ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "UPDATE effects SET status = 'cancelled' WHERE status IN ('pending', 'sending') AND enrollment_id IN ({})",
            super::placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for id in chunk {
            query = query.bind(*id);
        }
        cancelled += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(cancelled)
}
