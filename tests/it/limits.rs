//! The limits of `nurture::limits` at their boundaries: at the limit the input is accepted, one
//! over it is refused with a clear error (a `400` naming the field over real HTTP, `J008` at the
//! file, line and column from the compiler). The per-message event limits are tested one by one
//! in `src/events/segment_limits_tests.rs`; here the API shows how they reach a client.

use crate::support::{Mode, TestEnv, http, root, spawn_api, test_config};
use nurture::engine::SystemClock;
use nurture::journey::templates::Templates;
use nurture::journey::yaml;
use nurture::journey::{SourceFile, Sources, compile};
use nurture::limits::*;
use serde_json::{Value, json};
use std::sync::Arc;

fn journey(text: String) -> Vec<String> {
    let (_, diagnostics) = compile(&Sources {
        journeys: vec![SourceFile {
            path: "journeys/j.yaml".into(),
            text,
        }],
        ..Sources::default()
    });
    diagnostics.iter().map(ToString::to_string).collect()
}

fn over_limit(shown: &[String]) -> Vec<&String> {
    shown.iter().filter(|d| d.contains("[J008]")).collect()
}

const SMALL: &str = "id: j\ntrigger: {event: E}\nsteps:\n  - id: t\n    tag: x\n";

#[test]
fn a_journey_file_is_at_most_256_kb() {
    let padded = |size: usize| {
        let mut text = SMALL.to_string();
        text.push('#');
        text.push_str(&"x".repeat(size - text.len() - 1));
        text.push('\n');
        assert_eq!(text.len(), size);
        text
    };
    assert_eq!(journey(padded(MAX_YAML_FILE_BYTES)), Vec::<String>::new());
    let shown = journey(padded(MAX_YAML_FILE_BYTES + 1));
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with("journeys/j.yaml:1:1: error[J008]: this file is 257 KB; a YAML file is at most 256 KB"),
        "{shown:#?}"
    );
}

#[test]
fn yaml_nests_at_most_32_levels() {
    // The top-level mapping is the first level.
    let nested = |levels: usize| format!("a: {}{}\n", "[".repeat(levels - 1), "]".repeat(levels - 1));
    assert!(yaml::parse(&nested(MAX_YAML_DEPTH)).is_ok());
    let error = yaml::parse(&nested(MAX_YAML_DEPTH + 1)).unwrap_err();
    assert!(error.limit);
    assert_eq!((error.pos.line, error.pos.col), (1, 4 + MAX_YAML_DEPTH as u32 - 1));
    // An alias counts as deep as what it repeats.
    let text = format!("a: &a {}{}\nb: [*a]\n", "[".repeat(31), "]".repeat(31));
    let error = yaml::parse(&text).unwrap_err();
    assert!(error.limit && error.pos.line == 2, "{error:?}");
    let shown = journey(format!("{SMALL}x: {}{}\n", "[".repeat(40), "]".repeat(40)));
    assert!(
        shown[0].starts_with("journeys/j.yaml:6:35: error[J008]: mappings and lists nest deeper than 32 levels here"),
        "{shown:#?}"
    );
}

#[test]
fn aliases_repeat_at_most_100_000_values() {
    // The root, two keys, two lists, n values and m aliases of n + 1 values each:
    // (m + 1)(n + 1) + 4 values, exactly the limit for n = 1281, m = 77.
    let text = |aliases: usize| {
        format!(
            "a: &a [{}1]\nb: [{}*a]\n",
            "1, ".repeat(1280),
            "*a, ".repeat(aliases - 1)
        )
    };
    assert!(yaml::parse(&text(77)).is_ok());
    let error = yaml::parse(&text(78)).unwrap_err();
    assert!(
        error.limit && error.message.contains("more than 100000 values"),
        "{error:?}"
    );
    // A "billion laughs": nine lines that would expand to 10^9 values are refused at once.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let previous = format!("*a{}", level - 1);
        laughs.push_str(&format!("a{level}: &a{level} [{}]\n", vec![previous; 10].join(", ")));
    }
    let shown = journey(laughs);
    assert_eq!(over_limit(&shown).len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with("journeys/j.yaml:5:45: error[J008]: the file has more than 100000 values"),
        "{shown:#?}"
    );
}

