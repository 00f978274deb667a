//! The compiled state machine as a diagram: Mermaid for docs and pull requests, DOT for Graphviz.

use super::model::{Journey, StepKind, Target};
use std::fmt::Write;

fn node_name(target: Target) -> String {
    match target {
        Target::Step(index) => format!("s{index}"),
        Target::End => "finish".into(),
    }
}

fn escape(text: &str) -> String {
    text.replace('"', "'")
}

pub fn mermaid(journey: &Journey) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "flowchart TD");
    let _ = writeln!(
        out,
        "    start([\"{}\"])",
        escape(&format!("{}: {}", journey.id, journey.trigger))
    );
    let _ = writeln!(out, "    start --> {}", node_name(journey.entry()));
    for (index, step) in journey.steps.iter().enumerate() {
        let label = escape(&format!("{}<br/>{}", step.id, step.kind.describe()));
        let shape = match step.kind {
            StepKind::Branch { .. } | StepKind::Split { .. } => format!("{{\"{label}\"}}"),
            _ if step.kind.waits() => format!("[/\"{label}\"/]"),
            _ => format!("[\"{label}\"]"),
        };
        let _ = writeln!(out, "    s{index}{shape}");
    }
    let _ = writeln!(out, "    finish([end])");
    for (index, step) in journey.steps.iter().enumerate() {
        for transition in step.transitions() {
            let label = escape(&transition.label);
            let _ = writeln!(out, "    s{index} -->|\"{label}\"| {}", node_name(transition.target));
        }
    }
    out
}

pub fn dot(journey: &Journey) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", journey.id);
    let _ = writeln!(out, "    rankdir=TB;");
    let _ = writeln!(
        out,
        "    start [shape=oval, label=\"{}\"];",
        escape(&format!("{}: {}", journey.id, journey.trigger))
    );
    let _ = writeln!(out, "    finish [shape=oval, label=\"end\"];");
    for (index, step) in journey.steps.iter().enumerate() {
        let shape = match step.kind {
            StepKind::Branch { .. } | StepKind::Split { .. } => "diamond",
            _ if step.kind.waits() => "parallelogram",
            _ => "box",
        };
        let label = escape(&format!("{}\\n{}", step.id, step.kind.describe()));
        let _ = writeln!(out, "    s{index} [shape={shape}, label=\"{label}\"];");
    }
    let _ = writeln!(out, "    start -> {};", node_name(journey.entry()));
    for (index, step) in journey.steps.iter().enumerate() {
        for transition in step.transitions() {
            let _ = writeln!(
                out,
                "    s{index} -> {} [label=\"{}\"];",
                node_name(transition.target),
                escape(&transition.label)
            );
        }
    }
    out.push_str("}\n");
    out
}
