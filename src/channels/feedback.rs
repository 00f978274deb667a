//! What email providers report back: bounces and complaints, read from our generic JSON shape
//! or from a provider's webhook. **Pure**: bodies in, `Feedback` out, errors naming the field.
//!
//! - Generic (`POST /v1/email/bounces`): one object or an array of them:
//!   `{"email": "ada@example.com", "type": "hard_bounce" | "soft_bounce" | "complaint",
//!   "reason": "550 5.1.1 user unknown", "id": "provider event id", "timestamp": RFC 3339}`;
//!   `email` and `type` are required, `id` makes a provider's retry a no-op.
//! - Postmark (`POST /v1/email/bounces/postmark`): the Bounce and Spam Complaint webhooks, one
//!   JSON object per call: `RecordType` (`Bounce` or `SpamComplaint`), `Type` (`HardBounce`,
//!   `SoftBounce`, `SpamComplaint`, ...), `Email`, `ID`, `Description`, `Details`, `BouncedAt`.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

/// What happened to one message, as far as suppression is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The address does not exist or refuses mail for good: suppress it.
    HardBounce,
    /// The recipient marked the mail as spam: suppress it.
    Complaint,
    /// A full mailbox, a greylisting, an auto-reply: recorded, not suppressed.
    SoftBounce,
}

impl Kind {
    pub fn suppresses(self) -> bool {
        matches!(self, Kind::HardBounce | Kind::Complaint)
    }

