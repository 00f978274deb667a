//! Secrets: none reaches the logs of a real `nurture serve`, right or wrong, and signed links
//! expire by purpose over HTTP (`channels::links`). Scopes are in `security.rs`.

use crate::support::{KilledOnDrop, Mode, TestEnv, eventually, http, scratch_dir, spawn_api, test_config};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "admin-secrets";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Every credential and wrong credential goes through a real `nurture serve` logging at
/// `debug` for every crate; none of them may appear in what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_right_or_wrong() {
    let dir = crate::sales::project("4h", "");
    let work = scratch_dir("secret-logs");
    let unique = crate::support::unique("s");
    let secret = |name: &str| format!("{name}-{unique}");
    let (write_key, admin, bounce, rep, inbound) = (
        secret("logwk"),
        secret("logadmin"),
        secret("logbounce"),
        secret("logrep"),
        secret("loginbound"),
    );
    let wrong: Vec<String> = ["wrongwk", "wrongadmin", "wrongbounce", "wronginbound"]
        .iter()
        .map(|name| secret(name))
        .collect();
    // The project's directory, where `serve` finds sales.yaml, scoring.yaml and nurture.toml.
    std::fs::write(
        dir.join("nurture.toml"),
        format!("[sms]\ninbound_secret = \"{inbound}\"\n"),
    )
    .unwrap();
    let log = work.join("serve.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = KilledOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nurture"))
            .arg("serve")
            .arg("--journeys")
            .arg(dir.join("journeys"))
            .arg("--templates")
            .arg(dir.join("templates"))
            .current_dir(&dir)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("NURTURE_LISTEN", format!("127.0.0.1:{port}"))
            .env("NURTURE_WRITE_KEYS", &write_key)
            .env("NURTURE_ADMIN_TOKENS", &admin)
            .env("NURTURE_BOUNCE_TOKENS", &bounce)
            .env("NURTURE_REP_TOKENS", format!("ann:{rep}"))
            .env("NURTURE_OUTBOX", work.join("outbox"))
            .env("NURTURE_SQLITE_PATH", work.join("nurture.db"))
            .env("RUST_LOG", "debug")
            .env("NURTURE_LOG_FORMAT", "json")
            .stdout(Stdio::from(std::fs::File::create(work.join("serve.out")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start nurture serve"),
    );
    let host = format!("127.0.0.1:{port}");
    eventually("nurture serve to listen", Duration::from_secs(60), || {
        let host = host.clone();
        async move { tokio::net::TcpStream::connect(&host).await.ok().map(|_| ()) }
    })
    .await;

    let event = |key: &str| format!(r#"{{"writeKey":"{key}","userId":"u1","event":"Logged"}}"#);
    let json = ("content-type", "application/json");
    let mut statuses = Vec::new();
    let mut cookies = Vec::new();
    for (key, body_key) in [(&write_key, &write_key), (&wrong[0], &wrong[0]), (&admin, &admin)] {
        let auth = basic(key, "");
        statuses.push(
            http(
                &base,
                "POST",
                "/v1/track",
                &[("authorization", &auth), json],
                event(body_key).as_bytes(),
            )
            .await
            .status,
        );
        statuses.push(
            http(&base, "POST", "/v1/track", &[json], event(body_key).as_bytes())
                .await
                .status,
        );
        statuses.push(
            http(&base, "GET", &format!("/v1/projects/{key}/settings"), &[], b"")
                .await
                .status,
        );
    }
    for token in [&admin, &wrong[1], &rep, &write_key, &bounce] {
        let auth = format!("Bearer {token}");
        for path in [
            "/v1/contacts?user_id=u1",
            "/v1/sales/leads",
            "/v1/reports/kpis",
            "/v1/enrollments/failed",
            "/dashboard",
        ] {
            statuses.push(http(&base, "GET", path, &[("authorization", &auth)], b"").await.status);
        }
        let form = format!("token={token}");
        let signed_in = http(
            &base,
            "POST",
            "/dashboard/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
        .await;
        statuses.push(signed_in.status);
        if let Some(cookie) = signed_in.header("set-cookie") {
            let cookie = cookie.split(';').next().unwrap().to_string();
            statuses.push(
                http(&base, "GET", "/dashboard", &[("cookie", &cookie)], b"")
                    .await
                    .status,
            );
            // The session's signed value is a credential too.
            cookies.push(cookie.split_once('=').unwrap().1.to_string());
        }
    }
    for token in [&bounce, &wrong[2], &write_key] {
        for auth in [format!("Bearer {token}"), basic("postmark", token)] {
            let report = r#"{"type":"bounce","email":"nobody@example.com","bounce_type":"hard"}"#;
            statuses.push(
                http(
                    &base,
                    "POST",
                    "/v1/email/bounces",
                    &[("authorization", &auth), json],
                    report.as_bytes(),
                )
                .await
                .status,
            );
        }
    }
    for given in [&inbound, &wrong[3]] {
        let path = format!("/v1/sms/inbound?secret={given}");
        statuses.push(
            http(
                &base,
                "POST",
                &path,
                &[json],
                br#"{"from":"+8613800000000","body":"hello"}"#,
            )
            .await
            .status,
        );
    }
    for expected in [200, 401, 403, 404, 303] {
        assert!(
            statuses.contains(&expected),
            "no {expected} among {statuses:?}: the requests did not reach their checks"
        );
    }
    drop(server);

    let written = std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(work.join("serve.out")).unwrap();
    assert!(
        written.lines().count() > 10,
        "nurture serve logged almost nothing: {written}"
    );
    let mut all = vec![write_key, admin, bounce, rep, inbound];
    all.extend(wrong);
    assert!(!cookies.is_empty(), "the admin signed in");
    all.extend(cookies);
    for secret in &all {
        let lines: Vec<&str> = written.lines().filter(|line| line.contains(secret.as_str())).collect();
        assert!(lines.is_empty(), "`{secret}` is in the log:\n{}", lines.join("\n"));
    }
}

/// Names of the contact's events, from the 360 view.
async fn events_of(base: &str, contact: i64) -> Vec<String> {
    let auth = format!("Bearer {ADMIN}");
    let view = http(
        base,
        "GET",
        &format!("/v1/contacts/{contact}"),
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(view.status, 200);
    view.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_string())
        .collect()
}

/// A click token as `links::track` signs it, with `expiry` (Unix seconds) or, as before
/// links had one, without.
fn click_token(env: &TestEnv, contact: i64, index: usize, expiry: Option<i64>) -> String {
    use base64::Engine as _;
    let mut click = serde_json::json!({"c": contact, "m": "7/intro-email/3", "j": "handoff", "t": "intro",
        "l": "", "u": "https://example.com/pricing", "i": index});
    if let Some(expiry) = expiry {
        click["x"] = expiry.into();
    }
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(click.to_string());
    env.engine
        .links
        .sign(nurture::channels::links::Purpose::Click, &payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_links_expire_by_purpose_and_links_from_before_expiries_keep_working_for_a_while() {
    use nurture::channels::links::Purpose;
    let dir = crate::sales::project("4h", "");
    let mut config = test_config(Mode::Embedded, &dir.join("journeys")).await;
    config.admin_tokens = vec![ADMIN.into()];
    // A month after the release that added expiries.
    let clock = crate::support::virtual_clock("2027-01-04T00:00:00Z");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    let base = spawn_api(&env).await;
    let ada = crate::sales::contact(&env, "ada@example.com").await;
    let days = chrono::Duration::days;
    let now = || env.engine.clock.now();

    let unsubscribe = env.engine.links.unsubscribe_token(ada, 0, now());
    let legacy_unsubscribe = env.engine.links.sign(Purpose::Unsubscribe, &format!("{ada}-0"));
    let fresh_click = click_token(&env, ada, 0, Some((now() + days(90)).timestamp()));
    let legacy_click = click_token(&env, ada, 1, None);
    let page = |token: String| {
        let base = base.clone();
        async move { http(&base, "GET", &format!("/u/{token}"), &[], b"").await.status }
    };
    assert_eq!(page(unsubscribe.clone()).await, 200);
    assert_eq!(
        page(legacy_unsubscribe.clone()).await,
        200,
        "a link signed before expiries"
    );
    let clicked = http(&base, "GET", &format!("/c/{legacy_click}"), &[], b"").await;
    assert_eq!(
        (clicked.status, clicked.header("location")),
        (302, Some("https://example.com/pricing"))
    );
    assert_eq!(
        events_of(&base, ada).await,
        ["Email Link Clicked"],
        "a legacy click counts"
    );

    // 91 days on: clicks still redirect but count nothing; unsubscribe links still work.
    clock.advance(days(91));
    let clicked = http(&base, "GET", &format!("/c/{fresh_click}"), &[], b"").await;
    assert_eq!(
        (clicked.status, clicked.header("location")),
        (302, Some("https://example.com/pricing"))
    );
    assert_eq!(
        events_of(&base, ada).await,
        ["Email Link Clicked"],
        "the expired click is not counted"
    );
    assert_eq!(page(unsubscribe.clone()).await, 200);

    // A year after sending: the unsubscribe page points to the latest email, and a POST
    // changes nothing. The legacy link (as if signed on 2026-12-01) expired a month earlier.
    clock.advance(days(275));
    assert_eq!(page(unsubscribe.clone()).await, 410);
    assert_eq!(page(legacy_unsubscribe).await, 410);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let refused = http(
        &base,
        "POST",
        &format!("/u/{unsubscribe}"),
        &form,
        b"List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(refused.status, 410);
    assert_eq!(refused.json()["error"]["field"], "token");
    assert!(!events_of(&base, ada).await.contains(&"Unsubscribed".to_string()));
    // A fresh link works as ever.
    let today = env.engine.links.unsubscribe_token(ada, 0, now());
    assert_eq!(page(today).await, 200);
    env.stop().await;
}
