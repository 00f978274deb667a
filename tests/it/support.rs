//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `nurture` binary in `dir` with `args`.
pub fn nurture(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nurture"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the nurture binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Compares `actual` with the file at `path`; with `UPDATE_EXPECT=1` rewrites the file instead.
pub fn expect_file(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).expect("write the expectation");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        panic!(
            "{} differs from the actual output (rerun with UPDATE_EXPECT=1 to accept it):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

use nurture::config::Config;
use nurture::engine::runner::Engine;
use nurture::engine::{Clock, VirtualClock};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("nurture-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SQLite for state and queue, one process.
    Embedded,
    /// PostgreSQL for state, Redis for the queue.
    Production,
}

pub fn admin_database_url() -> String {
    std::env::var("NURTURE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("NURTURE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh PostgreSQL database for one test. Panics (never skips) when PostgreSQL is down.
pub async fn fresh_database() -> String {
    use sqlx::Executor;
    let admin = admin_database_url();
    let name = unique("nurture_test");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({admin}): {e}"));
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the test database");
    let base = admin.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap();
    format!("{base}/{name}")
}

/// A config for one test: its own database or SQLite file, Redis namespace and outbox.
pub async fn test_config(mode: Mode, journeys: &Path) -> Config {
    let dir = scratch_dir("env");
    let mut config = Config {
        journeys: journeys.to_path_buf(),
        templates: journeys.parent().unwrap().join("templates"),
        sales: journeys.parent().unwrap().join("sales.yaml"),
        scoring: journeys.parent().unwrap().join("scoring.yaml"),
        sqlite_path: dir.join("nurture.db"),
        outbox: dir.join("outbox"),
        namespace: unique("nt"),
        reconcile_every: Duration::from_millis(300),
        reconcile_grace: Duration::from_secs(1),
        retry_base: Duration::from_millis(200),
        concurrency: 8,
        db_pool: 6,
        ..Config::default()
    };
    // Most tests read what a request did right after its answer; the inbox's own tests
    // (`ingest_holes.rs`) set `stored`.
    config.http.acknowledge = nurture::config::Acknowledge::Applied;
    if mode == Mode::Production {
        config.database_url = Some(fresh_database().await);
        config.redis_url = Some(redis_url());
        // Production never writes SMS to the outbox: a local Twilio fake stands in.
        config.sms.twilio = Some(twilio_config(&HttpFake::twilio().await));
    }
    config
}

/// `[sms.twilio]` pointing at a fake; the auth token is `test-token`.
pub fn twilio_config(fake: &HttpFake) -> nurture::config::TwilioConfig {
    nurture::config::TwilioConfig {
        account_sid: "ACtest".into(),
        auth_token: "test-token".into(),
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        base_url: fake.base.clone(),
    }
}

/// SMS recorded as handed to a provider (or the outbox) for a contact.
pub async fn sms_of(env: &TestEnv, contact: i64) -> Vec<nurture::store::sms::Delivery> {
    let mut connection = env.engine.store.pool.acquire().await.unwrap();
    nurture::store::sms::of_contact(&mut connection, contact).await.unwrap()
}

/// One request a fake HTTP server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn form_field(&self, name: &str) -> Option<String> {
        self.form().into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What a fake answers: a status, a body, and how long it waits first.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Answering = dyn Fn(usize, &Recorded) -> Answer + Send + Sync;

/// A real HTTP server on a loopback port standing in for a provider or a webhook target: it
/// records every request and answers with `answer(index of the request, request)`.
pub struct HttpFake {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub port: u16,
    requests: Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl HttpFake {
    pub async fn start(answer: impl Fn(usize, &Recorded) -> Answer + Send + Sync + 'static) -> HttpFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer: Arc<Answering> = Arc::new(answer);
        let seen = requests.clone();
        let handler = move |request: axum::extract::Request| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect(),
                    body: body.to_vec(),
                };
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(recorded.clone());
                    seen.len() - 1
                };
                let reply = answer(index, &recorded);
                tokio::time::sleep(reply.delay).await;
                (
                    axum::http::StatusCode::from_u16(reply.status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    reply.body,
                )
            }
        };
        let app = axum::Router::new().fallback(handler);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpFake {
            base: format!("http://127.0.0.1:{port}"),
            port,
            requests,
        }
    }

    /// Twilio's Messages API: 201 with a new `SM...` sid for every message.
    pub async fn twilio() -> HttpFake {
        HttpFake::start(|index, request| {
            let to = request.form_field("To").unwrap_or_default();
            Answer::new(
                201,
                serde_json::json!({"sid": format!("SM{index:032x}"), "status": "queued", "to": to, "num_segments": "1"})
                    .to_string(),
            )
        })
        .await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// A running engine with its worker, for one test.
pub struct TestEnv {
    pub engine: Arc<Engine>,
    pub config: Config,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestEnv {
    pub async fn start(config: Config, clock: Arc<dyn Clock>, with_reconciler: bool) -> TestEnv {
        if std::env::var_os("TEST_LOG").is_some() {
            nurture::cli::init_tracing();
        }
        let engine = nurture::app::build(config.clone(), clock)
            .await
            .unwrap_or_else(|e| panic!("the engine starts: {e:#}"));
        let (stop, stopped) = watch::channel(false);
        let wait = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let mut tasks = Vec::new();
        let worker_engine = engine.clone();
        let worker_stop = wait(stopped.clone());
        tasks.push(tokio::spawn(async move {
            nurture::app::run_worker(worker_engine, unique("test-worker"), worker_stop)
                .await
                .expect("worker runs");
        }));
        if with_reconciler {
            tasks.push(tokio::spawn(nurture::app::run_reconciler(
                engine.clone(),
                wait(stopped.clone()),
            )));
        }
        TestEnv {
            engine,
            config,
            stop,
            tasks,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

pub fn virtual_clock(start: &str) -> VirtualClock {
    VirtualClock::new(
        chrono::DateTime::parse_from_rfc3339(start)
            .unwrap()
            .with_timezone(&chrono::Utc),
    )
}

/// Waits until `check` returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Messages in an outbox directory: mbox entries, JSON lines, or files.
pub fn count_messages(dir: &Path) -> usize {
    nurture::channels::outbox::count_messages(dir)
}

/// A real SMTP server on a loopback port that records what it receives. `fail_first` makes it
/// answer the first N `MAIL FROM`s with `code` (e.g. 451 transient, 550 permanent).
pub struct SmtpSink {
    pub port: u16,
    pub messages: Arc<std::sync::Mutex<Vec<String>>>,
    /// When each of `messages` was accepted (same order).
    pub arrivals: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl SmtpSink {
    pub async fn start(fail_first: usize, code: u16) -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        SmtpSink::start_on(listener, fail_first, code)
    }

    /// The sink on a listener bound earlier (a port that was down comes up).
    pub fn start_on(listener: tokio::net::TcpListener, fail_first: usize, code: u16) -> SmtpSink {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let port = listener.local_addr().unwrap().port();
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let store = messages.clone();
        let times = arrivals.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                let times = times.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read);
                    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let command = line.trim_end().to_ascii_uppercase();
                        let reply: String = if command.starts_with("EHLO") || command.starts_with("HELO") {
                            "250-sink\r\n250 8BITMIME\r\n".into()
                        } else if command.starts_with("MAIL FROM") {
                            let left = failures.load(Ordering::SeqCst);
                            if left > 0 {
                                failures.store(left - 1, Ordering::SeqCst);
                                format!("{code} try again later\r\n")
                            } else {
                                "250 OK\r\n".into()
                            }
                        } else if command.starts_with("DATA") {
                            let _ = write.write_all(b"354 go ahead\r\n").await;
                            let mut body = String::new();
                            loop {
                                line.clear();
                                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" {
                                    break;
                                }
                                body.push_str(&line);
                            }
                            // Both under one lock, so the two lists stay aligned.
                            let mut messages = store.lock().unwrap();
                            messages.push(body);
                            times.lock().unwrap().push(std::time::Instant::now());
                            drop(messages);
                            "250 queued\r\n".into()
                        } else if command.starts_with("QUIT") {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            "250 OK\r\n".into()
                        };
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SmtpSink {
            port,
            messages,
            arrivals,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

/// Starts the HTTP API of `env` on a random loopback port; returns `http://127.0.0.1:PORT`.
pub async fn spawn_api(env: &TestEnv) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_api_on(env, listener)
}

/// Serves the HTTP API of `env` on a listener bound earlier (so the config could name its
/// address, as `public_url` does); returns `http://ADDRESS`.
pub fn serve_api_on(env: &TestEnv, listener: tokio::net::TcpListener) -> String {
    let address = listener.local_addr().unwrap();
    let state = nurture::api::AppState {
        engine: env.engine.clone(),
        keys: Arc::new(nurture::api::keys_for(&env.engine)),
    };
    tokio::spawn(nurture::api::serve(
        listener,
        nurture::api::router(state),
        std::future::pending(),
    ));
    format!("http://{address}")
}

/// A response: status, headers (lowercase names) and body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 request over a new connection (the tests need nothing fancier).
pub async fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_http(base, method, path, headers, body)
        .await
        .unwrap_or_else(|error| panic!("{method} {base}{path}: {error}"))
}

/// [`http`] that reports a refused, reset or cut connection instead of panicking: the fault
/// tests call processes they kill.
pub async fn try_http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let incomplete = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "an incomplete response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(incomplete)?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(incomplete)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// A child process SIGKILLed when dropped, so a failing test leaves none behind.
pub struct KilledOnDrop(pub std::process::Child);

impl KilledOnDrop {
    /// SIGKILL: no shutdown, no flush, nothing finished.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port free on loopback now (for a process told where to listen).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway `redis-server` on its own port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: scratch_dir("redis"),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port, empty: nothing is saved.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let url = self.url();
        eventually("redis-server to answer", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut connection = client.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut connection).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn subscribers(&self, channel: &str) -> i64 {
        let client = redis::Client::open(self.url()).unwrap();
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            return 0;
        };
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut connection)
            .await
            .unwrap();
        count
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `Authorization` header a Segment library sends: the write key as the Basic user name.
/// POSTs JSON to the events API with `key` as Basic auth, as Segment's libraries do.
pub async fn post_events(base: &str, key: &str, path: &str, body: &serde_json::Value) -> Response {
    let auth = basic(key);
    http(
        base,
        "POST",
        path,
        &[("authorization", &auth), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

pub fn basic(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}
