//! The compiled journey: an explicit state machine whose states are steps.
//!
//! None of these types derive `Deserialize`: only the compiler builds them, after every check
//! has passed, so the engine may rely on what they promise (every target exists, every loop
//! waits, every percentage adds up).

use super::values::{CronSchedule, Days, Delay, FrequencyCap, QuietHours, Stage, TimeOfDay};
use super::yaml::Pos;
use crate::expr::Expr;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;

/// Index of a step in `Journey::steps`.
pub type StepIndex = usize;

#[derive(Clone, Debug, PartialEq)]
pub struct Journey {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// Hash of the journey's normalised content: comments, spacing and key order do not change it.
    pub version: String,
    pub file: String,
    pub trigger: Trigger,
    pub re_entry: ReEntry,
    pub enrollment_key: Option<Expr>,
    pub goal: Option<EventMatch>,
    pub exit_when: Option<Expr>,
    pub settings: Settings,
    pub on_change: OnChange,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    Event(EventMatch),
    Stage(Stage),
    /// A cron schedule, or one time (a broadcast), and who is enrolled when it fires.
    Schedule {
        when: When,
        audience: Expr,
    },
}

/// When a schedule trigger fires.
#[derive(Clone, Debug, PartialEq)]
pub enum When {
    /// On every tick of a cron schedule, in the journey's time zone.
    Cron(Box<CronSchedule>),
    /// Once, at this time: a one-off broadcast. `pos` is where the time was written, for the
    /// warning when it has passed (the compiler reads no clock, so `broadcast_warnings` does).
    At {
        time: DateTime<Utc>,
        text: String,
        pos: Pos,
    },
}

