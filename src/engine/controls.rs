//! Journey controls an operator reaches for on a bad day: pause and resume a journey, and its
//! live counts.
//!
//! A pause is a row in `journey_pauses`, so it survives restarts and every process sees it.
//! Each process keeps the set of paused journeys in memory (loaded at start, changed at once by
//! its own pause or resume, read again from the database every `REFRESH`, so a pause made by
//! `nurture journeys pause` or another process reaches it within that time). While a journey
//! is paused:
//! - nobody enters it (`Engine::try_enroll`, the event path of `reactions.rs`, schedules);
//! - the step batch leaves its enrollments where they are (`Engine::hold_paused`): their job
//!   ends and their `due_at` stays, and the reconciler does not queue them again;
//! - on resume, the enrollments due by then (and those with effects not yet performed) are
//!   queued again at once; the ones still waiting come due on their own.

use super::runner::{Engine, Result};
use crate::queue::{Queue, StepJob};
use crate::store::{self, Store};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::{info, warn};

/// How often a process reads the paused journeys again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The journeys paused now, as this process knows them, with a generation that each local
/// change bumps: a read from the database that started before a local change is dropped.
#[derive(Default)]
pub struct Paused(RwLock<(u64, Arc<HashSet<String>>)>);

impl Paused {
    /// A snapshot: the step batch reads it once per batch, not once per enrollment.
    pub fn snapshot(&self) -> Arc<HashSet<String>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    fn generation(&self) -> u64 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The set read from the database, unless it changed here since `generation`.
    fn replace(&self, generation: u64, journeys: HashSet<String>) {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        if current.0 == generation {
            current.1 = Arc::new(journeys);
        }
    }

    fn change(&self, journey_id: &str, paused: bool) {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut set = (*current.1).clone();
        if paused {
            set.insert(journey_id.to_string());
        } else {
            set.remove(journey_id);
        }
        *current = (current.0 + 1, Arc::new(set));
    }
}

/// A journey's enrollments now.
#[derive(Debug, Serialize)]
pub struct JourneyCounts {
    pub journey: String,
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<DateTime<Utc>>,
    /// Every enrollment, finished or not.
    pub enrolled: i64,
    /// `active`, `waiting`, `completed`, `exited`, `failed`: each present, zero or not.
    pub by_status: BTreeMap<String, i64>,
    /// Contacts in flight (active or waiting) at each step, in the journey's order; steps of
    /// older versions come after.
    pub at_step: Vec<StepCount>,
    pub failed: i64,
    /// Failed enrollments by the step they failed at.
    pub failed_at_step: Vec<StepCount>,
}

#[derive(Debug, Serialize)]
pub struct StepCount {
    pub step: String,
    pub count: i64,
}

const STATUSES: [&str; 5] = ["active", "waiting", "completed", "exited", "failed"];

/// Pauses `journey_id`; false if it was paused already.
pub async fn pause(store: &Store, journey_id: &str, by: &str, now: DateTime<Utc>) -> Result<bool> {
    let mut connection = store.pool.acquire().await?;
    let paused = store::controls::pause(&mut connection, journey_id, by, now).await?;
    if paused {
        info!(journey = journey_id, by, "Journey paused.");
    }
    Ok(paused)
}

/// Resumes `journey_id` and queues the enrollments it held. `None` if it was not paused.
/// Other processes learn of the resume within `REFRESH` and may hold a job meanwhile:
/// call `requeue_held` again after `SETTLE`.
pub async fn resume(store: &Store, queue: &Queue, journey_id: &str, now: DateTime<Utc>) -> Result<Option<usize>> {
    let mut connection = store.pool.acquire().await?;
    if !store::controls::resume(&mut connection, journey_id).await? {
        return Ok(None);
    }
    drop(connection);
    let count = requeue_held(store, queue, journey_id, now).await?;
    info!(journey = journey_id, requeued = count, "Journey resumed.");
    Ok(Some(count))
}

/// How long after a resume every process has seen it.
pub const SETTLE: Duration = Duration::from_millis(2 * REFRESH.as_millis() as u64 + 500);

/// Queues the enrollments of a journey that are due or have effects to perform. Jobs already
/// queued are harmless twice: the second finds its `seq` moved on and does nothing.
pub async fn requeue_held(store: &Store, queue: &Queue, journey_id: &str, now: DateTime<Utc>) -> Result<usize> {
    let mut connection = store.pool.acquire().await?;
    let held = store::controls::held(&mut connection, journey_id, now).await?;
    drop(connection);
    let count = held.len();
    queue
        .push_now(
            held.into_iter()
                .map(|(enrollment, seq)| StepJob { enrollment, seq })
                .collect(),
        )
        .await?;
    Ok(count)
}

