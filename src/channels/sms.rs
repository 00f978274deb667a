//! SMS: Twilio's Messages API (or any service that speaks it), a JSON gateway configured in
//! `nurture.toml` (Chinese SMS gateways: URL, headers and a body template, no code), or, in the
//! embedded mode only, a JSON line per message in `outbox/sms/<day>.jsonl`. Also the pieces of the way back: Twilio's
//! request signature, delivery states, and the replies that opt a contact out or back in.

use super::Error;
use super::http::{self, Client};
use crate::config::{Config, SmsWebhookConfig, TwilioConfig};
use crate::journey::templates::{RenderedSms, SmsEncoding, Templates};
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use std::sync::Arc;

pub enum SmsSender {
    /// The embedded mode: one JSON line per message in `outbox/sms/<day>.jsonl`.
    Outbox(super::outbox::Outbox),
    Twilio(Twilio),
    Gateway(Gateway),
    /// The production mode without a provider: `Engine::install` refuses journeys that send
    /// SMS, so this only answers messages of older journey versions still in flight.
    Missing,
}

pub struct Twilio {
    config: TwilioConfig,
    /// Where Twilio reports delivery states (`{public_url}/v1/sms/twilio/status`); the same
    /// URL is what it signs.
    status_callback: String,
    client: Arc<Client>,
}

pub struct Gateway {
    config: SmsWebhookConfig,
    client: Arc<Client>,
}

/// What a provider made of one message.
#[derive(Debug, PartialEq)]
pub enum Handed {
    Sent {
        provider: &'static str,
        /// The provider's id for the message, else the effect key.
        message_id: String,
        status: String,
    },
    /// Twilio refuses the number because its owner replied STOP to our sender (21610).
    OptedOut,
}

impl SmsSender {
    /// The provider `[sms]` names; the outbox in the embedded mode; `Missing` in production.
    pub fn from_config(config: &Config) -> Result<SmsSender, Error> {
        let sms = &config.sms;
        let client = || Arc::new(Client::new(sms.timeout, None));
        match (&sms.twilio, &sms.webhook) {
            (Some(_), Some(_)) => Err(Error::Permanent(
                "nurture.toml: [sms.twilio] and [sms.webhook] are both set; keep the one provider you use".into(),
            )),
            (Some(twilio), None) => {
                let missing = |what: &str| {
                    Error::Permanent(format!(
                        "nurture.toml [sms.twilio]: {what} (or set NURTURE_TWILIO_ACCOUNT_SID / NURTURE_TWILIO_AUTH_TOKEN / NURTURE_TWILIO_FROM)"
                    ))
                };
                if twilio.account_sid.is_empty() {
                    return Err(missing("`account_sid` is empty"));
                }
                if twilio.auth_token.is_empty() {
                    return Err(missing("`auth_token` is missing"));
                }
                if twilio.from.is_none() == twilio.messaging_service_sid.is_none() {
                    return Err(missing("give exactly one of `from` and `messaging_service_sid`"));
                }
                Ok(SmsSender::Twilio(Twilio {
                    config: twilio.clone(),
                    status_callback: format!("{}{TWILIO_STATUS_PATH}", config.public_url()),
                    client: client(),
                }))
            }
            (None, Some(gateway)) => {
                check_body_templates(&gateway.body)?;
                if url::Url::parse(&gateway.url).is_err() {
                    return Err(Error::Permanent(format!(
                        "nurture.toml [sms.webhook]: `url` = `{}` is not a URL; write it like https://sms.example.com/send",
                        gateway.url
                    )));
                }
                Ok(SmsSender::Gateway(Gateway {
                    config: gateway.clone(),
                    client: client(),
                }))
            }
            (None, None) if config.is_embedded() => Ok(SmsSender::Outbox(super::outbox::Outbox::new(&config.outbox))),
            (None, None) => Ok(SmsSender::Missing),
        }
    }

    /// The outbox SMS are appended to, in the embedded mode (erasure rewrites it).
    pub fn outbox(&self) -> Option<&super::outbox::Outbox> {
        match self {
            SmsSender::Outbox(outbox) => Some(outbox),
            _ => None,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, SmsSender::Missing)
    }

    /// The Twilio settings, for checking the signature of its callbacks.
    pub fn twilio(&self) -> Option<&TwilioConfig> {
        match self {
            SmsSender::Twilio(twilio) => Some(&twilio.config),
            _ => None,
        }
    }

