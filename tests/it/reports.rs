//! ROI reports end to end: a seeded scenario (two journeys, known sends, a click, orders in two
//! currencies, a journey goal and a won deal) on a virtual clock, with real SMTP, the HTTP API
//! and both stores. Every number below is worked out by hand in the comments.

use crate::email::{named_link, parse_mail, path_of};
use crate::support::{Mode, SmtpSink, TestEnv, eventually, http, root, serve_api_on, test_config, virtual_clock};
use chrono::Duration as Span;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::{Value, json};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
pub const ADMIN: &str = "admin-reports";
pub const WRITE_KEY: &str = "wk-reports";
/// A sales rep's token: reads the rep's own leads, never reports.
pub const REP: &str = "rep-reports";

/// (group, thousandths of conversions, revenue in cents) per grouping, per model.
type Credits = Vec<(&'static str, Vec<(&'static str, Vec<(&'static str, i64, i64)>)>)>;
/// (group, enrolled, sent, delivered, clicked, cost in cents) per grouping.
type Counts = Vec<(&'static str, Vec<(&'static str, i64, i64, i64, i64, i64)>)>;

fn event(name: &str, properties: Value) -> EventFacts {
    EventFacts {
        name: name.into(),
        properties: properties.as_object().cloned().unwrap_or_default(),
        timestamp: None,
    }
}

async fn contact(env: &TestEnv, email: &str) -> i64 {
    env.engine
        .create_contact(&NewContact {
            email: Some(email.into()),
            ..NewContact::default()
        })
        .await
        .unwrap()
}

/// Waits until `count` email effects are done.
async fn emails_done(env: &TestEnv, count: i64) {
    eventually(&format!("{count} emails sent"), WAIT, || async {
        let row = sqlx::query("SELECT COUNT(*) FROM effects WHERE kind = 'email' AND status = 'done'")
            .fetch_one(&env.engine.store.pool)
            .await
            .unwrap();
        (row.get::<i64, _>(0) >= count).then_some(())
    })
    .await;
}

async fn get(base: &str, path: &str, token: &str, accept: &str) -> crate::support::Response {
    let bearer = format!("Bearer {token}");
    http(
        base,
        "GET",
        path,
        &[("authorization", &bearer), ("accept", accept)],
        b"",
    )
    .await
}

async fn roi(base: &str, model: &str, group_by: &str) -> Value {
    let path = format!("/v1/reports/roi?from=2026-03-02&to=2026-03-05&model={model}&group_by={group_by}");
    let response = get(base, &path, ADMIN, "application/json").await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

fn key(row: &Value, group_by: &str) -> String {
    match group_by {
        "step" => format!("{}/{}", row["journey"].as_str().unwrap(), row["step"].as_str().unwrap()),
        other => row[other].as_str().unwrap().to_string(),
    }
}

fn milli(value: &Value) -> i64 {
    (value.as_f64().unwrap() * 1000.0).round() as i64
}

fn cents(value: &Value) -> i64 {
    (value.as_f64().unwrap() * 100.0).round() as i64
}

/// Credit per model and grouping: (group, thousandths of conversions, revenue in cents).
///
/// Ada: entered `welcome` (P1) and got `hello` (P2) at T1, clicked it at T1 (P2 again), entered
/// `promo` (P3) and got `offer` (P4) at T1+1d, ordered 120.00 at T1+2d. Half-life 1 day: weights
/// 1/4, 1/4, 1/4, 1/2, 1/2. Bo: entered `welcome` and got `hello` at T1, booked a demo (the
/// goal: credited to `welcome` only, no revenue), won a 1,000.00 deal at T1+3d: two touches of
/// the same age, half each under every shared model. Cy: 50.00 with no touch (unattributed),
/// 30.00 EUR with no rate (unconverted).
///
/// - first_touch: everything to P1.
/// - last_touch: Ada to P4; Bo's goal and deal to P2.
/// - linear: Ada 24.00 and 0.2 each (P2 twice); Bo 0.5 and 500.00 each to P1, P2.
/// - time_decay: Ada 12000 cents * (1, 1, 1, 2, 2) / 7 = 1714.3 x3, 3428.6 x2: 1714 x3 and
///   3429 x2 after the two largest remainders; credit 142.9 x3, 285.7 x2: 143, 143, 143, 286, 285.
/// - position_based: Ada 40% / 20% over three / 40%: 48.00, 8.00 x3, 48.00; credit 400,
///   66.7 x3, 400: 400, 67, 67, 66, 400.
fn expected() -> Credits {
    vec![
        (
            "first_touch",
            vec![
                ("journey", vec![("welcome", 3000, 112000), ("promo", 0, 0)]),
                (
                    "step",
                    vec![
                        ("welcome/", 3000, 112000),
                        ("welcome/hello", 0, 0),
                        ("promo/", 0, 0),
                        ("promo/offer", 0, 0),
                    ],
                ),
                ("channel", vec![("enrollment", 3000, 112000), ("email", 0, 0)]),
            ],
        ),
        (
            "last_touch",
            vec![
                ("journey", vec![("welcome", 2000, 100000), ("promo", 1000, 12000)]),
                (
                    "step",
                    vec![
                        ("welcome/", 0, 0),
                        ("welcome/hello", 2000, 100000),
                        ("promo/", 0, 0),
                        ("promo/offer", 1000, 12000),
                    ],
                ),
                ("channel", vec![("enrollment", 0, 0), ("email", 3000, 112000)]),
            ],
        ),
        (
            "linear",
            vec![
                ("journey", vec![("welcome", 2600, 107200), ("promo", 400, 4800)]),
                (
                    "step",
                    vec![
                        ("welcome/", 1200, 52400),
                        ("welcome/hello", 1400, 54800),
                        ("promo/", 200, 2400),
                        ("promo/offer", 200, 2400),
                    ],
                ),
                ("channel", vec![("enrollment", 1400, 54800), ("email", 1600, 57200)]),
            ],
        ),
        (
            "time_decay",
            vec![
                ("journey", vec![("welcome", 2429, 105142), ("promo", 571, 6858)]),
                (
                    "step",
                    vec![
                        ("welcome/", 1143, 51714),
                        ("welcome/hello", 1286, 53428),
                        ("promo/", 286, 3429),
                        ("promo/offer", 285, 3429),
                    ],
                ),
                ("channel", vec![("enrollment", 1429, 55143), ("email", 1571, 56857)]),
            ],
        ),
        (
            "position_based",
            vec![
                ("journey", vec![("welcome", 2534, 106400), ("promo", 466, 5600)]),
                (
                    "step",
                    vec![
                        ("welcome/", 1400, 54800),
                        ("welcome/hello", 1134, 51600),
                        ("promo/", 66, 800),
                        ("promo/offer", 400, 4800),
                    ],
                ),
                ("channel", vec![("enrollment", 1466, 55600), ("email", 1534, 56400)]),
            ],
        ),
    ]
}

/// Activity per grouping, whatever the model: (group, enrolled, sent, delivered, clicked, cost
/// in cents). Emails cost 0.50 each; `welcome` costs 300 a month, 10.00 a day, for the four
/// days 2 to 5 March it has run.
fn activity() -> Counts {
    vec![
        (
            "journey",
            vec![("welcome", 2, 2, 2, 1, 4100), ("promo", 1, 1, 1, 0, 50)],
        ),
        (
            "step",
            vec![
                ("welcome/", 2, 0, 0, 0, 4000),
                ("welcome/hello", 0, 2, 2, 1, 100),
                ("promo/", 1, 0, 0, 0, 0),
                ("promo/offer", 0, 1, 1, 0, 50),
            ],
        ),
        (
            "channel",
            vec![
                ("enrollment", 3, 0, 0, 0, 0),
                ("email", 0, 3, 3, 1, 100 + 50),
                ("fixed", 0, 0, 0, 0, 4000),
            ],
        ),
    ]
}

async fn check_every_model_and_grouping(base: &str) {
    for (model, groupings) in expected() {
        for (group_by, rows) in groupings {
            let report = roi(base, model, group_by).await;
            let got = report["rows"].as_array().unwrap();
            for (group, conversions, revenue) in &rows {
                let row = got
                    .iter()
                    .find(|r| r["unattributed"].is_null() && key(r, group_by) == *group)
                    .unwrap_or_else(|| panic!("{model} by {group_by}: no row {group} in {report:#}"));
                assert_eq!(
                    (milli(&row["conversions"]), cents(&row["revenue"])),
                    (*conversions, *revenue),
                    "{model} by {group_by}: {group}"
                );
            }
            let unattributed = got
                .iter()
                .find(|r| r["unattributed"] == json!(true))
                .expect("an unattributed row");
            assert_eq!(
                (milli(&unattributed["conversions"]), cents(&unattributed["revenue"])),
                (1000, 5000)
            );
            // Attributed and unattributed add up to every order and deal: 120 + 1,000 + 50.
            let sum: i64 = got.iter().map(|r| cents(&r["revenue"])).sum();
            assert_eq!(sum, 117_000, "{model} by {group_by}");
            assert_eq!(cents(&report["total"]["revenue"]), 117_000);
            assert_eq!(milli(&report["total"]["conversions"]), 4000);
            assert_eq!(
                report["unconverted"],
                json!([{"currency": "EUR", "conversions": 1.0, "revenue": 30.0}])
            );
        }
    }
    for (group_by, rows) in activity() {
        let report = roi(base, "linear", group_by).await;
        for (group, enrolled, sent, delivered, clicked, cost) in rows {
            let row = report["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["unattributed"].is_null() && key(r, group_by) == group)
                .unwrap_or_else(|| panic!("by {group_by}: no row {group}"));
            let counts = |name: &str| row[name].as_i64().unwrap();
            assert_eq!(
                (
                    counts("enrolled"),
                    counts("sent"),
                    counts("delivered"),
                    counts("clicked"),
                    cents(&row["cost"])
                ),
                (enrolled, sent, delivered, clicked, cost),
                "by {group_by}: {group}"
            );
        }
    }
    // welcome under linear: (1,072.00 - 41.00) / 41.00, and 41.00 per 2.6 conversions.
    let report = roi(base, "linear", "journey").await;
    let welcome = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["journey"] == "welcome")
        .unwrap()
        .clone();
    assert!(
        (welcome["roi"].as_f64().unwrap() - 1031.0 / 41.0).abs() < 1e-9,
        "{welcome}"
    );
    assert!((welcome["cost_per_conversion"].as_f64().unwrap() - 41.0 / 2.6).abs() < 1e-9);
    assert!((welcome["conversion_rate"].as_f64().unwrap() - 1.3).abs() < 1e-9);
}

/// The seeded scenario, running: its API at `base`, part rolled up and part live.
pub struct Seeded {
    pub env: TestEnv,
    pub base: String,
    pub t1: chrono::DateTime<chrono::Utc>,
    pub clock: nurture::engine::VirtualClock,
    _sink: SmtpSink,
}

/// Starts the API and plays the scenario described at `expected`; the dashboard test reuses it.
pub async fn seed(mode: Mode) -> Seeded {
    let sink = SmtpSink::start(0, 250).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = test_config(mode, &root().join("tests/fixtures/reports/journeys")).await;
    config.smtp_url = Some(sink.url());
    config.public_url = Some(base.clone());
    config.admin_tokens = vec![ADMIN.into()];
    config.write_keys = vec![WRITE_KEY.into()];
    config.rep_tokens = vec![("li-wei".into(), nurture::config::Secret(REP.into()))];
    config.reports.costs.email = 0.5;
    config.reports.half_life = Duration::from_secs(86_400);
    let t1 = chrono::DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
        .unwrap()
        .to_utc();
    let clock = virtual_clock("2026-03-02T09:00:00Z");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    serve_api_on(&env, listener);

    let (ada, bo, cy) = (
        contact(&env, "ada@example.com").await,
        contact(&env, "bo@example.com").await,
        contact(&env, "cy@example.com").await,
    );
    env.engine.track(ada, event("Signed Up", json!({}))).await.unwrap();
    env.engine.track(bo, event("Signed Up", json!({}))).await.unwrap();
    emails_done(&env, 2).await;
    let hello = {
        let messages = sink.messages.lock().unwrap().clone();
        let raw = messages
            .iter()
            .find(|raw| raw.contains("ada@example.com"))
            .expect("Ada's welcome mail");
        named_link(parse_mail(raw).part("text/html"), "start")
    };
    let click = http(&base, "GET", &path_of(&hello, &base), &[], b"").await;
    assert_eq!(click.status, 302);

    clock.set(t1 + Span::days(1));
    env.engine.track(ada, event("Promo Eligible", json!({}))).await.unwrap();
    emails_done(&env, 3).await;

    // What happened so far goes into the rollups; what follows is read live by the report.
    clock.set(t1 + Span::days(2));
    assert!(
        env.engine
            .roll_up_until((t1 + Span::days(2)).timestamp_millis())
            .await
            .unwrap()
    );
    env.engine
        .track(
            ada,
            event("Order Completed", json!({"revenue": 120, "currency": "USD"})),
        )
        .await
        .unwrap();
    clock.set(t1 + Span::days(2) + Span::hours(1));
    env.engine.track(bo, event("Demo Booked", json!({}))).await.unwrap();
    env.engine
        .track(cy, event("Order Completed", json!({"revenue": "50.00"})))
        .await
        .unwrap();
    env.engine
        .track(cy, event("Order Completed", json!({"revenue": 30, "currency": "eur"})))
        .await
        .unwrap();
    clock.set(t1 + Span::days(3));
    env.engine
        .track(bo, event("Lead Won", json!({"revenue": 1000})))
        .await
        .unwrap();
    Seeded {
        env,
        base,
        t1,
        clock,
        _sink: sink,
    }
}

async fn seeded_scenario_gives_the_hand_computed_numbers(mode: Mode) {
    let Seeded {
        env, base, t1, _sink, ..
    } = seed(mode).await;
    check_every_model_and_grouping(&base).await;
    // Rolled up to the end, the reports say the same: nothing counted twice, nothing lost.
    assert!(
        env.engine
            .roll_up_until((t1 + Span::days(3)).timestamp_millis() + 1)
            .await
            .unwrap()
    );
    check_every_model_and_grouping(&base).await;

    let csv = get(
        &base,
        "/v1/reports/roi?from=2026-03-02&to=2026-03-05&model=linear",
        ADMIN,
        "text/csv",
    )
    .await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = String::from_utf8(csv.body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "journey,enrolled,sent,delivered,opened,clicked,conversions,conversion_rate,revenue,cost,roi,cost_per_conversion,unsubscribed"
    );
    assert!(
        lines.contains(&"welcome,2,2,2,0,1,2.6,1.3000,1072.00,41.00,25.1463,15.77,0"),
        "{text}"
    );
    assert!(
        lines.contains(&"unattributed,0,0,0,0,0,1,-,50.00,0.00,-,0.00,0"),
        "{text}"
    );

    let funnel = get(&base, "/v1/reports/journeys/welcome/funnel", ADMIN, "application/json")
        .await
        .json();
    let version = &funnel["versions"][0];
    assert_eq!(
        (version["enrolled"].as_i64(), version["goals"].as_i64()),
        (Some(2), Some(1))
    );
    let steps: Vec<(String, i64)> = version["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_string(), s["reached"].as_i64().unwrap()))
        .collect();
    assert_eq!(steps, [("hello".to_string(), 2), ("wait-week".to_string(), 2)]);
    let missing = get(&base, "/v1/reports/journeys/nope/funnel", ADMIN, "application/json").await;
    assert_eq!(missing.status, 404);

    let kpis = get(
        &base,
        "/v1/reports/kpis?from=2026-03-02&to=2026-03-05&model=linear",
        ADMIN,
        "application/json",
    )
    .await
    .json();
    // Three leads; Bo's won deal makes one customer: Bo passed MQL and SQL on the way.
    assert_eq!(
        kpis["stages"][3],
        json!({"stage": "customer", "contacts": 1}),
        "{kpis:#}"
    );
    assert_eq!(kpis["stages"][0], json!({"stage": "lead", "contacts": 3}));
    let email = kpis["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "email")
        .unwrap();
    // 1.50 of email over three leads; 1.50 per 1.6 conversions credited to email.
    assert!((email["cost_per_lead"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert!((email["cost_per_acquisition"].as_f64().unwrap() - 1.5 / 1.6).abs() < 1e-9);

    // Only admins read reports; a bad parameter is named.
    let write_key = get(&base, "/v1/reports/roi", WRITE_KEY, "application/json").await;
    assert_eq!(write_key.status, 403);
    let bad = get(&base, "/v1/reports/roi?model=u_shaped", ADMIN, "application/json").await;
    assert_eq!(
        (bad.status, bad.json()["error"]["field"].clone()),
        (400, json!("model"))
    );
    let bad = get(&base, "/v1/reports/roi?from=March", ADMIN, "application/json").await;
    assert_eq!((bad.status, bad.json()["error"]["field"].clone()), (400, json!("from")));
    env.stop().await;
}

#[tokio::test]
async fn seeded_scenario_gives_the_hand_computed_numbers_on_sqlite() {
    seeded_scenario_gives_the_hand_computed_numbers(Mode::Embedded).await;
}

#[tokio::test]
async fn seeded_scenario_gives_the_hand_computed_numbers_on_postgres_and_redis() {
    seeded_scenario_gives_the_hand_computed_numbers(Mode::Production).await;
}
