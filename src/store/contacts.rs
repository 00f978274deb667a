//! Contacts: profile columns, traits and tags in their own tables (so concurrent steps never
//! overwrite each other's changes), and their events.

use super::{Result, Tx, ms, opt_ms};
use crate::engine::{Contact, ContactChange};
use crate::expr::EventFacts;
use crate::journey::values::Stage;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use sqlx::{AnyConnection, Row};

/// A contact to create.
#[derive(Clone, Debug, Default)]
pub struct NewContact {
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub stage: Option<Stage>,
    pub score: i64,
    pub timezone: Option<String>,
    pub language: Option<String>,
    pub traits: Map<String, Json>,
    pub tags: Vec<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

pub async fn create(connection: &mut AnyConnection, contact: &NewContact, now: DateTime<Utc>) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO contacts (external_id, email, phone, stage, score, timezone, language, created_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(contact.external_id.clone())
    .bind(contact.email.clone())
    .bind(contact.phone.clone())
    .bind(contact.stage.unwrap_or(Stage::Lead).as_str())
    .bind(contact.score)
    .bind(contact.timezone.clone())
    .bind(contact.language.clone())
    .bind(ms(now))
    .bind(contact.last_seen_at.map(ms))
    .fetch_one(&mut *connection)
    .await?;
    let id: i64 = row.get(0);
    for (name, value) in &contact.traits {
        set_trait(connection, id, name, value, now).await?;
    }
    for tag in &contact.tags {
        add_tag(connection, id, tag, now).await?;
    }
    Ok(id)
}

async fn set_trait(
    connection: &mut AnyConnection,
    id: i64,
    name: &str,
    value: &Json,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO contact_traits (contact_id, name, value, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (contact_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(name)
    .bind(value.to_string())
    .bind(ms(now))
    .execute(connection)
    .await?;
    Ok(())
}

async fn add_tag(connection: &mut AnyConnection, id: i64, tag: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("INSERT INTO contact_tags (contact_id, tag, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(id)
        .bind(tag)
        .bind(ms(now))
        .execute(connection)
        .await?;
    Ok(())
}

/// Many contacts by id with their traits, consent and tags: two queries per few thousand.
pub async fn load_many(connection: &mut AnyConnection, ids: &[i64]) -> Result<std::collections::HashMap<i64, Contact>> {
    let mut contacts = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let list = super::placeholders(1, super::padded_len(chunk.len()));
        let sql = format!(
            "SELECT id, email, phone, stage, score, timezone, language, created_at, last_seen_at,
                (SELECT reason FROM suppressions s WHERE s.channel = 'email' AND s.address = contacts.email AND s.lifted_at IS NULL) AS email_suppressed,
                (SELECT reason FROM suppressions s WHERE s.channel = 'sms' AND s.address = contacts.phone AND s.lifted_at IS NULL) AS sms_suppressed
             FROM contacts WHERE id IN ({list})"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            let id: i64 = row.try_get("id")?;
            // Suppressed addresses (hard bounces, complaints) come with the contact: a batch
            // needs no query of its own to honour them.
            let mut suppressed = std::collections::BTreeMap::new();
            for channel in ["email", "sms"] {
                if let Some(reason) = row.try_get::<Option<String>, _>(format!("{channel}_suppressed").as_str())? {
                    suppressed.insert(channel.to_string(), reason);
                }
            }
            contacts.insert(
                id,
                Contact {
                    id: id.to_string(),
                    email: row.try_get("email")?,
                    phone: row.try_get("phone")?,
                    score: row.try_get("score")?,
                    stage: row.try_get::<String, _>("stage")?.parse().unwrap_or(Stage::Lead),
                    timezone: row.try_get("timezone")?,
                    language: row.try_get("language")?,
                    created_at: opt_ms(&row, "created_at"),
                    last_seen_at: opt_ms(&row, "last_seen_at"),
                    suppressed,
                    ..Contact::default()
                },
            );
        }
        let n = super::padded_len(chunk.len());
        let sql = format!(
            "SELECT contact_id, 't' AS part, name, value, 0 AS added FROM contact_traits WHERE contact_id IN ({})
             UNION ALL SELECT contact_id, 'c', channel, CASE WHEN granted THEN 'true' ELSE 'false' END, 0 FROM contact_consent WHERE contact_id IN ({})
             UNION ALL SELECT contact_id, 'g', tag, '', added_at FROM contact_tags WHERE contact_id IN ({})
             ORDER BY 1, 2, 5, 3",
            super::placeholders(1, n),
            super::placeholders(n + 1, n),
            super::placeholders(2 * n + 1, n)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for _ in 0..3 {
            for id in super::padded(chunk) {
                query = query.bind(*id);
            }
        }
        for row in query.fetch_all(&mut *connection).await? {
            let id: i64 = row.try_get(0)?;
            let Some(contact) = contacts.get_mut(&id) else { continue };
            let part: String = row.try_get(1)?;
            let name: String = row.try_get(2)?;
            let value: String = row.try_get(3)?;
            match part.as_str() {
                "t" => {
                    contact
                        .traits
                        .insert(name, serde_json::from_str(&value).unwrap_or(Json::String(value)));
                }
                "c" => {
                    contact.consent.insert(name, value == "true");
                }
                _ => contact.tags.push(name),
            }
        }
    }
    Ok(contacts)
}

/// Applies many steps' changes in one transaction: tags and traits as multi-row statements.
/// Changes are in order; for a trait set twice the last value wins, as it would one by one.
pub async fn apply_many(tx: &mut Tx<'_>, changes: &[(i64, &ContactChange)], now: DateTime<Utc>) -> Result<()> {
    if changes.iter().any(|(_, c)| matches!(c, ContactChange::Untag { .. })) {
        // A removed tag may be added again later in the same list: keep the exact order.
        for (id, change) in changes {
            apply(tx, *id, std::slice::from_ref(*change), now).await?;
        }
        return Ok(());
    }
    let mut tags: Vec<(i64, &str)> = Vec::new();
    let mut traits: Vec<(i64, &str, String)> = Vec::new();
    for (id, change) in changes {
        match change {
            ContactChange::Tag { tag } => tags.push((*id, tag)),
            ContactChange::Set { name, value } => {
                traits.retain(|(c, n, _)| !(*c == *id && *n == name.as_str()));
                traits.push((*id, name, value.to_string()));
            }
            // Points are entries with their own statements (rare on the hot path).
            ContactChange::Untag { .. } | ContactChange::Score { .. } => {}
        }
    }
    for chunk in tags.chunks(super::rows_per_statement(3)) {
        let sql = format!(
            "INSERT INTO contact_tags (contact_id, tag, added_at) VALUES {} ON CONFLICT DO NOTHING",
            super::value_rows(1, chunk.len(), &[""; 3])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, tag) in chunk {
            query = query.bind(*id).bind(*tag).bind(ms(now));
        }
        query.execute(&mut **tx).await?;
    }
    for chunk in traits.chunks(super::rows_per_statement(4)) {
        let sql = format!(
            "INSERT INTO contact_traits (contact_id, name, value, updated_at) VALUES {}
             ON CONFLICT (contact_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            super::value_rows(1, chunk.len(), &[""; 4])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, name, value) in chunk {
            query = query.bind(*id).bind(*name).bind(value.as_str()).bind(ms(now));
        }
        query.execute(&mut **tx).await?;
    }
    for (id, change) in changes {
        if let ContactChange::Score { points } = change {
            super::scores::add(tx, *id, "journey-step", None, *points, now).await?;
        }
    }
    Ok(())
}

/// Applies a step's changes inside its transaction.
pub async fn apply(tx: &mut Tx<'_>, id: i64, changes: &[ContactChange], now: DateTime<Utc>) -> Result<()> {
    for change in changes {
        match change {
            ContactChange::Tag { tag } => add_tag(tx, id, tag, now).await?,
            ContactChange::Untag { tag } => {
                sqlx::query("DELETE FROM contact_tags WHERE contact_id = $1 AND tag = $2")
                    .bind(id)
                    .bind(tag)
                    .execute(&mut **tx)
                    .await?;
            }
            ContactChange::Set { name, value } => set_trait(tx, id, name, value, now).await?,
            ContactChange::Score { points } => {
                // Journey steps' points are entries too, so they decay and are explained.
                super::scores::add(tx, id, "journey-step", None, *points, now).await?;
            }
        }
    }
    Ok(())
}

/// Stores an event of a contact and marks the contact as seen.
pub async fn record_event(tx: &mut Tx<'_>, id: i64, event: &EventFacts, at: DateTime<Utc>) -> Result<i64> {
    record_received(tx, id, event, at, &Received::default()).await
}

/// How an event arrived through the API, kept beside it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub kind: Option<&'static str>,
    pub message_id: Option<String>,
    pub context: Option<String>,
    pub original_timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: Option<DateTime<Utc>>,
}

/// Stores an event with how it arrived, and marks the contact as seen.
pub async fn record_received(
    tx: &mut Tx<'_>,
    id: i64,
    event: &EventFacts,
    at: DateTime<Utc>,
    received: &Received,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO events (contact_id, name, properties, occurred_at, kind, message_id, context, original_timestamp, sent_at, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(id)
    .bind(&event.name)
    .bind(Json::Object(event.properties.clone()).to_string())
    .bind(ms(at))
    .bind(received.kind.unwrap_or("track"))
    .bind(received.message_id.clone())
    .bind(received.context.clone())
    .bind(received.original_timestamp.map(ms))
    .bind(received.sent_at.map(ms))
    .bind(received.received_at.map(ms))
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("UPDATE contacts SET last_seen_at = $1 WHERE id = $2 AND (last_seen_at IS NULL OR last_seen_at < $1)")
        .bind(ms(at))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(row.try_get(0)?)
}

/// `record_received` for many events: one multi-row insert, and each contact's `last_seen_at`
/// moved to its latest event in one statement. Returns the event ids, in order.
pub async fn record_many(tx: &mut Tx<'_>, events: &[(i64, &EventFacts, DateTime<Utc>, &Received)]) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(super::rows_per_statement(10)) {
        let sql = format!(
            "INSERT INTO events (contact_id, name, properties, occurred_at, kind, message_id, context, original_timestamp, sent_at, received_at)
             VALUES {} RETURNING id",
            super::value_rows(1, chunk.len(), &[""; 10])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, event, at, received) in chunk {
            query = query
                .bind(*id)
                .bind(event.name.clone())
                .bind(Json::Object(event.properties.clone()).to_string())
                .bind(ms(*at))
                .bind(received.kind.unwrap_or("track"))
                .bind(received.message_id.clone())
                .bind(received.context.clone())
                .bind(received.original_timestamp.map(ms))
                .bind(received.sent_at.map(ms))
                .bind(received.received_at.map(ms));
        }
        // Rows come back in the order of VALUES for a plain multi-row insert; ids are
        // generated in that order too, so sorting keeps them aligned either way.
        let mut chunk_ids: Vec<i64> = query
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        chunk_ids.sort_unstable();
        ids.extend(chunk_ids);
    }
    let mut latest: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for (id, _, at, _) in events {
        let at = ms(*at);
        latest.entry(*id).and_modify(|l| *l = (*l).max(at)).or_insert(at);
    }
    let latest: Vec<(i64, i64)> = latest.into_iter().collect();
    for chunk in latest.chunks(super::padded_rows_per_statement(2)) {
        let sql = format!(
            "UPDATE contacts SET last_seen_at = v.column2 FROM (VALUES {}) AS v
             WHERE contacts.id = v.column1 AND (contacts.last_seen_at IS NULL OR contacts.last_seen_at < v.column2)",
            super::value_rows(1, super::padded_len(chunk.len()), &["BIGINT", "BIGINT"])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, at) in super::padded(chunk) {
            query = query.bind(*id).bind(*at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(ids)
}

pub async fn count_events(connection: &mut AnyConnection, id: i64, name: &str, since: DateTime<Utc>) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) FROM events WHERE contact_id = $1 AND name = $2 AND occurred_at >= $3")
        .bind(id)
        .bind(name)
        .bind(ms(since))
        .fetch_one(connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// Ids of contacts, in pages, for schedule audiences.
pub async fn page_of_ids(connection: &mut AnyConnection, after: i64, limit: i64) -> Result<Vec<i64>> {
    let rows = sqlx::query("SELECT id FROM contacts WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(connection)
        .await?;
    rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
}

/// Records a contact's yes or no to marketing on a channel, said at `now`. The latest word
/// wins: a late message that is older than the stored answer changes nothing, so an opt-out
/// is never undone by an older opt-in (of two said at the same instant, the one that arrives
/// last wins, as a `STOP` then `START` reply expects).
pub async fn set_consent(tx: &mut Tx<'_>, id: i64, channel: &str, granted: bool, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO contact_consent (contact_id, channel, granted, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (contact_id, channel) DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at
         WHERE contact_consent.updated_at <= excluded.updated_at",
    )
    .bind(id)
    .bind(channel)
    .bind(granted)
    .bind(ms(now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Most traits one contact keeps. A message that would add more is refused (`api/ingest.rs`
/// checks before storing); under a race the store keeps the cap by dropping the new names.
pub const MAX_TRAITS: usize = 256;

/// Sets a message's traits, each only if it is newer than the stored value of that trait
/// (last writer wins per trait, by the message's time), in one statement. New names beyond
/// `MAX_TRAITS` are left out. Returns the names that were written.
pub async fn set_traits_at(
    tx: &mut Tx<'_>,
    id: i64,
    traits: &Map<String, Json>,
    at: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>> {
    let mut written = std::collections::HashSet::new();
    if traits.is_empty() {
        return Ok(written);
    }
    let known: std::collections::HashSet<String> = trait_names(tx, &[id])
        .await?
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    let mut room = MAX_TRAITS.saturating_sub(known.len());
    let mut rows: Vec<(&str, String)> = Vec::with_capacity(traits.len());
    for (name, value) in traits {
        if !known.contains(name) {
            if room == 0 {
                tracing::warn!(
                    contact = id,
                    "A contact reached the trait limit; new traits were left out."
                );
                continue;
            }
            room -= 1;
        }
        rows.push((name, value.to_string()));
    }
    for chunk in rows.chunks(super::rows_per_statement(4)) {
        let sql = format!(
            "INSERT INTO contact_traits (contact_id, name, value, updated_at) VALUES {}
             ON CONFLICT (contact_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
             WHERE contact_traits.updated_at <= excluded.updated_at
             RETURNING name",
            super::value_rows(1, chunk.len(), &[""; 4])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (name, value) in chunk {
            query = query.bind(id).bind(*name).bind(value.as_str()).bind(ms(at));
        }
        for row in query.fetch_all(&mut **tx).await? {
            written.insert(row.try_get(0)?);
        }
    }
    Ok(written)
}

/// How many traits each of these contacts has (contacts without any are absent).
pub async fn count_traits_many(
    connection: &mut AnyConnection,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, i64>> {
    let mut counts = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT contact_id, COUNT(*) FROM contact_traits WHERE contact_id IN ({}) GROUP BY contact_id",
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            counts.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    Ok(counts)
}

/// The trait names of these contacts, as `(contact, name)`.
pub async fn trait_names(connection: &mut AnyConnection, ids: &[i64]) -> Result<Vec<(i64, String)>> {
    let mut names = Vec::new();
    for chunk in ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT contact_id, name FROM contact_traits WHERE contact_id IN ({})",
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            names.push((row.try_get(0)?, row.try_get(1)?));
        }
    }
    Ok(names)
}

/// The profile columns a message fills: values from traits that won (`set_traits_at`) always,
/// values from the message's context (`timezone`, `locale`) only if the message is not older
/// than the contact's last activity.
#[derive(Debug, Default)]
pub struct Profile {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub timezone: Option<String>,
    pub context_timezone: Option<String>,
    pub language: Option<String>,
    pub context_language: Option<String>,
}

pub async fn set_profile(tx: &mut Tx<'_>, id: i64, profile: &Profile, at: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "UPDATE contacts SET email = COALESCE($1, email), phone = COALESCE($2, phone),
            timezone = COALESCE($3, CASE WHEN last_seen_at IS NULL OR last_seen_at <= $4 THEN $5 END, timezone),
            language = COALESCE($6, CASE WHEN last_seen_at IS NULL OR last_seen_at <= $7 THEN $8 END, language)
         WHERE id = $9",
    )
    .bind(profile.email.clone())
    .bind(profile.phone.clone())
    .bind(profile.timezone.clone())
    .bind(ms(at))
    .bind(profile.context_timezone.clone())
    .bind(profile.language.clone())
    .bind(ms(at))
    .bind(profile.context_language.clone())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