    pub async fn send(
        &self,
        templates: &Templates,
        key: &str,
        to: &str,
        sms: &RenderedSms,
        at: DateTime<Utc>,
    ) -> Result<Handed, Error> {
        match self {
            SmsSender::Outbox(outbox) => {
                let line = json!({"key": key, "to": to, "body": sms.body, "segments": sms.segments, "encoding": sms.encoding, "template": sms.template});
                outbox
                    .line("sms", &line, at)
                    .await
                    .map_err(|e| Error::Transient(format!("cannot write to the outbox: {e}")))?;
                Ok(Handed::Sent {
                    provider: "outbox",
                    message_id: key.to_string(),
                    status: "sent".into(),
                })
            }
            SmsSender::Twilio(twilio) => twilio.send(to, &sms.body).await,
            SmsSender::Gateway(gateway) => gateway.send(templates, key, to, sms).await,
            SmsSender::Missing => Err(Error::Permanent(
                "no SMS provider is configured: set [sms.twilio] or [sms.webhook] in nurture.toml".into(),
            )),
        }
    }
}

pub const TWILIO_STATUS_PATH: &str = "/v1/sms/twilio/status";
pub const TWILIO_INBOUND_PATH: &str = "/v1/sms/twilio/inbound";

impl Twilio {
    async fn send(&self, to: &str, body: &str) -> Result<Handed, Error> {
        let config = &self.config;
        // Built in a block: the serializer is not `Send`, and must not live across the await.
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("To", to).append_pair("Body", body);
            match (&config.from, &config.messaging_service_sid) {
                (Some(from), _) => form.append_pair("From", from),
                (None, Some(service)) => form.append_pair("MessagingServiceSid", service),
                (None, None) => &mut form,
            };
            form.append_pair("StatusCallback", &self.status_callback);
            form.finish()
        };
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.base_url.trim_end_matches('/'),
            config.account_sid
        );
        use base64::Engine as _;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", config.account_sid, config.auth_token));
        let reply = self
            .client
            .send(http::Request {
                method: "POST",
                url: &url,
                headers: vec![
                    ("Authorization".into(), format!("Basic {credentials}")),
                    ("Content-Type".into(), "application/x-www-form-urlencoded".into()),
                    ("Accept".into(), "application/json".into()),
                ],
                body: form.into_bytes(),
            })
            .await?;
        let answer: Json = serde_json::from_slice(&reply.body).unwrap_or(Json::Null);
        if reply.status == 400 && answer["code"] == 21610 {
            return Ok(Handed::OptedOut);
        }
        reply.judge("Twilio")?;
        let message_id = answer["sid"]
            .as_str()
            .ok_or_else(|| Error::Transient(format!("Twilio's answer has no `sid`: {}", reply.snippet())))?;
        Ok(Handed::Sent {
            provider: "twilio",
            message_id: message_id.to_string(),
            status: answer["status"].as_str().unwrap_or("queued").to_string(),
        })
    }
}

impl Gateway {
    async fn send(&self, templates: &Templates, key: &str, to: &str, sms: &RenderedSms) -> Result<Handed, Error> {
        let config = &self.config;
        let data = json!({
            "to": to,
            "body": sms.body,
            "segments": sms.segments,
            "encoding": sms.encoding,
            "reference": key,
        });
        let body = templates
            .render_json(&config.body, &data)
            .map_err(|e| Error::Permanent(format!("the [sms.webhook] body failed to render: {e}")))?;
        let mut headers: Vec<(String, String)> = config.headers.clone().into_iter().collect();
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        let reply = self
            .client
            .send(http::Request {
                method: "POST",
                url: &config.url,
                headers,
                body: serde_json::to_vec(&body).unwrap_or_default(),
            })
            .await?;
        reply.judge("the SMS gateway")?;
        let answer: Json = serde_json::from_slice(&reply.body).unwrap_or(Json::Null);
        if let Some(pointer) = &config.success_pointer {
            let wanted = config.success_value.as_ref().unwrap_or(&Json::Null);
            if !same_value(answer.pointer(pointer), wanted) {
                // A gateway that says no with a 200 means it: a bad number, an unapproved
                // template or signature. Retrying sends the same refusal.
                return Err(Error::Permanent(format!(
                    "the SMS gateway refused the message: {}",
                    reply.snippet()
                )));
            }
        }
        let message_id = config
            .id_pointer
            .as_deref()
            .and_then(|pointer| answer.pointer(pointer))
            .map(|id| id.as_str().map(str::to_string).unwrap_or_else(|| id.to_string()))
            .unwrap_or_else(|| key.to_string());
        Ok(Handed::Sent {
            provider: "webhook",
            message_id,
            status: "sent".into(),
        })
    }
}

