//! I/O. Telling a rep about a lead they were given: an email (a template of the team's
//! `notify`, else a plain one written here) and/or a webhook to the team's chat robot
//! (DingTalk, WeCom, Slack). The notice names the contact, their score and why they qualified
//! (the scoring rules that gave them points).
//!
//! A notice is claimed in the database before it is sent (`notify_claimed_until`) and marked
//! done after, like an effect; one left unsent by a dead process is sent by the reconciler. A
//! crash between the send and the mark can send it twice: the email keeps its `Message-ID` and
//! the webhook its `Idempotency-Key`, both made of the lead's id.

use super::runner::Engine;
use crate::channels::email::{Outgoing, message_id};
use crate::channels::{self, webhook};
use crate::journey::sales::{NotifyEmail, Rep, Team};
use crate::journey::templates::{MailClass, RenderedEmail};
use crate::store::sales::{self as leads, Lead};
use crate::store::{self, scores};
use futures::StreamExt;
use serde_json::{Value as Json, json};
use tracing::{debug, warn};

/// Notices sent at once.
const AT_ONCE: usize = 16;

impl Engine {
    /// Tells the reps of these leads; each notice at most once at a time across processes.
    pub(crate) async fn tell_reps(&self, ids: &[i64]) {
        let sends = futures::stream::iter(ids.iter().copied())
            .map(|id| async move {
                if let Err(error) = self.tell_rep(id).await {
                    warn!(%error, lead = id, "Could not tell the rep about a lead; the reconciler will try again.");
                }
            })
            .buffer_unordered(AT_ONCE);
        sends.collect::<Vec<()>>().await;
    }

