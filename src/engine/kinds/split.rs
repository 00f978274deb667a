//! `split`: a stable bucket per contact and step picks the arm, so a retry never switches sides.

use crate::engine::transition::{Mover, Position, split_bucket};
use crate::journey::model::{SplitArm, StepIndex, Target};

pub(super) fn run(mover: &mut Mover<'_>, step: StepIndex, arms: &[SplitArm]) -> Position {
    let journey = mover.journey;
    let bucket = split_bucket(&mover.world.contact.id, &journey.id, &journey.steps[step].id);
    let mut upper = 0u32;
    let mut chosen = arms.last().map(|a| a.goto).unwrap_or(Target::End);
    for arm in arms {
        upper += u32::from(arm.percent);
        if bucket < upper {
            chosen = arm.goto;
            break;
        }
    }
    mover.record(
        step,
        "split",
        format!("bucket {bucket} of 100 -> {}", journey.target_name(chosen)),
    );
    mover.go(chosen)
}
