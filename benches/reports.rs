//! ROI report speed on PostgreSQL at volume: seeds 1M contacts, 10M events, 2M messages (and
//! their enrollments, clicks, orders and goals) with set-based SQL, rolls the history up once,
//! adds a few minutes of fresh facts (read live by every report), then times the ROI report
//! for every model and grouping over 90 days, and the KPIs.
//! Run: `cargo bench --bench reports` (size: NURTURE_BENCH_CONTACTS, default 1,000,000;
//! events are 10 and messages 2 per contact).

use nurture::config::Config;
use nurture::engine::VirtualClock;
use nurture::reports::{GroupBy, Model};
use sqlx::Executor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const DAY: i64 = 86_400_000;

fn main() {
    let contacts: i64 = std::env::var("NURTURE_BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    tokio::runtime::Runtime::new().unwrap().block_on(run(contacts));
}

async fn run(contacts: i64) {
    let admin =
        std::env::var("NURTURE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let database = format!("nurture_reports_{}", std::process::id());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .expect("PostgreSQL");
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await
        .unwrap();
    let url = format!("{}/{database}", admin.rsplit_once('/').unwrap().0);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&dir).unwrap();
    // Day 100 after t0 is "now": the report covers the last 90 days.
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let now = t0 + chrono::Duration::days(100);
    let clock = VirtualClock::new(now);
    let mut config = Config {
        database_url: Some(url.clone()),
        redis_url: Some("redis://127.0.0.1:6379".into()),
        namespace: database.clone(),
        journeys: root.join("journeys"),
        templates: root.join("templates"),
        sales: root.join("sales.yaml"),
        scoring: root.join("scoring.yaml"),
        outbox: dir.join("outbox"),
        ..Config::default()
    };
    config.reports.costs.email = 0.002;
    let engine = nurture::app::build(config, Arc::new(clock.clone()))
        .await
        .expect("the engine starts");
    let journey = engine.catalog().journeys[0].id.clone();
    let t0 = t0.timestamp_millis();
    let started = Instant::now();
    let statements = [
        format!("INSERT INTO contacts (email, stage, created_at) SELECT 'c' || g || '@example.com', CASE WHEN g % 10 = 0 THEN 'mql' ELSE 'lead' END, {t0} + g * 1000 FROM generate_series(1, {contacts}) g"),
        format!("INSERT INTO journey_versions (journey_id, version, file, source, loaded_at) SELECT 'j' || g, 'v', 'j.yaml', '', {t0} FROM generate_series(0, 9) g"),
        format!("INSERT INTO enrollments (contact_id, journey_id, version, status, position, step, entered_at, updated_at)
                 SELECT id, 'j' || (id % 10), 'v', 'completed', '{{}}', 'mail', {t0} + (id % 90) * {DAY} + id % 86400000, {t0} FROM contacts"),
        "INSERT INTO effects (effect_key, enrollment_id, contact_id, journey_id, step, kind, payload, status, created_at, done_at)
                 SELECT e.id || '/mail' || s, e.id, e.contact_id, e.journey_id, 'mail' || s, 'email', '{}', 'done', e.entered_at + s * 3600000, e.entered_at + s * 3600000
                 FROM enrollments e, generate_series(1, 2) s".to_string(),
        "INSERT INTO events (contact_id, name, properties, occurred_at)
                 SELECT c.id, 'Page Viewed', '{\"path\": \"/\"}', c.created_at + s * 3600000 FROM contacts c, generate_series(1, 10) s".to_string(),
        // One click on every tenth message; an order from every twentieth contact, a goal from every fiftieth.
        "INSERT INTO touches (contact_id, journey_id, step, channel, kind, at)
         SELECT contact_id, journey_id, step, 'email', 'clicked', done_at + 600000 FROM effects WHERE contact_id % 10 = 0".into(),
        format!("INSERT INTO revenue_events (event_id, contact_id, name, amount, currency, value, at, recorded_at)
                 SELECT e.id, e.contact_id, 'Order Completed', 49900000, 'USD', 49900000, e.entered_at + 2 * {DAY}, e.entered_at + 2 * {DAY}
                 FROM enrollments e WHERE e.contact_id % 20 = 0"),
        format!("INSERT INTO conversions (enrollment_id, contact_id, journey_id, version, event_name, revenue, at)
                 SELECT id, contact_id, journey_id, 'v', 'Demo Booked', NULL, entered_at + {DAY} FROM enrollments WHERE contact_id % 50 = 0"),
        "ANALYZE".into(),
    ];
    let store = engine.store.pool.clone();
    for statement in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&store)
            .await
            .unwrap();
    }
    println!(
        "seeded {contacts} contacts, {} events, {} messages in {:.1?}",
        contacts * 10,
        contacts * 2,
        started.elapsed()
    );

    let started = Instant::now();
    engine.roll_up_until(now.timestamp_millis() - 300_000).await.unwrap();
    println!("first rollup of the whole history: {:.1?}", started.elapsed());
    // Five minutes of fresh facts: read live by each report, on top of the rollups.
    let fresh = format!(
        "INSERT INTO effects (effect_key, enrollment_id, contact_id, journey_id, step, kind, payload, status, created_at, done_at)
         SELECT 'fresh/' || id, id, contact_id, '{journey}', 'mail', 'email', '{{}}', 'done', {n} - (id % 300000), {n} - (id % 300000)
         FROM enrollments WHERE id % 500 = 0",
        n = now.timestamp_millis()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(fresh)).execute(&store).await.unwrap();
    let to = nurture::reports::day_of(now.timestamp_millis());
    let from = to - 89 * DAY;
    println!("{:<16} {:<8} {:>10}", "model", "group", "ROI query");
    for model in Model::ALL {
        for (name, group_by) in [
            ("journey", GroupBy::Journey),
            ("step", GroupBy::Step),
            ("channel", GroupBy::Channel),
        ] {
            let started = Instant::now();
            let report = engine.roi_report(from, to, model, group_by).await.unwrap();
            println!(
                "{:<16} {:<8} {:>10.1?}  ({} rows)",
                model.as_str(),
                name,
                started.elapsed(),
                report.rows.len()
            );
        }
    }
    let started = Instant::now();
    engine.kpi_report(from, to, Model::Linear).await.unwrap();
    println!("KPIs over 90 days: {:.1?}", started.elapsed());
    drop(engine);
    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .await
    .ok();
}
