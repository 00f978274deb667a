//! The durable runner: takes step jobs, moves enrollments with `transition::advance`, commits
//! each move, then performs its effects. Also the entry points that start and wake
//! enrollments: events, stages, schedules, and the reconciler that repairs lost jobs.

use super::clock::Clock;
use super::contact::Contact;
use super::message::template_data;
use super::transition::{Effect, Enrollment, History, Outcome, Position, enrollment_key, may_enter};
use crate::channels;
use crate::channels::email::Mailer;
use crate::channels::links::Signer;
use crate::channels::sms::SmsSender;
use crate::config::Config;
use crate::expr::{EventCounter, EventFacts};
use crate::journey::model::{Journey, OnChange, Trigger};
use crate::journey::values::Stage;
use crate::journey::{self, Catalog, Sources};
use crate::queue::{Queue, StepJob};
use crate::store::{self, Store, contacts, effects, enrollments};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
    #[error("{0}")]
    Invalid(String),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Store(store::Error::Db(error))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most moves one job makes before it hands the enrollment back to the queue.
pub(crate) const MOVES_PER_JOB: usize = 64;

pub struct Engine {
    pub store: Store,
    pub queue: Queue,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
    catalog: RwLock<Arc<Catalog>>,
    sources: RwLock<Arc<Sources>>,
    /// Older journey versions that running enrollments still use, compiled on demand.
    versions: Mutex<HashMap<(String, String), Arc<Journey>>>,
    pub(crate) mailer: Mailer,
    pub(crate) sms: SmsSender,
    /// Signs and checks the unsubscribe, click and open links of email.
    pub links: Signer,
    /// Calls of `webhook` steps, under the address policy of `[webhooks]`.
    pub(crate) webhooks: channels::http::Client,
    /// Sent SMS waiting to be recorded by the next batch (see `outbound.rs`).
    pub(crate) sms_log: Mutex<Vec<super::outbound::SmsLog>>,
    /// Whether this process performs effects (`serve`, `worker`), so every catalog it installs
    /// must be deliverable; `import`, `reload` and `api` only store.
    pub(crate) sends: std::sync::atomic::AtomicBool,
    /// Step jobs on their way to a batch (see `steps.rs`); started on the first job.
    pub(crate) steps: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<super::steps::Submitted>>,
    /// Requests on their way to a group commit (see `ingest.rs`); started on the first one.
    pub(crate) ingest_groups: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<super::ingest::Pending>>,
    /// Requests stored and waiting to be applied (see `inbox.rs`); started on the first one.
    pub(crate) inbox: std::sync::OnceLock<super::inbox::Inbox>,
    /// Accept deadlines coming due and reps to tell (see `sales.rs`).
    pub(crate) sales: super::lead_deadlines::SalesDesk,
    /// What the reconciler pushed lately, and where its walk of the backlog stands.
    pub(crate) repairs: Mutex<super::reconcile::Repairs>,
    /// The journeys paused now (see `controls.rs`).
    pub(crate) paused: super::controls::Paused,
    /// What `/metrics` shows (see `crate::metrics`).
    pub metrics: crate::metrics::Metrics,
}

/// Counts preloaded for one move: `count_events` windows, and when the recent messages to the
/// contact were recorded (for frequency caps). The step batch loads those times for all its
/// contacts at once (`Engine::message_times`); events only answer waits and goals and never
/// send, so the event path loads none.
pub(crate) struct Preloaded {
    counts: Vec<(String, DateTime<Utc>, i64)>,
    pub(crate) messages: Vec<DateTime<Utc>>,
}

impl EventCounter for Preloaded {
    fn count_events(&self, name: &str, since: DateTime<Utc>) -> i64 {
        self.counts
            .iter()
            .find(|(n, s, _)| n == name && *s == since)
            .map(|(_, _, c)| *c)
            .unwrap_or(0)
    }
}

impl History for Preloaded {
    fn messages_since(&self, since: DateTime<Utc>) -> u32 {
        self.messages.iter().filter(|at| **at >= since).count() as u32
    }
}

