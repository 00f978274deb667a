//! The issue's reference journey, side by side with a BullMQ program doing the same four steps
//! as jobs on the same Redis in the same run. Run: `cargo bench --bench reference`.
//!
//! The journey (`benches/fixtures/journeys/bench-reference.yaml`): `Reference Started` ->
//! `branch` on the lead score -> `send_email` (a real template, written to the file outbox) ->
//! `wait 1s` -> `assign_to_sales` (round robin, capacity checked). Four steps per contact.
//! The peer is `benches/peers/bullmq/peer.js`; it runs when `node` is on PATH and its
//! `node_modules` exists or `npm ci` succeeds (`NURTURE_BENCH_PEER=off` skips it).
//!
//! Phases (`NURTURE_BENCH_PHASES`, default `steps,latency,http,waiting`), for each mode in
//! `NURTURE_BENCH_MODES` (default `embedded,production`), then for the peer:
//! - steps: steps/s for N contacts (`NURTURE_BENCH_CONTACTS`, default 20,000 production and
//!   peer, 10,000 embedded), from the first event to the last step or effect done;
//! - latency: event -> first email (the email effect's `done_at`) p50/p99, events sent open
//!   loop at each rate of `NURTURE_BENCH_RATES` (default `500,half`; `half` is half of the
//!   capacity the steps phase measured for the same system) for `NURTURE_BENCH_LATENCY_SECONDS`
//!   (10);
//! - http: single `/v1/track` (`NURTURE_BENCH_SINGLE`, 20,000 messages, 64 keep-alive clients)
//!   and `/v1/batch` of 200 (`NURTURE_BENCH_BATCHES`, 100, `NURTURE_BENCH_BATCH_CLIENTS`, 4)
//!   over real HTTP on loopback, against nurture's API and the peer's `http` mode (HTTP ->
//!   `queue.add`); no step worker on either side. nurture answers once stored and applies in
//!   the same process meanwhile; each row notes when the last message was applied. Then half
//!   as many again, open loop at half of each system's own rate (latency from the due time);
//! - waiting: Redis and database bytes per enrollment parked in a 1 h wait
//!   (`bench-reference-hold`), `NURTURE_BENCH_WAITING` (10,000; the issue's figure is
//!   1,000,000).
//!
//! Also `NURTURE_BENCH_REPEAT` (steps phase runs per system, the median kept; default 1),
//! `NURTURE_BENCH_CONCURRENCY` (worker, the default 512), `NURTURE_BENCH_DEADLINE_SECONDS` (900),
//! `NURTURE_BENCH_LOG`, `NURTURE_BENCH_LATENCY_DUMP` (a file: a CSV of every email's times in
//! the latency phase), and the test suite's `NURTURE_TEST_DATABASE_URL` and
//! `NURTURE_TEST_REDIS_URL`. Prints markdown rows to paste into BENCHMARKS.md.

