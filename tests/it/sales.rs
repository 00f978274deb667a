//! The sales loop end to end, on SQLite and on PostgreSQL + Redis: a lead scored to SQL is
//! assigned, its rep told (email through a real SMTP sink, or a chat robot on a local HTTP
//! server), not accepted in time and recycled to another rep, accepted, won with revenue, and
//! the contact becomes a customer whose journey exits. Reps see only their own leads.

use crate::support::{
    Answer, HttpFake, Mode, SmtpSink, TestEnv, eventually, http, scratch_dir, spawn_api, test_config, virtual_clock,
};
use nurture::engine::{SystemClock, VirtualClock};
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::{Value, json};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const JOURNEY: &str = r#"
id: handoff
trigger: {stage: sql}
exit_when: stage == "customer"
steps:
  - id: assign
    assign_to_sales: {team: inbound}
  - id: await-accept
    wait_for: {event: Lead Accepted, timeout: 1d}
    on_event: selling
    on_timeout: end
  - id: selling
    wait_for: {event: Deal Signed Elsewhere, timeout: 30d}
    on_event: end
    on_timeout: check-in
  - id: check-in
    tag: stale-deal
"#;

const SCORING: &str = "
thresholds: {mql: 30, sql: 50}
rules:
  - {id: demo-request, event: Demo Requested, points: 40}
  - {id: pricing-view, event: Pricing Page Viewed, points: 20}
";

/// A project: the hand-off journey and one team, `accept_within` as given, told by `notify`.
pub(crate) fn project(accept_within: &str, notify: &str) -> PathBuf {
    let dir = scratch_dir("sales");
    std::fs::create_dir_all(dir.join("journeys")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("journeys/handoff.yaml"), JOURNEY).unwrap();
    std::fs::write(dir.join("scoring.yaml"), SCORING).unwrap();
    let sales = format!(
        "teams:
  inbound:
    name: Inbound SDR
    accept_within: {accept_within}
{notify}    reps:
      - {{id: ann, name: Ann, email: ann@example.com, capacity: 5}}
      - {{id: bo, name: Bo, email: bo@example.com, capacity: 5}}
"
    );
    std::fs::write(dir.join("sales.yaml"), sales).unwrap();
    dir
}

async fn config(mode: Mode, project: &Path) -> nurture::config::Config {
    let mut config = test_config(mode, &project.join("journeys")).await;
    config.reconcile_grace = Duration::ZERO;
    config.write_keys = vec!["wk".into()];
    config.admin_tokens = vec!["admin".into()];
    config.rep_tokens = vec![
        ("ann".into(), nurture::config::Secret("ann-token".into())),
        ("bo".into(), nurture::config::Secret("bo-token".into())),
    ];
    config
}

fn event(name: &str) -> EventFacts {
    EventFacts {
        name: name.into(),
        properties: Default::default(),
        timestamp: None,
    }
}

pub(crate) async fn contact(env: &TestEnv, email: &str) -> i64 {
    env.engine
        .create_contact(&NewContact {
            email: Some(email.into()),
            traits: json!({"company": "Analytical Engines"}).as_object().cloned().unwrap(),
            ..NewContact::default()
        })
        .await
        .unwrap()
}

/// Scores the contact to SQL (40 + 20 points), which starts the hand-off journey.
pub(crate) async fn qualify(env: &TestEnv, contact: i64) {
    env.engine.track(contact, event("Demo Requested")).await.unwrap();
    env.engine.track(contact, event("Pricing Page Viewed")).await.unwrap();
}

async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let response = http(base, "GET", path, &[("authorization", &auth)], b"").await;
    (response.status, response.json())
}

async fn post(base: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = body.to_string();
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let response = http(base, "POST", path, &headers, body.as_bytes()).await;
    (response.status, response.json())
}

