//! `nurture plan`: what a reload would do to contacts in flight, per journey and step.

use super::{Format, out};
use crate::app;
use crate::config::Config;
use crate::engine::plan::{Census, plan, render};
use crate::journey::Diagnostic;
use anyhow::Result;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = Config::load(std::path::Path::new("."))?;
    let (catalog, _sources, diagnostics) = app::compile_project(&config)?;
    if diagnostics.iter().any(Diagnostic::is_error) {
        super::print_diagnostics(&diagnostics);
        return Ok(ExitCode::from(1));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let census = runtime.block_on(async {
        let (store, _queue) = app::connect(&config).await?;
        let mut connection = store.pool.acquire().await?;
        let rows = crate::store::enrollments::census(&mut connection).await?;
        Ok::<_, anyhow::Error>(
            rows.into_iter()
                .map(|(journey, version, step, count)| Census {
                    journey,
                    version,
                    step,
                    count,
                })
                .collect::<Vec<_>>(),
        )
    })?;
    let lines = plan(&catalog, &census);
    match args.format {
        Format::Json => out(&format!("{}\n", serde_json::to_string_pretty(&lines)?)),
        Format::Text => out(&render(&lines)),
    }
    Ok(ExitCode::SUCCESS)
}