fn condition(source: &str) -> Vec<String> {
    journey(format!(
        "id: j\ntrigger: {{event: E}}\nexit_when: '{source}'\nsteps:\n  - id: t\n    tag: x\n"
    ))
}

#[test]
fn a_condition_is_at_most_2000_characters() {
    let long = |length: usize| format!("traits.x == \"{}\"", "a".repeat(length - 14));
    assert_eq!(long(MAX_CONDITION_CHARS).len(), MAX_CONDITION_CHARS);
    assert_eq!(condition(&long(MAX_CONDITION_CHARS)), Vec::<String>::new());
    let shown = condition(&long(MAX_CONDITION_CHARS + 1));
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with(
            "journeys/j.yaml:3:2013: error[J008]: in `exit_when`: the condition is 2001 characters; a condition is at most 2000"
        ),
        "{shown:#?}"
    );
}

#[test]
fn a_condition_nests_at_most_32_levels() {
    // Brackets and prefix operators are counted before parsing; calls and operators after.
    let brackets = |levels: usize| format!("{}true{}", "(".repeat(levels), ")".repeat(levels));
    let negations = |levels: usize| format!("{}true", "!".repeat(levels));
    // `==` and the string are two levels of their own.
    let calls = |levels: usize| {
        format!(
            "{}\"a\"{} == \"a\"",
            "string(".repeat(levels - 2),
            ")".repeat(levels - 2)
        )
    };
    // `>` is one level, each `+` another (`&&` and `||` chains are balanced, so barely deepen).
    let sum = |levels: usize| format!("score{} > 0", " + 1".repeat(levels - 2));
    for (what, write) in [
        ("brackets", &brackets as &dyn Fn(usize) -> String),
        ("negations", &negations),
        ("calls", &calls),
        ("a sum", &sum),
    ] {
        assert_eq!(condition(&write(MAX_CONDITION_DEPTH)), Vec::<String>::new(), "{what}");
        let shown = condition(&write(MAX_CONDITION_DEPTH + 1));
        assert_eq!(shown.len(), 1, "{what}: {shown:#?}");
        assert!(
            shown[0].contains("error[J008]: in `exit_when`: the condition nests deeper than 32 levels here"),
            "{what}: {shown:#?}"
        );
    }
}

fn templates(files: &[(&str, String)]) -> Vec<String> {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(path, text)| SourceFile {
            path: path.to_string(),
            text: text.clone(),
        })
        .collect();
    let mut diagnostics = Vec::new();
    Templates::compile(&files, &mut diagnostics);
    diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn a_template_is_at_most_256_kb() {
    let sized = |size: usize| format!("<p>{}</p>", "x".repeat(size - 7));
    assert_eq!(
        templates(&[("templates/partials/big.hbs", sized(MAX_TEMPLATE_BYTES))]),
        Vec::<String>::new()
    );
    let shown = templates(&[("templates/partials/big.hbs", sized(MAX_TEMPLATE_BYTES + 1))]);
    assert_eq!(
        shown,
        [
            "templates/partials/big.hbs:1:1: error[J008]: this template is 257 KB; a template is at most 256 KB\n  hint: move repeated parts into partials, and images and styles to links"
        ]
    );
}

#[test]
fn template_blocks_nest_at_most_32_levels() {
    let nested = |levels: usize| format!("{}x{}", "{{#if a}}".repeat(levels), "{{/if}}".repeat(levels));
    assert_eq!(
        templates(&[("templates/partials/deep.hbs", nested(MAX_TEMPLATE_DEPTH))]),
        Vec::<String>::new()
    );
    let shown = templates(&[("templates/partials/deep.hbs", nested(MAX_TEMPLATE_DEPTH + 1))]);
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with(
            "templates/partials/deep.hbs:1:289: error[J008]: blocks and subexpressions nest deeper than 32 levels here"
        ),
        "{shown:#?}"
    );
    let calls = |levels: usize| {
        format!(
            "{{{{default {}1{} 2}}}}",
            "(default ".repeat(levels),
            " 2)".repeat(levels)
        )
    };
    assert_eq!(
        templates(&[("templates/partials/deep.hbs", calls(MAX_TEMPLATE_DEPTH))]),
        Vec::<String>::new()
    );
    assert_eq!(
        over_limit(&templates(&[(
            "templates/partials/deep.hbs",
            calls(MAX_TEMPLATE_DEPTH + 1)
        )]))
        .len(),
        1
    );
}

