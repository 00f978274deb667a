//! What email links and email providers call: unsubscribe (`/u/`), click redirects (`/c/`), the
//! open pixel (`/o/`), bounce and complaint reports, and the admin's view of suppressions.
//!
//! Links are authenticated by their signature only (see `channels::links`): a bad one is a 404.
//! Bounce reports need a bounce or admin token (`auth::require_bounce_token`).

use super::AppState;
use super::error::ApiError;
use super::extract::{Path, Query};
use crate::channels::feedback;
use crate::channels::links::PIXEL_GIF;
use crate::engine::ingest::normalize_email;
use crate::store::email as suppressions;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Map, Value, json};

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <style>body{{font-family:-apple-system,\"Segoe UI\",\"PingFang SC\",Arial,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1f2933}}button{{padding:.6rem 1.2rem;font-size:1rem}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    );
    // Nothing here may be cached: the same address answers differently once unsubscribed.
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn invalid_link() -> ApiError {
    ApiError {
        field: Some("token".into()),
        ..ApiError::not_found("this link is not valid: it was changed, or signed with another secret")
    }
}

/// What an expired unsubscribe link (a year after its mail) says: anyone still receiving our
/// mail has a fresh link in every message.
const EXPIRED: &str = "<p>This unsubscribe link is more than a year old. Every email we send has a fresh unsubscribe link at its foot: please use the one in the latest email.</p>";

/// `GET /u/{token}`: a confirmation page. A GET never unsubscribes: link scanners and mail
/// previews follow links; people press the button.
pub async fn unsubscribe_page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.engine.links.read_unsubscribe(&token, state.engine.clock.now()) {
        None => {
            return page(
                StatusCode::NOT_FOUND,
                "This link is not valid",
                "<p>The unsubscribe link was changed or cut short. Please use the link from the email again.</p>",
            );
        }
        Some(checked) if checked.expired => return page(StatusCode::GONE, "This link has expired", EXPIRED),
        Some(_) => {}
    }
    page(
        StatusCode::OK,
        "Unsubscribe",
        "<p>Stop receiving marketing email from us? Receipts and other mail about your account still arrive.</p>\
         <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
    )
}

/// `POST /u/{token}` with `List-Unsubscribe=One-Click` (RFC 8058: from mailbox providers' own
/// unsubscribe buttons, or from the page's form). Idempotent; answers 200, never a redirect.
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(checked) = state.engine.links.read_unsubscribe(&token, state.engine.clock.now()) else {
        return Err(invalid_link());
    };
    if checked.expired {
        return Err(ApiError {
            field: Some("token".into()),
            ..ApiError::new(
                StatusCode::GONE,
                "link_expired",
                "this unsubscribe link has expired; every email we send carries a fresh one",
            )
        });
    }
    let (contact, enrollment) = checked.value;
    if !is_one_click(&body) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "List-Unsubscribe",
            "send `List-Unsubscribe=One-Click` (RFC 8058), form-encoded",
        ));
    }
    let done = state.engine.unsubscribe(contact, enrollment).await?;
    let text = match done {
        Some(_) => "<p>You will not receive marketing email from us any more.</p>",
        None => "<p>We hold nothing about you any more, so we will not email you.</p>",
    };
    Ok(page(StatusCode::OK, "You are unsubscribed", text))
}

/// Whether an RFC 8058 body says `List-Unsubscribe=One-Click`: form-encoded, or a
/// `multipart/form-data` field of that name.
fn is_one_click(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let form = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(name, value)| name.trim() == "List-Unsubscribe" && value.trim() == "One-Click");
    let multipart = text
        .split("name=\"List-Unsubscribe\"")
        .nth(1)
        .and_then(|rest| rest.split("\r\n\r\n").nth(1))
        .is_some_and(|value| value.trim_start().starts_with("One-Click"));
    form || multipart
}

fn context(headers: &HeaderMap) -> Map<String, Value> {
    let mut context = Map::new();
    if let Some(agent) = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        context.insert("userAgent".into(), agent.into());
    }
    context
}

