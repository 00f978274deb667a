//! Effects that fail: transient errors retry with backoff, permanent ones go to the failed list.

use crate::support::{Mode, SmtpSink, TestEnv, eventually, root, test_config};
use nurture::engine::SystemClock;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

async fn run_welcome(sink: &SmtpSink, mode: Mode) -> (TestEnv, i64) {
    let mut config = test_config(mode, &root().join("tests/fixtures/engine/journeys")).await;
    config.smtp_url = Some(sink.url());
    config.max_attempts = 4;
    let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
    let contact = env
        .engine
        .create_contact(&NewContact {
            email: Some("retry@example.com".into()),
            ..NewContact::default()
        })
        .await
        .unwrap();
    env.engine
        .track(
            contact,
            EventFacts {
                name: "Signed Up".into(),
                ..EventFacts::default()
            },
        )
        .await
        .unwrap();
    (env, contact)
}

async fn status(env: &TestEnv, contact: i64) -> String {
    sqlx::query("SELECT status FROM enrollments WHERE contact_id = $1 AND journey_id = 'welcome'")
        .bind(contact)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_smtp_failure_is_retried_until_the_mail_is_accepted() {
    let sink = SmtpSink::start(2, 451).await;
    let (env, contact) = run_welcome(&sink, Mode::Production).await;
    eventually(
        "both emails accepted by the SMTP server",
        Duration::from_secs(60),
        || async { (sink.count() == 2).then_some(()) },
    )
    .await;
    eventually("the enrollment to complete", Duration::from_secs(10), || async {
        (status(&env, contact).await == "completed").then_some(())
    })
    .await;
    let attempts: i64 = sqlx::query("SELECT attempts FROM effects WHERE step = 'welcome-email'")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get::<i32, _>(0)
        .into();
    assert_eq!(attempts, 3, "two refusals, then accepted");
    assert!(
        sink.messages.lock().unwrap()[0].contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "marketing mail carries RFC 8058 headers"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count(), 2, "nothing is sent twice");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_smtp_refusal_moves_the_enrollment_to_the_failed_list() {
    let sink = SmtpSink::start(usize::MAX, 550).await;
    let (env, contact) = run_welcome(&sink, Mode::Embedded).await;
    eventually("the enrollment to fail", Duration::from_secs(60), || async {
        (status(&env, contact).await == "failed").then_some(())
    })
    .await;
    let mut connection = env.engine.store.pool.acquire().await.unwrap();
    let failed = nurture::store::enrollments::failed(&mut connection, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].error.as_deref().unwrap_or_default().contains("welcome-email"),
        "{failed:?}"
    );
    assert_eq!(sink.count(), 0);
    env.stop().await;
}

/// The message of a journey's last step refused for good, then retried once the server takes
/// it: it is sent once and the enrollment completes. (Revived as `active`, a finished
/// enrollment had nothing to move: the reconciler re-enqueued it forever and it never
/// completed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_last_step_message_completes_the_enrollment() {
    for mode in [Mode::Embedded, Mode::Production] {
        let sink = SmtpSink::start(1, 550).await;
        let mut config = test_config(mode, &root().join("tests/fixtures/restarts/journeys")).await;
        config.smtp_url = Some(sink.url());
        let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
        let contact = env
            .engine
            .create_contact(&NewContact {
                email: Some("last-step@example.com".into()),
                ..NewContact::default()
            })
            .await
            .unwrap();
        let event = EventFacts {
            name: "Mail Requested".into(),
            ..EventFacts::default()
        };
        env.engine.track(contact, event).await.unwrap();
        let enrollment_of = |status: &'static str| {
            let pool = env.engine.store.pool.clone();
            async move {
                sqlx::query("SELECT id FROM enrollments WHERE contact_id = $1 AND status = $2")
                    .bind(contact)
                    .bind(status)
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .map(|r| r.get::<i64, _>(0))
            }
        };
        let failed = eventually("the enrollment to fail", Duration::from_secs(60), || {
            enrollment_of("failed")
        })
        .await;
        assert!(env.engine.retry(failed).await.unwrap());
        eventually("the retried message to be sent", Duration::from_secs(60), || async {
            let status: String = sqlx::query("SELECT status FROM effects WHERE enrollment_id = $1")
                .bind(failed)
                .fetch_one(&env.engine.store.pool)
                .await
                .unwrap()
                .get(0);
            (status == "done" && sink.count() == 1).then_some(())
        })
        .await;
        assert_eq!(enrollment_of("completed").await, Some(failed));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sink.count(), 1, "{mode:?}: sent once");
        env.stop().await;
    }
}
