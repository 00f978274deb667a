//! What the fuzzers run on each input, shared by the property tests in `fuzz.rs` and the
//! libFuzzer targets in `fuzz/` (which include this file): compile, evaluate, parse, render, and
//! throw the results away. A panic or a hang anywhere below is a finding.

use nurture::events::segment::{self, Kind};
use nurture::expr::{ContactFacts, EventFacts, Expr, Facts, Place, Want};
use nurture::journey::templates::{Templates, html_to_text, sms_segments};
use nurture::journey::{SourceFile, Sources, compile, graph};
use serde_json::{Map, Value as Json, json};

/// Compiles a project and draws its journeys.
pub fn compile_everything(sources: &Sources) {
    let (catalog, _diagnostics) = compile(sources);
    for journey in &catalog.journeys {
        let _ = graph::mermaid(journey);
        let _ = graph::dot(journey);
    }
}

/// One text as a journey, `sales.yaml` and `scoring.yaml` at once.
pub fn compile_text(text: &str) {
    let file = |path: &str| SourceFile {
        path: path.into(),
        text: text.to_string(),
    };
    compile_everything(&Sources {
        journeys: vec![file("journeys/fuzz.yaml")],
        sales: Some(file("sales.yaml")),
        scoring: Some(file("scoring.yaml")),
        ..Sources::default()
    });
}

/// What a condition is evaluated against.
#[derive(Clone, Debug)]
pub struct World {
    pub score: i64,
    pub stage: String,
    pub tags: Vec<String>,
    pub traits: Map<String, Json>,
    pub properties: Map<String, Json>,
    pub inactive_days: i64,
    /// Seconds from 2026-11-23T14:00:00Z, any sign.
    pub now: i64,
}

impl World {
    /// A contact with a few traits, for inputs that bring no facts of their own.
    pub fn plain() -> World {
        World {
            score: 42,
            stage: "lead".into(),
            tags: vec!["vip".into()],
            traits: Map::from_iter([
                ("industry".to_string(), json!("retail")),
                ("x".to_string(), json!({"y": [1, "2"]})),
            ]),
            properties: Map::from_iter([("plan".to_string(), json!("pro"))]),
            inactive_days: 3,
            now: 0,
        }
    }
}

/// Compiles a condition in every place, for both results, and evaluates what compiles.
pub fn evaluate(source: &str, world: &World) {
    let now = chrono::DateTime::from_timestamp(1_795_442_400, 0).unwrap()
        + chrono::TimeDelta::try_seconds(world.now).unwrap_or_default();
    let event = EventFacts {
        name: "Signed Up".into(),
        properties: world.properties.clone(),
        timestamp: Some(now),
    };
    let contact = ContactFacts {
        id: "1".into(),
        email: Some("ada@example.com".into()),
        ..ContactFacts::default()
    };
    let facts = Facts {
        score: world.score,
        stage: &world.stage,
        tags: &world.tags,
        traits: &world.traits,
        contact: &contact,
        trigger: Some(&event),
        event: Some(&event),
        inactive_days: world.inactive_days,
        now,
        counter: &(),
    };
    for place in [
        Place::EventFilter { has_trigger: true },
        Place::Contact { has_trigger: true },
        Place::Audience,
    ] {
        for want in [Want::Bool, Want::Key] {
            if let Ok(expr) = Expr::compile(source, place, want) {
                let _ = expr.eval(&facts);
                let _ = expr.eval_bool(&facts);
                let _ = expr.explain(&facts);
            }
        }
    }
}

/// Reads a body within both limits and parses it as a batch and as every single call.
pub fn parse_every_way(body: &[u8], gzip: bool) {
    let now = chrono::DateTime::from_timestamp(1_795_442_400, 0).unwrap();
    let mut n = 0;
    let mut fresh = move || {
        n += 1;
        format!("generated-{n}")
    };
    for limit in [segment::MAX_MESSAGE_BYTES, segment::MAX_BATCH_BYTES] {
        let Ok(read) = segment::read_body(body, gzip, limit) else {
            continue;
        };
        let _ = segment::parse_batch(&read.json, now, &mut fresh);
        for kind in [
            Kind::Identify,
            Kind::Track,
            Kind::Page,
            Kind::Screen,
            Kind::Group,
            Kind::Alias,
        ] {
            let _ = segment::parse_single(&read.json, kind, now, &mut fresh);
        }
    }
}

/// A set of template files and the data to render them with.
#[derive(Clone, Debug)]
pub struct TemplateCase {
    pub subject: String,
    pub html: String,
    pub text: String,
    pub sms: String,
    pub partial_a: String,
    pub partial_b: String,
    pub inline: String,
    pub data: Json,
}

/// Compiles the case's templates and renders every one of them, and the inline template.
pub fn render_everything(case: &TemplateCase) {
    let file = |path: &str, text: String| SourceFile {
        path: path.into(),
        text,
    };
    let files = vec![
        file(
            "templates/fuzz.email.hbs",
            format!(
                "---\nsubject: \"{}\"\n---\n{}",
                case.subject.replace('"', "'"),
                case.html
            ),
        ),
        file("templates/fuzz.email.txt.hbs", case.text.clone()),
        file("templates/fuzz.sms.hbs", case.sms.clone()),
        file("templates/partials/a.hbs", case.partial_a.clone()),
        file("templates/partials/b.hbs", case.partial_b.clone()),
    ];
    let mut diagnostics = Vec::new();
    let templates = Templates::compile(&files, &mut diagnostics);
    let _ = templates.render_email("fuzz", Some("zh-CN"), &case.data);
    let _ = templates.render_sms("fuzz", None, &case.data);
    if Templates::check_inline(&case.inline).is_ok() {
        let _ = templates.render_inline(&case.inline, &case.data);
        let _ = templates.render_json(&json!({"text": case.inline, "list": [case.inline]}), &case.data);
    }
    let _ = html_to_text(&case.html);
    let _ = sms_segments(&case.sms);
}
