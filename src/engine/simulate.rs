//! Runs a compiled journey for one contact on a virtual clock, with no queue and no network:
//! how marketers test a journey before it ships, and how our tests pin journey behaviour.
//! Pure: the caller reads the files and prints the report.

use super::contact::Contact;
use super::message::template_data;
use super::transition::{
    Effect, Enrollment, History, Input, Outcome, Position, Refused, StepRecord, World, advance, enrollment_key,
    start_position,
};
use crate::expr::{EventCounter, EventFacts};
use crate::journey::Catalog;
use crate::journey::model::{Journey, Trigger};
use crate::journey::templates::Templates;
use crate::journey::values::Delay;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value as Json};

/// Moves after which a simulation stops, whatever the journey does.
const MAX_MOVES: usize = 10_000;
/// Simulated time after which a simulation stops.
const HORIZON_DAYS: i64 = 400;

#[derive(Clone, Debug, PartialEq)]
pub struct TimedEvent {
    pub at: DateTime<Utc>,
    pub event: EventFacts,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub journey: String,
    pub version: String,
    pub contact: String,
    pub start: DateTime<Utc>,
    pub entries: Vec<Entry>,
    /// completed, exited, converted, failed, not_enrolled or still_running.
    pub outcome: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// Time since the start of the simulation, like `+1h`.
    pub offset: String,
    pub step: Option<String>,
    pub kind: String,
    pub outcome: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub channel: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The first lines of the text, as a person would read them.
    pub lines: Vec<String>,
}

/// Reads an events file: one JSON object per line with `event`, optional `properties`, and
/// either `at` (`"+2h"` from the start) or `timestamp` (RFC 3339).
pub fn parse_events(text: &str, start: DateTime<Utc>) -> Result<Vec<TimedEvent>, String> {
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let value: Json = serde_json::from_str(line).map_err(|e| format!("line {line_no}: not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| format!("line {line_no}: each line must be a JSON object"))?;
        let name = object
            .get("event")
            .and_then(Json::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| format!("line {line_no}: `event` (the event name) is missing"))?;
        let properties = match object.get("properties") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(map)) => map.clone(),
            Some(_) => return Err(format!("line {line_no}: `properties` must be an object")),
        };
        let at = match (object.get("at"), object.get("timestamp")) {
            (Some(Json::String(offset)), None) => {
                let delay: Delay = offset
                    .trim()
                    .strip_prefix('+')
                    .ok_or_else(|| format!("line {line_no}: `at` is an offset from the start like \"+2h\""))?
                    .parse()
                    .or_else(|e: String| {
                        if offset.trim() == "+0" {
                            Ok(Delay::from_secs(0))
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| format!("line {line_no}: bad `at`: {e}"))?;
                start + delay.as_duration()
            }
            (None, Some(Json::String(timestamp))) => DateTime::parse_from_rfc3339(timestamp)
                .map_err(|e| format!("line {line_no}: bad `timestamp`: {e}"))?
                .with_timezone(&Utc),
            (None, None) => start,
            _ => {
                return Err(format!(
                    "line {line_no}: give either `at` (\"+2h\") or `timestamp` (RFC 3339), as a string"
                ));
            }
        };
        events.push(TimedEvent {
            at,
            event: EventFacts {
                name: name.to_string(),
                properties,
                timestamp: Some(at),
            },
        });
    }
    events.sort_by_key(|e| e.at);
    Ok(events)
}

/// The contact's simulated past: events seen and messages sent so far.
#[derive(Default)]
struct SimHistory {
    events: Vec<(DateTime<Utc>, String)>,
    messages: Vec<DateTime<Utc>>,
}

impl EventCounter for SimHistory {
    fn count_events(&self, name: &str, since: DateTime<Utc>) -> i64 {
        self.events.iter().filter(|(at, n)| n == name && *at >= since).count() as i64
    }
}

impl History for SimHistory {
    fn messages_since(&self, since: DateTime<Utc>) -> u32 {
        self.messages.iter().filter(|at| **at >= since).count() as u32
    }
}

pub fn format_offset(duration: Duration) -> String {
    let seconds = duration.num_seconds();
    if seconds < 0 {
        return format!("-{}", Delay::from_secs((-seconds) as u64));
    }
    format!("+{}", Delay::from_secs(seconds as u64))
}

struct Run<'a> {
    journey: &'a Journey,
    catalog: &'a Catalog,
    templates: &'a Templates,
    contact: Contact,
    start: DateTime<Utc>,
    history: SimHistory,
    entries: Vec<Entry>,
}

