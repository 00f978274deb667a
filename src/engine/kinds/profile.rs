//! `tag`, `untag`, `set` and `score`: changes to the contact, saved with the move.

use crate::engine::contact::ContactChange;
use crate::engine::transition::{Mover, Position};
use crate::journey::model::StepIndex;
use serde_json::Value as Json;
use std::collections::BTreeMap;

pub(super) fn tag(mover: &mut Mover<'_>, step: StepIndex, tags: &[String]) -> Position {
    let changes = tags.iter().map(|tag| ContactChange::Tag { tag: tag.clone() });
    mover.changes.extend(changes);
    mover.record(step, "tagged", tags.join(", "));
    mover.go(mover.journey.steps[step].next)
}

pub(super) fn untag(mover: &mut Mover<'_>, step: StepIndex, tags: &[String]) -> Position {
    let changes = tags.iter().map(|tag| ContactChange::Untag { tag: tag.clone() });
    mover.changes.extend(changes);
    mover.record(step, "untagged", tags.join(", "));
    mover.go(mover.journey.steps[step].next)
}

pub(super) fn set(mover: &mut Mover<'_>, step: StepIndex, traits: &BTreeMap<String, Json>) -> Position {
    for (name, value) in traits {
        mover.changes.push(ContactChange::Set {
            name: name.clone(),
            value: value.clone(),
        });
    }
    let shown: Vec<String> = traits.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    mover.record(step, "updated", shown.join(", "));
    mover.go(mover.journey.steps[step].next)
}

pub(super) fn score(mover: &mut Mover<'_>, step: StepIndex, points: i64) -> Position {
    mover.changes.push(ContactChange::Score { points });
    mover.record(step, "scored", format!("{points:+}"));
    mover.go(mover.journey.steps[step].next)
}
