//! `webhook`: an effect; the runner makes the call.

use crate::engine::transition::{Effect, Mover, Position};
use crate::journey::model::{StepIndex, Webhook};

pub(super) fn run(mover: &mut Mover<'_>, step: StepIndex, hook: &Webhook) -> Position {
    mover.effect(
        step,
        Effect::Webhook {
            method: hook.method.clone(),
            url: hook.url.clone(),
            headers: hook.headers.clone(),
            body: hook.body.clone(),
        },
    );
    mover.record(step, "called", format!("{} {}", hook.method, hook.url));
    mover.go(mover.journey.steps[step].next)
}
