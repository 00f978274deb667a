//! A contact as the engine sees it: the facts conditions read and the changes steps make.

use crate::expr::{ContactFacts, EventCounter, EventFacts, Facts};
use crate::journey::values::Stage;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contact {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub traits: Map<String, Json>,
    pub tags: Vec<String>,
    pub score: i64,
    pub stage: Stage,
    pub timezone: Option<String>,
    pub language: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// The last time the contact did anything; `inactive_days` counts from here.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// What the contact said about marketing on each channel (`email`, `sms`); absent: not asked.
    pub consent: std::collections::BTreeMap<String, bool>,
    /// Channels whose address is suppressed (`email` after a hard bounce or a complaint), with
    /// the reason. Nothing is sent there, marketing or not.
    pub suppressed: std::collections::BTreeMap<String, String>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            id: "contact-1".into(),
            email: None,
            phone: None,
            traits: Map::new(),
            tags: Vec::new(),
            score: 0,
            stage: Stage::Lead,
            timezone: None,
            language: None,
            created_at: None,
            last_seen_at: None,
            consent: std::collections::BTreeMap::new(),
            suppressed: std::collections::BTreeMap::new(),
        }
    }
}

/// A change a step makes to the contact, applied in the same transaction as the step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ContactChange {
    Tag { tag: String },
    Untag { tag: String },
    Set { name: String, value: Json },
    Score { points: i64 },
}

impl Contact {
    pub fn apply(&mut self, change: &ContactChange) {
        match change {
            ContactChange::Tag { tag } => {
                if !self.tags.contains(tag) {
                    self.tags.push(tag.clone());
                }
            }
            ContactChange::Untag { tag } => self.tags.retain(|t| t != tag),
            ContactChange::Set { name, value } => {
                self.traits.insert(name.clone(), value.clone());
            }
            ContactChange::Score { points } => self.score += points,
        }
    }

    /// Whether marketing on `channel` is allowed: yes unless the contact said no.
    pub fn allows(&self, channel: &str) -> bool {
        self.consent.get(channel).copied().unwrap_or(true)
    }

    /// The contact's language: the profile field, else a `language` or `locale` trait.
    pub fn language(&self) -> Option<&str> {
        self.language
            .as_deref()
            .or_else(|| self.traits.get("language").and_then(Json::as_str))
            .or_else(|| self.traits.get("locale").and_then(Json::as_str))
    }

    pub fn facts_view(&self) -> ContactFacts {
        ContactFacts {
            id: self.id.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            created_at: self.created_at,
            timezone: self.timezone.clone(),
            language: self.language().map(str::to_string),
        }
    }

    pub fn inactive_days(&self, now: DateTime<Utc>) -> i64 {
        let since = self.last_seen_at.or(self.created_at).unwrap_or(now);
        (now - since).num_days().max(0)
    }

    pub fn facts<'a>(
        &'a self,
        view: &'a ContactFacts,
        trigger: Option<&'a EventFacts>,
        event: Option<&'a EventFacts>,
        now: DateTime<Utc>,
        counter: &'a dyn EventCounter,
    ) -> Facts<'a> {
        Facts {
            score: self.score,
            stage: self.stage.as_str(),
            tags: &self.tags,
            traits: &self.traits,
            contact: view,
            trigger,
            event,
            inactive_days: self.inactive_days(now),
            now,
            counter,
        }
    }
}