impl When {
    /// The first time it fires after `after`.
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        match self {
            When::Cron(cron) => cron.next_after(after, zone),
            When::At { time, .. } => (*time > after).then_some(*time),
        }
    }

    /// As written, for messages: `schedule "0 9 * * MON"`, `at "2026-12-24T09:00:00+08:00"`.
    pub fn describe(&self) -> String {
        match self {
            When::Cron(cron) => format!("schedule \"{}\"", cron.text),
            When::At { text, .. } => format!("at \"{text}\""),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventMatch {
    pub event: String,
    pub condition: Option<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReEntry {
    Never,
    Always,
    After(Delay),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub timezone: Tz,
    pub quiet_hours: Option<QuietHours>,
    pub frequency_cap: Option<FrequencyCap>,
    /// Fixed cost of running this journey, in `currency`, for ROI.
    pub cost: Option<f64>,
    pub currency: String,
    /// Opens and clicks tracked in this journey's marketing email, unless a template says otherwise.
    pub tracking: Option<super::values::Tracking>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OnChange {
    /// Running enrollments finish on the version they started on.
    Keep,
    /// Running enrollments move to the new version; steps not in the map keep their id.
    Migrate(BTreeMap<String, String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Step(StepIndex),
    End,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: String,
    pub pos: Pos,
    pub kind: StepKind,
    /// Where the contact goes when this step is done (for most kinds; see `transitions`).
    pub next: Target,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    Wait(Delay),
    WaitUntil {
        time: TimeOfDay,
        days: Days,
    },
    WaitFor {
        event: EventMatch,
        timeout: Delay,
        on_timeout: Target,
    },
    Branch {
        arms: Vec<BranchArm>,
        otherwise: Target,
    },
    Split {
        arms: Vec<SplitArm>,
    },
    SendEmail {
        template: String,
    },
    SendSms {
        template: String,
    },
    Tag(Vec<String>),
    Untag(Vec<String>),
    Set(BTreeMap<String, Json>),
    Score(i64),
    AssignToSales {
        team: String,
    },
    Webhook(Webhook),
}

#[derive(Clone, Debug, PartialEq)]
pub struct BranchArm {
    pub when: Expr,
    pub goto: Target,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SplitArm {
    pub percent: u8,
    pub goto: Target,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub method: String,
    /// A handlebars template.
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// JSON whose strings are handlebars templates.
    pub body: Option<Json>,
}

/// A named edge of the state machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub label: String,
    pub target: Target,
}

impl StepKind {
    /// Every kind's keyword, in the order the reference lists them; `keyword` maps each
    /// variant to one of these (a unit test checks they agree).
    pub const KEYWORDS: [&'static str; 13] = [
        "wait",
        "wait_until",
        "wait_for",
        "branch",
        "split",
        "send_email",
        "send_sms",
        "tag",
        "untag",
        "set",
        "score",
        "assign_to_sales",
        "webhook",
    ];

    /// The word a marketer writes for this kind of step.
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Wait(_) => "wait",
            StepKind::WaitUntil { .. } => "wait_until",
            StepKind::WaitFor { .. } => "wait_for",
            StepKind::Branch { .. } => "branch",
            StepKind::Split { .. } => "split",
            StepKind::SendEmail { .. } => "send_email",
            StepKind::SendSms { .. } => "send_sms",
            StepKind::Tag(_) => "tag",
            StepKind::Untag(_) => "untag",
            StepKind::Set(_) => "set",
            StepKind::Score(_) => "score",
            StepKind::AssignToSales { .. } => "assign_to_sales",
            StepKind::Webhook(_) => "webhook",
        }
    }

    /// Steps that hold the contact until a time or an event; a loop must contain one.
    pub fn waits(&self) -> bool {
        matches!(
            self,
            StepKind::Wait(_) | StepKind::WaitUntil { .. } | StepKind::WaitFor { .. }
        )
    }

    /// A few words for diagrams: `wait 1h`, `email whitepaper-intro`.
    pub fn describe(&self) -> String {
        match self {
            StepKind::Wait(delay) => format!("wait {delay}"),
            StepKind::WaitUntil { time, days } => format!("wait until {time} ({days})"),
            StepKind::WaitFor { event, timeout, .. } => {
                format!("wait for {} (max {timeout})", event.event)
            }
            StepKind::Branch { .. } => "branch".into(),
            StepKind::Split { .. } => "split".into(),
            StepKind::SendEmail { template } => format!("email {template}"),
            StepKind::SendSms { template } => format!("SMS {template}"),
            StepKind::Tag(tags) => format!("tag {}", tags.join(", ")),
            StepKind::Untag(tags) => format!("untag {}", tags.join(", ")),
            StepKind::Set(traits) => format!("set {}", traits.keys().cloned().collect::<Vec<_>>().join(", ")),
            StepKind::Score(points) => format!("score {points:+}"),
            StepKind::AssignToSales { team } => format!("assign to {team}"),
            StepKind::Webhook(hook) => format!("{} webhook", hook.method),
        }
    }

    /// Steps that reach the outside world, and so need an effect key.
    pub fn is_effect(&self) -> bool {
        matches!(
            self,
            StepKind::SendEmail { .. }
                | StepKind::SendSms { .. }
                | StepKind::AssignToSales { .. }
                | StepKind::Webhook(_)
        )
    }
}

impl Step {
    /// Every edge out of this step, named.
    pub fn transitions(&self) -> Vec<Transition> {
        let edge = |label: String, target: Target| Transition { label, target };
        match &self.kind {
            StepKind::WaitFor {
                event,
                timeout,
                on_timeout,
            } => vec![
                edge(format!("on {}", event.event), self.next),
                edge(format!("timeout {timeout}"), *on_timeout),
            ],
            StepKind::Branch { arms, otherwise } => arms
                .iter()
                .map(|arm| edge(format!("when {}", arm.when.source()), arm.goto))
                .chain([edge("else".into(), *otherwise)])
                .collect(),
            StepKind::Split { arms } => arms
                .iter()
                .map(|arm| edge(format!("{}%", arm.percent), arm.goto))
                .collect(),
            _ => vec![edge("next".into(), self.next)],
        }
    }
}

impl Journey {
    pub fn step_index(&self, id: &str) -> Option<StepIndex> {
        self.steps.iter().position(|step| step.id == id)
    }

    /// Where an enrollment starts.
    pub fn entry(&self) -> Target {
        if self.steps.is_empty() {
            Target::End
        } else {
            Target::Step(0)
        }
    }

    /// Every condition in the journey.
    pub fn expressions(&self) -> Vec<&Expr> {
        let mut all: Vec<&Expr> = Vec::new();
        match &self.trigger {
            Trigger::Event(m) => all.extend(m.condition.as_ref()),
            Trigger::Stage(_) => {}
            Trigger::Schedule { audience, .. } => all.push(audience),
        }
        all.extend(self.goal.as_ref().and_then(|g| g.condition.as_ref()));
        all.extend(self.exit_when.as_ref());
        all.extend(self.enrollment_key.as_ref());
        for step in &self.steps {
            match &step.kind {
                StepKind::WaitFor { event, .. } => all.extend(event.condition.as_ref()),
                StepKind::Branch { arms, .. } => all.extend(arms.iter().map(|arm| &arm.when)),
                _ => {}
            }
        }
        all
    }

    /// The `count_events` calls of all its conditions, so a runner can count them up front.
    pub fn count_calls(&self) -> Vec<(String, super::values::Delay)> {
        let mut calls: Vec<(String, super::values::Delay)> = self
            .expressions()
            .iter()
            .flat_map(|e| e.count_calls().iter().cloned())
            .collect();
        calls.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
        calls.dedup();
        calls
    }

    pub fn target_name(&self, target: Target) -> &str {
        match target {
            Target::Step(index) => &self.steps[index].id,
            Target::End => "end",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Event(m) => write!(f, "event \"{}\"", m.event),
            Trigger::Stage(stage) => write!(f, "stage {stage}"),
            Trigger::Schedule { when, .. } => f.write_str(&when.describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_keyword_in_the_table() {
        let delay = super::super::values::Delay::from_secs(60);
        let event = EventMatch {
            event: "E".into(),
            condition: None,
        };
        let kinds = [
            StepKind::Wait(delay),
            StepKind::WaitUntil {
                time: "09:00".parse().unwrap(),
                days: Days::ALL,
            },
            StepKind::WaitFor {
                event,
                timeout: delay,
                on_timeout: Target::End,
            },
            StepKind::Branch {
                arms: vec![],
                otherwise: Target::End,
            },
            StepKind::Split { arms: vec![] },
            StepKind::SendEmail { template: "t".into() },
            StepKind::SendSms { template: "t".into() },
            StepKind::Tag(vec![]),
            StepKind::Untag(vec![]),
            StepKind::Set(BTreeMap::new()),
            StepKind::Score(1),
            StepKind::AssignToSales { team: "t".into() },
            StepKind::Webhook(Webhook {
                method: "POST".into(),
                url: "https://example.com".into(),
                headers: BTreeMap::new(),
                body: None,
            }),
        ];
        let keywords: Vec<&str> = kinds.iter().map(StepKind::keyword).collect();
        assert_eq!(keywords, StepKind::KEYWORDS);
    }
}
