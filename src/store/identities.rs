//! Identity resolution: every identifier a contact is known by (user id, anonymous id, email,
//! phone), and merging two contacts found to be one person.

use super::{Result, Tx, ms};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

pub async fn find(connection: &mut AnyConnection, kind: &str, value: &str) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT contact_id FROM identities WHERE kind = $1 AND value = $2")
        .bind(kind)
        .bind(value)
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The owners of many identifiers at once, as `(kind, value) -> contact`: one query per kind
/// (`kind = $1 AND value IN (...)`, one index scan of the primary key; an `OR` of pairs made
/// PostgreSQL plan a branch per pair).
pub async fn find_many(
    connection: &mut AnyConnection,
    ids: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), i64>> {
    let mut by_kind: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (kind, value) in ids {
        by_kind.entry(*kind).or_default().push(*value);
    }
    let mut found = std::collections::HashMap::with_capacity(ids.len());
    for (kind, values) in by_kind {
        for chunk in values.chunks(super::IN_CHUNK) {
            let sql = format!(
                "SELECT kind, value, contact_id FROM identities WHERE kind = $1 AND value IN ({})",
                super::placeholders(2, super::padded_len(chunk.len()))
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql))).bind(kind);
            for value in super::padded(chunk) {
                query = query.bind(*value);
            }
            for row in query.fetch_all(&mut *connection).await? {
                found.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
            }
        }
    }
    Ok(found)
}

