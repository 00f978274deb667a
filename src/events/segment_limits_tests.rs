//! Each limit of `crate::limits` that a message meets, at the boundary: at the limit a message
//! is accepted, one over it is refused with the field named.

use super::*;
use serde_json::json;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T14:16:12Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn track(extra: Json) -> Json {
    let mut body = json!({"userId": "u1", "event": "Signed Up"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// The field of the refusal, or `None` when the message was accepted.
fn refused(body: &Json, kind: Kind) -> Option<String> {
    let mut n = 0;
    match parse_single(body, kind, now(), &mut || {
        n += 1;
        format!("id-{n}")
    }) {
        Ok(parsed) => {
            assert_eq!(parsed.messages.len(), 1);
            None
        }
        Err(invalid) => Some(invalid.field),
    }
}

/// Objects nested `levels` deep, the outermost included: `{"a": {"a": 1}}` is 2.
fn nested(levels: usize) -> Json {
    let mut value = json!(1);
    for _ in 0..levels {
        value = json!({ "a": value });
    }
    value
}

#[test]
fn ids_are_at_most_200_characters() {
    for (key, kind) in [
        ("userId", Kind::Track),
        ("anonymousId", Kind::Track),
        ("messageId", Kind::Track),
        ("groupId", Kind::Group),
    ] {
        let id = |length: usize| track(json!({ key: "é".repeat(length) }));
        assert_eq!(refused(&id(MAX_ID_CHARS), kind), None, "{key}");
        assert_eq!(refused(&id(MAX_ID_CHARS + 1), kind).as_deref(), Some(key));
    }
    let alias = |previous: usize| json!({"userId": "u1", "previousId": "p".repeat(previous)});
    assert_eq!(refused(&alias(MAX_ID_CHARS), Kind::Alias), None);
    assert_eq!(
        refused(&alias(MAX_ID_CHARS + 1), Kind::Alias).as_deref(),
        Some("previousId")
    );
}

#[test]
fn event_names_are_at_most_200_characters() {
    let event = |length: usize| track(json!({"event": "名".repeat(length)}));
    assert_eq!(refused(&event(MAX_EVENT_NAME_CHARS), Kind::Track), None);
    assert_eq!(
        refused(&event(MAX_EVENT_NAME_CHARS + 1), Kind::Track).as_deref(),
        Some("event")
    );
}

#[test]
fn traits_properties_and_context_nest_at_most_10_levels() {
    for field in ["traits", "properties", "context"] {
        let kind = if field == "traits" { Kind::Identify } else { Kind::Track };
        // The field itself is the first level.
        let at = track(json!({ field: nested(MAX_JSON_DEPTH) }));
        assert_eq!(refused(&at, kind), None, "{field}");
        let over = track(json!({ field: nested(MAX_JSON_DEPTH + 1) }));
        let expected = format!("{field}{}", ".a".repeat(MAX_JSON_DEPTH));
        assert_eq!(refused(&over, kind), Some(expected));
    }
    // Lists count as levels too, and the place is named with its index.
    let list = track(json!({"properties": {"items": [[[[[[[[[1]]]]]]]]]}}));
    assert_eq!(refused(&list, Kind::Track), None);
    let list = track(json!({"properties": {"items": [0, [[[[[[[[[1]]]]]]]]]]}}));
    assert_eq!(
        refused(&list, Kind::Track).as_deref(),
        Some("properties.items[1][0][0][0][0][0][0][0][0]")
    );
}

#[test]
fn an_object_holds_at_most_255_keys() {
    let keys = |count: usize| -> Json { (0..count).map(|i| (format!("k{i}"), json!(i))).collect() };
    for field in ["traits", "properties", "context"] {
        let at = track(json!({ field: keys(MAX_JSON_KEYS) }));
        assert_eq!(refused(&at, Kind::Identify), None, "{field}");
        let over = track(json!({ field: keys(MAX_JSON_KEYS + 1) }));
        assert_eq!(refused(&over, Kind::Identify).as_deref(), Some(field));
    }
    let inner = track(json!({"properties": {"cart": keys(MAX_JSON_KEYS + 1)}}));
    assert_eq!(refused(&inner, Kind::Track).as_deref(), Some("properties.cart"));
}

#[test]
fn keys_are_at_most_255_characters() {
    let key = |length: usize| track(json!({"traits": {"address": { "k".repeat(length): 1 }}}));
    assert_eq!(refused(&key(MAX_KEY_CHARS), Kind::Identify), None);
    assert_eq!(
        refused(&key(MAX_KEY_CHARS + 1), Kind::Identify).as_deref(),
        Some("traits.address")
    );
}

#[test]
fn strings_are_at_most_8192_characters() {
    let text = |length: usize| track(json!({"properties": {"list": ["x", "文".repeat(length)]}}));
    assert_eq!(refused(&text(MAX_STRING_CHARS), Kind::Track), None);
    assert_eq!(
        refused(&text(MAX_STRING_CHARS + 1), Kind::Track).as_deref(),
        Some("properties.list[1]")
    );
    let text = |length: usize| track(json!({"context": {"page": {"url": "u".repeat(length)}}}));
    assert_eq!(refused(&text(MAX_STRING_CHARS), Kind::Track), None);
    assert_eq!(
        refused(&text(MAX_STRING_CHARS + 1), Kind::Track).as_deref(),
        Some("context.page.url")
    );
}

/// A track message of exactly `size` bytes as compact JSON, padded with properties.
fn message_of_size(size: usize, id: &str) -> Json {
    let mut body = track(json!({"userId": id, "properties": {}}));
    let mut pad = 0;
    loop {
        let length = body.to_string().len();
        if length >= size {
            break;
        }
        let room = size - length;
        let properties = body["properties"].as_object_mut().unwrap();
        // `"pN":"…"` costs 7 bytes and a comma besides its text.
        let entry = format!("p{pad}");
        let overhead = entry.len() + 5 + usize::from(!properties.is_empty());
        let text = room.saturating_sub(overhead).min(MAX_STRING_CHARS);
        properties.insert(entry, json!("x".repeat(text)));
        pad += 1;
        if text == 0 {
            // Too little room for another entry: grow the last one instead.
            properties.remove(&format!("p{}", pad - 1));
            let (_, last) = properties.iter_mut().last().unwrap();
            let grown = last.as_str().unwrap().len() + room;
            *last = json!("x".repeat(grown));
            break;
        }
    }
    assert_eq!(body.to_string().len(), size);
    body
}

#[test]
fn a_message_is_at_most_32_kb() {
    let at = message_of_size(MAX_MESSAGE_BYTES, "u1");
    assert_eq!(refused(&at, Kind::Track), None);
    let over = message_of_size(MAX_MESSAGE_BYTES + 1, "u1");
    assert_eq!(refused(&over, Kind::Track).as_deref(), Some("body"));
    // The same limit for one message in a batch, named by its index.
    let mut big = message_of_size(MAX_MESSAGE_BYTES + 1 - r#""type":"track","#.len(), "u1");
    big["type"] = json!("track");
    let batch = json!({"batch": [{"type": "track", "userId": "a", "event": "E"}, big]});
    let parsed = parse_batch(&batch, now(), &mut || "id".into()).unwrap();
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].field, "batch[1]");
}

#[test]
fn a_batch_is_at_most_500_kb_and_2500_messages() {
    let item = |size: usize| {
        let mut item = message_of_size(size - r#""type":"track","#.len(), "u1");
        item["type"] = json!("track");
        assert_eq!(item.to_string().len(), size);
        item
    };
    let count = MAX_BATCH_BYTES / 32_000;
    assert_eq!(count * 32_000, MAX_BATCH_BYTES);
    let mut items: Vec<Json> = (0..count).map(|_| item(32_000)).collect();
    let parsed = parse_batch(&json!({ "batch": items.clone() }), now(), &mut || "id".into()).unwrap();
    assert_eq!(parsed.messages.len(), count);
    items[0] = item(32_001);
    let over = parse_batch(&json!({ "batch": items }), now(), &mut || "id".into()).unwrap_err();
    assert_eq!(over.field, "batch");

    let small = json!({"type": "track", "userId": "u", "event": "E"});
    let at = parse_batch(
        &json!({ "batch": vec![small.clone(); MAX_BATCH_MESSAGES] }),
        now(),
        &mut || "id".into(),
    );
    assert_eq!(at.unwrap().messages.len(), MAX_BATCH_MESSAGES);
    let over = parse_batch(
        &json!({ "batch": vec![small; MAX_BATCH_MESSAGES + 1] }),
        now(),
        &mut || "id".into(),
    );
    assert_eq!(over.unwrap_err().field, "batch");
}

#[test]
fn a_batch_level_context_meets_the_same_limits_once() {
    let body = |depth: usize| json!({"batch": [{"type": "track", "userId": "u", "event": "E"}], "context": {"deep": nested(depth)}});
    assert!(parse_batch(&body(MAX_JSON_DEPTH - 1), now(), &mut || "id".into()).is_ok());
    let error = parse_batch(&body(MAX_JSON_DEPTH), now(), &mut || "id".into()).unwrap_err();
    assert!(error.field.starts_with("context.deep.a"), "{error:?}");
    // A message's own mistakes are named under its index.
    let body = json!({"batch": [
        {"type": "track", "userId": "u", "event": "E"},
        {"type": "track", "userId": "u", "event": "E", "properties": {"note": "x".repeat(MAX_STRING_CHARS + 1)}}
    ]});
    let parsed = parse_batch(&body, now(), &mut || "id".into()).unwrap();
    assert_eq!(parsed.messages.len(), 1);
    assert_eq!(parsed.rejected[0].field, "batch[1].properties.note");
}

#[test]
fn a_body_is_read_up_to_its_limit_decompressed() {
    use std::io::Write;
    let exactly = |size: usize| {
        let text = format!("{{\"p\":\"{}\"}}", "x".repeat(size - 8));
        assert_eq!(text.len(), size);
        text
    };
    let gzip = |text: &str| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    for limit in [MAX_MESSAGE_BYTES, MAX_BATCH_BYTES] {
        assert!(read_body(exactly(limit).as_bytes(), false, limit).is_ok());
        assert!(read_body(&gzip(&exactly(limit)), true, limit).is_ok());
        assert_eq!(
            read_body(exactly(limit + 1).as_bytes(), false, limit)
                .unwrap_err()
                .field,
            "body"
        );
        assert_eq!(
            read_body(&gzip(&exactly(limit + 1)), true, limit).unwrap_err().field,
            "body"
        );
    }
    // A small gzip body that inflates past the limit is stopped at the limit, not inflated whole.
    let bomb = gzip(&" ".repeat(64 * 1024 * 1024));
    assert!(bomb.len() < 100 * 1024);
    assert_eq!(read_body(&bomb, true, MAX_BATCH_BYTES).unwrap_err().field, "body");
}
