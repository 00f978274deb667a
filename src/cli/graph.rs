//! `nurture graph`: a journey's compiled state machine as Mermaid or DOT.

use super::{ProjectArgs, compile_paths};
use crate::journey::graph;
use anyhow::Result;
use clap::ValueEnum;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Default, ValueEnum)]
enum GraphFormat {
    #[default]
    Mermaid,
    Dot,
}

#[derive(clap::Args)]
pub struct Args {
    /// The journey file.
    file: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: GraphFormat,
    #[command(flatten)]
    project: ProjectArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (catalog, diagnostics) = compile_paths(std::slice::from_ref(&args.file), &args.project)?;
    let Some(journey) = catalog
        .journeys
        .first()
        .filter(|_| !diagnostics.iter().any(|d| d.is_error()))
    else {
        super::print_diagnostics(&diagnostics);
        return Ok(ExitCode::from(1));
    };
    match args.format {
        GraphFormat::Mermaid => super::out(&graph::mermaid(journey)),
        GraphFormat::Dot => super::out(&graph::dot(journey)),
    }
    Ok(ExitCode::SUCCESS)
}
