//! `nurture graph`: a journey's compiled state machine as Mermaid or DOT.

use super::ProjectArgs;
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
    let Some((_, journey)) = super::compile_one(&args.file, &args.project)? else {
        return Ok(ExitCode::from(1));
    };
    let journey = &journey;
    match args.format {
        GraphFormat::Mermaid => super::out(&graph::mermaid(journey)),
        GraphFormat::Dot => super::out(&graph::dot(journey)),
    }
    Ok(ExitCode::SUCCESS)
}
