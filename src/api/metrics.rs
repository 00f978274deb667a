//! `GET /metrics` (Prometheus text format) and the layer that times every request by its
//! route template. Who may read it: a metrics token (`NURTURE_METRICS_TOKENS`) or an admin
//! token, as `Authorization: Bearer TOKEN`. Metrics name journeys and steps but no contact.

use super::AppState;
use super::error::ApiError;
use crate::metrics::{Gauges, LATENESS_BUCKETS_MS};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.keys.require_metrics_token(&headers)?;
    let engine = &state.engine;
    let queue_depth = match engine.queue.depth().await {
        Ok(depth) => Some(depth),
        Err(error) => {
            // The other metrics still help while the queue is down; the gauge is left out.
            tracing::warn!(%error, "Could not read the queue depth for /metrics.");
            None
        }
    };
    let inbox = match engine.inbox_counts().await {
        Ok((rows, failed)) => Some(((rows - failed).max(0) as u64, failed.max(0) as u64)),
        Err(error) => {
            tracing::warn!(%error, "Could not count the inbox for /metrics.");
            None
        }
    };
    let gauges = Gauges {
        queue_depth,
        inbox,
        timers_held: engine.queue.timers.len() as u64,
        paused_journeys: engine.paused_count() as u64,
        lateness: engine.queue.timers.lateness_buckets(&LATENESS_BUCKETS_MS),
    };
    let mut response = engine.metrics.render(&gauges).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Times a request and counts it under its route template (`/v1/contacts/{id}`, never the
/// id itself, so the series stay few) and status class.
pub async fn time_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .engine
        .metrics
        .http_request(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
