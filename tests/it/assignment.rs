//! Sales assignment against real PostgreSQL and SQLite: round robin from the team's cursor,
//! counters that match the `assignments` rows, capacity held under concurrent workers, and a
//! retried enrollment that keeps its rep.

use crate::support::{Mode, fresh_database, root, scratch_dir};
use chrono::{DateTime, Duration, Utc};
use nurture::channels::assign::{Offer, Placed, place};
use nurture::engine::Contact;
use nurture::journey::sales::{Rep, Strategy, Team};
use nurture::store::sales as leads;
use nurture::store::{Kind, Store, contacts};
use sqlx::Row;
use std::collections::HashMap;

/// Offers leads `(contact, enrollment)` to the team in one transaction: each gets its rep's id,
/// or, waiting in the pool, the error the old `assign_many` gave.
async fn assign_many(
    connection: &mut sqlx::AnyConnection,
    team: &Team,
    leads: &[(&Contact, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<Result<String, String>>, nurture::channels::Error> {
    let offers: Vec<Offer<'_>> = leads
        .iter()
        .map(|(contact, enrollment)| Offer {
            contact,
            contact_id: contact.id.parse().unwrap(),
            enrollment: Some(*enrollment),
            avoid: None,
            pooled: None,
        })
        .collect();
    // As the engine does: turns taken first, counters counted last, again if a rep filled up.
    let first_turn = leads::reserve_turns(connection, &team.id, offers.len() as i64)
        .await
        .unwrap();
    let placement = loop {
        let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
        leads::write_first(&mut tx, &team.id).await.unwrap();
        let placement = place(&mut tx, team, &offers, now, first_turn, &HashMap::new()).await?;
        let mut counted = true;
        for (rep, taken) in &placement.taken {
            let capacity = team.reps.iter().find(|r| r.id == *rep).and_then(|r| r.capacity);
            counted &= leads::add_load(&mut tx, &team.id, rep, *taken, capacity).await.unwrap();
        }
        if counted {
            tx.commit().await.unwrap();
            let (end, unused) = (first_turn + offers.len() as i64, offers.len() as i64 - placement.turns);
            leads::return_turns(connection, &team.id, end, unused).await.unwrap();
            break placement;
        }
    };
    Ok(placement
        .placed
        .into_iter()
        .map(|placed| match placed {
            Placed::Rep { rep, .. } => Ok(rep),
            Placed::Pool { .. } => Err(format!("every rep of team `{}` is at capacity", team.id)),
        })
        .collect())
}

async fn assign(
    connection: &mut sqlx::AnyConnection,
    team: &Team,
    contact: &Contact,
    enrollment: i64,
    now: DateTime<Utc>,
) -> Result<String, String> {
    assign_many(connection, team, &[(contact, enrollment)], now)
        .await
        .map_err(|e| e.to_string())?
        .remove(0)
}

async fn store(mode: Mode, connections: u32) -> Store {
    let url = match mode {
        Mode::Production => fresh_database().await,
        Mode::Embedded => format!(
            "sqlite://{}?mode=rwc",
            scratch_dir("assign").join("nurture.db").display()
        ),
    };
    Store::connect(&url, connections).await.expect("connect")
}

async fn migrated(mode: Mode, connections: u32) -> Store {
    let store = store(mode, connections).await;
    store.migrate().await.expect("migrate");
    store
}

fn team(strategy: Strategy, reps: &[&str], capacity: Option<u32>) -> Team {
    Team {
        id: "inbound".into(),
        name: "Inbound".into(),
        strategy,
        accept_within: None,
        notify: Default::default(),
        reps: reps
            .iter()
            .map(|&id| Rep {
                id: id.into(),
                name: id.into(),
                email: None,
                phone: None,
                capacity,
                territory: None,
            })
            .collect(),
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

async fn new_contacts(store: &Store, count: usize) -> Vec<Contact> {
    let mut connection = store.pool.acquire().await.unwrap();
    let mut created = Vec::with_capacity(count);
    for _ in 0..count {
        let id = contacts::create(&mut connection, &Default::default(), t0())
            .await
            .unwrap();
        created.push(Contact {
            id: id.to_string(),
            ..Contact::default()
        });
    }
    created
}

/// (rep, open leads) by `rep_load`, and by counting open `assignments` rows.
async fn loads(store: &Store) -> (Vec<(String, i64)>, Vec<(String, i64)>) {
    let read = |sql: &'static str| async move {
        sqlx::query(sql)
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1)))
            .collect::<Vec<_>>()
    };
    (
        read("SELECT rep, open_leads FROM rep_load WHERE team = 'inbound' AND open_leads > 0 ORDER BY rep").await,
        read("SELECT rep, COUNT(*) FROM assignments WHERE team = 'inbound' AND status = 'assigned' GROUP BY rep ORDER BY rep")
            .await,
    )
}

async fn cursor(store: &Store) -> i64 {
    sqlx::query("SELECT next FROM team_cursors WHERE team = 'inbound'")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0)
}

fn pairs(expected: &[(&str, i64)]) -> Vec<(String, i64)> {
    expected.iter().map(|&(rep, count)| (rep.to_string(), count)).collect()
}

