//! Compiles a whole project: templates first, then `sales.yaml` and `scoring.yaml`, then every
//! journey against them. Returns what compiled and every diagnostic, sorted by place.

use super::check::check_graph;
use super::diagnostic::Diagnostic;
use super::model::Journey;
use super::parse::{Refs, TeamNames, parse_journey};
use super::sales::{Sales, parse_sales};
use super::scoring::{Scoring, parse_scoring};
use super::templates::{SourceFile, Templates};
use super::yaml::Pos;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Sources {
    pub journeys: Vec<SourceFile>,
    pub templates: Vec<SourceFile>,
    pub sales: Option<SourceFile>,
    pub scoring: Option<SourceFile>,
}

/// Everything that compiled cleanly.
#[derive(Clone, Default)]
pub struct Catalog {
    pub journeys: Vec<Arc<Journey>>,
    pub templates: Arc<Templates>,
    pub sales: Option<Arc<Sales>>,
    pub scoring: Option<Arc<Scoring>>,
    /// Journeys started by each event name, so an event never scans every journey.
    pub triggered_by: HashMap<String, Vec<Arc<Journey>>>,
}

impl Catalog {
    /// The journeys an event of this name may start.
    pub fn triggered_by(&self, event: &str) -> &[Arc<Journey>] {
        self.triggered_by.get(event).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn journey(&self, id: &str) -> Option<&Arc<Journey>> {
        self.journeys.iter().find(|j| j.id == id)
    }
}

pub fn compile(sources: &Sources) -> (Catalog, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let templates = Templates::compile(&sources.templates, &mut diagnostics);
    let sales = sources
        .sales
        .as_ref()
        .and_then(|f| parse_sales(&f.path, &f.text, &mut diagnostics));
    let scoring = sources
        .scoring
        .as_ref()
        .and_then(|f| parse_scoring(&f.path, &f.text, &mut diagnostics));
    let sales_teams = match (&sources.sales, &sales) {
        (None, _) => TeamNames::NoSalesFile,
        (Some(_), Some(sales)) => TeamNames::Known(sales.teams.keys().cloned().collect()),
        // A broken sales.yaml is reported there; don't also blame every journey using it.
        (Some(_), None) => TeamNames::Unchecked,
    };
    let has_email = |name: &str| templates.has_email(name) || templates_broken(sources, name, ".email.hbs");
    let has_sms = |name: &str| templates.has_sms(name) || templates_broken(sources, name, ".sms.hbs");
    let refs = Refs {
        has_email_template: &has_email,
        has_sms_template: &has_sms,
        sales_teams,
    };
    let mut journeys: Vec<Arc<Journey>> = Vec::new();
    let mut first_file: HashMap<String, String> = HashMap::new();
    for file in &sources.journeys {
        let Some(journey) = parse_journey(&file.path, &file.text, &refs, &mut diagnostics) else {
            continue;
        };
        let graph_before = diagnostics.len();
        check_graph(&journey, &mut diagnostics);
        if diagnostics.len() > graph_before {
            continue;
        }
        if let Some(other) = first_file.get(&journey.id) {
            diagnostics.push(
                Diagnostic::error(
                    &file.path,
                    Pos::new(1, 1),
                    "J018",
                    format!("journey id `{}` is also used by {other}", journey.id),
                )
                .with_hint("journey ids must be unique: reports and enrollments are keyed by them"),
            );
            continue;
        }
        first_file.insert(journey.id.clone(), file.path.clone());
        journeys.push(Arc::new(journey));
    }
    diagnostics.sort();
    diagnostics.dedup();
    let mut triggered_by: HashMap<String, Vec<Arc<Journey>>> = HashMap::new();
    for journey in &journeys {
        if let super::model::Trigger::Event(matcher) = &journey.trigger {
            triggered_by
                .entry(matcher.event.clone())
                .or_default()
                .push(journey.clone());
        }
    }
    let catalog = Catalog {
        journeys,
        templates: Arc::new(templates),
        sales: sales.map(Arc::new),
        scoring: scoring.map(Arc::new),
        triggered_by,
    };
    (catalog, diagnostics)
}

/// A template whose file exists but failed to compile: reported at the template, not again at
/// every journey that uses it.
fn templates_broken(sources: &Sources, name: &str, suffix: &str) -> bool {
    let wanted = format!("{name}{suffix}");
    sources
        .templates
        .iter()
        .any(|f| f.path.replace('\\', "/").rsplit('/').next() == Some(wanted.as_str()))
}
