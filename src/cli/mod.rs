//! The `nurture` command: parses flags and calls the library. One file per command.

mod admin;
mod graph;
mod import;
mod plan;
mod report;
mod serve;
mod simulate;
mod validate;

use crate::journey::{self, Catalog, Diagnostic};
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "nurture", version, about = "Marketing-automation journeys that live in git")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check journeys, templates, sales.yaml and scoring.yaml; report every mistake.
    Validate(validate::Args),
    /// Draw a journey's compiled state machine.
    Graph(graph::Args),
    /// Run a journey for one contact on a virtual clock, with no network.
    Simulate(simulate::Args),
    /// Run everything: the events API, step workers, schedules and the reconciler.
    Serve(serve::Args),
    /// Run step workers only (scale out by starting more).
    Worker(serve::Args),
    /// Run the HTTP API only.
    Api(serve::Args),
    /// Apply database migrations.
    Migrate,
    /// Compile the journeys and store their versions.
    Reload,
    /// Show what reloading the journeys would do to contacts in flight.
    Plan(plan::Args),
    /// Failed enrollments: list and retry.
    #[command(subcommand)]
    Enrollments(admin::Enrollments),
    /// Bulk-load contacts (.csv) or Segment messages (.jsonl), resumably.
    Import(import::Args),
    /// ROI, funnel and KPI reports.
    #[command(subcommand)]
    Report(report::Report),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Where the project's files are, shared by the commands that compile.
#[derive(clap::Args, Clone, Debug)]
pub struct ProjectArgs {
    /// Directory of message templates.
    #[arg(long, default_value = "templates")]
    pub templates: PathBuf,
    /// Sales teams file (optional).
    #[arg(long, default_value = "sales.yaml")]
    pub sales: PathBuf,
    /// Lead-scoring file (optional).
    #[arg(long, default_value = "scoring.yaml")]
    pub scoring: PathBuf,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Graph(args) => graph::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Serve(args) => serve::run(args, serve::Role::Serve),
        Command::Worker(args) => serve::run(args, serve::Role::Worker),
        Command::Api(args) => serve::run(args, serve::Role::Api),
        Command::Migrate => admin::migrate(),
        Command::Reload => admin::reload(),
        Command::Plan(args) => plan::run(args),
        Command::Enrollments(command) => admin::enrollments(command),
        Command::Import(args) => import::run(args),
        Command::Report(command) => report::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes to standard output; a closed pipe (`| head`) ends output quietly instead of panicking.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush());
}

/// Compiles one journey file with the project's templates and files; prints its diagnostics
/// and returns `None` if it has errors.
pub fn compile_one(
    file: &std::path::Path,
    project: &ProjectArgs,
) -> Result<Option<(Catalog, std::sync::Arc<journey::Journey>)>> {
    let (catalog, diagnostics) = compile_paths(&[file.to_path_buf()], project)?;
    match catalog
        .journeys
        .first()
        .filter(|_| !diagnostics.iter().any(|d| d.is_error()))
        .cloned()
    {
        Some(journey) => Ok(Some((catalog, journey))),
        None => {
            print_diagnostics(&diagnostics);
            Ok(None)
        }
    }
}

/// Compiles the given journeys with the project's templates and files, under the guardrails
/// of `nurture.toml` in the working directory (what `serve` would run them with).
pub fn compile_paths(paths: &[PathBuf], project: &ProjectArgs) -> Result<(Catalog, Vec<Diagnostic>)> {
    let config = crate::config::Config::load(std::path::Path::new("."))?;
    let sources = crate::project::load_sources(paths, &project.templates, &project.sales, &project.scoring)?;
    Ok(journey::compile_with(&sources, &config.guardrails))
}

/// Logs go to standard error; `RUST_LOG` chooses what (default: info), and
/// `NURTURE_LOG_FORMAT=json` writes one JSON object a line (for a log collector) with the
/// fields of the spans it is in, such as a request's `request_id`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,apalis=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let format = std::env::var("NURTURE_LOG_FORMAT").unwrap_or_default();
    let _ = match format.trim() {
        "json" => builder.json().try_init(),
        "" | "text" => builder.try_init(),
        other => {
            eprintln!("warning: NURTURE_LOG_FORMAT=`{other}` is neither `json` nor `text`; writing text logs");
            builder.try_init()
        }
    };
}

pub(crate) fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
}
