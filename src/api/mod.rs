//! The HTTP API (axum): Segment-compatible ingestion at the host root, the contact 360 view,
//! erasure, the failed-enrollment list, email's links (unsubscribe, clicks, opens), bounce and
//! complaint reports, suppressions, SMS delivery reports and replies, the sales loop (a rep's
//! leads, accept, reject, outcome; stages), ROI reports, the dashboard, journey controls
//! (pause, resume, counts), `/metrics`, `/openapi.json`, and `/healthz` and `/readyz`. Every
//! request goes through `edge` (request id, error shape) and `limits`; `serve` bounds how long a
//! client may take to send a request head.

mod auth;
mod contacts;
mod dashboard;
mod edge;
mod email;
mod error;
mod extract;
mod health;
mod ingest;
mod journeys;
mod limits;
mod metrics;
mod openapi;
mod reports;
mod sales;
mod server;
mod sms;

pub use auth::Keys;
pub use error::ApiError;
pub use server::{serve, serve_with};

use crate::engine::runner::Engine;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, header};
use axum::routing::{delete, get, post};
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub keys: Arc<Keys>,
}

/// The keys the config names; in the embedded mode with none configured and listening on
/// loopback only, the write key `dev` and the admin token `dev`, so a fresh machine works out
/// of the box (`Config::check_api_credentials` refuses to start such an API on other addresses).
pub fn keys_for(engine: &Engine) -> Keys {
    let config = &engine.config;
    if config.accepts_dev_credentials() {
        tracing::warn!(
            "No NURTURE_WRITE_KEYS or NURTURE_ADMIN_TOKENS: accepting `dev` for both (embedded mode on loopback only)."
        );
        return Keys::new(&["dev".into()], &["dev".into()])
            .with_rep_tokens(&config.rep_tokens)
            .with_metrics_tokens(&config.metrics_tokens);
    }
    if config.write_keys.is_empty() {
        tracing::warn!("No NURTURE_WRITE_KEYS configured: the events API will refuse every request.");
    }
    Keys::new(&config.write_keys, &config.admin_tokens)
        .with_bounce_tokens(&config.bounce_tokens)
        .with_rep_tokens(&config.rep_tokens)
        .with_metrics_tokens(&config.metrics_tokens)
}

pub fn router(state: AppState) -> Router {
    // Browsers (analytics.js) send `Authorization`, so every call is preceded by a preflight.
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-retry-count"),
            edge::X_REQUEST_ID.clone(),
        ])
        .expose_headers([edge::X_REQUEST_ID.clone(), header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(3600));
    let routes = Router::new()
        .route("/v1/{route}", post(ingest::ingest))
        .route("/v1/projects/{key}/settings", get(ingest::settings))
        .route("/v1/contacts", get(contacts::search))
        .route("/v1/contacts/{id}", get(contacts::show).delete(contacts::erase))
        .route("/v1/contacts/{id}/score", get(contacts::score))
        .route("/v1/contacts/{id}/stage", post(sales::set_stage))
        .route("/v1/sales/leads", get(sales::list))
        .route("/v1/sales/leads/{id}", get(sales::show))
        .route("/v1/sales/leads/{id}/accept", post(sales::accept))
        .route("/v1/sales/leads/{id}/reject", post(sales::reject))
        .route("/v1/sales/leads/{id}/outcome", post(sales::outcome))
        .route("/v1/journeys/{id}/pause", post(journeys::pause))
        .route("/v1/journeys/{id}/resume", post(journeys::resume))
        .route("/v1/journeys/{id}/counts", get(journeys::counts))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/enrollments/failed", get(contacts::failed))
        .route("/v1/enrollments/{id}/retry", post(contacts::retry))
        .route("/u/{token}", get(email::unsubscribe_page).post(email::unsubscribe))
        .route("/c/{token}", get(email::click))
        .route("/o/{file}", get(email::open))
        .route("/v1/email/bounces", post(email::bounces))
        .route("/v1/email/bounces/postmark", post(email::postmark_bounce))
        .route("/v1/suppressions", get(email::suppressions))
        .route("/v1/suppressions/{channel}/{address}", delete(email::lift))
        .route("/v1/sms/twilio/status", post(sms::twilio_status))
        .route("/v1/sms/twilio/inbound", post(sms::twilio_inbound))
        .route("/v1/sms/inbound", post(sms::inbound))
        .route("/v1/reports/roi", get(reports::roi))
        .route("/v1/reports/journeys/{id}/funnel", get(reports::funnel))
        .route("/v1/reports/kpis", get(reports::kpis))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/login", get(dashboard::login_form).post(dashboard::login))
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(health::alive))
        .route("/health", get(health::alive))
        .route("/readyz", get(health::ready))
        .fallback(edge::unknown_route)
        // Bodies are measured again after gunzip; this only bounds what we read off the wire.
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::time_requests,
        ));
    // The write keys' buckets are shared through Redis when there is one (every API process
    // counts against the same rate), else kept in this process.
    let redis = state.engine.queue.redis_connection();
    edge::wrap(routes, cors, &state.engine.config, redis).with_state(state)
}
