//! Erasure (GDPR/PIPL): nothing that names the person is left, in the database, in open
//! leads or in the outbox; anonymous counts remain for reports.

use super::runner::{Engine, Result};
use crate::store::{effects, identities};
use chrono::{DateTime, Days, Utc};
use std::collections::{BTreeMap, HashSet};

impl Engine {
    /// Erases a contact: identifiers, profile, traits, consent, tags, event and effect
    /// details, step details (`store::identities::erase`); its open leads close and free their
    /// reps' slots (`commit_erasure`); then the messages it got are redacted from the outbox.
    /// False: no such contact.
    ///
    /// The outbox is rewritten after the commit: a crash in between leaves those files as
    /// they were (erase again: it is idempotent), and a message being sent at this very moment
    /// may land after the rewrite.
    pub async fn erase(&self, contact_id: i64) -> Result<bool> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let mut messages = effects::messages_of_contact(&mut tx, contact_id).await?;
        // Reps' lead notices name the contact too (`Message-ID: <lead.ID.notice@...>`).
        for (lead, assigned, told) in crate::store::sales::notices_of_contact(&mut tx, contact_id).await? {
            messages.push(effects::Handed {
                key: format!("lead/{lead}/notice"),
                kind: "email".into(),
                from: assigned,
                until: told,
            });
        }
        if !identities::erase(&mut tx, contact_id, now).await? {
            return Ok(false);
        }
        self.commit_erasure(tx, contact_id, now).await?;
        self.redact_outbox(&messages, now).await;
        Ok(true)
    }

    /// Rewrites the outbox files of the days the messages may have been written on.
    async fn redact_outbox(&self, messages: &[effects::Handed], now: DateTime<Utc>) {
        let mut files: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for message in messages {
            let (folder, extension) = if message.kind == "sms" {
                ("sms", "jsonl")
            } else {
                ("mail", "mbox")
            };
            let until = message.until.unwrap_or(now).max(message.from);
            let mut day = message.from.date_naive();
            while day <= until.date_naive() {
                files
                    .entry(format!("{folder}/{}.{extension}", day.format("%Y-%m-%d")))
                    .or_default()
                    .insert(message.key.clone());
                let Some(next) = day.checked_add_days(Days::new(1)) else {
                    break;
                };
                day = next;
            }
        }
        for (file, keys) in files {
            let outbox = if file.starts_with("sms/") {
                self.sms.outbox()
            } else {
                self.mailer.outbox()
            };
            let Some(outbox) = outbox else { continue };
            match outbox.redact(&file, keys).await {
                Ok(count) => tracing::debug!(file, count, "Erased messages redacted from the outbox."),
                Err(error) => {
                    tracing::error!(%error, file, "Could not redact erased messages from the outbox; erase the contact again.")
                }
            }
        }
    }
}
