//! Reading a project from disk: journeys, templates, `sales.yaml` and `scoring.yaml`.

use crate::journey::{SourceFile, Sources};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn display_path(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    text.strip_prefix("./").map(str::to_string).unwrap_or(text)
}

fn read(path: &Path) -> Result<SourceFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("Failed to read {}", path.display()))?;
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
        let entries = std::fs::read_dir(&dir).with_context(|| format!("Failed to list {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if extensions.iter().any(|ext| path.to_string_lossy().ends_with(ext)) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads journeys from `paths` (files or directories) and the project's templates,
/// `sales.yaml` and `scoring.yaml`.
pub fn load_sources(
    paths: &[PathBuf],
    templates_dir: &Path,
    sales_file: &Path,
    scoring_file: &Path,
) -> Result<Sources> {
    let mut sources = Sources::default();
    let mut template_paths: Vec<PathBuf> = Vec::new();
    let mut sales = None;
    let mut scoring = None;
    for path in paths {
        if path.is_dir() {
            for file in files_under(path, &[".yaml", ".yml", ".hbs"])? {
                classify(&file, &mut sources, &mut template_paths, &mut sales, &mut scoring);
            }
        } else if path.exists() {
            classify(path, &mut sources, &mut template_paths, &mut sales, &mut scoring);
        } else {
            anyhow::bail!("{} does not exist", path.display());
        }
    }
    if templates_dir.is_dir() {
        for file in files_under(templates_dir, &[".hbs"])? {
            if !template_paths.iter().any(|p| same_file(p, &file)) {
                template_paths.push(file);
            }
        }
    }
    for path in template_paths {
        sources.templates.push(read(&path)?);
    }
    let sales = sales.or_else(|| sales_file.is_file().then(|| sales_file.to_path_buf()));
    let scoring = scoring.or_else(|| scoring_file.is_file().then(|| scoring_file.to_path_buf()));
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
