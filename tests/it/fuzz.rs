//! Fuzzing inside `cargo test`: the journey compiler (YAML and CEL), CEL evaluation, the Segment
//! body parser (JSON and gzip) and template rendering get generated input, and must neither
//! panic nor hang. Each case runs on a thread of its own with the stack a server thread has
//! and a time limit, so a hang is a failure that names its input, not a stuck test.
//!
//! CI runs a fixed number of cases from a fixed seed (the same input every run). By hand:
//! `NURTURE_FUZZ_CASES=100000 NURTURE_FUZZ_SEED=random cargo test --release --test it fuzz:: -- --nocapture`.
//! Inputs are either built from the language's own words (`words()`) or the project's real
//! files with random edits; the `fuzz/` crate runs the same checks under libFuzzer (docs/fuzzing.md).

use crate::fuzz_checks::{
    TemplateCase, World, compile_everything, compile_text, evaluate, parse_every_way, render_everything,
};
use crate::support::root;
use nurture::expr::{Expr, Place, Want};
use nurture::journey::templates::Templates;
use nurture::journey::{SourceFile, Sources, compile};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{Map, Value as Json, json};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One case may take this long in a debug build on a busy machine; a hang takes forever.
const PER_CASE: Duration = Duration::from_secs(10);
/// The stack of a tokio worker thread, where the engine renders and compiles.
const STACK: usize = 2 * 1024 * 1024;

fn config(cases: u32) -> Config {
    let cases = std::env::var("NURTURE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    let seed = match std::env::var("NURTURE_FUZZ_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(seed) => RngSeed::Fixed(seed.parse().expect("NURTURE_FUZZ_SEED is a number or `random`")),
        None => RngSeed::Fixed(15),
    };
    Config {
        cases,
        rng_seed: seed,
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

/// Runs `check` on every generated input, each within `PER_CASE`, and reports how many ran.
fn fuzz<S>(name: &str, cases: u32, strategy: S, check: fn(&S::Value))
where
    S: Strategy,
    S::Value: Send + Clone + std::fmt::Debug + 'static,
{
    let started = Instant::now();
    let mut runner = TestRunner::new(config(cases));
    let executions = std::cell::Cell::new(0u64);
    let result = runner.run(&strategy, |input| {
        executions.set(executions.get() + 1);
        within_limits(input, check)
    });
    let executions = executions.get();
    println!(
        "fuzz {name}: {executions} executions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Err(error) = result {
        panic!("fuzz {name}: {error}");
    }
}

fn within_limits<T: Send + 'static>(input: T, check: fn(&T)) -> Result<(), TestCaseError> {
    let (done, wait) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            check(&input);
            let _ = done.send(());
        })
        .expect("a thread");
    match wait.recv_timeout(PER_CASE) {
        Ok(()) => {
            let _ = worker.join();
            Ok(())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker.join().err();
            let message = panic
                .as_ref()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("panicked: {message}")))
        }
        // The thread is left running: a hang cannot be stopped from outside.
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(TestCaseError::fail(format!("took longer than {PER_CASE:?}")))
        }
    }
}

/// Words of YAML, the journey language and CEL that random text is made of, besides the step
/// kinds and CEL functions (`words()` adds them).
const DICTIONARY: &[&str] = &[
    "\n",
    "\n  ",
    "\n    ",
    "\n- ",
    "  ",
    " ",
    ": ",
    ":",
    "- ",
    "-",
    "---\n",
    "...",
    "#",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!str ",
    "!tag ",
    "|\n  ",
    ">\n  ",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "\\",
    "\t",
    "\r",
    "\u{feff}",
    "~",
    "null",
    "id: j",
    "id",
    "name",
    "trigger",
    "event",
    "stage",
    "schedule",
    "audience",
    "where",
    "steps",
    "re_entry",
    "enrollment_key",
    "goal",
    "exit_when",
    "settings",
    "on_change",
    "migrate",
    "next",
    "on_timeout",
    "on_event",
    "else",
    "template",
    "timeout",
    "when",
    "goto",
    "percent",
    "team",
    "url",
    "method",
    "body",
    "headers",
    "time",
    "days",
    "end",
    "1h",
    "3d",
    "0s",
    "99999999999d",
    "-1h",
    "1.5h",
    "09:00",
    "25:61",
    "0 9 * * 1",
    "*/0 * * * *",
    "Asia/Shanghai",
    "Mars/Olympus",
    "quiet_hours",
    "\"21:00-08:00\"",
    "frequency_cap",
    "3 per 7d",
    "0 per 0d",
    "cost",
    "currency",
    "CNY",
    "tracking",
    "true",
    "false",
    "0",
    "-0",
    "1e400",
    "NaN",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "1.0",
    "0x10",
    "\"a\"",
    "'b'",
    "b\"c\"",
    "r\"d\"",
    "\"\"\"e\"\"\"",
    "\"\\u0000\"",
    "\"\\xff\"",
    "traits",
    "traits.industry",
    "traits.x.y",
    "event.properties",
    "event.properties.plan",
    "event.name",
    "trigger.properties.cart_id",
    "contact.email",
    "contact",
    "tags",
    "now",
    "inactive_days",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "+",
    "*",
    "/",
    "%",
    "?",
    "in",
    ".",
    "(",
    ")",
    "bytes",
    "exists",
    "all",
    "map",
    "filter",
    "exists_one",
    "\"(a*)*b\"",
    "\"[\"",
    "\"1h\"",
    "\"-1s\"",
    "\"2026-11-23T14:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"0001-01-01T00:00:00Z\"",
    "\"100000000h\"",
    "\"Signed Up\"",
    "\"lead\"",
    "\"customer\"",
    "Ⅻ",
    "中文",
    "😀",
    "\u{0}",
    "\u{7f}",
    "\u{200b}",
];

