//! Leads in the hands of sales: `assignments` rows (a lead's life with one rep), the per-rep
//! open-lead counters (`rep_load`), the team's round-robin cursor (`team_cursors`), and the
//! accept deadlines and notifications that hang off them.
//!
//! A row holds a slot of its rep's capacity while `assigned` or `accepted`; every statement
//! that moves a row out of those states is a compare-and-set on its status, so exactly one
//! caller releases the slot, in the same transaction.

use super::{Result, from_ms, ms, opt_ms};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

/// Where a lead stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// With a rep, waiting to be accepted (until `accept_by`, if the team has `accept_within`).
    Assigned,
    Accepted,
    /// In the team's pool (公海池): no rep had room, or the last one let it go.
    Pooled,
    Rejected,
    /// Not accepted in time: back to the pool, and on to another rep.
    Recycled,
    /// Another team took the lead.
    Reassigned,
    Won,
    Lost,
}

impl Status {
    const ALL: [Status; 8] = [
        Status::Assigned,
        Status::Accepted,
        Status::Pooled,
        Status::Rejected,
        Status::Recycled,
        Status::Reassigned,
        Status::Won,
        Status::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Assigned => "assigned",
            Status::Accepted => "accepted",
            Status::Pooled => "pooled",
            Status::Rejected => "rejected",
            Status::Recycled => "recycled",
            Status::Reassigned => "reassigned",
            Status::Won => "won",
            Status::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Whether the lead takes a slot of its rep's capacity.
    pub fn holds_slot(self) -> bool {
        matches!(self, Status::Assigned | Status::Accepted)
    }
}

/// One `assignments` row.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Lead {
    pub id: i64,
    pub contact_id: i64,
    pub enrollment_id: Option<i64>,
    pub team: String,
    /// Empty while pooled.
    pub rep: String,
    pub status: Status,
    pub assigned_at: DateTime<Utc>,
    pub accept_by: Option<DateTime<Utc>>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub previous_rep: Option<String>,
    pub revenue: Option<f64>,
    pub currency: Option<String>,
    pub notified_at: Option<DateTime<Utc>>,
    pub notify_result: Option<String>,
}

/// A row to insert: with a rep (`assigned`) or without (`pooled`).
pub struct NewLead<'a> {
    pub contact_id: i64,
    pub enrollment_id: Option<i64>,
    pub team: &'a str,
    pub rep: Option<&'a str>,
    pub accept_by: Option<DateTime<Utc>>,
    pub previous_rep: Option<&'a str>,
    /// Nobody is to be told (a silent team): recorded as told already.
    pub told: bool,
}

/// The revenue column is NUMERIC, which the `Any` driver cannot decode: it is read as text.
const COLUMNS: &str = "id, contact_id, enrollment_id, team, rep, status, assigned_at, accept_by, accepted_at, closed_at, \
     reason, previous_rep, CAST(revenue AS TEXT) AS revenue, currency, notified_at, notify_result";

fn lead(row: &AnyRow) -> Result<Lead> {
    let status: String = row.try_get("status")?;
    let revenue: Option<String> = row.try_get("revenue")?;
    Ok(Lead {
        id: row.try_get("id")?,
        contact_id: row.try_get("contact_id")?,
        enrollment_id: row.try_get("enrollment_id")?,
        team: row.try_get("team")?,
        rep: row.try_get("rep")?,
        status: Status::parse(&status).ok_or_else(|| super::Error::Corrupt(format!("lead status `{status}`")))?,
        assigned_at: from_ms(row.try_get("assigned_at")?),
        accept_by: opt_ms(row, "accept_by"),
        accepted_at: opt_ms(row, "accepted_at"),
        closed_at: opt_ms(row, "closed_at"),
        reason: row.try_get("reason")?,
        previous_rep: row.try_get("previous_rep")?,
        revenue: revenue
            .map(|text| {
                text.parse()
                    .map_err(|_| super::Error::Corrupt(format!("revenue `{text}`")))
            })
            .transpose()?,
        currency: row.try_get("currency")?,
        notified_at: opt_ms(row, "notified_at"),
        notify_result: row.try_get("notify_result")?,
    })
}

