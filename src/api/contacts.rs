//! The contact 360 view, lookup by email / phone / user id, erasure, and the failed list.

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::extract::{Path, Query};
use crate::engine::ingest::{normalize_email, normalize_phone};
use crate::store::{from_ms, identities};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

#[derive(serde::Deserialize)]
pub struct Lookup {
    email: Option<String>,
    phone: Option<String>,
    user_id: Option<String>,
}

fn time(ms: Option<i64>) -> Value {
    ms.map(|ms| json!(from_ms(ms).to_rfc3339())).unwrap_or(Value::Null)
}

pub async fn show(State(state): State<AppState>, _: Admin, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    view(&state, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no contact {id}")))
}

pub async fn search(
    State(state): State<AppState>,
    _: Admin,
    Query(lookup): Query<Lookup>,
) -> Result<Json<Value>, ApiError> {
    let (kind, value) = if let Some(email) = &lookup.email {
        (
            "email",
            normalize_email(email)
                .ok_or_else(|| ApiError::bad_request("invalid_query", "email", "not an email address"))?,
        )
    } else if let Some(phone) = &lookup.phone {
        (
            "phone",
            normalize_phone(phone, &state.engine.config.phone_country_code)
                .ok_or_else(|| ApiError::bad_request("invalid_query", "phone", "not a phone number"))?,
        )
    } else if let Some(user_id) = &lookup.user_id {
        ("user_id", user_id.trim().to_string())
    } else {
        return Err(ApiError::bad_request(
            "invalid_query",
            "email",
            "give one of `email`, `phone` or `user_id`",
        ));
    };
    let mut connection = state.engine.store.pool.acquire().await?;
    let id = identities::find(&mut connection, kind, &value).await?;
    drop(connection);
    let Some(id) = id else {
        return Err(ApiError::not_found(format!("no contact with {kind} {value}")));
    };
    view(&state, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no contact {id}")))
}

/// Everything about one contact, in one document.
async fn view(state: &AppState, id: i64) -> Result<Option<Value>, ApiError> {
    let mut connection = state.engine.store.pool.acquire().await?;
    let Some(row) = sqlx::query("SELECT id, external_id, email, phone, stage, score, timezone, language, owner, created_at, last_seen_at FROM contacts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?
    else {
        return Ok(None);
    };
    let traits: serde_json::Map<String, Value> =
        sqlx::query("SELECT name, value, updated_at FROM contact_traits WHERE contact_id = $1 ORDER BY name")
            .bind(id)
            .fetch_all(&mut *connection)
            .await?
            .iter()
            .map(|r| {
                let value: String = r.get(1);
                let value: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
                (
                    r.get::<String, _>(0),
                    json!({"value": value, "updated_at": time(Some(r.get(2)))}),
                )
            })
            .collect();
    let consent: serde_json::Map<String, Value> =
        // As text: the Any driver cannot read a SQLite BOOLEAN.
        sqlx::query("SELECT channel, CASE WHEN granted THEN 'true' ELSE 'false' END, updated_at FROM contact_consent WHERE contact_id = $1 ORDER BY channel")
            .bind(id)
            .fetch_all(&mut *connection)
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    json!({"granted": r.get::<String, _>(1) == "true", "updated_at": time(Some(r.get(2)))}),
                )
            })
            .collect();
    let tags: Vec<String> = sqlx::query("SELECT tag FROM contact_tags WHERE contact_id = $1 ORDER BY tag")
        .bind(id)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let identities: Vec<Value> = identities::of_contact(&mut connection, id)
        .await?
        .into_iter()
        .map(|(kind, value)| json!({"kind": kind, "value": value}))
        .collect();
    let events: Vec<Value> = sqlx::query("SELECT kind, name, properties, occurred_at FROM events WHERE contact_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT 50")
        .bind(id)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|r| {
            let properties: String = r.get(2);
            json!({"type": r.get::<String, _>(0), "event": r.get::<String, _>(1), "properties": serde_json::from_str::<Value>(&properties).unwrap_or(Value::Null), "timestamp": time(Some(r.get(3)))})
        })
        .collect();
    let enrollments: Vec<Value> = sqlx::query("SELECT id, journey_id, version, status, step, entered_at, updated_at, last_error FROM enrollments WHERE contact_id = $1 ORDER BY id DESC")
        .bind(id)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|r| {
            json!({"id": r.get::<i64, _>(0), "journey": r.get::<String, _>(1), "version": r.get::<String, _>(2), "status": r.get::<String, _>(3),
                   "step": r.get::<Option<String>, _>(4), "entered_at": time(Some(r.get(5))), "updated_at": time(Some(r.get(6))), "error": r.get::<Option<String>, _>(7)})
        })
        .collect();
    let messages: Vec<Value> = sqlx::query("SELECT kind, journey_id, step, status, created_at, done_at FROM effects WHERE contact_id = $1 AND kind IN ('email', 'sms') ORDER BY created_at DESC LIMIT 50")
        .bind(id)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|r| json!({"channel": r.get::<String, _>(0), "journey": r.get::<String, _>(1), "step": r.get::<String, _>(2), "status": r.get::<String, _>(3), "created_at": time(Some(r.get(4))), "sent_at": time(r.get(5))}))
        .collect();
    let email: Option<String> = row.get("email");
    let phone: Option<String> = row.get("phone");
    let addresses: Vec<(&str, &str)> = [("email", email.as_deref()), ("sms", phone.as_deref())]
        .into_iter()
        .filter_map(|(channel, address)| address.map(|a| (channel, a)))
        .collect();
    let suppressions = crate::store::email::of_addresses(&mut connection, &addresses).await?;
    let suppressed: Vec<Value> = crate::store::guardrails::suppressed_of_contact(&mut connection, id, 50)
        .await?
        .into_iter()
        .map(|s| json!({"journey": s.journey, "step": s.step, "kind": s.kind, "reason": s.reason, "at": s.at.to_rfc3339()}))
        .collect();
    Ok(Some(json!({
        "id": row.get::<i64, _>("id"),
        "user_id": row.get::<Option<String>, _>("external_id"),
        "email": row.get::<Option<String>, _>("email"),
        "phone": row.get::<Option<String>, _>("phone"),
        "stage": row.get::<String, _>("stage"),
        "score": score_summary(state, &mut connection, id).await?,
        "timezone": row.get::<Option<String>, _>("timezone"),
        "language": row.get::<Option<String>, _>("language"),
        "owner": row.get::<Option<String>, _>("owner"),
        "created_at": time(Some(row.get("created_at"))),
        "last_seen_at": time(row.get("last_seen_at")),
        "identities": identities,
        "traits": traits,
        "tags": tags,
        "consent": consent,
        "suppressions": suppressions,
        "events": events,
        "enrollments": enrollments,
        "messages": messages,
        "suppressed": suppressed,
    })))
}

