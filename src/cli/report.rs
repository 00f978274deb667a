//! `nurture report roi|funnel|kpis`: the reports of the API, as aligned tables, CSV or JSON.
//! Facts not yet in the rollups are rolled up first (when no other process holds the lease),
//! so a report from the command line is as fresh as the API's.

use super::out;
use crate::app;
use crate::config::Config;
use crate::reports::{self, Asked, render};
use anyhow::{Result, anyhow};
use clap::{Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Range {
    /// First day (UTC), YYYY-MM-DD; default 29 days before `--to`.
    #[arg(long)]
    from: Option<String>,
    /// Last day (UTC), YYYY-MM-DD; default today.
    #[arg(long)]
    to: Option<String>,
    /// first_touch, last_touch, linear, time_decay or position_based.
    #[arg(long, default_value = "last_touch")]
    model: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Subcommand)]
pub enum Report {
    /// Revenue, cost and ROI per journey, step or channel.
    Roi {
        #[command(flatten)]
        range: Range,
        /// journey, step or channel.
        #[arg(long, default_value = "journey")]
        group_by: String,
    },
    /// Contacts reaching each step of a journey, per version.
    Funnel {
        journey: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Lead -> MQL -> SQL -> won, time in each stage, costs per lead and acquisition.
    Kpis {
        #[command(flatten)]
        range: Range,
    },
}

impl Range {
    fn read(&self, group_by: Option<&str>, today: i64) -> Result<Asked> {
        Asked::read(
            self.from.as_deref(),
            self.to.as_deref(),
            Some(&self.model),
            group_by,
            today,
        )
        .map_err(|(field, message)| anyhow!("--{}: {message}", field.replace('_', "-")))
    }
}

fn print(format: Format, table: render::Table, json: serde_json::Value) -> Result<()> {
    match format {
        Format::Table => out(&table.to_text()),
        Format::Csv => out(&table.to_csv()),
        Format::Json => out(&format!("{}\n", serde_json::to_string_pretty(&json)?)),
    }
    Ok(())
}

pub fn run(command: Report) -> Result<ExitCode> {
    let config = Config::load(std::path::Path::new("."))?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let engine = app::build_default(config).await?;
        engine.roll_up_reports(&app::process_name("report")).await?;
        let today = reports::day_of(engine.clock.now().timestamp_millis());
        match command {
            Report::Roi { range, group_by } => {
                let asked = range.read(Some(&group_by), today)?;
                let report = engine
                    .roi_report(asked.from, asked.to, asked.model, asked.group_by)
                    .await?;
                print(
                    range.format,
                    render::roi_table(&report, asked.group_by),
                    render::roi_json(&report, asked.group_by),
                )?;
            }
            Report::Funnel { journey, format } => {
                let Some(funnels) = engine.funnel_report(&journey).await? else {
                    eprintln!("no journey `{journey}`");
                    return Ok(ExitCode::from(1));
                };
                print(
                    format,
                    reports::funnel::funnel_table(&funnels),
                    reports::funnel::funnel_json(&journey, &funnels),
                )?;
            }
            Report::Kpis { range } => {
                let asked = range.read(None, today)?;
                let kpis = engine.kpi_report(asked.from, asked.to, asked.model).await?;
                print(
                    range.format,
                    reports::funnel::kpis_table(&kpis),
                    reports::funnel::kpis_json(&kpis),
                )?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
