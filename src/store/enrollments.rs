//! Enrollments: a contact's trip through one version of a journey. Every move is a
//! compare-and-set on `seq`, so a stale job, a duplicate job or the loser of a race between a
//! timeout and an event changes nothing.

use super::{Error, Result, Tx, from_ms, ms};
use crate::engine::transition::{Advance, Effect, Enrollment, Outcome, Park, Position, Status, start_position};
use crate::expr::EventFacts;
use crate::journey::model::{Journey, StepKind};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Active => "active",
        Status::Waiting => "waiting",
        Status::Completed => "completed",
        Status::Exited => "exited",
        Status::Failed => "failed",
    }
}

/// The job due time of a position: now for a step being entered, `until` for a parked one.
pub fn due_at(position: &Position, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match position {
        Position::Entering { .. } => Some(now),
        Position::Parked { until, .. } => Some(*until),
        Position::Finished { .. } => None,
    }
}

fn step_name(journey: &Journey, position: &Position) -> Option<String> {
    match position {
        Position::Entering { step } | Position::Parked { step, .. } => journey.steps.get(*step).map(|s| s.id.clone()),
        Position::Finished { .. } => None,
    }
}

/// `SELECT` of every enrollment column, then the rest of the query.
macro_rules! select_enrollments {
    ($rest:literal) => {
        concat!("SELECT id, contact_id, journey_id, version, enrollment_key, position, seq, trigger_event, entered_at, attempts, last_error, status FROM enrollments ", $rest)
    };
}

fn from_row(row: &AnyRow) -> Result<(Enrollment, i32, Option<String>)> {
    from_row_with_status(row).map(|(e, a, l, _)| (e, a, l))
}

fn from_row_with_status(row: &AnyRow) -> Result<(Enrollment, i32, Option<String>, String)> {
    let position: String = row.try_get("position")?;
    let trigger: Option<String> = row.try_get("trigger_event")?;
    let key: String = row.try_get("enrollment_key")?;
    let enrollment = Enrollment {
        id: row.try_get::<i64, _>("id")?.to_string(),
        contact_id: row.try_get::<i64, _>("contact_id")?.to_string(),
        journey_id: row.try_get("journey_id")?,
        version: row.try_get("version")?,
        trigger: trigger
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        key: (!key.is_empty()).then_some(key),
        position: serde_json::from_str(&position).map_err(|e| Error::Corrupt(e.to_string()))?,
        seq: row.try_get::<i64, _>("seq")? as u64,
        entered_at: from_ms(row.try_get("entered_at")?),
    };
    Ok((
        enrollment,
        row.try_get("attempts")?,
        row.try_get("last_error")?,
        row.try_get("status")?,
    ))
}

/// An enrollment and its retry bookkeeping.
#[derive(Clone, Debug)]
pub struct Stored {
    pub enrollment: Enrollment,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn load(connection: &mut AnyConnection, id: i64) -> Result<Option<Stored>> {
    let row = sqlx::query(select_enrollments!("WHERE id = $1"))
        .bind(id)
        .fetch_optional(connection)
        .await?;
    row.map(|row| {
        from_row_with_status(&row).map(|(enrollment, attempts, last_error, status)| Stored {
            enrollment,
            status,
            attempts,
            last_error,
        })
    })
    .transpose()
}

/// Many enrollments by id, in one query per few thousand: a batch of step jobs loads them together.
pub async fn load_many(connection: &mut AnyConnection, ids: &[i64]) -> Result<Vec<Stored>> {
    let mut stored = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "{} WHERE id IN ({})",
            select_enrollments!(""),
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            let (enrollment, attempts, last_error, status) = from_row_with_status(&row)?;
            stored.push(Stored {
                enrollment,
                status,
                attempts,
                last_error,
            });
        }
    }
    Ok(stored)
}

