//! The durable engine through the real queue: SQLite (embedded) and PostgreSQL + Redis.

use crate::support::{
    Answer, HttpFake, Mode, TestEnv, count_messages, eventually, root, sms_of, test_config, virtual_clock,
};
use nurture::engine::VirtualClock;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

/// Generous: a starved CI machine is slow, and a pass is still fast.
const WAIT: Duration = Duration::from_secs(60);

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
        (count_messages(&env.config.outbox.join("mail")) == 2).then_some(())
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
        (sms_of(&env, bo).await.len() == 1).then_some(())
    })
    .await;
    // The outbox is the embedded mode's SMS channel only; production sends to the provider.
    let outbox = if mode == Mode::Embedded { 1 } else { 0 };
    assert_eq!(count_messages(&env.config.outbox.join("sms")), outbox);
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

async fn contact_with(env: &TestEnv, contact: NewContact) -> i64 {
    env.engine.create_contact(&contact).await.unwrap()
}

fn traits(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    value.as_object().cloned().unwrap()
}

async fn start(mode: Mode, journeys: &std::path::Path, at: &str) -> (TestEnv, VirtualClock) {
    let mut config = test_config(mode, journeys).await;
    config.reconcile_grace = Duration::ZERO;
    let clock = virtual_clock(at);
    (TestEnv::start(config, Arc::new(clock.clone()), false).await, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_cart_coupons_only_the_cart_not_ordered() {
    let (env, clock) = start(Mode::Embedded, &root().join("journeys"), "2026-01-05T10:00:00+08:00").await;
    let shopper = contact_with(
        &env,
        NewContact {
            email: Some("shopper@example.com".into()),
            ..NewContact::default()
        },
    )
    .await;
    for cart in ["c1", "c2"] {
        let started = env
            .engine
            .track(shopper, event("Cart Abandoned", json!({"cart_id": cart, "value": 300})))
            .await
            .unwrap();
        assert_eq!(started.len(), 1, "each cart is its own enrollment");
    }
    eventually("both carts waiting for an order", WAIT, || async {
        let waiting = scalar(
            &env,
            "SELECT COUNT(*) FROM enrollments WHERE contact_id = $1 AND status = 'waiting'",
            shopper,
        )
        .await;
        (waiting == 2).then_some(())
    })
    .await;
    env.engine
        .track(
            shopper,
            event("Order Completed", json!({"cart_id": "c1", "revenue": 300})),
        )
        .await
        .unwrap();
    advance_clock(&env, &clock, chrono::Duration::hours(1)).await;
    eventually("the coupon for cart c2", WAIT, || async {
        (count_messages(&env.config.outbox.join("mail")) == 1).then_some(())
    })
    .await;
    let want = vec![
        ("c1".to_string(), "exited".to_string()),
        ("c2".to_string(), "completed".to_string()),
    ];
    eventually("c2 completed", WAIT, || async {
        let rows: Vec<(String, String)> =
            sqlx::query("SELECT enrollment_key, status FROM enrollments ORDER BY enrollment_key")
                .fetch_all(&env.engine.store.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
        (rows == want).then_some(())
    })
    .await;
    let conversions = scalar(
        &env,
        "SELECT COUNT(*) FROM conversions WHERE contact_id = $1 AND revenue = 300",
        shopper,
    )
    .await;
    assert_eq!(conversions, 1, "the ordered cart counts as a conversion");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regional_invitation_fires_once_per_tick_for_its_audience() {
    let (env, _clock) = start(Mode::Production, &root().join("journeys"), "2026-01-05T10:00:00+08:00").await;
    let shanghai = contact_with(
        &env,
        NewContact {
            phone: Some("+8613800138000".into()),
            language: Some("zh".into()),
            traits: traits(json!({"region": "Shanghai", "industry": "manufacturing"})),
            ..NewContact::default()
        },
    )
    .await;
    let beijing = contact_with(
        &env,
        NewContact {
            phone: Some("+8613900139000".into()),
            traits: traits(json!({"region": "Beijing", "industry": "manufacturing"})),
            ..NewContact::default()
        },
    )
    .await;
    let catalog = env.engine.catalog();
    let journey = catalog.journey("regional-event-invitation").unwrap();
    let tick = chrono::DateTime::parse_from_rfc3339("2026-01-05T10:00:00+08:00")
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(
        env.engine.fire_schedule(journey, tick, "process-a").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        env.engine.fire_schedule(journey, tick, "process-b").await.unwrap(),
        None,
        "a tick fires once across processes"
    );
    at(
        &env,
        shanghai,
        "regional-event-invitation",
        "waiting",
        Some("await-registration"),
    )
    .await;
    assert!(
        enrollment(&env, beijing, "regional-event-invitation").await.is_none(),
        "Beijing is not in the audience"
    );
    eventually("the SMS invitation", WAIT, || async {
        (sms_of(&env, shanghai).await.len() == 1).then_some(())
    })
    .await;
    env.engine
        .track(
            shanghai,
            event("Event Registered", json!({"event_id": "sh-smart-factory-2026"})),
        )
        .await
        .unwrap();
    at(&env, shanghai, "regional-event-invitation", "completed", None).await;
    assert_eq!(
        scalar(
            &env,
            "SELECT COUNT(*) FROM contact_tags WHERE contact_id = $1 AND tag = 'event-registered'",
            shanghai
        )
        .await,
        1
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dormant_contacts_are_tagged_churn_risk_when_silent() {
    let (env, clock) = start(Mode::Embedded, &root().join("journeys"), "2026-01-05T09:00:00+08:00").await;
    let long_ago = chrono::DateTime::parse_from_rfc3339("2025-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let silent = contact_with(
        &env,
        NewContact {
            email: Some("silent@example.com".into()),
            last_seen_at: Some(long_ago),
            ..NewContact::default()
        },
    )
    .await;
    let returning = contact_with(
        &env,
        NewContact {
            email: Some("back@example.com".into()),
            last_seen_at: Some(long_ago),
            ..NewContact::default()
        },
    )
    .await;
    let recent = contact_with(
        &env,
        NewContact {
            email: Some("recent@example.com".into()),
            last_seen_at: Some(clock_now(&clock)),
            ..NewContact::default()
        },
    )
    .await;
    let catalog = env.engine.catalog();
    let journey = catalog.journey("dormant-reactivation").unwrap();
    // 09:00 is inside this journey's quiet hours (21:00-08:00)? No: they end at 08:00.
    assert_eq!(
        env.engine.fire_schedule(journey, clock_now(&clock), "p").await.unwrap(),
        Some(2)
    );
    assert!(enrollment(&env, recent, "dormant-reactivation").await.is_none());
    for contact in [silent, returning] {
        at(&env, contact, "dormant-reactivation", "waiting", Some("await-activity")).await;
    }
    env.engine
        .track(returning, event("Email Link Clicked", json!({"link": "coupon"})))
        .await
        .unwrap();
    at(&env, returning, "dormant-reactivation", "completed", None).await;
    advance_clock(&env, &clock, chrono::Duration::days(7)).await;
    at(&env, silent, "dormant-reactivation", "completed", None).await;
    assert_eq!(
        scalar(
            &env,
            "SELECT COUNT(*) FROM contact_tags WHERE contact_id = $1 AND tag = 'churn-risk'",
            silent
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &env,
            "SELECT COUNT(*) FROM contact_tags WHERE contact_id = $1 AND tag = 'churn-risk'",
            returning
        )
        .await,
        0
    );
    env.stop().await;
}

fn clock_now(clock: &VirtualClock) -> chrono::DateTime<chrono::Utc> {
    use nurture::engine::Clock;
    clock.now()
}

/// The shipped `sql-handoff.yaml`, its DingTalk robot URL pointed at a local fake that fails
/// once: assign, accepted by the rep (one lead); not accepted (the other): recycled to another
/// inbound rep after 2h, reassigned to the regional team after 4h, alert (retried after the
/// 503), no accept, tag.
async fn sql_handoff_reassigns_and_alerts_the_managers(mode: Mode) {
    let robot = HttpFake::start(|index, _| match index {
        0 => Answer::new(503, r#"{"errcode": -1, "errmsg": "busy"}"#),
        _ => Answer::new(200, r#"{"errcode": 0, "errmsg": "ok"}"#),
    })
    .await;
    let project = copy_of_shipped_project();
    let journey = project.join("journeys/sql-handoff.yaml");
    let text = std::fs::read_to_string(&journey).unwrap().replace(
        "https://oapi.dingtalk.com/robot/send?access_token=REPLACE_ME",
        &format!("{}/robot/send?access_token=test", robot.base),
    );
    std::fs::write(&journey, text).unwrap();
    let mut config = test_config(mode, &project.join("journeys")).await;
    config.reconcile_grace = Duration::ZERO;
    config.webhooks.allow_networks = vec!["127.0.0.1".parse().unwrap()];
    let clock = virtual_clock("2026-01-05T10:00:00+08:00");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    let accepted = contact_with(
        &env,
        NewContact {
            email: Some("yes@example.com".into()),
            ..NewContact::default()
        },
    )
    .await;
    let ignored = contact_with(
        &env,
        NewContact {
            email: Some("no@example.com".into()),
            traits: traits(json!({"region": "Shanghai"})),
            ..NewContact::default()
        },
    )
    .await;
    for contact in [accepted, ignored] {
        let started = env
            .engine
            .stage_reached(contact, nurture::journey::values::Stage::Sql)
            .await
            .unwrap();
        assert_eq!(started.len(), 1);
        at(&env, contact, "sql-handoff", "waiting", Some("await-accept")).await;
    }
    let lead: i64 = sqlx::query("SELECT id FROM assignments WHERE contact_id = $1")
        .bind(accepted)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    let rep: String = sqlx::query("SELECT rep FROM assignments WHERE id = $1")
        .bind(lead)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    let taken = env
        .engine
        .act_on_lead(
            lead,
            &nurture::engine::sales::Actor::Rep(rep),
            nurture::engine::sales::Action::Accept,
        )
        .await
        .unwrap();
    assert_eq!(taken.status.as_str(), "accepted");
    at(&env, accepted, "sql-handoff", "completed", None).await;
    advance_clock(&env, &clock, chrono::Duration::hours(2)).await;
    eventually("the unaccepted lead recycled within inbound", WAIT, || async {
        (scalar(&env, "SELECT COUNT(*) FROM assignments WHERE contact_id = $1", ignored).await == 2).then_some(())
    })
    .await;
    advance_clock(&env, &clock, chrono::Duration::hours(2)).await;
    eventually("the first alert, answered 503", WAIT, || async {
        (robot.count() == 1).then_some(())
    })
    .await;
    // The 503 is transient: the call goes again after the backoff, not to the failed list.
    // Wait until the failure is recorded (the retry's time is set from the clock then), or the
    // clock could move before the backoff is counted from it.
    eventually("the alert postponed for a retry", WAIT, || async {
        (scalar(
            &env,
            "SELECT COUNT(*) FROM enrollments WHERE contact_id = $1 AND journey_id = 'sql-handoff' AND attempts > 0",
            ignored,
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    advance_clock(&env, &clock, chrono::Duration::minutes(1)).await;
    at(&env, ignored, "sql-handoff", "waiting", Some("await-regional-accept")).await;
    let calls = robot.requests();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].header("idempotency-key"), calls[1].header("idempotency-key"));
    assert_eq!(calls[1].path, "/robot/send?access_token=test");
    assert_eq!(calls[1].header("content-type"), Some("application/json"));
    let body = calls[1].json();
    assert_eq!(body["msgtype"], "text");
    assert_eq!(
        body["text"]["content"],
        "SQL no@example.com (unknown company, score 0) not accepted within 4h; reassigned to the regional team."
    );
    // Inbound's 2h deadlines fall at 2h and 4h; at 4h the lead is recycled once more, then the
    // journey hands it to the regional team, which closes the inbound lead.
    let leads: Vec<(String, String)> =
        sqlx::query("SELECT team, status FROM assignments WHERE contact_id = $1 ORDER BY id")
            .bind(ignored)
            .fetch_all(&env.engine.store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
    let expected = [
        ("inbound", "recycled"),
        ("inbound", "recycled"),
        ("inbound", "reassigned"),
        ("regional", "assigned"),
    ];
    assert_eq!(
        leads,
        expected.map(|(team, status)| (team.to_string(), status.to_string()))
    );
    advance_clock(&env, &clock, chrono::Duration::days(1)).await;
    at(&env, ignored, "sql-handoff", "completed", None).await;
    assert_eq!(
        scalar(
            &env,
            "SELECT COUNT(*) FROM contact_tags WHERE contact_id = $1 AND tag = 'sql-unaccepted'",
            ignored
        )
        .await,
        1
    );
    assert_eq!(robot.count(), 2, "the accepted lead never reached the alert");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_handoff_reassigns_and_alerts_the_managers_embedded() {
    sql_handoff_reassigns_and_alerts_the_managers(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_handoff_reassigns_and_alerts_the_managers_production() {
    sql_handoff_reassigns_and_alerts_the_managers(Mode::Production).await;
}

/// The shipped journeys, templates, `sales.yaml` and `scoring.yaml` in a scratch directory.
fn copy_of_shipped_project() -> std::path::PathBuf {
    let project = crate::support::scratch_dir("project");
    for dir in ["journeys", "templates", "templates/partials"] {
        std::fs::create_dir_all(project.join(dir)).unwrap();
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, project.join(dir).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    for file in ["sales.yaml", "scoring.yaml"] {
        std::fs::copy(root().join(file), project.join(file)).unwrap();
    }
    project
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_is_deterministic_and_exit_when_stops_a_waiting_contact() {
    let journeys = root().join("tests/fixtures/engine/journeys");
    let (env, clock) = start(Mode::Embedded, &journeys, "2026-01-05T10:00:00+08:00").await;
    let mut contacts = Vec::new();
    for i in 0..20 {
        let contact = contact_with(
            &env,
            NewContact {
                email: Some(format!("s{i}@example.com")),
                ..NewContact::default()
            },
        )
        .await;
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
        contacts.push(contact);
    }
    for contact in &contacts {
        at(&env, *contact, "split-and-exit", "waiting", Some("pause")).await;
    }
    let a = scalar(
        &env,
        "SELECT COUNT(*) FROM contact_tags WHERE tag = 'variant-a' AND contact_id > $1",
        0,
    )
    .await;
    let b = scalar(
        &env,
        "SELECT COUNT(*) FROM contact_tags WHERE tag = 'variant-b' AND contact_id > $1",
        0,
    )
    .await;
    assert_eq!(a + b, 20);
    assert!(a > 0 && b > 0, "both arms get contacts: {a} / {b}");
    for contact in &contacts {
        let bucket = nurture::engine::transition::split_bucket(&contact.to_string(), "split-and-exit", "ab");
        let tag = if bucket < 50 { "variant-a" } else { "variant-b" };
        let sql = "SELECT COUNT(*) FROM contact_tags WHERE contact_id = $1 AND tag IN ('variant-a', 'variant-b')";
        assert_eq!(scalar(&env, sql, *contact).await, 1);
        let row: (String,) =
            sqlx::query_as("SELECT tag FROM contact_tags WHERE contact_id = $1 AND tag LIKE 'variant-%'")
                .bind(*contact)
                .fetch_one(&env.engine.store.pool)
                .await
                .unwrap();
        assert_eq!(row.0, tag, "the arm follows the contact's bucket");
    }
    // One contact unsubscribes while waiting: exit_when stops it before the email.
    sqlx::query("INSERT INTO contact_tags (contact_id, tag, added_at) VALUES ($1, 'unsubscribed', 0)")
        .bind(contacts[0])
        .execute(&env.engine.store.pool)
        .await
        .unwrap();
    advance_clock(&env, &clock, chrono::Duration::days(1)).await;
    at(&env, contacts[0], "split-and-exit", "exited", None).await;
    for contact in &contacts[1..] {
        at(&env, *contact, "split-and-exit", "completed", None).await;
    }
    eventually("19 follow-up emails", WAIT, || async {
        let sql =
            "SELECT COUNT(*) FROM effects WHERE journey_id = 'split-and-exit' AND status = 'done' AND contact_id > $1";
        (scalar(&env, sql, 0).await == 19).then_some(())
    })
    .await;
    env.stop().await;
}

/// Re-entry rules per enrollment key, each its own journey: `always` keeps out only an
/// unfinished enrollment with the same key (the unique index decides, nothing is read first),
/// `never` any earlier one with the same key; other keys come in.
async fn re_entry_rules_apply_per_key(mode: Mode) {
    let dir = crate::support::scratch_dir("re-entry");
    std::fs::create_dir_all(dir.join("journeys")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    for (id, rule, step) in [
        ("keyed-always", "always", "  - id: hold\n    wait: 1h\n"),
        ("keyed-never", "never", "  - id: mark\n    tag: seen\n"),
    ] {
        std::fs::write(
            dir.join(format!("journeys/{id}.yaml")),
            format!("id: {id}\ntrigger: {{event: Order Placed}}\nenrollment_key: trigger.properties.order\nre_entry: {rule}\nsteps:\n{step}"),
        )
        .unwrap();
    }
    let (env, _clock) = start(mode, &dir.join("journeys"), "2026-01-05T10:00:00+08:00").await;
    let buyer = contact_with(&env, NewContact::default()).await;
    let started = |order: &str| {
        let engine = env.engine.clone();
        let order = order.to_string();
        async move {
            let ids = engine
                .track(buyer, event("Order Placed", json!({"order": order})))
                .await
                .unwrap();
            let mut journeys = Vec::new();
            for id in ids {
                let row = sqlx::query("SELECT journey_id FROM enrollments WHERE id = $1")
                    .bind(id)
                    .fetch_one(&engine.store.pool)
                    .await
                    .unwrap();
                journeys.push(row.get::<String, _>(0));
            }
            journeys.sort();
            journeys
        }
    };
    assert_eq!(
        started("o1").await,
        ["keyed-always", "keyed-never"],
        "a first order enters both"
    );
    eventually("o1 done in keyed-never", WAIT, || async {
        let done = scalar(
            &env,
            "SELECT COUNT(*) FROM enrollments WHERE contact_id = $1 AND journey_id = 'keyed-never' AND status = 'completed'",
            buyer,
        )
        .await;
        (done == 1).then_some(())
    })
    .await;
    assert!(
        started("o1").await.is_empty(),
        "o1 again: still waiting in keyed-always, already done in keyed-never"
    );
    assert_eq!(
        started("o2").await,
        ["keyed-always", "keyed-never"],
        "another order enters both"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_entry_rules_apply_per_key_embedded() {
    re_entry_rules_apply_per_key(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_entry_rules_apply_per_key_production() {
    re_entry_rules_apply_per_key(Mode::Production).await;
}
