//! The enrollment state machine. Pure: given a journey, an enrollment, an input and the
//! contact's facts at `now`, it returns the next position, the contact changes and the effects
//! to perform. The caller commits all of it, then performs the effects (see `ARCHITECTURE.md`).

use super::contact::{Contact, ContactChange};
use crate::expr::{EventCounter, EventFacts};
use crate::journey::Catalog;
use crate::journey::model::{EventMatch, Journey, ReEntry, StepIndex, StepKind, Target};
use crate::journey::values::parse_timezone;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    pub id: String,
    pub contact_id: String,
    pub journey_id: String,
    pub version: String,
    /// The event that enrolled the contact, for `trigger.*` in conditions and templates.
    pub trigger: Option<EventFacts>,
    /// The `enrollment_key` value: at most one active enrollment per contact and key.
    pub key: Option<String>,
    pub position: Position,
    /// Grows by one on every move; a job or event carrying an older number is stale.
    pub seq: u64,
    pub entered_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum Position {
    /// Due now: the step runs when its job is taken.
    Entering {
        step: StepIndex,
    },
    /// Held in a step until `until` (or, for `wait_for`, until the awaited event).
    Parked {
        step: StepIndex,
        until: DateTime<Utc>,
        reason: Park,
    },
    Finished {
        outcome: Outcome,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Park {
    Wait,
    WaitFor,
    /// A message due inside quiet hours, held until they end.
    QuietHours,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    /// `exit_when` became true.
    Exited,
    /// The goal event happened: counted as a conversion.
    Converted,
    Failed {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Waiting,
    Completed,
    Exited,
    Failed,
}

impl Enrollment {
    pub fn status(&self) -> Status {
        match &self.position {
            Position::Entering { .. } => Status::Active,
            Position::Parked { .. } => Status::Waiting,
            Position::Finished {
                outcome: Outcome::Completed,
            } => Status::Completed,
            Position::Finished {
                outcome: Outcome::Exited | Outcome::Converted,
            } => Status::Exited,
            Position::Finished {
                outcome: Outcome::Failed { .. },
            } => Status::Failed,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.position, Position::Finished { .. })
    }
}

/// What happens to the enrollment.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Its job came due: run the step it is entering, or end the wait it is parked in.
    Due,
    /// An event of the contact arrived: it may be the goal or the awaited event.
    Event(&'a EventFacts),
}

/// Counts of what a contact has done and been sent, for conditions and frequency caps.
pub trait History: EventCounter {
    fn messages_since(&self, since: DateTime<Utc>) -> u32;
}

/// Everything outside the enrollment that a move may read.
pub struct World<'a> {
    pub contact: &'a Contact,
    pub now: DateTime<Utc>,
    /// Counts of the contact's events and of the messages recently sent to them.
    pub history: &'a dyn History,
    /// The project: the workspace's guardrails and the templates (whose class says whether
    /// consent applies).
    pub catalog: &'a Catalog,
}

/// A side effect, recorded under its key before it is performed so a retry never repeats it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedEffect {
    pub key: EffectKey,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EffectKey {
    pub enrollment: String,
    pub step: String,
    pub seq: u64,
}

impl fmt::Display for EffectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.enrollment, self.step, self.seq)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    SendEmail {
        template: String,
    },
    SendSms {
        template: String,
    },
    AssignToSales {
        team: String,
    },
    Webhook {
        method: String,
        url: String,
        headers: std::collections::BTreeMap<String, String>,
        body: Option<serde_json::Value>,
    },
}

impl Effect {
    /// An email or an SMS: what frequency caps count.
    pub fn is_message(&self) -> bool {
        matches!(self, Effect::SendEmail { .. } | Effect::SendSms { .. })
    }
}

