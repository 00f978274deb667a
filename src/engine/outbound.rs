//! I/O. The engine's side of SMS and webhook delivery: what `perform` calls for those two
//! effects, the SMS log (segments, cost, provider ids) written after a batch's effects, and
//! the start-up check that the production mode has an SMS provider when journeys send SMS.

use super::contact::Contact;
use super::runner::{Engine, Error, Result};
use crate::channels::sms::{self, Handed};
use crate::channels::{self, webhook};
use crate::journey::Catalog;
use crate::journey::model::{Journey, StepKind};
use crate::journey::templates::RenderedSms;
use crate::store::{self, sms as sms_store};
use chrono::{DateTime, Utc};
use tracing::warn;

/// What a sent SMS leaves to record: written with the batch's connection, after its effects.
pub(crate) enum SmsLog {
    Sent(sms_store::Sent),
    /// The provider says the number replied STOP to us: the contact's SMS consent goes.
    OptedOut(i64),
}

impl Engine {
    /// Sends one rendered SMS and notes its segments, cost and provider id for the SMS log.
    pub(crate) async fn send_sms(
        &self,
        journey: &Journey,
        contact: &Contact,
        key: &str,
        to: &str,
        sms: &RenderedSms,
        now: DateTime<Utc>,
    ) -> Result<String, channels::Error> {
        let contact_id: i64 = contact
            .id
            .parse()
            .map_err(|_| channels::Error::Permanent(format!("contact id {} is not a number", contact.id)))?;
        match self.sms.send(&self.catalog().templates, key, to, sms, now).await? {
            Handed::Sent {
                provider,
                message_id,
                status,
            } => {
                let price = self.config.sms.price_per_segment;
                let result = format!("{provider} {message_id} ({} segments)", sms.segments);
                self.note_sms(SmsLog::Sent(sms_store::Sent {
                    provider: provider.into(),
                    message_id,
                    effect_key: key.into(),
                    contact_id,
                    journey_id: journey.id.clone(),
                    segments: sms.segments,
                    encoding: sms::encoding_name(sms.encoding).into(),
                    cost: price.map(|price| price * f64::from(sms.segments)),
                    currency: price.map(|_| self.config.sms.currency.clone()),
                    status,
                    sent_at: now,
                }));
                Ok(result)
            }
            Handed::OptedOut => {
                self.note_sms(SmsLog::OptedOut(contact_id));
                // Suppressed, not failed, like any opted-out contact: the journey goes on.
                Ok("suppressed: the provider says the number replied STOP".into())
            }
        }
    }

    fn note_sms(&self, entry: SmsLog) {
        self.sms_log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }

    /// Writes what sent SMS left to record, through the caller's connection. A failure keeps
    /// the entries for the next batch rather than failing this one, whose messages are sent.
    pub(crate) async fn record_sms_log(&self, connection: &mut sqlx::AnyConnection) -> Result<()> {
        let entries = std::mem::take(&mut *self.sms_log.lock().unwrap_or_else(|e| e.into_inner()));
        if entries.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let mut sent = Vec::new();
        let mut opted_out = Vec::new();
        for entry in &entries {
            match entry {
                SmsLog::Sent(message) => sent.push(message.clone()),
                SmsLog::OptedOut(contact) => opted_out.push(*contact),
            }
        }
        // One transaction: a message is never seen without its first delivery status.
        let written: Result<(), store::Error> = async {
            let mut tx = sqlx::Connection::begin(&mut *connection).await?;
            sms_store::record_sent(&mut tx, &sent).await?;
            for contact in &opted_out {
                store::contacts::set_consent(&mut tx, *contact, "sms", false, now).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(error) = written {
            warn!(%error, count = entries.len(), "Could not record sent SMS; keeping them for the next batch.");
            self.sms_log.lock().unwrap_or_else(|e| e.into_inner()).extend(entries);
        }
        Ok(())
    }

    /// An SMS reply from `phone`: STOP, 退订, TD and the like take the SMS consent of every
    /// contact with that number; START or UNSTOP give it back. Returns what the reply asked for
    /// (`None`: an ordinary reply, nothing changes) and how many contacts it changed.
    pub async fn sms_reply(&self, phone: &str, body: &str) -> Result<(Option<bool>, usize)> {
        let Some(granted) = sms::reply_keyword(body) else {
            return Ok((None, 0));
        };
        let Some(phone) = super::ingest::normalize_phone(phone, &self.config.phone_country_code) else {
            return Ok((Some(granted), 0));
        };
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let contacts = sms_store::contacts_with_phone(&mut tx, &phone).await?;
        for contact in &contacts {
            store::contacts::set_consent(&mut tx, *contact, "sms", granted, now).await?;
        }
        tx.commit().await?;
        tracing::info!(contacts = contacts.len(), granted, "SMS consent changed by a reply.");
        Ok((Some(granted), contacts.len()))
    }

    /// A provider's delivery report on one message; only moves its state forward.
    pub async fn sms_status(
        &self,
        provider: &str,
        message_id: &str,
        status: &str,
        error_code: Option<&str>,
    ) -> Result<bool> {
        let mut connection = self.store.pool.acquire().await?;
        Ok(sms_store::record_status(
            &mut connection,
            provider,
            message_id,
            status,
            error_code,
            self.clock.now(),
        )
        .await?)
    }

    /// Performs a `webhook` effect.
    pub(crate) async fn call_webhook(
        &self,
        data: &serde_json::Value,
        call: webhook::Call<'_>,
    ) -> Result<String, channels::Error> {
        webhook::deliver(&self.webhooks, &self.catalog().templates, data, call).await
    }

    /// From now on this process performs effects: refuses to, now and at every reload, while
    /// a journey sends SMS that it has no way to send.
    pub fn start_sending(&self) -> Result<()> {
        self.sends.store(true, std::sync::atomic::Ordering::Relaxed);
        self.check_sms_provider(&self.catalog())
    }

    /// Refuses a catalog that sends SMS when there is no way to send them (the production
    /// mode without `[sms]`): better a loud start than messages recorded and never sent.
    pub(crate) fn check_sms_provider(&self, catalog: &Catalog) -> Result<()> {
        if !self.sms.is_missing() {
            return Ok(());
        }
        let sends_sms = catalog.journeys.iter().find_map(|journey| {
            journey
                .steps
                .iter()
                .find(|step| matches!(step.kind, StepKind::SendSms { .. }))
                .map(|step| {
                    format!(
                        "{}:{}:{}: step `{}`",
                        journey.file, step.pos.line, step.pos.col, step.id
                    )
                })
        });
        match sends_sms {
            None => Ok(()),
            Some(place) => Err(Error::Invalid(format!(
                "{place} sends SMS, and the production mode has no SMS provider: add [sms.twilio] or [sms.webhook] to nurture.toml (see README), or remove the step"
            ))),
        }
    }
}
