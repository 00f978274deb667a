//! `nurture validate`: every mistake in the project, with file, line, column and a hint.

use super::{Format, ProjectArgs, compile_paths};
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Journey files or directories (default: journeys/, templates/, sales.yaml, scoring.yaml).
    paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    project: ProjectArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        let mut defaults = vec![PathBuf::from("journeys")];
        defaults.retain(|p| p.exists());
        defaults
    } else {
        args.paths
    };
    let (catalog, diagnostics) = compile_paths(&paths, &args.project)?;
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    match args.format {
        Format::Json => {
            let journeys: Vec<_> = catalog
                .journeys
                .iter()
                .map(|j| json!({"id": j.id, "version": j.version, "file": j.file, "steps": j.steps.len()}))
                .collect();
            let report = json!({"ok": errors == 0, "errors": errors, "diagnostics": diagnostics, "journeys": journeys});
            super::out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
        }
        Format::Text => {
            super::print_diagnostics(&diagnostics);
            if errors == 0 {
                let templates = catalog.templates.emails.len() + catalog.templates.sms.len();
                let mut extras = Vec::new();
                if catalog.sales.is_some() {
                    extras.push("sales.yaml");
                }
                if catalog.scoring.is_some() {
                    extras.push("scoring.yaml");
                }
                let extras = if extras.is_empty() {
                    String::new()
                } else {
                    format!(", {}", extras.join(", "))
                };
                super::out(&format!(
                    "ok: {} journeys, {templates} templates{extras}
",
                    catalog.journeys.len()
                ));
            } else {
                let files: std::collections::BTreeSet<&str> = diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .map(|d| d.file.as_str())
                    .collect();
                eprintln!(
                    "{errors} error{} in {} file{}",
                    if errors == 1 { "" } else { "s" },
                    files.len(),
                    if files.len() == 1 { "" } else { "s" }
                );
            }
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
