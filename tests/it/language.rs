//! The journey language: every broken fixture is rejected at the right place, with the right
//! words, and the shipped journeys compile cleanly.

use crate::support::{expect_file, nurture, root, stderr, stdout};
use std::collections::BTreeSet;

const BAD: &str = "tests/fixtures/bad";

fn validate_bad(extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "validate",
        "tests/fixtures/bad/journeys",
        "--templates",
        "tests/fixtures/bad/templates",
        "--sales",
        "tests/fixtures/bad/sales.yaml",
        "--scoring",
        "tests/fixtures/bad/scoring.yaml",
    ];
    args.extend_from_slice(extra);
    nurture(&root(), &args)
}

#[test]
fn every_broken_fixture_is_reported_with_its_line_and_a_hint() {
    let output = validate_bad(&[]);
    assert_eq!(output.status.code(), Some(1), "validate exits 1 when there are errors");
    expect_file(&root().join(BAD).join("expected.txt"), &stderr(&output));
}

#[test]
fn each_broken_file_has_an_error_and_the_sound_templates_have_none() {
    let output = validate_bad(&["--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON report");
    assert_eq!(report["ok"], false);
    let files_with_errors: BTreeSet<String> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["file"].as_str().unwrap().to_string())
        .collect();
    for entry in std::fs::read_dir(root().join(BAD).join("journeys")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name == "duplicate-journey-a.yaml" {
            continue; // The first of two journeys with one id is fine; the second is reported.
        }
        let path = format!("{BAD}/journeys/{name}");
        assert!(files_with_errors.contains(&path), "{path} should be rejected");
    }
    for bad_template in [
        "unknown-variable.email.hbs",
        "no-unsubscribe.email.hbs",
        "syntax-error.email.hbs",
        "too-long.sms.hbs",
    ] {
        assert!(
            files_with_errors.contains(&format!("{BAD}/templates/{bad_template}")),
            "{bad_template} should be rejected"
        );
    }
    for sound in ["welcome.email.hbs", "reminder.sms.hbs", "partials/footer.hbs"] {
        assert!(
            !files_with_errors.contains(&format!("{BAD}/templates/{sound}")),
            "{sound} is sound"
        );
    }
    let first = &report["diagnostics"][0];
    for field in ["file", "line", "column", "severity", "code", "message"] {
        assert!(!first[field].is_null(), "diagnostics carry `{field}`: {first}");
    }
}

#[test]
fn the_shipped_project_validates_cleanly() {
    let output = nurture(&root(), &["validate"]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&nurture(&root(), &["validate", "--format", "json"]))).unwrap();
    let ids: BTreeSet<&str> = report["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    for id in [
        "whitepaper-nurture",
        "abandoned-cart",
        "regional-event-invitation",
        "dormant-reactivation",
        "sql-handoff",
    ] {
        assert!(ids.contains(id), "shipped journey {id} compiles: {ids:?}");
    }
}

#[test]
fn a_journey_version_ignores_comments_and_key_order() {
    use nurture::journey::{SourceFile, Sources, compile};
    let version = |text: &str| {
        let sources = Sources {
            journeys: vec![SourceFile {
                path: "j.yaml".into(),
                text: text.into(),
            }],
            ..Sources::default()
        };
        let (catalog, diagnostics) = compile(&sources);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        catalog.journeys[0].version.clone()
    };
    let a = version("id: a\ntrigger: {event: X}\nsteps:\n  - {id: t, tag: x}\n");
    let b = version("# a comment\ntrigger:\n  event: X\nid: a\nsteps:\n  - tag: x\n    id: t\n");
    let c = version("id: a\ntrigger: {event: X}\nsteps:\n  - {id: t, tag: y}\n");
    assert_eq!(a, b);
    assert_ne!(a, c);
}