async fn leads_go_round_robin_and_counters_match_the_rows(mode: Mode) {
    let store = migrated(mode, 2).await;
    let team = team(Strategy::RoundRobin, &["ann", "bo", "cy"], None);
    let leads = new_contacts(&store, 7).await;
    let mut connection = store.pool.acquire().await.unwrap();
    let mut reps = Vec::new();
    for (enrollment, contact) in (1..).zip(&leads) {
        reps.push(assign(&mut connection, &team, contact, enrollment, t0()).await.unwrap());
    }
    assert_eq!(reps, ["ann", "bo", "cy", "ann", "bo", "cy", "ann"]);
    let (counters, rows) = loads(&store).await;
    assert_eq!(counters, pairs(&[("ann", 3), ("bo", 2), ("cy", 2)]));
    assert_eq!(counters, rows);
    assert_eq!(cursor(&store).await, 7);
    let owner: Option<String> = sqlx::query("SELECT owner FROM contacts WHERE id = $1")
        .bind(leads[1].id.parse::<i64>().unwrap())
        .fetch_one(&mut *connection)
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner.as_deref(), Some("bo"));
}

#[tokio::test]
async fn leads_go_round_robin_and_counters_match_the_rows_in_sqlite() {
    leads_go_round_robin_and_counters_match_the_rows(Mode::Embedded).await;
}

#[tokio::test]
async fn leads_go_round_robin_and_counters_match_the_rows_in_postgres() {
    leads_go_round_robin_and_counters_match_the_rows(Mode::Production).await;
}

async fn a_retried_enrollment_keeps_its_first_rep_and_counts_once(mode: Mode) {
    let store = migrated(mode, 2).await;
    let team = team(Strategy::RoundRobin, &["ann", "bo", "cy"], Some(5));
    let leads = new_contacts(&store, 3).await;
    let mut connection = store.pool.acquire().await.unwrap();
    assert_eq!(assign(&mut connection, &team, &leads[0], 1, t0()).await.unwrap(), "ann");
    assert_eq!(assign(&mut connection, &team, &leads[1], 2, t0()).await.unwrap(), "bo");
    // The worker died before marking the effect done; another one performs it once the
    // effect's lease (5 minutes) has run out.
    let later = t0() + Duration::minutes(6);
    assert_eq!(
        assign(&mut connection, &team, &leads[0], 1, later).await.unwrap(),
        "ann"
    );
    let (counters, rows) = loads(&store).await;
    assert_eq!(counters, pairs(&[("ann", 1), ("bo", 1)]));
    assert_eq!(counters, rows);
    // The retry took no turn: the next lead is still cy's.
    assert_eq!(cursor(&store).await, 2);
    assert_eq!(assign(&mut connection, &team, &leads[2], 3, later).await.unwrap(), "cy");
}

#[tokio::test]
async fn a_retried_enrollment_keeps_its_first_rep_and_counts_once_in_sqlite() {
    a_retried_enrollment_keeps_its_first_rep_and_counts_once(Mode::Embedded).await;
}

#[tokio::test]
async fn a_retried_enrollment_keeps_its_first_rep_and_counts_once_in_postgres() {
    a_retried_enrollment_keeps_its_first_rep_and_counts_once(Mode::Production).await;
}