/// Links an identifier to a contact unless it already belongs to someone; returns whether it
/// was linked now. On PostgreSQL a link racing an uncommitted one waits for that transaction,
/// and then finds the identifier taken (`false`) or free.
pub async fn link(
    connection: &mut AnyConnection,
    kind: &str,
    value: &str,
    contact_id: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "INSERT INTO identities (kind, value, contact_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(kind)
    .bind(value)
    .bind(contact_id)
    .bind(ms(now))
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes a contact this transaction created and that lost the race for its identifiers; it
/// has nothing yet but those identifiers (deleted with it).
pub async fn discard_new_contact(connection: &mut AnyConnection, contact_id: i64) -> Result<()> {
    sqlx::query("DELETE FROM contacts WHERE id = $1")
        .bind(contact_id)
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn user_id_of(connection: &mut AnyConnection, contact_id: i64) -> Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM identities WHERE contact_id = $1 AND kind = 'user_id' LIMIT 1")
        .bind(contact_id)
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn of_contact(connection: &mut AnyConnection, contact_id: i64) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT kind, value FROM identities WHERE contact_id = $1 ORDER BY kind, value")
        .bind(contact_id)
        .fetch_all(connection)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Moves everything of `merged` onto `survivor` and deletes `merged`, leaving an audit row.
/// Where both are in the same journey, the survivor's enrollment continues and the other exits.
pub async fn merge(tx: &mut Tx<'_>, survivor: i64, merged: i64, reason: &str, now: DateTime<Utc>) -> Result<()> {
    let statements: [&'static str; 19] = [
        "UPDATE identities SET contact_id = $1 WHERE contact_id = $2",
        // A no from either record stands.
        "INSERT INTO contact_consent (contact_id, channel, granted, updated_at) SELECT $1, channel, granted, updated_at FROM contact_consent WHERE contact_id = $2
         ON CONFLICT (contact_id, channel) DO UPDATE SET granted = contact_consent.granted AND excluded.granted",
        "UPDATE score_entries SET contact_id = $1 WHERE contact_id = $2",
        // The survivor keeps its own value of a trait both have, unless the other's is newer.
        "INSERT INTO contact_traits (contact_id, name, value, updated_at) SELECT $1, name, value, updated_at FROM contact_traits WHERE contact_id = $2
         ON CONFLICT (contact_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at WHERE excluded.updated_at > contact_traits.updated_at",
        "INSERT INTO contact_tags (contact_id, tag, added_at) SELECT $1, tag, added_at FROM contact_tags WHERE contact_id = $2 ON CONFLICT DO NOTHING",
        "UPDATE events SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE enrollments SET status = 'exited', due_at = NULL WHERE contact_id = $2 AND status IN ('active', 'waiting', 'failed')
         AND EXISTS (SELECT 1 FROM enrollments s WHERE s.contact_id = $1 AND s.journey_id = enrollments.journey_id
                     AND s.enrollment_key = enrollments.enrollment_key AND s.status IN ('active', 'waiting', 'failed'))",
        // What the exited enrollments had still to send or assign is not owed any more.
        "UPDATE effects SET status = 'cancelled' WHERE status IN ('pending', 'sending')
         AND enrollment_id IN (SELECT id FROM enrollments WHERE contact_id = $2 AND status = 'exited')",
        "UPDATE enrollments SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE waiters SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE effects SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE conversions SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE assignments SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE touches SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE revenue_events SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE stage_changes SET contact_id = $1 WHERE contact_id = $2",
        "UPDATE contacts SET
            score = score + (SELECT score FROM contacts WHERE id = $2),
            email = COALESCE(email, (SELECT email FROM contacts WHERE id = $2)),
            phone = COALESCE(phone, (SELECT phone FROM contacts WHERE id = $2)),
            timezone = COALESCE(timezone, (SELECT timezone FROM contacts WHERE id = $2)),
            language = COALESCE(language, (SELECT language FROM contacts WHERE id = $2)),
            owner = COALESCE(owner, (SELECT owner FROM contacts WHERE id = $2))
         WHERE id = $1",
        "UPDATE contacts SET last_seen_at = (SELECT last_seen_at FROM contacts WHERE id = $2)
         WHERE id = $1 AND (last_seen_at IS NULL OR last_seen_at < (SELECT last_seen_at FROM contacts WHERE id = $2))",
        "DELETE FROM contacts WHERE id = $2",
    ];
    // A merged contact's stage only ever moves the survivor forward.
    let stages = sqlx::query("SELECT id, stage FROM contacts WHERE id IN ($1, $2)")
        .bind(survivor)
        .bind(merged)
        .fetch_all(&mut **tx)
        .await?;
    let best = stages
        .iter()
        .filter_map(|r| r.get::<String, _>(1).parse::<crate::journey::values::Stage>().ok())
        .max();
    for statement in statements {
        sqlx::query(statement)
            .bind(survivor)
            .bind(merged)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(stage) = best {
        sqlx::query("UPDATE contacts SET stage = $1 WHERE id = $2")
            .bind(stage.as_str())
            .bind(survivor)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("INSERT INTO contact_merges (survivor_id, merged_id, reason, at) VALUES ($1, $2, $3, $4)")
        .bind(survivor)
        .bind(merged)
        .bind(reason)
        .bind(ms(now))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Erasure (GDPR/PIPL): the person's identifiers, profile and event details are deleted; the
/// events and enrollments stay, on an anonymous contact, so reports keep their counts.
pub async fn erase(tx: &mut Tx<'_>, contact_id: i64, now: DateTime<Utc>) -> Result<bool> {
    let exists = sqlx::query("SELECT id FROM contacts WHERE id = $1")
        .bind(contact_id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
    if !exists {
        return Ok(false);
    }
    let statements: [&'static str; 10] = [
        "DELETE FROM identities WHERE contact_id = $1",
        // A step's detail may quote the contact's traits (a branch's reasons, a `set`).
        "UPDATE step_history SET detail = 'erased' WHERE enrollment_id IN (SELECT id FROM enrollments WHERE contact_id = $1)",
        // Nothing more is sent or assigned to an erased person, and nothing is left to retry.
        "UPDATE effects SET status = 'cancelled' WHERE contact_id = $1 AND status IN ('pending', 'sending')",
        "DELETE FROM contact_consent WHERE contact_id = $1",
        "DELETE FROM contact_traits WHERE contact_id = $1",
        "DELETE FROM contact_tags WHERE contact_id = $1",
        "UPDATE events SET properties = '{}', context = NULL, message_id = NULL WHERE contact_id = $1",
        "UPDATE effects SET payload = '{}', result = NULL, last_error = NULL WHERE contact_id = $1",
        "UPDATE enrollments SET trigger_event = NULL, last_error = NULL, status = CASE WHEN status IN ('active', 'waiting', 'failed') THEN 'exited' ELSE status END, due_at = NULL WHERE contact_id = $1",
        "UPDATE contacts SET external_id = NULL, email = NULL, phone = NULL, timezone = NULL, language = NULL, owner = NULL WHERE id = $1",
    ];
    for statement in statements {
        sqlx::query(statement).bind(contact_id).execute(&mut **tx).await?;
    }
    sqlx::query("DELETE FROM waiters WHERE contact_id = $1")
        .bind(contact_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO contact_merges (survivor_id, merged_id, reason, at) VALUES ($1, $1, 'erased', $2)")
        .bind(contact_id)
        .bind(ms(now))
        .execute(&mut **tx)
        .await?;
    Ok(true)
}
