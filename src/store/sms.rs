//! SMS handed to a provider, with segments and cost (for ROI), and the delivery state the
//! provider reports back; inbound opt-outs find their contacts by phone number here.

use super::{Result, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

/// One message a provider took.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub provider: String,
    pub message_id: String,
    pub effect_key: String,
    pub contact_id: i64,
    pub journey_id: String,
    pub segments: u32,
    pub encoding: String,
    pub cost: Option<f64>,
    pub currency: Option<String>,
    /// What the provider said at once (`queued`, `sent`, ...).
    pub status: String,
    pub sent_at: DateTime<Utc>,
}

/// Records many sent messages, each with its first delivery state, in two statements per
/// chunk. A message recorded already (an effect sent twice after a lease ran out keeps both
/// provider ids; the same id twice is one message) is left as it is.
pub async fn record_sent(connection: &mut AnyConnection, messages: &[Sent]) -> Result<()> {
    for chunk in messages.chunks(super::rows_per_statement(10)) {
        let sql = format!(
            "INSERT INTO sms_messages (provider, message_id, effect_key, contact_id, journey_id, segments, encoding, cost, currency, sent_at)
             VALUES {} ON CONFLICT DO NOTHING",
            super::value_rows(1, chunk.len(), &[""; 10])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for sent in chunk {
            query = query
                .bind(&sent.provider)
                .bind(&sent.message_id)
                .bind(&sent.effect_key)
                .bind(sent.contact_id)
                .bind(&sent.journey_id)
                .bind(i32::try_from(sent.segments).unwrap_or(i32::MAX))
                .bind(&sent.encoding)
                .bind(sent.cost)
                .bind(sent.currency.clone())
                .bind(ms(sent.sent_at));
        }
        query.execute(&mut *connection).await?;
    }
    for chunk in messages.chunks(super::rows_per_statement(5)) {
        let sql = format!(
            "INSERT INTO sms_deliveries (provider, message_id, status, rank, updated_at) VALUES {}
             ON CONFLICT (provider, message_id) DO NOTHING",
            super::value_rows(1, chunk.len(), &[""; 5])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for sent in chunk {
            query = query
                .bind(&sent.provider)
                .bind(&sent.message_id)
                .bind(&sent.status)
                .bind(delivery_rank(&sent.status))
                .bind(ms(sent.sent_at));
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// A provider's report on one message. Moves the state forward only: a late `sent` after
/// `delivered` changes nothing. Returns whether it changed the state.
pub async fn record_status(
    connection: &mut AnyConnection,
    provider: &str,
    message_id: &str,
    status: &str,
    error_code: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "INSERT INTO sms_deliveries (provider, message_id, status, rank, error_code, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (provider, message_id) DO UPDATE SET status = excluded.status, rank = excluded.rank,
             error_code = excluded.error_code, updated_at = excluded.updated_at
         WHERE sms_deliveries.rank < excluded.rank",
    )
    .bind(provider)
    .bind(message_id)
    .bind(status)
    .bind(delivery_rank(status))
    .bind(error_code)
    .bind(ms(now))
    .execute(connection)
    .await?;
    Ok(result.rows_affected() > 0)
}

/// Where a delivery state stands in a message's life; a report never moves a message back.
pub fn delivery_rank(status: &str) -> i32 {
    match status {
        "accepted" | "scheduled" => 1,
        "queued" => 2,
        "sending" => 3,
        "sent" => 4,
        "failed" | "undelivered" | "delivered" | "partially_delivered" | "canceled" => 5,
        "read" => 6,
        // Unknown states (Twilio adds some without notice) are recorded but never win.
        _ => 0,
    }
}

/// A message as ROI and tests see it: segments, cost and the latest delivery state.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub provider: String,
    pub message_id: String,
    pub effect_key: String,
    pub segments: u32,
    pub encoding: String,
    pub cost: Option<f64>,
    pub currency: Option<String>,
    pub status: Option<String>,
    pub error_code: Option<String>,
}

/// A contact's messages, oldest first.
pub async fn of_contact(connection: &mut AnyConnection, contact_id: i64) -> Result<Vec<Delivery>> {
    let rows = sqlx::query(
        "SELECT m.provider, m.message_id, m.effect_key, m.segments, m.encoding, m.cost, m.currency, d.status, d.error_code
         FROM sms_messages m LEFT JOIN sms_deliveries d ON d.provider = m.provider AND d.message_id = m.message_id
         WHERE m.contact_id = $1 ORDER BY m.sent_at, m.message_id",
    )
    .bind(contact_id)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Delivery {
                provider: row.try_get(0)?,
                message_id: row.try_get(1)?,
                effect_key: row.try_get(2)?,
                segments: u32::try_from(row.try_get::<i32, _>(3)?)
                    .map_err(|_| super::Error::Corrupt("negative SMS segments".into()))?,
                encoding: row.try_get(4)?,
                cost: row.try_get(5)?,
                currency: row.try_get(6)?,
                status: row.try_get(7)?,
                error_code: row.try_get(8)?,
            })
        })
        .collect()
}

/// Contacts with this phone number (E.164), on their profile or as an identity.
pub async fn contacts_with_phone(connection: &mut AnyConnection, phone: &str) -> Result<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT id FROM contacts WHERE phone = $1
         UNION SELECT contact_id FROM identities WHERE kind = 'phone' AND value = $1",
    )
    .bind(phone)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}
