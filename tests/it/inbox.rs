//! The events API's inbox (`[http] acknowledge = "stored"`, the default): a request is answered
//! once stored and applied right after; a row left by a process that died is applied by the
//! reconciler; each row is applied once however many processes reach it; an unreadable row
//! stays, with its error, and holds nothing else up.

use crate::support::{Mode, Response, TestEnv, eventually, post_events, root, spawn_api, test_config, unique};
use nurture::config::Acknowledge;
use nurture::engine::{Clock, SystemClock};
use serde_json::{Value, json};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "wk-inbox";

async fn start(mode: Mode, reconciler: bool) -> TestEnv {
    let mut config = test_config(mode, &root().join("tests/fixtures/engine/journeys")).await;
    config.write_keys = vec![KEY.into()];
    config.http.acknowledge = Acknowledge::Stored;
    TestEnv::start(config, Arc::new(SystemClock), reconciler).await
}

async fn post(base: &str, path: &str, body: &Value) -> Response {
    post_events(base, KEY, path, body).await
}

async fn count(pool: &sqlx::AnyPool, sql: &str, bind: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(bind.to_string())
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

async fn inbox_rows(pool: &sqlx::AnyPool) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM inbox")
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

/// Writes inbox rows as a process that stored them and died would have left them: a body in
/// the inbox's format, received `age_ms` ago.
async fn orphan_rows(env: &TestEnv, bodies: &[String], age_ms: i64) {
    let received = SystemClock.now().timestamp_millis() - age_ms;
    let rows: Vec<(&str, &str, i64)> = bodies.iter().map(|b| ("wk-inbox", b.as_str(), received)).collect();
    let mut tx = env.engine.store.begin().await.unwrap();
    nurture::store::inbox::store(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
}

/// One track message in the inbox's stored form.
fn stored_track(user: &str, message_id: &str, event: &str) -> String {
    let now = SystemClock.now().timestamp_micros();
    json!([{"kind": "track", "id": message_id, "user": user, "name": event, "at": now, "received": now}]).to_string()
}

async fn stored_then_applied(mode: Mode) {
    let env = start(mode, true).await;
    let base = spawn_api(&env).await;
    let pool = env.engine.store.pool.clone();
    let user = unique("inbox-user");
    let identify = post(
        &base,
        "/v1/identify",
        &json!({"userId": user, "traits": {"email": format!("{user}@example.com"), "plan": "pro"}}),
    )
    .await;
    assert_eq!(identify.status, 200, "{:?}", identify.json());
    assert_eq!(identify.json(), json!({"success": true}));
    // A batch, and a replay of one of its messages in a request of its own.
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"type": "track", "userId": user, "event": "Signed Up", "messageId": format!("{user}-{i}")}))
        .collect();
    let answer = post(&base, "/v1/batch", &json!({"batch": batch})).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    let replay = post(
        &base,
        "/v1/track",
        &json!({"userId": user, "event": "Signed Up", "messageId": format!("{user}-7")}),
    )
    .await;
    assert_eq!(replay.status, 200, "a replay is answered like the first copy");
    eventually("the stored requests to be applied", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move { (inbox_rows(&pool).await == 0).then_some(()) }
    })
    .await;
    let contact: i64 = sqlx::query("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = $1")
        .bind(user.clone())
        .fetch_one(&pool)
        .await
        .expect("the identify made the contact")
        .get(0);
    let contact = contact.to_string();
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM events WHERE name = 'Signed Up' AND CAST(contact_id AS TEXT) = $1",
            &contact
        )
        .await,
        50,
        "every message once, the replay deduplicated"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM enrollments WHERE journey_id = 'welcome' AND CAST(contact_id AS TEXT) = $1",
            &contact
        )
        .await,
        1,
        "the events started the journey (one open enrollment per contact and key)"
    );
    let email: Option<String> = sqlx::query("SELECT email FROM contacts WHERE id = $1")
        .bind(contact.parse::<i64>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        email,
        Some(format!("{user}@example.com")),
        "the identify's traits were applied"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_requests_are_applied_right_after_embedded() {
    stored_then_applied(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_requests_are_applied_right_after_on_postgres_and_redis() {
    stored_then_applied(Mode::Production).await;
}

async fn orphans_applied_once(mode: Mode) {
    // No reconciler: the two sweeps below are the only ones.
    let env = start(mode, false).await;
    let pool = env.engine.store.pool.clone();
    let user = unique("orphan");
    // A request in the inbox's format written by an earlier release must still read back.
    let bodies: Vec<String> = (0..40)
        .map(|i| stored_track(&user, &format!("{user}-{i}"), "Signed Up"))
        .chain(std::iter::once("not what the inbox writes".to_string()))
        .collect();
    orphan_rows(&env, &bodies, 60_000).await;
    // A second process reaches the same rows at the same time: each is applied once.
    let other = nurture::app::build(env.config.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let later = SystemClock.now() + chrono::Duration::seconds(1);
    let (first, second) = tokio::join!(env.engine.apply_inbox_backlog(later), other.apply_inbox_backlog(later));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(
        first + second >= 40,
        "both sweeps looked at the rows ({first} + {second})"
    );
    let events = count(
        &pool,
        "SELECT COUNT(*) FROM events e JOIN identities i ON i.contact_id = e.contact_id
         WHERE i.kind = 'user_id' AND i.value = $1",
        &user,
    )
    .await;
    assert_eq!(events, 40, "each orphaned message applied exactly once");
    // The unreadable row stays, with its error, for an operator; nothing else waits for it.
    let row = sqlx::query("SELECT CAST(attempts AS BIGINT), last_error FROM inbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(row.len(), 1, "only the unreadable row is left");
    let attempts: i64 = row[0].try_get::<i64, _>(0).unwrap();
    let error: String = row[0].get(1);
    assert!(attempts >= 1 && error.contains("inbox row"), "{attempts} {error}");
    assert_eq!(env.engine.inbox_counts().await.unwrap(), (1, 0));
    // The reconciler sweeps what is left, and applies nothing twice.
    env.engine.reconcile().await.unwrap();
    let events_after = count(
        &pool,
        "SELECT COUNT(*) FROM events e JOIN identities i ON i.contact_id = e.contact_id
         WHERE i.kind = 'user_id' AND i.value = $1",
        &user,
    )
    .await;
    assert_eq!(events_after, 40);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_by_a_dead_process_are_applied_once_embedded() {
    orphans_applied_once(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_by_a_dead_process_are_applied_once_on_postgres_and_redis() {
    orphans_applied_once(Mode::Production).await;
}

async fn reconciler_picks_up(mode: Mode) {
    // The reconciler (every 300 ms in tests) applies a row older than the orphan age on its own.
    let env = start(mode, true).await;
    let pool = env.engine.store.pool.clone();
    let user = unique("late");
    orphan_rows(
        &env,
        &[stored_track(&user, &format!("{user}-0"), "Trial Started")],
        10_000,
    )
    .await;
    eventually(
        "the reconciler to apply the orphaned row",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move { (inbox_rows(&pool).await == 0).then_some(()) }
        },
    )
    .await;
    let enrolled = count(
        &pool,
        "SELECT COUNT(*) FROM enrollments n JOIN identities i ON i.contact_id = n.contact_id
         WHERE i.kind = 'user_id' AND i.value = $1 AND n.journey_id = 'short-wait'",
        &user,
    )
    .await;
    assert_eq!(enrolled, 1, "the event applied by the reconciler started its journey");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_applies_an_orphaned_row_embedded() {
    reconciler_picks_up(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_applies_an_orphaned_row_on_postgres_and_redis() {
    reconciler_picks_up(Mode::Production).await;
}

async fn synchronous_commit(tx: &mut nurture::store::Tx<'_>) -> String {
    sqlx::query("SHOW synchronous_commit")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
        .get(0)
}

/// Applying commits without waiting for PostgreSQL's disk flush, in its own transaction only:
/// the next transaction on the same connection (storing requests, a step batch) waits again.
async fn applying_alone_skips_the_flush(mode: Mode) {
    let env = start(mode, false).await;
    let mut connection = env.engine.store.pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
    nurture::store::inbox::apply_without_waiting_for_disk(&mut tx)
        .await
        .unwrap();
    if mode == Mode::Production {
        assert_eq!(synchronous_commit(&mut tx).await, "off");
    }
    tx.commit().await.unwrap();
    if mode == Mode::Production {
        let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
        assert_eq!(
            synchronous_commit(&mut tx).await,
            "on",
            "the setting outlived its transaction"
        );
        tx.commit().await.unwrap();
    }
    drop(connection);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_alone_skips_the_disk_flush_embedded() {
    applying_alone_skips_the_flush(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_alone_skips_the_disk_flush_on_postgres_and_redis() {
    applying_alone_skips_the_flush(Mode::Production).await;
}