fn leads(rows: &[AnyRow]) -> Result<Vec<Lead>> {
    rows.iter().map(lead).collect()
}

/// Locks the team's cursor row until commit (creating it), so a team's assignments run one
/// after another; returns the team's next round-robin turn. Being a write, it also makes
/// SQLite take its write lock now rather than fail to upgrade a read later.
pub async fn lock_team(connection: &mut AnyConnection, team: &str) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO team_cursors (team, next) VALUES ($1, 0)
         ON CONFLICT (team) DO UPDATE SET next = team_cursors.next RETURNING next",
    )
    .bind(team)
    .fetch_one(connection)
    .await?;
    Ok(row.try_get(0)?)
}

/// Takes `count` round-robin turns of the team for an assignment about to run, in a statement
/// of its own outside the assignment's transaction (like a sequence), so concurrent workers get
/// disjoint turns without one waiting on the other's transaction. Returns the first turn.
/// Turns a rolled-back assignment took are skipped: the rotation moves on, nothing is lost.
///
/// On PostgreSQL the reservation does not wait for its commit to reach the disk: a crash can
/// only hand the same turns out again (a rep gets a lead out of turn), and the flush was a
/// wait on the disk for every assignment batch.
pub async fn reserve_turns(connection: &mut AnyConnection, team: &str, count: i64) -> Result<i64> {
    use sqlx::Connection;
    let reserve = sqlx::query(
        "INSERT INTO team_cursors (team, next) VALUES ($1, $2)
         ON CONFLICT (team) DO UPDATE SET next = team_cursors.next + $3 RETURNING next - $4",
    )
    .bind(team)
    .bind(count)
    .bind(count)
    .bind(count);
    let row = if connection.backend_name() == "SQLite" {
        reserve.fetch_one(connection).await?
    } else {
        let mut tx = connection.begin().await?;
        super::commit_without_waiting_for_disk(&mut tx).await?;
        let row = reserve.fetch_one(&mut *tx).await?;
        tx.commit().await?;
        row
    };
    Ok(row.try_get(0)?)
}

/// Gives back the last `unused` of the turns a `reserve_turns` ending at `end` took, if no one
/// has taken turns since (leads a contact already held took none), so a retried step does not
/// move the rotation on.
pub async fn return_turns(connection: &mut AnyConnection, team: &str, end: i64, unused: i64) -> Result<()> {
    sqlx::query("UPDATE team_cursors SET next = next - $1 WHERE team = $2 AND next = $3")
        .bind(unused)
        .bind(team)
        .bind(end)
        .execute(connection)
        .await?;
    Ok(())
}

/// SQLite only: takes the database's write lock now, with a write, as the first statement of
/// an assignment's transaction; a transaction that read first could not take it later while
/// another connection writes ("database is locked"). PostgreSQL locks rows, so nothing to do.
pub async fn write_first(connection: &mut AnyConnection, team: &str) -> Result<()> {
    if connection.backend_name() == "SQLite" {
        lock_team(connection, team).await?;
    }
    Ok(())
}

pub async fn set_turn(connection: &mut AnyConnection, team: &str, next: i64) -> Result<()> {
    sqlx::query("UPDATE team_cursors SET next = $1 WHERE team = $2")
        .bind(next)
        .bind(team)
        .execute(connection)
        .await?;
    Ok(())
}

/// Open leads of each of `reps` in the team, in their order; creates the rows of new reps.
pub async fn rep_loads(connection: &mut AnyConnection, team: &str, reps: &[&str]) -> Result<Vec<i64>> {
    let rows = sqlx::query("SELECT rep, open_leads FROM rep_load WHERE team = $1")
        .bind(team)
        .fetch_all(&mut *connection)
        .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        stored.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    let mut open = Vec::with_capacity(reps.len());
    for rep in reps {
        if let Some(&count) = stored.get(*rep) {
            open.push(count);
            continue;
        }
        // A rep new to sales.yaml. Should another worker create the row first, the guarded
        // increment in `add_load` still keeps the rep within capacity.
        sqlx::query("INSERT INTO rep_load (team, rep, open_leads) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING")
            .bind(team)
            .bind(*rep)
            .execute(&mut *connection)
            .await?;
        open.push(0);
    }
    Ok(open)
}

