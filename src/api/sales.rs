//! The sales loop over HTTP: a rep's leads (`Bearer` rep token: their own; admin token: all),
//! accepting, rejecting and closing them, and an admin setting a contact's stage. Another
//! rep's lead is answered like a lead that does not exist (404), so ids reveal nothing. The
//! token is checked first (`SalesCaller`, `Admin`): a stranger learns nothing from a 400.

use super::AppState;
use super::auth::{Admin, SalesCaller};
use super::email::json_body;
use super::error::ApiError;
use super::extract::{Path, Query};
use crate::engine::Contact;
use crate::engine::sales::{Action, Actor, Refusal};
use crate::journey::values::Stage;
use crate::store::sales::{Lead, Status};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
pub struct Filter {
    status: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/sales/leads`: newest first; `?status=assigned` and `?limit=` (at most 500).
pub async fn list(
    State(state): State<AppState>,
    SalesCaller(actor): SalesCaller,
    Query(filter): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    let status = match filter.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_status",
                "status",
                format!("`{text}` is not a lead status: assigned, accepted, pooled, rejected, recycled, reassigned, won or lost"),
            )
        })?),
    };
    let limit = match filter.limit.as_deref() {
        None | Some("") => 100,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_limit", "limit", "`limit` must be a number from 1 to 500"))?,
    };
    let leads = state.engine.leads(&actor, status, limit).await?;
    let leads: Vec<Value> = leads
        .iter()
        .map(|(lead, contact)| view(lead, contact.as_ref()))
        .collect();
    Ok(Json(json!({"leads": leads})))
}

/// `GET /v1/sales/leads/{id}`.
pub async fn show(
    State(state): State<AppState>,
    SalesCaller(actor): SalesCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = lead_id(&id)?;
    match state.engine.lead(&actor, id).await? {
        Some((lead, contact)) => Ok(Json(view(&lead, contact.as_ref()))),
        None => Err(ApiError::not_found(format!("there is no lead {id}"))),
    }
}

/// `POST /v1/sales/leads/{id}/accept`: the rep takes the lead; its accept deadline goes.
pub async fn accept(
    State(state): State<AppState>,
    SalesCaller(actor): SalesCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act(&state, actor, &id, Action::Accept).await
}

/// `POST /v1/sales/leads/{id}/reject` `{"reason": "..."}`: back to the pool, on to another rep.
pub async fn reject(
    State(state): State<AppState>,
    SalesCaller(actor): SalesCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let reason = reason(&json_body(&body)?)?;
    act(&state, actor, &id, Action::Reject { reason }).await
}

/// `POST /v1/sales/leads/{id}/outcome`: `{"outcome": "won", "revenue": 12000, "currency":
/// "CNY"}` or `{"outcome": "lost", "reason": "..."}`.
pub async fn outcome(
    State(state): State<AppState>,
    SalesCaller(actor): SalesCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&body)?;
    let action = match body.get("outcome").and_then(Value::as_str) {
        Some("won") => {
            let revenue = body
                .get("revenue")
                .and_then(Value::as_f64)
                .filter(|revenue| revenue.is_finite() && (0.0..1e15).contains(revenue))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_revenue",
                        "revenue",
                        "a won deal needs `revenue`: a number, 0 or more (e.g. 12000.50)",
                    )
                })?;
            let currency = match body.get("currency") {
                None | Some(Value::Null) => None,
                Some(Value::String(code)) if code.len() == 3 && code.chars().all(|c| c.is_ascii_uppercase()) => {
                    Some(code.clone())
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "invalid_currency",
                        "currency",
                        "`currency` must be a three-letter code such as CNY or USD",
                    ));
                }
            };
            Action::Won {
                // Cents: what the NUMERIC(18, 2) column keeps.
                revenue: (revenue * 100.0).round() / 100.0,
                currency,
            }
        }
        Some("lost") => Action::Lost { reason: reason(&body)? },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_outcome",
                "outcome",
                "`outcome` must be \"won\" (with `revenue`) or \"lost\" (with `reason`)",
            ));
        }
    };
    act(&state, actor, &id, action).await
}

/// `POST /v1/contacts/{id}/stage` `{"stage": "opportunity" | "customer"}` (admin).
pub async fn set_stage(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let contact: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_id", "id", format!("`{id}` is not a contact id")))?;
    let body = json_body(&body)?;
    let stage = match body.get("stage").and_then(Value::as_str) {
        Some("opportunity") => Stage::Opportunity,
        Some("customer") => Stage::Customer,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_stage",
                "stage",
                "`stage` must be \"opportunity\" or \"customer\" (earlier stages follow the score)",
            ));
        }
    };
    if !state.engine.set_stage(contact, stage).await? {
        return Err(ApiError::not_found(format!("there is no contact {contact}")));
    }
    Ok(Json(json!({"contact": contact, "stage": stage.as_str()})))
}

async fn act(state: &AppState, actor: Actor, id: &str, action: Action) -> Result<Json<Value>, ApiError> {
    let id = lead_id(id)?;
    match state.engine.act_on_lead(id, &actor, action).await {
        Ok(lead) => Ok(Json(view(&lead, None))),
        Err(Refusal::NotFound(id)) => Err(ApiError::not_found(format!("there is no lead {id}"))),
        Err(refusal @ Refusal::Conflict { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "conflict", refusal.to_string()))
        }
        Err(Refusal::Failed(error)) => Err(error.into()),
    }
}

fn lead_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("invalid_id", "id", format!("`{text}` is not a lead id")))
}

fn reason(body: &Value) -> Result<String, ApiError> {
    match body.get("reason").and_then(Value::as_str).map(str::trim) {
        Some(reason) if !reason.is_empty() && reason.chars().count() <= 500 => Ok(reason.to_string()),
        _ => Err(ApiError::bad_request(
            "invalid_reason",
            "reason",
            "`reason` must say why, in at most 500 characters",
        )),
    }
}

/// A lead as reps see it: the row, and who the contact is.
fn view(lead: &Lead, contact: Option<&Contact>) -> Value {
    let mut value = serde_json::to_value(lead).unwrap_or_default();
    if let Some(contact) = contact {
        value["contact"] = json!({
            "id": lead.contact_id,
            "email": contact.email,
            "phone": contact.phone,
            "name": contact.traits.get("name"),
            "company": contact.traits.get("company"),
            "score": contact.score,
            "stage": contact.stage.as_str(),
        });
    }
    value
}
