//! `GET /v1/reports/roi`, `/v1/reports/journeys/{id}/funnel` and `/v1/reports/kpis`: admin
//! token only. JSON, or CSV with a header row when the client sends `Accept: text/csv`.

use super::AppState;
use super::error::ApiError;
use super::extract::{Path, Query};
use crate::reports::{self, Asked, render};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

#[derive(serde::Deserialize, Default)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
    model: Option<String>,
    group_by: Option<String>,
}

impl Range {
    pub(super) fn read(&self, today: i64) -> Result<Asked, ApiError> {
        Asked::read(
            self.from.as_deref(),
            self.to.as_deref(),
            self.model.as_deref(),
            self.group_by.as_deref(),
            today,
        )
        .map_err(|(field, message)| ApiError::bad_request("invalid_query", field, message))
    }
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"))
}

fn answer(headers: &HeaderMap, table: render::Table, json: serde_json::Value) -> Response {
    if wants_csv(headers) {
        ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], table.to_csv()).into_response()
    } else {
        Json(json).into_response()
    }
}

fn today(state: &AppState) -> i64 {
    reports::day_of(state.engine.clock.now().timestamp_millis())
}

pub async fn roi(
    State(state): State<AppState>,
    _: super::auth::Admin,
    headers: HeaderMap,
    Query(range): Query<Range>,
) -> Result<Response, ApiError> {
    let asked = range.read(today(&state))?;
    let report = state
        .engine
        .roi_report(asked.from, asked.to, asked.model, asked.group_by)
        .await?;
    let mut json = render::roi_json(&report, asked.group_by);
    json["from"] = day_text(asked.from).into();
    json["to"] = day_text(asked.to).into();
    json["model"] = asked.model.as_str().into();
    json["currency"] = state.engine.config.reports.currency.clone().into();
    Ok(answer(&headers, render::roi_table(&report, asked.group_by), json))
}

pub async fn funnel(
    State(state): State<AppState>,
    _: super::auth::Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(funnels) = state.engine.funnel_report(&id).await? else {
        return Err(ApiError::not_found(format!("no journey `{id}`")));
    };
    Ok(answer(
        &headers,
        reports::funnel::funnel_table(&funnels),
        reports::funnel::funnel_json(&id, &funnels),
    ))
}

pub async fn kpis(
    State(state): State<AppState>,
    _: super::auth::Admin,
    headers: HeaderMap,
    Query(range): Query<Range>,
) -> Result<Response, ApiError> {
    let asked = range.read(today(&state))?;
    let kpis = state.engine.kpi_report(asked.from, asked.to, asked.model).await?;
    let mut json = reports::funnel::kpis_json(&kpis);
    json["from"] = day_text(asked.from).into();
    json["to"] = day_text(asked.to).into();
    json["model"] = asked.model.as_str().into();
    Ok(answer(&headers, reports::funnel::kpis_table(&kpis), json))
}

pub(super) fn day_text(ms: i64) -> String {
    crate::store::from_ms(ms).format("%Y-%m-%d").to_string()
}

/// The paths of `/openapi.json` for reports.
pub fn openapi_paths(admin: &serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    let error = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let range = json!([
        {"name": "from", "in": "query", "description": "First day (UTC), YYYY-MM-DD; default 29 days before `to`", "schema": {"type": "string", "format": "date"}},
        {"name": "to", "in": "query", "description": "Last day (UTC), YYYY-MM-DD; default today", "schema": {"type": "string", "format": "date"}},
        {"name": "model", "in": "query", "description": "Attribution model; default last_touch", "schema": {"type": "string", "enum": ["first_touch", "last_touch", "linear", "time_decay", "position_based"]}}
    ]);
    let mut roi_parameters = range.as_array().cloned().unwrap_or_default();
    roi_parameters.push(json!({"name": "group_by", "in": "query", "schema": {"type": "string", "enum": ["journey", "step", "channel"], "default": "journey"}}));
    let both =
        |description: &str| json!({"description": description, "content": {"application/json": {}, "text/csv": {}}});
    let denied = |ok: serde_json::Value| json!({"200": ok, "400": error("A bad date, model or grouping; `field` names it"), "401": error("No or unknown token"), "403": error("A write key or another token that is not an admin's")});
    json!({
        "/v1/reports/roi": {"get": {"summary": "Return on investment per journey, step or channel", "tags": ["reports"], "security": admin,
            "description": "One row per group: enrolled, sent, delivered, opened, clicked, unsubscribed, conversions (credit under the model), conversion rate, revenue, cost, ROI = (revenue - cost) / cost, cost per conversion. Revenue with no touch in the lookback window is the `unattributed` row. `Accept: text/csv` gives CSV with a header row.",
            "parameters": roi_parameters, "responses": denied(both("`{rows, total, unconverted, from, to, model, currency}`"))}},
        "/v1/reports/journeys/{id}/funnel": {"get": {"summary": "A journey's funnel, per version", "tags": ["reports"], "security": admin,
            "description": "Contacts reaching each step, drop-off from the step before, and the median time from the previous step.",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": both("`{journey, versions: [{version, enrolled, goals, steps}]}`"), "401": error("No or unknown token"), "403": error("Not an admin token"), "404": error("No such journey")}}},
        "/v1/reports/kpis": {"get": {"summary": "Sales KPIs", "tags": ["reports"], "security": admin,
            "description": "Of the leads created in the range: lead -> MQL -> SQL -> won conversion rates, average time in each stage, sales cycle, cost per lead and per acquisition by channel, unsubscribe rate.",
            "parameters": range, "responses": denied(both("The KPIs"))}}
    })
}
