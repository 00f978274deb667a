//! One error shape for every endpoint: `{"error": {"code", "message", "field"}}`. Server faults
//! show the client only a request id; the details go to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    pub fn bad_request(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A fault on our side: logged with an id the client can quote; retrying may help.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        let id = request_id();
        tracing::error!(request_id = %id, %error, "Request failed.");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the request could not be stored; retry later (request id {id})"),
        )
    }
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, axum::Json(json!({"error": error}))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

impl From<crate::engine::runner::Error> for ApiError {
    fn from(error: crate::engine::runner::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(error: crate::store::Error) -> ApiError {
        ApiError::internal(error)
    }
}