impl Run<'_> {
    fn push(
        &mut self,
        at: DateTime<Utc>,
        step: Option<String>,
        kind: &str,
        outcome: &str,
        detail: String,
        message: Option<Message>,
    ) {
        self.entries.push(Entry {
            at,
            offset: format_offset(at - self.start),
            step,
            kind: kind.into(),
            outcome: outcome.into(),
            detail,
            message,
        });
    }

    fn see(&mut self, event: &TimedEvent) {
        self.history.events.push((event.at, event.event.name.clone()));
        self.contact.last_seen_at = Some(event.at);
        let properties: Vec<String> = event
            .event
            .properties
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let detail = if properties.is_empty() {
            format!("\"{}\"", event.event.name)
        } else {
            format!("\"{}\" ({})", event.event.name, properties.join(", "))
        };
        self.push(event.at, None, "event", "arrived", detail, None);
    }

    fn preview(&self, enrollment: &Enrollment, effect: &Effect, now: DateTime<Utc>) -> (String, Message) {
        let data = template_data(
            self.journey,
            enrollment,
            &self.contact,
            "https://example.com/u/preview",
            now,
        );
        let language = self.contact.language();
        match effect {
            Effect::SendEmail { template } => match self.templates.render_email(template, language, &data) {
                Ok(email) => (
                    format!(
                        "email \"{}\" to {}",
                        email.subject,
                        self.contact.email.clone().unwrap_or_default()
                    ),
                    Message {
                        channel: "email".into(),
                        to: self.contact.email.clone().unwrap_or_default(),
                        subject: Some(email.subject),
                        lines: email
                            .text
                            .lines()
                            .filter(|l| !l.trim().is_empty())
                            .take(3)
                            .map(str::to_string)
                            .collect(),
                    },
                ),
                Err(error) => (
                    format!("email could not render: {error}"),
                    Message {
                        channel: "email".into(),
                        to: String::new(),
                        subject: None,
                        lines: vec![],
                    },
                ),
            },
            Effect::SendSms { template } => match self.templates.render_sms(template, language, &data) {
                Ok(sms) => (
                    format!(
                        "SMS to {} ({} part{}, {})",
                        self.contact.phone.clone().unwrap_or_default(),
                        sms.segments,
                        if sms.segments == 1 { "" } else { "s" },
                        serde_json::to_value(sms.encoding)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    ),
                    Message {
                        channel: "sms".into(),
                        to: self.contact.phone.clone().unwrap_or_default(),
                        subject: None,
                        lines: sms.body.lines().take(3).map(str::to_string).collect(),
                    },
                ),
                Err(error) => (
                    format!("SMS could not render: {error}"),
                    Message {
                        channel: "sms".into(),
                        to: String::new(),
                        subject: None,
                        lines: vec![],
                    },
                ),
            },
            Effect::AssignToSales { team } => (
                format!("team {team}"),
                Message {
                    channel: "sales".into(),
                    to: team.clone(),
                    subject: None,
                    lines: vec![],
                },
            ),
            Effect::Webhook { method, url, body, .. } => {
                let url = self
                    .templates
                    .render_inline(url, &data)
                    .unwrap_or_else(|e| format!("(url could not render: {e})"));
                let body = body
                    .as_ref()
                    .map(|b| render_json(self.templates, b, &data).to_string())
                    .unwrap_or_default();
                (
                    format!("{method} {url}"),
                    Message {
                        channel: "webhook".into(),
                        to: url,
                        subject: None,
                        lines: if body.is_empty() { vec![] } else { vec![body] },
                    },
                )
            }
        }
    }
}

