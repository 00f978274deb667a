use super::*;
use chrono::TimeZone;

fn facts_with<'a>(
    traits: &'a Map<String, Json>,
    tags: &'a [String],
    contact: &'a ContactFacts,
    event: Option<&'a EventFacts>,
) -> Facts<'a> {
    Facts {
        score: 55,
        stage: "lead",
        tags,
        traits,
        contact,
        trigger: event,
        event,
        inactive_days: 3,
        now: Utc.with_ymd_and_hms(2026, 1, 5, 2, 0, 0).unwrap(),
        counter: &(),
    }
}

fn compile(source: &str) -> Result<Expr, Vec<ExprError>> {
    Expr::compile(source, Place::EventFilter { has_trigger: true }, Want::Bool)
}

#[test]
fn conditions_read_score_tags_traits_and_event_properties() {
    let traits: Map<String, Json> = serde_json::from_str(r#"{"industry": "manufacturing"}"#).unwrap();
    let tags = vec!["vip".to_string()];
    let contact = ContactFacts::default();
    let event = EventFacts {
        name: "Order Completed".into(),
        properties: serde_json::from_str(r#"{"revenue": 120.5}"#).unwrap(),
        timestamp: None,
    };
    let facts = facts_with(&traits, &tags, &contact, Some(&event));
    for (source, expected) in [
        ("score >= 50", true),
        ("\"vip\" in tags && traits.industry == \"manufacturing\"", true),
        ("event.properties.revenue > 0", true),
        ("traits.region == \"Shanghai\"", false),
        ("stage == \"customer\" || \"do-not-contact\" in tags", false),
        ("has(traits.industry)", true),
    ] {
        let expr = compile(source).unwrap_or_else(|e| panic!("{source}: {e:?}"));
        assert_eq!(expr.eval_bool(&facts), Ok(expected), "{source}");
    }
}

#[test]
fn unknown_names_point_at_the_mistake() {
    let errors = compile("scor >= 50").unwrap_err();
    assert_eq!(errors[0].offset, 0);
    assert_eq!(errors[0].hint.as_deref(), Some("did you mean `score`?"));

    let errors = compile("score >= 50 && contact.emial == \"a\"").unwrap_err();
    assert_eq!(errors[0].message, "the contact has no field `emial`");
    assert_eq!(errors[0].hint.as_deref(), Some("did you mean `email`?"));

    let errors = Expr::compile("event.name == \"x\"", Place::Contact { has_trigger: true }, Want::Bool).unwrap_err();
    assert!(errors[0].message.contains("`event` is only known"), "{errors:?}");
}

#[test]
fn type_mistakes_are_caught_before_a_journey_ships() {
    let errors = compile("score >= \"50\"").unwrap_err();
    assert!(
        errors[0]
            .message
            .contains("cannot order a whole number against a string"),
        "{errors:?}"
    );
    let errors = compile("score + 1").unwrap_err();
    assert!(errors[0].message.contains("must be true or false"), "{errors:?}");
    let errors = compile("tags.contains(\"vip\")").unwrap_err();
    assert!(errors[0].hint.as_deref().unwrap().contains("in list"), "{errors:?}");
    let errors = compile("score >= ").unwrap_err();
    assert!(errors[0].message.starts_with("cannot parse"), "{errors:?}");
}

struct Fixed;
impl EventCounter for Fixed {
    fn count_events(&self, name: &str, _since: DateTime<Utc>) -> i64 {
        if name == "Pricing Page Viewed" { 2 } else { 0 }
    }
}

#[test]
fn count_events_asks_the_contacts_history() {
    let traits = Map::new();
    let contact = ContactFacts::default();
    let mut facts = facts_with(&traits, &[], &contact, None);
    facts.counter = &Fixed;
    let expr = compile("count_events(\"Pricing Page Viewed\", \"7d\") >= 2").unwrap();
    assert_eq!(expr.eval_bool(&facts), Ok(true));
    let errors = compile("count_events(\"Pricing Page Viewed\", \"7 days\") >= 2").unwrap_err();
    assert!(errors[0].message.contains("bad window"), "{errors:?}");
}

#[test]
fn has_guards_a_missing_trait() {
    let traits = Map::new();
    let contact = ContactFacts::default();
    let facts = facts_with(&traits, &[], &contact, None);
    let expr = compile("has(traits.company_size) && traits.company_size >= 200").unwrap();
    assert_eq!(expr.eval_bool(&facts), Ok(false));
    let expr = compile("traits.region != \"Shanghai\"").unwrap();
    assert_eq!(
        expr.eval_bool(&facts),
        Ok(true),
        "a missing trait is null, and null is not Shanghai"
    );
}

#[test]
fn an_expression_says_whether_it_reads_the_contact() {
    let key = |source: &str| Expr::compile(source, Place::Contact { has_trigger: true }, Want::Key).unwrap();
    assert!(!key("trigger.properties.order").reads_contact());
    assert!(
        !compile("event.properties.value > 100 && now > timestamp(\"2026-01-01T00:00:00Z\")")
            .unwrap()
            .reads_contact()
    );
    for reads in [
        "score >= 50",
        "traits.plan == \"pro\"",
        "\"vip\" in tags",
        "contact.email != null",
        "inactive_days > 30",
        "stage == \"mql\"",
        "count_events(\"Page Viewed\", \"7d\") > 3",
    ] {
        assert!(compile(reads).unwrap().reads_contact(), "{reads}");
    }
    // Bound only what it reads, the expression still evaluates.
    let traits = Map::new();
    let view = ContactFacts::default();
    let order = EventFacts {
        name: "Order Placed".into(),
        properties: serde_json::from_str(r#"{"order": "o-1"}"#).unwrap(),
        timestamp: None,
    };
    let facts = facts_with(&traits, &[], &view, Some(&order));
    assert_eq!(
        key("trigger.properties.order").eval(&facts).unwrap(),
        Json::String("o-1".into())
    );
}
