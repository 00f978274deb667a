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
        let with_traits: Vec<(usize, &Message)> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.traits.is_empty())
            .collect();
        if with_traits.is_empty() {
            return Ok(Vec::new());
        }
        // Set-based: a batch of 500 identifies costs three statements, not a thousand.
        let lookups: Vec<(&str, &str)> = with_traits
            .iter()
            .filter(|(_, m)| m.traits.len() <= contacts::MAX_TRAITS)
            .flat_map(|(_, m)| {
                let user = m.user_id.as_deref().map(|id| ("user_id", id));
                let anonymous = m.anonymous_id.as_deref().map(|id| ("anonymous_id", id));
                user.into_iter().chain(anonymous)
            })
            .collect();
        let mut connection = self.store.pool.acquire().await?;
        let known = if lookups.is_empty() {
            std::collections::HashMap::new()
        } else {
            identities::find_many(&mut connection, &lookups).await?
        };
        // The user id's contact first, as resolution does.
        let contact_of = |m: &Message| {
            let user = m.user_id.as_ref().map(|id| ("user_id", id));
            let anonymous = m.anonymous_id.as_ref().map(|id| ("anonymous_id", id));
            user.into_iter()
                .chain(anonymous)
                .find_map(|(kind, id)| known.get(&(kind.to_string(), id.clone())).copied())
        };
        let mut owners: Vec<i64> = with_traits.iter().filter_map(|(_, m)| contact_of(m)).collect();
        owners.sort_unstable();
        owners.dedup();
        let counts = contacts::count_traits_many(&mut connection, &owners).await?;
        // Most contacts are far from the cap: their names are only read when near it.
        let near: Vec<i64> = with_traits
            .iter()
            .filter_map(|(_, m)| {
                let contact = contact_of(m)?;
                let count = counts.get(&contact).copied().unwrap_or(0) as usize;
                (count + m.traits.len() > contacts::MAX_TRAITS).then_some(contact)
            })
            .collect::<HashSet<i64>>()
            .into_iter()
            .collect();
        let mut names_of: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
        if !near.is_empty() {
            for (contact, name) in contacts::trait_names(&mut connection, &near).await? {
                names_of.entry(contact).or_default().push(name);
            }
        }
        let mut over = Vec::new();
        for (position, message) in with_traits {
            let mut names: HashSet<&str> = message.traits.keys().map(String::as_str).collect();
            if names.len() <= contacts::MAX_TRAITS {
                let Some(contact) = contact_of(message) else { continue };
                if let Some(existing) = names_of.get(&contact) {
                    names.extend(existing.iter().map(String::as_str));
                }
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
