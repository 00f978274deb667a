//! I/O. The sales loop on the engine: leads placed with reps (from `assign_to_sales` steps, from
//! the pool, after a recycle or a rejection), what reps do with them (accept, reject, won,
//! lost), the accept deadlines that send unaccepted leads back to the pool, and stages set by
//! sales. Every change is one transaction with the events it emits (`Lead Assigned`, `Lead
//! Accepted`, `Lead Rejected`, `Lead Recycled`, `Lead Won`, `Lead Lost`), which go through
//! `record_and_react` like any tracked event, so journeys can `wait_for` them. Telling the rep
//! is in `lead_notices.rs`, the deadlines' timer in `lead_deadlines.rs`.

use super::contact::Contact;
use super::reactions::Occurrence;
use super::runner::{Engine, Error, Result};
use super::transition::{World, exit_now};
use crate::channels::{self, assign};
use crate::journey::sales::Team;
use crate::journey::values::Stage;
use crate::queue::StepJob;
use crate::store::sales::{self as leads, Lead, Status};
use crate::store::{self, enrollments};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tracing::{debug, warn};

/// Who acts on a lead through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    Admin,
    Rep(String),
}

impl Actor {
    pub fn sees(&self, lead: &Lead) -> bool {
        match self {
            Actor::Admin => true,
            Actor::Rep(rep) => lead.rep == *rep || lead.previous_rep.as_deref() == Some(rep.as_str()),
        }
    }

    fn holds(&self, lead: &Lead) -> bool {
        match self {
            Actor::Admin => true,
            Actor::Rep(rep) => lead.rep == *rep,
        }
    }
}