/// Counts `count` more open leads for the rep unless that would pass `capacity`; false if it
/// would. The guard is in the `UPDATE` itself, so no interleaving of workers overfills a rep.
pub async fn add_load(
    connection: &mut AnyConnection,
    team: &str,
    rep: &str,
    count: i64,
    capacity: Option<u32>,
) -> Result<bool> {
    let guard = capacity.map_or(i64::MAX, |capacity| i64::from(capacity) - count);
    let updated = sqlx::query(
        "UPDATE rep_load SET open_leads = open_leads + $1 WHERE team = $2 AND rep = $3 AND open_leads <= $4",
    )
    .bind(count)
    .bind(team)
    .bind(rep)
    .bind(guard)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Gives back the slot of a lead that stopped holding one.
pub async fn release(connection: &mut AnyConnection, team: &str, rep: &str) -> Result<()> {
    sqlx::query("UPDATE rep_load SET open_leads = open_leads - 1 WHERE team = $1 AND rep = $2 AND open_leads > 0")
        .bind(team)
        .bind(rep)
        .execute(connection)
        .await?;
    Ok(())
}

/// The unfinished leads (assigned, accepted, pooled) of these contacts, in any team.
pub async fn open_of_contacts(connection: &mut AnyConnection, contact_ids: &[i64]) -> Result<Vec<Lead>> {
    let mut found = Vec::new();
    for chunk in contact_ids.chunks(super::IN_CHUNK) {
        let sql = format!(
            "SELECT {COLUMNS} FROM assignments WHERE status IN ('assigned', 'accepted', 'pooled') AND contact_id IN ({}) ORDER BY id",
            super::placeholders(1, super::padded_len(chunk.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(connection, sql)));
        for id in super::padded(chunk) {
            query = query.bind(*id);
        }
        found.extend(leads(&query.fetch_all(&mut *connection).await?)?);
    }
    Ok(found)
}

/// Inserts leads; returns their ids in the order given.
pub async fn insert_many(connection: &mut AnyConnection, rows: &[NewLead<'_>], now: DateTime<Utc>) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(super::rows_per_statement(9)) {
        // Which returned id is which row: a contact has at most one new lead per statement.
        let sql = format!(
            "INSERT INTO assignments (contact_id, enrollment_id, team, rep, status, assigned_at, accept_by, previous_rep, notified_at) VALUES {} RETURNING id, contact_id",
            super::value_rows(
                1,
                chunk.len(),
                &["BIGINT", "BIGINT", "", "", "", "BIGINT", "BIGINT", "", "BIGINT"]
            )
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(connection, sql)));
        for row in chunk {
            let status = if row.rep.is_some() {
                Status::Assigned
            } else {
                Status::Pooled
            };
            query = query
                .bind(row.contact_id)
                .bind(row.enrollment_id)
                .bind(row.team.to_string())
                .bind(row.rep.unwrap_or_default().to_string())
                .bind(status.as_str())
                .bind(ms(now))
                .bind(row.accept_by.map(ms))
                .bind(row.previous_rep.map(str::to_string))
                .bind(row.told.then(|| ms(now)));
        }
        let mut by_contact: HashMap<i64, i64> = HashMap::new();
        for row in query.fetch_all(&mut *connection).await? {
            by_contact.insert(row.try_get(1)?, row.try_get(0)?);
        }
        for row in chunk {
            let id = by_contact
                .get(&row.contact_id)
                .ok_or_else(|| super::Error::Corrupt("an inserted lead came back without its id".into()))?;
            ids.push(*id);
        }
    }
    Ok(ids)
}

/// Gives a pooled lead to a rep.
pub async fn take_from_pool(
    connection: &mut AnyConnection,
    id: i64,
    rep: &str,
    accept_by: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE assignments SET status = 'assigned', rep = $1, assigned_at = $2, accept_by = $3, notified_at = NULL
         WHERE id = $4 AND status = 'pooled'",
    )
    .bind(rep)
    .bind(ms(now))
    .bind(accept_by.map(ms))
    .bind(id)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The oldest pooled leads of a team.
pub async fn pooled(connection: &mut AnyConnection, team: &str, limit: i64) -> Result<Vec<Lead>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM assignments WHERE status = 'pooled' AND team = $1 ORDER BY id LIMIT $2"
    )))
    .bind(team)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    leads(&rows)
}