impl Engine {
    pub fn new(store: Store, queue: Queue, clock: Arc<dyn Clock>, config: Config) -> Result<Engine> {
        let mailer = Mailer::from_config(config.smtp_url.as_deref(), &config.outbox)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let sms = SmsSender::from_config(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        let webhooks = channels::http::Client::new(
            config.webhooks.timeout,
            Some(crate::addresses::Policy {
                allowed: config.webhooks.allow_networks.clone(),
            }),
        );
        let links = match &config.secret {
            Some(secret) if !secret.0.is_empty() => Signer::new(secret.0.as_bytes()),
            _ => {
                return Err(Error::Invalid(
                    "there is no secret to sign links with (NURTURE_SECRET)".into(),
                ));
            }
        };
        queue.timers.set_clock(clock.clone());
        Ok(Engine {
            store,
            queue,
            clock,
            config,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            sources: RwLock::new(Arc::new(Sources::default())),
            versions: Mutex::new(HashMap::new()),
            mailer,
            sms,
            links,
            webhooks,
            sms_log: Mutex::new(Vec::new()),
            sends: std::sync::atomic::AtomicBool::new(false),
            steps: std::sync::OnceLock::new(),
            ingest_groups: std::sync::OnceLock::new(),
            inbox: std::sync::OnceLock::new(),
            sales: super::lead_deadlines::SalesDesk::default(),
            repairs: Mutex::default(),
            paused: super::controls::Paused::default(),
            metrics: crate::metrics::Metrics::default(),
        })
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes a compiled catalog current and stores every journey version in it.
    pub async fn install(&self, catalog: Catalog, sources: Sources) -> Result<()> {
        if self.sends.load(std::sync::atomic::Ordering::Relaxed) {
            self.check_sms_provider(&catalog)?;
        }
        let now = self.clock.now();
        for journey in &catalog.journeys {
            let source = sources
                .journeys
                .iter()
                .find(|f| f.path == journey.file)
                .map(|f| f.text.as_str())
                .unwrap_or_default();
            if self
                .store
                .save_journey_version(&journey.id, &journey.version, &journey.file, source, now)
                .await?
            {
                info!(journey = %journey.id, version = %journey.version, "New journey version stored.");
            }
        }
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sources);
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog.clone());
        for journey in catalog
            .journeys
            .iter()
            .filter(|j| matches!(j.on_change, OnChange::Migrate(_)))
        {
            let moved = self.migrate_in_flight(journey).await?;
            if moved > 0 {
                info!(journey = %journey.id, version = %journey.version, moved, "Moved running enrollments to the new version.");
            }
        }
        Ok(())
    }

    /// `on_change: migrate`: moves unfinished enrollments of older versions to the matching
    /// step of this one (see `plan::migration_target`). Waits keep their deadline when the new
    /// step waits the same way; otherwise the new step is entered now.
    async fn migrate_in_flight(&self, journey: &Arc<Journey>) -> Result<usize> {
        let now = self.clock.now();
        let mut connection = self.store.pool.acquire().await?;
        let mut jobs = Vec::new();
        for enrollment in enrollments::open_on_other_versions(&mut connection, &journey.id, &journey.version).await? {
            let Some(old) = self.journey(&mut connection, &journey.id, &enrollment.version).await? else {
                continue;
            };
            let (old_step, parked) = match &enrollment.position {
                Position::Entering { step } => (*step, None),
                Position::Parked { step, until, reason } => (*step, Some((*until, *reason))),
                Position::Finished { .. } => continue,
            };
            let Some(step_id) = old.steps.get(old_step).map(|s| s.id.clone()) else {
                continue;
            };
            let Some(target) = super::plan::migration_target(journey, &step_id) else {
                continue;
            };
            let position = match journey.step_index(&target) {
                None => Position::Finished {
                    outcome: Outcome::Completed,
                },
                Some(index) => match parked {
                    Some((until, reason))
                        if super::kinds::hold_alike(&old.steps[old_step].kind, &journey.steps[index].kind) =>
                    {
                        Position::Parked {
                            step: index,
                            until,
                            reason,
                        }
                    }
                    _ => Position::Entering { step: index },
                },
            };
            let record = super::transition::StepRecord {
                step: target.clone(),
                kind: "migrate".into(),
                seq: enrollment.seq,
                at: now,
                outcome: "migrated".into(),
                detail: format!("from step {step_id} of version {}", enrollment.version),
            };
            let moved = super::transition::Advance {
                position: position.clone(),
                seq: enrollment.seq + 1,
                changes: vec![],
                effects: vec![],
                records: vec![record],
            };
            let id: i64 = enrollments::enrollment_id(&enrollment)?;
            let mut tx = sqlx::Connection::begin(&mut *connection).await?;
            if enrollments::save_move(&mut tx, journey, &enrollment, &moved, now).await? {
                enrollments::set_version(&mut tx, id, &journey.version).await?;
                tx.commit().await?;
                if let Some(job) = job_for(&enrollment, &position, moved.seq, now) {
                    jobs.push(job);
                }
            }
        }
        let count = jobs.len();
        drop(connection);
        self.enqueue(jobs).await?;
        Ok(count)
    }

