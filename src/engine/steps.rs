//! Group commit for steps. Step jobs from the queue are gathered into batches; a batch loads its
//! enrollments, contacts and pending effects with a few queries, moves every enrollment in
//! memory with `transition::advance`, and saves all the moves in one transaction (compare-and-
//! set on each `seq`, multi-row history and effects). Effects are performed after the commit,
//! claimed and marked done many at a time. An enrollment keeps moving inside its batch, with no
//! reload, until it waits or ends.
//!
//! While one batch runs, the next one gathers: under load, batches grow by themselves; when
//! idle, a single job is a batch of one and runs at once.

use super::contact::Contact;
use super::runner::{Engine, Error, MOVES_PER_JOB, Result, pause_for_tests};
use super::transition::{Advance, Enrollment, Input, Position, Refused, World, advance};
use crate::channels;
use crate::journey::model::Journey;
use crate::queue::StepJob;
use crate::store::{self, contacts, effects, enrollments};
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, warn};

/// Most jobs in one batch.
const MAX_BATCH: usize = 512;
/// Messages sent at once by one batch.
const SENDS_AT_ONCE: usize = 64;
/// A batch records its effects already claimed for this long, and performs them right after
/// its commit. Short, so a worker that dies in between holds them only briefly.
const HELD_AT_RECORD_MS: i64 = 20_000;
/// When a failed batch's jobs that no queue holds (`Submitted::here`) run again.
const RETRY_HERE_MS: i64 = 2_000;
/// A batch that comes to perform its own effects later than this after recording them (a slow
/// batch) extends its claim to the full `effect_lease` first.
const FRESH_CLAIM_MS: i64 = 5_000;

/// A job handed to the batcher; `done` hears how its batch went.
pub struct Submitted {
    pub job: StepJob,
    /// The queue's task id and worker, so the batch can delete the finished task.
    pub task: Option<(String, String)>,
    /// Handed over by this process's own pushes (`Queue::run_here`), not taken from the queue.
    pub here: bool,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// An enrollment moving inside a batch.
struct Live {
    id: i64,
    contact_id: i64,
    enrollment: Enrollment,
    status: String,
    journey: Arc<Journey>,
    /// Effects recorded and not yet performed: they go before the next move.
    pending: Vec<effects::Pending>,
}

impl Live {
    fn job(&self) -> StepJob {
        StepJob {
            enrollment: self.id,
            seq: self.enrollment.seq,
        }
    }

    fn may_move(&self) -> bool {
        matches!(self.status.as_str(), "active" | "waiting") && !self.enrollment.is_finished()
    }
}

impl Engine {
    /// Runs a step job in the next batch: performs its pending effects, then moves the
    /// enrollment until it waits or ends. A stale job does nothing.
    pub async fn run_job(self: &Arc<Self>, job: StepJob) -> Result<()> {
        self.submit(job, None).await
    }

    /// Runs the jobs of a task taken from the queue (`task` is its id and the worker's name),
    /// each in the next batch, and deletes the task once all are done. A task of one job is
    /// deleted by its batch, with the batch's other tasks.
    pub async fn run_task(self: &Arc<Self>, mut jobs: Vec<StepJob>, task: Option<(String, String)>) -> Result<()> {
        if jobs.len() == 1 {
            return self.submit(jobs.remove(0), task).await;
        }
        let outcomes = futures::future::join_all(jobs.into_iter().map(|job| self.submit(job, None))).await;
        if let Some((task, worker)) = task
            && let Err(error) = self.queue.finished(&worker, &[task]).await
        {
            debug!(%error, "Could not delete a finished task from the queue.");
        }
        outcomes.into_iter().collect()
    }