/// Sets the contacts' owner (the rep who holds them, or nobody).
pub async fn set_owners(connection: &mut AnyConnection, owners: &[(i64, Option<&str>)]) -> Result<()> {
    for chunk in owners.chunks(super::rows_per_statement(2)) {
        let sql = format!(
            "UPDATE contacts SET owner = v.column2 FROM (VALUES {}) AS v WHERE contacts.id = v.column1",
            super::value_rows(1, chunk.len(), &["BIGINT", "TEXT"])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(connection, sql)));
        for (contact, rep) in chunk {
            query = query.bind(*contact).bind(rep.map(str::to_string));
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// How a lead leaves the rep's hands.
pub struct Closing<'a> {
    pub to: Status,
    pub reason: Option<&'a str>,
    pub revenue: Option<f64>,
    pub currency: Option<&'a str>,
}

/// Moves a lead from one of `from` to `closing.to`; returns it as it was before, or `None` if
/// it was not in one of those states (someone else moved it first).
pub async fn close(
    connection: &mut AnyConnection,
    id: i64,
    from: &[Status],
    closing: &Closing<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Lead>> {
    let Some(before) = get(connection, id).await? else {
        return Ok(None);
    };
    if !from.contains(&before.status) {
        return Ok(None);
    }
    let updated = sqlx::query(
        "UPDATE assignments SET status = $1, closed_at = $2, reason = $3, revenue = $4, currency = $5, accept_by = NULL
         WHERE id = $6 AND status = $7",
    )
    .bind(closing.to.as_str())
    .bind(ms(now))
    .bind(closing.reason.map(str::to_string))
    .bind(closing.revenue)
    .bind(closing.currency.map(str::to_string))
    .bind(id)
    .bind(before.status.as_str())
    .execute(connection)
    .await?;
    Ok((updated.rows_affected() == 1).then_some(before))
}

/// Erasure: the contact's open leads (assigned, accepted, pooled) are `lost` ("contact
/// erased"), with no deadline and no notice left to send. Each is a compare-and-set on its
/// status; returns the leads as they were, so the caller releases the slots they held.
pub async fn close_erased(connection: &mut AnyConnection, contact_id: i64, now: DateTime<Utc>) -> Result<Vec<Lead>> {
    let mut closed = Vec::new();
    for lead in open_of_contacts(&mut *connection, &[contact_id]).await? {
        let updated = sqlx::query(
            "UPDATE assignments SET status = 'lost', closed_at = $1, reason = 'contact erased', accept_by = NULL,
                notified_at = COALESCE(notified_at, $2)
             WHERE id = $3 AND status = $4",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(lead.id)
        .bind(lead.status.as_str())
        .execute(&mut *connection)
        .await?;
        if updated.rows_affected() == 1 {
            closed.push(lead);
        }
    }
    Ok(closed)
}

/// The contact's leads whose rep may have been told, as `(lead, assigned, told)`: their
/// notices name the contact (erasure redacts them from the outbox).
pub async fn notices_of_contact(
    connection: &mut AnyConnection,
    contact_id: i64,
) -> Result<Vec<(i64, DateTime<Utc>, Option<DateTime<Utc>>)>> {
    let rows = sqlx::query("SELECT id, assigned_at, notified_at FROM assignments WHERE contact_id = $1")
        .bind(contact_id)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, from_ms(row.try_get(1)?), opt_ms(row, "notified_at"))))
        .collect()
}

/// The rep accepts: the deadline goes. False if the lead was not waiting for that.
pub async fn accept(connection: &mut AnyConnection, id: i64, now: DateTime<Utc>) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE assignments SET status = 'accepted', accepted_at = $1, accept_by = NULL WHERE id = $2 AND status = 'assigned'",
    )
    .bind(ms(now))
    .bind(id)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Ends a lead whose accept deadline has passed; `None` if it was accepted or closed first.
