//! Email out and back, on the engine: sending one message (suppression, tracking, a stable
//! `Message-ID`), and what comes back: unsubscribes, opens and clicks, bounces and complaints.
//! Everything that comes back enters through the event path (`record_and_react`), so it is
//! stored, deduplicated, scored and moves journeys like any tracked event.

use super::contact::Contact;
use super::reactions::Occurrence;
use super::runner::{Engine, Result};
use super::transition::{Advance, Enrollment, Outcome, Position, StepRecord};
use crate::channels::email::{Outgoing, message_id};
use crate::channels::feedback::Feedback;
use crate::channels::links::{self, Sent};
use crate::channels::{self};
use crate::engine::ingest::normalize_email;
use crate::expr::EventFacts;
use crate::journey::model::{Journey, StepKind};
use crate::journey::templates::MailClass;
use crate::journey::values::Tracking;
use crate::store::{self, contacts, email, enrollments, ms};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use std::sync::Arc;

/// The dedupe scope of events that come back from email (a write key's is a hex digest).
const SOURCE: &str = "email";

/// What an unsubscribe did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribed {
    pub contact: i64,
    /// The contact had opted out already: nothing changed.
    pub already: bool,
    /// Enrollments in marketing journeys that exited.
    pub exited: Vec<i64>,
}

/// What a batch of bounce and complaint reports did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedbackReport {
    /// Addresses suppressed now (already suppressed ones are not counted again).
    pub suppressed: usize,
    /// Events recorded on contacts (`Email Bounced`, `Email Marked as Spam`).
    pub events: usize,
    /// Reports seen before (same provider id).
    pub duplicates: usize,
}

impl Engine {
    /// The unsubscribe link of mail sent to `contact` by `enrollment`.
    pub(crate) fn unsubscribe_url(
        &self,
        contact: &Contact,
        enrollment: &Enrollment,
    ) -> std::result::Result<String, channels::Error> {
        let (contact, enrollment) = (id_of(&contact.id)?, id_of(&enrollment.id)?);
        Ok(format!(
            "{}/u/{}",
            self.config.public_url(),
            self.links.unsubscribe_token(contact, enrollment, self.clock.now())
        ))
    }

    /// Renders and sends one email effect. A suppressed address (any mail) or an opted-out
    /// contact (marketing mail) is not sent to: the effect is done, with the reason.
    pub(crate) async fn send_email(
        &self,
        journey: &Journey,
        contact: &Contact,
        key: &str,
        template: &str,
        data: &Json,
        unsubscribe_url: &str,
    ) -> std::result::Result<String, channels::Error> {
        let to = contact
            .email
            .as_deref()
            .ok_or_else(|| channels::Error::Permanent("the contact has no email address".into()))?;
        let mut rendered = self
            .catalog()
            .templates
            .render_email(template, contact.language(), data)
            .map_err(|e| channels::Error::Permanent(e.to_string()))?;
        // The last line of defence: the journey should not have got this far.
        if let Some(reason) = contact.suppressed.get("email") {
            return Ok(format!("suppressed: the address is suppressed ({reason})"));
        }
        if rendered.class == MailClass::Marketing && !contact.allows("email") {
            // Suppressed, not failed: the contact said no, and the journey goes on.
            return Ok("suppressed: the contact opted out of marketing email".into());
        }
        let tracking = tracking_of(rendered.class, rendered.tracking, journey.settings.tracking);
        if tracking != Tracking::Off {
            let sent = Sent {
                contact: id_of(&contact.id)?,
                message: key.to_string(),
                journey: journey.id.clone(),
                template: template.to_string(),
            };
            links::track(
                &mut rendered,
                tracking,
                &self.config.public_url(),
                &self.links,
                &sent,
                unsubscribe_url,
                self.clock.now(),
            );
        }
        let from = rendered.from.clone().unwrap_or_else(|| self.config.mail_from.clone());
        self.mailer
            .send(Outgoing {
                to,
                from: &from,
                email: &rendered,
                message_id: message_id(key, &from),
                unsubscribe_url,
                list_id: Some((&journey.name, &journey.id)),
                at: self.clock.now(),
            })
            .await
    }

    /// Journeys an email unsubscribe takes a contact out of: those that send marketing email.
    pub fn marketing_journeys(&self) -> Vec<String> {
        let catalog = self.catalog();
        catalog
            .journeys
            .iter()
            .filter(|journey| {
                journey.steps.iter().any(|step| match &step.kind {
                    StepKind::SendEmail { template } => catalog
                        .templates
                        .emails
                        .get(template)
                        .and_then(|variants| variants.get(""))
                        .is_some_and(|variant| variant.class == MailClass::Marketing),
                    _ => false,
                })
            })
            .map(|journey| journey.id.clone())
            .collect()
    }

