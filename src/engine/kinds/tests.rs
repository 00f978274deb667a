//! `advance` itself: the position and effects of one move, with consent and guardrails.

use crate::engine::contact::Contact;
use crate::engine::transition::{
    Advance, Effect, Enrollment, History, Input, Park, Position, World, advance, enrollment_key, start_position,
};
use crate::expr::{EventCounter, EventFacts};
use crate::journey::values::Guardrails;
use crate::journey::{Catalog, Journey, SourceFile, Sources, compile_with};
use chrono::{DateTime, TimeZone, Utc};
use std::sync::Arc;

/// When the contact's earlier messages were recorded.
struct Sent(Vec<DateTime<Utc>>);

impl EventCounter for Sent {
    fn count_events(&self, _name: &str, _since: DateTime<Utc>) -> i64 {
        0
    }
}

impl History for Sent {
    fn messages_since(&self, since: DateTime<Utc>) -> u32 {
        self.0.iter().filter(|at| **at >= since).count() as u32
    }
}

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        text: text.into(),
    }
}

/// A project of one journey and three templates, compiled under `guardrails`.
fn project(journey: &str, guardrails: &str) -> (Catalog, Arc<Journey>) {
    let guardrails = match guardrails {
        "" => Guardrails::default(),
        text => {
            let (cap, quiet) = text.split_once(';').unwrap_or((text, ""));
            Guardrails {
                frequency_cap: (!cap.is_empty()).then(|| cap.parse().unwrap()),
                quiet_hours: (!quiet.is_empty()).then(|| quiet.parse().unwrap()),
            }
        }
    };
    let sources = Sources {
        journeys: vec![file("journeys/j.yaml", journey)],
        templates: vec![
            file(
                "templates/intro.email.hbs",
                "---\nsubject: Hello\n---\n<p>Hi</p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a>\n",
            ),
            file(
                "templates/receipt.email.hbs",
                "---\nsubject: Your receipt\nclass: transactional\n---\n<p>Thanks</p>\n",
            ),
            file("templates/nudge.sms.hbs", "Hi from Acme\n"),
        ],
        ..Sources::default()
    };
    let (catalog, diagnostics) = compile_with(&sources, &guardrails);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let journey = catalog.journeys[0].clone();
    (catalog, journey)
}

const SEND: &str =
    "id: j\ntrigger: {event: Signed Up}\nsteps:\n  - id: hello\n    send_email: intro\n  - id: pause\n    wait: 1d\n";

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, hour, 0, 0).unwrap()
}

fn ada() -> Contact {
    Contact {
        id: "7".into(),
        email: Some("ada@example.com".into()),
        phone: Some("+8613800000000".into()),
        ..Contact::default()
    }
}

fn enrollment(journey: &Journey) -> Enrollment {
    Enrollment {
        id: "1".into(),
        contact_id: "7".into(),
        journey_id: journey.id.clone(),
        version: journey.version.clone(),
        trigger: None,
        key: None,
        position: start_position(journey),
        seq: 0,
        entered_at: at(10),
    }
}

fn step(
    catalog: &Catalog,
    journey: &Journey,
    enrollment: &Enrollment,
    contact: &Contact,
    sent: &Sent,
    now: DateTime<Utc>,
) -> Advance {
    let world = World {
        contact,
        now,
        history: sent,
        catalog,
    };
    advance(journey, enrollment, enrollment.seq, Input::Due, &world).expect("the step runs")
}

/// `(outcome, detail)` of the one history row of a move.
fn said(moved: &Advance) -> (&str, &str) {
    assert_eq!(moved.records.len(), 1, "{:?}", moved.records);
    (moved.records[0].outcome.as_str(), moved.records[0].detail.as_str())
}

#[test]
fn a_message_to_a_consenting_contact_is_an_effect() {
    let (catalog, journey) = project(SEND, "");
    let moved = step(&catalog, &journey, &enrollment(&journey), &ada(), &Sent(vec![]), at(10));
    assert_eq!(moved.position, Position::Entering { step: 1 });
    assert_eq!(
        moved.effects.iter().map(|e| &e.effect).collect::<Vec<_>>(),
        [&Effect::SendEmail {
            template: "intro".into()
        }]
    );
    assert_eq!(said(&moved), ("sent", "intro"));
}

