//! Many events at once, inside one transaction: stored with one insert, then each moves the
//! journeys of its contact (goals, answered waits) and starts the journeys it triggers, with a
//! handful of set-based statements for the whole list. `react` does the same for one event.

use super::contact::Contact;
use super::runner::{Engine, Result};
use super::transition::{Enrollment, Input, Outcome, Position, World, advance, enrollment_key, may_enter};
use crate::expr::EventFacts;
use crate::journey::model::{Journey, ReEntry, Trigger};
use crate::queue::StepJob;
use crate::store::{self, contacts, enrollments};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What events did: jobs to enqueue after the commit, and per event the enrollments it started.
pub(crate) struct Reaction {
    pub jobs: Vec<(StepJob, DateTime<Utc>)>,
    pub started: Vec<Vec<i64>>,
}

/// An event of a known contact, to store and react to.
pub(crate) struct Occurrence {
    pub contact_id: i64,
    pub event: EventFacts,
    pub at: DateTime<Utc>,
    pub received: contacts::Received,
    /// Track, page and screen calls move journeys; identify and group calls are only stored.
    pub reacts: bool,
}

impl Engine {
    /// Stores the events, scores them, and lets them move and start journeys. Returns the
    /// jobs to enqueue after the commit, and the enrollments each occurrence started.
    pub(crate) async fn record_and_react(
        &self,
        tx: &mut store::Tx<'_>,
        occurrences: &[Occurrence],
        now: DateTime<Utc>,
    ) -> Result<Reaction> {
        let mut reaction = Reaction {
            jobs: Vec::new(),
            started: vec![Vec::new(); occurrences.len()],
        };
        // Rounds in which each contact has at most one event, so that a contact's second event
        // sees what its first one did (in memory, one round's moves are saved together).
        let mut rounds: Vec<Vec<(usize, &Occurrence)>> = Vec::new();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for (index, occurrence) in occurrences.iter().enumerate() {
            let round = seen.entry(occurrence.contact_id).or_insert(0);
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            rounds[*round].push((index, occurrence));
            *round += 1;
        }
        let mut scored: HashSet<i64> = HashSet::new();
        for round in rounds {
            let rows: Vec<(i64, &EventFacts, DateTime<Utc>, &contacts::Received)> = round
                .iter()
                .map(|(_, o)| (o.contact_id, &o.event, o.at, &o.received))
                .collect();
            let event_ids = contacts::record_many(tx, &rows).await?;
            self.note_report_facts(tx, &rows, &event_ids, now).await?;
            for ((_, occurrence), event_id) in round.iter().zip(&event_ids) {
                if self
                    .score_event(tx, occurrence.contact_id, *event_id, &occurrence.event, now)
                    .await?
                {
                    scored.insert(occurrence.contact_id);
                }
            }
            let reacting: Vec<(usize, &Occurrence)> = round.into_iter().filter(|(_, o)| o.reacts).collect();
            if !reacting.is_empty() {
                self.react_many(tx, &reacting, now, &mut reaction).await?;
            }
        }
        for contact_id in scored {
            reaction.jobs.extend(self.qualify(tx, contact_id, now).await?);
        }
        Ok(reaction)
    }

    /// Counts one move an event made outside a step batch (an exit), as `steps_ran` counts a
    /// batch's: a history row each, when the move is saved in the caller's transaction.
    pub(crate) fn count_steps(&self, journey: &Journey, moved: &super::transition::Advance) {
        self.metrics.steps_ran(moved.records.iter().map(|r| {
            (
                journey.id.as_str(),
                r.step.as_str(),
                r.kind.as_str(),
                r.outcome.as_str(),
            )
        }));
    }

    /// What one already stored event does to journeys; returns the jobs to enqueue.
    pub(crate) async fn react_one(
        &self,
        tx: &mut store::Tx<'_>,
        occurrence: &Occurrence,
        now: DateTime<Utc>,
    ) -> Result<Vec<(StepJob, DateTime<Utc>)>> {
        let mut reaction = Reaction {
            jobs: Vec::new(),
            started: vec![Vec::new()],
        };
        self.react_many(tx, &[(0, occurrence)], now, &mut reaction).await?;
        Ok(reaction.jobs)
    }