/// `(id, rep, status)` of the contact's leads, oldest first.
async fn leads_of(env: &TestEnv, contact: i64) -> Vec<(i64, String, String)> {
    sqlx::query("SELECT id, rep, status FROM assignments WHERE contact_id = $1 ORDER BY id")
        .bind(contact)
        .fetch_all(&env.engine.store.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

async fn rep_load(env: &TestEnv) -> Vec<(String, i64)> {
    sqlx::query("SELECT rep, open_leads FROM rep_load WHERE team = 'inbound' ORDER BY rep")
        .fetch_all(&env.engine.store.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn events_of(env: &TestEnv, contact: i64) -> Vec<String> {
    sqlx::query(
        "SELECT name FROM events WHERE contact_id = $1 AND name LIKE 'Lead %' AND name <> 'Lead Qualified' ORDER BY id",
    )
    .bind(contact)
    .fetch_all(&env.engine.store.pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

async fn enrollment(env: &TestEnv, contact: i64) -> (String, Option<String>) {
    let row = sqlx::query("SELECT status, step FROM enrollments WHERE contact_id = $1 AND journey_id = 'handoff'")
        .bind(contact)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn at_step(env: &TestEnv, contact: i64, status: &str, step: Option<&str>) {
    let want = (status.to_string(), step.map(str::to_string));
    eventually(&format!("handoff at {want:?}"), WAIT, || async {
        (enrollment(env, contact).await == want).then_some(())
    })
    .await;
}

/// The message the sink received for `to`, waiting for the `nth` (0-based).
async fn mail_to(sink: &SmtpSink, to: &str, nth: usize) -> String {
    eventually(&format!("mail {nth} to {to}"), WAIT, || async {
        let messages = sink.messages.lock().unwrap().clone();
        messages
            .into_iter()
            .filter(|m| m.contains(&format!("To: {to}")))
            .nth(nth)
    })
    .await
}

async fn advance_clock(env: &TestEnv, clock: &VirtualClock, by: chrono::Duration) {
    clock.advance(by);
    env.engine.reconcile().await.unwrap();
}

async fn the_sales_flow_runs_end_to_end(mode: Mode) {
    let sink = SmtpSink::start(0, 451).await;
    let dir = project("4h", "");
    let mut config = config(mode, &dir).await;
    config.smtp_url = Some(sink.url());
    let clock = virtual_clock("2026-01-05T09:00:00+08:00");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    let api = spawn_api(&env).await;
    let ada = contact(&env, "ada@example.com").await;
    qualify(&env, ada).await;
    at_step(&env, ada, "waiting", Some("await-accept")).await;

    // Assigned to ann (the first turn), who is told by email: who, the score and why.
    let first = leads_of(&env, ada).await;
    assert_eq!(first.len(), 1);
    let (lead, rep, status) = first[0].clone();
    assert_eq!((rep.as_str(), status.as_str()), ("ann", "assigned"));
    let notice = mail_to(&sink, "ann@example.com", 0).await;
    assert!(
        notice.contains("Subject: New lead: ada@example.com (score 60)"),
        "{notice}"
    );
    assert!(
        notice.contains("Why: demo-request (+40), pricing-view (+20)"),
        "{notice}"
    );
    assert!(notice.contains("Company: Analytical Engines"), "{notice}");
    assert!(
        notice.contains(&format!("Message-ID: <lead.{lead}.notice@")),
        "{notice}"
    );

    // Reps see their own leads only; a wrong token is refused.
    let (status, listed) = get(&api, "/v1/sales/leads", "ann-token").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["leads"][0]["id"], lead);
    assert_eq!(listed["leads"][0]["accept_by"], "2026-01-05T05:00:00Z");
    assert_eq!(listed["leads"][0]["contact"]["email"], "ada@example.com");
    let (_, listed) = get(&api, "/v1/sales/leads", "bo-token").await;
    assert_eq!(listed["leads"], json!([]));
    assert_eq!(get(&api, "/v1/sales/leads", "nobody").await.0, 401);
    assert_eq!(get(&api, "/v1/sales/leads", "wk").await.0, 403);
    let (status, refused) = post(&api, &format!("/v1/sales/leads/{lead}/accept"), "bo-token", json!({})).await;
    assert_eq!(status, 404, "another rep's lead: {refused}");
    let (status, refused) = post(&api, &format!("/v1/sales/leads/{lead}/reject"), "ann-token", json!({})).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (400, Some("reason")));

    // Nobody accepts within 4h: back to the pool and on to bo, never ann again.
    advance_clock(&env, &clock, chrono::Duration::hours(4)).await;
    let second = eventually("the lead recycled to bo", WAIT, || async {
        let leads = leads_of(&env, ada).await;
        (leads.len() == 2).then_some(leads)
    })
    .await;
    assert_eq!((second[0].1.as_str(), second[0].2.as_str()), ("ann", "recycled"));
    assert_eq!((second[1].1.as_str(), second[1].2.as_str()), ("bo", "assigned"));
    let recycled_lead = second[1].0;
    assert_eq!(rep_load(&env).await, [("ann".into(), 0), ("bo".into(), 1)]);
    let notice = mail_to(&sink, "bo@example.com", 0).await;
    assert!(notice.contains("ada@example.com"), "{notice}");
    let (_, listed) = get(&api, &format!("/v1/sales/leads/{lead}"), "ann-token").await;
    assert_eq!(listed["status"], "recycled", "ann still sees what became of her lead");
    assert_eq!(listed["reason"], "not accepted within 4h");

    // bo accepts: the journey's wait_for hears `Lead Accepted`.
    let (status, accepted) = post(
        &api,
        &format!("/v1/sales/leads/{recycled_lead}/accept"),
        "bo-token",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, accepted["status"].as_str()),
        (200, Some("accepted")),
        "{accepted}"
    );
    at_step(&env, ada, "waiting", Some("selling")).await;

    // Won: revenue kept exactly, a conversion, stage customer, and exit_when fires now.
    let (status, bad) = post(
        &api,
        &format!("/v1/sales/leads/{recycled_lead}/outcome"),
        "bo-token",
        json!({"outcome": "won"}),
    )
    .await;
    assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("revenue")));
    let (status, won) = post(
        &api,
        &format!("/v1/sales/leads/{recycled_lead}/outcome"),
        "bo-token",
        json!({"outcome": "won", "revenue": 12000.5, "currency": "CNY"}),
    )
    .await;
    assert_eq!((status, won["status"].as_str()), (200, Some("won")), "{won}");
    assert_eq!(won["revenue"], 12000.5);
    at_step(&env, ada, "exited", None).await;
    let contact = env.engine.contact(ada).await.unwrap().unwrap();
    assert_eq!(contact.stage.as_str(), "customer");
    let detail: String = sqlx::query("SELECT detail FROM step_history WHERE outcome = 'exited'")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    assert!(
        detail.starts_with("exit_when `stage == \"customer\"` is true"),
        "{detail}"
    );
    let row = sqlx::query("SELECT CAST(revenue AS TEXT), currency FROM assignments WHERE id = $1")
        .bind(recycled_lead)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0).parse::<f64>().unwrap(), 12000.5);
    assert_eq!(row.get::<String, _>(1), "CNY");
    let conversion = sqlx::query("SELECT event_name, revenue FROM conversions WHERE contact_id = $1")
        .bind(ada)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap();
    assert_eq!(conversion.get::<String, _>(0), "Lead Won");
    assert_eq!(conversion.get::<f64, _>(1), 12000.5);
    assert_eq!(rep_load(&env).await, [("ann".into(), 0), ("bo".into(), 0)]);
    assert_eq!(
        events_of(&env, ada).await,
        [
            "Lead Assigned",
            "Lead Recycled",
            "Lead Assigned",
            "Lead Accepted",
            "Lead Won"
        ]
    );
    let (status, again) = post(
        &api,
        &format!("/v1/sales/leads/{recycled_lead}/outcome"),
        "bo-token",
        json!({"outcome": "lost", "reason": "changed their mind"}),
    )
    .await;
    assert_eq!(status, 409, "a closed lead stays closed: {again}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_flow_runs_end_to_end_embedded() {
    the_sales_flow_runs_end_to_end(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_flow_runs_end_to_end_production() {
    the_sales_flow_runs_end_to_end(Mode::Production).await;
}

/// A rejected lead goes to the other rep at once; when nobody else has room it waits in the
/// pool and takes the next free slot. The team's robot is told, not the reps' inboxes.
async fn rejected_leads_go_back_to_the_pool_and_the_robot_hears(mode: Mode) {
    let robot = HttpFake::start(|_, _| Answer::new(200, r#"{"errcode": 0}"#)).await;
    let notify = format!(
        "    notify:
      email: false
      webhook:
        url: {}/robot/send?access_token=t
        body: {{msgtype: text, text: {{content: \"{{{{rep.name}}}}: {{{{contact.email}}}} (score {{{{score}}}}; {{{{lead.why}}}})\"}}}}
",
        robot.base
    );
    let dir = project("1d", &notify);
    let text = std::fs::read_to_string(dir.join("sales.yaml"))
        .unwrap()
        .replace("capacity: 5", "capacity: 1");
    std::fs::write(dir.join("sales.yaml"), text).unwrap();
    let mut config = config(mode, &dir).await;
    config.webhooks.allow_networks = vec!["127.0.0.1".parse().unwrap()];
    let clock = virtual_clock("2026-01-05T09:00:00+08:00");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    let api = spawn_api(&env).await;
    let (ada, bob, cy) = (
        contact(&env, "ada@example.com").await,
        contact(&env, "bob@example.com").await,
        contact(&env, "cy@example.com").await,
    );
    for person in [ada, bob] {
        qualify(&env, person).await;
        at_step(&env, person, "waiting", Some("await-accept")).await;
    }
    eventually("two robot messages", WAIT, || async {
        (robot.count() == 2).then_some(())
    })
    .await;
    let said = robot.requests()[0].json();
    assert_eq!(
        said["text"]["content"],
        "Ann: ada@example.com (score 60; demo-request (+40), pricing-view (+20))"
    );
    // Both reps are full: the third lead waits in the pool.
    qualify(&env, cy).await;
    at_step(&env, cy, "waiting", Some("await-accept")).await;
    assert_eq!(leads_of(&env, cy).await[0].2, "pooled");
    // ann rejects ada: bo is full, so ada waits in the pool too; ann's free slot goes to the
    // oldest pooled lead, cy.
    let ada_lead = leads_of(&env, ada).await[0].0;
    let (status, rejected) = post(
        &api,
        &format!("/v1/sales/leads/{ada_lead}/reject"),
        "ann-token",
        json!({"reason": "a student, not a buyer"}),
    )
    .await;
    assert_eq!(
        (status, rejected["status"].as_str()),
        (200, Some("rejected")),
        "{rejected}"
    );
    let cy_leads = leads_of(&env, cy).await;
    assert_eq!((cy_leads[0].1.as_str(), cy_leads[0].2.as_str()), ("ann", "assigned"));
    let ada_leads = leads_of(&env, ada).await;
    assert_eq!(ada_leads[1].2, "pooled", "{ada_leads:?}");
    // bo loses bob: his slot goes to ada, who never goes back to ann.
    let bob_lead = leads_of(&env, bob).await[0].0;
    let (status, _) = post(
        &api,
        &format!("/v1/sales/leads/{bob_lead}/outcome"),
        "bo-token",
        json!({"outcome": "lost", "reason": "budget"}),
    )
    .await;
    assert_eq!(status, 200);
    let ada_leads = leads_of(&env, ada).await;
    assert_eq!((ada_leads[1].1.as_str(), ada_leads[1].2.as_str()), ("bo", "assigned"));
    assert_eq!(rep_load(&env).await, [("ann".into(), 1), ("bo".into(), 1)]);
    assert_eq!(
        events_of(&env, ada).await,
        ["Lead Assigned", "Lead Rejected", "Lead Assigned"]
    );
    eventually("robot told about cy and ada again", WAIT, || async {
        (robot.count() == 4).then_some(())
    })
    .await;
    // An admin sees every lead, and sets a stage.
    let (_, all) = get(&api, "/v1/sales/leads?status=assigned", "admin").await;
    assert_eq!(all["leads"].as_array().unwrap().len(), 2);
    let (status, bad) = get(&api, "/v1/sales/leads?status=open", "admin").await;
    assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("status")));
    let (status, set) = post(
        &api,
        &format!("/v1/contacts/{cy}/stage"),
        "admin",
        json!({"stage": "opportunity"}),
    )
    .await;
    assert_eq!((status, set["stage"].as_str()), (200, Some("opportunity")));
    let (status, _) = post(
        &api,
        &format!("/v1/contacts/{cy}/stage"),
        "ann-token",
        json!({"stage": "customer"}),
    )
    .await;
    assert_eq!(status, 403, "a rep token is not an admin token");
    let (status, bad) = post(
        &api,
        &format!("/v1/contacts/{cy}/stage"),
        "admin",
        json!({"stage": "mql"}),
    )
    .await;
    assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("stage")));
    let (status, _) = post(
        &api,
        &format!("/v1/contacts/{cy}/stage"),
        "admin",
        json!({"stage": "customer"}),
    )
    .await;
    assert_eq!(status, 200);
    at_step(&env, cy, "exited", None).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_leads_go_back_to_the_pool_and_the_robot_hears_embedded() {
    rejected_leads_go_back_to_the_pool_and_the_robot_hears(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_leads_go_back_to_the_pool_and_the_robot_hears_production() {
    rejected_leads_go_back_to_the_pool_and_the_robot_hears(Mode::Production).await;
}

/// On the real clock, with no reconciler: the accept deadline fires by itself, on time; a
/// second process started meanwhile (which loads the deadline too) and a restart neither lose
/// nor double the recycle.
async fn the_accept_deadline_fires_on_time_once(mode: Mode) {
    let dir = project("2s", "");
    let config = config(mode, &dir).await;
    let first = TestEnv::start(config.clone(), Arc::new(SystemClock), false).await;
    let ada = contact(&first, "ada@example.com").await;
    qualify(&first, ada).await;
    at_step(&first, ada, "waiting", Some("await-accept")).await;
    let placed = std::time::Instant::now();
    // Another process on the same database and queue loads the coming deadline at start.
    let second = TestEnv::start(config.clone(), Arc::new(SystemClock), false).await;
    let leads = eventually("the lead recycled", Duration::from_secs(20), || async {
        let leads = leads_of(&first, ada).await;
        (leads.len() >= 2).then_some(leads)
    })
    .await;
    let took = placed.elapsed();
    assert!(took >= Duration::from_millis(1500), "recycled early: {took:?}");
    assert!(took < Duration::from_secs(5), "recycled late: {took:?}");
    assert_eq!((leads[0].2.as_str(), leads[1].1.as_str()), ("recycled", "bo"));
    // The second lead's deadline comes while only a restarted process is up.
    first.stop().await;
    second.stop().await;
    let third = TestEnv::start(config, Arc::new(SystemClock), false).await;
    let leads = eventually("recycled again after the restart", Duration::from_secs(20), || async {
        let leads = leads_of(&third, ada).await;
        (leads.len() >= 3).then_some(leads)
    })
    .await;
    assert_eq!((leads[1].2.as_str(), leads[2].1.as_str()), ("recycled", "ann"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recycled = events_of(&third, ada)
        .await
        .iter()
        .filter(|e| *e == "Lead Recycled")
        .count();
    assert_eq!(recycled, 2, "each deadline recycled once");
    assert_eq!(leads_of(&third, ada).await.len(), 3);
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_deadline_fires_on_time_once_embedded() {
    the_accept_deadline_fires_on_time_once(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_deadline_fires_on_time_once_production() {
    the_accept_deadline_fires_on_time_once(Mode::Production).await;
}

/// Two colleagues, known only by their browsers' anonymous ids, send `group` with their
/// company's email and phone: they stay two contacts (the company's email used to link, and
/// so merge, them), and the company's traits are under `group`.
async fn colleagues_in_one_group_stay_two_contacts(mode: Mode) {
    let dir = project("4h", "");
    let config = config(mode, &dir).await;
    let env = TestEnv::start(config, Arc::new(SystemClock), false).await;
    let api = spawn_api(&env).await;
    for (user, email) in [("ada", "ada@acme.example"), ("bo", "bo@acme.example")] {
        let identify = json!({"anonymousId": user, "traits": {"email": email}}).to_string();
        let response = http(
            &api,
            "POST",
            "/v1/identify",
            &[("authorization", "Basic d2s6")],
            identify.as_bytes(),
        )
        .await;
        assert_eq!(response.status, 200);
        let group = json!({"anonymousId": user, "groupId": "acme", "traits": {"name": "Acme", "email": "info@acme.example", "phone": "+86 21 5555 0000"}}).to_string();
        let response = http(
            &api,
            "POST",
            "/v1/group",
            &[("authorization", "Basic d2s6")],
            group.as_bytes(),
        )
        .await;
        assert_eq!(response.status, 200);
    }
    let rows = sqlx::query("SELECT email, phone FROM contacts ORDER BY id")
        .fetch_all(&env.engine.store.pool)
        .await
        .unwrap();
    let people: Vec<(Option<String>, Option<String>)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(
        people,
        [
            (Some("ada@acme.example".into()), None),
            (Some("bo@acme.example".into()), None)
        ]
    );
    let (_, ada) = get(&api, "/v1/contacts?email=ada@acme.example", "admin").await;
    assert_eq!(ada["traits"]["group"]["value"]["email"], "info@acme.example", "{ada}");
    assert_eq!(ada["traits"]["group"]["value"]["id"], "acme");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colleagues_in_one_group_stay_two_contacts_embedded() {
    colleagues_in_one_group_stay_two_contacts(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colleagues_in_one_group_stay_two_contacts_production() {
    colleagues_in_one_group_stay_two_contacts(Mode::Production).await;
}
