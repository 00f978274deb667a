//! `wait_for: {event, where, timeout}`: hold the contact until the event or the timeout. The
//! event's arrival is handled by `transition` (`on_event`), with the journey's goal.

use crate::engine::transition::{Mover, Park, Position};
use crate::journey::model::{EventMatch, StepIndex, Target};
use crate::journey::values::Delay;

pub(super) fn enter(mover: &mut Mover<'_>, step: StepIndex, event: &EventMatch, timeout: Delay) -> Position {
    let until = mover.world.now + timeout.as_duration();
    mover.record(step, "waiting", format!("for \"{}\" up to {timeout}", event.event));
    Position::Parked {
        step,
        until,
        reason: Park::WaitFor,
    }
}

pub(super) fn time_out(
    mover: &mut Mover<'_>,
    step: StepIndex,
    event: &EventMatch,
    timeout: Delay,
    on_timeout: Target,
) -> Position {
    let detail = format!(
        "no \"{}\" within {timeout}; next: {}",
        event.event,
        mover.journey.target_name(on_timeout)
    );
    mover.record(step, "timed_out", detail);
    mover.go(on_timeout)
}
