//! Ingestion: Segment messages become contacts (identity resolution), profile updates and
//! events, and events move journeys. One transaction per request: when it commits the request
//! is durably stored; a message id seen before from the same source is skipped.

use super::runner::{Engine, Result};
use crate::events::{Kind, Message};
use crate::expr::EventFacts;
use crate::queue::StepJob;
use crate::store::{self, contacts, identities, ms};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Ingested {
    pub accepted: usize,
    /// Replays of messages already stored (same source and `messageId`).
    pub duplicates: usize,
    /// Contacts the messages were attributed to, in message order (`None` for duplicates).
    #[serde(skip)]
    pub contacts: Vec<Option<i64>>,
}

/// Trims and lowercases an email; `None` if it does not look like one.
pub fn normalize_email(text: &str) -> Option<String> {
    let email = text.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)).then_some(email)
}

/// E.164 (`+8613800138000`) from what people type; national numbers get `country_code`.
pub fn normalize_phone(text: &str, country_code: &str) -> Option<String> {
    let trimmed = text.trim();
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    let number = if trimmed.starts_with('+') {
        digits
    } else if let Some(international) = digits.strip_prefix("00") {
        international.to_string()
    } else {
        // A national trunk prefix (0) is not part of the international number.
        format!("{country_code}{}", digits.strip_prefix('0').unwrap_or(&digits))
    };
    (8..=15).contains(&number.len()).then(|| format!("+{number}"))
}

impl Engine {
    /// Stores and applies a request's messages in one transaction; returns what happened.
    pub async fn ingest(&self, source: &str, messages: &[Message]) -> Result<Ingested> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let mut report = Ingested::default();
        let mut jobs: Vec<(StepJob, DateTime<Utc>)> = Vec::new();
        for message in messages {
            let fresh = sqlx::query("INSERT INTO received_messages (source, message_id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(source)
                .bind(&message.message_id)
                .bind(ms(message.received_at))
                .execute(&mut *tx)
                .await?;
            if fresh.rows_affected() == 0 {
                report.duplicates += 1;
                report.contacts.push(None);
                continue;
            }
            let contact_id = self.resolve(&mut tx, message, now).await?;
            let mut scored = false;
            report.contacts.push(Some(contact_id));
            report.accepted += 1;
            if message.kind == Kind::Identify || !message.traits.is_empty() {
                self.apply_traits(&mut tx, contact_id, message, now).await?;
                scored |= self.score_traits(&mut tx, contact_id, now).await?;
            }
            let event = EventFacts {
                name: message.name.clone(),
                properties: message.properties.clone(),
                timestamp: Some(message.timestamp),
            };
            let received = contacts::Received {
                kind: Some(message.kind.as_str()),
                message_id: Some(message.message_id.clone()),
                context: Some(Json::Object(message.context.clone()).to_string()),
                original_timestamp: message.original_timestamp,
                sent_at: message.sent_at,
                received_at: Some(message.received_at),
            };
            let event_id = contacts::record_received(&mut tx, contact_id, &event, message.timestamp, &received).await?;
            scored |= self.score_event(&mut tx, contact_id, event_id, &event, now).await?;
            if matches!(message.kind, Kind::Track | Kind::Page | Kind::Screen) {
                let (_, more) = self.react(&mut tx, contact_id, &event, now).await?;
                jobs.extend(more);
            }
            if scored {
                jobs.extend(self.qualify(&mut tx, contact_id, now).await?);
            }
        }
        tx.commit().await?;
        // Committed means stored, and the answer must say so (a retry would be deduplicated).
        // Jobs not enqueued are repaired by the reconciler, which re-enqueues overdue steps.
        let count = jobs.len();
        if let Err(error) = self.enqueue_jobs(jobs).await {
            tracing::warn!(%error, jobs = count, "Messages stored, but their step jobs could not be enqueued; the reconciler will.");
        }
        Ok(report)
    }

