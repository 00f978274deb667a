//! What the guardrails read: the messages recently recorded for contacts (frequency caps), and
//! the messages that were not sent, with why (the contact 360 view).

use super::{Result, from_ms, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

/// When messages (email and SMS) were recorded for these contacts since `since`, as
/// `(contact id, time)`: what frequency caps count, for a whole step batch in one statement
/// per 8,192 contacts. A message counts from the move that decided it, so two enrollments of
/// one contact cannot both slip under a cap while the first is still being sent. Failed,
/// cancelled and late-suppressed ones (the contact opted out between the move and the send)
/// were never sent and do not count.
pub async fn message_times(
    connection: &mut AnyConnection,
    contact_ids: &[i64],
    since: DateTime<Utc>,
) -> Result<Vec<(i64, DateTime<Utc>)>> {
    let mut times = Vec::new();
    for chunk in contact_ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT contact_id, created_at FROM effects
             WHERE contact_id IN ({}) AND kind IN ('email', 'sms') AND created_at >= $1
               AND status IN ('pending', 'sending', 'done') AND COALESCE(result, '') NOT LIKE 'suppressed%'",
            super::placeholders(2, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql))).bind(ms(since));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            times.push((row.try_get(0)?, from_ms(row.try_get(1)?)));
        }
    }
    Ok(times)
}

/// A message step that sent nothing, and why.
#[derive(Clone, Debug)]
pub struct Suppressed {
    pub journey: String,
    pub step: String,
    pub kind: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A contact's suppressed messages, newest first, from the step history.
pub async fn suppressed_of_contact(
    connection: &mut AnyConnection,
    contact_id: i64,
    limit: i64,
) -> Result<Vec<Suppressed>> {
    let rows = sqlx::query(
        "SELECT h.journey_id, h.step, h.kind, h.detail, h.at FROM step_history h
         JOIN enrollments e ON e.id = h.enrollment_id
         WHERE e.contact_id = $1 AND h.outcome = 'suppressed' ORDER BY h.at DESC, h.id DESC LIMIT $2",
    )
    .bind(contact_id)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Suppressed {
                journey: row.try_get(0)?,
                step: row.try_get(1)?,
                kind: row.try_get(2)?,
                reason: row.try_get(3)?,
                at: from_ms(row.try_get(4)?),
            })
        })
        .collect()
}
