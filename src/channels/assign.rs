//! Assignment of a lead to a sales rep by the team's strategy (round robin, territory,
//! least loaded), within each rep's capacity. Notification and accept/hand-back build on the
//! `assignments` rows written here.

use super::Error;
use crate::engine::Contact;
use crate::expr::{ContactFacts, EventCounter};
use crate::journey::sales::{Rep, Strategy, Team};
use crate::store::ms;
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::Row;

/// Picks a rep and records the assignment; returns the rep's id.
pub async fn assign(
    connection: &mut AnyConnection,
    team: &Team,
    contact: &Contact,
    enrollment_id: i64,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    let db = |e: sqlx::Error| Error::Transient(format!("database: {e}"));
    let contact_id: i64 = contact
        .id
        .parse()
        .map_err(|_| Error::Permanent(format!("bad contact id {}", contact.id)))?;
    // An enrollment retried after a crash keeps the rep it already got.
    if let Some(row) =
        sqlx::query("SELECT rep FROM assignments WHERE enrollment_id = $1 AND team = $2 AND assigned_at >= $3")
            .bind(enrollment_id)
            .bind(&team.id)
            .bind(ms(now) - 60_000)
            .fetch_optional(&mut *connection)
            .await
            .map_err(db)?
    {
        return row.try_get(0).map_err(db);
    }
    let mut open = Vec::new();
    for rep in &team.reps {
        let row = sqlx::query("SELECT COUNT(*) FROM assignments WHERE team = $1 AND rep = $2 AND status = 'assigned'")
            .bind(&team.id)
            .bind(&rep.id)
            .fetch_one(&mut *connection)
            .await
            .map_err(db)?;
        open.push(row.try_get::<i64, _>(0).map_err(db)?);
    }
    let total_row = sqlx::query("SELECT COUNT(*) FROM assignments WHERE team = $1")
        .bind(&team.id)
        .fetch_one(&mut *connection)
        .await
        .map_err(db)?;
    let total: i64 = total_row.try_get(0).map_err(db)?;
    let rep = choose(team, contact, &open, total, now)
        .ok_or_else(|| Error::Transient(format!("every rep of team `{}` is at capacity", team.id)))?;
    sqlx::query("INSERT INTO assignments (contact_id, enrollment_id, team, rep, status, assigned_at) VALUES ($1, $2, $3, $4, 'assigned', $5)")
        .bind(contact_id)
        .bind(enrollment_id)
        .bind(&team.id)
        .bind(&rep.id)
        .bind(ms(now))
        .execute(&mut *connection)
        .await
        .map_err(db)?;
    sqlx::query("UPDATE contacts SET owner = $1 WHERE id = $2")
        .bind(&rep.id)
        .bind(contact_id)
        .execute(&mut *connection)
        .await
        .map_err(db)?;
    Ok(rep.id.clone())
}

/// The strategy itself, pure: `open[i]` is rep i's open leads, `total` the team's assignments so far.
pub fn choose<'a>(team: &'a Team, contact: &Contact, open: &[i64], total: i64, now: DateTime<Utc>) -> Option<&'a Rep> {
    let has_room = |index: usize| {
        team.reps[index]
            .capacity
            .is_none_or(|capacity| open[index] < i64::from(capacity))
    };
    let count = team.reps.len();
    match team.strategy {
        Strategy::RoundRobin => (0..count)
            .map(|offset| (total as usize + offset) % count)
            .find(|&i| has_room(i))
            .map(|i| &team.reps[i]),
        Strategy::LeastLoaded => (0..count)
            .filter(|&i| has_room(i))
            .min_by_key(|&i| open[i])
            .map(|i| &team.reps[i]),
        Strategy::Territory => {
            let view: ContactFacts = contact.facts_view();
            let facts = contact.facts(&view, None, None, now, &NoHistory);
            let covers = |rep: &Rep| rep.territory.as_ref().is_some_and(|t| t.eval_bool(&facts) == Ok(true));
            (0..count)
                .find(|&i| covers(&team.reps[i]) && has_room(i))
                // Reps without a territory take whatever nobody covers.
                .or_else(|| {
                    (0..count)
                        .filter(|&i| team.reps[i].territory.is_none() && has_room(i))
                        .min_by_key(|&i| open[i])
                })
                .map(|i| &team.reps[i])
        }
    }
}

struct NoHistory;

impl EventCounter for NoHistory {
    fn count_events(&self, _: &str, _: DateTime<Utc>) -> i64 {
        0
    }
}