/// One line of an enrollment's history, for funnels and for the simulator's story.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub kind: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// What happened, in a word: entered, waiting, sent, skipped, branched, timed_out, ...
    pub outcome: String,
    /// Why, in plain words (the values behind a branch, the reason a message was skipped).
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Advance {
    pub position: Position,
    pub seq: u64,
    pub changes: Vec<ContactChange>,
    pub effects: Vec<KeyedEffect>,
    pub records: Vec<StepRecord>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Refused {
    /// The job or event carries an older sequence number: someone else moved first.
    Stale,
    /// The enrollment is parked until later; the job came early.
    NotYet(DateTime<Utc>),
    /// The event means nothing to this enrollment now.
    Ignored,
    /// The enrollment is over.
    Finished,
}

/// The time zone used for a contact: their own, else the journey's.
pub fn zone_for(journey: &Journey, contact: &Contact) -> Tz {
    contact
        .timezone
        .as_deref()
        .and_then(|zone| parse_timezone(zone).ok())
        .unwrap_or(journey.settings.timezone)
}

/// Makes one move of the state machine.
pub fn advance(
    journey: &Journey,
    enrollment: &Enrollment,
    seq: u64,
    input: Input<'_>,
    world: &World<'_>,
) -> Result<Advance, Refused> {
    if enrollment.seq != seq {
        return Err(Refused::Stale);
    }
    let mut mover = Mover::new(journey, enrollment, world);
    let position = match (&enrollment.position, input) {
        (Position::Finished { .. }, _) => return Err(Refused::Finished),
        (_, Input::Event(event)) => mover.on_event(event)?,
        (Position::Entering { step }, Input::Due) => mover.enter(*step),
        (Position::Parked { step, until, reason }, Input::Due) => {
            if world.now < *until {
                return Err(Refused::NotYet(*until));
            }
            super::kinds::wake(&mut mover, *step, *reason)
        }
    };
    Ok(Advance {
        position,
        seq: seq + 1,
        changes: mover.changes,
        effects: mover.effects,
        records: mover.records,
    })
}

/// Ends an unfinished enrollment now if its journey's `exit_when` holds: what a change to the
/// contact made outside any step (a sales outcome, an admin setting the stage) does at once,
/// rather than when the enrollment next enters a step. `None`: it stays.
pub fn exit_now(journey: &Journey, enrollment: &Enrollment, world: &World<'_>) -> Option<Advance> {
    let exit_when = journey.exit_when.as_ref()?;
    let step = match enrollment.position {
        Position::Entering { step } | Position::Parked { step, .. } => step,
        Position::Finished { .. } => return None,
    };
    let mut mover = Mover::new(journey, enrollment, world);
    let view = world.contact.facts_view();
    let facts = mover.facts_now(&view);
    if exit_when.eval_bool(&facts) != Ok(true) {
        return None;
    }
    let detail = format!(
        "exit_when `{}` is true ({})",
        exit_when.source(),
        exit_when.explain(&facts)
    );
    mover.record(step, "exited", detail);
    Some(Advance {
        position: Position::Finished {
            outcome: Outcome::Exited,
        },
        seq: enrollment.seq + 1,
        changes: Vec::new(),
        effects: Vec::new(),
        records: mover.records,
    })
}

/// One move in the making: what the step kinds (see `kinds`) read and add to.
pub(super) struct Mover<'a> {
    pub(super) journey: &'a Journey,
    pub(super) enrollment: &'a Enrollment,
    pub(super) world: &'a World<'a>,
    pub(super) changes: Vec<ContactChange>,
    effects: Vec<KeyedEffect>,
    records: Vec<StepRecord>,
}

