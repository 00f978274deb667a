//! Operations: `/metrics` after a real journey run, pausing and resuming a journey (API and
//! CLI, across a restart), its live counts, and one-off broadcasts (`at:`) that fire once
//! across processes and restarts.

use crate::support::{
    Mode, Response, SmtpSink, TestEnv, basic, eventually, http, nurture, root, scratch_dir, spawn_api, stderr, stdout,
    test_config, unique,
};
use nurture::config::Config;
use nurture::engine::{Clock, SystemClock};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "wk-ops";
const ADMIN: &str = "admin-ops";
const METRICS: &str = "metrics-ops";
const JOURNEY: &str = "ops-welcome";
const WAIT: Duration = Duration::from_secs(60);

/// A project directory of its own (`journeys/`, `templates/`), so a test may add journeys and
/// the CLI finds them from its working directory.
fn project() -> PathBuf {
    let dir = scratch_dir("ops-project");
    for sub in ["journeys", "templates"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(root().join("tests/fixtures/ops").join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

async fn config_for(mode: Mode, project: &Path) -> Config {
    let mut config = test_config(mode, &project.join("journeys")).await;
    config.write_keys = vec![KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    config.metrics_tokens = vec![METRICS.into()];
    config
}

async fn send(base: &str, route: &str, body: Value) -> Response {
    http(
        base,
        "POST",
        &format!("/v1/{route}"),
        &[("authorization", &basic(KEY)), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

async fn as_token(base: &str, method: &str, path: &str, token: &str) -> Response {
    http(
        base,
        method,
        path,
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await
}

async fn counts(base: &str) -> Value {
    let response = as_token(base, "GET", &format!("/v1/journeys/{JOURNEY}/counts"), ADMIN).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

fn at_step(counts: &Value, step: &str) -> i64 {
    counts["at_step"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == step)
        .map(|c| c["count"].as_i64().unwrap())
        .unwrap_or(0)
}

/// A scalar from the test's own connection to the state store.
async fn scalar(config: &Config, sql: &'static str, bind: &str) -> i64 {
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", config.sqlite_path.display()),
    };
    let store = nurture::store::Store::connect(&url, 1).await.unwrap();
    let value = sqlx::query(sql).bind(bind).fetch_one(&store.pool).await.unwrap().get(0);
    store.pool.close().await;
    value
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4) strictly: every line is a `# HELP`, a
/// `# TYPE` before its family's samples, or a sample with well-formed labels and a number;
/// histogram buckets never decrease and `+Inf` equals `_count`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let name_ok = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for (number, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap();
            let name = parts.next().unwrap_or_else(|| panic!("{at}: a comment names a metric"));
            assert!(name_ok(name), "{at}: bad metric name");
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    let kind = parts.next().unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{at}: unknown type"
                    );
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "{at}: TYPE twice"
                    );
                }
                other => panic!("{at}: unknown comment {other}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "{at}: empty line");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{at}: no value"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{at}: value is not a number")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{at}: unclosed labels"));
                (name.to_string(), parse_labels(body, &at))
            }
        };
        assert!(name_ok(&name), "{at}: bad metric name");
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| types.contains_key(*base))
            .unwrap_or(name.as_str())
            .to_string();
        let family = if types.contains_key(&name) {
            name.clone()
        } else {
            family
        };
        assert!(types.contains_key(&family), "{at}: sample before its # TYPE");
        samples.push(Sample { name, labels, value });
    }
    // Histograms: cumulative buckets, +Inf == count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut labels = sample.labels.clone();
            let le = labels.remove("le").expect("a bucket has `le`");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("`le` is a number")
            };
            series
                .entry(format!("{labels:?}"))
                .or_default()
                .push((bound, sample.value));
        }
        for (labels, buckets) in series {
            for pair in buckets.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{family}{labels}: buckets in order");
                assert!(pair[0].1 <= pair[1].1, "{family}{labels}: buckets are cumulative");
            }
            let (last_bound, last) = *buckets.last().unwrap();
            assert!(last_bound.is_infinite(), "{family}{labels}: ends with +Inf");
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels)
                .unwrap_or_else(|| panic!("{family}{labels}: has _count"));
            assert_eq!(count.value, last, "{family}{labels}: +Inf equals _count");
        }
    }
    samples
}

