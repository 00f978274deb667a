//! Journey controls: pauses (`journey_pauses`), the enrollments a pause held, and live counts
//! per journey; the claims and progress of schedule ticks (`schedule_ticks`), so an audience
//! whose enrollment a dead process left half done is resumed by another.

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

/// A schedule tick this process claimed: where its audience's enrollment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimedTick {
    /// The last contact id looked at by a committed page (0: none yet).
    pub cursor: i64,
    /// Contacts enrolled by the committed pages.
    pub enrolled: i64,
}

/// Claims a schedule tick for `process` until `lease_until`: a new one, or an unfinished one
/// whose claimer's lease ran out (it died mid-audience), to resume after its cursor. `None`:
/// done, or another process is at it.
pub async fn claim_tick(
    connection: &mut AnyConnection,
    journey_id: &str,
    tick: DateTime<Utc>,
    process: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<ClaimedTick>> {
    let row = sqlx::query(
        "INSERT INTO schedule_ticks (journey_id, tick, claimed_by, claimed_at, lease_until) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (journey_id, tick) DO UPDATE
         SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at, lease_until = excluded.lease_until
         WHERE schedule_ticks.done_at IS NULL AND schedule_ticks.lease_until < excluded.claimed_at
         RETURNING audience_cursor, enrolled",
    )
    .bind(journey_id)
    .bind(ms(tick))
    .bind(process)
    .bind(ms(now))
    .bind(ms(lease_until))
    .fetch_optional(connection)
    .await?;
    row.map(|row| {
        Ok(ClaimedTick {
            cursor: row.try_get(0)?,
            enrolled: row.try_get(1)?,
        })
    })
    .transpose()
}

/// A page of a tick's audience committed with its enrollments: the cursor moves to `cursor`,
/// `enrolled` more are counted and the lease is renewed. Run in the page's transaction; false
/// if the tick is no longer `process`'s (its lease ran out and another process took it over):
/// the page must then be rolled back.
#[allow(clippy::too_many_arguments)]
pub async fn tick_page_done(
    connection: &mut AnyConnection,
    journey_id: &str,
    tick: DateTime<Utc>,
    process: &str,
    cursor: i64,
    enrolled: i64,
    lease_until: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE schedule_ticks SET audience_cursor = $1, enrolled = enrolled + $2, lease_until = $3
         WHERE journey_id = $4 AND tick = $5 AND claimed_by = $6 AND done_at IS NULL",
    )
    .bind(cursor)
    .bind(enrolled)
    .bind(ms(lease_until))
    .bind(journey_id)
    .bind(ms(tick))
    .bind(process)
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The whole audience of a tick was looked at; false if it was not `process`'s any more.
pub async fn finish_tick(
    connection: &mut AnyConnection,
    journey_id: &str,
    tick: DateTime<Utc>,
    process: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE schedule_ticks SET done_at = $1, lease_until = NULL
         WHERE journey_id = $2 AND tick = $3 AND claimed_by = $4 AND done_at IS NULL",
    )
    .bind(ms(now))
    .bind(journey_id)
    .bind(ms(tick))
    .bind(process)
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Ticks left unfinished by a claimer whose lease ran out by `now`: `(journey, tick)`.
pub async fn abandoned_ticks(
    connection: &mut AnyConnection,
    now: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>> {
    let rows = sqlx::query("SELECT journey_id, tick FROM schedule_ticks WHERE done_at IS NULL AND lease_until < $1")
        .bind(ms(now))
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, from_ms(row.try_get(1)?))))
        .collect()
}