/// What a rep did with a lead.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Accept,
    Reject { reason: String },
    Won { revenue: f64, currency: Option<String> },
    Lost { reason: String },
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("there is no lead {0}")]
    NotFound(i64),
    #[error("lead {id} is {status}: it cannot be {action}")]
    Conflict {
        id: i64,
        status: &'static str,
        action: &'static str,
    },
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<store::Error> for Refusal {
    fn from(error: store::Error) -> Self {
        Refusal::Failed(error.into())
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(error: sqlx::Error) -> Self {
        Refusal::Failed(error.into())
    }
}

/// What a sales transaction leaves to do: events to record before the commit, and deadlines
/// to hold and reps to tell after it.
#[derive(Default)]
struct Follow {
    events: Vec<Occurrence>,
    deadlines: Vec<(i64, i64)>,
    notices: Vec<i64>,
    /// Teams where a slot came free: their pool gets a turn.
    freed: Vec<String>,
    /// Round-robin turns taken for a team before the transaction began (`reserve_turns`);
    /// a team without them takes its cursor row's lock.
    reserved: Option<(String, i64)>,
    /// Leads given to each (team, rep) and not yet counted, with the rep's capacity: counted
    /// as the transaction's last writes, so the counter rows are locked only briefly.
    taken: BTreeMap<(String, String), (i64, Option<u32>)>,
    /// How many of the `reserved` turns the placement used.
    turns_used: i64,
}

/// Why a sales transaction did not commit.
#[derive(Debug, thiserror::Error)]
enum SalesError {
    /// Another worker's assignment filled a rep this one chose: running it again chooses anew.
    #[error("{0}")]
    Filled(String),
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<store::Error> for SalesError {
    fn from(error: store::Error) -> Self {
        SalesError::Failed(error.into())
    }
}

impl From<sqlx::Error> for SalesError {
    fn from(error: sqlx::Error) -> Self {
        SalesError::Failed(error.into())
    }
}

impl From<SalesError> for Error {
    fn from(error: SalesError) -> Self {
        match error {
            SalesError::Filled(reason) => Error::Invalid(reason),
            SalesError::Failed(error) => error,
        }
    }
}

impl From<SalesError> for Refusal {
    fn from(error: SalesError) -> Self {
        Refusal::Failed(error.into())
    }
}

/// How many times an assignment runs again when a rep filled up under it (another worker's
/// assignment committed first).
const FILLED_RETRIES: usize = 4;

impl Engine {
    /// `assign_to_sales` for many leads of one team, through the step batch's connection: one
    /// transaction places them all, closes their leads in other teams and records `Lead
    /// Assigned`. Returns each lead's outcome for its effect.
    pub(crate) async fn assign_leads(
        &self,
        connection: &mut sqlx::AnyConnection,
        team: &Team,
        wanted: &[(&Contact, i64)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<String, channels::Error>>, channels::Error> {
        let transient = |error: Error| channels::Error::Transient(error.to_string());
        let mut offers = Vec::with_capacity(wanted.len());
        let mut outcomes: Vec<Option<Result<String, channels::Error>>> = Vec::with_capacity(wanted.len());
        for (contact, enrollment) in wanted {
            match contact.id.parse::<i64>() {
                Ok(contact_id) => {
                    offers.push(assign::Offer {
                        contact,
                        contact_id,
                        enrollment: Some(*enrollment),
                        avoid: None,
                        pooled: None,
                    });
                    outcomes.push(None);
                }
                Err(_) => outcomes.push(Some(Err(channels::Error::Permanent(format!(
                    "bad contact id {}",
                    contact.id
                ))))),
            }
        }
        // The turns are taken outside the transaction, so concurrent batches of this team do
        // not wait on each other's transactions for the cursor.
        let turns = offers.len() as i64;
        let first_turn = leads::reserve_turns(connection, &team.id, turns)
            .await
            .map_err(|e| transient(e.into()))?;
        let mut attempt = 0;
        let placed = loop {
            attempt += 1;
            let mut tx = sqlx::Connection::begin(&mut *connection)
                .await
                .map_err(|e| transient(e.into()))?;
            let mut follow = Follow {
                reserved: Some((team.id.clone(), first_turn)),
                ..Follow::default()
            };
            let placed = self.place_in(&mut tx, team, &offers, now, &mut follow).await?;
            let used = follow.turns_used;
            match self.commit_sales(tx, follow, now).await {
                Ok(()) => {
                    if used < turns
                        && let Err(error) =
                            leads::return_turns(connection, &team.id, first_turn + turns, turns - used).await
                    {
                        debug!(%error, "Could not give back unused round-robin turns.");
                    }
                    break placed;
                }
                Err(SalesError::Filled(_)) if attempt < FILLED_RETRIES => continue,
                Err(error) => return Err(channels::Error::Transient(error.to_string())),
            }
        };
        let mut placed = placed.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Ok(match placed.next() {
                        Some(assign::Placed::Rep { rep, kept: false, .. }) => format!("assigned to {rep}"),
                        Some(assign::Placed::Rep { rep, kept: true, .. }) => format!("already with {rep}"),
                        Some(assign::Placed::Pool { .. }) | None => {
                            format!("pooled: every rep of team `{}` is at capacity", team.id)
                        }
                    })
                })
            })
            .collect())
    }

    /// Places offers with a team inside `tx` and notes what follows: `Lead Assigned` for each
    /// lead a rep got, its deadline and notice, and the teams that other teams' leads left.
    async fn place_in(
        &self,
        tx: &mut store::Tx<'_>,
        team: &Team,
        offers: &[assign::Offer<'_>],
        now: DateTime<Utc>,
        follow: &mut Follow,
    ) -> Result<Vec<assign::Placed>, channels::Error> {
        // Reserved turns serve one placement; a second one in this transaction (the pool's
        // turn for freed slots) takes the cursor's lock.
        let reserved = match follow.reserved.take() {
            Some((reserved, first)) if reserved == team.id => Some(first),
            other => {
                follow.reserved = other;
                None
            }
        };
        let first_turn = match reserved {
            Some(first) => {
                leads::write_first(tx, &team.id).await?;
                first
            }
            None => leads::lock_team(tx, &team.id).await?,
        };
        let pending: HashMap<String, i64> = follow
            .taken
            .iter()
            .filter(|((taken_team, _), _)| *taken_team == team.id)
            .map(|((_, rep), (count, _))| (rep.clone(), *count))
            .collect();
        let placement = assign::place(tx, team, offers, now, first_turn, &pending).await?;
        if reserved.is_some() {
            follow.turns_used = placement.turns;
        } else if placement.turns > 0 {
            leads::set_turn(tx, &team.id, first_turn + placement.turns).await?;
        }
        for (rep, count) in &placement.taken {
            let capacity = team.reps.iter().find(|r| r.id == *rep).and_then(|r| r.capacity);
            follow
                .taken
                .entry((team.id.clone(), rep.clone()))
                .or_insert((0, capacity))
                .0 += count;
        }
        for (offer, placed) in offers.iter().zip(&placement.placed) {
            let assign::Placed::Rep { lead, rep, kept: false } = placed else {
                continue;
            };
            let mut properties = lead_properties(*lead, &team.id, rep);
            if let Some(previous) = offer.avoid {
                properties.insert("previous_rep".into(), previous.into());
            }
            if let Some(within) = team.accept_within {
                let due = now + within.as_duration();
                properties.insert("accept_by".into(), due.to_rfc3339().into());
                follow.deadlines.push((*lead, due.timestamp_millis()));
            }
            follow
                .events
                .push(lead_event(offer.contact_id, "Lead Assigned", properties, now));
            if !team.is_silent() {
                follow.notices.push(*lead);
            }
        }
        for closed in &placement.reassigned {
            if closed.status.holds_slot() {
                follow.freed.push(closed.team.clone());
            }
        }
        Ok(placement.placed)
    }

    /// Gives free slots of these teams to their oldest pooled leads (never to the rep who
    /// last let a lead go), then records every event, commits, and carries out what follows.
    async fn commit_sales(
        &self,
        mut tx: store::Tx<'_>,
        mut follow: Follow,
        now: DateTime<Utc>,
    ) -> Result<(), SalesError> {
        let catalog = self.catalog();
        let mut drained = BTreeSet::new();
        while let Some(team_id) = follow.freed.pop() {
            if !drained.insert(team_id.clone()) {
                continue;
            }
            let Some(team) = catalog.sales.as_ref().and_then(|sales| sales.teams.get(&team_id)) else {
                continue;
            };
            let pooled = leads::pooled(&mut tx, &team.id, 64).await?;
            if pooled.is_empty() {
                continue;
            }
            let ids: Vec<i64> = pooled.iter().map(|lead| lead.contact_id).collect();
            let contacts = self.load_contacts(&mut tx, &ids, now).await?;
            let offers: Vec<assign::Offer<'_>> = pooled
                .iter()
                .filter_map(|lead| {
                    Some(assign::Offer {
                        contact: contacts.get(&lead.contact_id)?,
                        contact_id: lead.contact_id,
                        enrollment: lead.enrollment_id,
                        avoid: lead.previous_rep.as_deref(),
                        pooled: Some(lead.id),
                    })
                })
                .collect();
            self.place_in(&mut tx, team, &offers, now, &mut follow)
                .await
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let jobs = self.record_and_react(&mut tx, &follow.events, now).await?.jobs;
        // The reps' counters last, in one order (no deadlock between two workers), so their rows
        // are locked from here to the commit only. The guard keeps every rep within capacity.
        for ((team, rep), (count, capacity)) in std::mem::take(&mut follow.taken) {
            if !leads::add_load(&mut tx, &team, &rep, count, capacity).await? {
                return Err(SalesError::Filled(format!(
                    "rep `{rep}` of team `{team}` filled up meanwhile"
                )));
            }
        }
        tx.commit().await?;
        self.after_sales_commit(jobs, follow).await;
        Ok(())
    }

    /// Erasure's part in sales, in the erasure's transaction: the contact's open leads close
    /// (`lost`, "contact erased"; no event, nothing more happens to an erased person), the
    /// slots they held are given back, then committed with the freed slots going to the teams'
    /// oldest pooled leads, as every other close does.
    pub(crate) async fn commit_erasure(
        &self,
        mut tx: store::Tx<'_>,
        contact_id: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut follow = Follow::default();
        // Lock order: the teams first, as placing does.
        let mut teams: Vec<String> = leads::open_of_contacts(&mut tx, &[contact_id])
            .await?
            .into_iter()
            .map(|lead| lead.team)
            .collect();
        teams.sort();
        teams.dedup();
        for team in &teams {
            leads::lock_team(&mut tx, team).await?;
        }
        for lead in leads::close_erased(&mut tx, contact_id, now).await? {
            if lead.status.holds_slot() {
                leads::release(&mut tx, &lead.team, &lead.rep).await?;
                follow.freed.push(lead.team.clone());
            }
        }
        Ok(self.commit_sales(tx, follow, now).await?)
    }

    async fn after_sales_commit(&self, jobs: Vec<(StepJob, DateTime<Utc>)>, follow: Follow) {
        let count = jobs.len();
        if let Err(error) = self.enqueue_jobs(jobs).await {
            warn!(%error, jobs = count, "Sales events stored, but their step jobs could not be enqueued; the reconciler will.");
        }
        let ahead = self.clock.now().timestamp_millis() + crate::queue::timers::HOLD_AHEAD_MS;
        self.sales
            .hold(follow.deadlines.into_iter().filter(|(_, due)| *due <= ahead));
        self.sales.tell(follow.notices);
    }

    /// A rep (or an admin) acts on a lead. Returns the lead as it is afterwards.
    pub async fn act_on_lead(
        self: &Arc<Self>,
        id: i64,
        actor: &Actor,
        action: Action,
    ) -> std::result::Result<Lead, Refusal> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let lead = leads::get(&mut tx, id)
            .await?
            .filter(|lead| actor.holds(lead))
            .ok_or(Refusal::NotFound(id))?;
        let catalog = self.catalog();
        let team = catalog.sales.as_ref().and_then(|sales| sales.teams.get(&lead.team));
        // Lock order: the team first, as placing does.
        leads::lock_team(&mut tx, &lead.team).await?;
        let mut follow = Follow::default();
        let mut properties = lead_properties(lead.id, &lead.team, &lead.rep);
        match &action {
            Action::Accept => {
                if lead.status == Status::Accepted {
                    return Ok(lead);
                }
                if !leads::accept(&mut tx, id, now).await? {
                    return Err(Refusal::Conflict {
                        id,
                        status: lead.status.as_str(),
                        action: "accepted",
                    });
                }
                follow
                    .events
                    .push(lead_event(lead.contact_id, "Lead Accepted", properties, now));
            }
            Action::Reject { reason } | Action::Lost { reason } => {
                let rejected = matches!(action, Action::Reject { .. });
                let (to, name) = if rejected {
                    (Status::Rejected, "Lead Rejected")
                } else {
                    (Status::Lost, "Lead Lost")
                };
                let closing = leads::Closing {
                    to,
                    reason: Some(reason),
                    revenue: None,
                    currency: None,
                };
                self.close_held(&mut tx, &lead, &closing, now).await?;
                properties.insert("reason".into(), reason.clone().into());
                follow.events.push(lead_event(lead.contact_id, name, properties, now));
                // A rejected lead goes back to the pool at once, and on to another rep.
                if rejected && let Some(team) = team {
                    self.pass_on(&mut tx, team, &lead, now, &mut follow).await?;
                }
                follow.freed.push(lead.team.clone());
            }
            Action::Won { revenue, currency } => {
                let closing = leads::Closing {
                    to: Status::Won,
                    reason: None,
                    revenue: Some(*revenue),
                    currency: currency.as_deref(),
                };
                self.close_held(&mut tx, &lead, &closing, now).await?;
                properties.insert("revenue".into(), (*revenue).into());
                if let Some(currency) = currency {
                    properties.insert("currency".into(), currency.clone().into());
                }
                let won = lead_event(lead.contact_id, "Lead Won", properties, now);
                // The journey that handed the lead to sales converted, with the deal's revenue.
                if let Some(enrollment) = lead.enrollment_id
                    && let Some(stored) = enrollments::load(&mut tx, enrollment).await?
                {
                    enrollments::record_conversion(&mut tx, &stored.enrollment, &won.event, now).await?;
                }
                follow.events.push(won);
                follow.freed.push(lead.team.clone());
            }
        }
        let mut jobs = Vec::new();
        if matches!(action, Action::Won { .. }) {
            leads::set_owners(&mut tx, &[(lead.contact_id, Some(lead.rep.as_str()))]).await?;
            jobs = self.move_stage(&mut tx, lead.contact_id, Stage::Customer, now).await?;
        }
        let after = self.finish_action(tx, follow, jobs, id, now).await?;
        Ok(after)
    }

    /// Closes a lead its rep holds and gives back the rep's slot; refused if it was not held.
    async fn close_held(
        &self,
        tx: &mut store::Tx<'_>,
        lead: &Lead,
        closing: &leads::Closing<'_>,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), Refusal> {
        if leads::close(tx, lead.id, &[Status::Assigned, Status::Accepted], closing, now)
            .await?
            .is_none()
        {
            return Err(Refusal::Conflict {
                id: lead.id,
                status: lead.status.as_str(),
                action: closing.to.as_str(),
            });
        }
        leads::release(tx, &lead.team, &lead.rep).await?;
        Ok(())
    }

    /// Records the action's events and commits; the lead as it is now.
    async fn finish_action(
        &self,
        mut tx: store::Tx<'_>,
        mut follow: Follow,
        mut jobs: Vec<(StepJob, DateTime<Utc>)>,
        id: i64,
        now: DateTime<Utc>,
    ) -> std::result::Result<Lead, Refusal> {
        // Events first: a journey waiting for `Lead Won` moves on before `exit_when` is asked.
        let freed = std::mem::take(&mut follow.freed);
        let events = std::mem::take(&mut follow.events);
        jobs.extend(self.record_and_react(&mut tx, &events, now).await?.jobs);
        if let Some(contact) = events.first().map(|event| event.contact_id) {
            self.exit_where_due(&mut tx, contact, now).await?;
        }
        let lead = leads::get(&mut tx, id).await?.ok_or(Refusal::NotFound(id))?;
        follow.freed = freed;
        self.commit_sales(tx, follow, now).await?;
        let count = jobs.len();
        if let Err(error) = self.enqueue_jobs(jobs).await {
            warn!(%error, jobs = count, "Sales events stored, but their step jobs could not be enqueued; the reconciler will.");
        }
        Ok(lead)
    }

    /// A lead its rep let go goes to another rep of the team, or waits in the pool.
    async fn pass_on(
        &self,
        tx: &mut store::Tx<'_>,
        team: &Team,
        lead: &Lead,
        now: DateTime<Utc>,
        follow: &mut Follow,
    ) -> Result<()> {
        let Some(contact) = self.load_contact(tx, lead.contact_id, now).await? else {
            return Ok(());
        };
        let offer = assign::Offer {
            contact: &contact,
            contact_id: lead.contact_id,
            enrollment: lead.enrollment_id,
            avoid: Some(&lead.rep),
            pooled: None,
        };
        self.place_in(tx, team, &[offer], now, follow)
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(())
    }

    /// Sends leads whose accept deadline has passed back to the pool (`Lead Recycled`), then on
    /// to another rep. A lead accepted or closed meanwhile is left alone, so a deadline fired
    /// twice (two processes, or the reconciler) recycles once.
    pub(crate) async fn recycle(&self, ids: &[i64]) -> Result<usize> {
        let mut recycled = 0;
        for &id in ids {
            let now = self.clock.now();
            let mut tx = self.store.begin().await?;
            let Some(lead) = leads::get(&mut tx, id).await? else {
                continue;
            };
            leads::lock_team(&mut tx, &lead.team).await?;
            let catalog = self.catalog();
            let team = catalog.sales.as_ref().and_then(|sales| sales.teams.get(&lead.team));
            let within = team
                .and_then(|team| team.accept_within)
                .map(|within| within.to_string())
                .unwrap_or_else(|| "the time allowed".into());
            let reason = format!("not accepted within {within}");
            let Some(lead) = leads::expire(&mut tx, id, &reason, now).await? else {
                continue;
            };
            leads::release(&mut tx, &lead.team, &lead.rep).await?;
            let mut follow = Follow::default();
            let mut properties = lead_properties(lead.id, &lead.team, &lead.rep);
            properties.insert("reason".into(), reason.into());
            follow
                .events
                .push(lead_event(lead.contact_id, "Lead Recycled", properties, now));
            if let Some(team) = team {
                self.pass_on(&mut tx, team, &lead, now, &mut follow).await?;
            }
            follow.freed.push(lead.team.clone());
            self.commit_sales(tx, follow, now).await?;
            debug!(lead = id, rep = %lead.rep, "Lead recycled.");
            recycled += 1;
        }
        Ok(recycled)
    }

    /// An admin sets a contact's stage to `opportunity` or `customer`. Forward, it is the
    /// engine's stage path (journeys triggered by the stage start); back, only the stage
    /// changes. Journeys whose `exit_when` now holds end at once. False: no such contact.
    pub async fn set_stage(self: &Arc<Self>, contact_id: i64, stage: Stage) -> Result<bool> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let Some(contact) = self.load_contact(&mut tx, contact_id, now).await? else {
            return Ok(false);
        };
        let jobs = if stage > contact.stage {
            self.move_stage(&mut tx, contact_id, stage, now).await?
        } else {
            leads::set_stage(&mut tx, contact_id, stage.as_str()).await?;
            Vec::new()
        };
        self.exit_where_due(&mut tx, contact_id, now).await?;
        tx.commit().await?;
        self.enqueue_jobs(jobs).await?;
        Ok(true)
    }

    /// Moves the contact forward to `stage` (never back).
    async fn move_stage(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        stage: Stage,
        now: DateTime<Utc>,
    ) -> Result<Vec<(StepJob, DateTime<Utc>)>> {
        let Some(contact) = self.load_contact(tx, contact_id, now).await? else {
            return Ok(Vec::new());
        };
        if contact.stage >= stage {
            return Ok(Vec::new());
        }
        self.stage_reached_in(tx, contact_id, stage, now).await
    }

    /// Ends the contact's enrollments whose journey's `exit_when` holds now, each a
    /// compare-and-set move with its history row.
    async fn exit_where_due(&self, tx: &mut store::Tx<'_>, contact_id: i64, now: DateTime<Utc>) -> Result<usize> {
        let catalog = self.catalog();
        let with_exit: Vec<&str> = catalog
            .journeys
            .iter()
            .filter(|journey| journey.exit_when.is_some())
            .map(|journey| journey.id.as_str())
            .collect();
        if with_exit.is_empty() {
            return Ok(0);
        }
        let Some(contact) = self.load_contact(tx, contact_id, now).await? else {
            return Ok(0);
        };
        let mut exited = 0;
        for enrollment in enrollments::open_of_contacts(tx, &[contact_id], &[], &with_exit).await? {
            let Some(journey) = self.journey(tx, &enrollment.journey_id, &enrollment.version).await? else {
                continue;
            };
            let history = self.preload(tx, &journey, contact_id, now).await?;
            let world = World {
                contact: &contact,
                now,
                history: &history,
                catalog: &catalog,
            };
            if let Some(exit) = exit_now(&journey, &enrollment, &world)
                && enrollments::save_move(tx, &journey, &enrollment, &exit, now).await?
            {
                self.count_steps(&journey, &exit);
                exited += 1;
            }
        }
        Ok(exited)
    }

    /// Leads newest first, with their contacts: a rep's own, or everybody's for an admin.
    pub async fn leads(
        &self,
        actor: &Actor,
        status: Option<Status>,
        limit: i64,
    ) -> Result<Vec<(Lead, Option<Contact>)>> {
        let mut connection = self.store.pool.acquire().await?;
        let rep = match actor {
            Actor::Admin => None,
            Actor::Rep(rep) => Some(rep.as_str()),
        };
        let list = leads::list(&mut connection, rep, status, limit).await?;
        let ids: Vec<i64> = list.iter().map(|lead| lead.contact_id).collect();
        let contacts = self.load_contacts(&mut connection, &ids, self.clock.now()).await?;
        Ok(list
            .into_iter()
            .map(|lead| {
                let contact = contacts.get(&lead.contact_id).cloned();
                (lead, contact)
            })
            .collect())
    }

    /// One lead with its contact, if the actor may see it.
    pub async fn lead(&self, actor: &Actor, id: i64) -> Result<Option<(Lead, Option<Contact>)>> {
        let mut connection = self.store.pool.acquire().await?;
        let Some(lead) = leads::get(&mut connection, id).await?.filter(|lead| actor.sees(lead)) else {
            return Ok(None);
        };
        let contact = self
            .load_contact(&mut connection, lead.contact_id, self.clock.now())
            .await?;
        Ok(Some((lead, contact)))
    }
}

/// What every lead event says about the lead.
fn lead_properties(lead: i64, team: &str, rep: &str) -> Map<String, Json> {
    let mut properties = Map::new();
    properties.insert("lead".into(), lead.into());
    properties.insert("team".into(), team.into());
    properties.insert("rep".into(), rep.into());
    properties
}

fn lead_event(contact_id: i64, name: &str, properties: Map<String, Json>, at: DateTime<Utc>) -> Occurrence {
    super::email::occurrence(contact_id, name, properties, None, Map::new(), at)
}
