//! Lead scoring through the API: rules with caps, trait rules, thresholds to MQL and SQL, the
//! `Lead Qualified` event and the SQL hand-off journey it starts, and every point explained.

use crate::support::{Mode, TestEnv, eventually, http, root, spawn_api, test_config};
use nurture::engine::SystemClock;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_add_up_to_mql_then_sql_and_start_the_handoff() {
    let mut config = test_config(Mode::Production, &root().join("journeys")).await;
    config.write_keys = vec!["wk".into()];
    config.admin_tokens = vec!["admin".into()];
    let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;
    let send = |body: serde_json::Value| {
        let base = base.clone();
        async move {
            let response = http(
                &base,
                "POST",
                "/v1/batch",
                &[("authorization", "Bearer wk")],
                json!({"batch": body}).to_string().as_bytes(),
            )
            .await;
            assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        }
    };
    let contact_of = || async {
        http(
            &base,
            "GET",
            "/v1/contacts?user_id=lead-1",
            &[("authorization", "Bearer admin")],
            b"",
        )
        .await
        .json()
    };

    // Profile rules: manufacturing (+10), a director (+15), 500 employees (+10).
    send(json!([{"type": "identify", "userId": "lead-1", "traits": {"email": "lead@example.com", "industry": "manufacturing", "title": "Director of Operations", "company_size": 500}}])).await;
    assert_eq!(contact_of().await["score"]["total"], 35);
    // Three pricing views, capped at 20 points a day: 55, an MQL.
    send(json!([
        {"type": "track", "userId": "lead-1", "event": "Pricing Page Viewed"},
        {"type": "track", "userId": "lead-1", "event": "Pricing Page Viewed"},
        {"type": "track", "userId": "lead-1", "event": "Pricing Page Viewed"}
    ]))
    .await;
    let contact = contact_of().await;
    assert_eq!(
        (contact["score"]["total"].clone(), contact["stage"].clone()),
        (json!(55), json!("mql"))
    );
    assert_eq!(contact["score"]["by_rule"]["pricing-view"], 20);
    // A demo request and a download: 100, an SQL, handed to sales.
    send(json!([
        {"type": "track", "userId": "lead-1", "event": "Demo Requested"},
        {"type": "track", "userId": "lead-1", "event": "Whitepaper Downloaded", "properties": {"topic": "other"}}
    ]))
    .await;
    let contact = contact_of().await;
    assert_eq!(
        (contact["score"]["total"].clone(), contact["stage"].clone()),
        (json!(100), json!("sql"))
    );
    let qualified: Vec<String> = contact["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "Lead Qualified")
        .map(|e| e["properties"]["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        qualified,
        vec!["sql".to_string(), "mql".to_string()],
        "one Lead Qualified per stage, newest first"
    );
    eventually("the SQL hand-off journey", Duration::from_secs(60), || async {
        let contact = contact_of().await;
        contact["enrollments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["journey"] == "sql-handoff" && e["step"] == "await-accept")
            .then_some(())
    })
    .await;

    // A trait that stops holding takes its points back; the stage never moves back.
    send(json!([{"type": "identify", "userId": "lead-1", "traits": {"industry": "retail"}}])).await;
    let contact = contact_of().await;
    assert_eq!(
        (contact["score"]["total"].clone(), contact["stage"].clone()),
        (json!(90), json!("sql"))
    );

    let id = contact["id"].as_i64().unwrap();
    let breakdown = http(
        &base,
        "GET",
        &format!("/v1/contacts/{id}/score"),
        &[("authorization", "Bearer admin")],
        b"",
    )
    .await
    .json();
    let rules: Vec<&str> = breakdown["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules.iter().filter(|r| **r == "pricing-view").count(),
        2,
        "the capped third view earned nothing: {rules:?}"
    );
    assert_eq!(
        rules.iter().filter(|r| **r == "manufacturing").count(),
        2,
        "given, then taken back: {rules:?}"
    );
    let demo = breakdown["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rule"] == "demo-request")
        .unwrap();
    assert_eq!(
        (demo["event"].clone(), demo["points"].clone()),
        (json!("Demo Requested"), json!(30))
    );
    assert_eq!(breakdown["thresholds"], json!({"mql": 50, "sql": 100}));
    assert_eq!(breakdown["decay"], json!({"half_life": "4w2d"}));
    env.stop().await;
}
