//! The durable engine through the real queue: SQLite (embedded) and PostgreSQL + Redis.

use crate::support::{Mode, TestEnv, count_files, eventually, root, test_config, virtual_clock};
use nurture::engine::VirtualClock;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn event(name: &str, properties: serde_json::Value) -> EventFacts {
    EventFacts {
        name: name.into(),
        properties: properties.as_object().cloned().unwrap_or_default(),
        timestamp: None,
    }
}

/// `(status, step)` of the contact's enrollment in a journey.
async fn enrollment(env: &TestEnv, contact: i64, journey: &str) -> Option<(String, Option<String>)> {
    let row = sqlx::query(
        "SELECT status, step FROM enrollments WHERE contact_id = $1 AND journey_id = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(contact)
    .bind(journey)
    .fetch_optional(&env.engine.store.pool)
    .await
    .unwrap()?;
    Some((row.get(0), row.get(1)))
}

async fn at(env: &TestEnv, contact: i64, journey: &str, status: &str, step: Option<&str>) {
    let want = (status.to_string(), step.map(str::to_string));
    eventually(&format!("{journey} at {want:?}"), WAIT, || async {
        (enrollment(env, contact, journey).await.as_ref() == Some(&want)).then_some(())
    })
    .await;
}

async fn scalar(env: &TestEnv, sql: &'static str, contact: i64) -> i64 {
    sqlx::query(sql)
        .bind(contact)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0)
}

/// Moves the virtual clock and lets the reconciler hand the now-due steps to the queue.
async fn advance_clock(env: &TestEnv, clock: &VirtualClock, by: chrono::Duration) {
    clock.advance(by);
    env.engine.reconcile().await.unwrap();
}

async fn whitepaper_story(mode: Mode) {
    let mut config = test_config(mode, &root().join("journeys")).await;
    config.reconcile_grace = Duration::ZERO;
    let clock = virtual_clock("2026-01-05T10:00:00+08:00");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    let engine = &env.engine;
    let ada = engine
        .create_contact(&NewContact {
            email: Some("ada@example.com".into()),
            score: 20,
            traits: json!({"first_name": "Ada"}).as_object().cloned().unwrap(),
            ..NewContact::default()
        })
        .await
        .unwrap();
    let bo = engine
        .create_contact(&NewContact {
            email: Some("bo@example.com".into()),
            phone: Some("+8613800138000".into()),
            score: 20,
            traits: json!({"industry": "manufacturing"}).as_object().cloned().unwrap(),
            ..NewContact::default()
        })
        .await
        .unwrap();

    // Download -> tag -> wait an hour.
    for contact in [ada, bo] {
        let started = engine
            .track(contact, event("Whitepaper Downloaded", json!({"topic": "automation"})))
            .await
            .unwrap();
        assert_eq!(started.len(), 1, "the download enrolls the contact");
        at(&env, contact, "whitepaper-nurture", "waiting", Some("wait-hour")).await;
    }
    assert_eq!(
        scalar(
            &env,
            "SELECT COUNT(*) FROM contact_tags WHERE contact_id = $1 AND tag = 'high-intent'",
            ada
        )
        .await,
        1
    );

    // Re-entry is refused while (and after) enrolled.
    let again = engine
        .track(ada, event("Whitepaper Downloaded", json!({"topic": "automation"})))
        .await
        .unwrap();
    assert!(again.is_empty(), "re_entry: never");

    // An hour later the email goes out and the wait_for starts.
    advance_clock(&env, &clock, chrono::Duration::hours(1)).await;
    for contact in [ada, bo] {
        at(
            &env,
            contact,
            "whitepaper-nurture",
            "waiting",
            Some("await-pricing-click"),
        )
        .await;
    }
    eventually("two intro emails in the outbox", WAIT, || async {
        (count_files(&env.config.outbox.join("mail")) == 2).then_some(())
    })
    .await;

    // Ada clicks pricing: the wait is answered and she goes to sales.
    engine
        .track(ada, event("Email Link Clicked", json!({"link": "pricing"})))
        .await
        .unwrap();
    at(&env, ada, "whitepaper-nurture", "completed", None).await;
    eventually("Ada assigned to a rep", WAIT, || async {
        (scalar(
            &env,
            "SELECT COUNT(*) FROM assignments WHERE contact_id = $1 AND team = 'inbound'",
            ada,
        )
        .await
            == 1)
            .then_some(())
    })
    .await;

    // Bo never clicks: after three days the branch sends manufacturing leads an SMS.
    advance_clock(&env, &clock, chrono::Duration::days(3)).await;
    at(&env, bo, "whitepaper-nurture", "completed", None).await;
    eventually("Bo's reminder SMS", WAIT, || async {
        (count_files(&env.config.outbox.join("sms")) == 1).then_some(())
    })
    .await;
    let history = scalar(&env, "SELECT COUNT(*) FROM step_history h JOIN enrollments e ON e.id = h.enrollment_id WHERE e.contact_id = $1 AND h.outcome = 'timed_out'", bo).await;
    assert_eq!(history, 1, "the timeout path was taken once");
    assert_eq!(
        scalar(&env, "SELECT COUNT(*) FROM assignments WHERE contact_id = $1", bo).await,
        0
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitepaper_story_runs_on_sqlite() {
    whitepaper_story(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitepaper_story_runs_on_postgres_and_redis() {
    whitepaper_story(Mode::Production).await;
}
