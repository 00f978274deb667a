//! Nothing a contact is owed is lost: a worker killed mid-step, two workers on one queue, and a
//! flushed Redis.

use crate::support::{KilledOnDrop as WorkerProcess, Mode, TestEnv, count_messages, eventually, root, test_config};
use nurture::config::Config;
use nurture::engine::SystemClock;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use sqlx::Row;
use std::path::Path;
use std::process::{Command, Stdio};

use std::sync::Arc;
use std::time::Duration;

fn fixtures() -> std::path::PathBuf {
    root().join("tests/fixtures/engine/journeys")
}

fn signed_up() -> EventFacts {
    EventFacts {
        name: "Signed Up".into(),
        ..EventFacts::default()
    }
}

/// Starts `nurture worker` as a separate process on the test's database, queue and outbox.
fn spawn_worker(config: &Config, extra_env: &[(&str, &str)]) -> WorkerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nurture"));
    command
        .arg("worker")
        .arg("--journeys")
        .arg(&config.journeys)
        .arg("--templates")
        .arg(&config.templates)
        .current_dir(config.outbox.parent().unwrap())
        .env("DATABASE_URL", config.database_url.as_deref().unwrap())
        .env("REDIS_URL", config.redis_url.as_deref().unwrap())
        .env("NURTURE_NAMESPACE", &config.namespace)
        .env("NURTURE_OUTBOX", &config.outbox)
        .env("NURTURE_RECONCILE_EVERY", "200ms")
        .env("NURTURE_RECONCILE_GRACE", "1s")
        .env("NURTURE_DB_POOL", "6")
        .env("NURTURE_CONCURRENCY", "8")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (name, value) in extra_env {
        command.env(name, value);
    }
    WorkerProcess(command.spawn().expect("start a worker process"))
}

async fn count(env: &nurture::engine::runner::Engine, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(&env.store.pool).await.unwrap().get(0)
}

