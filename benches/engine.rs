//! The durable engine under load, in both modes: embedded (SQLite state and SQLite queue) and
//! production (PostgreSQL state and Redis queue). Run: `cargo bench --bench engine`.
//!
//! 1. Timer lateness: 10,000 contacts each start `bench-wait` (wait 2 s, then tag) at once;
//!    lateness is when the wait woke minus when it was due, from `step_history`.
//! 2. Durable steps/s: contacts start `bench-steps` (four instant steps, no effects); every
//!    move is a transaction that writes one `step_history` row.
//! 3. Waits due together (`NURTURE_BENCH_BURST`): every enrollment waits until the same time of
//!    day; how late the timer fired them, and how late the step after the wait committed.
//!
//! Each phase gets a fresh environment (SQLite files or PostgreSQL database and Redis
//! namespace), a worker in this process, and the real clock. Environment variables:
//! `NURTURE_BENCH_MODES` (`embedded,production`), `NURTURE_BENCH_TIMER_CONTACTS` (10000),
//! `NURTURE_BENCH_STEPS_CONTACTS` (5000), `NURTURE_BENCH_BURST` (waits due in the same
//! millisecond, e.g. 100000; 0, the default, skips it) with `NURTURE_BENCH_BURST_RESTART` (1: the
//! engine restarts before they are due; 0: it does not), `NURTURE_BENCH_CONCURRENCY` (worker, the default 512),
//! `NURTURE_BENCH_LOG` (set: the engine's logs on stderr, filtered by `RUST_LOG`), and the
//! test suite's `NURTURE_TEST_DATABASE_URL` and `NURTURE_TEST_REDIS_URL`.

use futures::{StreamExt, stream};
use nurture::config::Config;
use nurture::engine::SystemClock;
use nurture::engine::runner::Engine;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use sqlx::Row;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const TIMER_JOURNEY: &str = "bench-wait";
const TIMER_EVENT: &str = "Trial Started";
const BURST_JOURNEY: &str = "bench-burst";
const BURST_EVENT: &str = "Burst Started";
/// The wait in `bench-wait.yaml`.
const WAIT_MS: i64 = 2000;
const STEPS_JOURNEY: &str = "bench-steps";
const STEPS_EVENT: &str = "Steps Started";
/// Instant steps in `bench-steps.yaml`, each one `step_history` row.
const STEPS_PER_ENROLLMENT: i64 = 4;
/// Callers of `create_contact` and `track` at once, like concurrent API requests.
const CLIENTS: usize = 32;
/// How long the timer phase may take from its first event.
const TIMER_DEADLINE: Duration = Duration::from_secs(150);
/// How long the steps phase may take from its first event.
const STEPS_DEADLINE: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Embedded,
    Production,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded (SQLite + apalis-sqlite)",
            Mode::Production => "production (PostgreSQL + Redis)",
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

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What to remove when a phase is over.
struct Production {
    admin: String,
    database: String,
    redis: String,
    namespace: String,
}

/// One engine with its worker, on fresh storage.
struct Env {
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
    dir: PathBuf,
    production: Option<Production>,
    config: Config,
}

impl Env {
    async fn start(mode: Mode, concurrency: usize) -> Env {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/fixtures");
        Env::start_in(mode, concurrency, root.join("journeys")).await
    }

