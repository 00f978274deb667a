//! The API's edge over real sockets: `dev` credentials only on loopback, the settings route
//! only for write keys, the header-read timeout (slowloris), the request deadline, the
//! concurrency bound and the per-key rate limit, errors in one JSON shape with a request id,
//! JSON logs, and `/healthz` and `/readyz`.

use crate::support::{Mode, Response, TestEnv, basic, eventually, http, root, scratch_dir, test_config};
use nurture::config::Config;
use nurture::engine::SystemClock;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "wk-edge";
const OTHER_KEY: &str = "wk-edge-2";
const ADMIN: &str = "admin-edge";

async fn config_with_keys() -> Config {
    let mut config = test_config(Mode::Embedded, &root().join("journeys")).await;
    config.write_keys = vec![KEY.into(), OTHER_KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    config
}

/// The engine of `config` and its API on a loopback port, served with `header_timeout`.
async fn start(config: Config, header_timeout: Duration) -> (TestEnv, String) {
    let env = TestEnv::start(config, Arc::new(SystemClock), false).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = nurture::api::AppState {
        engine: env.engine.clone(),
        keys: Arc::new(nurture::api::keys_for(&env.engine)),
    };
    tokio::spawn(nurture::api::serve_with(
        listener,
        nurture::api::router(state),
        header_timeout,
        std::future::pending(),
    ));
    (env, format!("http://{address}"))
}

async fn track(base: &str, key: &str) -> Response {
    let auth = basic(key);
    let body = json!({"userId": "u-edge", "event": "Edge Tested"}).to_string();
    http(
        base,
        "POST",
        "/v1/track",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// The error shape every error has: code, message, the request id of the header.
fn assert_error_shape(response: &Response) -> Value {
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "status {}: not JSON: {:?} {}",
        response.status,
        response.header("content-type"),
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    let error = &body["error"];
    assert!(error["code"].is_string() && error["message"].is_string(), "{body}");
    assert_eq!(
        error["request_id"].as_str(),
        response.header("x-request-id"),
        "the body's request id is the header's: {body}"
    );
    error.clone()
}

/// Opens a connection and sends `head` (and no more).
async fn send_head(base: &str, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads a whole response off `stream` (the request said `connection: close`).
async fn read_status(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_credentials_work_on_loopback_only() {
    let config = test_config(Mode::Embedded, &root().join("journeys")).await;
    assert!(config.write_keys.is_empty() && config.admin_tokens.is_empty());
    let (env, base) = start(config.clone(), Duration::from_secs(10)).await;
    assert_eq!(track(&base, "dev").await.status, 200, "listen = {}", config.listen);
    env.stop().await;

    // The same config listening on every address: `dev` is no key at all.
    let exposed = Config {
        listen: "0.0.0.0:8080".into(),
        ..test_config(Mode::Embedded, &root().join("journeys")).await
    };
    let (env, base) = start(exposed, Duration::from_secs(10)).await;
    let response = track(&base, "dev").await;
    assert_eq!(response.status, 401);
    assert_eq!(assert_error_shape(&response)["code"], "unauthorized");
    env.stop().await;
}

#[tokio::test]
async fn an_api_reachable_from_other_machines_without_keys_refuses_to_start() {
    let dir = scratch_dir("exposed");
    for command in ["api", "serve"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nurture"))
            .current_dir(&dir)
            .arg(command)
            .env("NURTURE_LISTEN", "0.0.0.0:0")
            .env_remove("DATABASE_URL")
            .env_remove("NURTURE_WRITE_KEYS")
            .env_remove("NURTURE_ADMIN_TOKENS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("0.0.0.0:0")
                && stderr.contains("NURTURE_WRITE_KEYS")
                && stderr.contains("NURTURE_ADMIN_TOKENS")
                && stderr.contains("127.0.0.1"),
            "{command}: the refusal says what to set: {stderr}"
        );
        assert!(!dir.join("nurture.db").exists(), "refused before anything starts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_route_answers_for_a_write_key_only() {
    let (env, base) = start(config_with_keys().await, Duration::from_secs(10)).await;
    let response = http(&base, "GET", &format!("/v1/projects/{KEY}/settings"), &[], b"").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["integrations"]["Segment.io"]["apiKey"], KEY);
    for key in [ADMIN, "unknown"] {
        let response = http(&base, "GET", &format!("/v1/projects/{key}/settings"), &[], b"").await;
        assert_eq!(response.status, 404, "{key}");
        let error = assert_error_shape(&response);
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some("not_found"), Some("key"))
        );
        assert!(!String::from_utf8_lossy(&response.body).contains(ADMIN));
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_after_the_header_timeout() {
    let (env, base) = start(config_with_keys().await, Duration::from_secs(1)).await;
    let mut stream = send_head(&base, "POST /v1/track HTTP/1.1\r\nhost: nurture\r\n").await;
    let started = tokio::time::Instant::now();
    // One header line every 200 ms, never the blank line that ends the head: without a
    // header-read timeout this holds the connection for as long as the client likes.
    let mut buffer = [0u8; 1024];
    let closed = loop {
        if started.elapsed() > Duration::from_secs(8) {
            break false;
        }
        if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    };
    assert!(
        closed,
        "the server kept a connection open for 8 s without a whole request head"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    // Other clients are served as before.
    assert_eq!(track(&base, KEY).await.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_key_over_its_rate_limit_gets_429_with_retry_after() {
    let mut config = config_with_keys().await;
    config.http.rate_limit = Some(1);
    config.http.rate_burst = Some(3);
    let (env, base) = start(config, Duration::from_secs(10)).await;
    for _ in 0..3 {
        assert_eq!(track(&base, KEY).await.status, 200);
    }
    let response = track(&base, KEY).await;
    assert_eq!(response.status, 429);
    let retry_after: u64 = response.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(assert_error_shape(&response)["code"], "rate_limited");
    // A key in the body (analytics.js) is the same key, and counted the same.
    let body = json!({"userId": "u", "event": "E", "writeKey": KEY}).to_string();
    assert_eq!(http(&base, "POST", "/v1/t", &[], body.as_bytes()).await.status, 429);
    // Each key has its own bucket.
    assert_eq!(track(&base, OTHER_KEY).await.status, 200);
    env.stop().await;
}

/// Two API processes on one Redis count a write key against one bucket, so N processes do
/// not allow N times the rate; with Redis gone each falls back to its own bucket at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_processes_share_a_write_keys_rate_limit_through_redis() {
    let mut redis = crate::support::RedisServer::start().await;
    let mut config = test_config(Mode::Production, &root().join("journeys")).await;
    config.redis_url = Some(redis.url());
    config.write_keys = vec![KEY.into(), OTHER_KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    config.http.rate_limit = Some(1);
    config.http.rate_burst = Some(4);
    let (first, a) = start(config.clone(), Duration::from_secs(10)).await;
    let (second, b) = start(config.clone(), Duration::from_secs(10)).await;
    let began = std::time::Instant::now();
    let mut admitted = 0;
    for i in 0..12 {
        let status = track(if i % 2 == 0 { &a } else { &b }, KEY).await.status;
        assert!(status == 200 || status == 429, "{status}");
        admitted += usize::from(status == 200);
    }
    // The burst of 4, and one more per second the loop took (1 per second).
    let refills = began.elapsed().as_secs() as usize;
    assert!(
        (4..=4 + refills).contains(&admitted),
        "{admitted} of 12 admitted by two processes sharing a burst of 4 ({refills} s)"
    );
    let refused = track(&b, KEY).await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());

    // Redis gone: each process's own bucket decides, without waiting for Redis.
    redis.kill();
    for base in [&a, &b] {
        let asked = std::time::Instant::now();
        assert_eq!(track(base, OTHER_KEY).await.status, 200);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "answered in {:?} with Redis down",
            asked.elapsed()
        );
    }
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_bound_get_503_and_a_slow_request_times_out() {
    let mut config = config_with_keys().await;
    config.http.max_concurrent_requests = 1;
    config.http.request_timeout = Duration::from_secs(3);
    let (env, base) = start(config, Duration::from_secs(10)).await;
    let auth = basic(KEY);
    let body = json!({"userId": "u-slow", "event": "Slow"}).to_string();
    // A request whose body has not all arrived holds the one slot. A probe that reaches the
    // server before the slow request's head takes the slot itself and the slow request is
    // refused: then the slow request is dropped (its slot comes free) and sent again.
    let began = std::time::Instant::now();
    let (mut slow, refused) = loop {
        let mut slow = send_head(
            &base,
            &format!(
                "POST /v1/track HTTP/1.1\r\nhost: nurture\r\nconnection: close\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ),
        )
        .await;
        slow.write_all(&body.as_bytes()[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = track(&base, KEY).await;
        if response.status == 503 {
            break (slow, response);
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the slow request never held the slot (probe answered {})",
            response.status
        );
        drop(slow);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(assert_error_shape(&refused)["code"], "overloaded");
    // Health checks are answered even then.
    assert_eq!(http(&base, "GET", "/healthz", &[], b"").await.status, 200);
    // The slow request is cut off at its deadline, and the slot is free again.
    let (status, text) = read_status(&mut slow).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("\"timeout\"") && text.to_ascii_lowercase().contains("retry-after"),
        "{text}"
    );
    assert_eq!(track(&base, KEY).await.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_rejections_are_json_errors_naming_the_field() {
    let (env, base) = start(config_with_keys().await, Duration::from_secs(10)).await;
    let admin = format!("Bearer {ADMIN}");
    let admin = [("authorization", admin.as_str())];
    let cases: Vec<(Response, u16, &str, Option<&str>)> = vec![
        (
            http(&base, "GET", "/v1/nothing/here", &[], b"").await,
            404,
            "not_found",
            None,
        ),
        (
            http(&base, "GET", "/v1/track", &[], b"").await,
            405,
            "method_not_allowed",
            None,
        ),
        (
            http(&base, "GET", "/v1/contacts/not-a-number", &admin, b"").await,
            400,
            "invalid_path",
            Some("id"),
        ),
        (
            http(&base, "GET", "/v1/contacts/99999999999999999999999", &admin, b"").await,
            400,
            "invalid_path",
            Some("id"),
        ),
        (
            http(&base, "GET", "/v1/sales/leads?status=won&status=lost", &admin, b"").await,
            400,
            "invalid_query",
            Some("status"),
        ),
        (
            http(
                &base,
                "POST",
                "/dashboard/login",
                &[("content-type", "application/json")],
                b"{}",
            )
            .await,
            415,
            "invalid_body",
            Some("content-type"),
        ),
    ];
    for (response, status, code, field) in cases {
        assert_eq!(response.status, status, "{}", String::from_utf8_lossy(&response.body));
        let error = assert_error_shape(&response);
        assert_eq!(
            (error["code"].as_str(), error["field"].as_str()),
            (Some(code), field),
            "{error}"
        );
    }
    // 405 keeps its Allow header.
    let response = http(&base, "GET", "/v1/track", &[], b"").await;
    assert_eq!(response.header("allow"), Some("POST"));

    // Larger than the 4 MB read off the wire: refused from the Content-Length alone.
    let mut stream = send_head(
        &base,
        "POST /v1/batch HTTP/1.1\r\nhost: nurture\r\nconnection: close\r\ncontent-length: 5000000\r\n\r\n",
    )
    .await;
    let (status, text) = read_status(&mut stream).await;
    assert_eq!(status, 413, "{text}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["field"].as_str()),
        (Some("body_too_large"), Some("body"))
    );

    // A client's request id is kept and echoed; a bad one is replaced.
    let response = http(&base, "GET", "/nowhere", &[("x-request-id", "client-id-42")], b"").await;
    assert_eq!(response.header("x-request-id"), Some("client-id-42"));
    assert_eq!(assert_error_shape(&response)["request_id"], "client-id-42");
    let long = "x".repeat(500);
    let response = http(&base, "GET", "/nowhere", &[("x-request-id", &long)], b"").await;
    let replaced = response.header("x-request-id").unwrap().to_string();
    assert!(replaced.len() == 32 && replaced != long, "{replaced}");
    // Successes carry one too, and each request its own.
    let a = track(&base, KEY).await;
    let b = track(&base, KEY).await;
    assert!(a.header("x-request-id").is_some() && a.header("x-request-id") != b.header("x-request-id"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_alive_and_readyz_names_what_is_not_ready() {
    let (env, base) = start(config_with_keys().await, Duration::from_secs(10)).await;
    for path in ["/healthz", "/health"] {
        let response = http(&base, "GET", path, &[], b"").await;
        assert_eq!(
            (response.status, response.json()),
            (200, json!({"status": "ok"})),
            "{path}"
        );
    }
    let response = http(&base, "GET", "/readyz", &[], b"").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["checks"]["database"], "ok");
    // A migration this build has and the database lacks: not ready, and says which.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)")
        .execute(&env.engine.store.pool)
        .await
        .unwrap();
    let response = http(&base, "GET", "/readyz", &[], b"").await;
    assert_eq!(response.status, 503);
    assert!(response.header("retry-after").is_some());
    let error = assert_error_shape(&response);
    assert_eq!(error["code"], "not_ready");
    assert_eq!(error["details"]["not_ready"], json!(["database"]));
    assert!(
        error["details"]["checks"]["database"]
            .as_str()
            .unwrap()
            .contains("migrations not applied"),
        "{error}"
    );
    env.stop().await;
}

/// A TCP proxy to `target` that the test can cut: connections it holds are dropped and new
/// ones refused until it is let through again.
struct Cuttable {
    port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicUsize>,
}

impl Cuttable {
    async fn start(target: String) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (gate, count) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !gate.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let (gate, count) = (gate.clone(), count.clone());
                let born = count.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while gate.load(Ordering::SeqCst) && count.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Cuttable { port, open, generation }
    }

    fn set_open(&self, open: bool) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_redis_is_not_ready_while_it_cannot_be_reached() {
    let redis = crate::support::redis_url();
    let redis_address = redis.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let proxy = Cuttable::start(redis_address).await;
    let mut config = test_config(Mode::Production, &root().join("journeys")).await;
    config.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port));
    config.write_keys = vec![KEY.into()];
    let (env, base) = start(config, Duration::from_secs(10)).await;
    let response = http(&base, "GET", "/readyz", &[], b"").await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.json()["checks"], json!({"database": "ok", "redis": "ok"}));
    proxy.set_open(false);
    let response = eventually("/readyz to notice Redis is gone", Duration::from_secs(20), || async {
        let response = http(&base, "GET", "/readyz", &[], b"").await;
        (response.status == 503).then_some(response)
    })
    .await;
    let error = assert_error_shape(&response);
    assert_eq!(error["details"]["not_ready"], json!(["redis"]), "{error}");
    // Liveness does not depend on Redis.
    assert_eq!(http(&base, "GET", "/healthz", &[], b"").await.status, 200);
    proxy.set_open(true);
    eventually("/readyz to see Redis again", Duration::from_secs(20), || async {
        (http(&base, "GET", "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_carry_the_request_id() {
    let dir = scratch_dir("json-logs");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nurture"))
        .current_dir(&dir)
        .arg("api")
        .env("NURTURE_LISTEN", format!("127.0.0.1:{port}"))
        .env("NURTURE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,nurture=debug")
        .env("NURTURE_WRITE_KEYS", KEY)
        .env("NURTURE_ADMIN_TOKENS", ADMIN)
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = crate::support::KilledOnDrop(child);
    // Read as it comes: a full pipe would block the server's logging.
    let mut pipe = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).map(|_| text)
    });
    let base = format!("http://127.0.0.1:{port}");
    eventually("the API to listen", Duration::from_secs(30), || async {
        TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    let response = http(&base, "GET", "/v1/contacts/1", &[("x-request-id", "log-test-7")], b"").await;
    assert_eq!(response.status, 401);
    assert_eq!(track(&base, KEY).await.status, 200);
    child.kill();
    let stderr = reader.join().unwrap().unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.iter().any(|line| {
        line["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening"))
    }));
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|line| line["span"]["request_id"] == "log-test-7")
        .collect();
    assert!(!of_request.is_empty(), "no line carries the request id:\n{stderr}");
    assert!(
        of_request
            .iter()
            .any(|line| line["fields"]["status"] == 401 && line["span"]["route"] == "/v1/contacts/{id}"),
        "{stderr}"
    );
}
