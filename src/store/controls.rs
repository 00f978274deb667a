//! Journey controls: pauses (`journey_pauses`), the enrollments a pause held, and live counts
//! per journey.

use super::{Result, from_ms, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

/// Pauses a journey; false if it was paused already (the first pause's time is kept).
pub async fn pause(connection: &mut AnyConnection, journey_id: &str, by: &str, now: DateTime<Utc>) -> Result<bool> {
    let result = sqlx::query(
        "INSERT INTO journey_pauses (journey_id, paused_at, paused_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(journey_id)
    .bind(ms(now))
    .bind(by)
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Resumes a journey; false if it was not paused.
pub async fn resume(connection: &mut AnyConnection, journey_id: &str) -> Result<bool> {
    let result = sqlx::query("DELETE FROM journey_pauses WHERE journey_id = $1")
        .bind(journey_id)
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Every paused journey and since when.
pub async fn paused(connection: &mut AnyConnection) -> Result<Vec<(String, DateTime<Utc>)>> {
    let rows = sqlx::query("SELECT journey_id, paused_at FROM journey_pauses")
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, from_ms(row.try_get(1)?))))
        .collect()
}

/// The enrollments of a journey that are due by `now`, or have effects recorded and not
/// performed: what a pause held, to queue again on resume.
pub async fn held(connection: &mut AnyConnection, journey_id: &str, now: DateTime<Utc>) -> Result<Vec<(i64, u64)>> {
    let rows = sqlx::query(
        "SELECT id, seq FROM enrollments WHERE journey_id = $1 AND status IN ('active', 'waiting') AND due_at <= $2
         UNION
         SELECT e.id, e.seq FROM effects f JOIN enrollments e ON e.id = f.enrollment_id
         WHERE f.journey_id = $3 AND f.status IN ('pending', 'sending') AND e.status NOT IN ('failed', 'exited')",
    )
    .bind(journey_id)
    .bind(ms(now))
    .bind(journey_id)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get(1)?;
            Ok((row.try_get(0)?, seq as u64))
        })
        .collect()
}

/// One journey's enrollments counted by status and current step (`None` once finished).
pub struct Count {
    pub status: String,
    pub step: Option<String>,
    pub count: i64,
}

/// The live counts' one query: read from the index `enrollments_by_journey` alone.
pub const COUNTS_SQL: &str =
    "SELECT status, step, COUNT(*) FROM enrollments WHERE journey_id = $1 GROUP BY status, step ORDER BY status, step";

/// A journey's enrollments, grouped by status and step: one query.
pub async fn counts(connection: &mut AnyConnection, journey_id: &str) -> Result<Vec<Count>> {
    let rows = sqlx::query(COUNTS_SQL).bind(journey_id).fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            Ok(Count {
                status: row.try_get(0)?,
                step: row.try_get(1)?,
                count: row.try_get(2)?,
            })
        })
        .collect()
}
