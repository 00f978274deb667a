//! The `nurture` command: parses flags and calls the library. One file per command.

mod graph;
mod simulate;
mod validate;

use crate::journey::{self, Catalog, Diagnostic, SourceFile, Sources};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nurture",
    version,
    about = "Marketing-automation journeys that live in git"
)]
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
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

fn display_path(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    text.strip_prefix("./").map(str::to_string).unwrap_or(text)
}

fn read(path: &Path) -> Result<SourceFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read {}", path.display()))?;
    Ok(SourceFile {
        path: display_path(path),
        text,
    })
}

/// Every file under `dir` with one of `extensions`, sorted, recursively.
fn files_under(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("Failed to list {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if extensions
                .iter()
                .any(|ext| path.to_string_lossy().ends_with(ext))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads journeys from `paths` (files or directories) and the project's templates,
/// `sales.yaml` and `scoring.yaml`.
pub fn load_sources(paths: &[PathBuf], project: &ProjectArgs) -> Result<Sources> {
    let mut sources = Sources::default();
    let mut template_paths: Vec<PathBuf> = Vec::new();
    let mut sales = None;
    let mut scoring = None;
    for path in paths {
        if path.is_dir() {
            for file in files_under(path, &[".yaml", ".yml", ".hbs"])? {
                classify(
                    &file,
                    &mut sources,
                    &mut template_paths,
                    &mut sales,
                    &mut scoring,
                );
            }
        } else if path.exists() {
            classify(
                path,
                &mut sources,
                &mut template_paths,
                &mut sales,
                &mut scoring,
            );
        } else {
            anyhow::bail!("{} does not exist", path.display());
        }
    }
    if project.templates.is_dir() {
        for file in files_under(&project.templates, &[".hbs"])? {
            if !template_paths.iter().any(|p| same_file(p, &file)) {
                template_paths.push(file);
            }
        }
    }
    for path in template_paths {
        sources.templates.push(read(&path)?);
    }
    let sales = sales.or_else(|| project.sales.is_file().then(|| project.sales.clone()));
    let scoring = scoring.or_else(|| project.scoring.is_file().then(|| project.scoring.clone()));
    sources.sales = sales.map(|p| read(&p)).transpose()?;
    sources.scoring = scoring.map(|p| read(&p)).transpose()?;
    Ok(sources)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn classify(
    path: &Path,
    sources: &mut Sources,
    templates: &mut Vec<PathBuf>,
    sales: &mut Option<PathBuf>,
    scoring: &mut Option<PathBuf>,
) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if name.ends_with(".hbs") {
        templates.push(path.to_path_buf());
    } else if name == "sales.yaml" || name == "sales.yml" {
        *sales = Some(path.to_path_buf());
    } else if name == "scoring.yaml" || name == "scoring.yml" {
        *scoring = Some(path.to_path_buf());
    } else if let Ok(file) = read(path) {
        sources.journeys.push(file);
    }
}

/// Compiles the given journeys with the project's templates and files.
pub fn compile_paths(
    paths: &[PathBuf],
    project: &ProjectArgs,
) -> Result<(Catalog, Vec<Diagnostic>)> {
    let sources = load_sources(paths, project)?;
    Ok(journey::compile(&sources))
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
}
