//! Issue 15, "found by reading the code": stale and out-of-order writes, personal data left
//! behind by erasure, unbounded growth, and parts of the process that could die quietly. Each
//! test fails without its fix.

use crate::support::{Mode, Response, TestEnv, http, root, spawn_api, test_config, virtual_clock};
use serde_json::{Value, json};
use sqlx::Row;
use std::sync::Arc;

const KEY: &str = "wk-hygiene";
const ADMIN: &str = "admin-hygiene";

async fn start(mode: Mode, project: &std::path::Path) -> (TestEnv, String) {
    let mut config = test_config(mode, &project.join("journeys")).await;
    config.write_keys = vec![KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    let env = TestEnv::start(config, Arc::new(virtual_clock("2026-11-23T14:00:00Z")), true).await;
    let base = spawn_api(&env).await;
    (env, base)
}

async fn post(base: &str, path: &str, body: &Value) -> Response {
    let auth = format!("Bearer {KEY}");
    http(
        base,
        "POST",
        path,
        &[("authorization", &auth)],
        body.to_string().as_bytes(),
    )
    .await
}

async fn contact(base: &str, user_id: &str) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let response = http(
        base,
        "GET",
        &format!("/v1/contacts?user_id={user_id}"),
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

// 1. Out-of-order and stale writes.

async fn an_older_message_never_undoes_a_newer_one(mode: Mode) {
    let (env, base) = start(mode, &root().join("tests/fixtures/engine")).await;
    let identify = |at: &str, traits: Value| json!({"userId": "lww", "timestamp": at, "traits": traits});
    let ok = post(
        &base,
        "/v1/identify",
        &identify(
            "2026-11-23T13:00:00Z",
            json!({"plan": "pro", "unsubscribed": true, "timezone": "Asia/Shanghai"}),
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    // A late message from an hour earlier: an old sign-up form that said yes, on another plan.
    let late = identify(
        "2026-11-23T12:00:00Z",
        json!({"plan": "free", "consent": {"email": true}, "timezone": "Europe/Berlin", "city": "Berlin"}),
    );
    assert_eq!(post(&base, "/v1/identify", &late).await.status, 200);
    let seen = contact(&base, "lww").await;
    assert_eq!(seen["traits"]["plan"]["value"], "pro", "{seen}");
    assert_eq!(seen["consent"]["email"]["granted"], false, "the opt-out stays: {seen}");
    assert_eq!(seen["timezone"], "Asia/Shanghai", "{seen}");
    assert_eq!(
        seen["traits"]["city"]["value"], "Berlin",
        "a trait nobody newer set is taken: {seen}"
    );
    // A newer message wins, trait by trait.
    let newer = identify(
        "2026-11-23T13:30:00Z",
        json!({"plan": "team", "consent": {"email": true}}),
    );
    assert_eq!(post(&base, "/v1/identify", &newer).await.status, 200);
    let seen = contact(&base, "lww").await;
    assert_eq!(seen["traits"]["plan"]["value"], "team", "{seen}");
    assert_eq!(seen["consent"]["email"]["granted"], true, "{seen}");
    // A time in the future is taken as the receipt: it neither pins `last_seen_at` nor wins
    // every later write.
    let future = json!({"userId": "lww", "event": "Clicked", "timestamp": "2030-01-01T00:00:00Z"});
    assert_eq!(post(&base, "/v1/track", &future).await.status, 200);
    let future_traits = identify("2030-01-01T00:00:00Z", json!({"plan": "enterprise"}));
    assert_eq!(post(&base, "/v1/identify", &future_traits).await.status, 200);
    let seen = contact(&base, "lww").await;
    assert_eq!(seen["last_seen_at"], "2026-11-23T14:00:00+00:00", "{seen}");
    assert_eq!(
        seen["traits"]["plan"]["updated_at"], "2026-11-23T14:00:00+00:00",
        "{seen}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_message_never_undoes_a_newer_one_embedded() {
    an_older_message_never_undoes_a_newer_one(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_message_never_undoes_a_newer_one_production() {
    an_older_message_never_undoes_a_newer_one(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_phone_trait_sets_the_phone() {
    let (env, base) = start(Mode::Embedded, &root().join("tests/fixtures/engine")).await;
    assert_eq!(
        post(
            &base,
            "/v1/identify",
            &json!({"userId": "num", "traits": {"plan": "pro"}})
        )
        .await
        .status,
        200
    );
    let numeric = json!({"userId": "num", "traits": {"phone": 13800138000u64}});
    assert_eq!(post(&base, "/v1/identify", &numeric).await.status, 200);
    assert_eq!(contact(&base, "num").await["phone"], "+8613800138000");
    env.stop().await;
}

// 3. Unbounded growth: traits per contact.

async fn too_many_traits_are_refused_by_message(mode: Mode) {
    let (env, base) = start(mode, &root().join("tests/fixtures/engine")).await;
    let cap = nurture::store::contacts::MAX_TRAITS;
    let traits = |from: usize, count: usize| -> Value {
        Value::Object((from..from + count).map(|i| (format!("t{i}"), json!(i))).collect())
    };
    // One message with more than a contact may keep.
    let response = post(
        &base,
        "/v1/identify",
        &json!({"userId": "wide", "traits": traits(0, cap + 1)}),
    )
    .await;
    assert_eq!(response.status, 400, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.json()["error"]["field"], "traits");
    // Filled to the cap in two messages, then one more new name is refused, by its index in
    // the batch, and the rest of the batch is stored.
    assert_eq!(
        post(
            &base,
            "/v1/identify",
            &json!({"userId": "wide", "traits": traits(0, cap - 10)})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post(
            &base,
            "/v1/identify",
            &json!({"userId": "wide", "traits": traits(cap - 10, 10)})
        )
        .await
        .status,
        200
    );
    let batch = json!({"batch": [
        {"type": "identify", "userId": "wide", "traits": {"t0": "changed"}},
        {"type": "identify", "userId": "wide", "traits": {"one_more": true}},
        {"type": "track", "userId": "wide", "event": "Clicked"}
    ]});
    let response = post(&base, "/v1/batch", &batch).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let body = response.json();
    assert_eq!(body["rejected"][0]["index"], 1, "{body}");
    assert_eq!(body["rejected"][0]["field"], "batch[1].traits", "{body}");
    let seen = contact(&base, "wide").await;
    assert_eq!(seen["traits"].as_object().unwrap().len(), cap);
    assert_eq!(seen["traits"]["t0"]["value"], "changed", "a known trait still changes");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_traits_are_refused_by_message_embedded() {
    too_many_traits_are_refused_by_message(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_traits_are_refused_by_message_production() {
    too_many_traits_are_refused_by_message(Mode::Production).await;
}

// 2. Erasure leaves no personal data: step details, the outbox, and the open lead.

const ERASE_JOURNEY: &str = r#"
id: onboarding
trigger: {event: Signed Up}
re_entry: always
steps:
  - id: by-plan
    branch:
      - when: traits.plan == "pro-secret-plan"
        goto: mail
    else: mail
  - id: mail
    send_email: {template: hello}
  - id: text
    send_sms: {template: hello}
  - id: assign
    assign_to_sales: {team: inbound}
"#;

fn erase_project() -> std::path::PathBuf {
    let dir = crate::support::scratch_dir("erase");
    std::fs::create_dir_all(dir.join("journeys")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("journeys/onboarding.yaml"), ERASE_JOURNEY).unwrap();
    std::fs::write(
        dir.join("templates/hello.email.hbs"),
        "---\nsubject: Hello {{traits.first_name}}\n---\n<p>Hello {{traits.first_name}}, your plan: {{traits.plan}}</p>\n<a href=\"{{unsubscribe_url}}\">Unsubscribe</a>\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/hello.sms.hbs"),
        "Hello {{traits.first_name}}, welcome. Reply STOP to opt out",
    )
    .unwrap();
    std::fs::write(
        dir.join("sales.yaml"),
        "teams:\n  inbound:\n    name: Inbound\n    reps:\n      - {id: ann, name: Ann, email: ann@example.com, capacity: 1}\n",
    )
    .unwrap();
    dir
}

async fn one(pool: &sqlx::AnyPool, sql: &str, id: i64) -> Vec<String> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_personal_data_and_frees_the_reps_slot() {
    let project = erase_project();
    let (env, base) = start(Mode::Embedded, &project).await;
    let people = [
        ("erase-me", "ada@erase.example", "+8613800138000", "Adaline"),
        ("stays", "bob@stay.example", "+8613900139000", "Bobbin"),
    ];
    for (user, email, phone, name) in people {
        let identify = json!({"userId": user, "traits": {"email": email, "phone": phone, "first_name": name, "plan": "pro-secret-plan"}});
        assert_eq!(post(&base, "/v1/identify", &identify).await.status, 200);
        assert_eq!(
            post(&base, "/v1/track", &json!({"userId": user, "event": "Signed Up"}))
                .await
                .status,
            200
        );
    }
    let pool = env.engine.store.pool.clone();
    let leads = |pool: sqlx::AnyPool| async move {
        sqlx::query(
            "SELECT a.status, c.external_id FROM assignments a JOIN contacts c ON c.id = a.contact_id ORDER BY a.id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.get::<String, _>(0),
                row.get::<Option<String>, _>(1).unwrap_or_default(),
            )
        })
        .collect::<Vec<_>>()
    };
    crate::support::eventually("both leads placed", std::time::Duration::from_secs(60), || {
        let pool = pool.clone();
        async move { (leads(pool).await.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(
        leads(pool.clone()).await,
        vec![
            ("assigned".to_string(), "erase-me".to_string()),
            ("pooled".to_string(), "stays".to_string())
        ],
        "Ann has room for one"
    );
    let id = contact(&base, "erase-me").await["id"].as_i64().unwrap();
    let outbox = env.config.outbox.clone();
    let read_outbox = || {
        let mut text = String::new();
        for folder in ["mail", "sms"] {
            for entry in std::fs::read_dir(outbox.join(folder)).unwrap() {
                text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
            }
        }
        text
    };
    let before = read_outbox();
    assert!(before.contains("ada@erase.example") && before.contains("+8613800138000") && before.contains("Adaline"));
    let history =
        "SELECT h.detail FROM step_history h JOIN enrollments e ON e.id = h.enrollment_id WHERE e.contact_id = $1";
    assert!(
        one(&pool, history, id)
            .await
            .iter()
            .any(|d| d.contains("pro-secret-plan"))
    );

    let auth = format!("Bearer {ADMIN}");
    let erased = http(
        &base,
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(erased.status, 204);

    let after = read_outbox();
    for gone in ["ada@erase.example", "+8613800138000", "Adaline"] {
        assert!(!after.contains(gone), "{gone} is still in the outbox:\n{after}");
    }
    for kept in ["bob@stay.example", "+8613900139000", "Bobbin"] {
        assert!(after.contains(kept), "{kept} was redacted too");
    }
    // Stubs in their place, so counts hold: the welcome email, the rep's notice, the SMS.
    assert_eq!(after.matches("X-Nurture-Erased: yes").count(), 2, "{after}");
    assert_eq!(after.matches("\"erased\":true").count(), 1, "{after}");
    let details = one(&pool, history, id).await;
    assert!(
        !details.is_empty() && details.iter().all(|d| !d.contains("pro-secret-plan")),
        "{details:?}"
    );
    // The erased contact's lead is closed and Ann's slot goes to the pooled lead.
    let leads = leads(pool.clone()).await;
    assert_eq!(leads[0].0, "lost", "{leads:?}");
    assert_eq!(leads[1], ("assigned".to_string(), "stays".to_string()), "{leads:?}");
    let load: i64 = sqlx::query("SELECT open_leads FROM rep_load WHERE rep = 'ann'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(load, 1, "one open lead: the one that took the freed slot");
    env.stop().await;
}

/// An engine with no worker running, and one contact.
async fn engine_with_a_contact(
    mode: Mode,
) -> (Arc<nurture::engine::runner::Engine>, i64, chrono::DateTime<chrono::Utc>) {
    let config = test_config(mode, &root().join("tests/fixtures/engine/journeys")).await;
    let clock = virtual_clock("2026-11-23T14:00:00Z");
    let now = nurture::engine::Clock::now(&clock);
    let engine = nurture::app::build(config, Arc::new(clock)).await.unwrap();
    let mut tx = engine.store.begin().await.unwrap();
    let contact = nurture::store::contacts::create(&mut tx, &Default::default(), now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (engine, contact, now)
}

// 4. `mark_done_many` leaves an effect cancelled meanwhile (its contact erased) as it is.

async fn a_cancelled_effect_stays_cancelled(mode: Mode) {
    let (engine, contact, now) = engine_with_a_contact(mode).await;
    let pool = &engine.store.pool;
    let enrollment: i64 = sqlx::query(
        "INSERT INTO enrollments (contact_id, journey_id, version, status, position, seq, entered_at, updated_at)
         VALUES ($1, 'welcome', 'v', 'active', '{}', 1, 0, 0) RETURNING id",
    )
    .bind(contact)
    .fetch_one(pool)
    .await
    .unwrap()
    .get(0);
    for (key, status) in [("e/cancelled/1", "cancelled"), ("e/sending/1", "sending")] {
        sqlx::query(
            "INSERT INTO effects (effect_key, enrollment_id, contact_id, journey_id, step, kind, payload, status, created_at)
             VALUES ($1, $2, $3, 'welcome', 'mail', 'email', '{}', $4, 0)",
        )
        .bind(key)
        .bind(enrollment)
        .bind(contact)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
    }
    let mut connection = pool.acquire().await.unwrap();
    let done = vec![
        ("e/cancelled/1".to_string(), "smtp 250".to_string(), now),
        ("e/sending/1".to_string(), "smtp 250".to_string(), now),
    ];
    nurture::store::effects::mark_done_many(&mut connection, &done)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT effect_key, status, result FROM effects ORDER BY effect_key")
        .fetch_all(&mut *connection)
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        rows,
        vec![
            ("e/cancelled/1".into(), "cancelled".into(), None),
            ("e/sending/1".into(), "done".into(), Some("smtp 250".into())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_effect_stays_cancelled_embedded() {
    a_cancelled_effect_stays_cancelled(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_effect_stays_cancelled_production() {
    a_cancelled_effect_stays_cancelled(Mode::Production).await;
}

// 3. The reconciler does not push what it pushed a moment ago (a backlog is queued, not lost).

async fn the_reconciler_pushes_a_backlog_once(mode: Mode) {
    let (engine, contact, now) = engine_with_a_contact(mode).await;
    let pool = &engine.store.pool;
    // Overdue for an hour, and no worker runs them: a backlog.
    let due = nurture::store::ms(now) - 3_600_000;
    let backlog = nurture::engine::reconcile::BACKLOG + 50;
    for key in 0..backlog {
        sqlx::query(
            "INSERT INTO enrollments (contact_id, journey_id, version, enrollment_key, status, position, seq, due_at, entered_at, updated_at)
             VALUES ($1, 'welcome', 'v', $2, 'waiting', '{}', 1, $3, 0, 0)",
        )
        .bind(contact)
        .bind(format!("k{key}"))
        .bind(due)
        .execute(pool)
        .await
        .unwrap();
    }
    assert_eq!(engine.reconcile().await.unwrap(), backlog);
    assert_eq!(engine.reconcile().await.unwrap(), 0, "still queued: not pushed again");
    assert_eq!(engine.reconcile().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_pushes_a_backlog_once_embedded() {
    the_reconciler_pushes_a_backlog_once(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_pushes_a_backlog_once_production() {
    the_reconciler_pushes_a_backlog_once(Mode::Production).await;
}

// 3. Score entries are folded past a bound, worth the same, and caps still hold.

async fn old_score_entries_fold_and_keep_their_worth(mode: Mode) {
    let (env, base) = start(mode, &root()).await;
    assert_eq!(
        post(
            &base,
            "/v1/identify",
            &json!({"userId": "scored", "traits": {"email": "s@example.com"}})
        )
        .await
        .status,
        200
    );
    let id = contact(&base, "scored").await["id"].as_i64().unwrap();
    let now = nurture::store::ms(nurture::engine::Clock::now(env.engine.clock.as_ref()));
    let pool = &env.engine.store.pool;
    let day = 86_400_000i64;
    // 100 demo requests of 5 points over 100 days, and the 40 points `event-registration` may
    // ever give (max_total: 40), all older than a day.
    let mut entries: Vec<(&str, i64, i64)> = (0..100).map(|d| ("demo-request", 5, now - (d + 2) * day)).collect();
    entries.extend((0..8).map(|d| ("event-registration", 5, now - (d + 2) * day)));
    for (rule, points, at) in &entries {
        sqlx::query("INSERT INTO score_entries (contact_id, rule, event_id, points, at) VALUES ($1, $2, NULL, $3, $4)")
            .bind(id)
            .bind(*rule)
            .bind(*points)
            .bind(*at)
            .execute(pool)
            .await
            .unwrap();
    }
    let before = contact(&base, "scored").await["score"]["total"].as_i64().unwrap();
    assert_eq!(
        post(
            &base,
            "/v1/track",
            &json!({"userId": "scored", "event": "Demo Requested"})
        )
        .await
        .status,
        200
    );
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM score_entries WHERE contact_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0);
    assert!(count <= nurture::engine::score_fold::MAX_ENTRIES, "{count} entries");
    let after = contact(&base, "scored").await["score"]["total"].as_i64().unwrap();
    assert!((after - (before + 30)).abs() <= 1, "{before} + 30 is not {after}");
    // The cap still counts the folded points: registering earns nothing more.
    assert_eq!(
        post(
            &base,
            "/v1/track",
            &json!({"userId": "scored", "event": "Event Registered"})
        )
        .await
        .status,
        200
    );
    let again = contact(&base, "scored").await["score"]["total"].as_i64().unwrap();
    assert_eq!(again, after, "max_total holds across the fold");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_score_entries_fold_and_keep_their_worth_embedded() {
    old_score_entries_fold_and_keep_their_worth(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_score_entries_fold_and_keep_their_worth_production() {
    old_score_entries_fold_and_keep_their_worth(Mode::Production).await;
}

// 4. The Redis wake-up listener does not die quietly on a connection that went silent.

/// A TCP proxy to Redis whose existing connections the test can freeze: bytes stop flowing
/// both ways and the sockets stay open, as when a NAT entry or a firewall drops a connection
/// without a reset. New connections go through.
struct FreezingProxy {
    address: std::net::SocketAddr,
    connections: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
}

use std::sync::atomic::{AtomicBool, Ordering};

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            // Swallowed: both sockets stay open and silent.
            Ok(_) if frozen.load(Ordering::SeqCst) => {}
            Ok(read) => {
                if to.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        }
    }
    // Keep `to` open (a frozen peer never closes).
    std::future::pending::<()>().await;
    drop(to);
}

impl FreezingProxy {
    async fn start(target: &str) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let all = connections.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                all.lock().unwrap().push(frozen.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, frozen.clone()));
                tokio::spawn(pump(server_read, client_write, frozen));
            }
        });
        FreezingProxy { address, connections }
    }

    fn freeze_existing(&self) {
        for frozen in self.connections.lock().unwrap().iter() {
            frozen.store(true, Ordering::SeqCst);
        }
    }
}

/// Publishes wake-ups as another process would, until this process's worker is woken.
async fn heard(
    wakes: &mut nurture::queue::WakeStream,
    publisher: &mut redis::aio::MultiplexedConnection,
    channel: &str,
) -> bool {
    use futures::StreamExt;
    // Drop wake-ups already queued.
    while tokio::time::timeout(std::time::Duration::from_millis(100), wakes.next())
        .await
        .is_ok()
    {}
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg("1")
            .query_async(publisher)
            .await
            .unwrap();
        if tokio::time::timeout(std::time::Duration::from_millis(300), wakes.next())
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_resume_after_the_subscription_goes_silent() {
    let redis = crate::support::redis_url();
    let target = redis.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let proxy = FreezingProxy::start(&target).await;
    let namespace = crate::support::unique("nt");
    let queue = nurture::queue::Queue::redis(&format!("redis://{}", proxy.address), &namespace)
        .await
        .unwrap();
    let mut wakes = nurture::queue::wake_stream(queue.hub.clone());
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{namespace}:wake");
    assert!(
        heard(&mut wakes, &mut publisher, &channel).await,
        "the subscription works through the proxy"
    );
    proxy.freeze_existing();
    assert!(
        heard(&mut wakes, &mut publisher, &channel).await,
        "the listener noticed its silent connection and subscribed again"
    );
}

// 2. Info-level logs of a whole run carry no email address, phone number or token.

const RUN_JOURNEY: &str = r#"
id: run
trigger: {event: Signed Up}
re_entry: always
steps:
  - id: mail
    send_email: {template: hello}
  - id: text
    send_sms: {template: hello}
  - id: crm
    webhook:
      url: "CRM/hook?email={{contact.email}}"
      body:
        phone: "{{contact.phone}}"
  - id: assign
    assign_to_sales: {team: inbound}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_of_a_whole_run_name_nobody() {
    use std::process::{Command, Stdio};
    let project = erase_project();
    std::fs::remove_file(project.join("journeys/onboarding.yaml")).unwrap();
    // The CRM refuses the first call and says why, quoting what it was sent, as many do.
    let crm = crate::support::HttpFake::start(|index, request| {
        let said = format!("{} {}", request.path, String::from_utf8_lossy(&request.body));
        if index == 0 {
            crate::support::Answer::new(422, json!({"error": format!("duplicate contact: {said}")}).to_string())
        } else {
            crate::support::Answer::new(200, "{}")
        }
    })
    .await;
    std::fs::write(project.join("journeys/run.yaml"), RUN_JOURNEY.replace("CRM", &crm.base)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let log = project.join("serve.log");
    let (write_key, admin, rep_token) = ("wk-5b1f0c9e", "admin-77d0aa31", "rep-token-c0ffee42");
    let child = Command::new(env!("CARGO_BIN_EXE_nurture"))
        .arg("serve")
        .current_dir(&project)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("NURTURE_LISTEN", format!("127.0.0.1:{port}"))
        .env("NURTURE_WRITE_KEYS", write_key)
        .env("NURTURE_ADMIN_TOKENS", admin)
        .env("NURTURE_REP_TOKENS", format!("ann:{rep_token}"))
        .env("NURTURE_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
        .env("NURTURE_RECONCILE_EVERY", "1s")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut child = crate::support::KilledOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    crate::support::eventually("nurture serve to listen", std::time::Duration::from_secs(60), || {
        let base = base.clone();
        async move {
            tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    let people = [
        ("p1", "ada@logs.example", "+8613800138001"),
        ("p2", "bob@logs.example", "+8613800138002"),
        ("p3", "cy@logs.example", "+8613800138003"),
    ];
    let key = format!("Bearer {write_key}");
    for (user, email, phone) in people {
        let identify = json!({"userId": user, "traits": {"email": email, "phone": phone}});
        let sent = http(
            &base,
            "POST",
            "/v1/identify",
            &[("authorization", &key)],
            identify.to_string().as_bytes(),
        )
        .await;
        assert_eq!(sent.status, 200);
        let track = json!({"userId": user, "event": "Signed Up"});
        assert_eq!(
            http(
                &base,
                "POST",
                "/v1/track",
                &[("authorization", &key)],
                track.to_string().as_bytes()
            )
            .await
            .status,
            200
        );
    }
    // A bad message, a wrong key and an unknown route: refusals are logged too.
    let bad = http(
        &base,
        "POST",
        "/v1/identify",
        &[("authorization", "Bearer wk-wrong-9d8e")],
        b"{}",
    )
    .await;
    assert_eq!(bad.status, 401);
    let admin_auth = format!("Bearer {admin}");
    crate::support::eventually(
        "every enrollment ended or failed",
        std::time::Duration::from_secs(90),
        || {
            let (base, admin_auth) = (base.clone(), admin_auth.clone());
            async move {
                let mut settled = 0;
                for (user, _, _) in people {
                    let seen = http(
                        &base,
                        "GET",
                        &format!("/v1/contacts?user_id={user}"),
                        &[("authorization", &admin_auth)],
                        b"",
                    )
                    .await
                    .json();
                    if seen["enrollments"]
                        .as_array()
                        .is_some_and(|all| all.iter().all(|e| e["status"] != "active" && e["status"] != "waiting"))
                    {
                        settled += 1;
                    }
                }
                (settled == people.len()).then_some(())
            }
        },
    )
    .await;
    let failed = http(
        &base,
        "GET",
        "/v1/enrollments/failed",
        &[("authorization", &admin_auth)],
        b"",
    )
    .await;
    assert_eq!(failed.status, 200);
    let failed = failed.json();
    assert_eq!(failed["failed"].as_array().map(Vec::len), Some(1), "{failed}");
    let rep = format!("Bearer {rep_token}");
    assert_eq!(
        http(&base, "GET", "/v1/sales/leads", &[("authorization", &rep)], b"")
            .await
            .status,
        200
    );
    // SIGTERM, so everything is flushed.
    let _ = Command::new("kill").arg(child.0.id().to_string()).status();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while child.0.try_wait().ok().flatten().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    child.kill();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("INFO") && logs.contains("WARN"),
        "a run with failures logs them:\n{logs}"
    );
    let failed_text = failed.to_string();
    for (_, email, phone) in people {
        let encoded = email.replace('@', "%40");
        for secret in [email, encoded.as_str(), phone, phone.trim_start_matches('+')] {
            assert!(!logs.contains(secret), "{secret} is in the logs:\n{logs}");
            assert!(
                !failed_text.contains(secret),
                "{secret} is in the failed list: {failed_text}"
            );
        }
    }
    for token in [write_key, admin, rep_token, "wk-wrong-9d8e"] {
        assert!(!logs.contains(token), "{token} is in the logs:\n{logs}");
    }
}