/// An engine for creating contacts and sending events, with no worker of its own.
async fn client(config: &Config) -> Arc<nurture::engine::runner::Engine> {
    nurture::app::build(config.clone(), Arc::new(SystemClock))
        .await
        .expect("the client engine starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_loses_nothing_and_sends_nothing_twice() {
    let config = test_config(Mode::Production, &fixtures()).await;
    let engine = client(&config).await;
    let marker = config.outbox.parent().unwrap().join("paused");
    let mut doomed = spawn_worker(
        &config,
        &[("NURTURE_TEST_PAUSE_BEFORE_EFFECT", marker.to_str().unwrap())],
    );
    let contact = engine
        .create_contact(&NewContact {
            email: Some("crash@example.com".into()),
            ..NewContact::default()
        })
        .await
        .unwrap();
    engine.track(contact, signed_up()).await.unwrap();

    // The worker committed the email step and stopped before sending: kill it there.
    eventually(
        "the worker to pause before its effect",
        Duration::from_secs(60),
        || async { marker.exists().then_some(()) },
    )
    .await;
    doomed.kill();
    assert_eq!(
        count_messages(&config.outbox.join("mail")),
        0,
        "nothing was sent before the kill"
    );

    let mut survivor = spawn_worker(&config, &[]);
    eventually(
        "the enrollment to complete on the other worker",
        Duration::from_secs(60),
        || async {
            let done = count(&engine, "SELECT COUNT(*) FROM effects WHERE status = 'done'").await;
            (done == 2).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count_messages(&config.outbox.join("mail")),
        2,
        "each email step delivered exactly once"
    );
    assert_eq!(
        count(&engine, "SELECT COUNT(*) FROM enrollments WHERE status = 'completed'").await,
        1
    );
    survivor.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_never_run_a_step_twice() {
    let config = test_config(Mode::Production, &fixtures()).await;
    let engine = client(&config).await;
    let mut workers = vec![spawn_worker(&config, &[]), spawn_worker(&config, &[])];
    let contacts = 150;
    for i in 0..contacts {
        let contact = engine
            .create_contact(&NewContact {
                email: Some(format!("c{i}@example.com")),
                ..NewContact::default()
            })
            .await
            .unwrap();
        engine.track(contact, signed_up()).await.unwrap();
    }
    eventually("every enrollment to complete", Duration::from_secs(60), || async {
        (count(&engine, "SELECT COUNT(*) FROM enrollments WHERE status = 'completed'").await == contacts).then_some(())
    })
    .await;
    eventually("every email to be delivered", Duration::from_secs(60), || async {
        (count(&engine, "SELECT COUNT(*) FROM effects WHERE status = 'done'").await == 2 * contacts).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count_messages(&config.outbox.join("mail")) as i64,
        2 * contacts,
        "two emails per contact, no more"
    );
    let sent = count(&engine, "SELECT COUNT(*) FROM step_history WHERE outcome = 'sent'").await;
    assert_eq!(sent, 2 * contacts, "each email step ran once");
    let duplicates = count(&engine, "SELECT COUNT(*) FROM (SELECT enrollment_id, seq FROM step_history GROUP BY enrollment_id, seq, step HAVING COUNT(*) > 1) d").await;
    assert_eq!(duplicates, 0);
    for worker in &mut workers {
        worker.kill();
    }
}

async fn flush_namespace(namespace: &str) {
    let client = redis::Client::open(crate::support::redis_url()).unwrap();
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is required for this test");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            deleted += keys.len();
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await.unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(deleted > 0, "the queue had keys to lose");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_loses_no_waiting_contact() {
    let config = test_config(Mode::Production, &fixtures()).await;
    let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
    let contacts = 40;
    let mut ids = Vec::new();
    for i in 0..contacts {
        let contact = env
            .engine
            .create_contact(&NewContact {
                email: Some(format!("w{i}@example.com")),
                ..NewContact::default()
            })
            .await
            .unwrap();
        ids.push(contact);
    }
    // All at once, so everyone is in the 2 s wait together however slow the machine is.
    futures::future::join_all(ids.into_iter().map(|contact| {
        env.engine.track(
            contact,
            EventFacts {
                name: "Trial Started".into(),
                ..EventFacts::default()
            },
        )
    }))
    .await
    .into_iter()
    .for_each(|tracked| {
        tracked.unwrap();
    });
    eventually("everyone to be waiting", Duration::from_secs(60), || async {
        (count(&env.engine, "SELECT COUNT(*) FROM enrollments WHERE status = 'waiting'").await == contacts)
            .then_some(())
    })
    .await;
    flush_namespace(&env.config.namespace).await;
    eventually(
        "every wait to finish after the flush",
        Duration::from_secs(60),
        || async {
            (count(
                &env.engine,
                "SELECT COUNT(*) FROM enrollments WHERE status = 'completed'",
            )
            .await
                == contacts)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        count(&env.engine, "SELECT COUNT(*) FROM contact_tags WHERE tag = 'waited'").await,
        contacts
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_embedded_process_finishes_what_it_started() {
    let config = test_config(Mode::Embedded, &fixtures()).await;
    let env = TestEnv::start(config.clone(), Arc::new(SystemClock), true).await;
    let contact = env
        .engine
        .create_contact(&NewContact {
            email: Some("r@example.com".into()),
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
    eventually("the wait to start", Duration::from_secs(60), || async {
        (count(&env.engine, "SELECT COUNT(*) FROM enrollments WHERE status = 'waiting'").await == 1).then_some(())
    })
    .await;
    env.stop().await;
    assert!(Path::new(&config.sqlite_path).exists());
    let env = TestEnv::start(config, Arc::new(SystemClock), true).await;
    eventually(
        "the wait to finish after the restart",
        Duration::from_secs(60),
        || async {
            (count(
                &env.engine,
                "SELECT COUNT(*) FROM enrollments WHERE status = 'completed'",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    env.stop().await;
}