/// `DICTIONARY` with the step kinds and CEL functions.
fn words() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        let mut words = DICTIONARY.to_vec();
        words.extend(nurture::journey::StepKind::KEYWORDS);
        words.extend(nurture::expr::FUNCTIONS);
        words
    })
}

/// Handlebars and HTML words that random templates are made of.
const TEMPLATE_WORDS: &[&str] = &[
    "{{",
    "}}",
    "{{{",
    "}}}",
    "{{{{raw}}}}",
    "{{{{/raw}}}}",
    "{{#if ",
    "{{/if}}",
    "{{#unless ",
    "{{/unless}}",
    "{{#each ",
    "{{/each}}",
    "{{#with ",
    "{{/with}}",
    "{{else}}",
    "{{^}}",
    "{{> ",
    "{{#> ",
    "{{/",
    "{{!-- ",
    "--}}",
    "{{! ",
    "{{~",
    "~}}",
    "{{@index}}",
    "{{this}}",
    "{{.}}",
    "{{../",
    "@root.",
    "@key",
    "@first",
    "this",
    "a",
    "b",
    "traits.name",
    "traits",
    "traits.x.y",
    "contact.email",
    "contact.id",
    "trigger.properties",
    "event.name",
    "tags",
    "score",
    "unsubscribe_url",
    "journey.id",
    "lead.id",
    "rep.name",
    "now",
    "nothing",
    "(",
    ")",
    "lookup ",
    "default ",
    "upper ",
    "lower ",
    "eq ",
    "len ",
    "and ",
    "or ",
    "not ",
    "=",
    "\"",
    "'",
    " ",
    "\n",
    "x",
    "1",
    "-1",
    "1.5",
    "true",
    "null",
    "[0]",
    ".[a b]",
    "as |item|",
    "<a href=\"",
    "\">",
    "</a>",
    "<p>",
    "</p>",
    "<br>",
    "<li>",
    "<style>",
    "</style>",
    "<head>",
    "</head>",
    "<a href=x>",
    "<",
    ">",
    "&amp;",
    "&lt;",
    "&nbsp;",
    "€",
    "中",
    "😀",
    "\u{0}",
    "\\{{",
    "}}}}",
];

fn text_of(words: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            9 => proptest::sample::select(words).prop_map(str::to_string),
            1 => "\\PC{0,4}",
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

/// Random edits to a real file: the inputs closest to what a marketer writes, and mistakes in it.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, &'static str),
    Duplicate(usize, usize),
    Replace(usize, usize, &'static str),
}

fn edits(words: &'static [&'static str]) -> impl Strategy<Value = Vec<Edit>> {
    let word = proptest::sample::select(words);
    let edit = prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete(at, len)),
        (any::<usize>(), word.clone()).prop_map(|(at, word)| Edit::Insert(at, word)),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Edit::Duplicate(at, len)),
        (any::<usize>(), 1usize..20, word).prop_map(|(at, len, word)| Edit::Replace(at, len, word)),
    ];
    proptest::collection::vec(edit, 1..8)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_string();
    let boundary = |text: &str, at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    for edit in edits {
        match *edit {
            Edit::Delete(at, len) | Edit::Replace(at, len, _) | Edit::Duplicate(at, len) => {
                let start = boundary(&text, at);
                let end = boundary(&text, (start + len).min(text.len()));
                let piece = text[start..end].to_string();
                match *edit {
                    Edit::Delete(..) => text.replace_range(start..end, ""),
                    Edit::Replace(_, _, word) => text.replace_range(start..end, word),
                    _ => text.insert_str(end, &piece),
                }
            }
            Edit::Insert(at, word) => {
                let at = boundary(&text, at);
                text.insert_str(at, word);
            }
        }
    }
    text
}

