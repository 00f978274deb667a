//! Holes in the events API (issue 12 item 6), over real HTTP: generated messageIds that collide,
//! unauthenticated requests that make the server work, a 503 for data that was stored, and
//! concurrent first requests of one new visitor.

use crate::support::{
    Mode, Response, TestEnv, basic, http, post_events, root, spawn_api, test_config, unique, virtual_clock,
};
use nurture::engine::{Clock, SystemClock};
use serde_json::{Value, json};
use sqlx::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "wk-holes";

async fn start(mode: Mode, clock: Arc<dyn Clock>) -> (TestEnv, String) {
    let mut config = test_config(mode, &root().join("tests/fixtures/engine/journeys")).await;
    config.write_keys = vec![KEY.into()];
    let env = TestEnv::start(config, clock, true).await;
    let base = spawn_api(&env).await;
    (env, base)
}

async fn post(base: &str, path: &str, body: &Value) -> Response {
    post_events(base, KEY, path, body).await
}

async fn count(pool: &sqlx::AnyPool, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(pool).await.unwrap().get(0)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

// 1. Generated messageIds. The clock stands still, as it would for two requests in the same
// microsecond: ids made from time, pid and a per-request counter then collide.

async fn messages_without_ids(mode: Mode) {
    let clock = virtual_clock("2026-11-23T14:00:00Z");
    let (env, base) = start(mode, Arc::new(clock)).await;
    let requests = (0..24).map(|i| {
        let base = base.clone();
        async move {
            if i % 3 == 0 {
                let items: Vec<Value> = (0..3)
                    .map(|j| json!({"type": "track", "anonymousId": format!("batch-{i}-{j}"), "event": "Probe"}))
                    .collect();
                post(&base, "/v1/batch", &json!({"batch": items})).await
            } else {
                post(
                    &base,
                    "/v1/track",
                    &json!({"anonymousId": format!("single-{i}"), "event": "Probe"}),
                )
                .await
            }
        }
    });
    let responses = futures::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status == 200), "every request is accepted");
    let pool = &env.engine.store.pool;
    // 8 batches of 3 and 16 single messages.
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM events WHERE name = 'Probe'").await,
        40,
        "a message without messageId is never deduplicated against another"
    );
    assert_eq!(count(pool, "SELECT COUNT(DISTINCT message_id) FROM events").await, 40);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_message_id_are_all_stored_embedded() {
    messages_without_ids(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_message_id_are_all_stored_on_postgres_and_redis() {
    messages_without_ids(Mode::Production).await;
}

/// This process's peak resident memory (the server runs in it), in MB.
fn peak_memory_mb() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

// 2. A tiny gzipped batch whose shared `context` would be copied into 2,400 messages.

async fn bounded_unauthenticated_work(mode: Mode) {
    let (env, base) = start(mode, Arc::new(SystemClock)).await;
    let items: Vec<Value> = (0..2400)
        .map(|_| json!({"type": "track", "anonymousId": "a", "event": "E"}))
        .collect();
    let bomb = json!({"batch": items, "context": {"pad": "x".repeat(380_000)}});
    let bomb_gz = gzip(bomb.to_string().as_bytes());
    assert!(bomb_gz.len() < 2000, "a small request: {} bytes", bomb_gz.len());
    let gz_headers = [("content-encoding", "gzip"), ("content-type", "text/plain")];

    let started = Instant::now();
    let peak_before = peak_memory_mb();
    let response = http(&base, "POST", "/v1/batch", &gz_headers, &bomb_gz).await;
    let took = started.elapsed();
    assert_eq!(response.status, 401, "{}", String::from_utf8_lossy(&response.body));
    assert!(took < Duration::from_secs(3), "refused without a key in {took:?}");
    // Copying the context into every message took this process (the server) up by ~2 GB.
    let grown = peak_memory_mb() - peak_before;
    assert!(grown < 200, "the refused request raised peak memory by {grown} MB");
    // A key in the body that is not a write key: refused before any message is built.
    let mut wrong = bomb.clone();
    wrong["writeKey"] = json!("not-a-key");
    let started = Instant::now();
    let response = http(&base, "POST", "/v1/b", &gz_headers, &gzip(wrong.to_string().as_bytes())).await;
    assert_eq!(response.status, 401);
    assert!(started.elapsed() < Duration::from_secs(3));
    // An unreadable body with no key in the header: nothing tells who sent it.
    let response = http(&base, "POST", "/v1/batch", &gz_headers, b"\x1f\x8bnot gzip").await;
    assert_eq!(response.status, 401);

    // With a valid key, in the header or (analytics.js) in the body: the limit is named.
    let auth = basic(KEY);
    let mut with_header = gz_headers.to_vec();
    with_header.push(("authorization", &auth));
    let response = http(&base, "POST", "/v1/batch", &with_header, &bomb_gz).await;
    assert_eq!(response.status, 400);
    let error = response.json()["error"].clone();
    assert_eq!(error["field"], "context", "{error}");
    assert!(error["message"].as_str().unwrap().contains("32 KB"), "{error}");
    let mut keyed = bomb.clone();
    keyed["writeKey"] = json!(KEY);
    let response = http(&base, "POST", "/v1/b", &gz_headers, &gzip(keyed.to_string().as_bytes())).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["field"], "context");

    // A shared context under 32 KB, but the merged batch over 500 KB.
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"type": "track", "anonymousId": format!("m{i}"), "event": "E"}))
        .collect();
    let merged_too_big = json!({"batch": items, "context": {"pad": "x".repeat(10_000)}});
    let response = post(&base, "/v1/batch", &merged_too_big).await;
    assert_eq!(response.status, 400);
    let error = response.json()["error"].clone();
    assert_eq!(error["field"], "batch", "{error}");
    assert!(error["message"].as_str().unwrap().contains("500 KB"), "{error}");

    let pool = &env.engine.store.pool;
    assert_eq!(count(pool, "SELECT COUNT(*) FROM events").await, 0, "nothing stored");
    assert_eq!(count(pool, "SELECT COUNT(*) FROM received_messages").await, 0);
    assert_eq!(count(pool, "SELECT COUNT(*) FROM contacts").await, 0);

    // One message that is under 32 KB alone but over it with the shared context merged in is
    // refused by index; the others are kept.
    let batch = json!({"batch": [
        {"type": "track", "anonymousId": "small", "event": "E"},
        {"type": "track", "anonymousId": "big", "event": "E", "properties": {"pad": "y".repeat(25_000)}},
    ], "context": {"pad": "x".repeat(5_000), "pad2": "x".repeat(5_000)}});
    let response = post(&base, "/v1/batch", &batch).await;
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["rejected"][0]["field"], "batch[1]", "{body}");
    assert_eq!(count(pool, "SELECT COUNT(*) FROM events").await, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_batch_cannot_make_the_server_work_embedded() {
    bounded_unauthenticated_work(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_batch_cannot_make_the_server_work_on_postgres_and_redis() {
    bounded_unauthenticated_work(Mode::Production).await;
}

// 3. The queue fails after the commit: the data is stored, so the answer is 200.

/// A `redis-server` of our own on a free port, killed on drop.
struct ThrowawayRedis {
    child: std::process::Child,
    port: u16,
}

impl ThrowawayRedis {
    async fn start() -> ThrowawayRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ThrowawayRedis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_event_is_a_200_even_when_the_queue_is_down_after_the_commit() {
    let mut redis = ThrowawayRedis::start().await;
    let mut config = test_config(Mode::Production, &root().join("tests/fixtures/engine/journeys")).await;
    config.write_keys = vec![KEY.into()];
    config.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port));
    let engine = nurture::app::build(config, Arc::new(SystemClock))
        .await
        .expect("the engine starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = nurture::api::AppState {
        keys: Arc::new(nurture::api::keys_for(&engine)),
        engine: engine.clone(),
    };
    tokio::spawn(nurture::api::serve(
        listener,
        nurture::api::router(state),
        std::future::pending(),
    ));
    // The queue's Redis goes away; the database stays.
    redis.stop();

    let signed_up = json!({"userId": "queue-down", "event": "Signed Up", "messageId": "qd-1"});
    let response = tokio::time::timeout(Duration::from_secs(30), post(&base, "/v1/track", &signed_up))
        .await
        .expect("an answer");
    assert_eq!(
        response.status,
        200,
        "stored means 200: {}",
        String::from_utf8_lossy(&response.body)
    );
    let pool = &engine.store.pool;
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM events WHERE message_id = 'qd-1'").await,
        1
    );
    // The enrollment is committed and due: the reconciler re-enqueues it once it is overdue.
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM enrollments WHERE journey_id = 'welcome' AND status IN ('active', 'waiting') AND due_at IS NOT NULL"
        )
        .await,
        1
    );
    // A retry of the same request is a no-op, and still a 200.
    let response = post(&base, "/v1/track", &signed_up).await;
    assert_eq!(response.status, 200);
    assert_eq!(count(pool, "SELECT COUNT(*) FROM events").await, 1);
}

