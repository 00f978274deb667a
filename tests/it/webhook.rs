//! The `webhook` step against a real local HTTP server: retries of timeouts, 408 and 429,
//! 4xx answers as final, the refusal of internal addresses (SSRF), and `validate`'s warnings.
//! `sql-handoff.yaml`'s alert runs end to end in `engine.rs`.

use crate::support::{
    Answer, HttpFake, Mode, TestEnv, eventually, nurture, scratch_dir, stderr, test_config, virtual_clock,
};
use nurture::engine::VirtualClock;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::json;
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A project with one journey per `(id, trigger event, url)`, each calling its URL with the
/// contact's email in the body.
fn project(hooks: &[(&str, &str, &str)]) -> PathBuf {
    let dir = scratch_dir("webhooks");
    std::fs::create_dir_all(dir.join("journeys")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    for (id, event, url) in hooks {
        let journey = format!(
            "id: {id}\ntrigger: {{event: {event}}}\nre_entry: always\nsteps:\n  - id: call\n    webhook:\n      url: \"{url}\"\n      body:\n        email: \"{{{{contact.email}}}}\"\n"
        );
        std::fs::write(dir.join("journeys").join(format!("{id}.yaml")), journey).unwrap();
    }
    dir
}

async fn start(
    mode: Mode,
    project: &Path,
    configure: impl FnOnce(&mut nurture::config::Config),
) -> (TestEnv, VirtualClock) {
    let mut config = test_config(mode, &project.join("journeys")).await;
    config.reconcile_grace = Duration::ZERO;
    config.webhooks.timeout = Duration::from_millis(500);
    configure(&mut config);
    let clock = virtual_clock("2026-01-05T10:00:00+08:00");
    (TestEnv::start(config, Arc::new(clock.clone()), false).await, clock)
}

async fn enroll(env: &TestEnv, email: &str, event: &str) -> i64 {
    let contact = env
        .engine
        .create_contact(&NewContact {
            email: Some(email.into()),
            ..NewContact::default()
        })
        .await
        .unwrap();
    let facts = EventFacts {
        name: event.into(),
        properties: Default::default(),
        timestamp: None,
    };
    assert_eq!(env.engine.track(contact, facts).await.unwrap().len(), 1);
    contact
}

/// `(status, last error)` of the contact's webhook effect: an enrollment that reached its
/// end may still owe its last call.
async fn effect(env: &TestEnv, contact: i64) -> Option<(String, Option<String>)> {
    let row = sqlx::query("SELECT status, last_error FROM effects WHERE contact_id = $1")
        .bind(contact)
        .fetch_optional(&env.engine.store.pool)
        .await
        .unwrap()?;
    Some((row.get(0), row.get(1)))
}

/// Waits for the call to be `done` or `failed`, moving the clock a minute at each look so that
/// retries come due. Returns the last error.
async fn settles(env: &TestEnv, clock: &VirtualClock, contact: i64, status: &str) -> Option<String> {
    eventually(&format!("the call {status}"), WAIT, || async {
        clock.advance(chrono::Duration::minutes(1));
        env.engine.reconcile().await.unwrap();
        match effect(env, contact).await {
            Some((now, error)) if now == status => Some(error),
            _ => None,
        }
    })
    .await
}

async fn timeouts_408_and_429_are_retried_and_other_4xx_are_final(mode: Mode) {
    let target = HttpFake::start(|index, request| {
        if request.path.starts_with("/gone") {
            return Answer::new(404, r#"{"error": "no such hook"}"#);
        }
        match index {
            0 => Answer::new(429, r#"{"error": "slow down"}"#),
            1 => Answer::new(408, ""),
            // Slower than the 500 ms timeout: a lost answer, tried again.
            2 => Answer {
                delay: Duration::from_secs(2),
                ..Answer::new(200, "{}")
            },
            _ => Answer::new(200, r#"{"ok": true}"#),
        }
    })
    .await;
    let project = project(&[
        ("crm", "Signed Up", &format!("{}/crm/leads", target.base)),
        ("gone", "Churned", &format!("{}/gone", target.base)),
    ]);
    let (env, clock) = start(mode, &project, |config| {
        config.webhooks.allow_networks = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let ada = enroll(&env, "ada@example.com", "Signed Up").await;
    settles(&env, &clock, ada, "done").await;
    let calls = target.requests();
    assert_eq!(calls.len(), 4, "429, 408, a timeout, then 200");
    assert!(calls.iter().all(|c| c.json() == json!({"email": "ada@example.com"})));
    let keys: Vec<_> = calls
        .iter()
        .map(|c| c.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for every attempt: {keys:?}"
    );

    let bo = enroll(&env, "bo@example.com", "Churned").await;
    let error = settles(&env, &clock, bo, "failed").await.unwrap_or_default();
    assert!(
        error.contains("answered 404") && error.contains("no such hook"),
        "{error}"
    );
    assert_eq!(target.count(), 5, "a 404 is not tried again");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_408_and_429_are_retried_and_other_4xx_are_final_embedded() {
    timeouts_408_and_429_are_retried_and_other_4xx_are_final(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_408_and_429_are_retried_and_other_4xx_are_final_production() {
    timeouts_408_and_429_are_retried_and_other_4xx_are_final(Mode::Production).await;
}

async fn internal_addresses_are_refused_unless_allowed(mode: Mode) {
    let target = HttpFake::start(|_, _| Answer::new(204, "")).await;
    // A name, not an address: the check is on what it resolves to.
    let url = format!("http://localhost:{}/hook", target.port);
    let project = project(&[("hook", "Signed Up", &url)]);

    let (env, clock) = start(mode, &project, |_| {}).await;
    let ada = enroll(&env, "ada@example.com", "Signed Up").await;
    let error = settles(&env, &clock, ada, "failed").await.unwrap_or_default();
    assert!(
        error.contains("refused to call localhost") && error.contains("a loopback address"),
        "{error}"
    );
    assert_eq!(target.count(), 0, "nothing reached the internal address");
    env.stop().await;

    let (env, clock) = start(mode, &project, |config| {
        config.webhooks.allow_networks = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
    })
    .await;
    let ada = enroll(&env, "ada@example.com", "Signed Up").await;
    settles(&env, &clock, ada, "done").await;
    assert_eq!(target.count(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_unless_allowed_embedded() {
    internal_addresses_are_refused_unless_allowed(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_unless_allowed_production() {
    internal_addresses_are_refused_unless_allowed(Mode::Production).await;
}

#[test]
fn validate_warns_about_plain_http_and_internal_webhook_addresses() {
    let project = project(&[
        ("intranet", "Signed Up", "http://10.0.0.5/hook"),
        ("public", "Signed Up", "https://erp.example.com/hooks/lead"),
    ]);
    let output = nurture(&project, &["validate"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "warnings do not fail validate: {text}");
    assert!(text.contains("intranet.yaml:7:12: warning[J071]"), "{text}");
    assert!(
        text.contains("warning[J072]: the webhook url points at 10.0.0.5, a private address"),
        "{text}"
    );
    assert!(text.contains("allow_networks"), "{text}");
    assert!(!text.contains("public.yaml"), "{text}");
}