    async fn tell_rep(&self, id: i64) -> super::runner::Result<()> {
        let now = self.clock.now();
        let lease = self.lease();
        let mut connection = self.store.pool.acquire().await?;
        if !leads::claim_notice(&mut connection, id, now, now + lease).await? {
            return Ok(());
        }
        let Some(lead) = leads::get(&mut connection, id).await? else {
            return Ok(());
        };
        let data = self.notice_data(&mut connection, &lead, now).await?;
        drop(connection);
        let outcome = self.send_notice(&lead, &data).await;
        let (result, done) = match &outcome {
            Ok(result) => (result.clone(), true),
            Err(error) => (error.to_string(), false),
        };
        let told_at = self.clock.now();
        // A notice that went out stays sent: if the database cannot be reached to say so, keep
        // trying, or the reconciler would tell the rep again once the claim ran out.
        let within = if done {
            store::OUTAGE_RETRY
        } else {
            std::time::Duration::ZERO
        };
        let result = &result;
        let attempts = store::write_through_outage(&self.store.pool, within, |mut connection| async move {
            leads::notified(&mut connection, id, result, done, told_at).await
        })
        .await?;
        match outcome {
            Ok(result) => debug!(lead = id, result, "Rep told about a lead."),
            Err(error) => {
                let give_up = !error.is_transient() || attempts as u32 >= self.config.max_attempts;
                if give_up {
                    warn!(lead = id, %error, attempts, "Giving up telling the rep about a lead.");
                    let mut connection = self.store.pool.acquire().await?;
                    leads::notified(
                        &mut connection,
                        id,
                        &format!("gave up: {error}"),
                        true,
                        self.clock.now(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// The data notices render with: the contact (as journey templates see it), the lead, why
    /// the contact qualified, and the rep.
    async fn notice_data(
        &self,
        connection: &mut sqlx::AnyConnection,
        lead: &Lead,
        now: chrono::DateTime<chrono::Utc>,
    ) -> super::runner::Result<Json> {
        let catalog = self.catalog();
        let contact = self
            .load_contact(connection, lead.contact_id, now)
            .await?
            .unwrap_or_default();
        let mut points: Vec<(String, i64)> = Vec::new();
        for entry in scores::of_contact(connection, lead.contact_id).await? {
            match points.iter_mut().find(|(rule, _)| *rule == entry.rule) {
                Some((_, sum)) => *sum += entry.points,
                None => points.push((entry.rule, entry.points)),
            }
        }
        points.retain(|(_, sum)| *sum > 0);
        points.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let why = if points.is_empty() {
            "no scoring rule gave points yet".to_string()
        } else {
            points
                .iter()
                .map(|(rule, sum)| format!("{rule} (+{sum})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let team = catalog.sales.as_ref().and_then(|sales| sales.teams.get(&lead.team));
        let rep = team.and_then(|team| team.reps.iter().find(|rep| rep.id == lead.rep));
        Ok(json!({
            "contact": {
                "id": contact.id, "email": contact.email, "phone": contact.phone,
                "timezone": contact.timezone, "language": contact.language(),
                "created_at": contact.created_at.map(|at| at.to_rfc3339()),
            },
            "traits": contact.traits,
            "score": contact.score,
            "stage": contact.stage.as_str(),
            "tags": contact.tags,
            "now": now.to_rfc3339(),
            "lead": {
                "id": lead.id,
                "team": lead.team,
                "team_name": team.map(|team| team.name.as_str()),
                "accept_by": lead.accept_by.map(|at| at.to_rfc3339()),
                "accept_within": team.and_then(|team| team.accept_within).map(|d| d.to_string()),
                "why": why,
                "reasons": points.iter().map(|(rule, sum)| json!({"rule": rule, "points": sum})).collect::<Vec<_>>(),
            },
            "rep": rep.map(|rep| json!({"id": rep.id, "name": rep.name, "email": rep.email, "phone": rep.phone}))
                .unwrap_or_else(|| json!({"id": lead.rep})),
        }))
    }

    /// Sends a lead's notice by every way the team asks for.
    async fn send_notice(&self, lead: &Lead, data: &Json) -> Result<String, channels::Error> {
        let catalog = self.catalog();
        let team = catalog
            .sales
            .as_ref()
            .and_then(|sales| sales.teams.get(&lead.team))
            .ok_or_else(|| channels::Error::Permanent(format!("sales team `{}` is gone from sales.yaml", lead.team)))?;
        let rep =
            team.reps.iter().find(|rep| rep.id == lead.rep).ok_or_else(|| {
                channels::Error::Permanent(format!("rep `{}` is gone from team `{}`", lead.rep, team.id))
            })?;
        let key = format!("lead/{}/notice", lead.id);
        let mut done = Vec::new();
        if let Some(email) = self.notice_email(team, rep, data)? {
            let to = rep.email.as_deref().unwrap_or_default();
            let from = email.from.clone().unwrap_or_else(|| self.config.mail_from.clone());
            let sent = self
                .mailer
                .send(Outgoing {
                    to,
                    from: &from,
                    email: &email,
                    message_id: message_id(&key, &from),
                    unsubscribe_url: "",
                    list_id: None,
                    at: self.clock.now(),
                })
                .await?;
            done.push(format!("email to {to}: {sent}"));
        }
        if let Some(hook) = &team.notify.webhook {
            let call = webhook::Call {
                method: &hook.method,
                url: &hook.url,
                headers: &hook.headers,
                body: hook.body.as_ref(),
                key: &key,
            };
            done.push(webhook::deliver(&self.webhooks, &catalog.templates, data, call).await?);
        }
        if done.is_empty() {
            return Ok("nobody to tell: the rep has no email and the team no webhook".into());
        }
        Ok(done.join("; "))
    }

    /// The email to the rep, if there is one to send.
    fn notice_email(&self, team: &Team, rep: &Rep, data: &Json) -> Result<Option<RenderedEmail>, channels::Error> {
        if rep.email.is_none() {
            return Ok(None);
        }
        match &team.notify.email {
            NotifyEmail::Off => Ok(None),
            NotifyEmail::Template { name, .. } => self
                .catalog()
                .templates
                .render_email(name, None, data)
                .map(Some)
                .map_err(|e| channels::Error::Permanent(e.to_string())),
            NotifyEmail::BuiltIn => Ok(Some(built_in_email(data))),
        }
    }
}

/// The email a rep gets when `sales.yaml` names no template: who, how to reach them, the
/// score and why, and the deadline to accept.
fn built_in_email(data: &Json) -> RenderedEmail {
    let text = |value: &Json| match value {
        Json::String(text) => text.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    };
    let contact = &data["contact"];
    let lead = &data["lead"];
    let who = [&data["traits"]["name"], &contact["email"], &contact["phone"]]
        .into_iter()
        .map(text)
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| format!("contact {}", text(&contact["id"])));
    let mut lines = vec![
        format!("{} has a new lead for you: {who}.", text(&lead["team_name"])),
        String::new(),
    ];
    for (label, value) in [
        ("Email", &contact["email"]),
        ("Phone", &contact["phone"]),
        ("Company", &data["traits"]["company"]),
        ("Region", &data["traits"]["region"]),
    ] {
        let value = text(value);
        if !value.is_empty() {
            lines.push(format!("{label}: {value}"));
        }
    }
    lines.push(format!("Score: {} ({})", text(&data["score"]), text(&data["stage"])));
    lines.push(format!("Why: {}", text(&lead["why"])));
    let accept_by = text(&lead["accept_by"]);
    lines.push(String::new());
    if accept_by.is_empty() {
        lines.push(format!(
            "Lead {}: accept it, or reject it with a reason.",
            text(&lead["id"])
        ));
    } else {
        lines.push(format!(
            "Lead {}: accept it by {accept_by}, or it goes to another rep. Reject it with a reason if it is not for you.",
            text(&lead["id"])
        ));
    }
    let body = lines.join("\n");
    let html = format!(
        "<pre style=\"font-family: sans-serif\">{}</pre>",
        body.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    RenderedEmail {
        template: "lead-assigned (built in)".into(),
        language: String::new(),
        subject: format!("New lead: {who} (score {})", text(&data["score"])),
        from: None,
        reply_to: None,
        preheader: None,
        class: MailClass::Transactional,
        tracking: None,
        html,
        text: body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_notice_names_the_contact_the_score_and_why() {
        let data = json!({
            "contact": {"id": "7", "email": "ada@example.com", "phone": null},
            "traits": {"company": "Analytical <Engines>"},
            "score": 72, "stage": "sql",
            "lead": {"id": 12, "team_name": "Inbound SDR", "accept_by": "2026-01-05T06:00:00+00:00", "why": "pricing-page (+40), demo-request (+30)"},
        });
        let email = built_in_email(&data);
        assert_eq!(email.subject, "New lead: ada@example.com (score 72)");
        assert!(email.text.contains("Company: Analytical <Engines>"), "{}", email.text);
        assert!(
            email.text.contains("Why: pricing-page (+40), demo-request (+30)"),
            "{}",
            email.text
        );
        assert!(
            email.text.contains("accept it by 2026-01-05T06:00:00+00:00"),
            "{}",
            email.text
        );
        assert!(email.html.contains("Analytical &lt;Engines&gt;"), "{}", email.html);
        assert_eq!(email.class, MailClass::Transactional);
    }
}
