//! Email send throughput to a local SMTP server this program starts (it accepts everything and
//! counts). Run: `cargo bench --bench send`.
//!
//! 1. Mailer: messages/s of `channels::email::Mailer` alone (MIME building, lettre's pooled SMTP
//!    on loopback), one sender at a time and 32 at once.
//! 2. Engine: messages/s from events to the SMTP server through the whole path, in both modes:
//!    contacts get `Promo Eligible`, the `promo` journey (tests/fixtures/email) sends one
//!    tracked marketing email each (render, link signing and rewriting, SMTP, effect marked done).
//!
//! Environment: `NURTURE_BENCH_MODES` (`embedded,production`), `NURTURE_BENCH_MESSAGES` (2000),
//! and the test suite's `NURTURE_TEST_DATABASE_URL` and `NURTURE_TEST_REDIS_URL`.

use futures::{StreamExt, stream};
use nurture::channels::email::{Mailer, Outgoing};
use nurture::config::Config;
use nurture::engine::SystemClock;
use nurture::expr::EventFacts;
use nurture::journey::templates::{MailClass, RenderedEmail};
use nurture::store::contacts::NewContact;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Callers of `track` at once, like concurrent API requests.
const CLIENTS: usize = 32;
const DEADLINE: Duration = Duration::from_secs(300);

/// An SMTP server on a loopback port that accepts every message and counts it.
async fn smtp_sink() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("address"));
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut in_data = false;
                if write.write_all(b"220 bench\r\n").await.is_err() {
                    return;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        counter.fetch_add(1, Ordering::Relaxed);
                        b"250 queued\r\n"
                    } else {
                        match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                            Some("EHLO") => b"250-bench\r\n250 8BITMIME\r\n",
                            Some("DATA") => {
                                in_data = true;
                                b"354 go ahead\r\n"
                            }
                            Some("QUIT") => b"221 bye\r\n",
                            _ => b"250 OK\r\n",
                        }
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn mailer(messages: usize, senders: usize) {
    let (url, received) = smtp_sink().await;
    let mailer = Mailer::from_config(Some(&url), std::path::Path::new("unused")).expect("an SMTP mailer");
    let email = RenderedEmail {
        template: "bench".into(),
        language: String::new(),
        subject: "A bench message".into(),
        from: None,
        reply_to: None,
        preheader: None,
        class: MailClass::Marketing,
        tracking: None,
        html: format!(
            "<html><body>{}</body></html>",
            "<p>Automation pays back on the line. · 自动化</p>".repeat(40)
        ),
        text: "Automation pays back on the line.\n".repeat(40),
    };
    let sent_at = chrono::DateTime::from_timestamp(1_796_000_000, 0).expect("a valid time");
    let started = Instant::now();
    stream::iter(0..messages)
        .for_each_concurrent(senders, |n| {
            let (mailer, email, sent_at) = (&mailer, &email, sent_at);
            async move {
                let message_id = format!("<bench.{n}@example.com>");
                mailer
                    .send(Outgoing {
                        to: "reader@example.com",
                        from: "Bench <bench@example.com>",
                        email,
                        message_id,
                        unsubscribe_url: "https://n.example/u/1-1.x",
                        list_id: Some(("Bench", "bench")),
                        at: sent_at,
                    })
                    .await
                    .expect("the sink accepts");
            }
        })
        .await;
    let elapsed = started.elapsed();
    assert_eq!(received.load(Ordering::Relaxed), messages);
    println!(
        "  mailer, {senders:>2} at once: {messages} messages in {:.2} s = {:.0} messages/s",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
}

async fn engine(production: bool, messages: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/email");
    let dir = std::env::temp_dir().join(unique("nurture-bench-send"));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (url, received) = smtp_sink().await;
    let mut config = Config {
        journeys: root.join("journeys"),
        templates: root.join("templates"),
        sales: root.join("sales.yaml"),
        scoring: root.join("scoring.yaml"),
        sqlite_path: dir.join("nurture.db"),
        outbox: dir.join("outbox"),
        namespace: unique("nbench"),
        smtp_url: Some(url),
        public_url: Some("https://n.example".into()),
        ..Config::default()
    };
    if production {
        use sqlx::Executor;
        let admin = std::env::var("NURTURE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let database = unique("nurture_bench_send");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .expect("PostgreSQL runs");
        pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await
            .expect("create the bench database");
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base.to_string())
            .expect("a database URL");
        config.database_url = Some(format!("{base}/{database}"));
        config.redis_url =
            Some(std::env::var("NURTURE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
    }
    let engine = nurture::app::build(config, Arc::new(SystemClock))
        .await
        .expect("the engine starts");
    let worker = tokio::spawn(nurture::app::run_worker(
        engine.clone(),
        unique("bench-send"),
        std::future::pending(),
    ));
    let mut contacts = Vec::with_capacity(messages);
    for n in 0..messages {
        let contact = NewContact {
            email: Some(format!("reader{n}@example.com")),
            ..NewContact::default()
        };
        contacts.push(engine.create_contact(&contact).await.expect("a contact"));
    }
    let started = Instant::now();
    stream::iter(contacts)
        .for_each_concurrent(CLIENTS, |contact| {
            let engine = engine.clone();
            async move {
                let event = EventFacts {
                    name: "Promo Eligible".into(),
                    ..EventFacts::default()
                };
                engine.track(contact, event).await.expect("tracked");
            }
        })
        .await;
    while received.load(Ordering::Relaxed) < messages {
        assert!(
            started.elapsed() < DEADLINE,
            "only {} of {messages} messages arrived",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "  engine, {}: {messages} messages in {:.2} s = {:.0} messages/s (events to SMTP)",
        if production {
            "production (PostgreSQL + Redis)"
        } else {
            "embedded (SQLite)"
        },
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    worker.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    let messages = env_usize("NURTURE_BENCH_MESSAGES", 2000);
    let modes = std::env::var("NURTURE_BENCH_MODES").unwrap_or_else(|_| "embedded,production".into());
    println!("Email send throughput to a local SMTP sink ({messages} messages)");
    mailer(messages, 1).await;
    mailer(messages, CLIENTS).await;
    for mode in modes.split(',').map(str::trim) {
        engine(mode == "production", messages).await;
    }
}
