//! Ingestion: Segment messages become contacts (identity resolution), profile updates and
//! events, and events move journeys. One transaction per request: when it commits the request
//! is durably stored; a message id seen before from the same source is skipped.

use super::reactions::Occurrence;
use super::runner::{Engine, Error, Result};
use crate::events::{Kind, Message};
use crate::expr::EventFacts;
use crate::queue::StepJob;
use crate::store::{self, contacts, identities, ms};
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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

/// A request waiting for its group's commit: an API request's messages, or one event of a
/// known contact (`Engine::track`), which answers with the enrollments it started.
pub(crate) enum Pending {
    Messages {
        source: String,
        messages: Vec<Message>,
        done: tokio::sync::oneshot::Sender<Result<Ingested, String>>,
    },
    Event {
        contact_id: i64,
        event: EventFacts,
        done: tokio::sync::oneshot::Sender<Result<Vec<i64>, String>>,
    },
}

impl Pending {
    fn size(&self) -> usize {
        match self {
            Pending::Messages { messages, .. } => messages.len(),
            Pending::Event { .. } => 1,
        }
    }
}

/// Most messages one group commits.
const MAX_GROUP_MESSAGES: usize = 2_000;

impl Engine {
    /// Stores and applies a request's messages; returns what happened. Concurrent requests
    /// share one transaction (group commit): the answer comes after that commit.
    pub async fn ingest(self: &Arc<Self>, source: &str, messages: &[Message]) -> Result<Ingested> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let pending = Pending::Messages {
            source: source.to_string(),
            messages: messages.to_vec(),
            done,
        };
        self.ingest_groups()
            .send(pending)
            .map_err(|_| Error::Invalid("the ingest group has stopped".into()))?;
        match outcome.await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(error)) => Err(Error::Invalid(error)),
            Err(_) => Err(Error::Invalid("the ingest group was abandoned".into())),
        }
    }

    /// `track` through the group commit.
    pub(crate) async fn track_in_group(self: &Arc<Self>, contact_id: i64, event: EventFacts) -> Result<Vec<i64>> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.ingest_groups()
            .send(Pending::Event {
                contact_id,
                event,
                done,
            })
            .map_err(|_| Error::Invalid("the ingest group has stopped".into()))?;
        match outcome.await {
            Ok(Ok(started)) => Ok(started),
            Ok(Err(error)) => Err(Error::Invalid(error)),
            Err(_) => Err(Error::Invalid("the ingest group was abandoned".into())),
        }
    }

    fn ingest_groups(self: &Arc<Self>) -> &tokio::sync::mpsc::UnboundedSender<Pending> {
        self.ingest_groups.get_or_init(|| {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Pending>();
            tokio::spawn(super::groups::run_groups(
                Arc::downgrade(self),
                receiver,
                self.groups_at_once(),
                MAX_GROUP_MESSAGES,
                Pending::size,
                |engine, group| async move { engine.commit_group(group).await },
            ));
            sender
        })
    }

    /// Commits a group; if it fails as a whole, each request is tried on its own so that one
    /// bad request cannot fail the others.
    async fn commit_group(&self, group: Vec<Pending>) {
        let mut requests: Vec<(&str, &[Message])> = Vec::new();
        let mut events: Vec<(i64, &EventFacts)> = Vec::new();
        for pending in &group {
            match pending {
                Pending::Messages { source, messages, .. } => requests.push((source.as_str(), messages.as_slice())),
                Pending::Event { contact_id, event, .. } => events.push((*contact_id, event)),
            }
        }
        type Outcomes = (Vec<Result<Ingested, String>>, Vec<Result<Vec<i64>, String>>);
        let started = std::time::Instant::now();
        let together = self.ingest_together(&requests, &events).await;
        tracing::debug!(requests = requests.len(), events = events.len(), elapsed = ?started.elapsed(), "Ingest group committed.");
        let outcomes: Outcomes = match together {
            Ok((reports, started)) => (
                reports.into_iter().map(Ok).collect(),
                started.into_iter().map(Ok).collect(),
            ),
            Err(error) if group.len() == 1 => (
                requests.iter().map(|_| Err(error.to_string())).collect(),
                events.iter().map(|_| Err(error.to_string())).collect(),
            ),
            Err(error) => {
                tracing::debug!(%error, requests = group.len(), "A group commit failed; trying its requests one by one.");
                let mut outcomes: Outcomes = (Vec::new(), Vec::new());
                for request in &requests {
                    outcomes.0.push(
                        self.ingest_together(std::slice::from_ref(request), &[])
                            .await
                            .map(|(mut reports, _)| reports.remove(0))
                            .map_err(|e| e.to_string()),
                    );
                }
                for event in &events {
                    outcomes.1.push(
                        self.ingest_together(&[], std::slice::from_ref(event))
                            .await
                            .map(|(_, mut started)| started.remove(0))
                            .map_err(|e| e.to_string()),
                    );
                }
                outcomes
            }
        };
        let (mut reports, mut started) = (outcomes.0.into_iter(), outcomes.1.into_iter());
        for pending in group {
            match pending {
                Pending::Messages { done, .. } => {
                    let _ = done.send(reports.next().unwrap_or_else(|| Err("no outcome".into())));
                }
                Pending::Event { done, .. } => {
                    let _ = done.send(started.next().unwrap_or_else(|| Err("no outcome".into())));
                }
            }
        }
    }

    /// Stores and applies several requests' messages in one transaction. Messages of contacts
    /// already known by their user or anonymous id, carrying no traits (the steady stream of
    /// track, page and screen calls), take the set-based path; the rest (new visitors,
    /// identify, alias, merges) go one by one, first, in their order.
    async fn ingest_together(
        &self,
        requests: &[(&str, &[Message])],
        events: &[(i64, &EventFacts)],
    ) -> Result<(Vec<Ingested>, Vec<Vec<i64>>)> {
        let now = self.clock.now();
        let now_clock = std::time::Instant::now();
        let mut tx = self.store.begin().await?;
        let (reports, started, jobs) = self.ingest_in(&mut tx, requests, events, now).await?;
        tx.commit().await?;
        tracing::debug!(jobs = jobs.len(), elapsed = ?now_clock.elapsed(), "Ingest group stored.");
        // Committed means stored, and the answer must say so (a retry would be deduplicated).
        // Jobs not enqueued are repaired by the reconciler, which re-enqueues overdue steps.
        let count = jobs.len();
        if let Err(error) = self.enqueue_jobs(jobs).await {
            tracing::warn!(%error, jobs = count, "Messages stored, but their step jobs could not be enqueued; the reconciler will.");
        }
        Ok((reports, started))
    }

    /// The work of `ingest_together` inside a transaction the caller commits: the reports, the
    /// enrollments each event started, and the step jobs to enqueue after the commit.
    pub(crate) async fn ingest_in(
        &self,
        tx: &mut store::Tx<'_>,
        requests: &[(&str, &[Message])],
        events: &[(i64, &EventFacts)],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Ingested>, Vec<Vec<i64>>, Vec<(StepJob, DateTime<Utc>)>)> {
        let keys: Vec<(&str, &str, i64)> = requests
            .iter()
            .flat_map(|(source, messages)| {
                messages
                    .iter()
                    .map(move |m| (*source, m.message_id.as_str(), ms(m.received_at)))
            })
            .collect();
        let mut fresh = store::received_fresh(tx, &keys).await?;
        // Which messages are new (the first copy of a message id in this group only).
        let mut firsts: Vec<Vec<bool>> = Vec::with_capacity(requests.len());
        for (source, messages) in requests {
            firsts.push(
                messages
                    .iter()
                    .map(|m| fresh.remove(&(source.to_string(), m.message_id.clone())))
                    .collect(),
            );
        }
        // Known contacts of the simple messages, in one query.
        let simple = |m: &Message| {
            matches!(m.kind, Kind::Track | Kind::Page | Kind::Screen) && m.traits.is_empty() && m.previous_id.is_none()
        };
        let lookups: Vec<(&str, &str)> = requests
            .iter()
            .flat_map(|(_, messages)| messages.iter())
            .filter(|m| simple(m))
            .flat_map(|m| {
                m.user_id
                    .as_deref()
                    .map(|id| ("user_id", id))
                    .into_iter()
                    .chain(m.anonymous_id.as_deref().map(|id| ("anonymous_id", id)))
            })
            .collect();
        let known = if lookups.is_empty() {
            HashMap::new()
        } else {
            identities::find_many(tx, &lookups).await?
        };
        let known_contact = |m: &Message| -> Option<i64> {
            if !simple(m) {
                return None;
            }
            let mut owners = m
                .user_id
                .iter()
                .map(|id| ("user_id", id))
                .chain(m.anonymous_id.iter().map(|id| ("anonymous_id", id)))
                .map(|(kind, value)| known.get(&(kind.to_string(), value.clone())).copied());
            let first = owners.next()??;
            owners.all(|o| o == Some(first)).then_some(first)
        };
        let mut reports: Vec<Ingested> = requests
            .iter()
            .map(|(_, messages)| Ingested {
                contacts: vec![None; messages.len()],
                ..Ingested::default()
            })
            .collect();
        let mut jobs: Vec<(StepJob, DateTime<Utc>)> = Vec::new();
        let mut quick: Vec<(usize, usize, i64)> = Vec::new();
        // Identifiers the one-by-one messages touch: a quick message sharing one waits for them.
        let mut touched: HashSet<String> = HashSet::new();
        for (r, (_, messages)) in requests.iter().enumerate() {
            for (i, message) in messages.iter().enumerate() {
                if !firsts[r][i] {
                    reports[r].duplicates += 1;
                    continue;
                }
                reports[r].accepted += 1;
                match known_contact(message) {
                    Some(contact) => quick.push((r, i, contact)),
                    None => {
                        touched.extend(message.user_id.iter().cloned());
                        touched.extend(message.anonymous_id.iter().cloned());
                        let contact = self.ingest_one(tx, message, now, &mut jobs).await?;
                        reports[r].contacts[i] = Some(contact);
                    }
                }
            }
        }
        let mut occurrences = Vec::with_capacity(quick.len());
        for (r, i, contact) in quick {
            let message = &requests[r].1[i];
            let shares = message
                .user_id
                .iter()
                .chain(&message.anonymous_id)
                .any(|id| touched.contains(id));
            if shares {
                // Resolved again after the one-by-one messages that may have merged it.
                let contact = self.ingest_one(tx, message, now, &mut jobs).await?;
                reports[r].contacts[i] = Some(contact);
                continue;
            }
            reports[r].contacts[i] = Some(contact);
            occurrences.push(occurrence(contact, message));
        }
        // Events of known contacts from `track` join the set-based path, after the messages.
        let first_event = occurrences.len();
        for (contact_id, event) in events {
            occurrences.push(Occurrence {
                contact_id: *contact_id,
                event: (*event).clone(),
                at: event.timestamp.unwrap_or(now),
                received: contacts::Received::default(),
                reacts: true,
            });
        }
        let mut started = Vec::new();
        if !occurrences.is_empty() {
            let reaction = self.record_and_react(tx, &occurrences, now).await?;
            jobs.extend(reaction.jobs);
            started = reaction.started.into_iter().skip(first_event).collect();
        }
        Ok((reports, started, jobs))
    }

    /// One message the long way: identity resolution (creating or merging contacts), traits,
    /// then the event, its score and what it does to journeys.
    async fn ingest_one(
        &self,
        tx: &mut store::Tx<'_>,
        message: &Message,
        now: DateTime<Utc>,
        jobs: &mut Vec<(StepJob, DateTime<Utc>)>,
    ) -> Result<i64> {
        let contact_id = self.resolve(tx, message, now).await?;
        let mut scored = false;
        if message.kind == Kind::Identify || !message.traits.is_empty() {
            self.apply_traits(tx, contact_id, message, now).await?;
            scored |= self.score_traits(tx, contact_id, now).await?;
        }
        if scored {
            jobs.extend(self.qualify(tx, contact_id, now).await?);
        }
        jobs.extend(
            self.record_and_react(tx, &[occurrence(contact_id, message)], now)
                .await?
                .jobs,
        );
        Ok(contact_id)
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
}

/// A stored message as an event of its contact.
fn occurrence(contact_id: i64, message: &Message) -> Occurrence {
    Occurrence {
        contact_id,
        event: EventFacts {
            name: message.name.clone(),
            properties: message.properties.clone(),
            timestamp: Some(message.timestamp),
        },
        at: message.timestamp,
        received: contacts::Received {
            kind: Some(message.kind.as_str()),
            message_id: Some(message.message_id.clone()),
            context: Some(Json::Object(message.context.clone()).to_string()),
            original_timestamp: message.original_timestamp,
            sent_at: message.sent_at,
            received_at: Some(message.received_at),
        },
        reacts: matches!(message.kind, Kind::Track | Kind::Page | Kind::Screen),
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