pub async fn expire(connection: &mut AnyConnection, id: i64, reason: &str, now: DateTime<Utc>) -> Result<Option<Lead>> {
    let updated = sqlx::query(
        "UPDATE assignments SET status = 'recycled', closed_at = $1, reason = $2, accept_by = NULL
         WHERE id = $3 AND status = 'assigned' AND accept_by <= $1",
    )
    .bind(ms(now))
    .bind(reason)
    .bind(id)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(None);
    }
    get(connection, id).await
}

pub async fn get(connection: &mut AnyConnection, id: i64) -> Result<Option<Lead>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM assignments WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(connection)
    .await?;
    row.as_ref().map(lead).transpose()
}

/// Leads newest first: one rep's, or everybody's; optionally only those in `status`.
pub async fn list(
    connection: &mut AnyConnection,
    rep: Option<&str>,
    status: Option<Status>,
    limit: i64,
) -> Result<Vec<Lead>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM assignments WHERE ($1 = '' OR rep = $1) AND ($2 = '' OR status = $2) ORDER BY id DESC LIMIT $3"
    )))
    .bind(rep.unwrap_or_default())
    .bind(status.map(Status::as_str).unwrap_or_default())
    .bind(limit)
    .fetch_all(connection)
    .await?;
    leads(&rows)
}

/// Accept deadlines in `(after, until]` (ms), as `(lead, due ms)`: `assignments_accept_by`.
pub async fn deadlines_between(connection: &mut AnyConnection, after: i64, until: i64) -> Result<Vec<(i64, i64)>> {
    let rows = sqlx::query(
        "SELECT id, accept_by FROM assignments WHERE accept_by IS NOT NULL AND accept_by > $1 AND accept_by <= $2 ORDER BY accept_by",
    )
    .bind(after)
    .bind(until)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
}

/// Leads whose rep has not been told yet, assigned before `before`.
pub async fn unnotified(connection: &mut AnyConnection, before: DateTime<Utc>, limit: i64) -> Result<Vec<Lead>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM assignments WHERE notified_at IS NULL AND assigned_at <= $1 ORDER BY assigned_at LIMIT $2"
    )))
    .bind(ms(before))
    .bind(limit)
    .fetch_all(connection)
    .await?;
    Ok(leads(&rows)?
        .into_iter()
        .filter(|lead| lead.status.holds_slot())
        .collect())
}

/// Claims the notification of a lead whose rep has not been told, until `until`; false if it
/// was told already or another process holds it.
pub async fn claim_notice(
    connection: &mut AnyConnection,
    id: i64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE assignments SET notify_claimed_until = $1
         WHERE id = $2 AND notified_at IS NULL AND (notify_claimed_until IS NULL OR notify_claimed_until < $3)",
    )
    .bind(ms(until))
    .bind(id)
    .bind(ms(now))
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records how telling the rep went: `done` ends it (sent, or given up), else it is tried again.
pub async fn notified(
    connection: &mut AnyConnection,
    id: i64,
    result: &str,
    done: bool,
    now: DateTime<Utc>,
) -> Result<i32> {
    let row = sqlx::query(
        "UPDATE assignments SET notify_attempts = notify_attempts + 1, notify_result = $1, notify_claimed_until = NULL,
         notified_at = CASE WHEN $2 = 1 THEN CAST($3 AS BIGINT) ELSE NULL END
         WHERE id = $4 RETURNING notify_attempts",
    )
    .bind(result)
    .bind(i32::from(done))
    .bind(ms(now))
    .bind(id)
    .fetch_optional(connection)
    .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?.unwrap_or_default())
}

/// Sets a contact's stage as an admin says, forward or back (automatic moves go through the
/// engine's stage path, forward only).
pub async fn set_stage(connection: &mut AnyConnection, contact_id: i64, stage: &str) -> Result<bool> {
    let updated = sqlx::query("UPDATE contacts SET stage = $1 WHERE id = $2")
        .bind(stage)
        .bind(contact_id)
        .execute(connection)
        .await?;
    Ok(updated.rows_affected() == 1)
}