/// 8 workers, each on its own connection, offer 50 leads each to 3 reps of capacity 10.
async fn concurrent_workers_never_push_a_rep_over_capacity(mode: Mode) {
    const WORKERS: usize = 8;
    const LEADS: usize = 50;
    let store = migrated(mode, WORKERS as u32).await;
    let team = team(Strategy::RoundRobin, &["ann", "bo", "cy"], Some(10));
    let leads = new_contacts(&store, WORKERS * LEADS).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(WORKERS));
    let mut workers = Vec::new();
    for (worker, batch) in leads.chunks(LEADS).enumerate() {
        let (store, team, batch, start) = (store.clone(), team.clone(), batch.to_vec(), start.clone());
        workers.push(tokio::spawn(async move {
            let mut connection = store.pool.acquire().await.unwrap();
            start.wait().await;
            let mut outcomes = Vec::new();
            for (index, contact) in batch.iter().enumerate() {
                let enrollment = (worker * LEADS + index + 1) as i64;
                outcomes.push(assign(&mut connection, &team, contact, enrollment, t0()).await);
            }
            outcomes
        }));
    }
    let mut assigned = 0;
    for worker in workers {
        for outcome in worker.await.unwrap() {
            match outcome {
                Ok(_) => assigned += 1,
                Err(error) => assert_eq!(error, "every rep of team `inbound` is at capacity"),
            }
        }
    }
    assert_eq!(assigned, 30);
    let (counters, rows) = loads(&store).await;
    assert_eq!(rows, pairs(&[("ann", 10), ("bo", 10), ("cy", 10)]));
    assert_eq!(counters, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_never_push_a_rep_over_capacity_in_postgres() {
    concurrent_workers_never_push_a_rep_over_capacity(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_never_push_a_rep_over_capacity_in_sqlite() {
    concurrent_workers_never_push_a_rep_over_capacity(Mode::Embedded).await;
}

/// Assignments made before migration 0005 are counted into the new tables.
async fn counters_are_backfilled_from_existing_assignments(mode: Mode) {
    let store = store(mode, 2).await;
    let directory = match store.kind {
        Kind::Postgres => "migrations/postgres",
        Kind::Sqlite => "migrations/sqlite",
    };
    let before = sqlx::migrate::Migrator::new(root().join(directory)).await.unwrap();
    before.run_to(4, &store.pool).await.unwrap();
    let leads = new_contacts(&store, 4).await;
    for (enrollment, (contact, rep, status)) in (1..).zip([
        (&leads[0], "ann", "assigned"),
        (&leads[1], "bo", "assigned"),
        (&leads[2], "ann", "assigned"),
        (&leads[3], "bo", "returned"),
    ]) {
        sqlx::query("INSERT INTO assignments (contact_id, enrollment_id, team, rep, status, assigned_at) VALUES ($1, $2, 'inbound', $3, $4, 0)")
            .bind(contact.id.parse::<i64>().unwrap())
            .bind(enrollment as i64)
            .bind(rep)
            .bind(status)
            .execute(&store.pool)
            .await
            .unwrap();
    }
    store.migrate().await.unwrap();
    let (counters, rows) = loads(&store).await;
    assert_eq!(counters, pairs(&[("ann", 2), ("bo", 1)]));
    assert_eq!(counters, rows);
    assert_eq!(cursor(&store).await, 4);
    // Round robin carries on at turn 4 (ann), who is full with her two old leads.
    let team = team(Strategy::RoundRobin, &["bo", "ann", "cy"], Some(2));
    let lead = new_contacts(&store, 1).await.remove(0);
    let mut connection = store.pool.acquire().await.unwrap();
    assert_eq!(assign(&mut connection, &team, &lead, 5, t0()).await.unwrap(), "cy");
}

#[tokio::test]
async fn counters_are_backfilled_from_existing_assignments_in_sqlite() {
    counters_are_backfilled_from_existing_assignments(Mode::Embedded).await;
}

#[tokio::test]
async fn counters_are_backfilled_from_existing_assignments_in_postgres() {
    counters_are_backfilled_from_existing_assignments(Mode::Production).await;
}

/// A batch of step jobs assigns its leads together: the same round robin, counters and
/// retry rule as one by one, and batches from concurrent workers stay within capacity.
async fn a_batch_of_leads_goes_round_robin_within_capacity(mode: Mode) {
    const WORKERS: usize = 4;
    let store = migrated(mode, WORKERS as u32).await;
    let team = team(Strategy::RoundRobin, &["ann", "bo", "cy"], Some(10));
    let leads = new_contacts(&store, 7).await;
    let mut connection = store.pool.acquire().await.unwrap();
    let batch: Vec<(&Contact, i64)> = leads.iter().zip(1..).collect();
    let reps: Vec<String> = assign_many(&mut connection, &team, &batch, t0())
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reps, ["ann", "bo", "cy", "ann", "bo", "cy", "ann"]);
    // The same enrollments again (a retried batch) keep their reps and take no turn.
    let again: Vec<String> = assign_many(&mut connection, &team, &batch[..2], t0())
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(again, ["ann", "bo"]);
    let (counters, rows) = loads(&store).await;
    assert_eq!(counters, pairs(&[("ann", 3), ("bo", 2), ("cy", 2)]));
    assert_eq!(counters, rows);
    assert_eq!(cursor(&store).await, 7);
    drop(connection);
    // Concurrent batches: 4 workers x 20 leads for 30 slots.
    let more = new_contacts(&store, WORKERS * 20).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(WORKERS));
    let mut workers = Vec::new();
    for (worker, chunk) in more.chunks(20).enumerate() {
        let (store, team, chunk, start) = (store.clone(), team.clone(), chunk.to_vec(), start.clone());
        workers.push(tokio::spawn(async move {
            let mut connection = store.pool.acquire().await.unwrap();
            start.wait().await;
            let batch: Vec<(&Contact, i64)> = chunk.iter().zip((100 + worker as i64 * 100)..).collect();
            assign_many(&mut connection, &team, &batch, t0()).await.unwrap()
        }));
    }
    let mut assigned = 0;
    for worker in workers {
        for outcome in worker.await.unwrap() {
            match outcome {
                Ok(_) => assigned += 1,
                Err(error) => assert_eq!(error, "every rep of team `inbound` is at capacity"),
            }
        }
    }
    assert_eq!(assigned, 30 - 7);
    let (counters, rows) = loads(&store).await;
    assert_eq!(rows, pairs(&[("ann", 10), ("bo", 10), ("cy", 10)]));
    assert_eq!(counters, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_leads_goes_round_robin_within_capacity_in_sqlite() {
    a_batch_of_leads_goes_round_robin_within_capacity(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_leads_goes_round_robin_within_capacity_in_postgres() {
    a_batch_of_leads_goes_round_robin_within_capacity(Mode::Production).await;
}
