//! What every request goes through before and after its handler: a request id (taken from
//! `X-Request-Id` or made here) in a tracing span, in every error body and in the response's
//! headers; errors that axum or tower answer as plain text (404, 405, 413, ...) turned into our
//! JSON shape; and the limits of `limits.rs`.

use super::error::ApiError;
use super::limits;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::cors::CorsLayer;
use tracing::Instrument;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client; a longer or odder one is replaced by ours.
const MAX_REQUEST_ID: usize = 128;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Wraps the routes: the limits innermost, then CORS, then the request id and the error
/// shape, so every answer (a preflight, a 429, a 404) has a request id.
pub fn wrap<S>(
    routes: Router<S>,
    cors: CorsLayer,
    config: &crate::config::Config,
    redis: Option<redis::aio::ConnectionManager>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    limits::wrap(routes, config, redis)
        .layer(cors)
        .layer(middleware::from_fn(around))
}

/// The fallback of the router: an unknown route in the error shape.
pub async fn unknown_route(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "there is no {} {}; see /openapi.json for the routes",
        request.method(),
        request.uri().path()
    ))
}

async fn around(request: Request, next: Next) -> Response {
    let id: Arc<str> = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| acceptable(id))
        .map(Arc::from)
        .unwrap_or_else(new_request_id);
    // The route as written (`/v1/contacts/{id}`): a path may hold a token or an address,
    // which stay out of the logs.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "(no route)".into());
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), route = %route);
    let started = std::time::Instant::now();
    let mut response = REQUEST_ID
        .scope(id.clone(), async move { as_json_error(next.run(request).await).await })
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.in_scope(|| {
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms,
                "Request answered with a server error."
            );
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "Request answered.");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// A client's id is kept when it is short and made of characters safe in logs and headers.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

fn new_request_id() -> Arc<str> {
    Arc::from(uuid::Uuid::new_v4().simple().to_string())
}

/// An error answered as plain text or with no body (axum's rejections, 405, 413) becomes the
/// JSON shape with the same status and headers. HTML pages meant for people (an unsubscribe
/// link that is not valid) and JSON stay as they are.
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let plain = match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(value) => value.as_bytes().starts_with(b"text/plain"),
    };
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let (code, field) = match status {
        StatusCode::NOT_FOUND => ("not_found", None),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", None),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", Some("body")),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", Some("content-type")),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", Some("body")),
        StatusCode::LENGTH_REQUIRED => ("length_required", Some("content-length")),
        StatusCode::UNAUTHORIZED => ("unauthorized", None),
        StatusCode::FORBIDDEN => ("forbidden", None),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", None),
        status if status.is_server_error() => ("unavailable", None),
        _ => ("invalid_request", None),
    };
    let message = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            format!("this route does not take this method; it takes {allowed}")
        }
        (true, _) => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let error = ApiError {
        field: field.map(str::to_string),
        ..ApiError::new(status, code, message)
    };
    let mut json = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.iter() {
        json.headers_mut().entry(name.clone()).or_insert_with(|| value.clone());
    }
    json
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_short_plain_request_ids_are_kept() {
        assert!(super::acceptable("3f2a-01:web/7"));
        assert!(!super::acceptable(""));
        assert!(!super::acceptable(&"a".repeat(129)));
        assert!(!super::acceptable("id\nforged log line"));
        assert!(!super::acceptable("a b"));
        assert_eq!(super::new_request_id().len(), 32);
    }
}
