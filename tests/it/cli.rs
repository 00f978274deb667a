//! The command line: graph output and errors for bad invocations.

use crate::support::{nurture, root, stderr, stdout};

#[test]
fn graph_draws_every_named_transition() {
    let output = nurture(&root(), &["graph", "journeys/whitepaper-nurture.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mermaid = stdout(&output);
    assert!(mermaid.starts_with("flowchart TD"), "{mermaid}");
    for edge in [
        "|\"timeout 3d\"|",
        "|\"on Email Link Clicked\"|",
        "|\"when score >= 50\"|",
        "|\"else\"| finish",
    ] {
        assert!(mermaid.contains(edge), "missing {edge} in\n{mermaid}");
    }
    let dot = stdout(&nurture(
        &root(),
        &["graph", "journeys/whitepaper-nurture.yaml", "--format", "dot"],
    ));
    assert!(dot.starts_with("digraph \"whitepaper-nurture\" {"), "{dot}");
    assert!(dot.contains("[label=\"timeout 3d\"]"), "{dot}");
}

#[test]
fn graph_of_a_broken_journey_prints_its_errors() {
    let output = nurture(
        &root(),
        &[
            "graph",
            "tests/fixtures/bad/journeys/unknown-step.yaml",
            "--templates",
            "tests/fixtures/bad/templates",
            "--sales",
            "tests/fixtures/bad/sales.yaml",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("unknown step `hand-to-sale`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_missing_path_is_a_usage_error() {
    let output = nurture(&root(), &["validate", "no/such/dir"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("does not exist"), "{}", stderr(&output));
}
