//! `wait: 2h` and `wait_until: {time, days}`: hold the contact until a time, then go on.

use crate::engine::transition::{Mover, Park, Position, zone_for};
use crate::journey::model::StepIndex;
use crate::journey::values::{Days, Delay, TimeOfDay, next_time_of_day};

pub(super) fn wait(mover: &mut Mover<'_>, step: StepIndex, delay: Delay) -> Position {
    let until = mover.world.now + delay.as_duration();
    mover.record(step, "waiting", format!("wait {delay}"));
    Position::Parked {
        step,
        until,
        reason: Park::Wait,
    }
}

pub(super) fn wait_until(mover: &mut Mover<'_>, step: StepIndex, time: TimeOfDay, days: Days) -> Position {
    let zone = zone_for(mover.journey, mover.world.contact);
    let until = next_time_of_day(mover.world.now, zone, time, days);
    mover.record(
        step,
        "waiting",
        format!(
            "until {} {zone}",
            until.with_timezone(&zone).format("%a %Y-%m-%d %H:%M")
        ),
    );
    Position::Parked {
        step,
        until,
        reason: Park::Wait,
    }
}

/// The time came: on to the next step.
pub(super) fn done(mover: &mut Mover<'_>, step: StepIndex) -> Position {
    let next = mover.journey.steps[step].next;
    mover.record(step, "waited", format!("next: {}", mover.journey.target_name(next)));
    mover.go(next)
}