    /// What events do to journeys, each of a different contact: goals, answered waits, new
    /// enrollments.
    async fn react_many(
        &self,
        tx: &mut store::Tx<'_>,
        occurrences: &[(usize, &Occurrence)],
        now: DateTime<Utc>,
        reaction: &mut Reaction,
    ) -> Result<()> {
        let catalog = self.catalog();
        let contact_ids: Vec<i64> = occurrences.iter().map(|(_, o)| o.contact_id).collect();
        let jobs = &mut reaction.jobs;

        // 1. Goals and waits of open enrollments: only those waiting for one of these events,
        // or in a journey whose goal one of them is, are read.
        let mut names: HashSet<String> = HashSet::new();
        for (_, occurrence) in occurrences {
            names.insert(occurrence.event.name.clone());
        }
        let mut waiters: HashSet<(i64, u64, String)> = HashSet::new();
        for (enrollment, seq, _, event) in enrollments::waiters_of_contacts(tx, &contact_ids).await? {
            if names.contains(&event) {
                waiters.insert((enrollment, seq, event));
            }
        }
        let waiting_ids: Vec<i64> = waiters.iter().map(|(id, _, _)| *id).collect();
        let mut goal_journeys: Vec<String> = Vec::new();
        for journey in &catalog.journeys {
            if let Some(goal) = &journey.goal
                && names.contains(&goal.event)
            {
                goal_journeys.push(journey.id.clone());
            }
        }
        let goal_ids: Vec<&str> = goal_journeys.iter().map(String::as_str).collect();
        // The contacts' profiles (two statements) are read only if something here reads them:
        // a step that moves, or a trigger's `where` or enrollment key that reads more than the
        // event. A journey keyed by `trigger.properties.order` with no `where` does not.
        let profiles_read = !waiters.is_empty()
            || !goal_ids.is_empty()
            || occurrences.iter().any(|(_, o)| {
                catalog.triggered_by(&o.event.name).iter().any(|journey| {
                    let condition = match &journey.trigger {
                        Trigger::Event(matcher) => matcher.condition.as_ref(),
                        _ => None,
                    };
                    condition
                        .into_iter()
                        .chain(&journey.enrollment_key)
                        .any(|e| e.reads_contact())
                })
            });
        let contacts = if profiles_read {
            self.load_contacts(tx, &contact_ids, now).await?
        } else {
            HashMap::new()
        };
        // Stands in for a profile nothing reads; the event was just stored for its contact.
        let unread = Contact::default();
        let open = enrollments::open_of_contacts(tx, &contact_ids, &waiting_ids, &goal_ids).await?;
        let events: HashMap<i64, &EventFacts> = occurrences.iter().map(|(_, o)| (o.contact_id, &o.event)).collect();
        let mut moving: Vec<(Enrollment, Arc<Journey>, super::transition::Advance, &EventFacts)> = Vec::new();
        for enrollment in open {
            let Ok(contact_id) = enrollment.contact_id.parse::<i64>() else {
                continue;
            };
            let (Some(event), Some(contact)) = (events.get(&contact_id), contacts.get(&contact_id)) else {
                continue;
            };
            let Ok(id) = enrollment.id.parse::<i64>() else { continue };
            let awaited = waiters.contains(&(id, enrollment.seq, event.name.clone()));
            let Some(journey) = self.journey(tx, &enrollment.journey_id, &enrollment.version).await? else {
                continue;
            };
            let goal = journey.goal.as_ref().is_some_and(|g| g.event == event.name);
            if !awaited && !goal {
                continue;
            }
            let history = self.preload(tx, &journey, contact_id, now).await?;
            let world = World {
                contact,
                now,
                history: &history,
                catalog: &catalog,
            };
            if let Ok(moved) = advance(&journey, &enrollment, enrollment.seq, Input::Event(event), &world) {
                moving.push((enrollment, journey, moved, event));
            }
        }
        if !moving.is_empty() {
            let moves: Vec<enrollments::Move<'_>> = moving
                .iter()
                .map(|(enrollment, journey, moved, _)| enrollments::Move {
                    journey,
                    before: enrollment,
                    advance: moved,
                })
                .collect();
            let won = enrollments::save_moves(tx, &moves, now, None).await?;
            drop(moves);
            // Counted like a step batch's moves, a history row each, but when saved rather than
            // after the commit, which is the caller's: a transaction that then fails (an ingest
            // group retried request by request) counts its moves again.
            let mut changes = Vec::new();
            for ((enrollment, journey, moved, event), won) in moving.iter().zip(won) {
                if !won {
                    continue;
                }
                self.count_steps(journey, moved);
                let contact_id = enrollments::contact_id(enrollment)?;
                changes.extend(moved.changes.iter().map(|c| (contact_id, c)));
                if moved.position
                    == (Position::Finished {
                        outcome: Outcome::Converted,
                    })
                {
                    enrollments::record_conversion(tx, enrollment, event, now).await?;
                }
                jobs.extend(super::runner::job_for(enrollment, &moved.position, moved.seq, now));
            }
            contacts::apply_many(tx, &changes, now).await?;
        }

        // 2. Journeys the events start.
        // (occurrence, contact, journey, trigger event, enrollment key)
        type Candidate<'a> = (usize, i64, &'a Arc<Journey>, &'a EventFacts, Option<String>);
        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        for (index, occurrence) in occurrences {
            let contact = match contacts.get(&occurrence.contact_id) {
                Some(contact) => contact,
                None if !profiles_read => &unread,
                None => continue,
            };
            for journey in catalog.triggered_by(&occurrence.event.name) {
                let Trigger::Event(matcher) = &journey.trigger else {
                    continue;
                };
                if self.holds(&journey.id) {
                    continue;
                }
                if let Some(condition) = &matcher.condition {
                    let view = contact.facts_view();
                    let history = self.preload(tx, journey, occurrence.contact_id, now).await?;
                    let facts = contact.facts(&view, Some(&occurrence.event), Some(&occurrence.event), now, &history);
                    if condition.eval_bool(&facts) != Ok(true) {
                        continue;
                    }
                }
                let Some(key) = enrollment_key(journey, contact, Some(&occurrence.event), now) else {
                    continue;
                };
                candidates.push((*index, occurrence.contact_id, journey, &occurrence.event, key));
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        // Under `re_entry: always` only an unfinished enrollment with the same key keeps a
        // contact out, and the unique index `enrollments_one_open` says so at the insert: no
        // need to read earlier enrollments first. The other rules read them.
        let wanted: Vec<(i64, &str, &str)> = candidates
            .iter()
            .filter(|(_, _, journey, _, _)| !matches!(journey.re_entry, ReEntry::Always))
            .map(|(_, contact, journey, _, key)| (*contact, journey.id.as_str(), key.as_deref().unwrap_or("")))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut earlier: HashMap<(String, String), Vec<Enrollment>> = HashMap::new();
        let read = if wanted.is_empty() {
            Vec::new()
        } else {
            enrollments::of_contacts_in(tx, &wanted).await?
        };
        for enrollment in read {
            earlier
                .entry((enrollment.contact_id.clone(), enrollment.journey_id.clone()))
                .or_default()
                .push(enrollment);
        }
        let mut rows = Vec::new();
        let mut starters = Vec::new();
        for (index, contact_id, journey, event, key) in &candidates {
            let list = earlier.entry((contact_id.to_string(), journey.id.clone())).or_default();
            if let Err(reason) = may_enter(journey, list, key.as_deref(), now) {
                tracing::debug!(journey = %journey.id, contact = contact_id, reason, "Not enrolled.");
                continue;
            }
            // Counted at once, so a second event of the same list sees this enrollment.
            list.push(Enrollment {
                id: String::new(),
                contact_id: contact_id.to_string(),
                journey_id: journey.id.clone(),
                version: journey.version.clone(),
                trigger: None,
                key: key.clone(),
                position: Position::Entering { step: 0 },
                seq: 0,
                entered_at: now,
            });
            starters.push(*index);
            rows.push(enrollments::NewEnrollment {
                journey,
                contact_id: *contact_id,
                key: key.clone(),
                trigger: Some(*event),
            });
        }
        let inserted = enrollments::insert_many(tx, &rows, now).await?;
        for (index, enrollment) in starters.into_iter().zip(inserted) {
            if let Some(id) = enrollment.and_then(|e| e.id.parse::<i64>().ok()) {
                jobs.push((StepJob { enrollment: id, seq: 0 }, now));
                reaction.started[index].push(id);
            }
        }
        Ok(())
    }
}
