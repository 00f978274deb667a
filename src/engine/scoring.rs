//! Lead scoring at run time: events and traits earn points by the rules of `scoring.yaml`
//! (with caps), the score decays lazily when read, and thresholds move the stage to MQL and SQL.

use super::contact::Contact;
use super::runner::{Engine, Result};
use crate::expr::EventFacts;
use crate::journey::scoring::RuleOn;
use crate::queue::StepJob;
use crate::scoring;
use crate::store::{self, contacts, scores};
use chrono::{DateTime, Duration, Utc};

impl Engine {
    /// A contact as conditions see it now: with the score decayed to `now`.
    pub(crate) async fn load_contact(
        &self,
        connection: &mut sqlx::AnyConnection,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<Contact>> {
        Ok(self.load_contacts(connection, &[id], now).await?.remove(&id))
    }

    /// `load_contact` for many contacts at once: what a batch of step jobs reads.
    pub(crate) async fn load_contacts(
        &self,
        connection: &mut sqlx::AnyConnection,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<std::collections::HashMap<i64, Contact>> {
        let mut contacts = contacts::load_many(connection, ids).await?;
        if let Some(scoring) = self.catalog().scoring.as_ref().filter(|s| s.decay.is_some()) {
            let points = scores::points_of_contacts(connection, ids).await?;
            for (id, contact) in contacts.iter_mut() {
                let entries = points.get(id).map(Vec::as_slice).unwrap_or_default();
                contact.score = scoring::score(entries, scoring.decay, contact.last_seen_at, now);
            }
        }
        Ok(contacts)
    }

    /// Points for an event, by every event rule it matches, within the rules' caps.
    pub(crate) async fn score_event(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        event_id: i64,
        event: &EventFacts,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let catalog = self.catalog();
        let Some(scoring) = catalog.scoring.as_ref() else {
            return Ok(false);
        };
        let mut contact: Option<Contact> = None;
        let mut scored = false;
        for rule in &scoring.rules {
            let RuleOn::Event { name, condition } = &rule.on else {
                continue;
            };
            if *name != event.name {
                continue;
            }
            if let Some(condition) = condition {
                if contact.is_none() {
                    contact = self.load_contact(tx, contact_id, now).await?;
                }
                let Some(contact) = &contact else { return Ok(false) };
                let view = contact.facts_view();
                let facts = contact.facts(&view, None, Some(event), now, &());
                if condition.eval_bool(&facts) != Ok(true) {
                    continue;
                }
            }
            let mut points = rule.points;
            if rule.max_per_day.is_some() {
                let today = scores::rule_points_since(tx, contact_id, &rule.id, Some(now - Duration::days(1))).await?;
                points = scoring::within_cap(points, today, rule.max_per_day);
            }
            if rule.max_total.is_some() {
                let ever = scores::rule_points_since(tx, contact_id, &rule.id, None).await?;
                points = scoring::within_cap(points, ever, rule.max_total);
            }
            if points != 0 {
                scores::add(tx, contact_id, &rule.id, Some(event_id), points, now).await?;
                scored = true;
            }
        }
        if scored {
            self.fold_score_entries(tx, contact_id, now).await?;
        }
        Ok(scored)
    }

    /// Profile rules: points while a trait condition holds, taken back when it stops holding.
    pub(crate) async fn score_traits(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let catalog = self.catalog();
        let Some(scoring) = catalog.scoring.as_ref() else {
            return Ok(false);
        };
        if !scoring.rules.iter().any(|r| matches!(r.on, RuleOn::Trait(_))) {
            return Ok(false);
        }
        let mut scored = false;
        let Some(contact) = self.load_contact(tx, contact_id, now).await? else {
            return Ok(false);
        };
        let view = contact.facts_view();
        for rule in &scoring.rules {
            let RuleOn::Trait(condition) = &rule.on else { continue };
            let holds = {
                let facts = contact.facts(&view, None, None, now, &());
                condition.eval_bool(&facts) == Ok(true)
            };
            let given = scores::rule_points_since(tx, contact_id, &rule.id, None).await?;
            if holds && given == 0 {
                scores::add(tx, contact_id, &rule.id, None, rule.points, now).await?;
                scored = true;
            } else if !holds && given != 0 {
                scores::add(tx, contact_id, &rule.id, None, -given, now).await?;
                scored = true;
            }
        }
        Ok(scored)
    }

    /// Moves the contact to MQL or SQL when the score crossed a threshold; returns the jobs of
    /// the journeys that starts.
    pub(crate) async fn qualify(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<(StepJob, DateTime<Utc>)>> {
        let catalog = self.catalog();
        let Some(scoring) = catalog.scoring.as_ref() else {
            return Ok(Vec::new());
        };
        let Some(contact) = self.load_contact(tx, contact_id, now).await? else {
            return Ok(Vec::new());
        };
        match scoring::qualifies(scoring, contact.score, contact.stage) {
            Some(stage) => self.stage_reached_in(tx, contact_id, stage, now).await,
            None => Ok(Vec::new()),
        }
    }
}