/// `GET /c/{token}`: records `Email Link Clicked` (the first click of each link of a message)
/// and redirects to the address signed in the token. A `HEAD` (link scanners check links
/// that way) redirects without recording.
pub async fn click(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let Some(checked) = state.engine.links.read_click(&token, state.engine.clock.now()) else {
        return Err(invalid_link());
    };
    let click = checked.value;
    // An expired link still takes the reader where it says (old mail must not break), but
    // counts nothing: it no longer says anything about this campaign.
    if method != Method::HEAD && !checked.expired {
        let mut properties = click.sent.properties();
        properties.insert("link".into(), click.link.clone().into());
        properties.insert("url".into(), click.url.clone().into());
        let dedupe = format!("click/{}/{}", click.sent.message, click.index);
        if let Err(error) = state
            .engine
            .email_event(
                click.sent.contact,
                "Email Link Clicked",
                properties,
                &dedupe,
                context(&headers),
            )
            .await
        {
            // The reader still gets where they were going.
            tracing::warn!(%error, "A click could not be recorded.");
        }
    }
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, click.url.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response())
}

/// `GET /o/{token}.gif`: records `Email Opened` (once per message) and answers a 1x1 GIF.
pub async fn open(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let token = file.strip_suffix(".gif").unwrap_or(&file);
    let Some(checked) = state.engine.links.read_open(token, state.engine.clock.now()) else {
        return Err(invalid_link());
    };
    let sent = checked.value;
    if method != Method::HEAD && !checked.expired {
        let dedupe = format!("open/{}", sent.message);
        if let Err(error) = state
            .engine
            .email_event(
                sent.contact,
                "Email Opened",
                sent.properties(),
                &dedupe,
                context(&headers),
            )
            .await
        {
            tracing::warn!(%error, "An open could not be recorded.");
        }
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, no-cache, private"),
        ],
        PIXEL_GIF.to_vec(),
    )
        .into_response())
}

pub(super) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", "body", format!("not JSON: {e}")))
}

fn feedback_error(error: feedback::Invalid) -> ApiError {
    ApiError::bad_request("invalid_report", &error.field, error.message)
}

/// `POST /v1/email/bounces`: bounce and complaint reports in our generic shape.
pub async fn bounces(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    state.keys.require_bounce_token(&headers)?;
    let reports = feedback::generic(&json_body(&body)?).map_err(feedback_error)?;
    let outcome = state.engine.email_feedback("generic", &reports).await?;
    Ok(Json(json!({"success": true, "report": outcome})))
}

/// `POST /v1/email/bounces/postmark`: Postmark's Bounce and Spam Complaint webhooks.
pub async fn postmark_bounce(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    state.keys.require_bounce_token(&headers)?;
    let report = feedback::postmark(&json_body(&body)?).map_err(feedback_error)?;
    let outcome = state.engine.email_feedback("postmark", &[report]).await?;
    Ok(Json(json!({"success": true, "report": outcome})))
}

#[derive(serde::Deserialize)]
pub struct Lookup {
    email: Option<String>,
}

/// `GET /v1/suppressions`: addresses suppressed now; with `?email=`, that address's record,
/// lifted suppressions included.
pub async fn suppressions(
    State(state): State<AppState>,
    _: super::auth::Admin,
    Query(lookup): Query<Lookup>,
) -> Result<Json<Value>, ApiError> {
    let mut connection = state.engine.store.pool.acquire().await?;
    let found = match lookup.email {
        Some(email) => {
            let email = normalize_email(&email)
                .ok_or_else(|| ApiError::bad_request("invalid_query", "email", "not an email address"))?;
            suppressions::of_addresses(&mut connection, &[("email", &email)]).await?
        }
        None => suppressions::active(&mut connection, 1000).await?,
    };
    Ok(Json(json!({"suppressions": found})))
}

/// `DELETE /v1/suppressions/{channel}/{address}`: lifts a suppression, so the address may be
/// mailed again (after the owner fixed their mailbox, or a complaint was a mistake).
pub async fn lift(
    State(state): State<AppState>,
    _: super::auth::Admin,
    Path((channel, address)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let address = match channel.as_str() {
        "email" => normalize_email(&address)
            .ok_or_else(|| ApiError::bad_request("invalid_path", "address", "not an email address"))?,
        "sms" => address.trim().to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_path",
                "channel",
                format!("`{channel}` is not a channel: write email or sms"),
            ));
        }
    };
    let mut connection = state.engine.store.pool.acquire().await?;
    let now = state.engine.clock.now();
    match suppressions::lift(&mut connection, &channel, &address, "admin", now).await? {
        Some(lifted) => Ok(Json(json!({"lifted": lifted}))),
        None => Err(ApiError::not_found(format!("{address} is not suppressed"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_click_bodies_are_recognised_form_encoded_or_multipart() {
        assert!(super::is_one_click(b"List-Unsubscribe=One-Click"));
        assert!(super::is_one_click(
            b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b--\r\n"
        ));
        assert!(!super::is_one_click(b""));
        assert!(!super::is_one_click(b"List-Unsubscribe=Later"));
    }
}