/// `0` and `"0"` are the same answer: gateways differ in whether their codes are strings.
fn same_value(found: Option<&Json>, wanted: &Json) -> bool {
    match (found, wanted) {
        (Some(found), wanted) if found == wanted => true,
        (Some(Json::String(text)), Json::Number(number)) | (Some(Json::Number(number)), Json::String(text)) => {
            text.parse::<f64>().ok() == number.as_f64()
        }
        _ => false,
    }
}

fn check_body_templates(body: &Json) -> Result<(), Error> {
    match body {
        Json::String(text) => handlebars::Template::compile(text).map(|_| ()).map_err(|e| {
            Error::Permanent(format!(
                "nurture.toml [sms.webhook] body: `{text}` is not a valid template: {}",
                e.reason()
            ))
        }),
        Json::Array(items) => items.iter().try_for_each(check_body_templates),
        Json::Object(fields) => fields.values().try_for_each(check_body_templates),
        _ => Ok(()),
    }
}

/// Twilio's `X-Twilio-Signature`: base64 of HMAC-SHA1 with the auth token over the URL it
/// called followed by every form field as name then value, sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, fields: &[(String, String)]) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    base64::engine::general_purpose::STANDARD.encode(twilio_mac(auth_token, url, fields).finalize().into_bytes())
}

/// Whether `signature` is Twilio's for this request, compared in constant time.
pub fn twilio_signature_matches(auth_token: &str, url: &str, fields: &[(String, String)], signature: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac;
    match base64::engine::general_purpose::STANDARD.decode(signature.trim()) {
        Ok(given) => twilio_mac(auth_token, url, fields).verify_slice(&given).is_ok(),
        Err(_) => false,
    }
}

fn twilio_mac(auth_token: &str, url: &str, fields: &[(String, String)]) -> hmac::Hmac<sha1::Sha1> {
    use hmac::{KeyInit, Mac};
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// What a reply asks for: `Some(false)` to stop SMS, `Some(true)` to start them again.
/// Twilio's keywords, and the Chinese carriers' 退订 / TD (回复TD退订).
pub fn reply_keyword(body: &str) -> Option<bool> {
    let word = body
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() || "。！，".contains(c))
        .to_uppercase();
    match word.as_str() {
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "OPTOUT" | "REVOKE" | "TD" | "T" | "退订"
        | "退訂" => Some(false),
        "START" | "UNSTOP" | "YES" | "SUBSCRIBE" => Some(true),
        _ => None,
    }
}

/// `GSM-7` or `UCS-2`, as stored with each message.
pub fn encoding_name(encoding: SmsEncoding) -> &'static str {
    match encoding {
        SmsEncoding::Gsm7 => "GSM-7",
        SmsEncoding::Ucs2 => "UCS-2",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signature_matches_the_published_example() {
        let fields: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .rev()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(twilio_signature("12345", url, &fields), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(twilio_signature_matches(
            "12345",
            url,
            &fields,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!twilio_signature_matches(
            "12346",
            url,
            &fields,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!twilio_signature_matches(
            "12345",
            url,
            &fields,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8"
        ));
    }

    #[test]
    fn stop_words_in_english_and_chinese_opt_out_and_start_opts_in() {
        for stop in ["STOP", " stop ", "Stop.", "退订", "TD", "td", "unsubscribe"] {
            assert_eq!(reply_keyword(stop), Some(false), "{stop}");
        }
        for start in ["START", "unstop", "Yes"] {
            assert_eq!(reply_keyword(start), Some(true), "{start}");
        }
        for other in ["stop sending me these please", "谢谢", "", "TDD"] {
            assert_eq!(reply_keyword(other), None, "{other}");
        }
    }

    #[test]
    fn gateway_success_codes_compare_as_numbers_or_text() {
        assert!(same_value(Some(&json!(0)), &json!(0)));
        assert!(same_value(Some(&json!("0")), &json!(0)));
        assert!(same_value(Some(&json!(0)), &json!("0")));
        assert!(same_value(Some(&json!("OK")), &json!("OK")));
        assert!(!same_value(Some(&json!(1001)), &json!(0)));
        assert!(!same_value(None, &json!(0)));
    }
}