    async fn submit(self: &Arc<Self>, job: StepJob, task: Option<(String, String)>) -> Result<()> {
        let (done, outcome) = oneshot::channel();
        self.batcher()
            .send(Submitted {
                job,
                task,
                here: false,
                done,
            })
            .map_err(|_| Error::Invalid("the step batcher has stopped".into()))?;
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Invalid(error)),
            Err(_) => Err(Error::Invalid("the step batch was abandoned".into())),
        }
    }

    /// What `Queue::run_here` calls while this process runs a step worker: jobs it pushes go
    /// straight into the next step batch.
    pub fn runs_here(self: &Arc<Self>) -> Arc<dyn Fn(Vec<StepJob>) + Send + Sync> {
        let engine = Arc::downgrade(self);
        Arc::new(move |jobs: Vec<StepJob>| {
            let Some(engine) = engine.upgrade() else { return };
            let batcher = engine.batcher();
            for job in jobs {
                // Nobody waits for the outcome: a failed batch holds its jobs for a retry.
                let (done, _) = oneshot::channel();
                let here = Submitted {
                    job,
                    task: None,
                    here: true,
                    done,
                };
                if batcher.send(here).is_err() {
                    engine.queue.finished_here(1);
                }
            }
        })
    }

    fn batcher(self: &Arc<Self>) -> &mpsc::UnboundedSender<Submitted> {
        self.steps.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(super::groups::run_groups(
                Arc::downgrade(self),
                receiver,
                self.groups_at_once(),
                MAX_BATCH,
                |_: &Submitted| 1,
                |engine, batch| async move { engine.run_batch(batch).await },
            ));
            sender
        })
    }

    /// How long a worker holds the effects it performs (`effect_lease`).
    pub(crate) fn lease(&self) -> Duration {
        Duration::from_std(self.config.effect_lease).unwrap_or_else(|_| Duration::minutes(5))
    }

    /// Holds the waits due in `(after, until]` (ms) in this process's timers, and pushes the
    /// overdue ones now. Returns `until`.
    pub async fn load_timer_window(&self, after: i64, until: i64) -> Result<i64> {
        let mut connection = self.store.pool.acquire().await?;
        let rows = enrollments::due_between(&mut connection, after, until).await?;
        drop(connection);
        let now = self.clock.now().timestamp_millis();
        let (due, coming): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, _, at)| *at <= now);
        self.queue.timers.hold_loaded(
            coming
                .into_iter()
                .map(|(enrollment, seq, at)| (StepJob { enrollment, seq }, at)),
        );
        let due_ms: Vec<i64> = due.iter().map(|(_, _, at)| *at).collect();
        self.queue
            .push_now(
                due.into_iter()
                    .map(|(enrollment, seq, _)| StepJob { enrollment, seq })
                    .collect(),
            )
            .await?;
        // Overdue when loaded (after a restart): as late as they are now.
        self.queue
            .timers
            .count_lateness(due_ms, self.clock.now().timestamp_millis());
        Ok(until)
    }

    async fn run_batch(&self, batch: Vec<Submitted>) {
        let jobs: Vec<StepJob> = batch.iter().map(|s| s.job).collect();
        let span = tracing::debug_span!("steps", jobs = jobs.len());
        let started = std::time::Instant::now();
        let outcome = self.move_batch(&jobs).instrument(span).await;
        debug!(jobs = jobs.len(), elapsed = ?started.elapsed(), "Step batch done.");
        if let Err(error) = &outcome {
            warn!(%error, jobs = jobs.len(), "A step batch failed; the reconciler will retry its steps.");
        }
        let mut finished: HashMap<String, Vec<String>> = HashMap::new();
        for submitted in &batch {
            if let Some((task, worker)) = &submitted.task {
                finished.entry(worker.clone()).or_default().push(task.clone());
            }
        }
        for (worker, tasks) in finished {
            if let Err(error) = self.queue.finished(&worker, &tasks).await {
                debug!(%error, "Could not delete finished tasks from the queue.");
            }
        }
        let here: Vec<StepJob> = batch.iter().filter(|s| s.here).map(|s| s.job).collect();
        if !here.is_empty() {
            self.queue.finished_here(here.len());
            if outcome.is_err() {
                // No queue holds these: try them again shortly (the reconciler would, later).
                let at = self.clock.now().timestamp_millis() + RETRY_HERE_MS;
                self.queue.timers.hold_loaded(here.into_iter().map(|job| (job, at)));
            }
        }
        let outcome = outcome.map_err(|e| e.to_string());
        for submitted in batch {
            let _ = submitted.done.send(outcome.clone());
        }
    }

    /// Moves a batch of enrollments, each as far as it goes now.
    async fn move_batch(&self, jobs: &[StepJob]) -> Result<()> {
        let clock = std::time::Instant::now();
        let mut connection = self.store.pool.acquire().await?;
        let mut wanted: HashMap<i64, Vec<u64>> = HashMap::new();
        for job in jobs {
            wanted.entry(job.enrollment).or_default().push(job.seq);
        }
        let ids: Vec<i64> = wanted.keys().copied().collect();
        let now = self.clock.now();
        let mut lives = Vec::with_capacity(ids.len());
        for stored in enrollments::load_many(&mut connection, &ids).await? {
            let enrollment = stored.enrollment;
            let id: i64 = enrollment
                .id
                .parse()
                .map_err(|_| corrupt("enrollment id", &enrollment.id))?;
            // A stale job, a failed enrollment, or one that exited (erased, merged) does nothing.
            if !wanted.get(&id).is_some_and(|seqs| seqs.contains(&enrollment.seq))
                || matches!(stored.status.as_str(), "failed" | "exited")
            {
                continue;
            }
            let Some(journey) = self
                .journey(&mut connection, &enrollment.journey_id, &enrollment.version)
                .await?
            else {
                let error = format!(
                    "journey {} version {} is not available",
                    enrollment.journey_id, enrollment.version
                );
                enrollments::fail(&mut connection, id, enrollment.seq, &error, now).await?;
                continue;
            };
            lives.push(Live {
                id,
                contact_id: enrollment
                    .contact_id
                    .parse()
                    .map_err(|_| corrupt("contact id", &enrollment.contact_id))?,
                enrollment,
                status: stored.status,
                journey,
                pending: Vec::new(),
            });
        }
        // A paused journey's enrollments hold here, before their next step (see `controls.rs`).
        self.hold_paused(&mut lives, |live| &live.journey.id);
        if lives.is_empty() {
            return Ok(());
        }
        // An enrollment that has not moved yet (seq 0) has recorded no effect: no need to ask.
        let live_ids: Vec<i64> = lives.iter().filter(|l| l.enrollment.seq > 0).map(|l| l.id).collect();
        let mut pending: HashMap<i64, Vec<effects::Pending>> = HashMap::new();
        if !live_ids.is_empty() {
            for (id, effect) in effects::pending_many(&mut connection, &live_ids).await? {
                pending.entry(id).or_default().push(effect);
            }
        }
        for live in &mut lives {
            live.pending = pending.remove(&live.id).unwrap_or_default();
        }
        let contact_ids: Vec<i64> = lives
            .iter()
            .map(|l| l.contact_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut contacts = self.load_contacts(&mut connection, &contact_ids, now).await?;
        lives.retain(|l| contacts.contains_key(&l.contact_id));
        let journeys = lives.iter().map(|l| l.journey.as_ref());
        let mut sent = self.message_times(&mut connection, journeys, &contact_ids, now).await?;

        let loaded = clock.elapsed();
        let mut later: Vec<(StepJob, DateTime<Utc>)> = Vec::new();
        let (mut performing, mut moving) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for _ in 0..MOVES_PER_JOB {
            if lives.is_empty() {
                break;
            }
            let started = std::time::Instant::now();
            let done;
            (lives, done) = self
                .perform_pending(&mut connection, lives, &contacts, &mut later)
                .await?;
            performing += started.elapsed();
            let started = std::time::Instant::now();
            lives = self
                .move_once(&mut connection, lives, done, &mut contacts, &mut sent, &mut later)
                .await?;
            // The SMS log of the effects just marked done.
            self.record_sms_log(&mut connection).await?;
            moving += started.elapsed();
        }
        // Where a batch's time goes, for profiling (`RUST_LOG=nurture::engine::steps=debug`).
        debug!(?loaded, ?performing, ?moving, "Step batch phases.");
        drop(connection);
        // A long chain of instant steps: hand the rest to the queue so others get a turn.
        self.queue.push_now(lives.iter().map(Live::job).collect()).await?;
        for (job, at) in later {
            self.queue.push_at(job, at).await?;
        }
        Ok(())
    }

    /// Performs the effects recorded before each enrollment's next move. Returns the
    /// enrollments that may move on (the others wait for a retry, failed, or belong to another
    /// worker that claimed their effects) and the effects performed, for the next move's
    /// transaction to mark done.
    async fn perform_pending(
        &self,
        connection: &mut sqlx::AnyConnection,
        lives: Vec<Live>,
        contacts: &HashMap<i64, Contact>,
        later: &mut Vec<(StepJob, DateTime<Utc>)>,
    ) -> Result<(Vec<Live>, Vec<(String, String, DateTime<Utc>)>)> {
        if lives.iter().all(|l| l.pending.is_empty()) {
            return Ok((lives, Vec::new()));
        }
        let now = self.clock.now();
        let lease = self.lease();
        let now_ms = now.timestamp_millis();
        // Effects this batch recorded moments ago are held already; older ones are claimed.
        let fresh = |p: &effects::Pending| {
            p.ours
                && p.claimed_until
                    .is_some_and(|until| until - now_ms > HELD_AT_RECORD_MS - FRESH_CLAIM_MS)
        };
        let all = lives.iter().flat_map(|l| l.pending.iter());
        let keys: Vec<&str> = all.clone().filter(|p| !p.ours).map(|p| p.key.as_str()).collect();
        let stale: Vec<(&str, i64)> = all
            .clone()
            .filter(|p| p.ours && !fresh(p))
            .filter_map(|p| Some((p.key.as_str(), p.claimed_until?)))
            .collect();
        let mut claimed: HashSet<String> = all.filter(|p| fresh(p)).map(|p| p.key.clone()).collect();
        if !keys.is_empty() {
            claimed.extend(effects::claim_many(connection, &keys, now, now + lease).await?);
        }
        if !stale.is_empty() {
            claimed.extend(effects::extend_many(connection, &stale, now + lease).await?);
        }
        let (ready, lives): (Vec<Live>, Vec<Live>) = lives.into_iter().partition(|l| l.pending.is_empty());
        // Another worker holds an effect: it carries that enrollment on. If it died, its claim
        // runs out, and this job comes back to claim the effect then.
        let (lives, held): (Vec<Live>, Vec<Live>) = lives
            .into_iter()
            .partition(|l| l.pending.iter().all(|p| claimed.contains(&p.key)));
        for live in held {
            let until = live
                .pending
                .iter()
                .filter(|p| !claimed.contains(&p.key))
                .map(|p| p.claimed_until.and_then(DateTime::from_timestamp_millis))
                .try_fold(now, |latest, until| until.map(|u| latest.max(u)))
                .unwrap_or(now + lease);
            later.push((live.job(), until));
        }

        // Messages go out many at a time; assignments write through this batch's connection.
        let mut results: Vec<Vec<(String, Result<String, channels::Error>)>> =
            (0..lives.len()).map(|_| Vec::new()).collect();
        let mut sends = Vec::new();
        for (index, live) in lives.iter().enumerate() {
            if let Some(contact) = contacts.get(&live.contact_id) {
                sends.push(self.perform_messages(index, live, contact, now));
            }
        }
        let mut sends = futures::stream::iter(sends).buffer_unordered(SENDS_AT_ONCE);
        // When each enrollment's messages went out: their `done_at`, not the end of the batch.
        let mut finished_at = vec![None; lives.len()];
        while let Some((index, outcome)) = sends.next().await {
            results[index] = outcome;
            finished_at[index] = Some(self.clock.now());
        }
        drop(sends);
        // Assignments of one team go together: one transaction per team for the whole batch.
        let mut by_team: HashMap<&str, Vec<(usize, &effects::Pending)>> = HashMap::new();
        for (index, live) in lives.iter().enumerate() {
            if results[index].iter().any(|(_, r)| r.is_err()) {
                continue;
            }
            for pending in &live.pending {
                if let super::transition::Effect::AssignToSales { team } = &pending.effect {
                    by_team.entry(team.as_str()).or_default().push((index, pending));
                }
            }
        }
        let catalog = self.catalog();
        for (team_id, wanted) in by_team {
            let team = catalog.sales.as_ref().and_then(|sales| sales.teams.get(team_id));
            let outcomes: Vec<Result<String, channels::Error>> = match team {
                None => wanted
                    .iter()
                    .map(|_| {
                        Err(channels::Error::Permanent(format!(
                            "sales team `{team_id}` is gone from sales.yaml"
                        )))
                    })
                    .collect(),
                Some(team) => {
                    let leads: Vec<(&Contact, i64)> = wanted
                        .iter()
                        .filter_map(|(index, _)| {
                            contacts
                                .get(&lives[*index].contact_id)
                                .map(|contact| (contact, lives[*index].id))
                        })
                        .collect();
                    let outcome = if leads.len() == wanted.len() {
                        self.assign_leads(connection, team, &leads, now).await
                    } else {
                        Err(channels::Error::Transient("a lead's contact is not loaded".into()))
                    };
                    match outcome {
                        Ok(outcomes) => outcomes
                            .into_iter()
                            .map(|o| o.map(|rep| format!("assigned to {rep}")))
                            .collect(),
                        Err(error) => wanted.iter().map(|_| Err(error.clone())).collect(),
                    }
                }
            };
            let assigned_at = self.clock.now();
            for ((index, pending), outcome) in wanted.into_iter().zip(outcomes) {
                results[index].push((pending.key.clone(), outcome));
                finished_at[index] = Some(finished_at[index].unwrap_or(assigned_at));
            }
        }
        self.metrics
            .effects_performed(lives.iter().zip(&results).flat_map(|(live, outcome)| {
                outcome.iter().filter_map(move |(key, result)| {
                    let pending = live.pending.iter().find(|p| &p.key == key)?;
                    Some((&pending.effect, result.is_ok()))
                })
            }));
        let mut done = Vec::new();
        let mut moving = ready;
        let mut failed = Vec::new();
        for ((live, outcome), at) in lives.into_iter().zip(results).zip(finished_at) {
            let at = at.unwrap_or(now);
            let mut failure = None;
            for (key, result) in outcome {
                match result {
                    Ok(result) => {
                        debug!(effect = %key, result, "Effect performed.");
                        done.push((key, result, at));
                    }
                    Err(error) => failure = Some((key, error)),
                }
            }
            match failure {
                None => moving.push(Live {
                    pending: Vec::new(),
                    ..live
                }),
                Some((key, error)) => failed.push((live, key, error)),
            }
        }
        for (live, key, error) in failed {
            if let Err(error) = self.effect_failed(connection, &live, &key, error, later).await {
                self.keep_done(connection, &done).await;
                return Err(error);
            }
        }
        Ok((moving, done))
    }

    /// One enrollment's message effects, in order, stopping at the first failure.
    async fn perform_messages(
        &self,
        index: usize,
        live: &Live,
        contact: &Contact,
        now: DateTime<Utc>,
    ) -> (usize, Vec<(String, Result<String, channels::Error>)>) {
        let mut results = Vec::new();
        for pending in live.pending.iter().filter(|p| !is_assignment(p)) {
            let result = self
                .perform(None, &live.journey, &live.enrollment, contact, pending, now)
                .await;
            let failed = result.is_err();
            results.push((pending.key.clone(), result));
            if failed {
                break;
            }
        }
        (index, results)
    }

    /// A transient failure postpones the enrollment with backoff; a permanent one, or too many
    /// attempts, moves it to the failed list.
    async fn effect_failed(
        &self,
        connection: &mut sqlx::AnyConnection,
        live: &Live,
        key: &str,
        error: channels::Error,
        later: &mut Vec<(StepJob, DateTime<Utc>)>,
    ) -> Result<()> {
        let now = self.clock.now();
        let pending = live.pending.iter().find(|p| p.key == key);
        let attempts = pending.map(|p| p.attempts).unwrap_or(0) + 1;
        let step = pending.map(|p| p.step.as_str()).unwrap_or_default();
        let give_up = !error.is_transient() || attempts as u32 >= self.config.max_attempts;
        if effects::mark_attempt(connection, key, &error.to_string(), give_up)
            .await?
            .is_none()
        {
            // Cancelled while it was being tried (the contact was erased): nothing to retry,
            // and the enrollment is not failed for it.
            debug!(effect = %key, %error, "Effect failed after it was cancelled.");
            return Ok(());
        }
        if give_up {
            warn!(effect = %key, %error, attempts, "Effect failed; the enrollment moves to the failed list.");
            enrollments::fail(
                connection,
                live.id,
                live.enrollment.seq,
                &format!("{step}: {error}"),
                now,
            )
            .await?;
        } else {
            let delay = super::runner::backoff(self.config.retry_base, attempts, key);
            warn!(effect = %key, %error, attempts, retry_in = ?delay, "Effect failed; will retry.");
            let until = now + delay;
            enrollments::postpone(
                connection,
                live.id,
                live.enrollment.seq,
                until,
                attempts,
                &error.to_string(),
                now,
            )
            .await?;
            later.push((live.job(), until));
        }
        Ok(())
    }

    /// One move of every enrollment that may move, saved in one transaction. Returns the
    /// enrollments to carry on with in this batch.
    async fn move_once(
        &self,
        connection: &mut sqlx::AnyConnection,
        lives: Vec<Live>,
        done: Vec<(String, String, DateTime<Utc>)>,
        contacts: &mut HashMap<i64, Contact>,
        sent: &mut HashMap<i64, Vec<DateTime<Utc>>>,
        later: &mut Vec<(StepJob, DateTime<Utc>)>,
    ) -> Result<Vec<Live>> {
        let now = self.clock.now();
        let now_clock = std::time::Instant::now();
        let mut planned: Vec<(Live, Advance)> = Vec::with_capacity(lives.len());
        for live in lives {
            if !live.may_move() {
                continue;
            }
            let Some(contact) = contacts.get(&live.contact_id) else {
                continue;
            };
            let messages = sent.entry(live.contact_id).or_default();
            let planning = match self.plan_moves(connection, &live, contact, messages, now).await {
                Ok(planning) => planning,
                Err(error) => {
                    self.keep_done(connection, &done).await;
                    return Err(error);
                }
            };
            match planning {
                Planned::Moved(moved) => {
                    // Counted at once, so the contact's next enrollment in this batch sees it.
                    messages.extend(moved.effects.iter().filter(|e| e.effect.is_message()).map(|_| now));
                    planned.push((live, moved))
                }
                Planned::NotYet(until) => later.push((live.job(), until)),
                Planned::Nothing => {}
            }
        }
        if planned.is_empty() {
            self.keep_done(connection, &done).await;
            return Ok(Vec::new());
        }
        let planning = now_clock.elapsed();
        let saved = match self.save_round(connection, &planned, &done, now).await {
            Ok(saved) => saved,
            Err(error) => {
                self.keep_done(connection, &done).await;
                return Err(error);
            }
        };
        debug!(moves = planned.len(), ?planning, committed = ?now_clock.elapsed(), "Step batch round.");
        let won = saved.won;
        self.enqueue(saved.qualified).await?;
        self.metrics.steps_ran(
            planned
                .iter()
                .zip(&won)
                .filter(|(_, won)| **won)
                .flat_map(|((live, moved), _)| {
                    moved.records.iter().map(move |r| {
                        (
                            live.journey.id.as_str(),
                            r.step.as_str(),
                            r.kind.as_str(),
                            r.outcome.as_str(),
                        )
                    })
                }),
        );

        let mut carry_on = Vec::new();
        let mut any_effects = false;
        for ((mut live, moved), won) in planned.into_iter().zip(won) {
            if !won {
                continue;
            }
            if let Some(contact) = contacts.get_mut(&live.contact_id) {
                for change in &moved.changes {
                    contact.apply(change);
                }
            }
            for record in &moved.records {
                debug!(enrollment = live.id, step = %record.step, outcome = %record.outcome, "Step.");
            }
            live.enrollment.position = moved.position.clone();
            live.enrollment.seq = moved.seq;
            live.status = enrollments::status_name(live.enrollment.status()).to_string();
            any_effects |= !moved.effects.is_empty();
            live.pending = moved
                .effects
                .iter()
                .map(|keyed| effects::Pending {
                    key: keyed.key.to_string(),
                    step: keyed.key.step.clone(),
                    effect: keyed.effect.clone(),
                    attempts: 0,
                    claimed_until: Some(saved.held_until),
                    ours: true,
                })
                .collect();
            match &moved.position {
                Position::Entering { .. } => carry_on.push(live),
                // Effects of this move (a message sent before a wait) go first.
                Position::Parked { .. } | Position::Finished { .. } if !live.pending.is_empty() => carry_on.push(live),
                Position::Parked { until, .. } => later.push((live.job(), *until)),
                Position::Finished { .. } => {}
            }
        }
        if any_effects {
            pause_for_tests();
        }
        Ok(carry_on)
    }

    /// What was sent stays sent: when the round's transaction cannot carry the effects just
    /// performed, they are marked done on their own, or they would be performed again once
    /// their claim ran out. If the database cannot be reached either, the marks are tried again
    /// on fresh connections until it can (for a minute), so an outage shorter than that sends
    /// nothing twice.
    async fn keep_done(&self, connection: &mut sqlx::AnyConnection, done: &[(String, String, DateTime<Utc>)]) {
        if done.is_empty() || effects::mark_done_many(connection, done).await.is_ok() {
            return;
        }
        let (pool, done) = (self.store.pool.clone(), done.to_vec());
        tokio::spawn(async move {
            let done = &done;
            let marked = store::write_through_outage(&pool, store::OUTAGE_RETRY, |mut connection| async move {
                effects::mark_done_many(&mut connection, done).await
            })
            .await;
            if marked.is_err() {
                warn!(
                    effects = done.len(),
                    "Effects were performed but could not be marked done; they may be performed again."
                );
            }
        });
    }

    /// One round's transaction: the effects just performed marked done, then every planned
    /// move (compare-and-set), their contact changes and the stages they qualify for.
    async fn save_round(
        &self,
        connection: &mut sqlx::AnyConnection,
        planned: &[(Live, Advance)],
        done: &[(String, String, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<SavedRound> {
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        effects::mark_done_many(&mut tx, done).await?;
        let moves: Vec<enrollments::Move<'_>> = planned
            .iter()
            .map(|(live, moved)| enrollments::Move {
                journey: &live.journey,
                before: &live.enrollment,
                advance: moved,
            })
            .collect();
        let held_until = now + Duration::milliseconds(HELD_AT_RECORD_MS);
        let won = enrollments::save_moves(&mut tx, &moves, now, Some(held_until)).await?;
        drop(moves);
        let changes: Vec<(i64, &super::ContactChange)> = planned
            .iter()
            .zip(&won)
            .filter(|(_, won)| **won)
            .flat_map(|((live, moved), _)| moved.changes.iter().map(move |c| (live.contact_id, c)))
            .collect();
        contacts::apply_many(&mut tx, &changes, now).await?;
        let scored: HashSet<i64> = changes
            .iter()
            .filter(|(_, c)| matches!(c, super::ContactChange::Score { .. }))
            .map(|(id, _)| *id)
            .collect();
        drop(changes);
        let mut qualified = Vec::new();
        for contact_id in scored {
            qualified.extend(self.qualify(&mut tx, contact_id, now).await?);
        }
        tx.commit().await?;
        Ok(SavedRound {
            won,
            qualified,
            held_until: held_until.timestamp_millis(),
        })
    }

    /// The next moves of one enrollment, in memory: consecutive instant steps that reach
    /// nothing outside (tags, scores, branches, splits) are chained, each with its own history
    /// row and `seq`; a step with effects, a wait or the end stops the chain.
    async fn plan_moves(
        &self,
        connection: &mut sqlx::AnyConnection,
        live: &Live,
        contact: &Contact,
        sent: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Result<Planned> {
        let journey = &live.journey;
        let catalog = self.catalog();
        let mut history = self.preload(connection, journey, live.contact_id, now).await?;
        history.messages = sent.to_vec();
        let mut current = live.enrollment.clone();
        let mut moves: Vec<Advance> = Vec::new();
        let mut working: Option<Contact> = None;
        loop {
            let world = World {
                contact: working.as_ref().unwrap_or(contact),
                now,
                history: &history,
                catalog: &catalog,
            };
            match advance(journey, &current, current.seq, Input::Due, &world) {
                Ok(next) => {
                    if !next.changes.is_empty() {
                        let changed = working.get_or_insert_with(|| contact.clone());
                        for change in &next.changes {
                            changed.apply(change);
                        }
                    }
                    let stop = !next.effects.is_empty()
                        || !matches!(next.position, Position::Entering { .. })
                        || moves.len() >= 15;
                    current.position = next.position.clone();
                    current.seq = next.seq;
                    moves.push(next);
                    if stop {
                        break;
                    }
                }
                Err(Refused::NotYet(until)) if moves.is_empty() => return Ok(Planned::NotYet(until)),
                Err(_) if moves.is_empty() => return Ok(Planned::Nothing),
                Err(_) => break,
            }
        }
        Ok(Planned::Moved(Advance {
            position: current.position.clone(),
            seq: current.seq,
            changes: moves.iter().flat_map(|m| m.changes.iter().cloned()).collect(),
            effects: moves.iter().flat_map(|m| m.effects.iter().cloned()).collect(),
            records: moves.iter().flat_map(|m| m.records.iter().cloned()).collect(),
        }))
    }
}

struct SavedRound {
    /// Per planned move, whether it won its compare-and-set.
    won: Vec<bool>,
    qualified: Vec<(StepJob, DateTime<Utc>)>,
    /// Until when the recorded effects are claimed (ms).
    held_until: i64,
}

enum Planned {
    Moved(Advance),
    /// Parked until then: the timer carries it on.
    NotYet(DateTime<Utc>),
    Nothing,
}

fn is_assignment(pending: &effects::Pending) -> bool {
    matches!(pending.effect, super::transition::Effect::AssignToSales { .. })
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::Store(store::Error::Corrupt(format!("{what} {value}")))
}
