//! `POST /v1/{identify,track,page,screen,group,alias,batch,import}`, the one-letter routes of
//! analytics.js, and its settings request. Bodies are JSON whatever the content type says
//! (browsers send `text/plain`), optionally gzipped. `200 {"success": true}` means stored.

use super::AppState;
use super::error::ApiError;
use crate::events::segment::{self, Invalid, Kind, read_body};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

enum Route {
    Single(Kind),
    Batch,
}

fn route(name: &str) -> Option<Route> {
    match name {
        "batch" | "b" | "import" => Some(Route::Batch),
        other => Kind::parse(other).map(Route::Single),
    }
}

fn invalid(error: Invalid) -> ApiError {
    ApiError::bad_request("invalid_request", &error.field, error.message)
}

pub async fn ingest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(route) = route(&name) else {
        return Err(ApiError::not_found(format!(
            "there is no /v1/{name}; send events to /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias or /v1/batch"
        )));
    };
    // A key in the header is checked before the body is even read.
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        state.keys.ingest_key(&headers, None)?;
    }
    let received_at = state.engine.clock.now();
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let limit = match route {
        Route::Batch => segment::MAX_BATCH_BYTES,
        Route::Single(_) => segment::MAX_MESSAGE_BYTES,
    };
    let body = read_body(&body, gzip, limit).map_err(invalid)?;
    let mut counter = 0u32;
    let mut fresh_id = || {
        counter += 1;
        format!(
            "nurture-{}-{}-{counter}",
            received_at.timestamp_micros(),
            std::process::id()
        )
    };
    let parsed = match route {
        Route::Batch => segment::parse_batch(&body.json, received_at, &mut fresh_id),
        Route::Single(kind) => segment::parse_single(&body.json, kind, received_at, &mut fresh_id),
    };
    // Authenticate before saying anything about the content.
    let body_key = body.json.get("writeKey").and_then(Value::as_str);
    let key = state.keys.ingest_key(&headers, body_key)?;
    let parsed = parsed.map_err(invalid)?;
    if parsed.messages.is_empty() {
        let first = parsed.rejected.first().cloned().unwrap_or(Invalid {
            index: None,
            field: "batch".into(),
            message: "no valid message".into(),
        });
        let mut error = ApiError::bad_request(
            "invalid_message",
            &first.field,
            format!("no message was accepted: {}", first.message),
        );
        error.details = Some(json!({"rejected": parsed.rejected}));
        return Err(error);
    }
    let report = state
        .engine
        .ingest(&super::Keys::source_of(&key), &parsed.messages)
        .await?;
    if parsed.rejected.is_empty() {
        return Ok((StatusCode::OK, Json(json!({"success": true}))));
    }
    Ok((
        StatusCode::OK,
        Json(json!({"success": true, "accepted": report.accepted + report.duplicates, "rejected": parsed.rejected})),
    ))
}

/// What analytics.js asks for at load: where to send events.
pub async fn settings(State(state): State<AppState>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {key}")
            .parse()
            .map_err(|_| ApiError::not_found("unknown write key"))?,
    );
    state
        .keys
        .ingest_key(&headers, None)
        .map_err(|_| ApiError::not_found("unknown write key"))?;
    let public_url = state.engine.config.public_url();
    let public = public_url.as_str();
    let (protocol, host) = public.split_once("://").unwrap_or(("https", public));
    Ok(Json(json!({
        "integrations": {"Segment.io": {"apiKey": key, "apiHost": format!("{host}/v1"), "protocol": protocol}},
        "plan": {"track": {"__default": {"enabled": true}}, "identify": {"__default": {"enabled": true}}},
    })))
}
