//! SMS providers against real local HTTP servers: Twilio's Messages API with its signed status
//! callbacks and replies, a JSON gateway, and the production mode's refusal to run without one.

use crate::support::{
    Answer, HttpFake, Mode, TestEnv, eventually, http, root, sms_of, spawn_api, test_config, twilio_config,
    virtual_clock,
};
use nurture::channels::sms::twilio_signature;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const PHONE: &str = "+8613800138000";

fn fixtures() -> std::path::PathBuf {
    root().join("tests/fixtures/sms/journeys")
}

async fn start(config: nurture::config::Config) -> TestEnv {
    TestEnv::start(config, Arc::new(virtual_clock("2026-01-05T10:00:00+08:00")), false).await
}

async fn sign_up(env: &TestEnv, contact: i64) {
    let event = EventFacts {
        name: "Signed Up".into(),
        properties: Default::default(),
        timestamp: None,
    };
    env.engine.track(contact, event).await.unwrap();
}

async fn contact(env: &TestEnv, phone: &str) -> i64 {
    env.engine
        .create_contact(&NewContact {
            phone: Some(phone.into()),
            ..NewContact::default()
        })
        .await
        .unwrap()
}

async fn effect_results(env: &TestEnv, contact: i64) -> Vec<String> {
    texts(
        env,
        "SELECT COALESCE(result, last_error, status) FROM effects WHERE contact_id = $1 ORDER BY created_at, effect_key",
        contact,
    )
    .await
}

/// Why each of the contact's messages was suppressed in its move (`advance` records no effect).
async fn suppressed_steps(env: &TestEnv, contact: i64) -> Vec<String> {
    texts(
        env,
        "SELECT h.detail FROM step_history h JOIN enrollments e ON e.id = h.enrollment_id
         WHERE e.contact_id = $1 AND h.outcome = 'suppressed' ORDER BY h.id",
        contact,
    )
    .await
}