/// The project's own journeys, `sales.yaml`, `scoring.yaml` and templates: what edits start from.
fn project() -> &'static Sources {
    static PROJECT: OnceLock<Sources> = OnceLock::new();
    PROJECT.get_or_init(|| {
        let base = root();
        nurture::project::load_sources(
            &[base.join("journeys")],
            &base.join("templates"),
            &base.join("sales.yaml"),
            &base.join("scoring.yaml"),
        )
        .expect("the project's files")
    })
}

/// The project with each template replaced by the smallest one of its kind: journeys find the
/// templates they name, and compiling them costs little (the templates have fuzzing of their own).
fn project_with_stub_templates() -> &'static Sources {
    static PROJECT: OnceLock<Sources> = OnceLock::new();
    PROJECT.get_or_init(|| {
        let mut sources = project().clone();
        for file in &mut sources.templates {
            file.text = if file.path.ends_with(".email.hbs") {
                "---\nsubject: S\n---\n{{unsubscribe_url}}\n".into()
            } else {
                "x".into()
            };
        }
        sources
    })
}

// The journey compiler.

#[test]
fn the_compiler_survives_edited_journeys() {
    let journeys = project().journeys.len();
    fuzz(
        "edited journeys",
        300,
        (0..journeys + 2, edits(words())),
        |(which, edits)| {
            // One file edited, and only that one compiled with what it refers to.
            let mut sources = project_with_stub_templates().clone();
            let journeys = std::mem::take(&mut sources.journeys);
            match *which {
                n if n < journeys.len() => {
                    let mut journey = journeys[n].clone();
                    journey.text = apply(&journey.text, edits);
                    sources.journeys.push(journey);
                }
                n if n == sources.journeys.len() => {
                    let sales = sources.sales.as_mut().expect("sales.yaml");
                    sales.text = apply(&sales.text, edits);
                }
                _ => {
                    let scoring = sources.scoring.as_mut().expect("scoring.yaml");
                    scoring.text = apply(&scoring.text, edits);
                }
            }
            compile_everything(&sources);
        },
    );
}

#[test]
fn the_compiler_survives_random_text() {
    fuzz("random journeys", 500, text_of(words(), 120), |text| compile_text(text));
}

// CEL: compiled in every place, and evaluated when it compiles.

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(Json::from),
        proptest::sample::select(
            &[
                "",
                "a",
                "automation",
                "2026-11-23T14:00:00Z",
                "1h",
                "中文",
                "+8613800000000"
            ][..]
        )
        .prop_map(Json::from),
        "\\PC{0,12}".prop_map(Json::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    proptest::sample::select(&["industry", "plan", "x", "y", "name", "email", "a", "b"][..])
                        .prop_map(str::to_string),
                    "\\PC{0,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|map| Json::Object(map.into_iter().collect())),
        ]
    })
}

fn json_map() -> impl Strategy<Value = Map<String, Json>> {
    json_value().prop_map(|value| match value {
        Json::Object(map) => map,
        other => Map::from_iter([("x".to_string(), other)]),
    })
}

fn world() -> impl Strategy<Value = World> {
    (
        any::<i64>(),
        proptest::sample::select(&["lead", "mql", "customer", ""][..]),
        proptest::collection::vec("[a-z-]{0,8}", 0..4),
        json_map(),
        json_map(),
        any::<i64>(),
        -5_000_000_000_000i64..5_000_000_000_000,
    )
        .prop_map(|(score, stage, tags, traits, properties, inactive_days, now)| World {
            score,
            stage: stage.into(),
            tags,
            traits,
            properties,
            inactive_days,
            now,
        })
}

#[test]
fn conditions_compile_and_evaluate_without_panics() {
    fuzz(
        "CEL conditions",
        600,
        (text_of(words(), 24), world()),
        |(source, world)| evaluate(source, world),
    );
}

// The Segment body parser.