/// The score now and its points by rule, each decayed to now.
async fn score_summary(state: &AppState, connection: &mut sqlx::AnyConnection, id: i64) -> Result<Value, ApiError> {
    let now = state.engine.clock.now();
    let total = state
        .engine
        .load_contact(connection, id, now)
        .await?
        .map(|c| c.score)
        .unwrap_or(0);
    let decay = state.engine.catalog().scoring.as_ref().and_then(|s| s.decay);
    let mut by_rule = serde_json::Map::new();
    for entry in crate::store::scores::of_contact(connection, id).await? {
        let value = crate::scoring::decayed(entry.points, entry.at, decay, now);
        let slot = by_rule.entry(entry.rule).or_insert(json!(0.0));
        *slot = json!(slot.as_f64().unwrap_or(0.0) + value);
    }
    for value in by_rule.values_mut() {
        *value = json!(value.as_f64().unwrap_or(0.0).round() as i64);
    }
    Ok(json!({"total": total, "by_rule": by_rule}))
}

/// `GET /v1/contacts/{id}/score`: every point explained: rule, event, time, value now.
pub async fn score(State(state): State<AppState>, _: Admin, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    let now = state.engine.clock.now();
    let mut connection = state.engine.store.pool.acquire().await?;
    let Some(contact) = state.engine.load_contact(&mut connection, id, now).await? else {
        return Err(ApiError::not_found(format!("no contact {id}")));
    };
    let catalog = state.engine.catalog();
    let scoring = catalog.scoring.as_ref();
    let decay = scoring.and_then(|s| s.decay);
    let entries: Vec<Value> = crate::store::scores::of_contact(&mut connection, id)
        .await?
        .into_iter()
        .map(|entry| {
            let now_worth = crate::scoring::decayed(entry.points, entry.at, decay, now);
            json!({"rule": entry.rule, "event": entry.event, "points": entry.points, "at": entry.at.to_rfc3339(), "worth_now": (now_worth * 10.0).round() / 10.0})
        })
        .collect();
    let decay_text = match decay {
        Some(crate::journey::scoring::Decay::HalfLife(half_life)) => json!({"half_life": half_life.to_string()}),
        Some(crate::journey::scoring::Decay::PointsPerInactiveWeek(points)) => {
            json!({"points_per_inactive_week": points})
        }
        None => Value::Null,
    };
    Ok(Json(json!({
        "contact": id,
        "score": contact.score,
        "stage": contact.stage,
        "thresholds": scoring.map(|s| json!({"mql": s.mql, "sql": s.sql})),
        "decay": decay_text,
        "entries": entries,
    })))
}

/// Erasure (GDPR/PIPL): nothing that names the person is left; anonymous counts remain.
pub async fn erase(State(state): State<AppState>, _: Admin, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    if state.engine.erase(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no contact {id}")))
    }
}

pub async fn failed(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let mut connection = state.engine.store.pool.acquire().await?;
    let failed = crate::store::enrollments::failed(&mut connection, 500).await?;
    Ok(Json(json!({"failed": failed})))
}

pub async fn retry(State(state): State<AppState>, _: Admin, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    if state.engine.retry(id).await? {
        Ok(Json(json!({"retried": id})))
    } else {
        Err(ApiError::not_found(format!(
            "enrollment {id} is not in the failed list"
        )))
    }
}