    /// An engine and worker on fresh storage, with the journeys of `journeys`.
    async fn start_in(mode: Mode, concurrency: usize, journeys: PathBuf) -> Env {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/fixtures");
        let dir = std::env::temp_dir().join(unique("nurture-bench"));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let namespace = unique("nbench");
        let mut config = Config {
            journeys,
            templates: root.join("templates"),
            sales: root.join("sales.yaml"),
            scoring: root.join("scoring.yaml"),
            sqlite_path: dir.join("nurture.db"),
            outbox: dir.join("outbox"),
            namespace: namespace.clone(),
            concurrency,
            ..Config::default()
        };
        let mut production = None;
        if mode == Mode::Production {
            let admin = std::env::var("NURTURE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let redis = std::env::var("NURTURE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let database = unique("nurture_bench");
            admin_execute(&admin, &format!("CREATE DATABASE {database}")).await;
            let base = admin.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap();
            config.database_url = Some(format!("{base}/{database}"));
            config.redis_url = Some(redis.clone());
            production = Some(Production {
                admin,
                database,
                redis,
                namespace,
            });
        }
        Env::run(config, dir, production).await
    }

    /// Builds the engine on `config`'s storage and starts its worker.
    async fn run(config: Config, dir: PathBuf, production: Option<Production>) -> Env {
        let engine = nurture::app::build(config.clone(), Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("the engine starts: {e:#}"));
        let (stop, mut stopped) = watch::channel(false);
        let worker_engine = engine.clone();
        let worker = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            nurture::app::run_worker(worker_engine, unique("bench-worker"), shutdown)
                .await
                .expect("the worker runs");
        });
        Env {
            engine,
            stop,
            worker,
            dir,
            production,
            config,
        }
    }

    /// Stops the worker and the engine, and starts new ones on the same storage: a restart.
    async fn restart(self) -> Env {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.worker).await;
        self.engine.store.pool.close().await;
        drop(self.engine);
        Env::run(self.config, self.dir, self.production).await
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(30), self.worker)
            .await
            .is_err()
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
            if let Err(error) = delete_redis_keys(&production.redis, &production.namespace).await {
                eprintln!(
                    "  (could not remove the Redis keys of {}: {error})",
                    production.namespace
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn count(&self, sql: &'static str, journey: &str) -> i64 {
        sqlx::query(sql)
            .bind(journey)
            .fetch_one(&self.engine.store.pool)
            .await
            .map(|row| row.get::<i64, _>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
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

async fn delete_redis_keys(url: &str, namespace: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{namespace}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Creates `count` contacts, `CLIENTS` at a time.
async fn create_contacts(engine: &Arc<Engine>, count: usize) -> (Vec<i64>, Duration) {
    let started = Instant::now();
    let mut ids: Vec<i64> = stream::iter(0..count)
        .map(|i| {
            let engine = engine.clone();
            async move {
                engine
                    .create_contact(&NewContact {
                        email: Some(format!("bench{i}@example.com")),
                        ..NewContact::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("create a contact: {e}"))
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    ids.sort_unstable();
    (ids, started.elapsed())
}

/// Sends every contact the event, `CLIENTS` at a time. Returns the time and the failures.
async fn send_events(engine: &Arc<Engine>, contacts: &[i64], name: &str) -> (Duration, usize) {
    let started = Instant::now();
    let failures: usize = stream::iter(contacts.iter().copied())
        .map(|contact| {
            let engine = engine.clone();
            let event = EventFacts {
                name: name.into(),
                properties: Default::default(),
                timestamp: None,
            };
            async move {
                match engine.track(contact, event).await {
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
        .buffer_unordered(CLIENTS)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    (started.elapsed(), failures)
}

/// Polls `sql` (a count for the journey) until it reaches `target` or `deadline` passes.
async fn wait_for_count(env: &Env, sql: &'static str, journey: &str, target: i64, deadline: Instant) -> i64 {
    let mut last_report = Instant::now();
    loop {
        let count = env.count(sql, journey).await;
        if count >= target || Instant::now() >= deadline {
            return count;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("  ... {count} of {target}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value at `fraction` of sorted `values` (nearest rank).
fn percentile(sorted: &[i64], fraction: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct TimerResult {
    mode: Mode,
    enrollments: usize,
    completed: usize,
    track_failures: usize,
    create: Duration,
    track: Duration,
    /// Woke minus (entered the wait + 2 s), sorted, ms.
    lateness: Vec<i64>,
    /// Woke minus the whole second the job was scheduled for, sorted, ms.
    past_second: Vec<i64>,
    /// First event to the last wake-up.
    wall: Duration,
}

async fn timer_phase(mode: Mode, count: usize, concurrency: usize) -> TimerResult {
    eprintln!("[{mode:?}] timer lateness: {count} enrollments waiting 2 s");
    let env = Env::start(mode, concurrency).await;
    let (contacts, create) = create_contacts(&env.engine, count).await;
    eprintln!("  {count} contacts created in {create:.2?}");
    let first_event_ms = unix_ms();
    let started = Instant::now();
    let (track, track_failures) = send_events(&env.engine, &contacts, TIMER_EVENT).await;
    eprintln!(
        "  {count} events tracked in {track:.2?} ({:.0}/s)",
        count as f64 / track.as_secs_f64()
    );
    let completed = wait_for_count(
        &env,
        "SELECT COUNT(*) FROM step_history WHERE journey_id = $1 AND outcome = 'waited'",
        TIMER_JOURNEY,
        count as i64,
        started + TIMER_DEADLINE,
    )
    .await;
    let rows = sqlx::query(
        "SELECT w.at, k.at FROM step_history w JOIN step_history k ON k.enrollment_id = w.enrollment_id AND k.step = w.step AND k.outcome = 'waited'
         WHERE w.journey_id = $1 AND w.outcome = 'waiting'",
    )
    .bind(TIMER_JOURNEY)
    .fetch_all(&env.engine.store.pool)
    .await
    .expect("read the waits");
    let mut lateness = Vec::with_capacity(rows.len());
    let mut past_second = Vec::with_capacity(rows.len());
    let mut last_woke = first_event_ms;
    for row in &rows {
        let entered: i64 = row.get(0);
        let woke: i64 = row.get(1);
        let due = entered + WAIT_MS;
        lateness.push(woke - due);
        // Timers fire to the millisecond now: past the due time is the lateness itself.
        past_second.push(woke - due);
        last_woke = last_woke.max(woke);
    }
    lateness.sort_unstable();
    past_second.sort_unstable();
    let wall = Duration::from_millis((last_woke - first_event_ms).max(0) as u64);
    eprintln!("  {completed} of {count} woke; last one {wall:.2?} after the first event");
    env.stop().await;
    TimerResult {
        mode,
        enrollments: count,
        completed: completed as usize,
        track_failures,
        create,
        track,
        lateness,
        past_second,
        wall,
    }
}

struct BurstResult {
    mode: Mode,
    enrollments: usize,
    woke: usize,
    restarted: bool,
    /// Fired (pushed to the queue) minus due, ms: the timer's own lateness.
    fired: (u64, Vec<u64>),
    /// The step done (`waited` row) minus due, sorted, ms: the timer plus the drain.
    woke_late: Vec<i64>,
}

/// Waits due in the same millisecond: every enrollment of a generated journey waits until the
/// same time of day (`wait_until`), far enough ahead for all of them to park; with `restart`,
/// the engine is stopped and started again before that time, so the waits come from the
/// database at start.
async fn burst_phase(mode: Mode, count: usize, concurrency: usize, restart: bool) -> BurstResult {
    use chrono::Timelike;
    use nurture::engine::Clock;
    // Parking runs at a few thousand a second; leave room, then round up to a whole minute.
    let lead = chrono::Duration::seconds(40 + (count / 1_500) as i64);
    let ahead = SystemClock.now() + lead;
    let due = (ahead + chrono::Duration::seconds(60 - ahead.second() as i64))
        .with_nanosecond(0)
        .expect("a whole second");
    let due_ms = due.timestamp_millis();
    eprintln!(
        "[{mode:?}] {count} waits due at the same moment ({} UTC){}",
        due.format("%H:%M:%S"),
        if restart { ", after a restart" } else { "" }
    );
    let journeys = std::env::temp_dir().join(unique("nurture-burst-journeys"));
    std::fs::create_dir_all(&journeys).expect("a journeys directory");
    std::fs::write(
        journeys.join("bench-burst.yaml"),
        format!(
            "id: {BURST_JOURNEY}\ntrigger: {{event: {BURST_EVENT}}}\nre_entry: always\nsettings: {{timezone: UTC}}\nsteps:\n  - id: hold\n    wait_until: \"{}\"\n  - id: done\n    tag: burst\n",
            due.format("%H:%M")
        ),
    )
    .expect("write the journey");
    let mut env = Env::start_in(mode, concurrency, journeys.clone()).await;
    let (contacts, create) = create_contacts(&env.engine, count).await;
    let (track, failures) = send_events(&env.engine, &contacts, BURST_EVENT).await;
    eprintln!("  {count} contacts created in {create:.1?}, events tracked in {track:.1?} ({failures} failures)");
    let parked = wait_for_count(
        &env,
        "SELECT COUNT(*) FROM enrollments WHERE journey_id = $1 AND status = 'waiting'",
        BURST_JOURNEY,
        count as i64,
        Instant::now() + Duration::from_secs(120),
    )
    .await;
    let left = due_ms - unix_ms();
    eprintln!("  {parked} parked, {:.1} s before they are due", left as f64 / 1000.0);
    if left < 5_000 {
        eprintln!("  (parking took longer than the lead: the waits were due before all had parked)");
    }
    if restart {
        env = env.restart().await;
        eprintln!(
            "  restarted, {:.1} s before they are due",
            (due_ms - unix_ms()) as f64 / 1000.0
        );
    }
    env.engine.queue.timers.reset_lateness();
    let woke = wait_for_count(
        &env,
        "SELECT COUNT(*) FROM step_history WHERE journey_id = $1 AND outcome = 'waited'",
        BURST_JOURNEY,
        count as i64,
        Instant::now() + Duration::from_millis((due_ms - unix_ms()).max(0) as u64) + Duration::from_secs(300),
    )
    .await;
    let fired = env.engine.queue.timers.lateness(&[0.5, 0.99, 1.0]);
    let rows = sqlx::query("SELECT at FROM step_history WHERE journey_id = $1 AND outcome = 'waited'")
        .bind(BURST_JOURNEY)
        .fetch_all(&env.engine.store.pool)
        .await
        .expect("read the wake-ups");
    let mut woke_late: Vec<i64> = rows.iter().map(|row| row.get::<i64, _>(0) - due_ms).collect();
    woke_late.sort_unstable();
    eprintln!(
        "  {woke} woke; timer fired p50 {} ms, p99 {} ms, max {} ms ({} counted); steps done p50 {} ms, p99 {} ms, last {} ms after due",
        fired.1[0],
        fired.1[1],
        fired.1[2],
        fired.0,
        percentile(&woke_late, 0.5),
        percentile(&woke_late, 0.99),
        woke_late.last().copied().unwrap_or(0)
    );
    env.stop().await;
    let _ = std::fs::remove_dir_all(&journeys);
    BurstResult {
        mode,
        enrollments: count,
        woke: woke as usize,
        restarted: restart,
        fired,
        woke_late,
    }
}

struct StepsResult {
    mode: Mode,
    enrollments: usize,
    completed: i64,
    track_failures: usize,
    track: Duration,
    rows: i64,
    /// First event to the last step_history row.
    wall: Duration,
}

async fn steps_phase(mode: Mode, count: usize, concurrency: usize) -> StepsResult {
    eprintln!("[{mode:?}] durable steps/s: {count} enrollments x {STEPS_PER_ENROLLMENT} instant steps");
    let env = Env::start(mode, concurrency).await;
    let (contacts, create) = create_contacts(&env.engine, count).await;
    eprintln!("  {count} contacts created in {create:.2?}");
    let first_event_ms = unix_ms();
    let started = Instant::now();
    let (track, track_failures) = send_events(&env.engine, &contacts, STEPS_EVENT).await;
    eprintln!(
        "  {count} events tracked in {track:.2?} ({:.0}/s)",
        count as f64 / track.as_secs_f64()
    );
    let rows = wait_for_count(
        &env,
        "SELECT COUNT(*) FROM step_history WHERE journey_id = $1",
        STEPS_JOURNEY,
        count as i64 * STEPS_PER_ENROLLMENT,
        started + STEPS_DEADLINE,
    )
    .await;
    let last_ms: i64 = sqlx::query("SELECT COALESCE(MAX(at), 0) FROM step_history WHERE journey_id = $1")
        .bind(STEPS_JOURNEY)
        .fetch_one(&env.engine.store.pool)
        .await
        .map(|row| row.get(0))
        .expect("read the last step");
    let completed = env
        .count(
            "SELECT COUNT(*) FROM enrollments WHERE journey_id = $1 AND status = 'completed'",
            STEPS_JOURNEY,
        )
        .await;
    let wall = Duration::from_millis((last_ms - first_event_ms).max(1) as u64);
    eprintln!("  {rows} step rows, {completed} enrollments completed, last {wall:.2?} after the first event");
    env.stop().await;
    StepsResult {
        mode,
        enrollments: count,
        completed,
        track_failures,
        track,
        rows,
        wall,
    }
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_bursts(bursts: &[BurstResult]) {
    if bursts.is_empty() {
        return;
    }
    println!();
    println!(
        "Waits due in the same millisecond (fired = pushed to the queue - due; done = the step after the wait committed - due)"
    );
    println!("| mode | waits | restarted before due | woke | fired p50 / p99 / max | done p50 / p99 / last |");
    println!("|---|---|---|---|---|---|");
    for b in bursts {
        println!(
            "| {} | {} | {} | {} | {} / {} / {} ms | {} / {} / {} ms |",
            b.mode.name(),
            thousands(b.enrollments as f64),
            if b.restarted { "yes" } else { "no" },
            thousands(b.woke as f64),
            b.fired.1[0],
            b.fired.1[1],
            b.fired.1[2],
            percentile(&b.woke_late, 0.5),
            percentile(&b.woke_late, 0.99),
            b.woke_late.last().copied().unwrap_or(0),
        );
    }
}

fn print_summary(timers: &[TimerResult], steps: &[StepsResult], concurrency: usize) {
    println!();
    println!("Engine benchmark, worker concurrency {concurrency}, {CLIENTS} concurrent callers");
    println!();
    println!("Timer lateness (enrollments waiting 2 s; lateness = woke - (entered wait + 2 s))");
    println!(
        "| mode | enrollments | woke | p50 | p99 | max | p50 / p99 past the due second | wall | contacts/s | track events/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for t in timers {
        println!(
            "| {} | {} | {}{} | {} ms | {} ms | {} ms | {} / {} ms | {:.1} s | {} | {} |",
            t.mode.name(),
            thousands(t.enrollments as f64),
            thousands(t.completed as f64),
            if t.track_failures > 0 {
                format!(" ({} track failures)", t.track_failures)
            } else {
                String::new()
            },
            percentile(&t.lateness, 0.50),
            percentile(&t.lateness, 0.99),
            t.lateness.last().copied().unwrap_or(0),
            percentile(&t.past_second, 0.50),
            percentile(&t.past_second, 0.99),
            t.wall.as_secs_f64(),
            thousands(t.enrollments as f64 / t.create.as_secs_f64()),
            thousands(t.enrollments as f64 / t.track.as_secs_f64()),
        );
    }
    println!();
    println!("Durable steps/s ({STEPS_PER_ENROLLMENT} instant steps per enrollment, no effects)");
    println!("| mode | enrollments | completed | step rows | wall | steps/s | track events/s |");
    println!("|---|---|---|---|---|---|---|");
    for s in steps {
        println!(
            "| {} | {} | {}{} | {} | {:.1} s | {} | {} |",
            s.mode.name(),
            thousands(s.enrollments as f64),
            thousands(s.completed as f64),
            if s.track_failures > 0 {
                format!(" ({} track failures)", s.track_failures)
            } else {
                String::new()
            },
            thousands(s.rows as f64),
            s.wall.as_secs_f64(),
            thousands(s.rows as f64 / s.wall.as_secs_f64()),
            thousands(s.enrollments as f64 / s.track.as_secs_f64()),
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
    let timer_contacts = env_usize("NURTURE_BENCH_TIMER_CONTACTS", 10_000);
    let steps_contacts = env_usize("NURTURE_BENCH_STEPS_CONTACTS", 5_000);
    let concurrency = env_usize(
        "NURTURE_BENCH_CONCURRENCY",
        nurture::config::Config::default().concurrency,
    );
    let burst = env_usize("NURTURE_BENCH_BURST", 0);
    let burst_restart = env_usize("NURTURE_BENCH_BURST_RESTART", 1) == 1;
    let mut timers = Vec::new();
    let mut steps = Vec::new();
    let mut bursts = Vec::new();
    for mode in modes {
        if timer_contacts > 0 {
            timers.push(timer_phase(mode, timer_contacts, concurrency).await);
        }
        if burst > 0 {
            bursts.push(burst_phase(mode, burst, concurrency, burst_restart).await);
        }
        if steps_contacts > 0 {
            steps.push(steps_phase(mode, steps_contacts, concurrency).await);
        }
    }
    print_summary(&timers, &steps, concurrency);
    print_bursts(&bursts);
}
