//! What the reconciler reads to repair lost jobs, a page at a time: under a backlog it walks
//! the overdue enrollments with a cursor instead of reading the same oldest page every round.

use super::{Result, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

/// Where a walk over overdue enrollments stands: the last `(due_at ms, id)` read.
pub type Cursor = (i64, i64);

/// Running enrollments due at or before `before`, after `cursor` in `(due_at, id)` order, at
/// most `limit`; as `(id, seq)` with the cursor of the last one.
pub async fn overdue_after(
    connection: &mut AnyConnection,
    before: DateTime<Utc>,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<(Vec<(i64, u64)>, Option<Cursor>)> {
    let (due, id) = cursor.unwrap_or((i64::MIN, i64::MIN));
    let rows = sqlx::query(
        "SELECT id, seq, due_at FROM enrollments
         WHERE status IN ('active', 'waiting') AND due_at <= $1 AND (due_at > $2 OR (due_at = $3 AND id > $4))
         ORDER BY due_at, id LIMIT $5",
    )
    .bind(ms(before))
    .bind(due)
    .bind(due)
    .bind(id)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    let mut found = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        found.push((id, row.try_get::<i64, _>(1)? as u64));
        last = Some((row.try_get(2)?, id));
    }
    Ok((found, last))
}
