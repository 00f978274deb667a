//! `POST /v1/{identify,track,page,screen,group,alias,batch,import}`, the one-letter routes of
//! analytics.js, and its settings request. Bodies are JSON whatever the content type says
//! (browsers send `text/plain`), optionally gzipped. `200 {"success": true}` means stored.

use super::AppState;
use super::error::ApiError;
use super::extract::Path;
use super::limits::RateLimiter;
use crate::config::Acknowledge;
use crate::events::segment::{self, Invalid, Kind, read_body};
use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

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
    Extension(limiter): Extension<Arc<RateLimiter>>,
    name: Result<Path<String>, ApiError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // A path that is not UTF-8 names no route; `receive` says so once the caller is known.
    let name = name.ok().map(|Path(name)| name);
    let outcome = receive(&state, &limiter, name.as_deref(), headers, body).await;
    // Refused messages of a readable body are counted where they are known, one by one.
    if let Err(error) = &outcome
        && error.code != "invalid_message"
    {
        state.engine.metrics.events_rejected(rejection_reason(error), 1);
    }
    outcome
}

/// The `reason` label of `nurture_events_rejected_total` for a refused request.
fn rejection_reason(error: &ApiError) -> &'static str {
    match error.status.as_u16() {
        401 | 403 => "unauthorized",
        404 => "unknown_route",
        413 => "too_large",
        429 => "rate_limited",
        400..=499 => "invalid",
        _ => "unavailable",
    }
}

async fn receive(
    state: &AppState,
    limiter: &RateLimiter,
    name: Option<&str>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    // The credential before the route: a key in the header is checked before the body is even
    // read, and a caller without a key learns nothing about the path.
    let header_auth = headers.contains_key(axum::http::header::AUTHORIZATION);
    let header_key = if header_auth {
        Some(state.keys.ingest_key(&headers, None)?)
    } else {
        None
    };
    let Some(route) = name.and_then(route) else {
        if !header_auth {
            // The key can only be in the body: read it as the largest body any route takes.
            let body = read_body(&body, gzip, segment::MAX_BATCH_BYTES).ok();
            let body_key = body.as_ref().and_then(|body| body.json.get("writeKey")?.as_str());
            state.keys.ingest_key(&headers, body_key)?;
        }
        return Err(ApiError::not_found(format!(
            "there is no /v1/{}; send events to /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias or /v1/batch",
            name.unwrap_or("...")
        )));
    };
    if let Some(key) = &header_key {
        // Before the body is unzipped and parsed: a flood costs as little as possible.
        limiter.admit(&super::Keys::source_of(key)).await?;
    }
    let received_at = state.engine.clock.now();
    let limit = match route {
        Route::Batch => segment::MAX_BATCH_BYTES,
        Route::Single(_) => segment::MAX_MESSAGE_BYTES,
    };
    let body = match read_body(&body, gzip, limit) {
        Ok(body) => body,
        Err(error) => {
            // Without a header the key could only be in this body: unauthenticated, the
            // request learns nothing about its content.
            if !header_auth {
                state.keys.ingest_key(&headers, None)?;
            }
            return Err(invalid(error));
        }
    };
    // Authenticate (analytics.js: `writeKey` in the body) before building any message: a
    // batch's shared `context` is copied into each of them.
    let body_key = body.json.get("writeKey").and_then(Value::as_str);
    let key = state.keys.ingest_key(&headers, body_key)?;
    if !header_auth {
        limiter.admit(&super::Keys::source_of(&key)).await?;
    }
    let parsed = match route {
        Route::Batch => segment::parse_batch(&body.json, received_at, &mut message_id),
        Route::Single(kind) => segment::parse_single(&body.json, kind, received_at, &mut message_id),
    }
    .map_err(invalid)?;
    let mut parsed = parsed;
    refuse_over_trait_limit(state, &mut parsed, matches!(route, Route::Batch)).await?;
    if parsed.messages.is_empty() {
        let first = parsed.rejected.first().cloned().unwrap_or(Invalid {
            index: None,
            field: "batch".into(),
            message: "no valid message".into(),
        });
        state
            .engine
            .metrics
            .events_rejected("invalid", parsed.rejected.len().max(1));
        let mut error = ApiError::bad_request(
            "invalid_message",
            &first.field,
            format!("no message was accepted: {}", first.message),
        );
        error.details = Some(json!({"rejected": parsed.rejected}));
        return Err(error);
    }
    let accepted = parsed.messages.len();
    let source = super::Keys::source_of(&key);
    match state.engine.config.http.acknowledge {
        // Applied (and counted) right after, by this process (see `engine/inbox.rs`).
        Acknowledge::Stored => state.engine.receive(&source, parsed.messages).await?,
        Acknowledge::Applied => {
            let report = state.engine.ingest(&source, &parsed.messages).await?;
            state.engine.metrics.events_ingested(report.accepted, report.duplicates);
        }
    }
    state.engine.metrics.events_rejected("invalid", parsed.rejected.len());
    if parsed.rejected.is_empty() {
        return Ok((StatusCode::OK, Json(json!({"success": true}))));
    }
    Ok((
        StatusCode::OK,
        Json(json!({"success": true, "accepted": accepted, "rejected": parsed.rejected})),
    ))
}

