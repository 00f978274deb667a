//! `GET /healthz` (and its old name `/health`): the process answers; nothing else is asked, so
//! a restart is never caused by a database outage. `GET /readyz`: this process can serve
//! (the database answers and has this build's schema, and Redis answers in the production
//! mode); 503 naming what is not ready, so a load balancer sends traffic elsewhere meanwhile.

use super::AppState;
use crate::queue::Backend;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

/// How long one dependency may take to answer before it counts as not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn alive() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let engine = &state.engine;
    let database = async {
        engine.store.ping().await.map_err(|e| e.to_string())?;
        match engine.store.pending_migrations().await {
            Ok(pending) if pending.is_empty() => Ok(()),
            Ok(pending) => Err(format!("migrations not applied: {pending:?}; run `nurture migrate`")),
            Err(error) => Err(error.to_string()),
        }
    };
    let redis = async {
        match &engine.queue.backend {
            Backend::Redis(storage) => {
                let mut connection = storage.clone().get_connection().clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Backend::Sqlite(_) => Ok(()),
        }
    };
    let (database, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, database),
        tokio::time::timeout(CHECK_TIMEOUT, redis)
    );
    let mut checks = serde_json::Map::new();
    let mut not_ready = Vec::new();
    let mut record = |name: &str, outcome: Result<Result<(), String>, tokio::time::error::Elapsed>| {
        let outcome = outcome.unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
        match outcome {
            Ok(()) => {
                checks.insert(name.into(), json!("ok"));
            }
            Err(problem) => {
                tracing::warn!(check = name, %problem, "Not ready.");
                checks.insert(name.into(), json!(problem));
                not_ready.push(name.to_string());
            }
        }
    };
    record("database", database);
    if matches!(engine.queue.backend, Backend::Redis(_)) {
        record("redis", redis);
    }
    if not_ready.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "ready", "checks": checks}))).into_response();
    }
    let mut error = super::ApiError {
        retry_after: Some(5),
        ..super::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("not ready: {}", not_ready.join(", ")),
        )
    };
    error.details = Some(json!({"checks": checks, "not_ready": not_ready}));
    error.into_response()
}
