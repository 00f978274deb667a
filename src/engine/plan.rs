//! `nurture plan`: what reloading the journeys would do to contacts in flight, before it
//! happens. Pure: takes the compiled catalog and a census of enrollments per version and step.

use crate::journey::Catalog;
use crate::journey::model::{Journey, OnChange};
use serde::Serialize;
use std::fmt::Write;

/// Unfinished enrollments at one step of one journey version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Census {
    pub journey: String,
    pub version: String,
    pub step: String,
    pub count: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Already on the version being loaded.
    Unchanged,
    /// `on_change: keep`: finishes on the version it started on.
    Keep,
    /// `on_change: migrate`: moves to this step of the new version (or `end`).
    Move { to: String },
    /// `on_change: migrate`, but the new version has no such step and no mapping names one.
    Stranded,
    /// The journey's file is gone; running enrollments finish on their version.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    pub journey: String,
    pub from_version: String,
    pub to_version: Option<String>,
    pub step: String,
    pub count: i64,
    #[serde(flatten)]
    pub action: Action,
}

/// Where an enrollment at `step` of an older version goes under `on_change: migrate`.
pub fn migration_target(journey: &Journey, step: &str) -> Option<String> {
    let OnChange::Migrate(map) = &journey.on_change else {
        return None;
    };
    let target = map.get(step).map(String::as_str).unwrap_or(step);
    (target == "end" || journey.step_index(target).is_some()).then(|| target.to_string())
}

pub fn plan(catalog: &Catalog, census: &[Census]) -> Vec<Line> {
    census
        .iter()
        .map(|row| {
            let journey = catalog.journey(&row.journey);
            let action = match journey {
                None => Action::Removed,
                Some(j) if j.version == row.version => Action::Unchanged,
                Some(j) => match &j.on_change {
                    OnChange::Keep => Action::Keep,
                    OnChange::Migrate(_) => match migration_target(j, &row.step) {
                        Some(to) => Action::Move { to },
                        None => Action::Stranded,
                    },
                },
            };
            Line {
                journey: row.journey.clone(),
                from_version: row.version.clone(),
                to_version: journey.map(|j| j.version.clone()),
                step: row.step.clone(),
                count: row.count,
                action,
            }
        })
        .collect()
}

pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    let mut current = "";
    let (mut moving, mut keeping, mut stranded) = (0, 0, 0);
    for line in lines {
        if line.journey != current {
            current = &line.journey;
            let _ = writeln!(out, "journey {}", line.journey);
        }
        let (sign, what) = match &line.action {
            Action::Unchanged => ("=", format!("on the current version {}", line.from_version)),
            Action::Keep => {
                keeping += line.count;
                (
                    "~",
                    format!(
                        "stay on version {} until they finish (on_change: keep)",
                        line.from_version
                    ),
                )
            }
            Action::Move { to } => {
                moving += line.count;
                (
                    "->",
                    format!(
                        "move from version {} to step `{to}` of {}",
                        line.from_version,
                        line.to_version.as_deref().unwrap_or("?")
                    ),
                )
            }
            Action::Stranded => {
                stranded += line.count;
                (
                    "!",
                    format!(
                        "version {} has no step `{}` and `migrate:` names none: they stay on the old version",
                        line.to_version.as_deref().unwrap_or("?"),
                        line.step
                    ),
                )
            }
            Action::Removed => {
                keeping += line.count;
                (
                    "-",
                    format!("the journey file is gone: they finish on version {}", line.from_version),
                )
            }
        };
        let _ = writeln!(
            out,
            "  {sign:>2} {:>7} at {:<24} {what}",
            line.count,
            format!("`{}`", line.step)
        );
    }
    if lines.is_empty() {
        out.push_str("No contacts are in flight: a reload changes nothing for anyone.\n");
    } else {
        let _ = writeln!(
            out,
            "\nPlan: {moving} move to a new version, {keeping} stay on their version, {stranded} need a `migrate:` entry."
        );
    }
    out
}
