//! Side effects, recorded under their key in the step's transaction before they are performed
//! and marked done after, so a retry never repeats an effect recorded as done.

use super::{Error, Result, ms};
use crate::engine::transition::Effect;
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

#[derive(Clone, Debug)]
pub struct Pending {
    pub key: String,
    pub step: String,
    pub effect: Effect,
    pub attempts: i32,
    /// `sending`: claimed until then (ms since the epoch); `None` while pending.
    pub claimed_until: Option<i64>,
    /// Recorded by this step batch already claimed (`save_moves` with `held_until`): the batch
    /// holds it until `claimed_until` without a claim of its own.
    pub ours: bool,
}

/// Effects of an enrollment still to perform: pending ones, and ones whose sender's lease ran
/// out (it died while sending: the one window where a message can go out twice).
pub async fn pending(connection: &mut AnyConnection, enrollment_id: i64, now: DateTime<Utc>) -> Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT effect_key, step, payload, attempts, claimed_until FROM effects
         WHERE enrollment_id = $1 AND (status = 'pending' OR (status = 'sending' AND claimed_until < $2)) ORDER BY created_at, effect_key",
    )
    .bind(enrollment_id)
    .bind(ms(now))
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|r| {
            let payload: String = r.try_get(2)?;
            Ok(Pending {
                key: r.try_get(0)?,
                step: r.try_get(1)?,
                effect: serde_json::from_str(&payload).map_err(|e| Error::Corrupt(e.to_string()))?,
                attempts: r.try_get(3)?,
                claimed_until: r.try_get(4)?,
                ours: false,
            })
        })
        .collect()
}

/// Effects of many enrollments not done yet, as `(enrollment id, effect)` in the order to
/// perform: pending ones, and ones being sent. The caller claims them before it performs them;
/// one whose sender still holds its lease cannot be claimed, and its enrollment must not move
/// on past it (the sender may have died: after the lease, it is tried again).
pub async fn pending_many(connection: &mut AnyConnection, enrollment_ids: &[i64]) -> Result<Vec<(i64, Pending)>> {
    let mut pending = Vec::new();
    for chunk in enrollment_ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT enrollment_id, effect_key, step, payload, attempts, claimed_until FROM effects
             WHERE enrollment_id IN ({}) AND status IN ('pending', 'sending')
             ORDER BY created_at, effect_key",
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for r in query.fetch_all(&mut *connection).await? {
            let payload: String = r.try_get(3)?;
            pending.push((
                r.try_get(0)?,
                Pending {
                    key: r.try_get(1)?,
                    step: r.try_get(2)?,
                    effect: serde_json::from_str(&payload).map_err(|e| Error::Corrupt(e.to_string()))?,
                    attempts: r.try_get(4)?,
                    claimed_until: r.try_get(5)?,
                    ours: false,
                },
            ));
        }
    }
    Ok(pending)
}

/// `claim` for many effects in one statement; returns the keys this worker now holds.
pub async fn claim_many(
    connection: &mut AnyConnection,
    keys: &[&str],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>> {
    let mut claimed = std::collections::HashSet::with_capacity(keys.len());
    for chunk in keys.chunks(super::IN_CHUNK) {
        let sql = format!(
            "UPDATE effects SET status = 'sending', claimed_until = $1
             WHERE (status = 'pending' OR (status = 'sending' AND claimed_until < $2)) AND effect_key IN ({})
             RETURNING effect_key",
            super::placeholders(3, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)))
            .bind(ms(until))
            .bind(ms(now));
        for key in super::padded(chunk) {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&mut *connection).await? {
            claimed.insert(row.try_get(0)?);
        }
    }
    Ok(claimed)
}

/// Extends this batch's own claims (recorded claimed by `save_moves`, see `Pending::ours`) to
/// `until`: `(key, claimed_until as recorded)` pairs. A claim that ran out and was taken by
/// another worker has another `claimed_until`, so it is not extended. Returns the keys held.
pub async fn extend_many(
    connection: &mut AnyConnection,
    held: &[(&str, i64)],
    until: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>> {
    let mut extended = std::collections::HashSet::with_capacity(held.len());
    for chunk in held.chunks(super::padded_rows_per_statement(2)) {
        let sql = format!(
            "UPDATE effects SET claimed_until = $1 FROM (VALUES {}) AS v
             WHERE effects.effect_key = v.column1 AND effects.claimed_until = v.column2 AND effects.status = 'sending'
             RETURNING effects.effect_key",
            super::value_rows(2, super::padded_len(chunk.len()), &["TEXT", "BIGINT"])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql))).bind(ms(until));
        for (key, claimed_until) in super::padded(chunk) {
            query = query.bind(*key).bind(*claimed_until);
        }
        for row in query.fetch_all(&mut *connection).await? {
            extended.insert(row.try_get(0)?);
        }
    }
    Ok(extended)
}