#[test]
fn an_opted_out_contact_is_suppressed_in_the_move_and_goes_on() {
    let (catalog, journey) = project(SEND, "");
    let mut contact = ada();
    contact.consent.insert("email".into(), false);
    let moved = step(
        &catalog,
        &journey,
        &enrollment(&journey),
        &contact,
        &Sent(vec![]),
        at(10),
    );
    assert_eq!(moved.position, Position::Entering { step: 1 }, "the journey goes on");
    assert!(moved.effects.is_empty(), "nothing to send: {:?}", moved.effects);
    assert_eq!(said(&moved), ("suppressed", "the contact opted out of marketing email"));
}

#[test]
fn transactional_email_needs_no_consent_but_sms_does() {
    let receipt = SEND.replace("send_email: intro", "send_email: receipt");
    let (catalog, journey) = project(&receipt, "");
    let mut contact = ada();
    contact.consent.insert("email".into(), false);
    contact.consent.insert("sms".into(), false);
    let moved = step(
        &catalog,
        &journey,
        &enrollment(&journey),
        &contact,
        &Sent(vec![]),
        at(10),
    );
    assert_eq!(said(&moved), ("sent", "receipt"));
    assert_eq!(moved.effects.len(), 1);

    let sms = SEND.replace("send_email: intro", "send_sms: nudge");
    let (catalog, journey) = project(&sms, "");
    let moved = step(
        &catalog,
        &journey,
        &enrollment(&journey),
        &contact,
        &Sent(vec![]),
        at(10),
    );
    assert_eq!(said(&moved), ("suppressed", "the contact opted out of SMS"));
    assert!(moved.effects.is_empty());
}

#[test]
fn the_workspace_cap_suppresses_a_message_at_the_cap() {
    let (catalog, journey) = project(SEND, "2 per 7d");
    let two_days_ago = at(10) - chrono::Duration::days(2);
    let eight_days_ago = at(10) - chrono::Duration::days(8);
    let under = Sent(vec![two_days_ago, eight_days_ago]);
    let moved = step(&catalog, &journey, &enrollment(&journey), &ada(), &under, at(10));
    assert_eq!(
        said(&moved),
        ("sent", "intro"),
        "a message older than the window does not count"
    );

    let at_cap = Sent(vec![two_days_ago, two_days_ago]);
    let moved = step(&catalog, &journey, &enrollment(&journey), &ada(), &at_cap, at(10));
    assert_eq!(moved.position, Position::Entering { step: 1 });
    assert!(moved.effects.is_empty());
    assert_eq!(
        said(&moved),
        (
            "suppressed",
            "frequency cap 2 per 1w (nurture.toml): 2 messages in the last 1w"
        )
    );
}

#[test]
fn a_journey_cap_holds_alongside_the_workspace_cap() {
    let tighter = SEND.replace("steps:", "settings: {frequency_cap: 1 per 1d}\nsteps:");
    let (catalog, journey) = project(&tighter, "3 per 7d");
    let sent = Sent(vec![at(10) - chrono::Duration::hours(3)]);
    let moved = step(&catalog, &journey, &enrollment(&journey), &ada(), &sent, at(10));
    assert_eq!(
        said(&moved),
        (
            "suppressed",
            "frequency cap 1 per 1d (journey settings): 1 message in the last 1d"
        )
    );
}

