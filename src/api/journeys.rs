//! Journey controls (admin): `POST /v1/journeys/{id}/pause` and `/resume`, and
//! `GET /v1/journeys/{id}/counts` (see `engine/controls.rs`).

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::extract::Path;
use crate::engine::controls::JourneyCounts;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

fn known(state: &AppState, id: &str) -> Result<(), ApiError> {
    match state.engine.journey_by_id(id) {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("there is no journey `{id}`"))),
    }
}

/// Pauses a journey: nobody enters, and contacts in flight hold before their next step.
pub async fn pause(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    known(&state, &id)?;
    let newly = state.engine.pause_journey(&id, "api").await?;
    Ok(Json(json!({"journey": id, "paused": true, "already_paused": !newly})))
}

/// Resumes a journey and queues again the contacts it held.
pub async fn resume(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    known(&state, &id)?;
    let requeued = state.engine.resume_journey(&id).await?;
    Ok(Json(json!({
        "journey": id,
        "paused": false,
        "was_paused": requeued.is_some(),
        "requeued": requeued.unwrap_or(0),
    })))
}

/// Live counts: enrolled, by status, in flight at each step, failed.
pub async fn counts(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<JourneyCounts>, ApiError> {
    known(&state, &id)?;
    Ok(Json(state.engine.journey_counts(&id).await?))
}

/// The journey controls and `/metrics` in `/openapi.json`.
pub fn openapi_paths(admin: &Value) -> Value {
    let error = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "The journey's `id`"}]);
    let control = |summary: &str, ok: &str| {
        json!({"post": {"summary": summary, "tags": ["journeys"], "security": admin, "parameters": id,
            "responses": {"200": {"description": ok}, "401": error("No or unknown token"), "403": error("Not an admin token"), "404": error("No such journey")}}})
    };
    json!({
        "/v1/journeys/{id}/pause": control(
            "Pause a journey: nobody enters, contacts in flight hold before their next step",
            "`{\"journey\", \"paused\": true, \"already_paused\"}`"
        ),
        "/v1/journeys/{id}/resume": control(
            "Resume a paused journey: held contacts continue at once",
            "`{\"journey\", \"paused\": false, \"was_paused\", \"requeued\"}`"
        ),
        "/v1/journeys/{id}/counts": {"get": {"summary": "Live counts: enrolled, by status, in flight at each step, failed", "tags": ["journeys"], "security": admin, "parameters": id,
            "responses": {"200": {"description": "`enrolled`, `by_status`, `at_step` and `failed_at_step` (`[{step, count}]`, in the journey's order), `failed`, `paused`"}, "401": error("No or unknown token"), "403": error("Not an admin token"), "404": error("No such journey")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4), names prefixed `nurture_`", "tags": ["operations"], "security": [{"metricsToken": []}, {"adminToken": []}],
            "responses": {"200": {"description": "The exposition", "content": {"text/plain": {}}}, "401": error("No or unknown token"), "403": error("A write key")}}}
    })
}