    /// Finds the message's contact by any of its identifiers, creating it or merging contacts
    /// found to be one person. Two contacts with different user ids are never merged.
    async fn resolve(&self, tx: &mut store::Tx<'_>, message: &Message, now: DateTime<Utc>) -> Result<i64> {
        let mut ids: Vec<(&str, String)> = Vec::new();
        if let Some(user_id) = &message.user_id {
            ids.push(("user_id", user_id.clone()));
        }
        if let Some(anonymous_id) = &message.anonymous_id {
            ids.push(("anonymous_id", anonymous_id.clone()));
        }
        if let Some(previous) = &message.previous_id {
            // An alias's previous id is whatever the contact was known by before.
            for kind in ["user_id", "anonymous_id"] {
                if identities::find(tx, kind, previous).await?.is_some() {
                    ids.push((kind, previous.clone()));
                }
            }
            if !ids.iter().any(|(_, v)| v == previous) {
                ids.push(("anonymous_id", previous.clone()));
            }
        }
        if let Some(email) = message
            .traits
            .get("email")
            .and_then(Json::as_str)
            .and_then(normalize_email)
        {
            ids.push(("email", email));
        }
        let phone_text = message.traits.get("phone").and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        });
        if let Some(phone) = phone_text.and_then(|p| normalize_phone(&p, &self.config.phone_country_code)) {
            ids.push(("phone", phone));
        }
        // Links in one order in every transaction, so two of them never wait for each other.
        let mut link_order: Vec<&(&str, String)> = ids.iter().collect();
        link_order.sort();
        link_order.dedup();
        // Another request may commit the same new identifiers between our lookups and our links
        // (analytics.js sends `page` and `track` at once). Finding one taken by a contact we did
        // not see means our view is stale: drop the contact we just created, if any, and resolve
        // again against what has committed (READ COMMITTED: every statement sees it).
        for _ in 0..4 {
            let (contact_id, created, found) = self.find_or_create(tx, message, &ids, now).await?;
            let mut stale = false;
            for (kind, value) in &link_order {
                if identities::link(tx, kind, value, contact_id, now).await? {
                    continue;
                }
                if let Some(owner) = identities::find(tx, kind, value).await?
                    && owner != contact_id
                    && !found.contains(&owner)
                {
                    stale = true;
                    break;
                }
            }
            if stale {
                tracing::debug!(message_id = %message.message_id, "An identifier was taken by a concurrent request; resolving again.");
                if created {
                    identities::discard_new_contact(tx, contact_id).await?;
                }
                continue;
            }
            if let Some(user_id) = &message.user_id {
                // Only the owner of the user id gets it as `external_id` (UNIQUE): a contact that
                // lost the user id to another keeps none rather than failing the request.
                sqlx::query(
                    "UPDATE contacts SET external_id = $1 WHERE id = $2 AND external_id IS NULL
                     AND EXISTS (SELECT 1 FROM identities WHERE kind = 'user_id' AND value = $1 AND contact_id = $2)",
                )
                .bind(user_id)
                .bind(contact_id)
                .execute(&mut **tx)
                .await?;
            }
            return Ok(contact_id);
        }
        Err(super::runner::Error::Invalid(format!(
            "the identifiers of message {} kept changing under concurrent requests",
            message.message_id
        )))
    }

    /// The contact of the message's identifiers as committed now: found, merged from several,
    /// or created (without identifiers yet). Returns it, whether it is new, and what was found.
    async fn find_or_create(
        &self,
        tx: &mut store::Tx<'_>,
        message: &Message,
        ids: &[(&str, String)],
        now: DateTime<Utc>,
    ) -> Result<(i64, bool, Vec<i64>)> {
        let mut found: Vec<i64> = Vec::new();
        for (kind, value) in ids {
            if let Some(contact) = identities::find(tx, kind, value).await?
                && !found.contains(&contact)
            {
                found.push(contact);
            }
        }
        let contact_id = match found.as_slice() {
            [] => {
                // `external_id` is set once the user id is ours (see `resolve`).
                let new = contacts::NewContact {
                    email: ids.iter().find(|(k, _)| *k == "email").map(|(_, v)| v.clone()),
                    phone: ids.iter().find(|(k, _)| *k == "phone").map(|(_, v)| v.clone()),
                    last_seen_at: Some(message.timestamp),
                    ..contacts::NewContact::default()
                };
                return Ok((contacts::create(tx, &new, now).await?, true, found));
            }
            [only] => *only,
            several => {
                // The survivor is the known person (a user id), else the oldest contact.
                let mut with_user = Vec::new();
                for contact in several {
                    if identities::user_id_of(tx, *contact).await?.is_some() {
                        with_user.push(*contact);
                    }
                }
                let survivor = with_user
                    .first()
                    .copied()
                    .unwrap_or_else(|| *several.iter().min().unwrap_or(&several[0]));
                for other in several.iter().copied().filter(|c| *c != survivor) {
                    if with_user.contains(&other) {
                        continue;
                    }
                    let reason = format!("{} {} links them", message.kind.as_str(), message.message_id);
                    identities::merge(tx, survivor, other, &reason, now).await?;
                }
                survivor
            }
        };
        Ok((contact_id, false, found))
    }

    /// Identify traits update the profile; well-known ones fill its columns.
    async fn apply_traits(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        message: &Message,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let at = message.timestamp.min(now);
        let mut changes = Vec::new();
        for (name, value) in &message.traits {
            changes.push(crate::engine::ContactChange::Set {
                name: name.clone(),
                value: value.clone(),
            });
        }
        contacts::apply(tx, contact_id, &changes, at).await?;
        // Consent: `consent: {email: false, sms: true}`, or `unsubscribed: true` for email.
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
        let text = |map: &Map<String, Json>, key: &str| map.get(key).and_then(Json::as_str).map(str::to_string);
        let email = text(&message.traits, "email").and_then(|e| normalize_email(&e));
        let phone = text(&message.traits, "phone").and_then(|p| normalize_phone(&p, &self.config.phone_country_code));
        let timezone = text(&message.traits, "timezone").or_else(|| text(&message.context, "timezone"));
        let language = text(&message.traits, "language").or_else(|| text(&message.context, "locale"));
        sqlx::query(
            "UPDATE contacts SET email = COALESCE($1, email), phone = COALESCE($2, phone), timezone = COALESCE($3, timezone), language = COALESCE($4, language) WHERE id = $5",
        )
        .bind(email)
        .bind(phone)
        .bind(timezone)
        .bind(language)
        .bind(contact_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_become_e164() {
        assert_eq!(
            normalize_phone("138 0013 8000", "86").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            normalize_phone("+86 138-0013-8000", "86").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            normalize_phone("0049 30 1234567", "86").as_deref(),
            Some("+49301234567")
        );
        assert_eq!(normalize_phone("030 1234567", "49").as_deref(), Some("+49301234567"));
        assert_eq!(normalize_phone("12", "86"), None);
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(normalize_email("not an email"), None);
    }
}
