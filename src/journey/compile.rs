//! Compiles a whole project: templates first, then `sales.yaml` and `scoring.yaml`, then every
//! journey against them. Returns what compiled and every diagnostic, sorted by place.

use super::check::check_graph;
use super::diagnostic::Diagnostic;
use super::model::Journey;
use super::parse::{Refs, TeamNames, parse_journey};
use super::sales::{Sales, parse_sales};
use super::scoring::{Scoring, parse_scoring};
use super::templates::{SourceFile, Templates};
use super::values::Guardrails;
use super::yaml::Pos;
use crate::limits::MAX_PROJECT_TAGS;
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
    /// The workspace's guardrails from `nurture.toml`, applied to every journey's messages.
    pub guardrails: Guardrails,
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

/// Compiles with no workspace guardrails.
pub fn compile(sources: &Sources) -> (Catalog, Vec<Diagnostic>) {
    compile_with(sources, &Guardrails::default())
}

/// Compiles under the workspace's guardrails (`nurture.toml`): a journey that loosens them is
/// an error, and the catalog carries them to the engine and the simulator.
pub fn compile_with(sources: &Sources, guardrails: &Guardrails) -> (Catalog, Vec<Diagnostic>) {
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
    if let (Some(file), Some(sales)) = (&sources.sales, &sales) {
        for team in sales.teams.values() {
            let super::sales::NotifyEmail::Template { name, pos } = &team.notify.email else {
                continue;
            };
            if templates.email_class(name, None) == Some(super::templates::MailClass::Marketing) {
                diagnostics.push(
                    Diagnostic::error(&file.path, *pos, "J053", format!("`{name}` is marketing email; a lead notice is not"))
                        .with_hint("write `class: transactional` in the template's front matter: a rep cannot unsubscribe from their leads"),
                );
            }
            if !has_email(name) {
                let known: Vec<&str> = templates.emails.keys().map(String::as_str).collect();
                diagnostics.push(
                    Diagnostic::error(&file.path, *pos, "J053", format!("no email template `{name}`")).with_hint(
                        match super::diagnostic::did_you_mean(name, known) {
                            Some(near) => format!("did you mean `{near}`?"),
                            None => format!("create templates/{name}.email.hbs, or write `email: false`"),
                        },
                    ),
                );
            }
        }
    }
    let has_sms = |name: &str| templates.has_sms(name) || templates_broken(sources, name, ".sms.hbs");
    let refs = Refs {
        has_email_template: &has_email,
        has_sms_template: &has_sms,
        sales_teams,
        guardrails,
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
    check_tag_count(&journeys, &mut diagnostics);
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
        guardrails: guardrails.clone(),
        triggered_by,
    };
    (catalog, diagnostics)
}