    /// The journey an enrollment runs on: the current version, or an older stored one.
    /// Never takes a second connection: callers already hold one.
    pub(crate) async fn journey(
        &self,
        connection: &mut sqlx::AnyConnection,
        id: &str,
        version: &str,
    ) -> Result<Option<Arc<Journey>>> {
        if let Some(journey) = self.catalog().journey(id).filter(|j| j.version == version) {
            return Ok(Some(journey.clone()));
        }
        let key = (id.to_string(), version.to_string());
        if let Some(journey) = self.versions.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(Some(journey.clone()));
        }
        let Some((file, source)) = store::journey_source(connection, id, version).await? else {
            return Ok(None);
        };
        let mut sources = (**self.sources.read().unwrap_or_else(|e| e.into_inner())).clone();
        sources.journeys = vec![journey::SourceFile {
            path: file,
            text: source,
        }];
        let (catalog, diagnostics) = journey::compile(&sources);
        let Some(journey) = catalog
            .journeys
            .into_iter()
            .find(|j| j.id == id && j.version == version)
        else {
            warn!(
                journey = id,
                version,
                ?diagnostics,
                "A stored journey version no longer compiles."
            );
            return Ok(None);
        };
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, journey.clone());
        Ok(Some(journey))
    }

    pub async fn create_contact(&self, contact: &contacts::NewContact) -> Result<i64> {
        let mut connection = self.store.pool.acquire().await?;
        Ok(contacts::create(&mut connection, contact, self.clock.now()).await?)
    }

    pub async fn contact(&self, id: i64) -> Result<Option<Contact>> {
        let mut connection = self.store.pool.acquire().await?;
        self.load_contact(&mut connection, id, self.clock.now()).await
    }

    /// A contact did something: store it, then let it reach goals, answer waits and start
    /// journeys. Jobs are enqueued after the transaction commits. Returns new enrollment ids.
    pub async fn track(self: &Arc<Self>, contact_id: i64, event: EventFacts) -> Result<Vec<i64>> {
        // Through the ingest group: concurrent calls share a transaction and set-based statements.
        self.track_in_group(contact_id, event).await
    }

    /// The contact reached a lifecycle stage: start the journeys that wait for it.
    pub async fn stage_reached(&self, contact_id: i64, stage: Stage) -> Result<Vec<i64>> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let jobs = self.stage_reached_in(&mut tx, contact_id, stage, now).await?;
        tx.commit().await?;
        let started = jobs.iter().map(|(job, _)| job.enrollment).collect();
        self.enqueue(jobs).await?;
        Ok(started)
    }

    /// Moves the contact to `stage`, records a `Lead Qualified` event (which journeys may
    /// trigger on or wait for) and starts the journeys triggered by the stage.
    pub(crate) async fn stage_reached_in(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        stage: Stage,
        now: DateTime<Utc>,
    ) -> Result<Vec<(StepJob, DateTime<Utc>)>> {
        let catalog = self.catalog();
        sqlx::query("UPDATE contacts SET stage = $1 WHERE id = $2")
            .bind(stage.as_str())
            .bind(contact_id)
            .execute(&mut **tx)
            .await?;
        let Some(contact) = self.load_contact(tx, contact_id, now).await? else {
            return Err(Error::Invalid(format!("no contact {contact_id}")));
        };
        let mut properties = serde_json::Map::new();
        properties.insert("stage".into(), serde_json::Value::from(stage.as_str()));
        properties.insert("score".into(), serde_json::Value::from(contact.score));
        let qualified = EventFacts {
            name: "Lead Qualified".into(),
            properties,
            timestamp: Some(now),
        };
        contacts::record_event(tx, contact_id, &qualified, now).await?;
        store::reports::record_stage(tx, contact_id, stage.as_str(), store::ms(now)).await?;
        let occurrence = super::reactions::Occurrence {
            contact_id,
            event: qualified.clone(),
            at: now,
            received: contacts::Received::default(),
            reacts: true,
        };
        let mut jobs = self.react_one(tx, &occurrence, now).await?;
        for journey in catalog.journeys.iter().filter(|j| j.trigger == Trigger::Stage(stage)) {
            if let Some(enrollment) = self.try_enroll(tx, journey, &contact, Some(&qualified), now).await? {
                jobs.push((
                    StepJob {
                        enrollment: enrollments::enrollment_id(&enrollment)?,
                        seq: 0,
                    },
                    now,
                ));
            }
        }
        Ok(jobs)
    }

    /// Enrolls the contact if re-entry rules allow; the unique index settles races.
    async fn try_enroll(
        &self,
        tx: &mut store::Tx<'_>,
        journey: &Journey,
        contact: &Contact,
        trigger: Option<&EventFacts>,
        now: DateTime<Utc>,
    ) -> Result<Option<Enrollment>> {
        let contact_id: i64 = contact
            .id
            .parse()
            .map_err(|_| store::Error::Corrupt(format!("contact id {}", contact.id)))?;
        let Some(key) = enrollment_key(journey, contact, trigger, now) else {
            return Ok(None);
        };
        if self.holds(&journey.id) {
            return Ok(None);
        }
        let earlier = enrollments::of_contact(tx, contact_id, &journey.id).await?;
        if let Err(reason) = may_enter(journey, &earlier, key.as_deref(), now) {
            tracing::debug!(journey = %journey.id, contact = contact_id, reason, "Not enrolled.");
            return Ok(None);
        }
        Ok(enrollments::insert(tx, journey, contact_id, key.as_deref(), trigger, now).await?)
    }

    pub(crate) async fn preload(
        &self,
        connection: &mut sqlx::AnyConnection,
        journey: &Journey,
        contact_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Preloaded> {
        let mut counts = Vec::new();
        for (name, window) in journey.count_calls() {
            let since = now - window.as_duration();
            counts.push((
                name.clone(),
                since,
                contacts::count_events(connection, contact_id, &name, since).await?,
            ));
        }
        Ok(Preloaded {
            counts,
            messages: Vec::new(),
        })
    }

    /// When the recent messages to these contacts were recorded, per contact, as far back as
    /// the longest frequency cap that applies to `journeys` (theirs or the workspace's): one
    /// query for a whole step batch, none when no cap applies.
    pub(crate) async fn message_times<'a>(
        &self,
        connection: &mut sqlx::AnyConnection,
        journeys: impl Iterator<Item = &'a Journey>,
        contact_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<HashMap<i64, Vec<DateTime<Utc>>>> {
        let catalog = self.catalog();
        let longest = journeys
            .filter_map(|j| j.settings.frequency_cap)
            .chain(catalog.guardrails.frequency_cap)
            .map(|cap| cap.window)
            .max();
        let mut times: HashMap<i64, Vec<DateTime<Utc>>> = HashMap::new();
        if let Some(window) = longest {
            for (contact, at) in
                store::guardrails::message_times(connection, contact_ids, now - window.as_duration()).await?
            {
                times.entry(contact).or_default().push(at);
            }
        }
        Ok(times)
    }

    pub(crate) async fn enqueue_jobs(&self, jobs: Vec<(StepJob, DateTime<Utc>)>) -> Result<()> {
        self.enqueue(jobs).await
    }

    pub(crate) async fn enqueue(&self, jobs: Vec<(StepJob, DateTime<Utc>)>) -> Result<()> {
        let now = self.clock.now();
        let (ready, later): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(_, at)| *at <= now);
        self.queue
            .push_now(ready.into_iter().map(|(job, _)| job).collect())
            .await?;
        for (job, at) in later {
            self.queue.push_at(job, at).await?;
        }
        Ok(())
    }

    /// Performs one effect. Messages need no connection; an assignment writes with the one given.
    pub(crate) async fn perform(
        &self,
        connection: Option<&mut sqlx::AnyConnection>,
        journey: &Journey,
        enrollment: &Enrollment,
        contact: &Contact,
        pending: &effects::Pending,
        now: DateTime<Utc>,
    ) -> Result<String, channels::Error> {
        let (key, effect) = (pending.key.as_str(), &pending.effect);
        let catalog = self.catalog();
        let unsubscribe_url = self.unsubscribe_url(contact, enrollment)?;
        let data = template_data(journey, enrollment, contact, &unsubscribe_url, now);
        let render_error = |e: journey::templates::RenderError| channels::Error::Permanent(e.to_string());
        match effect {
            Effect::SendEmail { template } => {
                self.send_email(journey, contact, key, template, &data, &unsubscribe_url)
                    .await
            }
            Effect::SendSms { template } => {
                if !contact.allows("sms") {
                    return Ok("suppressed: the contact opted out of SMS".into());
                }
                let to = contact
                    .phone
                    .as_deref()
                    .ok_or_else(|| channels::Error::Permanent("the contact has no phone number".into()))?;
                let sms = catalog
                    .templates
                    .render_sms(template, contact.language(), &data)
                    .map_err(render_error)?;
                self.send_sms(journey, contact, key, to, &sms, now).await
            }
            Effect::AssignToSales { team } => {
                let sales = catalog
                    .sales
                    .as_ref()
                    .ok_or_else(|| channels::Error::Permanent("there is no sales.yaml".into()))?;
                let team = sales.teams.get(team).ok_or_else(|| {
                    channels::Error::Permanent(format!("sales team `{team}` is gone from sales.yaml"))
                })?;
                let connection = connection
                    .ok_or_else(|| channels::Error::Transient("an assignment needs a database connection".into()))?;
                let enrollment =
                    enrollments::enrollment_id(enrollment).map_err(|e| channels::Error::Permanent(e.to_string()))?;
                self.assign_leads(connection, team, &[(contact, enrollment)], now)
                    .await?
                    .pop()
                    .unwrap_or_else(|| Err(channels::Error::Transient("the lead was not placed".into())))
            }
            Effect::Webhook {
                method,
                url,
                headers,
                body,
            } => {
                let call = channels::webhook::Call {
                    method,
                    url,
                    headers,
                    body: body.as_ref(),
                    key,
                };
                self.call_webhook(&data, call).await
            }
        }
    }

    /// Re-enqueues unfinished enrollments whose step is overdue: after a Redis flush, a lost
    /// job or a crashed worker. Duplicates are harmless (a stale `seq` does nothing).
    pub async fn reconcile(&self) -> Result<usize> {
        let now = self.clock.now();
        // Requests stored by a process that died before applying them (see `inbox.rs`).
        let orphans = self
            .apply_inbox_backlog(now - Duration::milliseconds(super::inbox::ORPHAN_AFTER_MS))
            .await?;
        if orphans > 0 {
            warn!(
                requests = orphans,
                "Applied stored requests that no process had applied."
            );
        }
        let grace = Duration::from_std(self.config.reconcile_grace).unwrap_or_default();
        let mut connection = self.store.pool.acquire().await?;
        let mut overdue = self.overdue_page(&mut connection, now - grace).await?;
        // Effects recorded but never performed (a worker died after its commit).
        overdue.extend(enrollments::with_stale_effects(&mut connection, now - grace, super::reconcile::PAGE).await?);
        overdue.sort_unstable();
        overdue.dedup();
        drop(connection);
        // Under a backlog most overdue steps are queued, not lost: push each once a while.
        let overdue = self.not_pushed_recently(overdue, now);
        // Accept deadlines passed and reps not told, left by a process that died.
        self.reconcile_sales(now - grace).await?;
        let count = overdue.len();
        if count > 0 {
            warn!(count, "Re-enqueueing overdue steps that have no job.");
            self.queue
                .push_now(
                    overdue
                        .into_iter()
                        .map(|(enrollment, seq)| StepJob { enrollment, seq })
                        .collect(),
                )
                .await?;
        }
        Ok(count)
    }

    /// Puts a failed enrollment back to work.
    pub async fn retry(&self, id: i64) -> Result<bool> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let seq = enrollments::revive(&mut tx, id, now).await?;
        tx.commit().await?;
        match seq {
            Some(seq) => {
                self.queue.push_now(vec![StepJob { enrollment: id, seq }]).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Enrolls every contact in a schedule's audience for one tick, once across all processes.
    pub async fn fire_schedule(&self, journey: &Journey, tick: DateTime<Utc>, process: &str) -> Result<Option<usize>> {
        self.fire_tick(journey, tick, process, Firing::default()).await
    }

    /// `fire_schedule`, a page of the audience at a time. The tick is claimed with a lease; each
    /// page's enrollments commit with the tick's cursor and count, and renew the lease, so a
    /// process that dies mid-audience leaves a cursor that another resumes from
    /// (`resume_abandoned_ticks`) once the lease runs out: every contact is looked at once.
    /// Returns how many the tick enrolled in all; `None` if it was not this process's to fire.
    pub async fn fire_tick(
        &self,
        journey: &Journey,
        tick: DateTime<Utc>,
        process: &str,
        firing: Firing,
    ) -> Result<Option<usize>> {
        let Trigger::Schedule { audience, .. } = &journey.trigger else {
            return Ok(None);
        };
        let now = self.clock.now();
        // A paused journey's tick is not claimed: a broadcast fires late once it is resumed.
        if self.holds(&journey.id) {
            info!(journey = %journey.id, %tick, "Schedule not fired: the journey is paused.");
            return Ok(None);
        }
        let mut connection = self.store.pool.acquire().await?;
        let claimed =
            store::controls::claim_tick(&mut connection, &journey.id, tick, process, now, now + TICK_LEASE).await?;
        drop(connection);
        let Some(claimed) = claimed else {
            return Ok(None);
        };
        if claimed.cursor > 0 {
            warn!(journey = %journey.id, %tick, after_contact = claimed.cursor, enrolled = claimed.enrolled, "Resuming a schedule tick another process left half done.");
        }
        let mut enrolled = usize::try_from(claimed.enrolled).unwrap_or_default();
        let mut after = claimed.cursor;
        let mut pages = 0;
        loop {
            if firing.stop_after_pages == Some(pages) {
                // As a process that died here: the tick stays claimed and unfinished.
                return Ok(Some(enrolled));
            }
            let mut connection = self.store.pool.acquire().await?;
            let ids = contacts::page_of_ids(&mut connection, after, firing.page).await?;
            drop(connection);
            let Some(last) = ids.last().copied() else { break };
            let mut tx = self.store.begin().await?;
            let mut jobs = Vec::new();
            for id in ids {
                let Some(contact) = self.load_contact(&mut tx, id, now).await? else {
                    continue;
                };
                let history = self.preload(&mut tx, journey, id, now).await?;
                let view = contact.facts_view();
                let facts = contact.facts(&view, None, None, now, &history);
                if audience.eval_bool(&facts) != Ok(true) {
                    continue;
                }
                if let Some(enrollment) = self.try_enroll(&mut tx, journey, &contact, None, now).await? {
                    jobs.push((
                        StepJob {
                            enrollment: enrollments::enrollment_id(&enrollment)?,
                            seq: 0,
                        },
                        now,
                    ));
                }
            }
            let lease_until = self.clock.now() + TICK_LEASE;
            let count = i64::try_from(jobs.len()).unwrap_or(i64::MAX);
            if !store::controls::tick_page_done(&mut tx, &journey.id, tick, process, last, count, lease_until).await? {
                tx.rollback().await?;
                warn!(journey = %journey.id, %tick, "Another process took this schedule tick over; stopping.");
                return Ok(None);
            }
            tx.commit().await?;
            after = last;
            pages += 1;
            enrolled += jobs.len();
            self.enqueue(jobs).await?;
        }
        let mut connection = self.store.pool.acquire().await?;
        store::controls::finish_tick(&mut connection, &journey.id, tick, process, self.clock.now()).await?;
        info!(journey = %journey.id, %tick, enrolled, "Schedule fired.");
        Ok(Some(enrolled))
    }

    /// Resumes the schedule ticks whose claimer died mid-audience (their lease ran out), each
    /// after the last page it committed; returns how many were resumed. The scheduler of every
    /// process calls it at each look.
    pub async fn resume_abandoned_ticks(&self, process: &str) -> Result<usize> {
        let mut connection = self.store.pool.acquire().await?;
        let abandoned = store::controls::abandoned_ticks(&mut connection, self.clock.now()).await?;
        drop(connection);
        let mut resumed = 0;
        for (journey_id, tick) in abandoned {
            // A journey no longer in the catalog has no audience to finish: left as it is.
            let Some(journey) = self.journey_by_id(&journey_id) else {
                continue;
            };
            if self.fire_schedule(&journey, tick, process).await?.is_some() {
                resumed += 1;
            }
        }
        Ok(resumed)
    }
}

/// How long a claimed schedule tick stays its claimer's without progress: each page of the
/// audience renews it, so only a process that died (or stalled this long) loses the tick.
pub const TICK_LEASE: Duration = Duration::seconds(60);

/// How `Engine::fire_tick` walks the audience.
#[derive(Clone, Copy, Debug)]
pub struct Firing {
    /// Contacts per page (and per transaction).
    pub page: i64,
    /// Stops after this many pages, leaving the tick unfinished as a process that died there
    /// would (tests); `None`: the whole audience.
    pub stop_after_pages: Option<usize>,
}

impl Default for Firing {
    fn default() -> Self {
        Firing {
            page: 500,
            stop_after_pages: None,
        }
    }
}

/// The job that continues an enrollment after a move made outside a job.
pub(crate) fn job_for(
    enrollment: &Enrollment,
    position: &Position,
    seq: u64,
    now: DateTime<Utc>,
) -> Option<(StepJob, DateTime<Utc>)> {
    let id = enrollment.id.parse().ok()?;
    let at = enrollments::due_at(position, now)?;
    Some((StepJob { enrollment: id, seq }, at))
}

/// Exponential backoff with jitter: base, 2x base, 4x base, ... each scaled by 0.5-1.5.
pub fn backoff(base: std::time::Duration, attempt: i32, key: &str) -> Duration {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{key}/{attempt}").as_bytes());
    let jitter = 0.5 + f64::from(digest[0]) / 255.0;
    let factor = 2f64.powi((attempt - 1).clamp(0, 16));
    let millis = (base.as_millis() as f64 * factor * jitter).min(6.0 * 3600.0 * 1000.0);
    Duration::milliseconds(millis as i64)
}

/// Test hook for the crash test: with `NURTURE_TEST_PAUSE_BEFORE_EFFECT=FILE`, a worker that
/// has committed a move with effects creates FILE and stops there, to be killed.
pub(crate) fn pause_for_tests() {
    if let Ok(marker) = std::env::var("NURTURE_TEST_PAUSE_BEFORE_EFFECT") {
        let _ = std::fs::write(&marker, b"paused");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