use futures::{StreamExt, stream};
use nurture::config::Config;
use nurture::engine::SystemClock;
use nurture::engine::runner::Engine;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const JOURNEY: &str = "bench-reference";
const EVENT: &str = "Reference Started";
const HOLD_JOURNEY: &str = "bench-reference-hold";
const HOLD_EVENT: &str = "Reference Hold Started";
/// `branch`, `send_email`, `wait`, `assign_to_sales`.
const STEPS_PER_CONTACT: i64 = 4;
/// Callers of `create_contact` and `track` at once in the steps and waiting phases.
const CLIENTS: usize = 32;
/// Concurrent keep-alive connections for single `/v1/track`.
const TRACK_CLIENTS: usize = 64;
const BATCH_SIZE: usize = 200;
/// The reference journey's `wait: 1s`; the peer's delayed job waits as long.
const WAIT_MS: u64 = 1000;
/// Users the HTTP phase identifies first and then sends events for.
const HTTP_USERS: usize = 1000;
/// Tracks sent before the HTTP load is measured (see `HttpLoad::warmup`).
const HTTP_WARMUP: usize = 4_000;
/// `bench:` in Basic auth: the write key the API is configured with.
const AUTHORIZATION: &str = "Basic YmVuY2g6";
/// The step_history rows that count as steps: the wait writes `waiting` then `waited`.
const STEP_ROWS: &str = "SELECT COUNT(*) FROM step_history WHERE journey_id = $1 AND outcome <> 'waiting'";
const DONE_EFFECTS: &str = "SELECT COUNT(*) FROM effects WHERE journey_id = $1 AND status = 'done'";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Embedded,
    Production,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "nurture embedded (SQLite + apalis-sqlite)",
            Mode::Production => "nurture production (PostgreSQL + Redis)",
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn redis_url() -> String {
    std::env::var("NURTURE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The score contact `i` gets, here and in the peer: about half take each path of the branch.
fn contact_score(i: usize) -> i64 {
    (i as i64 * 37) % 100
}

fn event(name: &str, reference: String) -> EventFacts {
    let mut properties = serde_json::Map::new();
    properties.insert("ref".into(), Value::String(reference));
    EventFacts {
        name: name.into(),
        properties,
        timestamp: None,
    }
}

// ---- nurture, in this process ----------------------------------------------------------------

/// What to remove when a phase is over.
struct Production {
    admin: String,
    database: String,
    namespace: String,
}

/// One engine on fresh storage, with its worker unless the phase is ingest only.
struct Env {
    mode: Mode,
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    worker: Option<tokio::task::JoinHandle<()>>,
    dir: PathBuf,
    production: Option<Production>,
}

impl Env {
    async fn start(mode: Mode, concurrency: usize, worker: bool) -> Env {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/fixtures");
        let dir = std::env::temp_dir().join(unique("nurture-reference"));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let namespace = unique("nref");
        let mut config = Config {
            journeys: root.join("journeys"),
            templates: root.join("templates"),
            sales: root.join("sales.yaml"),
            scoring: root.join("scoring.yaml"),
            sqlite_path: dir.join("nurture.db"),
            outbox: dir.join("outbox"),
            namespace: namespace.clone(),
            concurrency,
            write_keys: vec!["bench".into()],
            admin_tokens: vec!["bench-admin".into()],
            ..Config::default()
        };
        // The per-key rate limit (production default 2,000 requests/s) guards a deployment; it
        // would answer the HTTP load's excess with fast 429s, and the peer has none.
        config.http.rate_limit = Some(0);
        let mut production = None;
        if mode == Mode::Production {
            let admin = std::env::var("NURTURE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let database = unique("nurture_reference");
            admin_execute(&admin, &format!("CREATE DATABASE {database}")).await;
            let base = admin.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap();
            config.database_url = Some(format!("{base}/{database}"));
            config.redis_url = Some(redis_url());
            production = Some(Production {
                admin,
                database,
                namespace,
            });
        }
        let engine = nurture::app::build(config, Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("the engine starts in {mode:?} mode: {e:#}"));
        let (stop, mut stopped) = watch::channel(false);
        let worker = worker.then(|| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                nurture::app::run_worker(engine, unique("reference-worker"), shutdown)
                    .await
                    .expect("the worker runs");
            })
        });
        Env {
            mode,
            engine,
            stop,
            worker,
            dir,
            production,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(worker) = self.worker
            && tokio::time::timeout(Duration::from_secs(30), worker).await.is_err()
        {
            eprintln!("  (the worker did not stop within 30 s)");
        }
        self.engine.store.pool.close().await;
        if let Some(production) = self.production {
            admin_execute(
                &production.admin,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", production.database),
            )
            .await;
            if let Err(error) = delete_redis_keys(&redis_url(), &production.namespace).await {
                eprintln!(
                    "  (could not remove the Redis keys of {}: {error})",
                    production.namespace
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Refreshes PostgreSQL's statistics after a phase's setup (contacts, identities), as
    /// autovacuum does within a minute on a running system: a database created seconds ago and
    /// filled at once still has the estimates of its empty tables, and plans for them.
    /// SQLite keeps statistics only when told to (`ANALYZE`), and nurture never does: they are
    /// left alone there, as in the product.
    async fn settle(&self) {
        if self.mode != Mode::Production {
            return;
        }
        sqlx::query("ANALYZE")
            .execute(&self.engine.store.pool)
            .await
            .unwrap_or_else(|e| panic!("ANALYZE: {e}"));
    }

    async fn count(&self, sql: &'static str, journey: &str) -> i64 {
        sqlx::query(sql)
            .bind(journey)
            .fetch_one(&self.engine.store.pool)
            .await
            .map(|row| row.get::<i64, _>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Polls until every `(sql, target)` is reached or `deadline` passes; returns the counts.
    async fn wait_for(&self, journey: &str, targets: &[(&'static str, i64)], deadline: Instant) -> Vec<i64> {
        let mut last_report = Instant::now();
        loop {
            let mut counts = Vec::new();
            for (sql, _) in targets {
                counts.push(self.count(sql, journey).await);
            }
            let done = counts.iter().zip(targets).all(|(count, (_, target))| count >= target);
            if done || Instant::now() >= deadline {
                return counts;
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                let wanted: Vec<i64> = targets.iter().map(|(_, t)| *t).collect();
                eprintln!("  ... {counts:?} of {wanted:?}");
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Bytes the state (and, embedded, the queue) take: PostgreSQL relation sizes with their
    /// indexes, or the used pages of the SQLite files.
    async fn database_bytes(&self) -> i64 {
        match self.mode {
            Mode::Production => sqlx::query(
                "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'",
            )
            .fetch_one(&self.engine.store.pool)
            .await
            .map(|row| row.get::<i64, _>(0))
            .expect("read the relation sizes"),
            Mode::Embedded => {
                let state = self.dir.join("nurture.db");
                sqlite_used_bytes(&state).await + sqlite_used_bytes(&nurture::app::queue_path(&state)).await
            }
        }
    }
}

async fn sqlite_used_bytes(path: &Path) -> i64 {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    let mut connection = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let bytes: i64 = sqlx::query(
        "SELECT (p.page_count - f.freelist_count) * s.page_size FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
    )
    .fetch_one(&mut connection)
    .await
    .map(|row| row.get(0))
    .unwrap_or_else(|e| panic!("size of {}: {e}", path.display()));
    let _ = connection.close().await;
    bytes
}

async fn admin_execute(admin: &str, sql: &str) {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for the production mode ({admin}): {e}"));
    pool.execute(sqlx::AssertSqlSafe(sql.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?.get_multiplexed_async_connection().await
}

/// Every key whose name contains `pattern`'s text, `COUNT` at a time.
async fn redis_keys(
    connection: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor = 0u64;
    let mut all = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        all.extend(keys);
        if next == 0 {
            return Ok(all);
        }
        cursor = next;
    }
}

async fn delete_redis_keys(url: &str, namespace: &str) -> redis::RedisResult<()> {
    let mut connection = redis_connection(url).await?;
    let keys = redis_keys(&mut connection, &format!("*{namespace}*")).await?;
    for chunk in keys.chunks(1000) {
        let _: i64 = redis::cmd("UNLINK").arg(chunk).query_async(&mut connection).await?;
    }
    Ok(())
}

/// `used_memory` from `INFO memory`: the whole server, so other users of it add noise.
async fn redis_used_memory(url: &str) -> i64 {
    let mut connection = redis_connection(url).await.expect("Redis");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `MEMORY USAGE` summed over the namespace's keys: not disturbed by other users of the server.
async fn redis_key_bytes(url: &str, namespace: &str) -> i64 {
    let mut connection = redis_connection(url).await.expect("Redis");
    let keys = redis_keys(&mut connection, &format!("*{namespace}*"))
        .await
        .expect("SCAN");
    let mut total = 0i64;
    for key in keys {
        let bytes: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut connection)
            .await
            .unwrap_or(None);
        total += bytes.unwrap_or(0);
    }
    total
}

/// Creates contacts 0..count with an email, a first name and a score, `CLIENTS` at a time.
/// Returns their ids by index.
async fn create_contacts(engine: &Arc<Engine>, count: usize) -> Vec<i64> {
    let started = Instant::now();
    let mut ids: Vec<(usize, i64)> = stream::iter(0..count)
        .map(|i| {
            let engine = engine.clone();
            async move {
                let mut traits = serde_json::Map::new();
                traits.insert("first_name".into(), Value::String(format!("Ada {i}")));
                let id = engine
                    .create_contact(&NewContact {
                        email: Some(format!("bench{i}@example.com")),
                        score: contact_score(i),
                        traits,
                        ..NewContact::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("create a contact: {e}"));
                (i, id)
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    ids.sort_unstable();
    eprintln!("  {count} contacts created in {:.2?}", started.elapsed());
    ids.into_iter().map(|(_, id)| id).collect()
}

/// Sends every contact the event, as fast as possible: `NURTURE_BENCH_EVENT_CALLERS` (512)
/// `track` calls at a time, which the engine's group commit turns into large groups, like the
/// peer's bulk `addBulk`. Returns the failures.
async fn send_events(engine: &Arc<Engine>, contacts: &[i64], name: &'static str) -> usize {
    let callers = env_usize("NURTURE_BENCH_EVENT_CALLERS", 512);
    let started = Instant::now();
    let failures: usize = stream::iter(contacts.iter().copied().enumerate())
        .map(|(i, contact)| {
            let engine = engine.clone();
            async move {
                match engine.track(contact, event(name, format!("e{i}"))).await {
                    Ok(started) if started.len() == 1 => 0,
                    Ok(started) => {
                        eprintln!("  track({contact}) started {} enrollments", started.len());
                        1
                    }
                    Err(error) => {
                        eprintln!("  track({contact}) failed: {error}");
                        1
                    }
                }
            }
        })
        .buffer_unordered(callers)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    let took = started.elapsed();
    eprintln!(
        "  {} events tracked in {took:.2?} ({:.0}/s)",
        contacts.len(),
        contacts.len() as f64 / took.as_secs_f64()
    );
    failures
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- phase results -----------------------------------------------------------------------------

struct StepsRow {
    system: String,
    contacts: usize,
    steps: i64,
    wall_ms: f64,
    note: String,
}

/// The run with the median steps/s, its note listing every run's figure.
fn median_run(mut runs: Vec<StepsRow>) -> Option<StepsRow> {
    if runs.len() > 1 {
        runs.sort_by(|a, b| a.steps_per_s().total_cmp(&b.steps_per_s()));
        let figures: Vec<String> = runs.iter().map(|r| thousands(r.steps_per_s())).collect();
        let middle = runs.len() / 2;
        let mut median = runs.swap_remove(middle);
        median.note = format!(
            "{}; median of {} runs: {}",
            median.note,
            figures.len(),
            figures.join(" / ")
        );
        return Some(median);
    }
    runs.pop()
}

impl StepsRow {
    fn steps_per_s(&self) -> f64 {
        self.steps as f64 / (self.wall_ms / 1000.0).max(0.001)
    }
}

struct LatencyRow {
    system: String,
    label: &'static str,
    rate: f64,
    events: usize,
    emails: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

struct HttpRow {
    system: String,
    kind: &'static str,
    requests: usize,
    messages: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    note: String,
}

impl HttpRow {
    fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64().max(0.001)
    }
}

struct WaitingRow {
    system: String,
    waiting: usize,
    parked: i64,
    used_memory_per: Option<f64>,
    key_bytes_per: Option<f64>,
    database_per: Option<f64>,
}

// ---- nurture phases ------------------------------------------------------------------------------

async fn steps_phase(mode: Mode, count: usize, concurrency: usize, deadline: Duration) -> StepsRow {
    eprintln!("[{mode:?}] steps/s: {count} contacts x {STEPS_PER_CONTACT} steps");
    let env = Env::start(mode, concurrency, true).await;
    let contacts = create_contacts(&env.engine, count).await;
    env.settle().await;
    let first_event_ms = unix_ms();
    let started = Instant::now();
    let failures = send_events(&env.engine, &contacts, EVENT).await;
    // Counted in the process first, as the peer counts its own jobs: counting rows in the
    // database every 200 ms cost PostgreSQL ~0.6 s of CPU in a 6 s run, the time it is short of.
    // Four of each contact's five history rows (the wait writes two) and both effects; the
    // database then confirms the rest.
    let metrics = &env.engine.metrics;
    while (metrics.steps_recorded(JOURNEY) < count as u64 * STEPS_PER_CONTACT as u64
        || metrics.effects_sent() < count as u64 * 2)
        && started.elapsed() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = env
        .wait_for(
            JOURNEY,
            &[
                (STEP_ROWS, count as i64 * STEPS_PER_CONTACT),
                (DONE_EFFECTS, count as i64 * 2),
            ],
            started + deadline,
        )
        .await;
    let last_ms: i64 = sqlx::query(
        "SELECT COALESCE(MAX(t), 0) FROM (SELECT MAX(at) AS t FROM step_history WHERE journey_id = $1
         UNION ALL SELECT MAX(done_at) FROM effects WHERE journey_id = $1) x",
    )
    .bind(JOURNEY)
    .fetch_one(&env.engine.store.pool)
    .await
    .map(|row| row.get(0))
    .expect("read the last step");
    let completed = env
        .count(
            "SELECT COUNT(*) FROM enrollments WHERE journey_id = $1 AND status = 'completed'",
            JOURNEY,
        )
        .await;
    let emails = nurture::channels::outbox::count_messages(&env.dir.join("outbox/mail"));
    let wall_ms = (last_ms as f64 - first_event_ms).max(1.0);
    eprintln!(
        "  {} step rows, {} effects done, {completed} completed, {emails} emails in the outbox, last {:.1} s after the first event",
        counts[0],
        counts[1],
        wall_ms / 1000.0
    );
    env.stop().await;
    let mut note = format!("{completed} completed, {emails} emails written");
    if failures > 0 {
        note.push_str(&format!(", {failures} track failures"));
    }
    StepsRow {
        system: mode.name().into(),
        contacts: count,
        steps: counts[0],
        wall_ms,
        note,
    }
}

async fn latency_phase(
    mode: Mode,
    label: &'static str,
    rate: f64,
    seconds: f64,
    concurrency: usize,
    deadline: Duration,
) -> LatencyRow {
    let events = ((rate * seconds).round() as usize).max(1);
    eprintln!("[{mode:?}] event -> first email at {rate:.0} events/s for {seconds} s ({events} events)");
    let env = Env::start(mode, concurrency, true).await;
    let contacts = create_contacts(&env.engine, events).await;
    env.settle().await;
    // Open loop: event i is due at start + i / rate and its latency counts from then, so a
    // slow `track` shows up as latency instead of slowing the sender down.
    let start = unix_ms() + 50.0;
    let clock = Instant::now() + Duration::from_millis(50);
    let mut sent_at: HashMap<i64, f64> = HashMap::with_capacity(events);
    let mut tasks = Vec::with_capacity(events);
    let mut sent = 0usize;
    while sent < events {
        let until_start = clock.saturating_duration_since(Instant::now());
        if !until_start.is_zero() {
            tokio::time::sleep(until_start).await;
        }
        let due = ((clock.elapsed().as_secs_f64() * rate) as usize + 1).min(events);
        while sent < due {
            let contact = contacts[sent];
            sent_at.insert(contact, start + sent as f64 * 1000.0 / rate);
            let engine = env.engine.clone();
            let reference = format!("l{sent}");
            tasks.push(tokio::spawn(async move {
                engine.track(contact, event(EVENT, reference)).await
            }));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut failures = 0;
    for task in tasks {
        if !matches!(task.await, Ok(Ok(_))) {
            failures += 1;
        }
    }
    let produced = unix_ms() - start;
    if failures > 0 {
        eprintln!("  {failures} track calls failed");
    }
    const EMAILS: &str = "SELECT COUNT(*) FROM effects WHERE journey_id = $1 AND kind = 'email' AND status = 'done'";
    env.wait_for(JOURNEY, &[(EMAILS, events as i64)], Instant::now() + deadline)
        .await;
    let rows = sqlx::query(
        "SELECT e.contact_id, e.done_at, n.entered_at, e.created_at FROM effects e \
         JOIN enrollments n ON n.id = e.enrollment_id \
         WHERE e.journey_id = $1 AND e.kind = 'email' AND e.status = 'done'",
    )
    .bind(JOURNEY)
    .fetch_all(&env.engine.store.pool)
    .await
    .expect("read the emails");
    let mut latencies: Vec<f64> = rows
        .iter()
        .filter_map(|row| {
            let contact: i64 = row.get(0);
            let done: i64 = row.get(1);
            sent_at.get(&contact).map(|sent| done as f64 - sent)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    // Where the time goes: due -> enrolled (ingest committed), -> email recorded (the step
    // batch's commit), -> marked done (sent and its mark committed).
    let mut stages: [Vec<f64>; 3] = Default::default();
    for row in &rows {
        let contact: i64 = row.get(0);
        let (done, entered, created): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
        if let Some(sent) = sent_at.get(&contact) {
            stages[0].push(entered as f64 - sent);
            stages[1].push((created - entered) as f64);
            stages[2].push((done - created) as f64);
        }
    }
    for (name, stage) in ["enrolled", "email recorded", "email done"]
        .iter()
        .zip(stages.iter_mut())
    {
        stage.sort_by(f64::total_cmp);
        eprintln!(
            "  {name}: +p50 {:.1} ms, +p99 {:.1} ms",
            percentile(stage, 0.5),
            percentile(stage, 0.99)
        );
    }
    // NURTURE_BENCH_LATENCY_DUMP=file: one CSV line per email (due, enrolled, recorded and done,
    // ms since the first was due), to see when the slow ones happen.
    if let Ok(path) = std::env::var("NURTURE_BENCH_LATENCY_DUMP") {
        let mut csv = String::from("due,entered,created,done\n");
        for row in &rows {
            if let Some(sent) = sent_at.get(&row.get::<i64, _>(0)) {
                let at = |column: usize| row.get::<i64, _>(column) as f64 - start;
                csv.push_str(&format!("{:.1},{:.1},{:.1},{:.1}\n", sent - start, at(2), at(3), at(1)));
            }
        }
        std::fs::write(&path, csv).expect("write the latency dump");
    }
    // When the slow ones were due: a stall at one moment, or a slow start.
    let slow: Vec<f64> = rows
        .iter()
        .filter_map(|row| {
            let sent = *sent_at.get(&row.get::<i64, _>(0))?;
            (row.get::<i64, _>(1) as f64 - sent > 100.0).then_some(sent - start)
        })
        .collect();
    if let (Some(first), Some(last)) = (
        slow.iter().copied().reduce(f64::min),
        slow.iter().copied().reduce(f64::max),
    ) {
        eprintln!(
            "  {} over 100 ms, due between +{:.2} s and +{:.2} s",
            slow.len(),
            first / 1000.0,
            last / 1000.0
        );
    }
    eprintln!(
        "  sent at {:.0}/s; {} emails; p50 {:.1} ms, p99 {:.1} ms",
        events as f64 / (produced / 1000.0),
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    env.stop().await;
    LatencyRow {
        system: mode.name().into(),
        label,
        rate,
        events,
        emails: latencies.len(),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    }
}

/// The HTTP load: identities first (not measured), then single tracks, then batches.
struct HttpLoad {
    identify: Vec<Vec<u8>>,
    /// Tracks sent after the identities and before the measured load (not measured), so the
    /// database holds enrollments and events when it is analyzed and its plans are made, as a
    /// running one does. Sent to the peer as well.
    warmup: Vec<Vec<u8>>,
    single: Vec<Vec<u8>>,
    batches: Vec<Vec<u8>>,
    /// Sent open loop at half of the rate the closed-loop load reached (new message ids).
    paced_single: Vec<Vec<u8>>,
    paced_batches: Vec<Vec<u8>>,
    batch_clients: usize,
}

impl HttpLoad {
    fn new(single: usize, batches: usize, batch_clients: usize) -> HttpLoad {
        let run = unique("r");
        let track = |i: usize| {
            json!({"type": "track", "userId": format!("ref-user-{}", i % HTTP_USERS), "event": EVENT,
                   "properties": {"ref": format!("h{i}")}, "messageId": format!("{run}-{i}")})
        };
        let identify = (0..HTTP_USERS)
            .collect::<Vec<_>>()
            .chunks(BATCH_SIZE)
            .map(|users| {
                let batch: Vec<Value> = users
                    .iter()
                    .map(|i| {
                        json!({"type": "identify", "userId": format!("ref-user-{i}"),
                        "traits": {"email": format!("ref{i}@example.com"), "first_name": format!("Ada {i}")}})
                    })
                    .collect();
                json!({ "batch": batch }).to_string().into_bytes()
            })
            .collect();
        HttpLoad {
            identify,
            warmup: (0..HTTP_WARMUP / BATCH_SIZE)
                .map(|b| {
                    let batch: Vec<Value> = (0..BATCH_SIZE)
                        .map(|i| {
                            json!({"type": "track", "userId": format!("ref-user-{}", i % HTTP_USERS), "event": EVENT,
                                   "properties": {"ref": format!("w{}", b * BATCH_SIZE + i)}, "messageId": format!("{run}-w{b}-{i}")})
                        })
                        .collect();
                    json!({ "batch": batch }).to_string().into_bytes()
                })
                .collect(),
            single: (0..single).map(|i| track(i).to_string().into_bytes()).collect(),
            batches: (0..batches)
                .map(|b| {
                    let batch: Vec<Value> = (0..BATCH_SIZE).map(|i| track(single + b * BATCH_SIZE + i)).collect();
                    json!({ "batch": batch }).to_string().into_bytes()
                })
                .collect(),
            // Half as many, at half the rate: as long a run as the closed-loop one.
            paced_single: (0..single / 2)
                .map(|i| track(single + batches * BATCH_SIZE + i).to_string().into_bytes())
                .collect(),
            paced_batches: (0..batches / 2)
                .map(|b| {
                    let first = single + batches * BATCH_SIZE + single / 2 + b * BATCH_SIZE;
                    let batch: Vec<Value> = (0..BATCH_SIZE).map(|i| track(first + i)).collect();
                    json!({ "batch": batch }).to_string().into_bytes()
                })
                .collect(),
            batch_clients,
        }
    }

    /// The contacts the tracks are for, identified first (not measured).
    async fn identify(&self, address: &str) {
        let _ = drive(address, "/v1/batch", self.identify.clone(), 2).await;
        let _ = drive(address, "/v1/batch", self.warmup.clone(), 2).await;
    }

    /// Sends the single tracks, then the batches. With `applied`, nurture's engine: after each
    /// load, waits until every stored message is applied and notes how long that took.
    async fn run(&self, system: &str, address: &str, applied: Option<&Arc<Engine>>) -> Vec<HttpRow> {
        let started = Instant::now();
        let (latencies, wall, failed) = drive(address, "/v1/track", self.single.clone(), TRACK_CLIENTS).await;
        let track_applied = match applied {
            Some(engine) => Some(all_applied(engine, started).await),
            None => None,
        };
        let mut rows = vec![http_row(
            system,
            "single `/v1/track`, 64 clients",
            &latencies,
            self.single.len(),
            wall,
            failed,
        )];
        let started = Instant::now();
        let (latencies, wall, failed) = drive(address, "/v1/batch", self.batches.clone(), self.batch_clients).await;
        let batch_applied = match applied {
            Some(engine) => Some(all_applied(engine, started).await),
            None => None,
        };
        rows.push(http_row(
            system,
            "`/v1/batch` of 200",
            &latencies,
            self.batches.len() * BATCH_SIZE,
            wall,
            failed,
        ));
        for (row, applied) in rows.iter_mut().zip([track_applied, batch_applied]) {
            if let Some(applied) = applied {
                // Answered once stored; this is when the last of them was applied.
                let note = format!(
                    "all applied {:.2} s after the first request ({} msgs/s)",
                    applied.as_secs_f64(),
                    thousands(row.messages as f64 / applied.as_secs_f64())
                );
                row.note = if row.note.is_empty() {
                    note
                } else {
                    format!("{}; {note}", row.note)
                };
            }
        }
        // Open loop at half of each load's own rate: the latency a client sees with room to spare.
        let paced = [
            (
                "single `/v1/track` at half capacity",
                "/v1/track",
                &self.paced_single,
                TRACK_CLIENTS,
                1usize,
            ),
            (
                "`/v1/batch` of 200 at half capacity",
                "/v1/batch",
                &self.paced_batches,
                self.batch_clients * 4,
                BATCH_SIZE,
            ),
        ];
        let capacities: Vec<f64> = rows.iter().map(HttpRow::messages_per_s).collect();
        for ((kind, path, bodies, clients, per_request), capacity) in paced.into_iter().zip(capacities) {
            let requests_per_s = capacity / 2.0 / per_request as f64;
            let (latencies, wall, failed) =
                drive_paced(address, path, bodies.clone(), clients, Some(requests_per_s)).await;
            if let Some(engine) = applied {
                all_applied(engine, Instant::now()).await;
            }
            let mut row = http_row(system, kind, &latencies, bodies.len() * per_request, wall, failed);
            let note = format!("paced at {} msgs/s", thousands(requests_per_s * per_request as f64));
            row.note = if row.note.is_empty() {
                note
            } else {
                format!("{}; {note}", row.note)
            };
            rows.push(row);
        }
        for row in &rows {
            eprintln!(
                "  {}: {:.0} msgs/s, p50 {:.1?}, p99 {:.1?}",
                row.kind,
                row.messages_per_s(),
                row.p50,
                row.p99
            );
        }
        rows
    }
}

/// Waits until the engine has applied every message it stored; returns the time since `started`.
async fn all_applied(engine: &Arc<Engine>, started: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if Instant::now() > deadline {
            eprintln!("  stored messages still not applied after 300 s");
            return started.elapsed();
        }
        let (held, behind) = engine.inbox_held();
        let (rows, _) = engine.inbox_counts().await.expect("count the inbox");
        if held == 0 && !behind && rows == 0 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn http_row(
    system: &str,
    kind: &'static str,
    latencies: &[Duration],
    messages: usize,
    wall: Duration,
    failed: usize,
) -> HttpRow {
    let ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    HttpRow {
        system: system.into(),
        kind,
        requests: latencies.len(),
        messages,
        wall,
        p50: Duration::from_secs_f64(percentile(&ms, 0.5) / 1000.0),
        p99: Duration::from_secs_f64(percentile(&ms, 0.99) / 1000.0),
        note: if failed > 0 {
            format!("{failed} requests not answered 200")
        } else {
            String::new()
        },
    }
}

async fn http_phase(mode: Mode, load: &HttpLoad) -> Vec<HttpRow> {
    eprintln!("[{mode:?}] events API over HTTP (no worker)");
    let env = Env::start(mode, 1, false).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let state = nurture::api::AppState {
        keys: Arc::new(nurture::api::keys_for(&env.engine)),
        engine: env.engine.clone(),
    };
    let (stop_api, stopped) = watch::channel(false);
    let server = tokio::spawn(nurture::api::serve(listener, nurture::api::router(state), async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    load.identify(&address).await;
    all_applied(&env.engine, Instant::now()).await;
    env.settle().await;
    all_applied(&env.engine, Instant::now()).await;
    let mut rows = load.run(mode.name(), &address, Some(&env.engine)).await;
    let enrollments = env
        .count("SELECT COUNT(*) FROM enrollments WHERE journey_id = $1", JOURNEY)
        .await;
    eprintln!("  {enrollments} enrollments started");
    let expected = (load.warmup.len() * BATCH_SIZE
        + load.single.len()
        + load.batches.len() * BATCH_SIZE
        + load.paced_single.len()
        + load.paced_batches.len() * BATCH_SIZE) as i64;
    if enrollments != expected {
        for row in &mut rows {
            let started = format!("{enrollments} of {expected} enrollments started");
            row.note = if row.note.is_empty() {
                started
            } else {
                format!("{}; {started}", row.note)
            };
        }
    }
    let _ = stop_api.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    env.stop().await;
    rows
}

/// A keep-alive HTTP/1.1 connection.
struct Connection {
    stream: BufReader<tokio::net::TcpStream>,
    host: String,
}

impl Connection {
    async fn open(address: &str) -> std::io::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            host: address.into(),
        })
    }

    /// POSTs `body`; returns the status once the whole response is read.
    async fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {AUTHORIZATION}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut rest = vec![0; length];
            self.stream.read_exact(&mut rest).await?;
        }
        Ok(status)
    }
}

/// Sends `bodies` from `clients` keep-alive connections; returns the latencies (sorted), the
/// wall time and how many requests were not answered 200.
async fn drive(
    address: &str,
    path: &'static str,
    bodies: Vec<Vec<u8>>,
    clients: usize,
) -> (Vec<Duration>, Duration, usize) {
    drive_paced(address, path, bodies, clients, None).await
}

/// Sends `bodies` over `clients` keep-alive connections: as fast as they answer, or with
/// `per_second`, open loop: request `i` is due at `i / per_second` after the start and its
/// latency counts from then, so a server falling behind shows up as latency instead of
/// slowing the sender.
async fn drive_paced(
    address: &str,
    path: &'static str,
    bodies: Vec<Vec<u8>>,
    clients: usize,
    per_second: Option<f64>,
) -> (Vec<Duration>, Duration, usize) {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now() + Duration::from_millis(if per_second.is_some() { 20 } else { 0 });
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (bodies, next, address) = (bodies.clone(), next.clone(), address.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            let mut connection = Connection::open(&address).await.expect("connect");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let sent = match per_second {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(i as f64 / rate.max(0.001));
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                match connection.post(path, body).await {
                    Ok(200) => {}
                    Ok(_) => failed += 1,
                    Err(_) => {
                        failed += 1;
                        connection = Connection::open(&address).await.expect("reconnect");
                    }
                }
                latencies.push(sent.elapsed());
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await.expect("a client");
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    (latencies, started.elapsed(), failed)
}

async fn waiting_phase(mode: Mode, count: usize, concurrency: usize, deadline: Duration) -> WaitingRow {
    eprintln!("[{mode:?}] bytes per waiting enrollment: {count} enrollments in a 1 h wait");
    let env = Env::start(mode, concurrency, true).await;
    let contacts = create_contacts(&env.engine, count).await;
    env.settle().await;
    let redis = redis_url();
    let namespace = env.production.as_ref().map(|p| p.namespace.clone());
    let used_before = redis_used_memory(&redis).await;
    let keys_before = match &namespace {
        Some(namespace) => redis_key_bytes(&redis, namespace).await,
        None => 0,
    };
    let database_before = env.database_bytes().await;
    let started = Instant::now();
    send_events(&env.engine, &contacts, HOLD_EVENT).await;
    const PARKED: &str = "SELECT COUNT(*) FROM step_history WHERE journey_id = $1 AND outcome = 'waiting'";
    const EMAILS: &str = "SELECT COUNT(*) FROM effects WHERE journey_id = $1 AND status = 'done'";
    let counts = env
        .wait_for(
            HOLD_JOURNEY,
            &[(PARKED, count as i64), (EMAILS, count as i64)],
            started + deadline,
        )
        .await;
    // The timer job is pushed after the move commits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per = |delta: i64| Some(delta as f64 / count as f64);
    let (used_memory_per, key_bytes_per) = match &namespace {
        Some(namespace) => (
            per(redis_used_memory(&redis).await - used_before),
            per(redis_key_bytes(&redis, namespace).await - keys_before),
        ),
        None => (None, None),
    };
    let database_per = per(env.database_bytes().await - database_before);
    eprintln!(
        "  {} parked; per enrollment: Redis used_memory {used_memory_per:?}, keys {key_bytes_per:?}, database {database_per:?}",
        counts[0]
    );
    env.stop().await;
    WaitingRow {
        system: mode.name().into(),
        waiting: count,
        parked: counts[0],
        used_memory_per,
        key_bytes_per,
        database_per,
    }
}

// ---- the BullMQ peer ---------------------------------------------------------------------------

struct Peer {
    dir: PathBuf,
    name: String,
}

impl Peer {
    /// The peer, if `node` runs and its packages are installed (or `npm ci` installs them).
    async fn find() -> Option<Peer> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/bullmq");
        if std::env::var("NURTURE_BENCH_PEER").is_ok_and(|v| v == "off" || v == "0") {
            eprintln!("BullMQ peer: off (NURTURE_BENCH_PEER)");
            return None;
        }
        let node = tokio::process::Command::new("node").arg("--version").output().await;
        let Ok(node) = node.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) else {
            eprintln!("BullMQ peer: skipped, `node` is not on PATH");
            return None;
        };
        if !dir.join("node_modules/bullmq").is_dir() {
            eprintln!("BullMQ peer: running `npm ci` in {}", dir.display());
            let status = tokio::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .await;
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("BullMQ peer: skipped, `npm ci` failed");
                return None;
            }
        }
        let version = std::fs::read_to_string(dir.join("node_modules/bullmq/package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(String::from))
            .unwrap_or_else(|| "?".into());
        Some(Peer {
            dir,
            name: format!("BullMQ {version} (Node {node})"),
        })
    }

    fn command(&self, mode: &str, args: &[String]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("node");
        command
            .arg(self.dir.join("peer.js"))
            .arg(mode)
            .args(args)
            .arg("--prefix")
            .arg(unique("nbench-bullmq"))
            .env("REDIS_URL", redis_url())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        command
    }

    /// Runs a mode to the end; its last stdout line is the result.
    async fn run(&self, mode: &str, args: &[String]) -> Option<Value> {
        eprintln!("[BullMQ] {mode} {}", args.join(" "));
        let output = self
            .command(mode, args)
            .stdout(std::process::Stdio::piped())
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let result = text
            .lines()
            .last()
            .and_then(|line| serde_json::from_str::<Value>(line).ok());
        if !output.status.success() || result.is_none() {
            eprintln!("  the peer failed ({}): {text}", output.status);
            return None;
        }
        eprintln!("  {}", text.trim());
        result
    }

    async fn steps(&self, contacts: usize, concurrency: usize) -> Option<StepsRow> {
        let result = self
            .run(
                "steps",
                &[
                    "--contacts".into(),
                    contacts.to_string(),
                    "--concurrency".into(),
                    concurrency.to_string(),
                    // The journey's `wait: 1s`: the same journey on both sides.
                    "--delay-ms".into(),
                    WAIT_MS.to_string(),
                ],
            )
            .await?;
        Some(StepsRow {
            system: self.name.clone(),
            contacts,
            steps: result["steps"].as_i64()?,
            wall_ms: result["wall_ms"].as_f64()?,
            note: format!("concurrency {concurrency}, delay {WAIT_MS} ms"),
        })
    }

    async fn latency(&self, label: &'static str, rate: f64, seconds: f64, concurrency: usize) -> Option<LatencyRow> {
        let result = self
            .run(
                "latency",
                &[
                    "--rate".into(),
                    format!("{rate:.2}"),
                    "--seconds".into(),
                    seconds.to_string(),
                    "--concurrency".into(),
                    concurrency.to_string(),
                ],
            )
            .await?;
        Some(LatencyRow {
            system: self.name.clone(),
            label,
            rate,
            events: result["events"].as_u64()? as usize,
            emails: result["emails"].as_u64()? as usize,
            p50_ms: result["p50_ms"].as_f64()?,
            p99_ms: result["p99_ms"].as_f64()?,
            max_ms: result["max_ms"].as_f64()?,
        })
    }

    async fn http(&self, load: &HttpLoad) -> Option<Vec<HttpRow>> {
        eprintln!("[BullMQ] http (HTTP -> queue.add, no worker)");
        let mut child = self
            .command("http", &["--port".into(), "0".into()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut lines = BufReader::new(child.stdout.take()?).lines();
        let ready: Value = serde_json::from_str(&lines.next_line().await.ok()??).ok()?;
        let address = format!("127.0.0.1:{}", ready["port"].as_u64()?);
        load.identify(&address).await;
        let rows = load.run(&self.name, &address, None).await;
        if let Some(pid) = child.id() {
            // SIGTERM: the peer closes its queue and removes its keys.
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
        if let Ok(Some(line)) = lines.next_line().await {
            eprintln!("  {line}");
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        Some(rows)
    }

    async fn waiting(&self, count: usize) -> Option<WaitingRow> {
        let result = self
            .run(
                "waiting",
                &[
                    "--count".into(),
                    count.to_string(),
                    "--delay-ms".into(),
                    "3600000".into(),
                ],
            )
            .await?;
        Some(WaitingRow {
            system: self.name.clone(),
            waiting: count,
            parked: result["delayed"].as_i64()?,
            used_memory_per: result["bytes_per_job"].as_f64(),
            key_bytes_per: result["key_bytes_per_job"].as_f64(),
            database_per: None,
        })
    }
}

// ---- output ----------------------------------------------------------------------------------

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::from(sign);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(nurture: f64, peer: Option<f64>) -> String {
    match peer {
        Some(peer) if peer > 0.0 => format!("{:.3}", nurture / peer),
        _ => "–".into(),
    }
}

fn bytes(value: Option<f64>) -> String {
    value.map_or("–".into(), thousands)
}

fn today() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn print_steps(rows: &[StepsRow], peer: Option<&StepsRow>, date: &str) {
    println!();
    println!("Reference journey steps/s (4 steps per contact; ratio = nurture / BullMQ)");
    println!("| date | system | contacts | steps | wall | steps/s | ratio | notes |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows.iter().chain(peer) {
        println!(
            "| {date} | {} | {} | {} | {:.1} s | {} | {} | {} |",
            row.system,
            thousands(row.contacts as f64),
            thousands(row.steps as f64),
            row.wall_ms / 1000.0,
            thousands(row.steps_per_s()),
            ratio(row.steps_per_s(), peer.map(StepsRow::steps_per_s)),
            row.note
        );
    }
}

fn print_latency(rows: &[LatencyRow], peer: &[LatencyRow], date: &str) {
    println!();
    println!("Event -> first email, events sent open loop (ratio = nurture p99 / BullMQ p99 at the same kind of rate)");
    println!("| date | system | rate | events | emails | p50 | p99 | max | p99 ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows.iter().chain(peer) {
        let other = peer
            .iter()
            .find(|p| p.label == row.label && (p.label == "half" || p.rate == row.rate))
            .map(|p| p.p99_ms);
        println!(
            "| {date} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            row.system,
            if row.label == "half" {
                format!("half of capacity: {} events/s", thousands(row.rate))
            } else {
                format!("{} events/s", thousands(row.rate))
            },
            thousands(row.events as f64),
            thousands(row.emails as f64),
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            ratio(row.p99_ms, other)
        );
    }
}

fn print_http(rows: &[HttpRow], peer: &[HttpRow], date: &str) {
    println!();
    println!(
        "Events API over HTTP, keep-alive, no worker (peer: HTTP -> queue.add; ratio = nurture msgs/s / BullMQ msgs/s)"
    );
    println!("| date | system | load | requests | messages | msgs/s | p50 | p99 | ratio | notes |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows.iter().chain(peer) {
        let other = peer.iter().find(|p| p.kind == row.kind).map(HttpRow::messages_per_s);
        println!(
            "| {date} | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {} | {} |",
            row.system,
            row.kind,
            thousands(row.requests as f64),
            thousands(row.messages as f64),
            thousands(row.messages_per_s()),
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            ratio(row.messages_per_s(), other),
            row.note
        );
    }
}

fn print_waiting(rows: &[WaitingRow], peer: Option<&WaitingRow>, date: &str) {
    println!();
    println!(
        "Bytes per waiting enrollment (1 h wait; Redis used_memory delta, and MEMORY USAGE of the system's own keys; ratio = nurture / BullMQ, used_memory)"
    );
    println!("| date | system | waiting | parked | Redis used_memory | Redis keys | database | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows.iter().chain(peer) {
        println!(
            "| {date} | {} | {} | {} | {} | {} | {} | {} |",
            row.system,
            thousands(row.waiting as f64),
            thousands(row.parked as f64),
            bytes(row.used_memory_per),
            bytes(row.key_bytes_per),
            bytes(row.database_per),
            match (row.used_memory_per, peer.and_then(|p| p.used_memory_per)) {
                (Some(n), p) => ratio(n, p),
                _ => "–".into(),
            }
        );
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    if std::env::var_os("NURTURE_BENCH_LOG").is_some() {
        nurture::cli::init_tracing();
    }
    let modes: Vec<Mode> = std::env::var("NURTURE_BENCH_MODES")
        .unwrap_or_else(|_| "embedded,production".into())
        .split(',')
        .filter_map(|m| match m.trim() {
            "embedded" => Some(Mode::Embedded),
            "production" => Some(Mode::Production),
            "" => None,
            other => panic!("unknown mode `{other}` in NURTURE_BENCH_MODES (embedded, production)"),
        })
        .collect();
    let phases = std::env::var("NURTURE_BENCH_PHASES").unwrap_or_else(|_| "steps,latency,http,waiting".into());
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);
    let contacts_for = |mode: Option<Mode>| {
        env_usize(
            "NURTURE_BENCH_CONTACTS",
            if mode == Some(Mode::Embedded) { 10_000 } else { 20_000 },
        )
    };
    let concurrency = env_usize(
        "NURTURE_BENCH_CONCURRENCY",
        nurture::config::Config::default().concurrency,
    );
    let deadline = Duration::from_secs(env_usize("NURTURE_BENCH_DEADLINE_SECONDS", 900) as u64);
    let seconds = env_usize("NURTURE_BENCH_LATENCY_SECONDS", 10) as f64;
    let rates: Vec<String> = std::env::var("NURTURE_BENCH_RATES")
        .unwrap_or_else(|_| "500,half".into())
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let waiting = env_usize("NURTURE_BENCH_WAITING", 10_000);
    let load = HttpLoad::new(
        env_usize("NURTURE_BENCH_SINGLE", 20_000),
        env_usize("NURTURE_BENCH_BATCHES", 100),
        env_usize("NURTURE_BENCH_BATCH_CLIENTS", 4),
    );
    let peer = Peer::find().await;

    // The rate for `half`: half the events/s a system sustained in the steps phase (4 steps
    // per event), or NURTURE_BENCH_HALF_RATE when the steps phase is not run.
    let half_rate = |steps: Option<&StepsRow>| {
        steps
            .map(|s| s.steps_per_s() / STEPS_PER_CONTACT as f64 / 2.0)
            .unwrap_or_else(|| env_usize("NURTURE_BENCH_HALF_RATE", 100) as f64)
    };
    let rates_for = |steps: Option<&StepsRow>| -> Vec<(&'static str, f64)> {
        rates
            .iter()
            .map(|r| match r.as_str() {
                "half" => ("half", half_rate(steps)),
                other => (
                    "fixed",
                    other
                        .parse()
                        .unwrap_or_else(|_| panic!("NURTURE_BENCH_RATES: `{other}` is not a rate or `half`")),
                ),
            })
            .collect()
    };

    // Steps/s on a shared 2-core machine moved 1.8k-5.1k between runs of the same code: with
    // NURTURE_BENCH_REPEAT=N each system's steps phase runs N times and the median is kept.
    let repeat = env_usize("NURTURE_BENCH_REPEAT", 1).max(1);
    let (mut steps, mut latencies, mut https, mut waits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &mode in &modes {
        let mut measured = None;
        if phase("steps") {
            let mut runs = Vec::with_capacity(repeat);
            for _ in 0..repeat {
                runs.push(steps_phase(mode, contacts_for(Some(mode)), concurrency, deadline).await);
            }
            steps.extend(median_run(runs));
            measured = steps.last();
        }
        if phase("latency") {
            for (label, rate) in rates_for(measured) {
                latencies.push(latency_phase(mode, label, rate, seconds, concurrency, deadline).await);
            }
        }
        if phase("http") {
            https.extend(http_phase(mode, &load).await);
        }
        if phase("waiting") {
            waits.push(waiting_phase(mode, waiting, concurrency, deadline).await);
        }
    }
    let (mut peer_steps, mut peer_latencies, mut peer_https, mut peer_wait) = (None, Vec::new(), Vec::new(), None);
    if let Some(peer) = &peer {
        if phase("steps") {
            let mut runs = Vec::with_capacity(repeat);
            for _ in 0..repeat {
                runs.extend(peer.steps(contacts_for(None), concurrency).await);
            }
            peer_steps = median_run(runs);
        }
        if phase("latency") {
            for (label, rate) in rates_for(peer_steps.as_ref()) {
                peer_latencies.extend(peer.latency(label, rate, seconds, concurrency).await);
            }
        }
        if phase("http") {
            peer_https = peer.http(&load).await.unwrap_or_default();
        }
        if phase("waiting") {
            peer_wait = peer.waiting(waiting).await;
        }
    }

    let date = today();
    println!();
    println!(
        "Reference journey, nurture side by side with {} on the same Redis; worker concurrency {concurrency}",
        peer.as_ref()
            .map_or("no peer (node or its packages missing)", |p| p.name.as_str())
    );
    if phase("steps") {
        print_steps(&steps, peer_steps.as_ref(), &date);
    }
    if phase("latency") {
        print_latency(&latencies, &peer_latencies, &date);
    }
    if phase("http") {
        print_http(&https, &peer_https, &date);
    }
    if phase("waiting") {
        print_waiting(&waits, peer_wait.as_ref(), &date);
    }
}
