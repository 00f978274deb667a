//! Delivery of effects: email (lettre: SMTP, or appended to the outbox's mbox), SMS (Twilio, a
//! JSON gateway, or the outbox in the embedded mode), webhook calls (both over the one HTTP
//! client in `http`) and assignment to sales reps. Each call either succeeds, or says whether a
//! retry could help.

pub mod assign;
pub mod email;
pub mod feedback;
pub mod http;
pub mod links;
pub mod outbox;
pub mod sms;
pub mod webhook;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Worth retrying later: a timeout, SMTP 4xx, HTTP 5xx, a database hiccup.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: a bad address, a channel that is not set up.
    #[error("{0}")]
    Permanent(String),
}

impl Error {
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_))
    }
}

impl From<crate::store::Error> for Error {
    /// A database hiccup: the next attempt may go through.
    fn from(error: crate::store::Error) -> Self {
        Error::Transient(format!("database: {error}"))
    }
}
