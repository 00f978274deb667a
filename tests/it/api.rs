//! The events API over real HTTP: the real Segment Python library, and the exact answers to
//! bad requests.

use crate::support::{Mode, TestEnv, basic, eventually, http, root, spawn_api, test_config};
use nurture::engine::SystemClock;
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "wk-test";
const ADMIN: &str = "admin-test";

async fn start(mode: Mode) -> (TestEnv, String) {
    let mut config = test_config(mode, &root().join("journeys")).await;
    config.write_keys = vec![KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;
    (env, base)
}

async fn post(base: &str, path: &str, body: &serde_json::Value) -> crate::support::Response {
    crate::support::post_events(base, KEY, path, body).await
}

async fn get_admin(base: &str, path: &str) -> crate::support::Response {
    http(base, "GET", path, &[("authorization", &format!("Bearer {ADMIN}"))], b"").await
}

async fn real_segment_library(mode: Mode) {
    let (env, base) = start(mode).await;
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/clients/segment_python.py"))
        .arg(&base)
        .arg(KEY)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the Segment library must deliver (pip install segment-analytics-python==2.4.0): {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ada = get_admin(&base, "/v1/contacts?user_id=user-ada").await;
    assert_eq!(ada.status, 200);
    let ada = ada.json();
    assert_eq!(ada["email"], "ada@example.com", "emails are trimmed and lowercased");
    let identities: Vec<String> = ada["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap().to_string())
        .collect();
    assert!(
        identities.contains(&"anon-ada".to_string()) && identities.contains(&"user-ada".to_string()),
        "{identities:?}"
    );
    let events: Vec<&str> = ada["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "Page Viewed").count(),
        2,
        "the anonymous history merged: {events:?}"
    );
    assert!(events.contains(&"Whitepaper Downloaded"), "{events:?}");
    assert_eq!(ada["traits"]["first_name"]["value"], "Ada");
    assert_eq!(
        ada["score"]["total"], 15,
        "scoring.yaml gives a whitepaper download 15 points"
    );
    assert_eq!(ada["score"]["by_rule"]["whitepaper-download"], 15);
    eventually(
        "Ada enrolled in the whitepaper journey",
        Duration::from_secs(60),
        || async {
            let ada = get_admin(&base, "/v1/contacts?user_id=user-ada").await.json();
            ada["enrollments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["journey"] == "whitepaper-nurture" && e["step"] == "wait-hour")
                .then_some(())
        },
    )
    .await;
    let bo = get_admin(&base, "/v1/contacts?phone=%2B8613800138000").await;
    assert_eq!(bo.status, 200, "phones are normalised to E.164");
    assert_eq!(bo.json()["user_id"], "user-bo");
    let contacts: i64 = sqlx::query("SELECT COUNT(*) FROM contacts")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(contacts, 3, "three people, one contact each");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_segment_python_library_delivers_to_nurture_embedded() {
    real_segment_library(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_segment_python_library_delivers_to_nurture_on_postgres_and_redis() {
    real_segment_library(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_exact_answers() {
    let (env, base) = start(Mode::Embedded).await;
    let track = json!({"userId": "u1", "event": "Signed Up", "messageId": "m-1"});

    // Accepted, and a replay of the same messageId is a no-op.
    for _ in 0..2 {
        let response = post(&base, "/v1/track", &track).await;
        assert_eq!((response.status, response.json()), (200, json!({"success": true})));
    }
    let stored: i64 = sqlx::query("SELECT COUNT(*) FROM events WHERE message_id = 'm-1'")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "dedupe on messageId");

    // No key, unknown key, keys that disagree.
    let response = http(&base, "POST", "/v1/track", &[], track.to_string().as_bytes()).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error"]["code"], "unauthorized");
    let response = http(
        &base,
        "POST",
        "/v1/track",
        &[("authorization", &basic("wrong"))],
        track.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (response.status, response.json()["error"]["message"].as_str().unwrap()),
        (401, "unknown write key")
    );
    let with_body_key = json!({"userId": "u1", "event": "X", "writeKey": "other"});
    assert_eq!(post(&base, "/v1/track", &with_body_key).await.status, 401);
    // The write key may come in the body alone, with a text/plain body as browsers send.
    let body_only = json!({"userId": "u1", "event": "X", "writeKey": KEY});
    let response = http(
        &base,
        "POST",
        "/v1/t",
        &[("content-type", "text/plain")],
        body_only.to_string().as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200);

    // Bad JSON, missing ids, missing event name.
    let auth = basic(KEY);
    let response = http(&base, "POST", "/v1/track", &[("authorization", &auth)], b"{not json").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["field"], "body");
    let response = post(&base, "/v1/track", &json!({"userId": null, "event": "X"})).await;
    assert_eq!(response.status, 400);
    let mut error = response.json()["error"].take();
    let request_id = error.as_object_mut().unwrap().remove("request_id");
    assert_eq!(
        request_id.as_ref().and_then(|id| id.as_str()),
        response.header("x-request-id")
    );
    assert_eq!(
        error,
        json!({"code": "invalid_request", "field": "userId", "message": "a message needs a `userId` or an `anonymousId`"})
    );
    let response = post(&base, "/v1/track", &json!({"userId": "u1"})).await;
    assert_eq!(response.json()["error"]["field"], "event");

    // Size limits: 32 KB per message, 500 KB per batch.
    let big = json!({"userId": "u1", "event": "X", "properties": {"pad": "x".repeat(33 * 1024)}});
    let response = post(&base, "/v1/track", &big).await;
    assert_eq!(
        (response.status, response.json()["error"]["field"].as_str()),
        (400, Some("body"))
    );
    let items: Vec<_> = (0..20).map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "X", "properties": {"pad": "x".repeat(30 * 1024)}})).collect();
    let response = post(&base, "/v1/batch", &json!({"batch": items})).await;
    assert_eq!(
        (response.status, response.json()["error"]["field"].as_str()),
        (400, Some("body"))
    );

    // A batch keeps its good messages and names the bad ones; with none good it is a 400.
    let batch = json!({"batch": [{"type": "track", "userId": "a", "event": "One"}, {"type": "track", "userId": "b"}, {"type": "shout", "userId": "c"}]});
    let response = post(&base, "/v1/batch", &batch).await;
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["field"], "batch[1].event");
    assert_eq!(body["rejected"][1]["field"], "batch[2].type");
    let response = post(
        &base,
        "/v1/batch",
        &json!({"batch": [{"type": "track", "userId": "b"}]}),
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["details"]["rejected"][0]["index"], 0);

    // Gzip bodies.
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        json!({"batch": [{"type": "identify", "userId": "gz", "traits": {"email": "gz@example.com"}}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let gz = gz.finish().unwrap();
    let response = http(
        &base,
        "POST",
        "/v1/batch",
        &[
            ("authorization", &auth),
            ("content-encoding", "gzip"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &gz,
    )
    .await;
    assert_eq!(response.status, 200);

    // Routes that do not exist, CORS for browsers, and the OpenAPI document.
    assert_eq!(post(&base, "/v1/shout", &track).await.status, 404);
    let response = http(
        &base,
        "OPTIONS",
        "/v1/t",
        &[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization,content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let openapi = http(&base, "GET", "/openapi.json", &[], b"").await.json();
    assert!(openapi["paths"]["/v1/batch"]["post"].is_object());
    let settings = http(&base, "GET", &format!("/v1/projects/{KEY}/settings"), &[], b"")
        .await
        .json();
    assert_eq!(settings["integrations"]["Segment.io"]["apiKey"], KEY);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_an_admin_token_and_erasure_leaves_nothing_that_names_the_person() {
    let (env, base) = start(Mode::Embedded).await;
    let identify = json!({"userId": "erase-me", "traits": {"email": "erase@example.com", "first_name": "Eve"}});
    assert_eq!(post(&base, "/v1/identify", &identify).await.status, 200);
    let tracked = json!({"userId": "erase-me", "event": "Whitepaper Downloaded", "properties": {"topic": "automation", "email": "erase@example.com"}});
    assert_eq!(post(&base, "/v1/track", &tracked).await.status, 200);
    let write_key_auth = basic(KEY);
    let response = http(
        &base,
        "GET",
        "/v1/contacts?email=erase@example.com",
        &[("authorization", &write_key_auth)],
        b"",
    )
    .await;
    assert_eq!(response.status, 403, "a write key cannot read contacts");
    assert_eq!(http(&base, "GET", "/v1/contacts/1", &[], b"").await.status, 401);
    let contact = get_admin(&base, "/v1/contacts?email=erase@example.com").await.json();
    let id = contact["id"].as_i64().unwrap();
    let response = http(
        &base,
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        b"",
    )
    .await;
    assert_eq!(response.status, 204);
    assert_eq!(
        get_admin(&base, "/v1/contacts?email=erase@example.com").await.status,
        404
    );
    let after = get_admin(&base, &format!("/v1/contacts/{id}")).await.json();
    assert_eq!(
        (after["email"].clone(), after["user_id"].clone()),
        (json!(null), json!(null))
    );
    assert!(after["traits"].as_object().unwrap().is_empty() && after["identities"].as_array().unwrap().is_empty());
    let text = after.to_string();
    assert!(
        !text.contains("erase@example.com") && !text.contains("Eve") && !text.contains("erase-me"),
        "{text}"
    );
    let events = after["events"].as_array().unwrap();
    assert!(!events.is_empty(), "anonymous event counts remain for reports");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_who_opted_out_gets_no_marketing_email_and_the_journey_goes_on() {
    let mut config = test_config(Mode::Production, &root().join("tests/fixtures/engine/journeys")).await;
    config.write_keys = vec![KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;
    let identify = json!({"userId": "no-mail", "traits": {"email": "no@example.com", "consent": {"email": false}}});
    assert_eq!(post(&base, "/v1/identify", &identify).await.status, 200);
    assert_eq!(
        post(&base, "/v1/track", &json!({"userId": "no-mail", "event": "Signed Up"}))
            .await
            .status,
        200
    );
    let contact = eventually("the journey went on to its end", Duration::from_secs(60), || async {
        let contact = get_admin(&base, "/v1/contacts?user_id=no-mail").await.json();
        let enrollments = contact["enrollments"].as_array().cloned().unwrap_or_default();
        let welcome = enrollments.iter().find(|e| e["journey"] == "welcome");
        welcome.is_some_and(|e| e["status"] == "completed").then_some(contact)
    })
    .await;
    // Decided in the move: no effect was recorded, so nothing could be sent or counted.
    let effects = sqlx::query("SELECT COUNT(*) FROM effects")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get::<i64, _>(0);
    assert_eq!(effects, 0);
    let reasons: Vec<&str> = contact["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons, ["the contact opted out of marketing email"; 2],
        "both welcome emails, with why: {contact}"
    );
    assert_eq!(crate::support::count_messages(&env.config.outbox.join("mail")), 0);
    assert_eq!(contact["consent"]["email"]["granted"], false);
    env.stop().await;
}
