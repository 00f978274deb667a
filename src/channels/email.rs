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
    /// The journey's name and id: marketing mail gets a `List-Id` (RFC 2919) per journey, which
    /// mailbox providers use to group and filter it.
    pub list_id: Option<(&'a str, &'a str)>,
}

/// `<enrollment.step.seq@domain>`: one `Message-ID` per effect key, so a message sent twice
/// (the one window in ARCHITECTURE.md) is recognisably the same message. The domain is the
/// sender's, as receivers expect.
pub fn message_id(key: &str, from: &str) -> String {
    format!("<{}@{}>", key.replace('/', "."), domain_of(from))
}

/// The domain of `Name <user@domain>` or `user@domain`.
fn domain_of(address: &str) -> String {
    let domain = address
        .rsplit_once('@')
        .map(|(_, rest)| rest.trim_end().trim_end_matches('>').trim())
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    domain.unwrap_or("nurture.invalid").to_ascii_lowercase()
}

impl Mailer {
    /// The outbox mail is appended to, in the embedded mode (erasure rewrites it).
    pub fn outbox(&self) -> Option<&Outbox> {
        match self {
            Mailer::Outbox(outbox) => Some(outbox),
            Mailer::Smtp(_) => None,
        }
    }

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
            Mailer::Smtp(transport) => match transport
                .send(message)
                .await
                .inspect(|_| crate::nodelay::now_and_then())
            {
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
        .map_err(|e| Error::Permanent(format!("the recipient address is not valid: {e}")))?;
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
        if let Some((name, id)) = outgoing.list_id {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Id"),
                format!("{name} <{id}.{}>", domain_of(outgoing.from)),
            ));
        }
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| Error::Permanent(format!("cannot build the message: {e}")))
}
