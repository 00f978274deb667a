//! Assignment of a lead to a sales rep by the team's strategy (round robin, territory,
//! least loaded), within each rep's capacity. Notification and accept/hand-back build on the
//! `assignments` rows written here.
//!
//! One assignment costs the same however many leads came before it: open leads per rep are kept
//! in `rep_load` and the round-robin turn in `team_cursors`, so nothing counts `assignments`.
//! Whatever closes an assignment (hand-back, expiry) must decrement `rep_load` in the same
//! transaction.

use super::Error;
use crate::engine::Contact;
use crate::expr::{ContactFacts, EventCounter};
use crate::journey::sales::{Rep, Strategy, Team};
use crate::store::ms;
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::Row;
use std::collections::HashMap;

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
    let mut tx = sqlx::Connection::begin(&mut *connection).await.map_err(db)?;
    // Taking the turn first locks the team's cursor row until commit, so a team's assignments
    // run one after another and each sees the counters of the ones before. Being a write, it also
    // makes SQLite take its write lock now rather than fail to upgrade a read later.
    let turn = take_turn(&mut tx, &team.id).await.map_err(db)?;
    // An enrollment retried after a crash keeps the rep it already got, and is not a new turn.
    if let Some(rep) = open_assignment(&mut tx, enrollment_id, &team.id).await.map_err(db)? {
        tx.rollback().await.map_err(db)?;
        return Ok(rep);
    }
    let mut open = open_leads(&mut tx, team).await.map_err(db)?;
    let mut chosen = None;
    for _ in 0..team.reps.len() {
        let Some(candidate) = choose(team, contact, &open, turn, now) else {
            break;
        };
        if take_slot(&mut tx, &team.id, candidate).await.map_err(db)? {
            chosen = Some(candidate);
            break;
        }
        // Another worker filled the rep since we read the counters: count it as full.
        if let Some(index) = team.reps.iter().position(|rep| rep.id == candidate.id) {
            open[index] = candidate.capacity.map_or(i64::MAX, i64::from);
        }
    }
    // Dropping `tx` on the error path rolls the turn back.
    let rep = chosen.ok_or_else(|| Error::Transient(format!("every rep of team `{}` is at capacity", team.id)))?;
    sqlx::query("INSERT INTO assignments (contact_id, enrollment_id, team, rep, status, assigned_at) VALUES ($1, $2, $3, $4, 'assigned', $5)")
        .bind(contact_id)
        .bind(enrollment_id)
        .bind(&team.id)
        .bind(&rep.id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query("UPDATE contacts SET owner = $1 WHERE id = $2")
        .bind(&rep.id)
        .bind(contact_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(rep.id.clone())
}

/// `assign` for many leads of one team in one transaction: the team's cursor row is locked
/// first (as `assign` does), so the counters read next cannot change under us; reps are chosen
/// in memory in turn order, then counters, assignments and owners are written with one
/// statement each. Returns each lead's rep, or why it got none (every rep at capacity).
pub async fn assign_many(
    connection: &mut AnyConnection,
    team: &Team,
    leads: &[(&Contact, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<Result<String, Error>>, Error> {
    let db = |e: sqlx::Error| Error::Transient(format!("database: {e}"));
    let mut tx = sqlx::Connection::begin(&mut *connection).await.map_err(db)?;
    let row = sqlx::query(
        "INSERT INTO team_cursors (team, next) VALUES ($1, 0)
         ON CONFLICT (team) DO UPDATE SET next = team_cursors.next RETURNING next",
    )
    .bind(&team.id)
    .fetch_one(&mut *tx)
    .await
    .map_err(db)?;
    let first_turn: i64 = row.try_get(0).map_err(db)?;
    // An enrollment retried after a crash keeps the rep it already got.
    let mut existing: HashMap<i64, String> = HashMap::new();
    let ids: Vec<i64> = leads.iter().map(|(_, enrollment)| *enrollment).collect();
    for chunk in ids.chunks(crate::store::MAX_PARAMS) {
        let sql = format!(
            "SELECT enrollment_id, rep FROM assignments WHERE team = $1 AND status = 'assigned' AND enrollment_id IN ({}) ORDER BY id DESC",
            crate::store::placeholders(2, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(crate::store::for_dialect(&tx, sql))).bind(team.id.clone());
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *tx).await.map_err(db)? {
            existing.insert(row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
        }
    }
    let mut open = open_leads(&mut tx, team).await.map_err(db)?;
    let mut taken = vec![0i64; team.reps.len()];
    let mut outcomes = Vec::with_capacity(leads.len());
    let mut rows: Vec<(i64, i64, &str)> = Vec::new();
    let mut turn = first_turn;
    for (contact, enrollment) in leads {
        if let Some(rep) = existing.get(enrollment) {
            outcomes.push(Ok(rep.clone()));
            continue;
        }
        let Ok(contact_id) = contact.id.parse::<i64>() else {
            outcomes.push(Err(Error::Permanent(format!("bad contact id {}", contact.id))));
            continue;
        };
        match choose(team, contact, &open, turn, now) {
            Some(rep) => {
                turn += 1;
                if let Some(index) = team.reps.iter().position(|r| r.id == rep.id) {
                    open[index] += 1;
                    taken[index] += 1;
                }
                existing.insert(*enrollment, rep.id.clone());
                rows.push((contact_id, *enrollment, rep.id.as_str()));
                outcomes.push(Ok(rep.id.clone()));
            }
            None => outcomes.push(Err(Error::Transient(format!(
                "every rep of team `{}` is at capacity",
                team.id
            )))),
        }
    }
    if rows.is_empty() {
        tx.rollback().await.map_err(db)?;
        return Ok(outcomes);
    }
    sqlx::query("UPDATE team_cursors SET next = $1 WHERE team = $2")
        .bind(turn)
        .bind(&team.id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    for (index, rep) in team.reps.iter().enumerate().filter(|(i, _)| taken[*i] > 0) {
        // Still guarded: a writer that did not take the cursor lock first cannot overfill a rep.
        let guard = rep.capacity.map_or(i64::MAX, |c| i64::from(c) - taken[index]);
        let updated = sqlx::query(
            "UPDATE rep_load SET open_leads = open_leads + $1 WHERE team = $2 AND rep = $3 AND open_leads <= $4",
        )
        .bind(taken[index])
        .bind(&team.id)
        .bind(&rep.id)
        .bind(guard)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if updated.rows_affected() != 1 {
            tx.rollback().await.map_err(db)?;
            return Err(Error::Transient(format!("rep `{}` filled up meanwhile", rep.id)));
        }
    }
    for chunk in rows.chunks(crate::store::rows_per_statement(6)) {
        let sql = format!(
            "INSERT INTO assignments (contact_id, enrollment_id, team, rep, assigned_at, status) VALUES {}",
            crate::store::value_rows(1, chunk.len(), &[""; 6])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(crate::store::for_dialect(&tx, sql)));
        for (contact_id, enrollment, rep) in chunk {
            query = query
                .bind(*contact_id)
                .bind(*enrollment)
                .bind(team.id.clone())
                .bind(rep.to_string())
                .bind(ms(now))
                .bind("assigned");
        }
        query.execute(&mut *tx).await.map_err(db)?;
        let sql = format!(
            "UPDATE contacts SET owner = v.column2 FROM (VALUES {}) AS v WHERE contacts.id = v.column1",
            crate::store::value_rows(1, chunk.len(), &["BIGINT", "TEXT"])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(crate::store::for_dialect(&tx, sql)));
        for (contact_id, _, rep) in chunk {
            query = query.bind(*contact_id).bind(rep.to_string());
        }
        query.execute(&mut *tx).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(outcomes)
}

/// The strategy itself, pure: `open[i]` is rep i's open leads, `turn` the number of leads the
/// team was given before this one (round robin starts at rep `turn % reps`).
pub fn choose<'a>(team: &'a Team, contact: &Contact, open: &[i64], turn: i64, now: DateTime<Utc>) -> Option<&'a Rep> {
    let has_room = |index: usize| {
        team.reps[index]
            .capacity
            .is_none_or(|capacity| open[index] < i64::from(capacity))
    };
    let count = team.reps.len();
    match team.strategy {
        Strategy::RoundRobin => (0..count)
            .map(|offset| (turn as usize + offset) % count)
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

/// Advances the team's round-robin cursor; returns this lead's turn.
async fn take_turn(connection: &mut AnyConnection, team: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO team_cursors (team, next) VALUES ($1, 1)
         ON CONFLICT (team) DO UPDATE SET next = team_cursors.next + 1 RETURNING next",
    )
    .bind(team)
    .fetch_one(connection)
    .await?;
    Ok(row.try_get::<i64, _>(0)? - 1)
}

/// The rep this enrollment already holds in this team, if any (`assignments_enrollment` index).
async fn open_assignment(
    connection: &mut AnyConnection,
    enrollment_id: i64,
    team: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT rep FROM assignments WHERE enrollment_id = $1 AND team = $2 AND status = 'assigned' ORDER BY id LIMIT 1",
    )
    .bind(enrollment_id)
    .bind(team)
    .fetch_optional(connection)
    .await?;
    row.map(|row| row.try_get(0)).transpose()
}

/// Open leads of each rep of the team, in the team's order; creates the rows of new reps.
async fn open_leads(connection: &mut AnyConnection, team: &Team) -> Result<Vec<i64>, sqlx::Error> {
    let rows = sqlx::query("SELECT rep, open_leads FROM rep_load WHERE team = $1")
        .bind(&team.id)
        .fetch_all(&mut *connection)
        .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        stored.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    let mut open = Vec::with_capacity(team.reps.len());
    for rep in &team.reps {
        if let Some(&count) = stored.get(&rep.id) {
            open.push(count);
            continue;
        }
        // A rep new to sales.yaml. Should another worker create the row first, the guarded
        // increment in `take_slot` still keeps the rep within capacity.
        sqlx::query("INSERT INTO rep_load (team, rep, open_leads) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING")
            .bind(&team.id)
            .bind(&rep.id)
            .execute(&mut *connection)
            .await?;
        open.push(0);
    }
    Ok(open)
}

/// Counts one more open lead for `rep` unless that would pass its capacity; false if it would.
/// The guard is in the `UPDATE` itself, so no interleaving of workers can overfill a rep.
async fn take_slot(connection: &mut AnyConnection, team: &str, rep: &Rep) -> Result<bool, sqlx::Error> {
    let query = match rep.capacity {
        Some(capacity) => sqlx::query(
            "UPDATE rep_load SET open_leads = open_leads + 1 WHERE team = $1 AND rep = $2 AND open_leads < $3",
        )
        .bind(team)
        .bind(&rep.id)
        .bind(i64::from(capacity)),
        None => sqlx::query("UPDATE rep_load SET open_leads = open_leads + 1 WHERE team = $1 AND rep = $2")
            .bind(team)
            .bind(&rep.id),
    };
    Ok(query.execute(connection).await?.rows_affected() == 1)
}

struct NoHistory;

impl EventCounter for NoHistory {
    fn count_events(&self, _: &str, _: DateTime<Utc>) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{Expr, Place, Want};

    fn team(strategy: Strategy, reps: &[(&str, Option<u32>, Option<&str>)]) -> Team {
        Team {
            id: "inbound".into(),
            name: "Inbound".into(),
            strategy,
            accept_within: None,
            reps: reps
                .iter()
                .map(|&(id, capacity, territory)| Rep {
                    id: id.into(),
                    name: id.into(),
                    email: None,
                    phone: None,
                    capacity,
                    territory: territory.map(|source| Expr::compile(source, Place::Audience, Want::Bool).unwrap()),
                })
                .collect(),
        }
    }

    fn pick(team: &Team, contact: &Contact, open: &[i64], turn: i64) -> Option<String> {
        choose(team, contact, open, turn, DateTime::default()).map(|rep| rep.id.clone())
    }

    #[test]
    fn round_robin_starts_at_the_turn_and_skips_full_reps() {
        let team = team(
            Strategy::RoundRobin,
            &[("ann", Some(2), None), ("bo", Some(2), None), ("cy", None, None)],
        );
        let contact = Contact::default();
        let picks: Vec<_> = (0..4).map(|turn| pick(&team, &contact, &[0, 0, 0], turn)).collect();
        assert_eq!(picks, ["ann", "bo", "cy", "ann"].map(|id| Some(id.to_string())));
        assert_eq!(pick(&team, &contact, &[0, 2, 0], 1).as_deref(), Some("cy"));
        assert_eq!(pick(&team, &contact, &[2, 2, 7], 0).as_deref(), Some("cy"));
    }

    #[test]
    fn no_rep_is_chosen_when_every_rep_is_full() {
        let team = team(Strategy::LeastLoaded, &[("ann", Some(1), None), ("bo", Some(3), None)]);
        assert_eq!(pick(&team, &Contact::default(), &[1, 3], 0), None);
    }

    #[test]
    fn least_loaded_takes_the_rep_with_fewest_open_leads_and_room() {
        let team = team(Strategy::LeastLoaded, &[("ann", Some(5), None), ("bo", Some(2), None)]);
        assert_eq!(pick(&team, &Contact::default(), &[3, 1], 9).as_deref(), Some("bo"));
        assert_eq!(pick(&team, &Contact::default(), &[3, 2], 9).as_deref(), Some("ann"));
    }

    #[test]
    fn territory_goes_to_the_covering_rep_then_to_reps_without_one() {
        let team = team(
            Strategy::Territory,
            &[
                ("li", Some(1), Some(r#"traits.region == "Shanghai""#)),
                ("max", None, None),
            ],
        );
        let mut shanghai = Contact::default();
        shanghai.traits.insert("region".into(), "Shanghai".into());
        assert_eq!(pick(&team, &shanghai, &[0, 0], 0).as_deref(), Some("li"));
        assert_eq!(pick(&team, &shanghai, &[1, 0], 0).as_deref(), Some("max"));
        assert_eq!(pick(&team, &Contact::default(), &[0, 0], 0).as_deref(), Some("max"));
    }
}
