//! Editing a live journey: running enrollments finish on their version, or move as
//! `on_change: migrate` says, and `plan` shows which before it happens.

use crate::support::{Mode, TestEnv, eventually, scratch_dir, test_config, virtual_clock};
use nurture::engine::plan::{Action, Census, plan};
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

const V1: &str = "id: nurture-trial\ntrigger: {event: Trial Started}\nre_entry: always\nsteps:\n  - id: pause\n    wait: 1d\n  - id: tag-v1\n    tag: saw-v1\n";

fn v2(on_change: &str) -> String {
    format!(
        "id: nurture-trial\ntrigger: {{event: Trial Started}}\nre_entry: always\n{on_change}steps:\n  - id: hold\n    wait: 1d\n  - id: tag-v2\n    tag: saw-v2\n"
    )
}

async fn tags(env: &TestEnv, contact: i64) -> Vec<String> {
    sqlx::query("SELECT tag FROM contact_tags WHERE contact_id = $1 ORDER BY tag")
        .bind(contact)
        .fetch_all(&env.engine.store.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn run(on_change: &str, expected_tag: &str) -> Vec<nurture::engine::plan::Line> {
    let dir = scratch_dir("versions");
    let journeys = dir.join("journeys");
    std::fs::create_dir_all(&journeys).unwrap();
    std::fs::write(journeys.join("nurture-trial.yaml"), V1).unwrap();
    let mut config = test_config(Mode::Embedded, &journeys).await;
    config.reconcile_grace = Duration::ZERO;
    let clock = virtual_clock("2026-01-05T10:00:00+08:00");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    let contact = env
        .engine
        .create_contact(&NewContact {
            email: Some("v@example.com".into()),
            ..NewContact::default()
        })
        .await
        .unwrap();
    env.engine
        .track(
            contact,
            EventFacts {
                name: "Trial Started".into(),
                ..EventFacts::default()
            },
        )
        .await
        .unwrap();
    eventually("the contact to wait on version 1", Duration::from_secs(60), || async {
        let row = sqlx::query("SELECT status FROM enrollments WHERE contact_id = $1")
            .bind(contact)
            .fetch_optional(&env.engine.store.pool)
            .await
            .unwrap();
        row.filter(|r| r.get::<String, _>(0) == "waiting").map(|_| ())
    })
    .await;

    std::fs::write(journeys.join("nurture-trial.yaml"), v2(on_change)).unwrap();
    let (catalog, _, diagnostics) = nurture::app::compile_project(&env.config).unwrap();
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let mut connection = env.engine.store.pool.acquire().await.unwrap();
    let census: Vec<Census> = nurture::store::enrollments::census(&mut connection)
        .await
        .unwrap()
        .into_iter()
        .map(|(journey, version, step, count)| Census {
            journey,
            version,
            step,
            count,
        })
        .collect();
    drop(connection);
    let lines = plan(&catalog, &census);
    nurture::app::reload(&env.engine).await.unwrap();

    clock.advance(chrono::Duration::days(1));
    env.engine.reconcile().await.unwrap();
    eventually(
        &format!("the contact to be tagged {expected_tag}"),
        Duration::from_secs(60),
        || async { (tags(&env, contact).await == vec![expected_tag.to_string()]).then_some(()) },
    )
    .await;
    let versions: i64 = sqlx::query("SELECT COUNT(*) FROM journey_versions WHERE journey_id = 'nurture-trial'")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 2, "every compiled version is stored");
    env.stop().await;
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_enrollment_finishes_on_the_version_it_started_on() {
    let lines = run("", "saw-v1").await;
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0].step.as_str(), lines[0].count, &lines[0].action),
        ("pause", 1, &Action::Keep)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_migrate_moves_running_enrollments_as_the_plan_said() {
    let lines = run("on_change: migrate\nmigrate: {pause: hold}\n", "saw-v2").await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].action, Action::Move { to: "hold".into() });
    let text = nurture::engine::plan::render(&lines);
    assert!(text.contains("move from version") && text.contains("`hold`"), "{text}");
}