impl<'a> Mover<'a> {
    fn new(journey: &'a Journey, enrollment: &'a Enrollment, world: &'a World<'a>) -> Mover<'a> {
        Mover {
            journey,
            enrollment,
            world,
            changes: Vec::new(),
            effects: Vec::new(),
            records: Vec::new(),
        }
    }

    pub(super) fn record(&mut self, step: StepIndex, outcome: &str, detail: impl Into<String>) {
        let kind = self.journey.steps[step].kind.keyword();
        self.records.push(StepRecord {
            step: self.journey.steps[step].id.clone(),
            kind: kind.into(),
            seq: self.enrollment.seq,
            at: self.world.now,
            outcome: outcome.into(),
            detail: detail.into(),
        });
    }

    pub(super) fn go(&self, target: Target) -> Position {
        match target {
            Target::Step(step) => Position::Entering { step },
            Target::End => Position::Finished {
                outcome: Outcome::Completed,
            },
        }
    }

    pub(super) fn facts_now<'f>(&'f self, view: &'f crate::expr::ContactFacts) -> crate::expr::Facts<'f> {
        self.world.contact.facts(
            view,
            self.enrollment.trigger.as_ref(),
            None,
            self.world.now,
            self.world.history,
        )
    }

    fn matches(&self, matcher: &EventMatch, event: &EventFacts) -> Result<bool, String> {
        if matcher.event != event.name {
            return Ok(false);
        }
        let Some(condition) = &matcher.condition else {
            return Ok(true);
        };
        let view = self.world.contact.facts_view();
        let facts = self.world.contact.facts(
            &view,
            self.enrollment.trigger.as_ref(),
            Some(event),
            self.world.now,
            self.world.history,
        );
        condition.eval_bool(&facts).map_err(|e| e.to_string())
    }

    fn on_event(&mut self, event: &EventFacts) -> Result<Position, Refused> {
        if let Some(goal) = &self.journey.goal
            && self.matches(goal, event) == Ok(true)
        {
            let step = self.current_step();
            self.record(step, "converted", format!("goal \"{}\" reached", goal.event));
            return Ok(Position::Finished {
                outcome: Outcome::Converted,
            });
        }
        let Position::Parked {
            step,
            reason: Park::WaitFor,
            ..
        } = self.enrollment.position
        else {
            return Err(Refused::Ignored);
        };
        let StepKind::WaitFor { event: awaited, .. } = &self.journey.steps[step].kind else {
            return Err(Refused::Ignored);
        };
        match self.matches(awaited, event) {
            Ok(true) => {
                let next = self.journey.steps[step].next;
                self.record(
                    step,
                    "event",
                    format!("\"{}\" arrived; next: {}", event.name, self.journey.target_name(next)),
                );
                Ok(self.go(next))
            }
            _ => Err(Refused::Ignored),
        }
    }

    fn current_step(&self) -> StepIndex {
        match self.enrollment.position {
            Position::Entering { step } | Position::Parked { step, .. } => step,
            Position::Finished { .. } => 0,
        }
    }

    fn enter(&mut self, step: StepIndex) -> Position {
        if let Some(exit_when) = &self.journey.exit_when {
            let view = self.world.contact.facts_view();
            let facts = self.facts_now(&view);
            if exit_when.eval_bool(&facts) == Ok(true) {
                let detail = format!(
                    "exit_when `{}` is true ({})",
                    exit_when.source(),
                    exit_when.explain(&facts)
                );
                self.record(step, "exited", detail);
                return Position::Finished {
                    outcome: Outcome::Exited,
                };
            }
        }
        super::kinds::run(self, step, false)
    }

    pub(super) fn effect(&mut self, step: StepIndex, effect: Effect) {
        let key = EffectKey {
            enrollment: self.enrollment.id.clone(),
            step: self.journey.steps[step].id.clone(),
            seq: self.enrollment.seq,
        };
        self.effects.push(KeyedEffect { key, effect });
    }
}

/// A contact's bucket (0-99) for a split: the same contact always lands in the same arm.
pub fn split_bucket(contact_id: &str, journey_id: &str, step_id: &str) -> u32 {
    let digest = Sha256::digest(format!("{journey_id}/{step_id}/{contact_id}").as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100
}

/// Where a new enrollment starts: entering the first step (or done, for a journey of no steps).
pub fn start_position(journey: &Journey) -> Position {
    match journey.entry() {
        Target::Step(step) => Position::Entering { step },
        Target::End => Position::Finished {
            outcome: Outcome::Completed,
        },
    }
}

/// The journey's enrollment key for this contact and trigger: `Some(None)` when the journey has
/// none, `None` when its expression gives nothing or fails (the contact is not enrolled).
pub fn enrollment_key(
    journey: &Journey,
    contact: &Contact,
    trigger: Option<&EventFacts>,
    now: DateTime<Utc>,
) -> Option<Option<String>> {
    let Some(expr) = &journey.enrollment_key else {
        return Some(None);
    };
    let view = contact.facts_view();
    let facts = contact.facts(&view, trigger, None, now, &());
    match expr.eval(&facts) {
        Ok(serde_json::Value::String(s)) => Some(Some(s)),
        Ok(serde_json::Value::Null) | Err(_) => None,
        Ok(other) => Some(Some(other.to_string())),
    }
}

/// Whether the contact may enter the journey now, given their earlier enrollments in it
/// (newest last). `key` is the enrollment key of the new enrollment.
pub fn may_enter(
    journey: &Journey,
    earlier: &[Enrollment],
    key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let same_key = |e: &&Enrollment| e.key.as_deref() == key;
    if let Some(active) = earlier.iter().filter(same_key).find(|e| !e.is_finished()) {
        return Err(format!("already enrolled ({})", active.id));
    }
    match journey.re_entry {
        ReEntry::Always => Ok(()),
        ReEntry::Never => match earlier.iter().find(same_key) {
            Some(_) => Err("re_entry is never and the contact was enrolled before".into()),
            None => Ok(()),
        },
        ReEntry::After(delay) => match earlier.iter().filter(same_key).map(|e| e.entered_at).max() {
            Some(last) if now < last + delay.as_duration() => {
                Err(format!("re_entry after {delay}: last enrolled {last}"))
            }
            _ => Ok(()),
        },
    }
}
