//! Consent and guardrails are decided in the move, by the same `advance` in `nurture simulate`
//! and in the running engine: both tell the same story, step by step, for the same journey and
//! contacts, in both modes.

use crate::support::{
    Mode, SmtpSink, TestEnv, eventually, http, nurture, scratch_dir, spawn_api, stderr, stdout, test_config,
    virtual_clock,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "wk-guardrails";
const ADMIN: &str = "admin-guardrails";
const START: &str = "2026-01-05T10:00:00Z";

/// A project whose workspace caps messages at 2 a week, and a journey of four messages.
fn project() -> PathBuf {
    let dir = scratch_dir("guardrails");
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("nurture.toml", "[guardrails]\nfrequency_cap = \"2 per 7d\"\n");
    write(
        "journeys/guarded.yaml",
        "id: guarded\ntrigger: {event: Signed Up}\nsteps:\n  - id: welcome\n    send_email: welcome\n  - id: tips\n    send_email: tips\n  - id: offer\n    send_email: offer\n  - id: nudge\n    send_sms: nudge\n",
    );
    for name in ["welcome", "tips", "offer"] {
        write(
            &format!("templates/{name}.email.hbs"),
            &format!(
                "---\nsubject: About {name}\n---\n<p>{name}</p><a href=\"{{{{unsubscribe_url}}}}\">Unsubscribe</a>\n"
            ),
        );
    }
    write("templates/nudge.sms.hbs", "A nudge from Acme\n");
    dir
}

/// `user id -> (contact file for simulate, traits for identify)`.
fn contacts() -> Vec<(&'static str, Value)> {
    vec![
        ("ada", json!({"email": "ada@example.com", "phone": "+8613800000001"})),
        (
            "bob",
            json!({"email": "bob@example.com", "phone": "+8613800000002", "consent": {"email": false}}),
        ),
    ]
}

/// Each message step's outcome: `sent`, or `suppressed: REASON`.
type Story = BTreeMap<String, String>;

fn simulated(project: &Path, user: &str, contact: &Value) -> Story {
    let contact_file = project.join(format!("{user}.json"));
    let events_file = project.join("signed-up.jsonl");
    std::fs::write(&contact_file, contact.to_string()).unwrap();
    std::fs::write(&events_file, "{\"event\": \"Signed Up\", \"at\": \"+0s\"}\n").unwrap();
    let output = nurture(
        project,
        &[
            "simulate",
            "journeys/guarded.yaml",
            "--contact",
            contact_file.to_str().unwrap(),
            "--events",
            events_file.to_str().unwrap(),
            "--start",
            START,
            "--format",
            "json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| {
            let step = entry["step"].as_str()?.to_string();
            match entry["outcome"].as_str()? {
                "sent" => Some((step, "sent".into())),
                "suppressed" => Some((step, format!("suppressed: {}", entry["detail"].as_str()?))),
                _ => None,
            }
        })
        .collect()
}

async fn request(base: &str, method: &str, path: &str, body: &Value) -> crate::support::Response {
    use base64::Engine as _;
    let auth = if path.starts_with("/v1/contacts") {
        format!("Bearer {ADMIN}")
    } else {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"))
        )
    };
    let body = if method == "GET" {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    http(
        base,
        method,
        path,
        &[("authorization", &auth), ("content-type", "application/json")],
        &body,
    )
    .await
}

/// The same contacts through the events API and the step workers, read back from the 360 view.
async fn produced(mode: Mode, project: &Path, sink: &SmtpSink) -> (TestEnv, BTreeMap<String, Story>) {
    let mut config = test_config(mode, &project.join("journeys")).await;
    let toml = std::fs::read_to_string(project.join("nurture.toml")).unwrap();
    config.guardrails = nurture::config::parse_file("nurture.toml", &toml).unwrap().guardrails;
    config.write_keys = vec![KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    config.smtp_url = Some(sink.url());
    let env = TestEnv::start(config, Arc::new(virtual_clock(START)), true).await;
    let base = spawn_api(&env).await;
    let mut stories = BTreeMap::new();
    for (user, traits) in contacts() {
        let identify = json!({"userId": user, "traits": traits});
        assert_eq!(request(&base, "POST", "/v1/identify", &identify).await.status, 200);
        let track = json!({"userId": user, "event": "Signed Up"});
        assert_eq!(request(&base, "POST", "/v1/track", &track).await.status, 200);
    }
    for (user, _) in contacts() {
        let path = format!("/v1/contacts?user_id={user}");
        let contact = eventually(&format!("{user}'s journey to end"), Duration::from_secs(60), || async {
            let contact = request(&base, "GET", &path, &json!(null)).await.json();
            let done = contact["enrollments"].as_array()?.first()?["status"] == "completed";
            let sending = contact["messages"].as_array()?.iter().any(|m| m["status"] != "done");
            (done && !sending).then_some(contact)
        })
        .await;
        let mut story = Story::new();
        for message in contact["messages"].as_array().unwrap() {
            story.insert(message["step"].as_str().unwrap().into(), "sent".into());
        }
        for suppressed in contact["suppressed"].as_array().unwrap() {
            let reason = suppressed["reason"].as_str().unwrap();
            story.insert(
                suppressed["step"].as_str().unwrap().into(),
                format!("suppressed: {reason}"),
            );
        }
        stories.insert(user.to_string(), story);
    }
    (env, stories)
}

async fn simulate_and_production_agree(mode: Mode) {
    let project = project();
    let sink = SmtpSink::start(0, 250).await;
    let (env, produced) = produced(mode, &project, &sink).await;
    let simulated: BTreeMap<String, Story> = contacts()
        .into_iter()
        .map(|(user, contact)| (user.to_string(), simulated(&project, user, &contact)))
        .collect();
    assert_eq!(simulated, produced, "simulate and production tell different stories");

    let cap = "suppressed: frequency cap 2 per 1w (nurture.toml): 2 messages in the last 1w";
    let opted_out = "suppressed: the contact opted out of marketing email";
    let expected =
        |pairs: [(&str, &str); 4]| -> Story { pairs.iter().map(|(s, o)| (s.to_string(), o.to_string())).collect() };
    assert_eq!(
        produced["ada"],
        expected([("welcome", "sent"), ("tips", "sent"), ("offer", cap), ("nudge", cap)])
    );
    assert_eq!(
        produced["bob"],
        expected([
            ("welcome", opted_out),
            ("tips", opted_out),
            ("offer", opted_out),
            ("nudge", "sent")
        ]),
        "suppressed messages do not count toward the cap, so Bob's SMS goes out"
    );
    assert_eq!(sink.count(), 2, "only Ada's two emails reached the SMTP server");
    let sms: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sms_messages")
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap();
    assert_eq!(sms, 1, "only Bob's SMS, to the outbox or the provider");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_and_the_embedded_engine_agree_on_consent_and_the_cap() {
    simulate_and_production_agree(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_and_the_production_engine_agree_on_consent_and_the_cap() {
    simulate_and_production_agree(Mode::Production).await;
}

#[test]
fn validate_refuses_a_journey_that_loosens_the_workspace_guardrails() {
    let project = project();
    std::fs::write(
        project.join("journeys/loose.yaml"),
        "id: loose\ntrigger: {event: Signed Up}\nsettings:\n  frequency_cap: 5 per 7d\nsteps:\n  - id: welcome\n    send_email: welcome\n",
    )
    .unwrap();
    let output = nurture(&project, &["validate"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let errors = stderr(&output);
    assert!(
        errors.contains("journeys/loose.yaml:4:18: error[J027]: frequency cap `5 per 1w` allows more messages than the workspace's `2 per 1w` (nurture.toml)"),
        "{errors}"
    );
    assert!(errors.contains("write at most 2 per 1w"), "{errors}");
}