/// Unfinished enrollments due in `(after, until]`, as `(id, seq, due_at ms)`: what the timer
/// holds in memory. The partial index `enrollments_due` answers it.
pub async fn due_between(connection: &mut AnyConnection, after: i64, until: i64) -> Result<Vec<(i64, u64, i64)>> {
    let rows = sqlx::query(
        "SELECT id, seq, due_at FROM enrollments WHERE status IN ('active', 'waiting') AND due_at > $1 AND due_at <= $2",
    )
    .bind(after)
    .bind(until)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64, r.try_get(2)?)))
        .collect()
}

/// The contact's earlier enrollments in a journey, oldest first, for re-entry rules.
pub async fn of_contact(connection: &mut AnyConnection, contact_id: i64, journey_id: &str) -> Result<Vec<Enrollment>> {
    let rows = sqlx::query(select_enrollments!(
        "WHERE contact_id = $1 AND journey_id = $2 ORDER BY id"
    ))
    .bind(contact_id)
    .bind(journey_id)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| from_row(row).map(|(e, _, _)| e)).collect()
}

/// Unfinished enrollments of many contacts that an event may move: those in `ids` (waiting
/// for it) or in one of `journeys` (whose goal it is). Others are not read at all.
pub async fn open_of_contacts(
    connection: &mut AnyConnection,
    contact_ids: &[i64],
    ids: &[i64],
    journeys: &[&str],
) -> Result<Vec<Enrollment>> {
    let mut open = Vec::new();
    if ids.is_empty() && journeys.is_empty() {
        return Ok(open);
    }
    for chunk in contact_ids.chunks(super::MAX_PARAMS / 2) {
        let mut wanted = Vec::new();
        if !ids.is_empty() {
            wanted.push(format!("id IN ({})", super::placeholders(chunk.len() + 1, ids.len())));
        }
        if !journeys.is_empty() {
            wanted.push(format!(
                "journey_id IN ({})",
                super::placeholders(chunk.len() + ids.len() + 1, journeys.len())
            ));
        }
        let sql = format!(
            "{} WHERE contact_id IN ({}) AND status IN ('active', 'waiting') AND ({})",
            select_enrollments!(""),
            super::placeholders(1, chunk.len()),
            wanted.join(" OR ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in chunk {
            query = query.bind(*id);
        }
        for id in ids {
            query = query.bind(*id);
        }
        for journey in journeys {
            query = query.bind(*journey);
        }
        for row in query.fetch_all(&mut *connection).await? {
            open.push(from_row(&row)?.0);
        }
    }
    Ok(open)
}

/// Earlier enrollments under exactly these `(contact, journey, key)` (`""` for no key), oldest
/// first, for re-entry rules. The trigger event is not read. Exact triples, joined to the
/// `enrollments_by_contact_key` index: one probe each, whatever else the contacts have.
pub async fn of_contacts_in(connection: &mut AnyConnection, wanted: &[(i64, &str, &str)]) -> Result<Vec<Enrollment>> {
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // 4,096 triples padded stay within SQLite's 32,766 parameters.
    for chunk in wanted.chunks(4_096) {
        // Padded to a power of two like `IN` lists, so statements come in a few sizes.
        let rows = super::padded_len(chunk.len());
        let values: Vec<String> = (0..rows)
            .map(|row| format!("(CAST(${} AS BIGINT), ${}, ${})", 3 * row + 1, 3 * row + 2, 3 * row + 3))
            .collect();
        let sql = format!(
            "WITH wanted (contact_id, journey_id, enrollment_key) AS (VALUES {})
             SELECT e.id, e.contact_id, e.journey_id, e.version, e.enrollment_key, e.position, e.seq, NULL AS trigger_event,
                    e.entered_at, e.attempts, e.last_error, e.status
             FROM wanted w JOIN enrollments e
               ON e.contact_id = w.contact_id AND e.journey_id = w.journey_id AND e.enrollment_key = w.enrollment_key
             ORDER BY e.id",
            values.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for (contact, journey, key) in super::padded(chunk) {
            query = query.bind(*contact).bind(*journey).bind(*key);
        }
        for row in query.fetch_all(&mut *connection).await? {
            let enrollment = from_row(&row)?.0;
            // A padded (repeated) triple finds its rows twice.
            if seen.insert(enrollment.id.clone()) {
                found.push(enrollment);
            }
        }
    }
    // Oldest first across chunks too.
    found.sort_by_key(|e| e.id.parse::<i64>().unwrap_or(i64::MAX));
    Ok(found)
}

/// Waiters of many contacts, as `(enrollment, seq, contact, event name)`.
pub async fn waiters_of_contacts(
    connection: &mut AnyConnection,
    contact_ids: &[i64],
) -> Result<Vec<(i64, u64, i64, String)>> {
    let mut found = Vec::new();
    for chunk in contact_ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT enrollment_id, seq, contact_id, event_name FROM waiters WHERE contact_id IN ({})",
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(&*connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            found.push((
                row.try_get(0)?,
                row.try_get::<i64, _>(1)? as u64,
                row.try_get(2)?,
                row.try_get(3)?,
            ));
        }
    }
    Ok(found)
}

/// A new enrollment to insert with `insert_many`.
pub struct NewEnrollment<'a> {
    pub journey: &'a Journey,
    pub contact_id: i64,
    pub key: Option<String>,
    pub trigger: Option<&'a EventFacts>,
}

