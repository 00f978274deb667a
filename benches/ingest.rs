//! Events API throughput: `POST /v1/track` one message at a time and `POST /v1/batch` with 100
//! messages, over real HTTP on a loopback port, in the embedded mode (SQLite) and the
//! production mode (PostgreSQL + Redis). Prints events/s and request latency p50/p99.
//! Run: `cargo bench --bench ingest` (sizes: NURTURE_BENCH_SINGLE, NURTURE_BENCH_BATCHES).

use nurture::config::Config;
use nurture::engine::SystemClock;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Embedded,
    Production,
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn start(mode: Mode) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(unique("nurture-ingest-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config {
        journeys: root.join("journeys"),
        templates: root.join("templates"),
        sales: root.join("sales.yaml"),
        scoring: root.join("scoring.yaml"),
        sqlite_path: dir.join("nurture.db"),
        outbox: dir.join("outbox"),
        namespace: unique("ningest"),
        write_keys: vec!["bench".into()],
        admin_tokens: vec!["bench-admin".into()],
        ..Config::default()
    };
    // No per-key rate limit: its 429s would be counted as fast answers.
    config.http.rate_limit = Some(0);
    if mode == Mode::Production {
        use sqlx::Executor;
        let admin = "postgres://postgres@127.0.0.1:5432/test";
        let database = unique("nurture_ingest");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(admin)
            .await
            .expect("PostgreSQL");
        pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await
            .unwrap();
        config.database_url = Some(format!("postgres://postgres@127.0.0.1:5432/{database}"));
        config.redis_url = Some("redis://127.0.0.1:6379".into());
    }
    let engine = nurture::app::build(config, Arc::new(SystemClock))
        .await
        .expect("the engine starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = nurture::api::AppState {
        keys: Arc::new(nurture::api::keys_for(&engine)),
        engine,
    };
    tokio::spawn(nurture::api::serve(
        listener,
        nurture::api::router(state),
        std::future::pending(),
    ));
    address.to_string()
}

/// One POST over a new connection; returns the status code.
async fn post(address: &str, path: &str, body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Basic YmVuY2g6\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sends `requests` bodies from `clients` concurrent callers; returns latencies and wall time.
async fn drive(address: &str, path: &'static str, bodies: Vec<Vec<u8>>, clients: usize) -> (Vec<Duration>, Duration) {
    let bodies = Arc::new(tokio::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let bodies = bodies.clone();
        let address = address.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(body) = bodies.lock().await.pop() else { break };
                let sent = Instant::now();
                let status = post(&address, path, &body).await;
                assert_eq!(status, 200, "the API refused a request");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    latencies.sort();
    (latencies, started.elapsed())
}

fn event(i: usize) -> serde_json::Value {
    json!({"type": "track", "userId": format!("user-{}", i % 1000), "event": "Product Viewed", "properties": {"sku": format!("sku-{}", i % 50), "price": 99}})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let single = setting("NURTURE_BENCH_SINGLE", 2_000);
    let batches = setting("NURTURE_BENCH_BATCHES", 100);
    let mut rows = Vec::new();
    for mode in [Mode::Embedded, Mode::Production] {
        let address = start(mode).await;
        // Warm up: the contacts exist before measuring.
        let warm: Vec<Vec<u8>> = (0..10)
            .map(|b| {
                json!({"batch": (0..100).map(|i| event(b * 100 + i)).collect::<Vec<_>>()})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        drive(&address, "/v1/batch", warm, 2).await;
        let bodies: Vec<Vec<u8>> = (0..single).map(|i| event(i).to_string().into_bytes()).collect();
        let (latencies, wall) = drive(&address, "/v1/track", bodies, 8).await;
        rows.push(format!(
            "| {mode:?} | single `/v1/track`, 8 clients | {single} | {:.0} | {:.1} ms | {:.1} ms |",
            single as f64 / wall.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0
        ));
        let bodies: Vec<Vec<u8>> = (0..batches)
            .map(|b| {
                json!({"batch": (0..100).map(|i| event(b * 100 + i)).collect::<Vec<_>>()})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        let (latencies, wall) = drive(&address, "/v1/batch", bodies, 4).await;
        rows.push(format!(
            "| {mode:?} | `/v1/batch` of 100, 4 clients | {} | {:.0} | {:.1} ms | {:.1} ms |",
            batches * 100,
            (batches * 100) as f64 / wall.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0
        ));
        eprintln!("{mode:?} done");
    }
    println!("| mode | requests | events | events/s | p50 request | p99 request |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
