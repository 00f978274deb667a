//! One module per step kind: what the kind does when a contact enters it and, for the kinds
//! that hold a contact, when the hold ends. PURE, like `transition`, which calls them.
//!
//! `run` and `wake` are the table: exhaustive matches on `StepKind`, so a new kind does not
//! compile until it has a home here. What a kind *is* (its keyword, whether it waits or reaches
//! outside) is the other table, `impl StepKind` in `journey/model.rs`.
//!
//! - `wait`: `wait`, `wait_until`; `wait_for`: an event or a timeout.
//! - `branch`, `split`: where to go next.
//! - `send`: `send_email`, `send_sms`, with consent and the guardrails (quiet hours, cap).
//! - `profile`: `tag`, `untag`, `set`, `score`.
//! - `sales`: `assign_to_sales`; `webhook`: `webhook`.

mod branch;
mod profile;
mod sales;
mod send;
mod split;
mod wait;
mod wait_for;
mod webhook;

use super::transition::{Mover, Park, Position};
use crate::journey::model::{StepIndex, StepKind};

/// Runs the step the contact is entering; `released` is true when quiet hours held this
/// message and have now ended.
pub(super) fn run(mover: &mut Mover<'_>, step: StepIndex, released: bool) -> Position {
    let journey = mover.journey;
    match &journey.steps[step].kind {
        StepKind::Wait(delay) => wait::wait(mover, step, *delay),
        StepKind::WaitUntil { time, days } => wait::wait_until(mover, step, *time, *days),
        StepKind::WaitFor { event, timeout, .. } => wait_for::enter(mover, step, event, *timeout),
        StepKind::Branch { arms, otherwise } => branch::run(mover, step, arms, *otherwise),
        StepKind::Split { arms } => split::run(mover, step, arms),
        StepKind::SendEmail { template } => send::run(mover, step, send::Channel::Email, template, released),
        StepKind::SendSms { template } => send::run(mover, step, send::Channel::Sms, template, released),
        StepKind::Tag(tags) => profile::tag(mover, step, tags),
        StepKind::Untag(tags) => profile::untag(mover, step, tags),
        StepKind::Set(traits) => profile::set(mover, step, traits),
        StepKind::Score(points) => profile::score(mover, step, *points),
        StepKind::AssignToSales { team } => sales::run(mover, step, team),
        StepKind::Webhook(hook) => webhook::run(mover, step, hook),
    }
}

/// Ends a hold: a wait's time came, a `wait_for` timed out, or quiet hours ended.
pub(super) fn wake(mover: &mut Mover<'_>, step: StepIndex, reason: Park) -> Position {
    let journey = mover.journey;
    match (reason, &journey.steps[step].kind) {
        (Park::QuietHours, _) => run(mover, step, true),
        (
            Park::WaitFor,
            StepKind::WaitFor {
                event,
                timeout,
                on_timeout,
            },
        ) => wait_for::time_out(mover, step, event, *timeout, *on_timeout),
        _ => wait::done(mover, step),
    }
}

/// Whether two steps hold a contact the same way, so a migrated wait keeps its deadline.
pub fn hold_alike(old: &StepKind, new: &StepKind) -> bool {
    match (old, new) {
        (StepKind::Wait(_) | StepKind::WaitUntil { .. }, StepKind::Wait(_) | StepKind::WaitUntil { .. }) => true,
        (StepKind::WaitFor { event: a, .. }, StepKind::WaitFor { event: b, .. }) => a.event == b.event,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