    /// Opts the contact a link was sent to out of marketing email, exits their marketing
    /// journeys and records `Unsubscribed`. Doing it again changes nothing. `None`: the
    /// contact is gone (erased).
    pub async fn unsubscribe(self: &Arc<Self>, contact: i64, enrollment: i64) -> Result<Option<Unsubscribed>> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let Some(contact_id) = email::surviving_contact(&mut tx, contact).await? else {
            return Ok(None);
        };
        let Some(contact) = self.load_contact(&mut tx, contact_id, now).await? else {
            return Ok(None);
        };
        let already = contact.consent.get("email") == Some(&false);
        if !already {
            contacts::set_consent(&mut tx, contact_id, "email", false, now).await?;
        }
        let marketing = self.marketing_journeys();
        let marketing: Vec<&str> = marketing.iter().map(String::as_str).collect();
        let mut exited = Vec::new();
        for open in enrollments::open_of_contacts(&mut tx, &[contact_id], &[], &marketing).await? {
            let Some(journey) = self.journey(&mut tx, &open.journey_id, &open.version).await? else {
                continue;
            };
            if self.exit(&mut tx, &journey, &open, now).await? {
                exited.push(enrollments::enrollment_id(&open)?);
            }
        }
        email::cancel_unsent(&mut tx, &exited).await?;
        let mut jobs = Vec::new();
        if !already {
            let mut properties = Map::new();
            properties.insert("channel".into(), "email".into());
            properties.insert("enrollment".into(), enrollment.into());
            let journey = enrollments::load(&mut tx, enrollment)
                .await?
                .map(|s| s.enrollment.journey_id);
            properties.insert("journey".into(), journey.map(Json::from).unwrap_or(Json::Null));
            let occurrence = occurrence(contact_id, "Unsubscribed", properties, None, Map::new(), now);
            jobs = self.record_and_react(&mut tx, &[occurrence], now).await?.jobs;
        }
        tx.commit().await?;
        self.enqueue_after_commit(jobs).await;
        Ok(Some(Unsubscribed {
            contact: contact_id,
            already,
            exited,
        }))
    }

    /// Ends an enrollment because its contact unsubscribed: a move like any other (a
    /// compare-and-set on `seq`, with a history row), so a step running at the same time
    /// either finishes first or does nothing.
    async fn exit(
        &self,
        tx: &mut store::Tx<'_>,
        journey: &Journey,
        enrollment: &Enrollment,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let step = match &enrollment.position {
            Position::Entering { step } | Position::Parked { step, .. } => {
                journey.steps.get(*step).map(|s| s.id.clone())
            }
            Position::Finished { .. } => None,
        };
        let record = StepRecord {
            step: step.unwrap_or_default(),
            kind: "unsubscribe".into(),
            seq: enrollment.seq,
            at: now,
            outcome: "exited".into(),
            detail: "the contact unsubscribed from marketing email".into(),
        };
        let advance = Advance {
            position: Position::Finished {
                outcome: Outcome::Exited,
            },
            seq: enrollment.seq + 1,
            changes: vec![],
            effects: vec![],
            records: vec![record],
        };
        let moved = enrollments::save_move(tx, journey, enrollment, &advance, now).await?;
        if moved {
            self.count_steps(journey, &advance);
        }
        Ok(moved)
    }

    /// Records an event that came back from a sent email (`Email Opened`, `Email Link
    /// Clicked`) on the contact it was sent to, once per `dedupe` key. Returns whether it was
    /// recorded (false: seen before, or the contact was erased).
    pub async fn email_event(
        self: &Arc<Self>,
        contact: i64,
        name: &str,
        properties: Map<String, Json>,
        dedupe: &str,
        context: Map<String, Json>,
    ) -> Result<bool> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let Some(contact_id) = email::surviving_contact(&mut tx, contact).await? else {
            return Ok(false);
        };
        if store::received_fresh(&mut tx, &[(SOURCE, dedupe, ms(now))])
            .await?
            .is_empty()
        {
            return Ok(false);
        }
        let occurrence = occurrence(contact_id, name, properties, Some(dedupe), context, now);
        let jobs = self.record_and_react(&mut tx, &[occurrence], now).await?.jobs;
        tx.commit().await?;
        self.enqueue_after_commit(jobs).await;
        Ok(true)
    }

    /// Bounce and complaint reports from a provider (`source`): hard bounces and complaints
    /// suppress the address for every journey; each report becomes an event on the contacts
    /// with that address. A report seen before (same provider id) does nothing.
    pub async fn email_feedback(self: &Arc<Self>, source: &str, reports: &[Feedback]) -> Result<FeedbackReport> {
        let now = self.clock.now();
        let mut outcome = FeedbackReport::default();
        let mut tx = self.store.begin().await?;
        let mut occurrences = Vec::new();
        for report in reports {
            let address = normalize_email(&report.email).unwrap_or_else(|| report.email.trim().to_lowercase());
            let at = report.at.unwrap_or(now);
            let dedupe = match &report.id {
                Some(id) => format!("{source}/{id}"),
                None => format!("{source}/{}/{address}/{}", report.kind.as_str(), ms(at)),
            };
            if store::received_fresh(&mut tx, &[(SOURCE, &dedupe, ms(now))])
                .await?
                .is_empty()
            {
                outcome.duplicates += 1;
                continue;
            }
            if report.kind.suppresses()
                && email::suppress(
                    &mut tx,
                    "email",
                    &address,
                    report.kind.as_str(),
                    &report.detail,
                    source,
                    now,
                )
                .await?
            {
                outcome.suppressed += 1;
            }
            for contact in email::contacts_with_email(&mut tx, &address).await? {
                let mut properties = Map::new();
                properties.insert("type".into(), report.kind.as_str().into());
                properties.insert("reason".into(), report.detail.clone().into());
                properties.insert("email".into(), address.clone().into());
                properties.insert("provider".into(), source.into());
                occurrences.push(occurrence(
                    contact,
                    report.kind.event_name(),
                    properties,
                    Some(&dedupe),
                    Map::new(),
                    at.min(now),
                ));
            }
        }
        outcome.events = occurrences.len();
        let jobs = self.record_and_react(&mut tx, &occurrences, now).await?.jobs;
        tx.commit().await?;
        self.enqueue_after_commit(jobs).await;
        Ok(outcome)
    }

    async fn enqueue_after_commit(&self, jobs: Vec<(crate::queue::StepJob, DateTime<Utc>)>) {
        let count = jobs.len();
        // Stored is what counts; a job not enqueued is re-enqueued by the reconciler.
        if let Err(error) = self.enqueue_jobs(jobs).await {
            tracing::warn!(%error, jobs = count, "Email events stored, but their step jobs could not be enqueued; the reconciler will.");
        }
    }
}