/// Moves the messages that would give their contact more traits than it may keep to the
/// rejected, by their index in the batch.
async fn refuse_over_trait_limit(state: &AppState, parsed: &mut segment::Parsed, batch: bool) -> Result<(), ApiError> {
    let over = state.engine.over_trait_limit(&parsed.messages).await?;
    if over.is_empty() {
        return Ok(());
    }
    // The batch index of each accepted message: the indexes the parser did not reject.
    let rejected: std::collections::BTreeSet<usize> = parsed.rejected.iter().filter_map(|r| r.index).collect();
    let indexes: Vec<usize> = (0..)
        .filter(|i| !rejected.contains(i))
        .take(parsed.messages.len())
        .collect();
    for (position, count) in over.iter().rev() {
        parsed.messages.remove(*position);
        let index = batch.then_some(indexes[*position]);
        parsed.rejected.push(Invalid {
            index,
            field: match index {
                Some(index) => format!("batch[{index}].traits"),
                None => "traits".into(),
            },
            message: format!(
                "the contact would have {count} traits; a contact keeps at most {}",
                crate::store::contacts::MAX_TRAITS
            ),
        });
    }
    parsed.rejected.sort_by_key(|r| r.index);
    Ok(())
}

/// A `messageId` for a message that came without one. Random (122 bits from the OS, UUID v4), so
/// ids made in the same microsecond by two processes, even both pid 1 in two containers, or by
/// concurrent requests, do not collide and dedupe a message away.
fn message_id() -> String {
    format!("nurture-{}", uuid::Uuid::new_v4())
}

/// What analytics.js asks for at load: where to send events. Only for a write key: the
/// answer repeats the key, and this URL sits in every visitor's browser and in access logs, so
/// an admin token here gets the same 404 as an unknown key.
pub async fn settings(State(state): State<AppState>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    if !state.keys.is_write_key(&key) {
        return Err(ApiError {
            field: Some("key".into()),
            ..ApiError::not_found("unknown write key")
        });
    }
    let public_url = state.engine.config.public_url();
    let public = public_url.as_str();
    let (protocol, host) = public.split_once("://").unwrap_or(("https", public));
    Ok(Json(json!({
        "integrations": {"Segment.io": {"apiKey": key, "apiHost": format!("{host}/v1"), "protocol": protocol}},
        "plan": {"track": {"__default": {"enabled": true}}, "identify": {"__default": {"enabled": true}}},
    })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_message_ids_are_unique_random_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| super::message_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let uuid = id.strip_prefix("nurture-").expect("prefixed");
            let uuid = uuid::Uuid::parse_str(uuid).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert!(id.len() < 100, "Segment asks for ids under 100 characters");
        }
    }
}
