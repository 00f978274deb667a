//! `assign_to_sales`: an effect; the runner picks the rep (`channels/assign.rs`).

use crate::engine::transition::{Effect, Mover, Position};
use crate::journey::model::StepIndex;

pub(super) fn run(mover: &mut Mover<'_>, step: StepIndex, team: &str) -> Position {
    mover.effect(step, Effect::AssignToSales { team: team.into() });
    mover.record(step, "assigned", format!("team {team}"));
    mover.go(mover.journey.steps[step].next)
}