    /// The suppression's reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::HardBounce => "hard_bounce",
            Kind::Complaint => "complaint",
            Kind::SoftBounce => "soft_bounce",
        }
    }

    /// The event recorded on the contact (Segment's email event names).
    pub fn event_name(self) -> &'static str {
        match self {
            Kind::HardBounce | Kind::SoftBounce => "Email Bounced",
            Kind::Complaint => "Email Marked as Spam",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Feedback {
    /// As reported; normalised before it is looked up.
    pub email: String,
    pub kind: Kind,
    pub detail: String,
    /// The provider's id of this report, so a retried webhook is not counted twice.
    pub id: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// A body that is not what the provider sends: the field and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn text(object: &serde_json::Map<String, Json>, key: &str) -> Option<String> {
    match object.get(key)? {
        Json::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn time(object: &serde_json::Map<String, Json>, key: &str, field: &str) -> Result<Option<DateTime<Utc>>, Invalid> {
    match text(object, key) {
        None => Ok(None),
        Some(value) => DateTime::parse_from_rfc3339(&value)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| invalid(field, format!("`{value}` is not an RFC 3339 time"))),
    }
}

/// Our generic shape: one report or an array of them.
pub fn generic(body: &Json) -> Result<Vec<Feedback>, Invalid> {
    let (items, prefix): (Vec<&Json>, bool) = match body {
        Json::Array(items) if !items.is_empty() => (items.iter().collect(), true),
        Json::Array(_) => return Err(invalid("body", "the array is empty")),
        Json::Object(_) => (vec![body], false),
        _ => return Err(invalid("body", "send a JSON object, or an array of them")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let field = |name: &str| {
                if prefix {
                    format!("[{index}].{name}")
                } else {
                    name.to_string()
                }
            };
            let object = item
                .as_object()
                .ok_or_else(|| invalid(field("").trim_end_matches('.'), "each report is a JSON object"))?;
            let email =
                text(object, "email").ok_or_else(|| invalid(field("email"), "the bounced address is required"))?;
            let kind = match text(object, "type").as_deref() {
                Some("hard_bounce" | "bounce") => Kind::HardBounce,
                Some("complaint" | "spam_complaint") => Kind::Complaint,
                Some("soft_bounce") => Kind::SoftBounce,
                Some(other) => {
                    return Err(invalid(
                        field("type"),
                        format!("`{other}` is not a report type: write hard_bounce, soft_bounce or complaint"),
                    ));
                }
                None => {
                    return Err(invalid(
                        field("type"),
                        "required: hard_bounce, soft_bounce or complaint",
                    ));
                }
            };
            Ok(Feedback {
                email,
                kind,
                detail: text(object, "reason").unwrap_or_default(),
                id: text(object, "id"),
                at: time(object, "timestamp", &field("timestamp"))?,
            })
        })
        .collect()
}

/// Postmark's Bounce and Spam Complaint webhooks. Types that say the address is gone for good
/// (`HardBounce`, `BadEmailAddress`, `ManuallyDeactivated`) are hard bounces, `SpamComplaint`
/// is a complaint, everything else (`SoftBounce`, `Transient`, `AutoResponder`, `DnsError`,
/// ...) is soft.
pub fn postmark(body: &Json) -> Result<Feedback, Invalid> {
    let object = body
        .as_object()
        .ok_or_else(|| invalid("body", "Postmark sends one JSON object per bounce"))?;
    let record = text(object, "RecordType").unwrap_or_else(|| "Bounce".into());
    let kind = match (record.as_str(), text(object, "Type").as_deref()) {
        ("SpamComplaint", _) | (_, Some("SpamComplaint")) => Kind::Complaint,
        ("Bounce", Some("HardBounce" | "BadEmailAddress" | "ManuallyDeactivated")) => Kind::HardBounce,
        ("Bounce", Some(_)) => Kind::SoftBounce,
        ("Bounce", None) => return Err(invalid("Type", "a Postmark bounce has a `Type`")),
        (other, _) => {
            return Err(invalid(
                "RecordType",
                format!("`{other}` is not a bounce or a spam complaint: point only those webhooks here"),
            ));
        }
    };
    let email = text(object, "Email").ok_or_else(|| invalid("Email", "the bounced address is required"))?;
    let detail = [text(object, "Description"), text(object, "Details")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ");
    Ok(Feedback {
        email,
        kind,
        detail,
        id: text(object, "ID"),
        at: time(object, "BouncedAt", "BouncedAt")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn postmark_hard_bounces_and_complaints_suppress_soft_ones_do_not() {
        let hard = postmark(&json!({
            "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807u64, "Type": "HardBounce",
            "TypeCode": 1, "Name": "Hard bounce", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
            "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
            "Email": "john@example.com", "From": "sender@example.com", "BouncedAt": "2019-11-05T16:33:54.9070259Z",
            "Inactive": true, "CanActivate": true, "Subject": "Test subject"
        }))
        .unwrap();
        assert_eq!(hard.kind, Kind::HardBounce);
        assert_eq!(hard.email, "john@example.com");
        assert_eq!(hard.id.as_deref(), Some("4323372036854775807"));
        assert!(hard.detail.contains("550 5.1.1"));
        assert!(hard.at.is_some());
        let complaint = postmark(&json!({"RecordType": "SpamComplaint", "Type": "SpamComplaint", "TypeCode": 512, "Email": "a@example.com", "ID": 1})).unwrap();
        assert!(complaint.kind.suppresses() && complaint.kind == Kind::Complaint);
        let soft = postmark(&json!({"RecordType": "Bounce", "Type": "SoftBounce", "Email": "a@example.com"})).unwrap();
        assert!(!soft.kind.suppresses());
        assert_eq!(
            postmark(&json!({"RecordType": "Delivery", "Email": "a@example.com"}))
                .unwrap_err()
                .field,
            "RecordType"
        );
        assert_eq!(
            postmark(&json!({"RecordType": "Bounce", "Type": "HardBounce"}))
                .unwrap_err()
                .field,
            "Email"
        );
    }

    #[test]
    fn the_generic_shape_names_the_bad_field() {
        let one = generic(&json!({"email": "a@example.com", "type": "complaint"})).unwrap();
        assert_eq!(one[0].kind, Kind::Complaint);
        let error =
            generic(&json!([{"email": "a@example.com", "type": "hard_bounce"}, {"type": "hard_bounce"}])).unwrap_err();
        assert_eq!(error.field, "[1].email");
        assert_eq!(
            generic(&json!({"email": "a@example.com", "type": "gone"}))
                .unwrap_err()
                .field,
            "type"
        );
        assert_eq!(
            generic(&json!({"email": "a@example.com", "type": "hard_bounce", "timestamp": "yesterday"}))
                .unwrap_err()
                .field,
            "timestamp"
        );
    }
}
