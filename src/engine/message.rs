//! The data a message template renders with. Pure, so the simulator and the engine agree.

use super::contact::Contact;
use super::transition::Enrollment;
use crate::journey::model::Journey;
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

pub fn template_data(
    journey: &Journey,
    enrollment: &Enrollment,
    contact: &Contact,
    unsubscribe_url: &str,
    now: DateTime<Utc>,
) -> Json {
    json!({
        "contact": contact.facts_view(),
        "traits": contact.traits,
        "trigger": enrollment.trigger,
        "score": contact.score,
        "stage": contact.stage,
        "tags": contact.tags,
        "journey": {"id": journey.id, "name": journey.name, "version": journey.version},
        "unsubscribe_url": unsubscribe_url,
        "now": now.to_rfc3339(),
    })
}
