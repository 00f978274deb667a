//! `branch`: the first arm whose `when` is true, else `else`; the history says why.

use crate::engine::transition::{Mover, Position};
use crate::journey::model::{BranchArm, StepIndex, Target};

pub(super) fn run(mover: &mut Mover<'_>, step: StepIndex, arms: &[BranchArm], otherwise: Target) -> Position {
    let view = mover.world.contact.facts_view();
    let facts = mover.facts_now(&view);
    let mut reasons = Vec::new();
    let mut chosen = otherwise;
    let mut matched = false;
    for arm in arms {
        let result = arm.when.eval_bool(&facts);
        let explained = arm.when.explain(&facts);
        let verdict = match &result {
            Ok(b) => b.to_string(),
            Err(error) => format!("error ({error}), so false"),
        };
        reasons.push(format!(
            "`{}` is {verdict}{}",
            arm.when.source(),
            if explained.is_empty() {
                String::new()
            } else {
                format!(" ({explained})")
            }
        ));
        if result == Ok(true) {
            chosen = arm.goto;
            matched = true;
            break;
        }
    }
    if !matched {
        reasons.push("else".into());
    }
    let detail = format!("{} -> {}", reasons.join("; "), mover.journey.target_name(chosen));
    mover.record(step, "branched", detail);
    mover.go(chosen)
}
