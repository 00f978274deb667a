//! Checks on the shape of a journey's state machine: every step can be reached, every loop
//! waits, and every step can still get to `end`.

use super::diagnostic::Diagnostic;
use super::model::{Journey, StepIndex, Target};

pub fn check_graph(journey: &Journey, diagnostics: &mut Vec<Diagnostic>) {
    let count = journey.steps.len();
    let edges: Vec<Vec<StepIndex>> = journey
        .steps
        .iter()
        .map(|step| {
            step.transitions()
                .into_iter()
                .filter_map(|t| match t.target {
                    Target::Step(index) => Some(index),
                    Target::End => None,
                })
                .collect()
        })
        .collect();
    let error = |index: StepIndex, code: &'static str, message: String, hint: String| {
        Diagnostic::error(&journey.file, journey.steps[index].pos, code, message).with_hint(hint)
    };

    // Reachable from the first step.
    let mut reachable = vec![false; count];
    let mut stack = vec![0];
    while let Some(index) = stack.pop() {
        if std::mem::replace(&mut reachable[index], true) {
            continue;
        }
        stack.extend(edges[index].iter().copied());
    }
    for (index, step) in journey.steps.iter().enumerate() {
        if !reachable[index] {
            diagnostics.push(error(
                index,
                "J013",
                format!("step `{}` can never be reached", step.id),
                "no step goes to it: jump to it with `next:`, `goto:` or `on_timeout:`, or delete it".into(),
            ));
        }
    }

    // A cycle among steps that do not wait would run forever without pause.
    let waits: Vec<bool> = journey.steps.iter().map(|s| s.kind.waits()).collect();
    let mut reported = vec![false; count];
    for start in 0..count {
        if waits[start] || reported[start] || !reachable[start] {
            continue;
        }
        if let Some(cycle) = find_cycle_without_wait(start, &edges, &waits) {
            for &index in &cycle {
                reported[index] = true;
            }
            let names: Vec<&str> = cycle
                .iter()
                .chain([&cycle[0]])
                .map(|&i| journey.steps[i].id.as_str())
                .collect();
            diagnostics.push(error(
                start,
                "J014",
                format!(
                    "loop with no wait: {} would repeat forever without pause",
                    names.join(" -> ")
                ),
                "put a `wait`, `wait_until` or `wait_for` step inside the loop, or leave it with a branch to `end`"
                    .into(),
            ));
        }
    }

    // Every step must still be able to reach `end`.
    let mut finishes = vec![false; count];
    let mut changed = true;
    while changed {
        changed = false;
        for (index, step) in journey.steps.iter().enumerate() {
            if finishes[index] {
                continue;
            }
            let out = step.transitions().iter().any(|t| match t.target {
                Target::End => true,
                Target::Step(next) => finishes[next],
            });
            if out {
                finishes[index] = true;
                changed = true;
            }
        }
    }
    for (index, step) in journey.steps.iter().enumerate() {
        if reachable[index] && !finishes[index] && !reported[index] {
            diagnostics.push(error(
                index,
                "J015",
                format!("from step `{}` the contact can never reach `end`", step.id),
                "its paths only loop back: add a branch arm, `else:` or `on_timeout:` that leads to `end`".into(),
            ));
            break;
        }
    }
}

/// A cycle through `start` made only of steps that do not wait, as step indices.
fn find_cycle_without_wait(start: StepIndex, edges: &[Vec<StepIndex>], waits: &[bool]) -> Option<Vec<StepIndex>> {
    let mut path = vec![start];
    let mut visited = vec![false; edges.len()];
    fn dfs(
        node: StepIndex,
        start: StepIndex,
        edges: &[Vec<StepIndex>],
        waits: &[bool],
        path: &mut Vec<StepIndex>,
        visited: &mut [bool],
    ) -> bool {
        for &next in &edges[node] {
            if next == start {
                return true;
            }
            if waits[next] || visited[next] {
                continue;
            }
            visited[next] = true;
            path.push(next);
            if dfs(next, start, edges, waits, path, visited) {
                return true;
            }
            path.pop();
        }
        false
    }
    dfs(start, start, edges, waits, &mut path, &mut visited).then_some(path)
}