#[test]
fn workspace_quiet_hours_hold_a_message_then_every_rule_is_checked_again() {
    let (catalog, journey) = project(SEND, ";21:00-08:00");
    let mut enrollment = enrollment(&journey);
    let moved = step(&catalog, &journey, &enrollment, &ada(), &Sent(vec![]), at(22));
    let release = Utc.with_ymd_and_hms(2026, 1, 6, 8, 0, 0).unwrap();
    assert_eq!(
        moved.position,
        Position::Parked {
            step: 0,
            until: release,
            reason: Park::QuietHours
        }
    );
    assert!(moved.effects.is_empty());
    assert_eq!(said(&moved).0, "deferred");
    assert!(
        said(&moved).1.contains("21:00-08:00 (nurture.toml)"),
        "{:?}",
        said(&moved)
    );

    enrollment.position = moved.position;
    enrollment.seq = moved.seq;
    let moved = step(&catalog, &journey, &enrollment, &ada(), &Sent(vec![]), release);
    assert_eq!(said(&moved), ("sent", "intro"));
    assert_eq!(moved.position, Position::Entering { step: 1 });

    // The contact opted out overnight: released, the message is suppressed, not sent.
    let mut opted_out = ada();
    opted_out.consent.insert("email".into(), false);
    let moved = step(&catalog, &journey, &enrollment, &opted_out, &Sent(vec![]), release);
    assert_eq!(said(&moved), ("suppressed", "the contact opted out of marketing email"));
}

#[test]
fn a_suppressed_message_is_not_held_for_quiet_hours() {
    let (catalog, journey) = project(SEND, ";21:00-08:00");
    let mut contact = ada();
    contact.email = None;
    let moved = step(
        &catalog,
        &journey,
        &enrollment(&journey),
        &contact,
        &Sent(vec![]),
        at(22),
    );
    assert_eq!(moved.position, Position::Entering { step: 1 });
    assert_eq!(said(&moved), ("suppressed", "the contact has no email address"));
}

#[test]
fn the_enrollment_key_and_start_come_from_the_same_functions_everywhere() {
    let keyed = "id: j\ntrigger: {event: Order Placed}\nenrollment_key: trigger.properties.order_id\nsteps:\n  - id: hello\n    send_email: intro\n";
    let (_, journey) = project(keyed, "");
    let order = |properties: serde_json::Value| EventFacts {
        name: "Order Placed".into(),
        properties: properties.as_object().cloned().unwrap_or_default(),
        timestamp: Some(at(10)),
    };
    let key = |event: &EventFacts| enrollment_key(&journey, &ada(), Some(event), at(10));
    assert_eq!(
        key(&order(serde_json::json!({"order_id": "A-1"}))),
        Some(Some("A-1".into()))
    );
    assert_eq!(
        key(&order(serde_json::json!({"order_id": 42}))),
        Some(Some("42".into()))
    );
    assert_eq!(key(&order(serde_json::json!({}))), None, "no key, no enrollment");
    assert_eq!(start_position(&journey), Position::Entering { step: 0 });
}

#[test]
fn exit_now_ends_a_parked_enrollment_only_when_exit_when_holds() {
    let journey_text = format!("{SEND}exit_when: stage == \"customer\"\n");
    let (catalog, journey) = project(&journey_text, "");
    let mut parked = enrollment(&journey);
    parked.position = Position::Parked {
        step: 1,
        until: at(20),
        reason: Park::Wait,
    };
    parked.seq = 2;
    let sent = Sent(vec![]);
    let exit_for = |contact: &Contact| {
        let world = World {
            contact,
            now: at(12),
            history: &sent,
            catalog: &catalog,
        };
        crate::engine::transition::exit_now(&journey, &parked, &world)
    };
    let mut contact = ada();
    assert_eq!(exit_for(&contact), None);
    contact.stage = crate::journey::values::Stage::Customer;
    let exit = exit_for(&contact).expect("it exits");
    assert_eq!(
        exit.position,
        Position::Finished {
            outcome: crate::engine::Outcome::Exited
        }
    );
    assert_eq!(exit.seq, 3, "a move like any other: a compare-and-set on seq");
    assert!(exit.effects.is_empty());
    let (outcome, detail) = said(&exit);
    assert_eq!(outcome, "exited");
    assert!(
        detail.starts_with("exit_when `stage == \"customer\"` is true"),
        "{detail}"
    );
}