/// `insert` for many enrollments in one statement. Returns, per row, the new enrollment, or
/// `None` where the unique index said the contact already has an unfinished one.
pub async fn insert_many(
    tx: &mut Tx<'_>,
    rows: &[NewEnrollment<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Option<Enrollment>>> {
    let mut created: std::collections::HashMap<(i64, String, String), i64> = std::collections::HashMap::new();
    let positions: Vec<Position> = rows.iter().map(|r| start_position(r.journey)).collect();
    let indexed: Vec<(usize, &NewEnrollment<'_>)> = rows.iter().enumerate().collect();
    for chunk in indexed.chunks(super::rows_per_statement(12)) {
        let sql = format!(
            "INSERT INTO enrollments (contact_id, journey_id, version, enrollment_key, status, position, step, seq, due_at, trigger_event, entered_at, updated_at)
             VALUES {} ON CONFLICT DO NOTHING RETURNING id, contact_id, journey_id, enrollment_key",
            super::value_rows(1, chunk.len(), &[""; 12])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (index, row) in chunk {
            let position = &positions[*index];
            query = query
                .bind(row.contact_id)
                .bind(row.journey.id.clone())
                .bind(row.journey.version.clone())
                .bind(row.key.clone().unwrap_or_default())
                .bind("active")
                .bind(serde_json::to_string(position).unwrap_or_default())
                .bind(step_name(row.journey, position))
                .bind(0i64)
                .bind(ms(now))
                .bind(row.trigger.map(|t| serde_json::to_string(t).unwrap_or_default()))
                .bind(ms(now))
                .bind(ms(now));
        }
        for row in query.fetch_all(&mut **tx).await? {
            created.insert((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?), row.try_get(0)?);
        }
    }
    Ok(rows
        .iter()
        .zip(positions)
        .map(|(row, position)| {
            let key = (
                row.contact_id,
                row.journey.id.clone(),
                row.key.clone().unwrap_or_default(),
            );
            created.remove(&key).map(|id| Enrollment {
                id: id.to_string(),
                contact_id: row.contact_id.to_string(),
                journey_id: row.journey.id.clone(),
                version: row.journey.version.clone(),
                trigger: row.trigger.cloned(),
                key: row.key.clone(),
                position,
                seq: 0,
                entered_at: now,
            })
        })
        .collect())
}

/// Starts an enrollment at the journey's first step; `None` when the contact already has an
/// unfinished one with the same key (the unique index decides, so racing triggers cannot both win).
pub async fn insert(
    tx: &mut Tx<'_>,
    journey: &Journey,
    contact_id: i64,
    key: Option<&str>,
    trigger: Option<&EventFacts>,
    now: DateTime<Utc>,
) -> Result<Option<Enrollment>> {
    let position = start_position(journey);
    let trigger_json = trigger.map(|t| serde_json::to_string(t).unwrap_or_default());
    let row = sqlx::query(
        "INSERT INTO enrollments (contact_id, journey_id, version, enrollment_key, status, position, step, seq, due_at, trigger_event, entered_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $10) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(contact_id)
    .bind(&journey.id)
    .bind(&journey.version)
    .bind(key.unwrap_or(""))
    .bind("active")
    .bind(serde_json::to_string(&position).unwrap_or_default())
    .bind(step_name(journey, &position))
    .bind(ms(now))
    .bind(trigger_json)
    .bind(ms(now))
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: i64 = row.try_get(0)?;
    Ok(Some(Enrollment {
        id: id.to_string(),
        contact_id: contact_id.to_string(),
        journey_id: journey.id.clone(),
        version: journey.version.clone(),
        trigger: trigger.cloned(),
        key: key.map(str::to_string),
        position,
        seq: 0,
        entered_at: now,
    }))
}

/// One move to save: the enrollment as it was loaded, and where `advance` took it.
pub struct Move<'a> {
    pub journey: &'a Journey,
    pub before: &'a Enrollment,
    pub advance: &'a Advance,
}

/// Writes one move; see `save_moves`. Returns false if someone else moved the enrollment first.
pub async fn save_move(
    tx: &mut Tx<'_>,
    journey: &Journey,
    enrollment: &Enrollment,
    advance: &Advance,
    now: DateTime<Utc>,
) -> Result<bool> {
    let saved = save_moves(
        tx,
        &[Move {
            journey,
            before: enrollment,
            advance,
        }],
        now,
        None,
    )
    .await?;
    Ok(saved.first().copied().unwrap_or(false))
}

pub fn enrollment_id(enrollment: &Enrollment) -> Result<i64> {
    enrollment
        .id
        .parse()
        .map_err(|_| Error::Corrupt(format!("enrollment id {}", enrollment.id)))
}

pub fn contact_id(enrollment: &Enrollment) -> Result<i64> {
    enrollment
        .contact_id
        .parse()
        .map_err(|_| Error::Corrupt(format!("contact id {}", enrollment.contact_id)))
}

fn waits_for<'a>(journey: &'a Journey, position: &Position) -> Option<&'a str> {
    match position {
        Position::Parked {
            step,
            reason: Park::WaitFor,
            ..
        } => match journey.steps.get(*step).map(|s| &s.kind) {
            Some(StepKind::WaitFor { event, .. }) => Some(event.event.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// Writes many moves in the caller's transaction with a handful of statements, whatever their
/// number: one compare-and-set `UPDATE ... FROM (VALUES ...)` on `seq` for every enrollment, then
/// the winners' waiters, history rows and pending effects as multi-row inserts. Returns, per
/// move, whether it won; a loser (moved by someone else, or exited meanwhile) writes nothing.
///
/// `held_until`: the caller performs the effects right after its commit, so they are recorded
/// already claimed (`sending`) until then, sparing a claim statement per batch. Otherwise they
/// are recorded `pending` for whoever runs the enrollment's next job.
pub async fn save_moves(
    tx: &mut Tx<'_>,
    moves: &[Move<'_>],
    now: DateTime<Utc>,
    held_until: Option<DateTime<Utc>>,
) -> Result<Vec<bool>> {
    use std::collections::HashSet;
    let mut won: HashSet<i64> = HashSet::with_capacity(moves.len());
    const COLUMNS: [&str; 7] = ["BIGINT", "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT"];
    // `status || ''`: the status test must not match `enrollments_due`'s predicate. PostgreSQL
    // otherwise read every active enrollment through that index (its entries for rows since
    // moved on included: 60,000 entries for 1,500 live rows in a burst) to hash-join a batch,
    // where probing the primary key once per move costs the batch's size.
    for chunk in moves.chunks(super::padded_rows_per_statement(COLUMNS.len() + 1)) {
        let sql = format!(
            "UPDATE enrollments SET position = v.column2, status = v.column3, step = v.column4, seq = v.column5, due_at = v.column6,
                 attempts = 0, last_error = NULL, updated_at = $1
             FROM (VALUES {}) AS v
             WHERE enrollments.id = v.column1 AND enrollments.seq = v.column7 AND enrollments.status || '' IN ('active', 'waiting')
             RETURNING enrollments.id",
            super::value_rows(2, super::padded_len(chunk.len()), &COLUMNS)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql))).bind(ms(now));
        for m in super::padded(chunk) {
            let mut after = m.before.clone();
            after.position = m.advance.position.clone();
            query = query
                .bind(enrollment_id(m.before)?)
                .bind(serde_json::to_string(&m.advance.position).unwrap_or_default())
                .bind(status_name(after.status()))
                .bind(step_name(m.journey, &m.advance.position))
                .bind(m.advance.seq as i64)
                .bind(due_at(&m.advance.position, now).map(ms))
                .bind(m.before.seq as i64);
        }
        for row in query.fetch_all(&mut **tx).await? {
            won.insert(row.try_get(0)?);
        }
    }
    let mut winners = Vec::with_capacity(won.len());
    let mut result = Vec::with_capacity(moves.len());
    for m in moves {
        let id = enrollment_id(m.before)?;
        let is_winner = won.contains(&id);
        result.push(is_winner);
        if is_winner {
            winners.push((id, contact_id(m.before)?, m));
        }
    }
    if winners.is_empty() {
        return Ok(result);
    }
    // Waiters: removed only where the enrollment was waiting for an event, added where it now is.
    let stale: Vec<i64> = winners
        .iter()
        .filter(|(_, _, m)| waits_for(m.journey, &m.before.position).is_some())
        .map(|(id, _, _)| *id)
        .collect();
    for chunk in stale.chunks(super::MAX_PARAMS) {
        let sql = format!(
            "DELETE FROM waiters WHERE enrollment_id IN ({})",
            super::placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut **tx).await?;
    }
    let waiting: Vec<(i64, i64, &str, i64)> = winners
        .iter()
        .filter_map(|(id, contact, m)| {
            waits_for(m.journey, &m.advance.position).map(|event| (*id, *contact, event, m.advance.seq as i64))
        })
        .collect();
    for chunk in waiting.chunks(super::padded_rows_per_statement(4)) {
        let sql = format!(
            "INSERT INTO waiters (enrollment_id, contact_id, event_name, seq) VALUES {} ON CONFLICT DO NOTHING",
            super::value_rows(1, super::padded_len(chunk.len()), &[""; 4])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, contact, event, seq) in super::padded(chunk) {
            query = query.bind(*id).bind(*contact).bind(*event).bind(*seq);
        }
        query.execute(&mut **tx).await?;
    }
    // History: a row per step, each with its own `seq`.
    let records: Vec<(i64, &Journey, &crate::engine::transition::StepRecord)> = winners
        .iter()
        .flat_map(|(id, _, m)| m.advance.records.iter().map(move |r| (*id, m.journey, r)))
        .collect();
    for chunk in records.chunks(super::rows_per_statement(9)) {
        let sql = format!(
            "INSERT INTO step_history (enrollment_id, journey_id, version, step, kind, seq, outcome, detail, at) VALUES {}",
            super::value_rows(1, chunk.len(), &[""; 9])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, journey, record) in chunk {
            query = query
                .bind(*id)
                .bind(&journey.id)
                .bind(&journey.version)
                .bind(&record.step)
                .bind(&record.kind)
                .bind(record.seq as i64)
                .bind(&record.outcome)
                .bind(&record.detail)
                .bind(ms(record.at));
        }
        query.execute(&mut **tx).await?;
    }
    // Effects, keyed `enrollment/step/seq`: a replayed move cannot record one twice.
    let keyed: Vec<(i64, i64, &Journey, &crate::engine::transition::KeyedEffect)> = winners
        .iter()
        .flat_map(|(id, contact, m)| m.advance.effects.iter().map(move |e| (*id, *contact, m.journey, e)))
        .collect();
    let (status, claimed_until) = match held_until {
        Some(until) => ("sending", Some(ms(until))),
        None => ("pending", None),
    };
    for chunk in keyed.chunks(super::padded_rows_per_statement(10)) {
        let sql = format!(
            "INSERT INTO effects (effect_key, enrollment_id, contact_id, journey_id, step, kind, payload, created_at, status, claimed_until)
             VALUES {} ON CONFLICT DO NOTHING",
            super::value_rows(1, super::padded_len(chunk.len()), &["", "", "", "", "", "", "", "", "", "BIGINT"])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (id, contact, journey, keyed) in super::padded(chunk) {
            query = query
                .bind(keyed.key.to_string())
                .bind(*id)
                .bind(*contact)
                .bind(&journey.id)
                .bind(&keyed.key.step)
                .bind(effect_kind(&keyed.effect))
                .bind(serde_json::to_string(&keyed.effect).unwrap_or_default())
                .bind(ms(now))
                .bind(status)
                .bind(claimed_until);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(result)
}

/// The `kind` column of an effect: what reports and frequency caps count.
pub fn effect_kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::SendEmail { .. } => "email",
        Effect::SendSms { .. } => "sms",
        Effect::AssignToSales { .. } => "assignment",
        Effect::Webhook { .. } => "webhook",
    }
}

pub async fn record_conversion(
    tx: &mut Tx<'_>,
    enrollment: &Enrollment,
    event: &EventFacts,
    now: DateTime<Utc>,
) -> Result<()> {
    let revenue = event.properties.get("revenue").and_then(|v| v.as_f64());
    sqlx::query(
        "INSERT INTO conversions (enrollment_id, contact_id, journey_id, version, event_name, revenue, at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(enrollment_id(enrollment)?)
    .bind(contact_id(enrollment)?)
    .bind(&enrollment.journey_id)
    .bind(&enrollment.version)
    .bind(&event.name)
    .bind(revenue)
    .bind(ms(now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `(enrollment id, seq)` pairs from rows selecting exactly those two columns.
fn id_and_seq(rows: &[AnyRow]) -> Result<Vec<(i64, u64)>> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64)))
        .collect()
}

/// Unfinished enrollments of a journey on versions other than `version`.
pub async fn open_on_other_versions(
    connection: &mut AnyConnection,
    journey_id: &str,
    version: &str,
) -> Result<Vec<Enrollment>> {
    let rows = sqlx::query(select_enrollments!(
        "WHERE journey_id = $1 AND version <> $2 AND status IN ('active', 'waiting')"
    ))
    .bind(journey_id)
    .bind(version)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| from_row(row).map(|(e, _, _)| e)).collect()
}

/// Moves an enrollment (already saved with `save_move`) onto another version.
pub async fn set_version(tx: &mut Tx<'_>, id: i64, version: &str) -> Result<()> {
    sqlx::query("UPDATE enrollments SET version = $1 WHERE id = $2")
        .bind(version)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Unfinished enrollments whose step was due before `before`: the reconciler's work list.
pub async fn overdue(connection: &mut AnyConnection, before: DateTime<Utc>, limit: i64) -> Result<Vec<(i64, u64)>> {
    // A paused journey's enrollments hold where they are (engine/controls.rs).
    let rows = sqlx::query("SELECT id, seq FROM enrollments WHERE status IN ('active', 'waiting') AND due_at <= $1 AND journey_id NOT IN (SELECT journey_id FROM journey_pauses) ORDER BY due_at LIMIT $2")
        .bind(ms(before))
        .bind(limit)
        .fetch_all(connection)
        .await?;
    id_and_seq(&rows)
}

/// Enrollments with effects still pending since before `before`, whatever their status.
pub async fn with_stale_effects(
    connection: &mut AnyConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(i64, u64)>> {
    let rows = sqlx::query(
        "SELECT DISTINCT e.id, e.seq FROM effects f JOIN enrollments e ON e.id = f.enrollment_id
         WHERE (f.status = 'pending' OR (f.status = 'sending' AND f.claimed_until < $1)) AND f.created_at <= $1 AND e.status NOT IN ('failed', 'exited') AND (e.due_at IS NULL OR e.due_at <= $1)
         AND f.journey_id NOT IN (SELECT journey_id FROM journey_pauses) LIMIT $2",
    )
    .bind(ms(before))
    .bind(limit)
    .fetch_all(connection)
    .await?;
    id_and_seq(&rows)
}

/// Postpones an enrollment's job after a transient failure. An exited enrollment (erased or
/// merged away while its effect was being tried) stays as it is, here and in `fail`.
pub async fn postpone(
    connection: &mut AnyConnection,
    id: i64,
    seq: u64,
    until: DateTime<Utc>,
    attempts: i32,
    error: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("UPDATE enrollments SET due_at = $1, attempts = $2, last_error = $3, updated_at = $4 WHERE id = $5 AND seq = $6 AND status <> 'exited'")
        .bind(ms(until))
        .bind(attempts)
        .bind(error)
        .bind(ms(now))
        .bind(id)
        .bind(seq as i64)
        .execute(connection)
        .await?;
    Ok(())
}

/// Moves an enrollment to the dead-letter list. Its position stays, so a retry resumes there.
pub async fn fail(connection: &mut AnyConnection, id: i64, seq: u64, error: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE enrollments SET status = 'failed', due_at = NULL, last_error = $1, updated_at = $2 WHERE id = $3 AND seq = $4 AND status <> 'exited'")
        .bind(error)
        .bind(ms(now))
        .bind(id)
        .bind(seq as i64)
        .execute(connection)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Failed {
    pub id: i64,
    pub contact_id: i64,
    pub journey_id: String,
    pub step: Option<String>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

pub async fn failed(connection: &mut AnyConnection, limit: i64) -> Result<Vec<Failed>> {
    let rows = sqlx::query("SELECT id, contact_id, journey_id, step, last_error, updated_at FROM enrollments WHERE status = 'failed' ORDER BY updated_at DESC LIMIT $1")
        .bind(limit)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Failed {
                id: r.try_get(0)?,
                contact_id: r.try_get(1)?,
                journey_id: r.try_get(2)?,
                step: r.try_get(3)?,
                error: r.try_get(4)?,
                updated_at: from_ms(r.try_get(5)?),
            })
        })
        .collect()
}

/// Puts a failed enrollment back to work: its failed effects become pending again and the
/// enrollment is due now. Returns the `seq` to enqueue, or `None` if it was not failed.
pub async fn revive(tx: &mut Tx<'_>, id: i64, now: DateTime<Utc>) -> Result<Option<u64>> {
    let Some(row) = sqlx::query("SELECT position, seq FROM enrollments WHERE id = $1 AND status = 'failed'")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let position: Position =
        serde_json::from_str(&row.try_get::<String, _>(0)?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let seq = row.try_get::<i64, _>(1)? as u64;
    // One that failed on the message of its last step has finished: it goes back to
    // `completed`, owing only that message (as `active`, its job had nothing to move and it
    // never completed).
    let (status, due_at) = match position {
        Position::Parked { .. } => ("waiting", Some(ms(now))),
        Position::Finished {
            outcome: Outcome::Completed,
        } => ("completed", None),
        _ => ("active", Some(ms(now))),
    };
    sqlx::query("UPDATE enrollments SET status = $1, due_at = $2, attempts = 0, updated_at = $3 WHERE id = $4")
        .bind(status)
        .bind(due_at)
        .bind(ms(now))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE effects SET status = 'pending', attempts = 0 WHERE enrollment_id = $1 AND status = 'failed'")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(Some(seq))
}

/// How many unfinished enrollments sit at each step of each journey version (for `plan`).
pub async fn census(connection: &mut AnyConnection) -> Result<Vec<(String, String, String, i64)>> {
    let rows = sqlx::query("SELECT journey_id, version, COALESCE(step, ''), COUNT(*) FROM enrollments WHERE status IN ('active', 'waiting', 'failed') GROUP BY journey_id, version, step ORDER BY journey_id, version, step")
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect()
}
