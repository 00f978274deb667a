//! Score entries: every point a contact earned or lost, with the rule and event behind it.

use super::{Result, Tx, from_ms, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Entry {
    pub rule: String,
    pub event: Option<String>,
    pub points: i64,
    pub at: DateTime<Utc>,
}

pub async fn add(
    tx: &mut Tx<'_>,
    contact_id: i64,
    rule: &str,
    event_id: Option<i64>,
    points: i64,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("INSERT INTO score_entries (contact_id, rule, event_id, points, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(contact_id)
        .bind(rule)
        .bind(event_id)
        .bind(points)
        .bind(ms(at))
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE contacts SET score = score + $1 WHERE id = $2")
        .bind(points)
        .bind(contact_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Points a rule gave a contact since `since` (in absolute value, for caps).
pub async fn rule_points_since(
    connection: &mut AnyConnection,
    contact_id: i64,
    rule: &str,
    since: Option<DateTime<Utc>>,
) -> Result<i64> {
    let row = sqlx::query("SELECT CAST(COALESCE(SUM(points), 0) AS BIGINT) FROM score_entries WHERE contact_id = $1 AND rule = $2 AND at >= $3")
        .bind(contact_id)
        .bind(rule)
        .bind(since.map(ms).unwrap_or(i64::MIN))
        .fetch_one(connection)
        .await?;
    Ok(row.try_get::<i64, _>(0)?)
}

pub async fn of_contact(connection: &mut AnyConnection, contact_id: i64) -> Result<Vec<Entry>> {
    let rows = sqlx::query(
        "SELECT s.rule, e.name, s.points, s.at FROM score_entries s LEFT JOIN events e ON e.id = s.event_id WHERE s.contact_id = $1 ORDER BY s.at, s.id",
    )
    .bind(contact_id)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Entry {
                rule: r.try_get(0)?,
                event: r.try_get(1)?,
                points: r.try_get(2)?,
                at: from_ms(r.try_get(3)?),
            })
        })
        .collect()
}

/// Every entry's points and time for many contacts, for decayed scores: one query per few thousand.
pub async fn points_of_contacts(
    connection: &mut AnyConnection,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Vec<(i64, DateTime<Utc>)>>> {
    let mut points: std::collections::HashMap<i64, Vec<(i64, DateTime<Utc>)>> = std::collections::HashMap::new();
    for chunk in ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT contact_id, points, at FROM score_entries WHERE contact_id IN ({}) ORDER BY at, id",
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            points
                .entry(row.try_get(0)?)
                .or_default()
                .push((row.try_get(1)?, from_ms(row.try_get(2)?)));
        }
    }
    Ok(points)
}

/// How many entries a contact has.
pub async fn count_of_contact(connection: &mut AnyConnection, contact_id: i64) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) FROM score_entries WHERE contact_id = $1")
        .bind(contact_id)
        .fetch_one(connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// A contact's entries from before `before`, as `(id, rule, points, at)`, oldest first.
pub async fn older_than(
    connection: &mut AnyConnection,
    contact_id: i64,
    before: DateTime<Utc>,
) -> Result<Vec<(i64, String, i64, DateTime<Utc>)>> {
    let rows =
        sqlx::query("SELECT id, rule, points, at FROM score_entries WHERE contact_id = $1 AND at < $2 ORDER BY at, id")
            .bind(contact_id)
            .bind(ms(before))
            .fetch_all(connection)
            .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, from_ms(r.try_get(3)?))))
        .collect()
}

/// Replaces entries of one rule with one (`scoring::fold`); the contact's total is unchanged.
pub async fn replace(
    tx: &mut Tx<'_>,
    contact_id: i64,
    ids: &[i64],
    rule: &str,
    points: i64,
    at: DateTime<Utc>,
) -> Result<()> {
    for chunk in ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "DELETE FROM score_entries WHERE contact_id = $1 AND id IN ({})",
            super::placeholders(2, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql))).bind(contact_id);
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        query.execute(&mut **tx).await?;
    }
    sqlx::query("INSERT INTO score_entries (contact_id, rule, event_id, points, at) VALUES ($1, $2, NULL, $3, $4)")
        .bind(contact_id)
        .bind(rule)
        .bind(points)
        .bind(ms(at))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