/// A contact has only the tags that `tag` steps gave it: bounding the project's tags bounds them.
fn check_tag_count(journeys: &[Arc<Journey>], diagnostics: &mut Vec<Diagnostic>) {
    let mut tags = std::collections::BTreeSet::new();
    for journey in journeys {
        for step in &journey.steps {
            let super::model::StepKind::Tag(names) = &step.kind else {
                continue;
            };
            tags.extend(names.iter().map(String::as_str));
            if tags.len() > MAX_PROJECT_TAGS {
                diagnostics.push(
                    Diagnostic::error(
                        &journey.file,
                        step.pos,
                        "J008",
                        format!("the project's journeys add more than {MAX_PROJECT_TAGS} different tags"),
                    )
                    .with_hint("use fewer, broader tags, or a trait (`set`) for values that vary"),
                );
                return;
            }
        }
    }
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

/// How late a broadcast (`at:`) may still fire when no process ran at its time.
pub const BROADCAST_LATE_LIMIT: chrono::Duration = chrono::Duration::hours(24);

/// Warnings for broadcasts whose time has passed by `now` (J076). Apart from the compiler
/// because they depend on the clock: `nurture validate` asks with the time it runs at.
pub fn broadcast_warnings(catalog: &Catalog, now: chrono::DateTime<chrono::Utc>) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    for journey in &catalog.journeys {
        if let super::model::Trigger::Schedule { when, .. } = &journey.trigger
            && let super::model::When::At { time, text, pos } = when
            && *time <= now
        {
            let message = if now - *time < BROADCAST_LATE_LIMIT {
                format!("`at: {text}` has passed: the broadcast fires when nurture starts, unless it already did")
            } else {
                format!("`at: {text}` is more than a day ago: the broadcast will not fire")
            };
            warnings.push(
                Diagnostic::warning(&journey.file, *pos, "J076", message)
                    .with_hint("set `at` to a time to come, or remove the journey once it has fired"),
            );
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sales_notices_name_templates_that_exist_and_reps_someone_can_tell() {
        let sales = |notify: &str| {
            Sources {
            sales: Some(SourceFile {
                path: "sales.yaml".into(),
                text: format!(
                    "teams:\n  inbound:\n    accept_within: 4h\n{notify}    reps:\n      - {{id: ann, email: ann@example.com}}\n      - {{id: bo}}\n"
                ),
            }),
            templates: vec![SourceFile {
                path: "templates/lead-assigned.email.hbs".into(),
                text: "---\nsubject: New lead {{lead.id}} for {{rep.name}}\nclass: transactional\n---\n<p>{{contact.email}}: {{lead.why}}</p>\n".into(),
            }],
            ..Sources::default()
        }
        };
        let (catalog, diagnostics) = compile(&sales(""));
        let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:#?}");
        assert!(shown[0].contains("warning[J053]: nobody tells rep `bo`"), "{shown:#?}");
        assert!(catalog.sales.is_some(), "a warning keeps sales.yaml");
        let (catalog, diagnostics) = compile(&sales("    notify:\n      email: lead-asigned\n"));
        let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(
                |d| d.starts_with("sales.yaml:5:14: error[J053]: no email template `lead-asigned`")
                    && d.contains("did you mean `lead-assigned`?")
            ),
            "{shown:#?}"
        );
        assert!(catalog.sales.is_some());
        let (catalog, diagnostics) = compile(&sales(
            "    notify:\n      email: lead-assigned\n      webhook: {url: \"https://oapi.dingtalk.com/robot/send?access_token={{rep.id}}\"}\n",
        ));
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let team = &catalog.sales.unwrap().teams["inbound"];
        assert!(team.notify.webhook.is_some());
    }

    #[test]
    fn a_journey_may_tighten_the_workspace_guardrails_but_not_loosen_them() {
        let guardrails = Guardrails {
            quiet_hours: Some("21:00-08:00".parse().unwrap()),
            frequency_cap: Some("3 per 7d".parse().unwrap()),
        };
        let journey = |settings: &str| Sources {
            journeys: vec![SourceFile {
                path: "journeys/j.yaml".into(),
                text: format!("id: j\ntrigger: {{event: E}}\nsettings:\n{settings}steps:\n  - id: tag\n    tag: x\n"),
            }],
            ..Sources::default()
        };
        let tighter = journey("  quiet_hours: \"20:00-09:00\"\n  frequency_cap: 1 per 1d\n");
        let (catalog, diagnostics) = compile_with(&tighter, &guardrails);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(catalog.guardrails, guardrails);

        let looser = journey("  quiet_hours: \"22:00-07:00\"\n  frequency_cap: 5 per 7d\n");
        let (catalog, diagnostics) = compile_with(&looser, &guardrails);
        assert!(catalog.journeys.is_empty());
        let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert!(
            shown[0].starts_with("journeys/j.yaml:4:16: error[J027]: quiet hours 22:00-07:00"),
            "{shown:#?}"
        );
        assert!(
            shown[0].contains("write a range that includes 21:00-08:00"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with("journeys/j.yaml:5:18: error[J027]: frequency cap `5 per 1w`"),
            "{shown:#?}"
        );
        assert!(shown[1].contains("write at most 3 per 1w"), "{shown:#?}");

        let (_, diagnostics) = compile(&looser);
        assert!(
            diagnostics.is_empty(),
            "without workspace guardrails there is nothing to loosen"
        );
    }
}