/// The one text column of `sql`'s rows for a contact.
async fn texts(env: &TestEnv, sql: &'static str, contact: i64) -> Vec<String> {
    use sqlx::Row;
    sqlx::query(sql)
        .bind(contact)
        .fetch_all(&env.engine.store.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Posts a form to our API signed the way Twilio signs it, for the URL Twilio was given.
async fn post_signed(api: &str, path: &str, signed_url: &str, fields: &[(&str, &str)], token: &str) -> u16 {
    let owned: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let signature = twilio_signature(token, signed_url, &owned);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    http(
        api,
        "POST",
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-twilio-signature", &signature),
        ],
        body.as_bytes(),
    )
    .await
    .status
}

async fn twilio_sends_and_status_callbacks_only_move_forward(mode: Mode) {
    let twilio = HttpFake::twilio().await;
    let mut config = test_config(mode, &fixtures()).await;
    config.sms.twilio = Some(twilio_config(&twilio));
    config.sms.price_per_segment = Some(0.05);
    config.sms.currency = "CNY".into();
    config.public_url = Some("https://nurture.example.com".into());
    let env = start(config).await;
    let api = spawn_api(&env).await;
    let ada = contact(&env, PHONE).await;
    sign_up(&env, ada).await;

    let sent = eventually("the SMS recorded", WAIT, || async {
        sms_of(&env, ada).await.into_iter().next()
    })
    .await;
    let requests = twilio.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/2010-04-01/Accounts/ACtest/Messages.json");
    assert_eq!(
        request.header("authorization"),
        Some("Basic QUN0ZXN0OnRlc3QtdG9rZW4="),
        "ACtest:test-token"
    );
    assert_eq!(request.form_field("To").as_deref(), Some(PHONE));
    assert_eq!(request.form_field("From").as_deref(), Some("+15005550006"));
    assert!(request.form_field("Body").unwrap().starts_with("【艾克美】您好"));
    let callback = "https://nurture.example.com/v1/sms/twilio/status";
    assert_eq!(request.form_field("StatusCallback").as_deref(), Some(callback));
    // A Chinese message of 70+ characters is two UCS-2 segments, and costs two.
    assert_eq!(
        (sent.provider.as_str(), sent.segments, sent.encoding.as_str()),
        ("twilio", 2, "UCS-2")
    );
    assert_eq!((sent.cost, sent.currency.as_deref()), (Some(0.1), Some("CNY")));
    assert_eq!(sent.status.as_deref(), Some("queued"));
    let sid = sent.message_id.clone();
    assert!(sid.starts_with("SM"), "{sid}");
    assert!(effect_results(&env, ada).await[0].contains(&sid));

    // Delivered arrives before sent: the later, lower state does not win.
    let path = "/v1/sms/twilio/status";
    for status in ["delivered", "sent"] {
        let fields = [
            ("MessageSid", sid.as_str()),
            ("MessageStatus", status),
            ("AccountSid", "ACtest"),
        ];
        assert_eq!(post_signed(&api, path, callback, &fields, "test-token").await, 204);
    }
    assert_eq!(sms_of(&env, ada).await[0].status.as_deref(), Some("delivered"));
    // A forged report (wrong token) changes nothing.
    let forged = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];
    assert_eq!(post_signed(&api, path, callback, &forged, "guessed").await, 401);
    assert_eq!(sms_of(&env, ada).await[0].status.as_deref(), Some("delivered"));
    let missing = [("MessageStatus", "read")];
    assert_eq!(post_signed(&api, path, callback, &missing, "test-token").await, 400);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_sends_and_status_callbacks_only_move_forward_embedded() {
    twilio_sends_and_status_callbacks_only_move_forward(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_sends_and_status_callbacks_only_move_forward_production() {
    twilio_sends_and_status_callbacks_only_move_forward(Mode::Production).await;
}

async fn replies_stop_and_start_set_the_sms_consent(mode: Mode) {
    let twilio = HttpFake::twilio().await;
    let mut config = test_config(mode, &fixtures()).await;
    config.sms.twilio = Some(twilio_config(&twilio));
    config.sms.inbound_secret = Some("gateway-secret".into());
    config.public_url = Some("https://nurture.example.com".into());
    let env = start(config).await;
    let api = spawn_api(&env).await;
    let wang = contact(&env, PHONE).await;
    let other = contact(&env, "+8613900139000").await;
    let inbound = "https://nurture.example.com/v1/sms/twilio/inbound";

    // 退订 through Twilio: the next sign-up SMS is suppressed, and nothing reaches Twilio.
    let reply = [
        ("From", PHONE),
        ("To", "+15005550006"),
        ("Body", "退订"),
        ("MessageSid", "SMin1"),
    ];
    assert_eq!(
        post_signed(&api, "/v1/sms/twilio/inbound", inbound, &reply, "test-token").await,
        200
    );
    sign_up(&env, wang).await;
    sign_up(&env, other).await;
    eventually("both sign-up SMS handled", WAIT, || async {
        let wang = suppressed_steps(&env, wang).await;
        (wang.len() == 1 && wang[0].contains("opted out") && sms_of(&env, other).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(twilio.count(), 1, "only the other contact's SMS went out");

    // START gives the consent back; then a gateway forwards TD (national number, JSON).
    let reply = [("From", PHONE), ("Body", "START")];
    assert_eq!(
        post_signed(&api, "/v1/sms/twilio/inbound", inbound, &reply, "test-token").await,
        200
    );
    sign_up(&env, wang).await;
    eventually("the SMS after START", WAIT, || async {
        (sms_of(&env, wang).await.len() == 1).then_some(())
    })
    .await;
    let td = json!({"mobile": "13800138000", "content": "TD"}).to_string();
    let answer = http(
        &api,
        "POST",
        "/v1/sms/inbound?secret=gateway-secret",
        &[],
        td.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"success": true, "action": "opted_out", "contacts": 1})
    );
    let contact = env.engine.contact(wang).await.unwrap().unwrap();
    assert!(!contact.allows("sms"));
    // A wrong secret is refused, and a reply without a sender says which field is missing.
    let wrong = http(&api, "POST", "/v1/sms/inbound?secret=guess", &[], td.as_bytes()).await;
    assert_eq!(wrong.status, 401);
    let empty = http(
        &api,
        "POST",
        "/v1/sms/inbound?secret=gateway-secret",
        &[],
        b"{\"body\": \"TD\"}",
    )
    .await;
    assert_eq!(
        (empty.status, empty.json()["error"]["field"].clone()),
        (400, json!("from"))
    );
    // An unsigned Twilio reply is refused.
    let unsigned = http(
        &api,
        "POST",
        "/v1/sms/twilio/inbound",
        &[],
        b"From=%2B8613900139000&Body=STOP",
    )
    .await;
    assert_eq!(unsigned.status, 401);
    assert!(env.engine.contact(other).await.unwrap().unwrap().allows("sms"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_stop_and_start_set_the_sms_consent_embedded() {
    replies_stop_and_start_set_the_sms_consent(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_stop_and_start_set_the_sms_consent_production() {
    replies_stop_and_start_set_the_sms_consent(Mode::Production).await;
}

async fn a_json_gateway_gets_its_template_and_a_refusal_is_final(mode: Mode) {
    // Like many Chinese gateways: 200 whatever happened, `code` 0 on success.
    let gateway = HttpFake::start(|index, _| match index {
        0 => Answer::new(200, json!({"code": 0, "data": {"msgid": "gw-77"}}).to_string()),
        _ => Answer::new(200, json!({"code": 1001, "msg": "签名未审核"}).to_string()),
    })
    .await;
    let mut config = test_config(mode, &fixtures()).await;
    config.sms.twilio = None;
    config.sms.webhook = Some(nurture::config::SmsWebhookConfig {
        url: format!("{}/sms/send", gateway.base),
        headers: [("X-Api-Key".to_string(), "k-123".to_string())].into(),
        body: json!({"mobile": "{{to}}", "content": "{{body}}", "parts": "{{segments}}", "ref": "{{reference}}"}),
        id_pointer: Some("/data/msgid".into()),
        success_pointer: Some("/code".into()),
        success_value: Some(json!(0)),
    });
    let env = start(config).await;
    let first = contact(&env, PHONE).await;
    sign_up(&env, first).await;
    let sent = eventually("the gateway SMS recorded", WAIT, || async {
        sms_of(&env, first).await.into_iter().next()
    })
    .await;
    assert_eq!((sent.provider.as_str(), sent.message_id.as_str()), ("webhook", "gw-77"));
    let request = &gateway.requests()[0];
    assert_eq!(request.header("x-api-key"), Some("k-123"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = request.json();
    assert_eq!(body["mobile"], PHONE);
    assert!(body["content"].as_str().unwrap().starts_with("【艾克美】"));
    assert_eq!(body["parts"], "2");
    assert_eq!(body["ref"], sent.effect_key.as_str());

    // A 200 that says no is a permanent failure: one call, then the failed list.
    let second = contact(&env, "+8613900139000").await;
    sign_up(&env, second).await;
    let error = eventually("the refused SMS failed", WAIT, || async {
        let mut connection = env.engine.store.pool.acquire().await.unwrap();
        let failed = nurture::store::enrollments::failed(&mut connection, 10).await.unwrap();
        failed.into_iter().find_map(|f| f.error)
    })
    .await;
    assert!(
        error.contains("refused the message") && error.contains("1001"),
        "{error}"
    );
    assert_eq!(gateway.count(), 2);
    assert!(sms_of(&env, second).await.is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_gateway_gets_its_template_and_a_refusal_is_final_embedded() {
    a_json_gateway_gets_its_template_and_a_refusal_is_final(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_gateway_gets_its_template_and_a_refusal_is_final_production() {
    a_json_gateway_gets_its_template_and_a_refusal_is_final(Mode::Production).await;
}

async fn twilio_21610_suppresses_and_takes_the_consent(mode: Mode) {
    let twilio = HttpFake::start(|_, _| {
        Answer::new(
            400,
            json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}).to_string(),
        )
    })
    .await;
    let mut config = test_config(mode, &fixtures()).await;
    config.sms.twilio = Some(twilio_config(&twilio));
    let env = start(config).await;
    let stopped = contact(&env, PHONE).await;
    sign_up(&env, stopped).await;
    eventually("the consent taken", WAIT, || async {
        let contact = env.engine.contact(stopped).await.unwrap().unwrap();
        (!contact.allows("sms")).then_some(())
    })
    .await;
    assert!(effect_results(&env, stopped).await[0].starts_with("suppressed"));
    assert_eq!(twilio.count(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_21610_suppresses_and_takes_the_consent_embedded() {
    twilio_21610_suppresses_and_takes_the_consent(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_21610_suppresses_and_takes_the_consent_production() {
    twilio_21610_suppresses_and_takes_the_consent(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_without_an_sms_provider_refuses_journeys_that_send_sms() {
    let mut config = test_config(Mode::Production, &fixtures()).await;
    config.sms.twilio = None;
    // `import`, `reload` and the API alone only store: they build the engine.
    let engine = nurture::app::build_default(config.clone()).await.unwrap();
    let error = nurture::app::run_worker(engine, "no-sms".into(), std::future::pending())
        .await
        .expect_err("the worker must not start")
        .to_string();
    assert!(
        error.contains("welcome-sms.yaml:6:5: step `welcome-text` sends SMS")
            && error.contains("production mode has no SMS provider"),
        "{error}"
    );
    // Journeys without SMS run without a provider.
    config.journeys = root().join("tests/fixtures/engine/journeys");
    config.templates = root().join("tests/fixtures/engine/templates");
    let engine = nurture::app::build_default(config.clone()).await.unwrap();
    engine.start_sending().unwrap();
    // A reload that adds an SMS step is refused too; the running catalog stays.
    config.journeys = fixtures();
    config.templates = root().join("tests/fixtures/sms/templates");
    let (catalog, sources, _) = nurture::app::compile_project(&config).unwrap();
    let error = engine.install(catalog, sources).await.unwrap_err().to_string();
    assert!(error.contains("sends SMS"), "{error}");
    assert!(engine.catalog().journey("welcome-sms").is_none());
}