#[test]
fn a_project_adds_at_most_500_tags_of_at_most_100_characters() {
    let tags = |count: usize, length: usize| {
        let steps: String = (0..count)
            .map(|i| format!("  - id: t{i}\n    tag: {}{i:04}\n", "t".repeat(length - 4)))
            .collect();
        journey(format!("id: j\ntrigger: {{event: E}}\nsteps:\n{steps}"))
    };
    assert_eq!(tags(MAX_PROJECT_TAGS, MAX_TAG_CHARS), Vec::<String>::new());
    let shown = tags(MAX_PROJECT_TAGS + 1, 10);
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with(
            "journeys/j.yaml:1004:5: error[J008]: the project's journeys add more than 500 different tags"
        ),
        "{shown:#?}"
    );
    let shown = tags(1, MAX_TAG_CHARS + 1);
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with(
            "journeys/j.yaml:5:10: error[J008]: the tag `tttttttttttttttttttt…` is longer than 100 characters"
        ),
        "{shown:#?}"
    );
}

// Over HTTP: what a client sees.

const KEY: &str = "wk-limits";

async fn post(base: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> crate::support::Response {
    let auth = format!("Bearer {KEY}");
    let mut all = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    all.extend_from_slice(headers);
    http(base, "POST", path, &all, body).await
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_names_the_field_past_a_limit_and_stores_nothing_of_it() {
    let mut config = test_config(Mode::Embedded, &root().join("tests/fixtures/engine/journeys")).await;
    config.write_keys = vec![KEY.into()];
    let env = TestEnv::start(config, Arc::new(SystemClock), false).await;
    let base = spawn_api(&env).await;

    let note = |length: usize| json!({"userId": "u1", "event": "Noted", "properties": {"note": "x".repeat(length)}});
    let at = post(&base, "/v1/track", &[], note(MAX_STRING_CHARS).to_string().as_bytes()).await;
    assert_eq!(at.status, 200, "{}", String::from_utf8_lossy(&at.body));
    let over = post(
        &base,
        "/v1/track",
        &[],
        note(MAX_STRING_CHARS + 1).to_string().as_bytes(),
    )
    .await;
    assert_eq!(over.status, 400);
    let error = &over.json()["error"];
    assert_eq!(error["field"], "properties.note", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("longer than 8192 characters"),
        "{error}"
    );

    // In a batch, the message past a limit is refused alone, by index; the others are stored.
    let deep = (0..MAX_JSON_DEPTH).fold(json!(1), |inner, _| json!({ "a": inner }));
    let batch = json!({"batch": [
        {"type": "identify", "userId": "u2", "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "u3", "traits": {"address": deep}},
    ]});
    let answer = post(&base, "/v1/batch", &[], batch.to_string().as_bytes()).await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(
        body["rejected"][0]["field"],
        format!("batch[1].traits.address{}", ".a".repeat(MAX_JSON_DEPTH - 1)),
        "{body}"
    );
    let pool = &env.engine.store.pool;
    let stored: Vec<String> = sqlx::query_scalar("SELECT value FROM identities WHERE kind = 'user_id' ORDER BY value")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    assert!(
        stored.contains(&"u2".to_string()) && !stored.contains(&"u3".to_string()),
        "{stored:?}"
    );

    // A small gzip body that inflates past the batch limit is refused without inflating it whole.
    let padding = " ".repeat(64 * 1024 * 1024);
    let bomb = gzip(format!("{{\"batch\": [{padding}]}}").as_bytes());
    let answer = post(&base, "/v1/batch", &[("content-encoding", "gzip")], &bomb).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["field"], "body");

    // At the request limit the body is read (one byte over is a 413 before it is read, tested
    // with the API's other limits in `edge`).
    let answer: Value = post(&base, "/v1/batch", &[], &vec![b' '; MAX_REQUEST_BYTES])
        .await
        .json();
    assert_eq!(
        answer["error"]["field"], "body",
        "at the limit the body is read, and refused for its size: {answer}"
    );
    env.stop().await;
}