/// What is tracked for an email: transactional mail never; else what the template says, else
/// what the journey says, else nothing.
pub fn tracking_of(class: MailClass, template: Option<Tracking>, journey: Option<Tracking>) -> Tracking {
    match class {
        MailClass::Transactional => Tracking::Off,
        MailClass::Marketing => template.or(journey).unwrap_or_default(),
    }
}

pub(super) fn occurrence(
    contact_id: i64,
    name: &str,
    properties: Map<String, Json>,
    message_id: Option<&str>,
    context: Map<String, Json>,
    at: DateTime<Utc>,
) -> Occurrence {
    Occurrence {
        contact_id,
        event: EventFacts {
            name: name.into(),
            properties,
            timestamp: Some(at),
        },
        at,
        received: contacts::Received {
            kind: Some("track"),
            message_id: message_id.map(str::to_string),
            context: (!context.is_empty()).then(|| Json::Object(context).to_string()),
            received_at: Some(at),
            ..contacts::Received::default()
        },
        reacts: true,
    }
}

/// A stored id read back; a link signed for id 0 would be a link to nobody.
fn id_of(id: &str) -> std::result::Result<i64, channels::Error> {
    id.parse()
        .map_err(|_| channels::Error::Permanent(format!("corrupt id `{id}` in the store")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_mail_is_never_tracked_and_the_template_overrides_the_journey() {
        use MailClass::*;
        use Tracking::*;
        assert_eq!(
            tracking_of(Transactional, Some(ClicksAndOpens), Some(ClicksAndOpens)),
            Off
        );
        assert_eq!(tracking_of(Marketing, None, None), Off);
        assert_eq!(tracking_of(Marketing, None, Some(Clicks)), Clicks);
        assert_eq!(tracking_of(Marketing, Some(Off), Some(Clicks)), Off);
        assert_eq!(tracking_of(Marketing, Some(Opens), None), Opens);
    }
}
