//! The shipped journeys, simulated: the seeds' stories behave as marketers expect.

use crate::support::{nurture, root, stderr, stdout};
use serde_json::Value;
use std::path::PathBuf;

/// A scratch directory for contact and event files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nurture-sim-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn simulate(journey: &str, contact: &str, events: &str) -> Value {
    let dir = scratch(journey.trim_end_matches(".yaml").rsplit('/').next().unwrap());
    let contact_path = dir.join(format!("contact-{}.json", contact.len()));
    let events_path = dir.join(format!("events-{}.jsonl", events.len()));
    std::fs::write(&contact_path, contact).unwrap();
    std::fs::write(&events_path, events).unwrap();
    let output = nurture(
        &root(),
        &[
            "simulate",
            journey,
            "--contact",
            contact_path.to_str().unwrap(),
            "--events",
            events_path.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("JSON report")
}

/// `(offset, step, outcome)` of every step entry.
fn story(report: &Value) -> Vec<(String, String, String)> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["step"].is_null())
        .map(|e| {
            (
                e["offset"].as_str().unwrap().into(),
                e["step"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn has(story: &[(String, String, String)], offset: &str, step: &str, outcome: &str) -> bool {
    story
        .iter()
        .any(|(o, s, out)| o == offset && s == step && out == outcome)
}

const ADA: &str = r#"{"email": "ada@example.com", "traits": {"first_name": "Ada", "industry": "software"}, "score": 20, "stage": "lead"}"#;
const DOWNLOAD: &str = r#"{"event": "Whitepaper Downloaded", "properties": {"topic": "automation"}, "at": "+0s"}"#;

#[test]
fn whitepaper_pricing_click_goes_to_sales() {
    let events = format!(
        "{DOWNLOAD}\n{{\"event\": \"Email Link Clicked\", \"properties\": {{\"link\": \"pricing\"}}, \"at\": \"+2h\"}}\n"
    );
    let report = simulate("journeys/whitepaper-nurture.yaml", ADA, &events);
    let story = story(&report);
    assert!(has(&story, "+0s", "tag-intent", "tagged"), "{story:?}");
    assert!(has(&story, "+0s", "wait-hour", "waiting"), "{story:?}");
    assert!(
        has(&story, "+1h", "intro-email", "sent"),
        "the email goes out an hour later: {story:?}"
    );
    assert!(has(&story, "+2h", "await-pricing-click", "event"), "{story:?}");
    assert!(has(&story, "+2h", "hand-to-sales", "assigned"), "{story:?}");
    assert!(
        !story.iter().any(|(_, step, _)| step == "check-score"),
        "no timeout path: {story:?}"
    );
    assert_eq!(report["outcome"], "completed");
    let email = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["step"] == "intro-email")
        .unwrap();
    assert!(
        email["message"]["subject"].as_str().is_some_and(|s| !s.is_empty()),
        "{email}"
    );
    assert_eq!(email["message"]["to"], "ada@example.com");
}

#[test]
fn whitepaper_without_a_click_takes_the_three_day_timeout() {
    let report = simulate("journeys/whitepaper-nurture.yaml", ADA, &format!("{DOWNLOAD}\n"));
    let story = story(&report);
    assert!(has(&story, "+1h", "intro-email", "sent"), "{story:?}");
    assert!(has(&story, "+3d1h", "await-pricing-click", "timed_out"), "{story:?}");
    assert!(has(&story, "+3d1h", "check-score", "branched"), "{story:?}");
    assert!(
        !story.iter().any(|(_, step, _)| step == "hand-to-sales"),
        "score 20 in software is not for sales: {story:?}"
    );
    assert_eq!(report["outcome"], "completed");
}

#[test]
fn whitepaper_branch_sends_manufacturing_leads_an_sms() {
    let contact = r#"{"email": "wang@example.com", "phone": "+8613800138000", "language": "zh", "traits": {"industry": "manufacturing"}, "score": 30}"#;
    let report = simulate("journeys/whitepaper-nurture.yaml", contact, &format!("{DOWNLOAD}\n"));
    let story = story(&report);
    assert!(has(&story, "+3d1h", "reminder-sms", "sent"), "{story:?}");
    let branch = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["step"] == "check-score")
        .unwrap();
    let detail = branch["detail"].as_str().unwrap();
    assert!(
        detail.contains("score = 30") && detail.contains("traits.industry = \"manufacturing\""),
        "the values that decided: {detail}"
    );
}

#[test]
fn whitepaper_high_score_timeout_still_reaches_sales() {
    let contact = r#"{"email": "bo@example.com", "traits": {}, "score": 75}"#;
    let report = simulate("journeys/whitepaper-nurture.yaml", contact, &format!("{DOWNLOAD}\n"));
    assert!(
        has(&story(&report), "+3d1h", "hand-to-sales", "assigned"),
        "{:?}",
        story(&report)
    );
}

#[test]
fn whitepaper_goal_exits_as_a_conversion() {
    let events = format!(
        "{DOWNLOAD}\n{{\"event\": \"Order Completed\", \"properties\": {{\"revenue\": 990}}, \"at\": \"+5h\"}}\n"
    );
    let report = simulate("journeys/whitepaper-nurture.yaml", ADA, &events);
    assert_eq!(report["outcome"], "converted", "{:?}", story(&report));
}

#[test]
fn whitepaper_do_not_contact_exits_before_the_email() {
    let contact = r#"{"email": "no@example.com", "tags": ["do-not-contact"], "score": 90}"#;
    let report = simulate("journeys/whitepaper-nurture.yaml", contact, &format!("{DOWNLOAD}\n"));
    assert_eq!(report["outcome"], "exited");
    assert!(
        !story(&report).iter().any(|(_, _, outcome)| outcome == "sent"),
        "{:?}",
        story(&report)
    );
}

#[test]
fn whitepaper_text_output_tells_the_story() {
    let dir = scratch("text");
    std::fs::write(dir.join("ada.json"), ADA).unwrap();
    std::fs::write(dir.join("events.jsonl"), format!("{DOWNLOAD}\n")).unwrap();
    let output = nurture(
        &root(),
        &[
            "simulate",
            "journeys/whitepaper-nurture.yaml",
            "--contact",
            dir.join("ada.json").to_str().unwrap(),
            "--events",
            dir.join("events.jsonl").to_str().unwrap(),
        ],
    );
    let text = stdout(&output);
    assert!(text.contains("subject: "), "{text}");
    assert!(text.contains("timed_out"), "{text}");
}

#[test]
fn abandoned_cart_sends_the_coupon_unless_that_cart_was_ordered() {
    let cart = r#"{"event": "Cart Abandoned", "properties": {"cart_id": "c1", "value": 300}, "at": "+0s"}"#;
    let other_order = r#"{"event": "Order Completed", "properties": {"cart_id": "c2", "revenue": 50}, "at": "+30m"}"#;
    let report = simulate("journeys/abandoned-cart.yaml", ADA, &format!("{cart}\n{other_order}\n"));
    assert!(
        story(&report).iter().any(|(_, _, outcome)| outcome == "sent"),
        "another cart's order does not count: {:?}",
        story(&report)
    );

    let this_order = r#"{"event": "Order Completed", "properties": {"cart_id": "c1", "revenue": 300}, "at": "+30m"}"#;
    let report = simulate("journeys/abandoned-cart.yaml", ADA, &format!("{cart}\n{this_order}\n"));
    assert!(
        !story(&report).iter().any(|(_, _, outcome)| outcome == "sent"),
        "{:?}",
        story(&report)
    );
    assert_ne!(report["outcome"], "still_running");
}

#[test]
fn regional_invitation_reaches_shanghai_manufacturers_only() {
    let shanghai = r#"{"phone": "+8613800138000", "language": "zh", "traits": {"region": "Shanghai", "industry": "manufacturing"}}"#;
    let report = simulate("journeys/regional-event-invitation.yaml", shanghai, "");
    let sms = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"]["channel"] == "sms")
        .expect("an SMS invitation");
    assert!(!sms["message"]["lines"][0].as_str().unwrap().is_empty());

    let beijing = r#"{"phone": "+8613900139000", "traits": {"region": "Beijing", "industry": "manufacturing"}}"#;
    let report = simulate("journeys/regional-event-invitation.yaml", beijing, "");
    assert_eq!(report["outcome"], "not_enrolled");
}

#[test]
fn dormant_contacts_get_a_coupon_then_a_churn_risk_tag() {
    let dormant = r#"{"email": "old@example.com", "stage": "lead", "last_seen_at": "2025-06-01T00:00:00Z"}"#;
    let report = simulate("journeys/dormant-reactivation.yaml", dormant, "");
    let story = story(&report);
    assert!(story.iter().any(|(_, _, outcome)| outcome == "sent"), "{story:?}");
    assert!(story.iter().any(|(_, _, outcome)| outcome == "tagged"), "{story:?}");

    let active = r#"{"email": "new@example.com", "stage": "lead", "last_seen_at": "2026-01-01T00:00:00Z"}"#;
    assert_eq!(
        simulate("journeys/dormant-reactivation.yaml", active, "")["outcome"],
        "not_enrolled"
    );
}

#[test]
fn sql_handoff_reassigns_when_nobody_accepts() {
    let lead = r#"{"email": "lead@example.com", "stage": "mql", "score": 120}"#;
    let report = simulate("journeys/sql-handoff.yaml", lead, "");
    let assigned = story(&report)
        .iter()
        .filter(|(_, _, outcome)| outcome == "assigned")
        .count();
    assert!(assigned >= 2, "assigned, timed out, reassigned: {:?}", story(&report));

    let accepted = r#"{"event": "Lead Accepted", "at": "+1h"}"#;
    let report = simulate("journeys/sql-handoff.yaml", lead, &format!("{accepted}\n"));
    let assigned = story(&report)
        .iter()
        .filter(|(_, _, outcome)| outcome == "assigned")
        .count();
    assert_eq!(assigned, 1, "{:?}", story(&report));
}
