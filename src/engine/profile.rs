//! What an identify (or any message with traits) does to the contact's profile: traits, the
//! well-known columns and consent, each last-writer-wins by the message's time, so a late,
//! older message never overrides what a newer one said (above all, never a newer opt-out).

use super::ingest::{normalize_email, normalize_phone};
use super::runner::{Engine, Result};
use crate::events::Message;
use crate::store::{self, contacts, identities};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use std::collections::HashSet;

impl Engine {
    /// Applies the message's traits to the contact, as of the message's time.
    pub(super) async fn apply_traits(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        message: &Message,
        now: DateTime<Utc>,
    ) -> Result<()> {
        // The events parser already clamps a future time to the receipt; `now` guards callers
        // that build messages themselves.
        let at = message.timestamp.min(now);
        let written = contacts::set_traits_at(tx, contact_id, &message.traits, at).await?;
        let won = |name: &str| written.contains(name);
        // Consent: `consent: {email: false, sms: true}`, or `unsubscribed: true` for email.
        // `set_consent` keeps the latest answer per channel itself.
        if let Some(Json::Object(consent)) = message.traits.get("consent") {
            for (channel, granted) in consent {
                if let Some(granted) = granted.as_bool() {
                    contacts::set_consent(tx, contact_id, channel, granted, at).await?;
                }
            }
        }
        if let Some(unsubscribed) = message.traits.get("unsubscribed").and_then(Json::as_bool) {
            contacts::set_consent(tx, contact_id, "email", !unsubscribed, at).await?;
        }
        let traits = &message.traits;
        let text = |map: &Map<String, Json>, key: &str| map.get(key).and_then(Json::as_str).map(str::to_string);
        let profile = contacts::Profile {
            email: won("email")
                .then(|| text(traits, "email").and_then(|e| normalize_email(&e)))
                .flatten(),
            phone: won("phone")
                .then(|| phone_text(traits).and_then(|p| normalize_phone(&p, &self.config.phone_country_code)))
                .flatten(),
            timezone: won("timezone").then(|| text(traits, "timezone")).flatten(),
            context_timezone: text(&message.context, "timezone"),
            language: won("language").then(|| text(traits, "language")).flatten(),
            context_language: text(&message.context, "locale"),
        };
        contacts::set_profile(tx, contact_id, &profile, at).await?;
        Ok(())
    }
}

impl Engine {
    /// Positions of the messages whose traits would give their contact more than
    /// `contacts::MAX_TRAITS` traits, with the count it would have. Checked before storing, so
    /// such a message is refused by index (a 400 naming it) and the rest of a batch goes in.
    pub async fn over_trait_limit(&self, messages: &[Message]) -> Result<Vec<(usize, usize)>> {
        let mut over = Vec::new();
        let mut connection = None;
        for (position, message) in messages.iter().enumerate() {
            if message.traits.is_empty() {
                continue;
            }
            let mut names: HashSet<String> = message.traits.keys().cloned().collect();
            if names.len() <= contacts::MAX_TRAITS {
                let connection = match &mut connection {
                    Some(connection) => connection,
                    None => connection.insert(self.store.pool.acquire().await?),
                };
                let mut contact = None;
                for (kind, value) in [("user_id", &message.user_id), ("anonymous_id", &message.anonymous_id)] {
                    if let (None, Some(value)) = (contact, value) {
                        contact = identities::find(connection, kind, value).await?;
                    }
                }
                let Some(contact) = contact else { continue };
                // Most contacts are far from the cap: one count says so.
                if contacts::count_traits(connection, contact).await? as usize + names.len() <= contacts::MAX_TRAITS {
                    continue;
                }
                names.extend(
                    contacts::trait_names(connection, &[contact])
                        .await?
                        .into_iter()
                        .map(|(_, name)| name),
                );
                if names.len() <= contacts::MAX_TRAITS {
                    continue;
                }
            }
            over.push((position, names.len()));
        }
        Ok(over)
    }
}

/// A `phone` trait as text: a string, or a number (`"phone": 8613800138000` from a form that
/// stored it as one).
pub(crate) fn phone_text(traits: &Map<String, Json>) -> Option<String> {
    match traits.get("phone")? {
        Json::String(text) => Some(text.clone()),
        Json::Number(number) => number.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}
