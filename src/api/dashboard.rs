//! `GET /dashboard`: the read-only page for the marketing manager (ROI by journey and by
//! channel with charts, the sales KPIs and their trend, each journey's steps with their
//! counts), made from the same reports and tables as `/v1/reports/*`. `GET /dashboard/login`
//! asks for the admin token once; `POST /dashboard/login` checks it and sets a session
//! cookie. `Authorization: Bearer` works too.
//!
//! The cookie holds `expiry-token name.tag`, signed with the server secret (the one that signs
//! email links, under its own purpose), never the token itself: a stolen cookie dies with its
//! expiry or when its token leaves the config.

use super::AppState;
use super::error::ApiError;
use super::extract::Form;
use super::extract::Query;
use super::reports::Range;
use crate::channels::links::Purpose;
use crate::journey::model::Target;
use crate::reports::dashboard::{self, JourneyView, StepView};
use crate::reports::{self, GroupBy, render};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const COOKIE: &str = "nurture_session";
/// How long a sign-in lasts: a working day.
const SESSION_MS: i64 = 12 * 3600 * 1000;

fn now_ms(state: &AppState) -> i64 {
    state.engine.clock.now().timestamp_millis()
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the session cookie was signed by this server, has not expired, and names an admin
/// token still in the config.
fn session_is_valid(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(payload) = cookie_value(headers, COOKIE).and_then(|c| state.engine.links.verify(Purpose::Session, c))
    else {
        return false;
    };
    let Some((expiry, source)) = payload.split_once('-') else {
        return false;
    };
    expiry.parse::<i64>().is_ok_and(|at| at > now_ms(state)) && state.keys.is_admin_source(source)
}

fn to_login() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard/login")]).into_response()
}

pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    range: Result<Query<Range>, ApiError>,
) -> Response {
    // A Bearer token is a program talking: it gets a JSON error, not a form.
    if headers.contains_key(header::AUTHORIZATION) {
        if let Err(error) = state.keys.require_admin(&headers) {
            return error.into_response();
        }
    } else if !session_is_valid(&state, &headers) {
        return to_login();
    }
    // The query only once the caller is known.
    let Query(range) = match range {
        Ok(range) => range,
        Err(error) => return error.into_response(),
    };
    match render_page(&state, &range).await {
        Ok(html) => Html(html).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn render_page(state: &AppState, range: &Range) -> Result<String, ApiError> {
    let today = reports::day_of(now_ms(state));
    let asked = range.read(today)?;
    let engine = &state.engine;
    let by_journey = engine
        .roi_report(asked.from, asked.to, asked.model, GroupBy::Journey)
        .await?;
    let by_channel = engine
        .roi_report(asked.from, asked.to, asked.model, GroupBy::Channel)
        .await?;
    let kpis = engine.kpi_report(asked.from, asked.to, asked.model).await?;
    let trend = trend(state, asked.from, asked.to, asked.model).await?;
    let mut journeys = Vec::new();
    for journey in &engine.catalog().journeys {
        // The running version comes first in the funnel report.
        let funnel = engine
            .funnel_report(&journey.id)
            .await?
            .and_then(|f| f.into_iter().find(|f| f.version == journey.version));
        let reached = |id: &str| {
            funnel
                .as_ref()
                .and_then(|f| f.steps.iter().find(|s| s.step == id))
                .map_or(0, |s| s.reached)
        };
        let name_of = |target: Target| match target {
            Target::Step(index) => journey.steps[index].id.clone(),
            Target::End => "end".into(),
        };
        journeys.push(JourneyView {
            id: journey.id.clone(),
            name: journey.name.clone(),
            enrolled: funnel.as_ref().map_or(0, |f| f.enrolled),
            goals: funnel.as_ref().map_or(0, |f| f.goals),
            steps: journey
                .steps
                .iter()
                .map(|step| StepView {
                    id: step.id.clone(),
                    does: step.kind.describe(),
                    reached: reached(&step.id),
                    next: step
                        .transitions()
                        .into_iter()
                        .map(|t| (t.label, name_of(t.target)))
                        .collect(),
                })
                .collect(),
        });
    }
    let (from, to) = (super::reports::day_text(asked.from), super::reports::day_text(asked.to));
    Ok(dashboard::page(&dashboard::Page {
        from: &from,
        to: &to,
        model: asked.model.as_str(),
        currency: &engine.config.reports.currency,
        kpis: &reports::funnel::kpis_table(&kpis),
        trend: &trend,
        by_journey: &render::roi_table(&by_journey, GroupBy::Journey),
        by_channel: &render::roi_table(&by_channel, GroupBy::Channel),
        journeys: &journeys,
    }))
}

/// At most this many periods in the trend, so a year's range costs 24 report reads, not 730.
const PERIODS: i64 = 12;

/// Days `[from, to]` cut into at most `PERIODS` runs of whole days, oldest first.
fn periods(from: i64, to: i64) -> Vec<(i64, i64)> {
    let days = (to - from) / reports::DAY_MS + 1;
    let length = (days + PERIODS - 1) / PERIODS * reports::DAY_MS;
    (0..)
        .map(|i| from + i * length)
        .take_while(|start| *start <= to)
        .map(|start| (start, (start + length - reports::DAY_MS).min(to)))
        .collect()
}

/// The KPIs over time: per period, new leads, new customers, revenue, cost and ROI, each
/// period read as the API reads `from`..`to`.
async fn trend(state: &AppState, from: i64, to: i64, model: reports::Model) -> Result<render::Table, ApiError> {
    let mut table = render::Table::new(&["period", "to", "leads", "customers", "revenue", "cost", "roi"]);
    for (start, end) in periods(from, to) {
        let roi = state.engine.roi_report(start, end, model, GroupBy::Channel).await?;
        let kpis = state.engine.kpi_report(start, end, model).await?;
        table.rows.push(vec![
            super::reports::day_text(start),
            super::reports::day_text(end),
            kpis.reached[0].to_string(),
            kpis.reached[3].to_string(),
            render::amount(roi.total.credit.revenue),
            render::amount(roi.total.activity.cost),
            render::ratio(roi.total.roi(), 4),
        ]);
    }
    Ok(table)
}

pub async fn login_form() -> Html<String> {
    Html(dashboard::login(None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_trend_cuts_the_range_into_at_most_twelve_periods_of_whole_days() {
        let day = crate::reports::DAY_MS;
        assert_eq!(
            super::periods(0, 3 * day),
            [(0, 0), (day, day), (2 * day, 2 * day), (3 * day, 3 * day)]
        );
        let year = super::periods(0, 364 * day);
        assert_eq!(year.len(), 12);
        assert_eq!(year[0], (0, 30 * day));
        assert_eq!(year[11], (341 * day, 364 * day), "the last period ends on the last day");
    }
}

#[derive(serde::Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
}

pub async fn login(State(state): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let token = form.token.trim();
    if let Err(refused) = state.keys.admin_token(token) {
        // Write keys (public), reps' and bounce tokens do not open the dashboard: 403 for them,
        // 401 for a token the server does not know.
        let html = dashboard::login(Some(
            "That is not an admin token. Write keys and reps' tokens cannot open the dashboard.",
        ));
        return (refused.status, Html(html)).into_response();
    }
    let payload = format!("{}-{}", now_ms(&state) + SESSION_MS, super::Keys::source_of(token));
    let secure = state
        .engine
        .config
        .public_url
        .as_deref()
        .is_some_and(|url| url.starts_with("https://"));
    let cookie = format!(
        "{COOKIE}={}; Path=/dashboard; Max-Age={}; HttpOnly; SameSite=Strict{}",
        state.engine.links.sign(Purpose::Session, &payload),
        SESSION_MS / 1000,
        if secure { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/dashboard".into())],
    )
        .into_response()
}

/// The paths of `/openapi.json` for the dashboard.
pub fn openapi_paths() -> serde_json::Value {
    use serde_json::json;
    let html = |d: &str| json!({"description": d, "content": {"text/html": {}}});
    json!({
        "/dashboard": {"get": {"summary": "The dashboard: ROI, KPIs and their trend, each journey's steps with counts", "tags": ["reports"],
            "description": "A read-only HTML page. Needs the session cookie set by `POST /dashboard/login`, or `Authorization: Bearer ADMIN_TOKEN`. Takes the same `from`, `to` and `model` as `/v1/reports/roi`.",
            "parameters": [
                {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "model", "in": "query", "schema": {"type": "string", "enum": ["first_touch", "last_touch", "linear", "time_decay", "position_based"]}}
            ],
            "responses": {"200": html("The page"), "303": {"description": "No valid session: to `/dashboard/login`"},
                "400": {"description": "A bad date or model; `field` names it"}, "401": {"description": "Unknown Bearer token"}, "403": {"description": "A Bearer token that is not an admin's"}}}},
        "/dashboard/login": {
            "get": {"summary": "The sign-in form", "tags": ["reports"], "responses": {"200": html("The form")}},
            "post": {"summary": "Sign in with the admin token", "tags": ["reports"],
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                "responses": {"303": {"description": "Signed in: an HttpOnly, SameSite=Strict session cookie for 12 hours, and on to `/dashboard`"},
                    "401": html("An unknown token: the form again"), "403": html("A write key, rep or bounce token: the form again")}}}
    })
}
