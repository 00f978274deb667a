//! The events API's inbox: requests stored as they came, before they are applied (see
//! `engine/inbox.rs`). A row is one request's checked messages; applying it deletes it in the
//! same transaction, so a row is applied once whoever gets to it first.

use super::{Result, Tx, for_dialect, padded, padded_len, padded_rows_per_statement, placeholders, value_rows};
use sqlx::Row;

/// A stored request.
#[derive(Clone, Debug)]
pub struct Stored {
    pub id: i64,
    pub source: String,
    /// The messages, as `engine::inbox` wrote them.
    pub body: String,
}

/// Stores requests (source, body, received at ms); returns their ids in the order given.
pub async fn store(tx: &mut Tx<'_>, requests: &[(&str, &str, i64)]) -> Result<Vec<i64>> {
    let mut ids = vec![0i64; requests.len()];
    let rows = padded_rows_per_statement(4);
    for (chunk_index, chunk) in requests.chunks(rows).enumerate() {
        // `part` says which request a returned id is for: RETURNING promises no order.
        let sql = format!(
            "INSERT INTO inbox (source, body, received_at, part) VALUES {} RETURNING id, part",
            value_rows(1, chunk.len(), &[""; 4])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(for_dialect(tx, sql)));
        for (part, (source, body, at)) in chunk.iter().enumerate() {
            query = query.bind(*source).bind(*body).bind(*at).bind(part as i64);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let (id, part): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(slot) = usize::try_from(part)
                .ok()
                .and_then(|p| ids.get_mut(chunk_index * rows + p))
            {
                *slot = id;
            }
        }
    }
    Ok(ids)
}

/// Lets the caller's transaction, which applies stored rows, commit without waiting for
/// PostgreSQL to flush it to disk (`synchronous_commit = off` for this transaction only; SQLite
/// is left as it is). Why it is safe: the rows stay in the inbox until that commit is on disk,
/// since a crash that loses the commit loses its delete of them too, and they are applied
/// again. And nothing outside the database acts on what applying wrote until a later
/// transaction commits durably: a step batch commits before it performs any effect, and a
/// commit flushes the log in order, earlier asynchronous commits included. Why: a group writes
/// a few MB of log and need not wait for it; applying kept up 4-8% faster (BENCHMARKS.md,
/// session 9), with no change the runs could show in the requests' own latency.
pub async fn apply_without_waiting_for_disk(tx: &mut Tx<'_>) -> Result<()> {
    super::commit_without_waiting_for_disk(tx).await
}

/// Deletes the rows of `ids` that are still there and returns those: only they may be applied
/// by this transaction. A row another transaction is applying waits for it and is then gone.
pub async fn take(tx: &mut Tx<'_>, ids: &[i64]) -> Result<Vec<i64>> {
    let mut taken = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "DELETE FROM inbox WHERE id IN ({}) RETURNING id",
            placeholders(1, padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(for_dialect(tx, sql)));
        for id in padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            taken.push(row.try_get(0)?);
        }
    }
    Ok(taken)
}

/// The oldest rows received before `before` that have failed fewer than `attempts` times.
pub async fn oldest(
    connection: &mut sqlx::AnyConnection,
    before: i64,
    attempts: i64,
    not_before_retry: i64,
    limit: i64,
) -> Result<Vec<Stored>> {
    let rows = sqlx::query(
        "SELECT id, source, body FROM inbox WHERE received_at < $1 AND attempts < $2
         AND (retry_at IS NULL OR retry_at <= $3) ORDER BY id LIMIT $4",
    )
    .bind(before)
    .bind(attempts)
    .bind(not_before_retry)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Stored {
                id: row.try_get(0)?,
                source: row.try_get(1)?,
                body: row.try_get(2)?,
            })
        })
        .collect()
}

/// Notes that applying a row failed: it is tried again from `retry_at`.
pub async fn failed(pool: &sqlx::AnyPool, id: i64, error: &str, retry_at: i64) -> Result<()> {
    sqlx::query("UPDATE inbox SET attempts = attempts + 1, last_error = $1, retry_at = $2 WHERE id = $3")
        .bind(error)
        .bind(retry_at)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Rows waiting to be applied, and those given up on (at `attempts` failures or more).
pub async fn counts(pool: &sqlx::AnyPool, attempts: i64) -> Result<(i64, i64)> {
    let row = sqlx::query("SELECT COUNT(*), COALESCE(SUM(CASE WHEN attempts >= $1 THEN 1 ELSE 0 END), 0) FROM inbox")
        .bind(attempts)
        .fetch_one(pool)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