// 4. analytics.js sends `page` and `track` together with the same new anonymousId.

async fn concurrent_first_requests(mode: Mode) {
    let (env, base) = start(mode, Arc::new(SystemClock)).await;
    let pool = env.engine.store.pool.clone();
    let run = unique("race");
    for round in 0..20 {
        for kind in ["anonymous_id", "user_id"] {
            let id = format!("{run}-{kind}-{round}");
            let field = if kind == "user_id" { "userId" } else { "anonymousId" };
            let bodies = [
                ("/v1/p", json!({field: id, "name": "Home", "type": "page"})),
                ("/v1/t", json!({field: id, "event": "Probe"})),
                ("/v1/t", json!({field: id, "event": "Probe Again"})),
            ];
            let requests = bodies.iter().map(|(path, body)| post(&base, path, body));
            let responses = futures::future::join_all(requests).await;
            for response in &responses {
                assert_eq!(
                    response.status,
                    200,
                    "round {round} {kind}: {}",
                    String::from_utf8_lossy(&response.body)
                );
            }
            let owners: Vec<i64> = sqlx::query("SELECT contact_id FROM identities WHERE kind = $1 AND value = $2")
                .bind(kind)
                .bind(&id)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(owners.len(), 1, "round {round} {kind}: one owner of {id}");
            let events: i64 = sqlx::query("SELECT COUNT(*) FROM events WHERE contact_id = $1")
                .bind(owners[0])
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
            assert_eq!(events, 3, "round {round} {kind}: every event on the one contact");
            if kind == "user_id" {
                let external: Option<String> = sqlx::query("SELECT external_id FROM contacts WHERE id = $1")
                    .bind(owners[0])
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(external.as_deref(), Some(id.as_str()));
            }
        }
    }
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM contacts c WHERE NOT EXISTS (SELECT 1 FROM identities i WHERE i.contact_id = c.id)"
        )
        .await,
        0,
        "no contact without identifiers"
    );
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM contacts").await,
        40,
        "one contact per person"
    );
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM events").await, 120);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_of_one_visitor_make_one_contact_embedded() {
    concurrent_first_requests(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_of_one_visitor_make_one_contact_on_postgres_and_redis() {
    concurrent_first_requests(Mode::Production).await;
}