/// A journey's live counts: one grouped query.
pub async fn counts(store: &Store, journey: &str, steps: &[String]) -> Result<JourneyCounts> {
    let mut connection = store.pool.acquire().await?;
    let rows = store::controls::counts(&mut connection, journey).await?;
    let paused_at = store::controls::paused(&mut connection)
        .await?
        .into_iter()
        .find(|(id, _)| id == journey)
        .map(|(_, at)| at);
    let mut by_status: BTreeMap<String, i64> = STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
    let mut at_step: Vec<StepCount> = steps
        .iter()
        .map(|step| StepCount {
            step: step.clone(),
            count: 0,
        })
        .collect();
    let mut failed_at_step: Vec<StepCount> = Vec::new();
    for row in rows {
        *by_status.entry(row.status.clone()).or_default() += row.count;
        let Some(step) = row.step else { continue };
        let list = match row.status.as_str() {
            "active" | "waiting" => &mut at_step,
            "failed" => &mut failed_at_step,
            _ => continue,
        };
        match list.iter_mut().find(|c| c.step == step) {
            Some(count) => count.count += row.count,
            None => list.push(StepCount { step, count: row.count }),
        }
    }
    Ok(JourneyCounts {
        journey: journey.to_string(),
        paused: paused_at.is_some(),
        paused_at,
        enrolled: by_status.values().sum(),
        failed: by_status.get("failed").copied().unwrap_or(0),
        by_status,
        at_step,
        failed_at_step,
    })
}

impl Engine {
    /// How many journeys are paused, as this process knows it.
    pub fn paused_count(&self) -> usize {
        self.paused.snapshot().len()
    }

    /// Whether `journey_id` is paused, as this process knows it.
    pub fn holds(&self, journey_id: &str) -> bool {
        self.paused.snapshot().contains(journey_id)
    }

    /// Leaves out the items of paused journeys; called once per step batch. Nothing to do,
    /// and no allocation, when no journey is paused.
    pub(crate) fn hold_paused<T>(&self, items: &mut Vec<T>, journey_of: impl Fn(&T) -> &str) {
        let paused = self.paused.snapshot();
        if !paused.is_empty() {
            items.retain(|item| !paused.contains(journey_of(item)));
        }
    }

    /// The journey of the current catalog with this id, if any.
    pub fn journey_by_id(&self, journey_id: &str) -> Option<Arc<crate::journey::Journey>> {
        self.catalog().journeys.iter().find(|j| j.id == journey_id).cloned()
    }

    /// Pauses a journey; false if it was paused already.
    pub async fn pause_journey(&self, journey_id: &str, by: &str) -> Result<bool> {
        let paused = pause(&self.store, journey_id, by, self.clock.now()).await?;
        self.paused.change(journey_id, true);
        Ok(paused)
    }

    /// Resumes a journey and queues what it held: `None` if it was not paused.
    pub async fn resume_journey(self: &Arc<Self>, journey_id: &str) -> Result<Option<usize>> {
        // Forgotten here first, so the jobs queued below are not held again by this process.
        self.paused.change(journey_id, false);
        let resumed = resume(&self.store, &self.queue, journey_id, self.clock.now()).await?;
        if resumed.is_some() {
            // Once more when every process knows: a worker elsewhere may have held a job of
            // the first round in the meantime.
            let engine = Arc::downgrade(self);
            let journey_id = journey_id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE).await;
                let Some(engine) = engine.upgrade() else { return };
                if let Err(error) = requeue_held(&engine.store, &engine.queue, &journey_id, engine.clock.now()).await {
                    warn!(%error, journey = %journey_id, "Could not queue a resumed journey's contacts again; the reconciler will.");
                }
            });
        }
        Ok(resumed)
    }

    /// Live counts of a journey, with its current steps in order.
    pub async fn journey_counts(&self, journey_id: &str) -> Result<JourneyCounts> {
        let steps: Vec<String> = self
            .journey_by_id(journey_id)
            .map(|journey| journey.steps.iter().map(|s| s.id.clone()).collect())
            .unwrap_or_default();
        counts(&self.store, journey_id, &steps).await
    }

    /// Reads the paused journeys from the database.
    pub async fn refresh_pauses(&self) -> Result<()> {
        let generation = self.paused.generation();
        let mut connection = self.store.pool.acquire().await?;
        let paused = store::controls::paused(&mut connection).await?;
        self.paused
            .replace(generation, paused.into_iter().map(|(id, _)| id).collect());
        Ok(())
    }

    /// Keeps this process's paused journeys current, until the engine is dropped.
    pub async fn run_pause_refresh(engine: std::sync::Weak<Engine>) {
        loop {
            tokio::time::sleep(REFRESH).await;
            let Some(engine) = engine.upgrade() else { return };
            if let Err(error) = engine.refresh_pauses().await {
                warn!(%error, "Could not read the paused journeys.");
            }
        }
    }
}
