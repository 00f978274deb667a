//! Email through lettre: SMTP when `smtp_url` is set, else appended to the outbox
//! (`outbox/mail/<day>.mbox`, see `outbox.rs`).

use super::Error;
use super::outbox::Outbox;
use crate::journey::templates::{MailClass, RenderedEmail};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Clone)]
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(Outbox),
}

/// A rendered email ready to send.
pub struct Outgoing<'a> {
    pub to: &'a str,
    pub from: &'a str,
    pub email: &'a RenderedEmail,
    /// Idempotency aid: a stable Message-ID derived from the effect key.
    pub message_id: String,
    pub unsubscribe_url: &'a str,
    /// When it is sent, by the engine's clock (names the outbox's file of the day).
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Mailer {
    pub fn from_config(smtp_url: Option<&str>, outbox: &std::path::Path) -> Result<Mailer, Error> {
        match smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| Error::Permanent(format!("bad smtp_url: {e}")))?
                    .timeout(Some(std::time::Duration::from_secs(20)))
                    .build();
                Ok(Mailer::Smtp(transport))
            }
            None => Ok(Mailer::Outbox(Outbox::new(outbox))),
        }
    }

    pub async fn send(&self, outgoing: Outgoing<'_>) -> Result<String, Error> {
        let message = build(&outgoing)?;
        match self {
            Mailer::Smtp(transport) => match transport.send(message).await {
                Ok(response) => Ok(format!("smtp {}", response.code())),
                Err(error) if error.is_permanent() => {
                    Err(Error::Permanent(format!("SMTP refused the message: {error}")))
                }
                Err(error) => Err(Error::Transient(format!("SMTP failed: {error}"))),
            },
            Mailer::Outbox(outbox) => {
                let file = outbox
                    .mail(&message.formatted(), outgoing.at)
                    .await
                    .map_err(|e| Error::Transient(format!("cannot write to the outbox: {e}")))?;
                Ok(format!("outbox {file}"))
            }
        }
    }
}

fn build(outgoing: &Outgoing<'_>) -> Result<Message, Error> {
    let email = outgoing.email;
    let to: Mailbox = outgoing
        .to
        .parse()
        .map_err(|e| Error::Permanent(format!("bad recipient `{}`: {e}", outgoing.to)))?;
    let from: Mailbox = email
        .from
        .as_deref()
        .unwrap_or(outgoing.from)
        .parse()
        .map_err(|e| Error::Permanent(format!("bad sender address: {e}")))?;
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(outgoing.message_id.clone()));
    if let Some(reply_to) = &email.reply_to {
        builder = builder.reply_to(
            reply_to
                .parse()
                .map_err(|e| Error::Permanent(format!("bad reply_to: {e}")))?,
        );
    }
    if email.class == MailClass::Marketing {
        // RFC 8058 one-click unsubscribe.
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{}>", outgoing.unsubscribe_url),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| Error::Permanent(format!("cannot build the message: {e}")))
}
