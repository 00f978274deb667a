//! `nurture simulate`: run a journey for one contact on a virtual clock.

use super::{Format, ProjectArgs};
use crate::engine::Contact;
use crate::engine::simulate::{parse_events, render_text, simulate};
use anyhow::{Context, Result};
use chrono::{DateTime, TimeZone, Utc};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The journey file.
    file: PathBuf,
    /// The contact, as JSON: {"email", "phone", "traits": {}, "score", "stage", "tags": [], "timezone", "language"}.
    #[arg(long)]
    contact: PathBuf,
    /// Events, one JSON object per line: {"event": "...", "properties": {}, "at": "+2h"}.
    #[arg(long)]
    events: Option<PathBuf>,
    /// When the simulation starts (RFC 3339); default Monday 2026-01-05 10:00 in the journey's time zone.
    #[arg(long)]
    start: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    project: ProjectArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Some((catalog, journey)) = super::compile_one(&args.file, &args.project)? else {
        return Ok(ExitCode::from(1));
    };
    let journey = &journey;
    let text =
        std::fs::read_to_string(&args.contact).with_context(|| format!("Failed to read {}", args.contact.display()))?;
    let mut contact: Contact =
        serde_json::from_str(&text).with_context(|| format!("{} is not a contact", args.contact.display()))?;
    if contact.id == Contact::default().id
        && let Some(name) = contact.email.clone().or(contact.phone.clone())
    {
        contact.id = name;
    }
    let zone = journey.settings.timezone;
    let start: DateTime<Utc> = match &args.start {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("--start {text} is not an RFC 3339 time"))?
            .with_timezone(&Utc),
        None => zone
            .with_ymd_and_hms(2026, 1, 5, 10, 0, 0)
            .single()
            .context("the default start does not exist in this time zone")?
            .with_timezone(&Utc),
    };
    let events = match &args.events {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("Failed to read {}", path.display()))?;
            parse_events(&text, start).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let report = simulate(journey, &catalog, contact, events, start);
    match args.format {
        Format::Json => super::out(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
        Format::Text => super::out(&render_text(&report, zone)),
    }
    Ok(ExitCode::SUCCESS)
}