fn segment_message() -> impl Strategy<Value = Json> {
    let key = proptest::sample::select(
        &[
            "type",
            "userId",
            "anonymousId",
            "event",
            "properties",
            "traits",
            "context",
            "timestamp",
            "sentAt",
            "messageId",
            "previousId",
            "groupId",
            "writeKey",
            "originalTimestamp",
            "name",
            "category",
            "batch",
        ][..],
    );
    let value = prop_oneof![
        proptest::sample::select(
            &[
                "track",
                "identify",
                "page",
                "screen",
                "group",
                "alias",
                "t",
                "i",
                "x",
                "u1",
                "",
                "2026-11-23T14:00:00Z",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z",
                "2026-11-23T14:00:00+14:00",
                "2026-02-30T00:00:00Z",
                "1970-01-01T00:00:00Z",
            ][..]
        )
        .prop_map(Json::from),
        json_value(),
    ];
    proptest::collection::btree_map(key, value, 0..10)
        .prop_map(|map| Json::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn gzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn the_segment_parser_survives_any_body() {
    let body = prop_oneof![
        // Messages, alone or in a batch with a shared context.
        segment_message().prop_map(|m| m.to_string().into_bytes()),
        (proptest::collection::vec(segment_message(), 0..6), segment_message()).prop_map(|(items, context)| {
            json!({"batch": items, "context": context, "sentAt": "2026-11-23T14:00:00Z"})
                .to_string()
                .into_bytes()
        }),
        // Anything at all, and JSON-looking text.
        proptest::collection::vec(any::<u8>(), 0..200),
        text_of(
            &[
                "{", "}", "[", "]", "\"", ":", ",", "batch", "type", "1e999", "-", "null", "\\u", "\\ud800"
            ],
            60
        )
        .prop_map(String::into_bytes),
    ];
    fuzz(
        "Segment bodies",
        1000,
        (body, any::<bool>(), any::<bool>(), any::<usize>(), any::<u8>()),
        |(body, gzip, corrupt, at, byte)| {
            parse_every_way(body, *gzip);
            // The same body gzipped, whole and then with one byte changed or cut short.
            let mut compressed = gzipped(body);
            parse_every_way(&compressed, true);
            if *corrupt {
                let at = at % compressed.len();
                compressed[at] ^= byte | 1;
            } else {
                compressed.truncate(at % compressed.len());
            }
            parse_every_way(&compressed, *gzip);
        },
    );
}

// Templates: compiled, then rendered with random data.

fn template_case() -> impl Strategy<Value = TemplateCase> {
    let words = || text_of(TEMPLATE_WORDS, 30);
    (
        text_of(TEMPLATE_WORDS, 8),
        words(),
        words(),
        words(),
        (words(), words()),
        words(),
        json_map(),
    )
        .prop_map(
            |(subject, html, text, sms, (partial_a, partial_b), inline, traits)| TemplateCase {
                subject: subject.replace('\n', " "),
                html,
                text,
                sms,
                partial_a,
                partial_b,
                inline,
                data: json!({
                    "contact": {"id": 1, "email": "ada@example.com"},
                    "traits": traits,
                    "tags": ["vip"],
                    "score": 10,
                    "unsubscribe_url": "https://x.example/u/t",
                    "trigger": {"name": "Signed Up", "properties": traits},
                }),
            },
        )
}

#[test]
fn templates_compile_and_render_without_panics() {
    fuzz("templates", 500, template_case(), render_everything);
}

#[test]
fn the_projects_templates_survive_edits_and_any_data() {
    let count = project().templates.len();
    fuzz(
        "edited templates",
        300,
        (0..count, edits(TEMPLATE_WORDS), json_map()),
        |(which, edits, traits)| {
            // The edited template, with the partials it may use.
            let project = &project().templates;
            let mut files: Vec<SourceFile> = project
                .iter()
                .enumerate()
                .filter(|(index, file)| index == which || file.path.contains("/partials/"))
                .map(|(_, file)| file.clone())
                .collect();
            let edited = files
                .iter_mut()
                .find(|file| file.path == project[*which].path)
                .expect("the edited file");
            edited.text = apply(&edited.text, edits);
            let mut diagnostics = Vec::new();
            let templates = Templates::compile(&files, &mut diagnostics);
            let data = json!({"contact": {"id": 1}, "traits": traits, "trigger": {"properties": traits}});
            for name in templates.emails.keys() {
                let _ = templates.render_email(name, Some("zh"), &data);
            }
            for name in templates.sms.keys() {
                let _ = templates.render_sms(name, None, &data);
            }
        },
    );
}

// Deep and long input, which random text rarely reaches: refused with the limit's error, never a
// stack overflow (which no test could catch: it aborts the process).

fn on_server_stack(check: fn(&())) {
    within_limits((), check).expect("no panic, within the time limit");
}

#[test]
fn deep_yaml_is_refused_at_its_place() {
    on_server_stack(|_| {
        for text in [
            format!("id: j\nsteps: {}{}", "[".repeat(20_000), "]".repeat(20_000)),
            format!("id: j\nsteps: {}1{}", "{a: ".repeat(20_000), "}".repeat(20_000)),
            (0..200).map(|i| format!("{}- \n", "  ".repeat(i))).collect(),
        ] {
            let (catalog, diagnostics) = compile(&Sources {
                journeys: vec![SourceFile {
                    path: "journeys/deep.yaml".into(),
                    text,
                }],
                ..Sources::default()
            });
            assert!(catalog.journeys.is_empty());
            let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            assert!(
                shown
                    .iter()
                    .any(|d| d.contains("error[J008]: mappings and lists nest deeper than 32 levels")),
                "{shown:#?}"
            );
        }
    });
}

#[test]
fn deep_conditions_are_refused() {
    on_server_stack(|_| {
        for source in [
            format!("{}true{}", "(".repeat(1_000), ")".repeat(1_000)),
            format!("{}true", "!".repeat(1_999)),
            format!("{}1 > 0", "-".repeat(1_990)),
            format!("{}1{} == 1", "[".repeat(900), "]".repeat(900)),
            format!("{}1{} == 1", "{1: ".repeat(400), "}".repeat(400)),
            format!("{} true", "true ? true : ".repeat(140)),
            format!("score > 0{}", " && score > 0".repeat(300)),
        ] {
            let error = Expr::compile(&source, Place::Audience, Want::Bool).unwrap_err();
            assert!(error[0].limit, "{source}: {error:?}");
        }
        // Long, flat conditions are within the limits.
        for source in [
            format!("score > 0{}", " && score > 0".repeat(25)),
            format!("score{} > 0", " + 1".repeat(25)),
            format!("traits.industry in [{}\"x\"]", "\"a\", ".repeat(300)),
        ] {
            assert!(source.len() <= nurture::limits::MAX_CONDITION_CHARS, "{}", source.len());
            let expr = Expr::compile(&source, Place::Audience, Want::Bool).expect(&source);
            evaluate(expr.source(), &World::plain());
        }
    });
}

#[test]
fn deep_templates_are_refused() {
    on_server_stack(|_| {
        for text in [
            format!("{}x{}", "{{#if a}}".repeat(5_000), "{{/if}}".repeat(5_000)),
            format!(
                "{{{{default {}1{} 2}}}}",
                "(default ".repeat(5_000),
                " 2)".repeat(5_000)
            ),
        ] {
            let mut diagnostics = Vec::new();
            let templates = Templates::compile(
                &[SourceFile {
                    path: "templates/deep.sms.hbs".into(),
                    text,
                }],
                &mut diagnostics,
            );
            assert!(templates.sms.is_empty());
            let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            assert!(shown.iter().any(|d| d.contains("error[J008]")), "{shown:#?}");
        }
    });
}

// Findings, each kept as a regression test.

/// Handlebars renders a partial that includes itself until the stack overflows, which aborts the
/// process: a cycle is an error, and its partial is not registered, so nothing renders it.
#[test]
fn a_partial_that_includes_itself_is_refused_and_never_rendered() {
    on_server_stack(|_| {
        let file = |path: &str, text: &str| SourceFile {
            path: path.into(),
            text: text.into(),
        };
        let files = [
            file("templates/partials/a.hbs", "A {{> b}}"),
            file("templates/partials/b.hbs", "B\n{{#if traits.x}}{{> a}}{{/if}}"),
            file("templates/partials/self.hbs", "{{> self}}"),
            file("templates/partials/fine.hbs", "{{> a}}"),
            file("templates/hi.sms.hbs", "{{> fine}} {{> self}}"),
        ];
        let mut diagnostics = Vec::new();
        let templates = Templates::compile(&files, &mut diagnostics);
        let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|d| d
                    .starts_with("templates/partials/b.hbs:2:17: error[J045]: partial `a` includes itself: a → b → a")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|d| d.starts_with(
                "templates/partials/self.hbs:1:1: error[J045]: partial `self` includes itself: self → self"
            )),
            "{shown:#?}"
        );
        assert_eq!(shown.len(), 2, "{shown:#?}");
        let rendered = templates.render_sms("hi", None, &json!({"traits": {"x": true}}));
        assert!(rendered.is_err(), "{rendered:?}");
    });
}
