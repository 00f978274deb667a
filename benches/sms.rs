//! SMS send throughput against a local Twilio fake (an axum server in this process that answers
//! 201 with a sid, like Twilio's Messages API). Run: `cargo bench --bench sms`.
//!
//! 1. The provider adapter alone: `SmsSender::send` of N messages, C at a time, over kept-alive
//!    connections (Twilio and the JSON gateway).
//! 2. End to end: N contacts sign up and `welcome-sms` (tests/fixtures/sms) sends each an SMS
//!    through the engine: step batches, effect claims, the SMS log. Messages/s is from the
//!    first event to the last message recorded, per mode.
//!
//! Environment: `NURTURE_BENCH_SMS` (messages, 5000), `NURTURE_BENCH_SMS_AT_ONCE` (adapter
//! concurrency, 32), `NURTURE_BENCH_MODES` (`embedded,production`), and the test suite's
//! `NURTURE_TEST_DATABASE_URL` and `NURTURE_TEST_REDIS_URL`.

use futures::{StreamExt, stream};
use nurture::channels::sms::SmsSender;
use nurture::config::{Config, SmsWebhookConfig, TwilioConfig};
use nurture::engine::SystemClock;
use nurture::expr::EventFacts;
use nurture::journey::templates::{RenderedSms, SmsEncoding, Templates};
use nurture::store::contacts::NewContact;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A Twilio-like fake: counts messages, answers 201 with a sid (or the gateway's JSON).
async fn fake() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().fallback(move |_body: axum::body::Bytes| {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let sid = format!("SM{n:032x}");
            (
                axum::http::StatusCode::CREATED,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"sid": "{sid}", "status": "queued", "code": 0, "data": {{"msgid": "{sid}"}}}}"#),
            )
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, received)
}

fn twilio(base: &str) -> TwilioConfig {
    TwilioConfig {
        account_sid: "ACbench".into(),
        auth_token: "bench-token".into(),
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        base_url: base.into(),
    }
}

async fn adapter(name: &str, config: &Config, count: usize, at_once: usize) {
    let sender = SmsSender::from_config(config).expect("the provider is configured");
    let templates = Templates::default();
    let sms = RenderedSms {
        template: "bench".into(),
        language: "zh".into(),
        body: "【艾克美】您好,您的试用已开通,详情见 https://example.com/s/hi 回T退订".into(),
        segments: 1,
        encoding: SmsEncoding::Ucs2,
    };
    let sent_at = chrono::DateTime::from_timestamp(1_796_000_000, 0).expect("a valid time");
    let started = Instant::now();
    let failures = stream::iter(0..count)
        .map(|i| {
            let (sender, templates, sms) = (&sender, &templates, &sms);
            async move {
                let key = format!("bench/{i}");
                sender
                    .send(templates, &key, "+8613800138000", sms, sent_at)
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(at_once)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    let wall = started.elapsed();
    println!(
        "| adapter: {name} | {count} | {at_once} | {failures} | {:.2} s | {:.0} |",
        wall.as_secs_f64(),
        count as f64 / wall.as_secs_f64()
    );
}

async fn end_to_end(production: bool, count: usize) {
    let (base, received) = fake().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sms");
    let dir = std::env::temp_dir().join(format!("nurture-bench-sms-{}-{production}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config {
        journeys: root.join("journeys"),
        templates: root.join("templates"),
        sales: root.join("sales.yaml"),
        scoring: root.join("scoring.yaml"),
        sqlite_path: dir.join("nurture.db"),
        outbox: dir.join("outbox"),
        namespace: format!("nbench_sms_{}", std::process::id()),
        ..Config::default()
    };
    config.sms.twilio = Some(twilio(&base));
    let mut database = None;
    if production {
        let admin = std::env::var("NURTURE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("nurture_bench_sms_{}", std::process::id());
        admin_sql(&admin, &format!("CREATE DATABASE {name}")).await;
        let url_base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        config.database_url = Some(format!("{url_base}/{name}"));
        config.redis_url =
            Some(std::env::var("NURTURE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
        database = Some((admin, name));
    }
    let engine = nurture::app::build(config, Arc::new(SystemClock))
        .await
        .expect("the engine starts");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let worker_engine = engine.clone();
    let worker = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let _ = nurture::app::run_worker(worker_engine, "bench-sms".into(), shutdown).await;
    });
    let mut contacts = Vec::with_capacity(count);
    for i in 0..count {
        let contact = NewContact {
            phone: Some(format!("+86138{i:08}")),
            ..NewContact::default()
        };
        contacts.push(engine.create_contact(&contact).await.unwrap());
    }
    let started = Instant::now();
    stream::iter(contacts)
        .for_each_concurrent(32, |contact| {
            let engine = engine.clone();
            async move {
                let event = EventFacts {
                    name: "Signed Up".into(),
                    properties: Default::default(),
                    timestamp: None,
                };
                engine.track(contact, event).await.unwrap();
            }
        })
        .await;
    let deadline = started + Duration::from_secs(300);
    let recorded = loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sms_messages")
            .fetch_one(&engine.store.pool)
            .await
            .unwrap();
        if rows as usize >= count || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let mode = if production {
        "end to end: production (PostgreSQL + Redis)"
    } else {
        "end to end: embedded (SQLite)"
    };
    println!(
        "| {mode} | {count} | worker | {} missing | {:.2} s | {:.0} |",
        count as i64 - recorded,
        wall.as_secs_f64(),
        recorded as f64 / wall.as_secs_f64()
    );
    assert_eq!(
        received.load(Ordering::Relaxed),
        count,
        "every message reached the fake once"
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    engine.store.pool.close().await;
    if let Some((admin, name)) = database {
        admin_sql(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn admin_sql(admin: &str, sql: &str) {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for the production mode ({admin}): {e}"));
    pool.execute(sqlx::AssertSqlSafe(sql.to_string())).await.unwrap();
    pool.close().await;
}

#[tokio::main]
async fn main() {
    let count = env_usize("NURTURE_BENCH_SMS", 5000);
    let at_once = env_usize("NURTURE_BENCH_SMS_AT_ONCE", 32);
    let modes = std::env::var("NURTURE_BENCH_MODES").unwrap_or_else(|_| "embedded,production".into());
    println!("| what | messages | at once | failed | wall | messages/s |");
    println!("|---|---|---|---|---|---|");
    let (base, _) = fake().await;
    let mut config = Config::default();
    config.sms.twilio = Some(twilio(&base));
    adapter("Twilio Messages API", &config, count, at_once).await;
    config.sms.twilio = None;
    config.sms.webhook = Some(SmsWebhookConfig {
        url: format!("{base}/send"),
        headers: Default::default(),
        body: serde_json::json!({"mobile": "{{to}}", "content": "{{body}}"}),
        id_pointer: Some("/data/msgid".into()),
        success_pointer: Some("/code".into()),
        success_value: Some(serde_json::json!(0)),
    });
    adapter("JSON gateway", &config, count, at_once).await;
    for mode in modes.split(',').map(str::trim) {
        end_to_end(mode == "production", count).await;
    }
}
