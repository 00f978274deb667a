//! `nurture migrate`, `nurture enrollments failed|retry`, `nurture reload`.

use super::{Format, out};
use crate::app;
use crate::config::Config;
use crate::store::enrollments;
use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Enrollments {
    /// The dead-letter list: enrollments that failed, newest first.
    Failed {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Puts a failed enrollment back to work where it stopped.
    Retry { id: i64 },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

pub fn migrate() -> Result<ExitCode> {
    let config = Config::load(std::path::Path::new("."))?;
    runtime()?.block_on(async {
        app::connect(&config).await?;
        out("migrations applied\n");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn enrollments(command: Enrollments) -> Result<ExitCode> {
    let config = Config::load(std::path::Path::new("."))?;
    runtime()?.block_on(async {
        match command {
            Enrollments::Failed { format, limit } => {
                let (store, _queue) = app::connect(&config).await?;
                let mut connection = store.pool.acquire().await?;
                let failed = enrollments::failed(&mut connection, limit).await?;
                match format {
                    Format::Json => out(&format!("{}\n", serde_json::to_string_pretty(&failed)?)),
                    Format::Text => {
                        if failed.is_empty() {
                            out("no failed enrollments\n");
                        }
                        for f in failed {
                            out(&format!(
                                "{}\t{}\tcontact {}\tstep {}\t{}\t{}\n",
                                f.id,
                                f.journey_id,
                                f.contact_id,
                                f.step.unwrap_or_default(),
                                f.updated_at.to_rfc3339(),
                                f.error.unwrap_or_default()
                            ));
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Enrollments::Retry { id } => {
                let engine = app::build_default(config).await?;
                if engine.retry(id).await? {
                    out(&format!("enrollment {id} is queued again\n"));
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("enrollment {id} is not in the failed list");
                    Ok(ExitCode::from(1))
                }
            }
        }
    })
}

/// Compiles and stores the journeys; running processes pick them up on SIGHUP.
pub fn reload() -> Result<ExitCode> {
    let config = Config::load(std::path::Path::new("."))?;
    runtime()?.block_on(async {
        let engine = app::build_default(config).await?;
        let count = engine.catalog().journeys.len();
        out(&format!(
            "{count} journeys compiled and stored; send SIGHUP to running nurture processes to switch to them\n"
        ));
        Ok(ExitCode::SUCCESS)
    })
}
