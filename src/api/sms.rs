//! SMS coming back: Twilio's delivery reports and inbound replies (both signed with the auth
//! token), and replies forwarded by an SMS gateway. A reply of STOP, 退订 or TD takes the
//! contact's SMS consent; START or UNSTOP gives it back.

use super::AppState;
use super::error::ApiError;
use super::extract::Query;
use crate::channels::sms::{TWILIO_INBOUND_PATH, TWILIO_STATUS_PATH, twilio_signature_matches};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `POST /v1/sms/twilio/status`: Twilio's `StatusCallback`.
pub async fn twilio_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let fields = signed_twilio_form(&state, &headers, &body, TWILIO_STATUS_PATH)?;
    let message_id = field(&fields, "MessageSid")
        .or_else(|| field(&fields, "SmsSid"))
        .ok_or_else(|| ApiError::bad_request("invalid_callback", "MessageSid", "the callback names no message"))?;
    let status = field(&fields, "MessageStatus")
        .or_else(|| field(&fields, "SmsStatus"))
        .ok_or_else(|| ApiError::bad_request("invalid_callback", "MessageStatus", "the callback has no status"))?;
    state
        .engine
        .sms_status("twilio", message_id, status, field(&fields, "ErrorCode"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sms/twilio/inbound`: Twilio's incoming-message webhook. Answers empty TwiML, so
/// Twilio sends no reply of ours (it answers STOP itself).
pub async fn twilio_inbound(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = signed_twilio_form(&state, &headers, &body, TWILIO_INBOUND_PATH)?;
    let from = field(&fields, "From").ok_or_else(|| ApiError::bad_request("invalid_callback", "From", "no sender"))?;
    let text = field(&fields, "Body").unwrap_or_default();
    state.engine.sms_reply(from, text).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response())
}

#[derive(serde::Deserialize)]
pub struct Secret {
    secret: Option<String>,
}

/// `POST /v1/sms/inbound?secret=...`: a reply forwarded by a gateway, as JSON or a form, with
/// the sender in `from` (or `mobile`, `phone`) and the text in `body` (or `content`, `text`).
pub async fn inbound(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Secret>, ApiError>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    // The query holds the credential: one that does not parse is no secret, and its 400 is
    // only for a caller with an admin token.
    let configured = state.engine.config.sms.inbound_secret.as_ref();
    let given = query.as_ref().ok().and_then(|Query(query)| query.secret.as_deref());
    let secret_ok = match (configured, given) {
        (Some(configured), Some(given)) => super::auth::matches_secret(configured, given),
        _ => false,
    };
    if !secret_ok {
        state.keys.require_admin(&headers)?;
        query?;
    }
    let fields: Vec<(String, String)> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => object
            .into_iter()
            .map(|(name, value)| {
                (
                    name,
                    value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string()),
                )
            })
            .collect(),
        _ => url::form_urlencoded::parse(&body).into_owned().collect(),
    };
    let pick = |names: &[&str]| names.iter().find_map(|name| field(&fields, name));
    let from = pick(&["from", "mobile", "phone", "From"])
        .ok_or_else(|| ApiError::bad_request("invalid_reply", "from", "give the sender's number as `from`"))?;
    let text = pick(&["body", "content", "text", "Body"])
        .ok_or_else(|| ApiError::bad_request("invalid_reply", "body", "give the reply's text as `body`"))?;
    let (asked, contacts) = state.engine.sms_reply(from, text).await?;
    let action = match asked {
        Some(false) => "opted_out",
        Some(true) => "opted_in",
        None => "none",
    };
    Ok(Json(json!({"success": true, "action": action, "contacts": contacts})))
}

/// The form fields of a Twilio request whose `X-Twilio-Signature` matches the URL we gave
/// Twilio (the public URL and `path`); 404 when no Twilio provider is configured.
fn signed_twilio_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    let twilio = state
        .engine
        .sms
        .twilio()
        .ok_or_else(|| ApiError::not_found("no Twilio provider is configured ([sms.twilio] in nurture.toml)"))?;
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("X-Twilio-Signature is missing"))?;
    let url = format!("{}{path}", state.engine.config.public_url());
    if !twilio_signature_matches(&twilio.auth_token, &url, &fields, signature) {
        return Err(ApiError::unauthorized(format!(
            "X-Twilio-Signature does not match; Twilio must call {url} (NURTURE_PUBLIC_URL)"
        )));
    }
    Ok(fields)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}