/// Renders every string inside a JSON value as a template.
pub fn render_json(templates: &Templates, value: &Json, data: &Json) -> Json {
    match value {
        Json::String(s) => Json::String(templates.render_inline(s, data).unwrap_or_else(|_| s.clone())),
        Json::Array(items) => Json::Array(items.iter().map(|v| render_json(templates, v, data)).collect()),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_json(templates, v, data)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Runs `journey` for `contact` under the project's rules (`catalog`: templates and the
/// workspace's guardrails), calling the same `advance` as production.
pub fn simulate(
    journey: &Journey,
    catalog: &Catalog,
    contact: Contact,
    events: Vec<TimedEvent>,
    start: DateTime<Utc>,
) -> Report {
    let mut run = Run {
        journey,
        catalog,
        templates: &catalog.templates,
        contact,
        start,
        history: SimHistory::default(),
        entries: Vec::new(),
    };
    let mut pending = std::collections::VecDeque::from(events);
    let contact_name = run
        .contact
        .email
        .clone()
        .or(run.contact.phone.clone())
        .unwrap_or_else(|| run.contact.id.clone());
    let report = |run: Run, outcome: &str| Report {
        journey: journey.id.clone(),
        version: journey.version.clone(),
        contact: contact_name.clone(),
        start,
        entries: run.entries,
        outcome: outcome.into(),
    };

    // Enrollment.
    let (entered_at, trigger) = match &journey.trigger {
        Trigger::Event(matcher) => {
            let mut found = None;
            while let Some(event) = pending.pop_front() {
                run.see(&event);
                let view = run.contact.facts_view();
                let matched = matcher.event == event.event.name
                    && matcher.condition.as_ref().is_none_or(|c| {
                        let facts =
                            run.contact
                                .facts(&view, Some(&event.event), Some(&event.event), event.at, &run.history);
                        c.eval_bool(&facts) == Ok(true)
                    });
                if matched {
                    found = Some(event);
                    break;
                }
            }
            match found {
                Some(event) => (event.at, Some(event.event)),
                None => {
                    let event = EventFacts {
                        name: matcher.event.clone(),
                        properties: Map::new(),
                        timestamp: Some(start),
                    };
                    run.push(
                        start,
                        None,
                        "note",
                        "assumed",
                        format!(
                            "no \"{}\" in the events{}; simulating one with no properties at the start",
                            matcher.event,
                            if matcher.condition.is_some() {
                                " matched the trigger's `where`"
                            } else {
                                ""
                            }
                        ),
                        None,
                    );
                    (start, Some(event))
                }
            }
        }
        Trigger::Stage(stage) => {
            if run.contact.stage < *stage {
                run.contact.stage = *stage;
            }
            (
                start,
                Some(EventFacts {
                    name: "Lead Qualified".into(),
                    properties: [("stage".to_string(), Json::from(stage.as_str()))]
                        .into_iter()
                        .collect(),
                    timestamp: Some(start),
                }),
            )
        }
        Trigger::Schedule { when, audience } => {
            let zone = journey.settings.timezone;
            let Some(tick) = when.next_after(start - Duration::seconds(1), zone) else {
                run.push(
                    start,
                    None,
                    "note",
                    "never",
                    format!("{} never fires", when.describe()),
                    None,
                );
                return report(run, "not_enrolled");
            };
            let view = run.contact.facts_view();
            let facts = run.contact.facts(&view, None, None, tick, &run.history);
            let result = audience.eval_bool(&facts);
            let explained = audience.explain(&facts);
            if result != Ok(true) {
                run.push(
                    tick,
                    None,
                    "enrolled",
                    "not_in_audience",
                    format!(
                        "{} fired; audience `{}` is false ({explained})",
                        when.describe(),
                        audience.source()
                    ),
                    None,
                );
                return report(run, "not_enrolled");
            }
            run.push(
                tick,
                None,
                "enrolled",
                "in_audience",
                format!(
                    "{} fired; audience `{}` is true ({explained})",
                    when.describe(),
                    audience.source()
                ),
                None,
            );
            (tick, None)
        }
    };
    // The same rule as production: a key that evaluates to nothing enrolls no one.
    let Some(key) = enrollment_key(journey, &run.contact, trigger.as_ref(), entered_at) else {
        run.push(
            entered_at,
            None,
            "enrolled",
            "not_enrolled",
            format!(
                "enrollment_key `{}` gives no value",
                journey.enrollment_key.as_ref().map(|k| k.source()).unwrap_or_default()
            ),
            None,
        );
        return report(run, "not_enrolled");
    };
    if let Trigger::Event(_) | Trigger::Stage(_) = journey.trigger {
        let detail = match (&journey.trigger, &key) {
            (Trigger::Stage(stage), _) => format!("stage became {stage}"),
            (_, Some(key)) => format!(
                "by \"{}\" (enrollment key {key})",
                trigger.as_ref().map(|t| t.name.as_str()).unwrap_or_default()
            ),
            _ => format!(
                "by \"{}\"",
                trigger.as_ref().map(|t| t.name.as_str()).unwrap_or_default()
            ),
        };
        run.push(entered_at, None, "enrolled", "enrolled", detail, None);
    }
    let mut enrollment = Enrollment {
        id: "simulated".into(),
        contact_id: run.contact.id.clone(),
        journey_id: journey.id.clone(),
        version: journey.version.clone(),
        trigger,
        key,
        position: start_position(journey),
        seq: 0,
        entered_at,
    };
    let mut now = entered_at;
    let horizon = start + Duration::days(HORIZON_DAYS);
    for _ in 0..MAX_MOVES {
        if enrollment.is_finished() {
            break;
        }
        // Events due by now (or by the end of the current wait) arrive first.
        let deadline = match enrollment.position {
            Position::Parked { until, .. } => until,
            _ => now,
        };
        let mut input_event = None;
        if let Some(event) = pending.front()
            && event.at <= deadline
        {
            let event = pending.pop_front().unwrap_or_else(|| unreachable!());
            now = now.max(event.at);
            run.see(&event);
            input_event = Some(event.event);
        }
        if input_event.is_none() {
            now = now.max(deadline);
        }
        if now > horizon {
            run.push(
                now,
                None,
                "note",
                "stopped",
                format!("still running after {HORIZON_DAYS} days of simulated time"),
                None,
            );
            return report(run, "still_running");
        }
        let world_contact = run.contact.clone();
        let world = World {
            contact: &world_contact,
            now,
            history: &run.history,
            catalog: run.catalog,
        };
        let input = match &input_event {
            Some(event) => Input::Event(event),
            None => Input::Due,
        };
        let moved = match advance(journey, &enrollment, enrollment.seq, input, &world) {
            Ok(moved) => moved,
            Err(Refused::Ignored | Refused::Stale | Refused::Finished) => continue,
            Err(Refused::NotYet(until)) => {
                now = until;
                continue;
            }
        };
        for change in &moved.changes {
            run.contact.apply(change);
        }
        for record in &moved.records {
            let StepRecord {
                step,
                kind,
                outcome,
                detail,
                seq,
                ..
            } = record;
            // A step's effect carries the step and move it was recorded in.
            let effect = moved.effects.iter().find(|e| e.key.step == *step && e.key.seq == *seq);
            if let Some(effect) = effect {
                let (detail, message) = run.preview(&enrollment, &effect.effect, now);
                if matches!(effect.effect, Effect::SendEmail { .. } | Effect::SendSms { .. }) {
                    run.history.messages.push(now);
                }
                run.push(now, Some(step.clone()), kind, outcome, detail, Some(message));
                continue;
            }
            run.push(now, Some(step.clone()), kind, outcome, detail.clone(), None);
        }
        enrollment.position = moved.position;
        enrollment.seq = moved.seq;
    }
    let outcome = match &enrollment.position {
        Position::Finished {
            outcome: Outcome::Completed,
        } => "completed",
        Position::Finished {
            outcome: Outcome::Exited,
        } => "exited",
        Position::Finished {
            outcome: Outcome::Converted,
        } => "converted",
        Position::Finished {
            outcome: Outcome::Failed { .. },
        } => "failed",
        _ => "still_running",
    };
    run.push(now, None, "end", outcome, String::new(), None);
    report(run, outcome)
}

/// The report as text for a terminal.
pub fn render_text(report: &Report, zone: chrono_tz::Tz) -> String {
    let mut out = format!(
        "{} (version {}) for {}, starting {}\n",
        report.journey,
        report.version,
        report.contact,
        report.start.with_timezone(&zone).format("%a %Y-%m-%d %H:%M %Z")
    );
    let step_width = report
        .entries
        .iter()
        .filter_map(|e| e.step.as_ref().map(String::len))
        .max()
        .unwrap_or(8)
        .max(8);
    for entry in &report.entries {
        let step = entry.step.clone().unwrap_or_else(|| entry.kind.clone());
        let what = if entry.detail.is_empty() {
            entry.outcome.clone()
        } else {
            format!("{}: {}", entry.outcome, entry.detail)
        };
        out.push_str(&format!("  {:<8} {:<step_width$}  {what}\n", entry.offset, step));
        if let Some(message) = &entry.message {
            let indent = " ".repeat(13 + step_width);
            if let Some(subject) = &message.subject {
                out.push_str(&format!("{indent}subject: {subject}\n"));
            }
            for line in &message.lines {
                out.push_str(&format!("{indent}| {line}\n"));
            }
        }
    }
    out
}