fn parse_labels(body: &str, at: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{at}: bad label name {name:?}"
        );
        assert_eq!(chars.next(), Some('"'), "{at}: label values are quoted");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("{at}: bad escape {other:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("{at}: unterminated label value"),
            }
        }
        assert!(labels.insert(name, value).is_none(), "{at}: label twice");
        match chars.next() {
            Some(',') | None => {}
            other => panic!("{at}: expected `,` between labels, got {other:?}"),
        }
    }
    labels
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(base: &str) -> Vec<Sample> {
    let response = as_token(base, "GET", "/metrics", METRICS).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert!(
        response
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        response.header("content-type")
    );
    parse_prometheus(&String::from_utf8(response.body).unwrap())
}

async fn metrics_count_a_real_journey_run(mode: Mode) {
    let project = project();
    let mut config = config_for(mode, &project).await;
    // The first email is refused for good: one effect fails and its enrollment fails.
    let smtp = SmtpSink::start(1, 550).await;
    config.smtp_url = Some(smtp.url());
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;

    // Who may read it: a metrics token or an admin token.
    assert_eq!(http(&base, "GET", "/metrics", &[], b"").await.status, 401);
    assert_eq!(as_token(&base, "GET", "/metrics", "nobody").await.status, 401);
    assert_eq!(as_token(&base, "GET", "/metrics", KEY).await.status, 403);
    assert_eq!(as_token(&base, "GET", "/metrics", ADMIN).await.status, 200);

    let before = scrape(&base).await;
    assert_eq!(value(&before, "nurture_events_ingested_total", &[]), Some(0.0));
    assert_eq!(
        value(
            &before,
            "nurture_steps_total",
            &[("journey", JOURNEY), ("step", "tag-new")]
        ),
        None
    );
    assert!(
        value(&before, "nurture_queue_depth", &[]).is_some(),
        "the queue depth is read"
    );

    // Two contacts with an address, one without (their email is suppressed).
    let (ann, bob, cy) = (unique("ann"), unique("bob"), unique("cy"));
    let batch = json!({"batch": [
        {"type": "identify", "userId": ann, "traits": {"email": format!("{ann}@example.com")}},
        {"type": "identify", "userId": bob, "traits": {"email": format!("{bob}@example.com")}},
        {"type": "track", "userId": ann, "event": "Signed Up"},
        {"type": "track", "userId": bob, "event": "Signed Up"},
        {"type": "track", "userId": cy, "event": "Signed Up"},
    ]});
    let response = send(&base, "batch", batch).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    // Refused: one message with no event name, one request with an unknown key.
    assert_eq!(send(&base, "track", json!({"userId": ann})).await.status, 400);
    let refused = http(
        &base,
        "POST",
        "/v1/track",
        &[
            ("authorization", &basic("wrong-key")),
            ("content-type", "application/json"),
        ],
        json!({"userId": ann, "event": "Signed Up"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(refused.status, 401);

    let settled = eventually("every enrollment to finish", WAIT, || async {
        let counts = counts(&base).await;
        let by_status = &counts["by_status"];
        (by_status["completed"] == 2 && by_status["failed"] == 1).then_some(counts)
    })
    .await;
    assert_eq!(settled["enrolled"], 3);
    assert_eq!(settled["failed"], 1);

    let after = scrape(&base).await;
    let metric = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels).unwrap_or(0.0) as i64;
    assert_eq!(metric("nurture_events_ingested_total", &[]), 5);
    assert_eq!(metric("nurture_events_rejected_total", &[("reason", "invalid")]), 1);
    assert_eq!(
        metric("nurture_events_rejected_total", &[("reason", "unauthorized")]),
        1
    );
    // Every history row the batches wrote is a step counted, and nothing else.
    for step in ["tag-new", "hello", "breather", "tag-welcomed"] {
        let rows = scalar(
            &config,
            "SELECT COUNT(*) FROM step_history WHERE journey_id = 'ops-welcome' AND step = $1",
            step,
        )
        .await;
        assert_eq!(
            metric("nurture_steps_total", &[("journey", JOURNEY), ("step", step)]),
            rows,
            "steps of {step}"
        );
    }
    assert_eq!(
        metric("nurture_steps_total", &[("journey", JOURNEY), ("step", "tag-new")]),
        3
    );
    assert_eq!(
        metric("nurture_steps_total", &[("journey", JOURNEY), ("step", "tag-welcomed")]),
        2
    );
    assert_eq!(metric("nurture_effects_sent_total", &[("channel", "email")]), 1);
    assert_eq!(metric("nurture_effects_failed_total", &[("channel", "email")]), 1);
    assert_eq!(metric("nurture_effects_suppressed_total", &[("channel", "email")]), 1);
    assert_eq!(smtp.count(), 1);
    // Two waits ended (a wait may be held twice, by its process and the window loader).
    assert!(metric("nurture_timer_lateness_seconds_count", &[]) >= 2);
    assert_eq!(
        metric(
            "nurture_http_request_duration_seconds_count",
            &[("route", "/v1/{route}"), ("status", "2xx")]
        ),
        1
    );
    assert_eq!(
        metric(
            "nurture_http_request_duration_seconds_count",
            &[("route", "/v1/{route}"), ("status", "4xx")]
        ),
        2
    );
    assert!(
        metric(
            "nurture_http_request_duration_seconds_count",
            &[("route", "/v1/journeys/{id}/counts"), ("status", "2xx")]
        ) >= 1,
        "requests are counted under their route template"
    );
    assert_eq!(metric("nurture_journeys_paused", &[]), 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_metrics_count_a_real_journey_run() {
    metrics_count_a_real_journey_run(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_metrics_count_a_real_journey_run() {
    metrics_count_a_real_journey_run(Mode::Production).await;
}

/// A journey whose steps events move inside the ingest transaction: an answered `wait_for`,
/// then a goal reached while waiting.
const ANSWERED: &str = "ops-answered";
const ANSWERED_YAML: &str = r#"
id: ops-answered
trigger: {event: Trial Started}
re_entry: always
goal: {event: Paid}
steps:
  - id: await-activation
    wait_for: {event: Activated, timeout: 1h}
    on_event: tag-active
  - id: tag-idle
    tag: idle
  - id: tag-active
    tag: active
  - id: hold
    wait: 1h
"#;

async fn answered_counts(base: &str) -> Value {
    let response = as_token(base, "GET", &format!("/v1/journeys/{ANSWERED}/counts"), ADMIN).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_steps_events_move() {
    let project = project();
    std::fs::write(project.join("journeys/ops-answered.yaml"), ANSWERED_YAML).unwrap();
    let config = config_for(Mode::Embedded, &project).await;
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;
    let (ann, bob) = (unique("ann"), unique("bob"));
    let track = |user: String, event: &'static str| {
        let base = base.clone();
        async move {
            let response = send(&base, "track", json!({"userId": user, "event": event})).await;
            assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        }
    };
    track(ann.clone(), "Trial Started").await;
    track(bob.clone(), "Trial Started").await;
    eventually("both to wait for activation", WAIT, || async {
        (at_step(&answered_counts(&base).await, "await-activation") == 2).then_some(())
    })
    .await;
    // Ann's wait is answered; then both reach the goal, Ann while holding, Bob while waiting.
    track(ann.clone(), "Activated").await;
    eventually("Ann to hold", WAIT, || async {
        (at_step(&answered_counts(&base).await, "hold") == 1).then_some(())
    })
    .await;
    track(ann, "Paid").await;
    track(bob, "Paid").await;
    eventually("both to reach the goal", WAIT, || async {
        let counts = answered_counts(&base).await;
        (counts["by_status"]["completed"].as_i64().unwrap_or(0) + counts["by_status"]["exited"].as_i64().unwrap_or(0)
            == 2)
            .then_some(())
    })
    .await;

    // Every history row is a step counted, the event's moves included.
    let after = scrape(&base).await;
    let metric = |step: &str| {
        value(&after, "nurture_steps_total", &[("journey", ANSWERED), ("step", step)]).unwrap_or(0.0) as i64
    };
    let mut checked = 0;
    for step in ["await-activation", "tag-idle", "tag-active", "hold"] {
        let rows = scalar(
            &config,
            "SELECT COUNT(*) FROM step_history WHERE journey_id = 'ops-answered' AND step = $1",
            step,
        )
        .await;
        assert_eq!(metric(step), rows, "steps of {step}");
        checked += rows;
    }
    let all: f64 = after
        .iter()
        .filter(|s| s.name == "nurture_steps_total" && s.labels.get("journey").map(String::as_str) == Some(ANSWERED))
        .map(|s| s.value)
        .sum();
    let rows = scalar(
        &config,
        "SELECT COUNT(*) FROM step_history WHERE journey_id = $1",
        ANSWERED,
    )
    .await;
    assert_eq!(all as i64, rows, "every step of {ANSWERED}");
    assert!(
        metric("await-activation") >= 3 && metric("hold") >= 2,
        "the answer and the goals were recorded: {checked} rows"
    );
    env.stop().await;
}

/// The live counts' query reads its journey's enrollments through an index, not the whole
/// table. The planner of a small test table prefers a scan whatever the indexes, so sequential
/// scans are made unattractive on PostgreSQL; SQLite says which index it searches.
async fn live_counts_read_an_index(mode: Mode) {
    let project = project();
    let config = config_for(mode, &project).await;
    let env = TestEnv::start(config, Arc::new(SystemClock), false).await;
    let mut connection = env.engine.store.pool.acquire().await.unwrap();
    let sql = nurture::store::controls::COUNTS_SQL;
    let plan: Vec<String> = match mode {
        Mode::Production => {
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut *connection)
                .await
                .unwrap();
            let plan = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
                .bind(JOURNEY)
                .fetch_all(&mut *connection)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect();
            sqlx::query("RESET enable_seqscan")
                .execute(&mut *connection)
                .await
                .unwrap();
            plan
        }
        Mode::Embedded => sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .bind(JOURNEY)
            .fetch_all(&mut *connection)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(3))
            .collect(),
    };
    drop(connection);
    assert!(
        plan.iter().any(|line| line.contains("enrollments_by_journey")),
        "{mode:?}: the counts query reads `enrollments_by_journey`: {plan:#?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_live_counts_read_an_index() {
    live_counts_read_an_index(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_live_counts_read_an_index() {
    live_counts_read_an_index(Mode::Production).await;
}

// ---------------------------------------------------------------------------------------------
// Pause and resume

/// `nurture journeys ...` in the project directory, on the test's state and queue.
fn cli(config: &Config, project: &Path, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_nurture"));
    command
        .current_dir(project)
        .arg("journeys")
        .args(args)
        .env("NURTURE_SQLITE_PATH", &config.sqlite_path)
        .env("NURTURE_NAMESPACE", &config.namespace)
        .env("RUST_LOG", "warn");
    match (&config.database_url, &config.redis_url) {
        (Some(database), Some(redis)) => command.env("DATABASE_URL", database).env("REDIS_URL", redis),
        _ => command.env_remove("DATABASE_URL").env_remove("REDIS_URL"),
    };
    command.output().expect("the nurture binary runs")
}

async fn a_paused_journey_holds_its_contacts_until_resumed(mode: Mode) {
    let project = project();
    let config = config_for(mode, &project).await;
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;

    let first = unique("first");
    assert_eq!(
        send(&base, "track", json!({"userId": first, "event": "Signed Up"}))
            .await
            .status,
        200
    );
    eventually("the first contact to wait at `breather`", WAIT, || async {
        (at_step(&counts(&base).await, "breather") == 1).then_some(())
    })
    .await;
    let waiting_since = SystemClock.now();

    // Paused from the command line, a process of its own: the running engine learns of it.
    let output = cli(&config, &project, &["pause", JOURNEY]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("is paused"), "{}", stdout(&output));
    eventually("the engine to see the pause", Duration::from_secs(10), || async {
        env.engine.holds(JOURNEY).then_some(())
    })
    .await;

    // No new enrollments while paused.
    let second = unique("second");
    assert_eq!(
        send(&base, "track", json!({"userId": second, "event": "Signed Up"}))
            .await
            .status,
        200
    );
    // The 2 s wait comes due; the contact holds before its next step (the reconciler runs
    // every 300 ms here, and leaves it alone too).
    let due = waiting_since + chrono::Duration::seconds(2);
    let hold_until = due + chrono::Duration::milliseconds(1_500);
    tokio::time::sleep((hold_until - SystemClock.now()).to_std().unwrap_or_default()).await;
    let held = counts(&base).await;
    assert_eq!(held["paused"], true);
    assert_eq!(held["enrolled"], 1, "nobody enters a paused journey: {held}");
    assert_eq!(at_step(&held, "breather"), 1, "{held}");
    assert_eq!(held["by_status"]["completed"], 0, "{held}");
    env.stop().await;

    // A restart keeps the pause: a new process (without a reconciler, so only the resume
    // can move the held contact) holds it from the start.
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), false).await;
    let base = spawn_api(&env).await;
    assert!(env.engine.holds(JOURNEY), "the pause survives a restart");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counts(&base).await["by_status"]["completed"], 0);

    // Only an admin may resume; an unknown journey is a 404.
    assert_eq!(
        as_token(&base, "POST", &format!("/v1/journeys/{JOURNEY}/resume"), KEY)
            .await
            .status,
        403
    );
    assert_eq!(
        as_token(&base, "POST", "/v1/journeys/no-such-journey/resume", ADMIN)
            .await
            .status,
        404
    );
    let resumed = as_token(&base, "POST", &format!("/v1/journeys/{JOURNEY}/resume"), ADMIN).await;
    assert_eq!(resumed.status, 200, "{}", String::from_utf8_lossy(&resumed.body));
    let resumed = resumed.json();
    assert_eq!(resumed["was_paused"], true);
    assert!(resumed["requeued"].as_i64().unwrap() >= 1, "{resumed}");
    eventually("the held contact to continue", Duration::from_secs(10), || async {
        (counts(&base).await["by_status"]["completed"] == 1).then_some(())
    })
    .await;

    // Running again: new contacts enter. And the API pauses too.
    let third = unique("third");
    assert_eq!(
        send(&base, "track", json!({"userId": third, "event": "Signed Up"}))
            .await
            .status,
        200
    );
    eventually("the third contact to enter", WAIT, || async {
        (counts(&base).await["enrolled"] == 2).then_some(())
    })
    .await;
    let paused = as_token(&base, "POST", &format!("/v1/journeys/{JOURNEY}/pause"), ADMIN).await;
    assert_eq!(paused.status, 200);
    assert_eq!(paused.json()["already_paused"], false);
    assert_eq!(counts(&base).await["paused"], true);
    let output = cli(&config, &project, &["counts", JOURNEY, "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let from_cli: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(from_cli["paused"], true);
    assert_eq!(from_cli["enrolled"], 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_paused_journey_holds_its_contacts_until_resumed() {
    a_paused_journey_holds_its_contacts_until_resumed(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_a_paused_journey_holds_its_contacts_until_resumed() {
    a_paused_journey_holds_its_contacts_until_resumed(Mode::Production).await;
}

// ---------------------------------------------------------------------------------------------
// Live counts

async fn counts_show_each_step_and_status(mode: Mode) {
    let project = project();
    let config = config_for(mode, &project).await;
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;
    assert_eq!(
        as_token(&base, "GET", &format!("/v1/journeys/{JOURNEY}/counts"), KEY)
            .await
            .status,
        403
    );
    assert_eq!(
        as_token(&base, "GET", "/v1/journeys/nope/counts", ADMIN).await.status,
        404
    );
    let openapi = http(&base, "GET", "/openapi.json", &[], b"").await.json();
    for path in [
        "/v1/journeys/{id}/pause",
        "/v1/journeys/{id}/resume",
        "/v1/journeys/{id}/counts",
        "/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is in /openapi.json");
    }
    let empty = counts(&base).await;
    assert_eq!(empty["enrolled"], 0);
    let steps: Vec<&str> = empty["at_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["tag-new", "hello", "breather", "tag-welcomed"],
        "every step, in order"
    );

    for _ in 0..3 {
        let user = unique("counted");
        assert_eq!(
            send(&base, "track", json!({"userId": user, "event": "Signed Up"}))
                .await
                .status,
            200
        );
    }
    let waiting = eventually("three contacts waiting", WAIT, || async {
        let counts = counts(&base).await;
        (at_step(&counts, "breather") == 3).then_some(counts)
    })
    .await;
    assert_eq!(waiting["enrolled"], 3);
    assert_eq!(waiting["by_status"]["waiting"], 3);
    let done = eventually("three contacts done", WAIT, || async {
        let counts = counts(&base).await;
        (counts["by_status"]["completed"] == 3).then_some(counts)
    })
    .await;
    assert_eq!(at_step(&done, "breather"), 0);
    assert_eq!(done["failed"], 0);
    let output = cli(&config, &project, &["counts", JOURNEY]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("enrolled 3"), "{}", stdout(&output));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_counts_show_each_step_and_status() {
    counts_show_each_step_and_status(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_counts_show_each_step_and_status() {
    counts_show_each_step_and_status(Mode::Production).await;
}

// ---------------------------------------------------------------------------------------------
// Broadcasts

/// A broadcast journey firing at `at` for contacts on the `pro` plan; `re_entry: always`, so
/// only the claim in the database keeps it to one enrollment each.
fn write_broadcast(project: &Path, id: &str, at: chrono::DateTime<chrono::FixedOffset>) {
    let text = format!(
        "id: {id}\ntrigger:\n  at: \"{}\"\n  audience: traits.plan == \"pro\"\nre_entry: always\nsteps:\n  - id: mark\n    tag: {id}\n",
        at.to_rfc3339()
    );
    std::fs::write(project.join("journeys").join(format!("{id}.yaml")), text).unwrap();
}

fn shanghai(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::FixedOffset> {
    at.with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
}

async fn enrolled_in(config: &Config, journey: &str) -> i64 {
    scalar(
        config,
        "SELECT COUNT(*) FROM enrollments WHERE journey_id = $1",
        journey,
    )
    .await
}

async fn a_broadcast_fires_once(mode: Mode) {
    let project = project();
    let now = SystemClock.now();
    // Due soon, and one whose time passed while nothing ran (it fires late, once).
    write_broadcast(&project, "launch-news", shanghai(now + chrono::Duration::seconds(8)));
    write_broadcast(&project, "missed-news", shanghai(now - chrono::Duration::minutes(5)));
    let config = config_for(mode, &project).await;
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), true).await;
    let base = spawn_api(&env).await;
    let batch: Vec<Value> = [("pro", 2), ("free", 1)]
        .iter()
        .flat_map(|(plan, n)| {
            (0..*n).map(move |_| json!({"type": "identify", "userId": unique(plan), "traits": {"plan": plan}}))
        })
        .collect();
    assert_eq!(send(&base, "batch", json!({"batch": batch})).await.status, 200);

    // Two schedulers side by side, as two processes would run them.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let second = TestEnv::start(config.clone(), Arc::new(SystemClock), false).await;
    let schedulers = [env.engine.clone(), second.engine.clone()].map(|engine| {
        tokio::spawn(nurture::app::run_scheduler(
            engine,
            unique("scheduler"),
            until_stopped(stopped.clone()),
        ))
    });
    eventually("the missed broadcast to fire late", WAIT, || async {
        (enrolled_in(&config, "missed-news").await == 2).then_some(())
    })
    .await;
    eventually("the broadcast to fire", WAIT, || async {
        (enrolled_in(&config, "launch-news").await == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        enrolled_in(&config, "launch-news").await,
        2,
        "once across two processes"
    );
    assert_eq!(
        enrolled_in(&config, "missed-news").await,
        2,
        "once across two processes"
    );
    let _ = stop.send(true);
    for scheduler in schedulers {
        let _ = scheduler.await;
    }
    second.stop().await;

    // A restart after both fired: neither fires again.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let restarted = tokio::spawn(nurture::app::run_scheduler(
        env.engine.clone(),
        unique("scheduler"),
        until_stopped(stopped.clone()),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(true);
    let _ = restarted.await;
    assert_eq!(enrolled_in(&config, "launch-news").await, 2, "once across restarts");
    assert_eq!(enrolled_in(&config, "missed-news").await, 2, "once across restarts");
    let tagged = scalar(
        &config,
        "SELECT COUNT(*) FROM contact_tags WHERE tag = $1",
        "launch-news",
    )
    .await;
    assert_eq!(tagged, 2, "the audience got it, the free plan did not");
    env.stop().await;
}

/// A process claims a broadcast and dies after two pages of its audience: the tick stays
/// its own while the lease runs, then another process's scheduler resumes it after the last
/// committed page, and every contact of the audience is enrolled exactly once.
async fn an_interrupted_broadcast_resumes(mode: Mode) {
    use nurture::engine::runner::{Firing, TICK_LEASE};
    let project = project();
    let clock = nurture::engine::clock::VirtualClock::new(SystemClock.now());
    let at = clock.now() - chrono::Duration::minutes(5);
    write_broadcast(&project, "resumed-news", shanghai(at));
    let config = config_for(mode, &project).await;
    let env = TestEnv::start(config.clone(), Arc::new(clock.clone()), false).await;
    let base = spawn_api(&env).await;
    const PRO: i64 = 23;
    let batch: Vec<Value> = [("pro", PRO), ("free", 7)]
        .iter()
        .flat_map(|(plan, n)| {
            (0..*n).map(move |_| json!({"type": "identify", "userId": unique(plan), "traits": {"plan": plan}}))
        })
        .collect();
    assert_eq!(send(&base, "batch", json!({"batch": batch})).await.status, 200);
    let journey = env
        .engine
        .journey_by_id("resumed-news")
        .expect("the broadcast compiled");
    let tick: chrono::DateTime<chrono::Utc> = shanghai(at).into();
    let tick = tick.with_timezone(&chrono::Utc);

    // The first process: two pages of 6 contacts, then it "dies".
    let doomed = Firing {
        page: 6,
        stop_after_pages: Some(2),
    };
    let first = env
        .engine
        .fire_tick(&journey, tick, "doomed", doomed)
        .await
        .unwrap()
        .expect("claimed");
    let partly = enrolled_in(&config, "resumed-news").await;
    assert_eq!(first as i64, partly);
    assert!(partly > 0 && partly < PRO, "a part of the audience: {partly}");

    // Its lease still runs: nobody takes the tick over.
    let second = TestEnv::start(config.clone(), Arc::new(clock.clone()), false).await;
    assert_eq!(second.engine.resume_abandoned_ticks("early").await.unwrap(), 0);
    assert_eq!(
        second.engine.fire_schedule(&journey, tick, "early").await.unwrap(),
        None
    );
    assert_eq!(enrolled_in(&config, "resumed-news").await, partly);

    // Once it ran out, the other process's scheduler resumes the tick after the last page.
    clock.advance(TICK_LEASE + chrono::Duration::seconds(1));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(nurture::app::run_scheduler(
        second.engine.clone(),
        unique("scheduler"),
        async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    eventually("the rest of the audience to be enrolled", WAIT, || async {
        (enrolled_in(&config, "resumed-news").await == PRO).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let _ = scheduler.await;
    let contacts = scalar(
        &config,
        "SELECT COUNT(DISTINCT contact_id) FROM enrollments WHERE journey_id = $1",
        "resumed-news",
    )
    .await;
    assert_eq!(contacts, PRO, "every contact of the audience");
    assert_eq!(enrolled_in(&config, "resumed-news").await, PRO, "each once");
    let counted = scalar(
        &config,
        "SELECT enrolled FROM schedule_ticks WHERE journey_id = $1",
        "resumed-news",
    )
    .await;
    assert_eq!(counted, PRO, "the tick counts both processes' enrollments");

    // Finished: neither resumed nor fired again, even after another lease.
    clock.advance(TICK_LEASE + chrono::Duration::seconds(1));
    assert_eq!(env.engine.resume_abandoned_ticks("late").await.unwrap(), 0);
    assert_eq!(env.engine.fire_schedule(&journey, tick, "late").await.unwrap(), None);
    assert_eq!(enrolled_in(&config, "resumed-news").await, PRO);
    second.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_an_interrupted_broadcast_resumes() {
    an_interrupted_broadcast_resumes(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_an_interrupted_broadcast_resumes() {
    an_interrupted_broadcast_resumes(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_broadcast_fires_once() {
    a_broadcast_fires_once(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_a_broadcast_fires_once() {
    a_broadcast_fires_once(Mode::Production).await;
}

#[test]
fn a_broadcast_time_needs_an_offset_and_a_past_one_is_a_warning() {
    let project = project();
    let journeys = project.join("journeys");
    std::fs::write(
        journeys.join("no-offset.yaml"),
        "id: no-offset\ntrigger:\n  at: 2026-12-24T09:00:00\n  audience: traits.plan == \"pro\"\nsteps:\n  - id: mark\n    tag: x\n",
    )
    .unwrap();
    let output = nurture(&project, &["validate", "journeys/no-offset.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("journeys/no-offset.yaml:3:7: error[J075]: `at: 2026-12-24T09:00:00` has no offset"),
        "{}",
        stderr(&output)
    );
    std::fs::remove_file(journeys.join("no-offset.yaml")).unwrap();
    std::fs::write(
        journeys.join("long-ago.yaml"),
        "id: long-ago\ntrigger:\n  at: \"2020-01-01T09:00:00+08:00\"\n  audience: traits.plan == \"pro\"\nsteps:\n  - id: mark\n    tag: x\n",
    )
    .unwrap();
    let output = nurture(&project, &["validate", "journeys/long-ago.yaml"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning is no error: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(
            "journeys/long-ago.yaml:3:7: warning[J076]: `at: 2020-01-01T09:00:00+08:00` is more than a day ago"
        ),
        "{}",
        stderr(&output)
    );
}