/// `mark_done` for many effects in one statement: `(key, result, when it was performed)`. Only effects still
/// being sent (or pending) are marked: one cancelled meanwhile (its contact was erased) stays
/// cancelled, and its erased result stays erased.
pub async fn mark_done_many(connection: &mut AnyConnection, done: &[(String, String, DateTime<Utc>)]) -> Result<()> {
    for chunk in done.chunks(super::padded_rows_per_statement(3)) {
        let sql = format!(
            "UPDATE effects SET status = 'done', result = v.column2, done_at = v.column3, attempts = attempts + 1
             FROM (VALUES {}) AS v WHERE effects.effect_key = v.column1 AND effects.status IN ('sending', 'pending')",
            super::value_rows(1, super::padded_len(chunk.len()), &["TEXT", "TEXT", "BIGINT"])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for (key, result, at) in super::padded(chunk) {
            query = query.bind(key).bind(result).bind(ms(*at));
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// Takes the right to perform an effect until `until`; false if another worker holds it.
pub async fn claim(
    connection: &mut AnyConnection,
    key: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE effects SET status = 'sending', claimed_until = $1
         WHERE effect_key = $2 AND (status = 'pending' OR (status = 'sending' AND claimed_until < $3))",
    )
    .bind(ms(until))
    .bind(key)
    .bind(ms(now))
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn mark_done(connection: &mut AnyConnection, key: &str, result: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "UPDATE effects SET status = 'done', result = $1, done_at = $2, attempts = attempts + 1
         WHERE effect_key = $3 AND status IN ('sending', 'pending')",
    )
    .bind(result)
    .bind(ms(now))
    .bind(key)
    .execute(connection)
    .await?;
    Ok(())
}

/// Records a failed attempt of a claimed effect: `pending` again for a retry, or `failed`.
/// Returns the attempts so far, or `None` if the effect is no longer claimed: an erasure
/// cancelled it while it was being performed, and a retry must not bring it back to life.
pub async fn mark_attempt(connection: &mut AnyConnection, key: &str, error: &str, failed: bool) -> Result<Option<i32>> {
    let status = if failed { "failed" } else { "pending" };
    let row = sqlx::query("UPDATE effects SET attempts = attempts + 1, last_error = $1, status = $2, claimed_until = NULL WHERE effect_key = $3 AND status = 'sending' RETURNING attempts")
        .bind(error)
        .bind(status)
        .bind(key)
        .fetch_optional(connection)
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
}

/// Messages (email and SMS) delivered to a contact since `since`, for frequency caps.
pub async fn messages_since(connection: &mut AnyConnection, contact_id: i64, since: DateTime<Utc>) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) FROM effects WHERE contact_id = $1 AND status = 'done' AND kind IN ('email', 'sms') AND done_at >= $2")
        .bind(contact_id)
        .bind(ms(since))
        .fetch_one(connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// Effects performed, by kind and status: what tests and reports count.
pub async fn count(connection: &mut AnyConnection, kind: &str, status: &str) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) FROM effects WHERE kind = $1 AND status = $2")
        .bind(kind)
        .bind(status)
        .fetch_one(connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// A message effect of a contact that may have been handed over: its key, kind (`email`,
/// `sms`), and the days it may have been sent on (from its recording to its completion).
#[derive(Clone, Debug)]
pub struct Handed {
    pub key: String,
    pub kind: String,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

/// The contact's email and SMS effects that may have been sent or be being sent (erasure
/// redacts them from the outbox).
pub async fn messages_of_contact(connection: &mut AnyConnection, contact_id: i64) -> Result<Vec<Handed>> {
    let rows = sqlx::query(
        "SELECT effect_key, kind, created_at, done_at FROM effects
         WHERE contact_id = $1 AND kind IN ('email', 'sms') AND status IN ('done', 'sending', 'failed', 'pending')",
    )
    .bind(contact_id)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Handed {
                key: row.try_get(0)?,
                kind: row.try_get(1)?,
                from: super::from_ms(row.try_get(2)?),
                until: row.try_get::<Option<i64>, _>(3)?.map(super::from_ms),
            })
        })
        .collect()
}
