//! `nurture journeys pause|resume|counts ID`: journey controls from the command line. They
//! work on the database directly, so they work with no server running; running processes
//! see a pause or resume within a second (`engine::controls::REFRESH`).

use super::{Format, out};
use crate::app;
use crate::config::Config;
use crate::engine::controls::{self, JourneyCounts};
use crate::engine::{Clock, SystemClock};
use anyhow::{Result, bail};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Journeys {
    /// Stops new enrollments and holds contacts in flight before their next step.
    Pause { id: String },
    /// Lets a paused journey go on: held contacts continue at once.
    Resume { id: String },
    /// Enrolled, by status, in flight at each step, and failed.
    Counts {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub fn run(command: Journeys) -> Result<ExitCode> {
    let config = Config::load(std::path::Path::new("."))?;
    let id = match &command {
        Journeys::Pause { id } | Journeys::Resume { id } | Journeys::Counts { id, .. } => id.clone(),
    };
    let (catalog, _, _) = app::compile_project(&config)?;
    let Some(journey) = catalog.journeys.iter().find(|j| j.id == id) else {
        bail!(
            "there is no journey `{id}` in {}; the journeys are: {}",
            config.journeys.display(),
            catalog
                .journeys
                .iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let steps: Vec<String> = journey.steps.iter().map(|s| s.id.clone()).collect();
    tokio::runtime::Runtime::new()?.block_on(async {
        let (store, queue) = app::connect(&config).await?;
        let now = SystemClock.now();
        match command {
            Journeys::Pause { .. } => {
                if controls::pause(&store, &id, "cli", now).await? {
                    out(&format!(
                        "journey {id} is paused: nobody enters, and contacts in flight hold before their next step\n"
                    ));
                } else {
                    out(&format!("journey {id} was already paused\n"));
                }
            }
            Journeys::Resume { .. } => match controls::resume(&store, &queue, &id, now).await? {
                Some(count) => {
                    // Again once every running process has seen the resume (see `SETTLE`).
                    tokio::time::sleep(controls::SETTLE).await;
                    controls::requeue_held(&store, &queue, &id, SystemClock.now()).await?;
                    out(&format!("journey {id} is resumed: {count} held contacts continue\n"));
                }
                None => out(&format!("journey {id} was not paused\n")),
            },
            Journeys::Counts { format, .. } => {
                let counts = controls::counts(&store, &id, &steps).await?;
                match format {
                    Format::Json => out(&format!("{}\n", serde_json::to_string_pretty(&counts)?)),
                    Format::Text => out(&text(&counts)),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The counts as aligned text: totals, then the steps in the journey's order.
fn text(counts: &JourneyCounts) -> String {
    let mut text = format!(
        "journey {}{}\nenrolled {}\n",
        counts.journey,
        if counts.paused { " (paused)" } else { "" },
        counts.enrolled
    );
    for (status, count) in &counts.by_status {
        text.push_str(&format!("  {status:<10} {count}\n"));
    }
    let width = counts
        .at_step
        .iter()
        .chain(&counts.failed_at_step)
        .map(|c| c.step.len())
        .max()
        .unwrap_or(0);
    text.push_str("in flight at step\n");
    for step in &counts.at_step {
        text.push_str(&format!("  {:<width$} {}\n", step.step, step.count));
    }
    if !counts.failed_at_step.is_empty() {
        text.push_str("failed at step\n");
        for step in &counts.failed_at_step {
            text.push_str(&format!("  {:<width$} {}\n", step.step, step.count));
        }
    }
    text
}
