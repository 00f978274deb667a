//! The Segment HTTP tracking spec: `identify`, `track`, `page`, `screen`, `group`, `alias` and
//! `batch`, with the quirks of real clients (`null` ids, numeric ids, traits in
//! `context.traits`, batch-level `context` and `sentAt`), limits, and clock-skew correction.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use std::io::Read;

pub use crate::limits::{MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_MESSAGE_BYTES};
use crate::limits::{
    MAX_EVENT_NAME_CHARS, MAX_ID_CHARS, MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_KEY_CHARS, MAX_STRING_CHARS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl Kind {
    pub fn parse(text: &str) -> Option<Kind> {
        Some(match text {
            "identify" | "i" => Kind::Identify,
            "track" | "t" => Kind::Track,
            "page" | "p" => Kind::Page,
            "screen" | "s" => Kind::Screen,
            "group" | "g" => Kind::Group,
            "alias" | "a" => Kind::Alias,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Identify => "identify",
            Kind::Track => "track",
            Kind::Page => "page",
            Kind::Screen => "screen",
            Kind::Group => "group",
            Kind::Alias => "alias",
        }
    }
}

/// A checked message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub message_id: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub previous_id: Option<String>,
    pub group_id: Option<String>,
    /// The event name journeys match: the `event` of a track, `Page Viewed`, `Screen Viewed`,
    /// `Identify`, `Group`, `Alias`.
    pub name: String,
    pub properties: Map<String, Json>,
    /// The person's traits. A `group` call's traits describe the group: they are under
    /// `group` here (with its `id`), so they never touch the person's email or phone.
    pub traits: Map<String, Json>,
    pub context: Map<String, Json>,
    /// When it happened, corrected for the client's clock skew.
    pub timestamp: DateTime<Utc>,
    pub original_timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
}

/// Why a message was refused: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Invalid {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

impl Invalid {
    fn new(field: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            index: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A request body after decompression, ready to parse.
#[derive(Debug)]
pub struct Body {
    pub json: Json,
    pub bytes: usize,
}

/// Reads a body as JSON whatever its content type says, gunzipping when asked, within `limit`
/// bytes decompressed.
pub fn read_body(raw: &[u8], gzip: bool, limit: usize) -> Result<Body, Invalid> {
    let mut bytes = Vec::new();
    if gzip || raw.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = flate2::read::GzDecoder::new(raw).take(limit as u64 + 1);
        decoder
            .read_to_end(&mut bytes)
            .map_err(|e| Invalid::new("body", format!("the gzip body cannot be read: {e}")))?;
    } else {
        bytes.extend_from_slice(raw);
    }
    if bytes.len() > limit {
        return Err(Invalid::new(
            "body",
            format!("the body is larger than {} KB", limit / 1024),
        ));
    }
    let json: Json =
        serde_json::from_slice(&bytes).map_err(|e| Invalid::new("body", format!("the body is not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(Invalid::new("body", "the body must be a JSON object"));
    }
    Ok(Body {
        json,
        bytes: bytes.len(),
    })
}

/// What a request carried: the accepted messages, the refused ones, and a write key if the
/// body named one.
#[derive(Debug, Default)]
pub struct Parsed {
    pub messages: Vec<Message>,
    pub rejected: Vec<Invalid>,
    pub write_key: Option<String>,
}

/// A single-call route (`/v1/track`, `/v1/t`, ...): the type comes from the path.
pub fn parse_single(
    body: &Json,
    kind: Kind,
    received_at: DateTime<Utc>,
    fresh_id: &mut dyn FnMut() -> String,
) -> Result<Parsed, Invalid> {
    let object = body
        .as_object()
        .ok_or_else(|| Invalid::new("body", "the body must be a JSON object"))?;
    let size = json_len(body);
    if size > MAX_MESSAGE_BYTES {
        return Err(Invalid::new(
            "body",
            format!("a message is limited to {} KB", MAX_MESSAGE_BYTES / 1024),
        ));
    }
    let message = parse_message(object, Some(kind), None, None, received_at, fresh_id)?;
    Ok(Parsed {
        messages: vec![message],
        rejected: vec![],
        write_key: string_field(object, "writeKey"),
    })
}

/// `/v1/batch` and `/v1/import`: every item is checked on its own; bad ones are reported by index.
pub fn parse_batch(
    body: &Json,
    received_at: DateTime<Utc>,
    fresh_id: &mut dyn FnMut() -> String,
) -> Result<Parsed, Invalid> {
    let object = body
        .as_object()
        .ok_or_else(|| Invalid::new("body", "the body must be a JSON object"))?;
    let items = match object.get("batch") {
        Some(Json::Array(items)) => items,
        Some(_) => return Err(Invalid::new("batch", "`batch` must be an array of messages")),
        None => return Err(Invalid::new("batch", "`batch` is missing")),
    };
    if items.is_empty() {
        return Err(Invalid::new("batch", "`batch` is empty"));
    }
    if items.len() > MAX_BATCH_MESSAGES {
        return Err(Invalid::new(
            "batch",
            format!("a batch holds at most {MAX_BATCH_MESSAGES} messages"),
        ));
    }
    let shared_context = object.get("context").and_then(Json::as_object);
    // The shared context is copied into every message, so the limits apply to each message with
    // it merged in, measured before anything is copied: a small body must not become a large one.
    let shared: Vec<(&String, usize)> = shared_context
        .into_iter()
        .flatten()
        .map(|(key, value)| (key, json_len(key) + 1 + json_len(value) + 1))
        .collect();
    if 2 + shared.iter().map(|(_, size)| size).sum::<usize>() > MAX_MESSAGE_BYTES {
        return Err(Invalid::new(
            "context",
            format!(
                "the batch-level `context` is merged into every message, and a message is limited to {} KB",
                MAX_MESSAGE_BYTES / 1024
            ),
        ));
    }
    let sizes: Vec<usize> = items.iter().map(|item| merged_len(item, &shared)).collect();
    if sizes.iter().sum::<usize>() > MAX_BATCH_BYTES {
        return Err(Invalid::new(
            "batch",
            format!(
                "a batch is limited to {} KB, counting the batch-level `context` in every message",
                MAX_BATCH_BYTES / 1024
            ),
        ));
    }
    if let Some(shared) = shared_context {
        check_limits("context", shared)?;
    }
    let batch_sent_at = object.get("sentAt").and_then(parse_time);
    let mut parsed = Parsed {
        write_key: string_field(object, "writeKey"),
        ..Parsed::default()
    };
    for (index, (item, size)) in items.iter().zip(sizes).enumerate() {
        let result = (|| {
            let Some(item) = item.as_object() else {
                return Err(Invalid::new("", "a batch item must be a JSON object"));
            };
            if size > MAX_MESSAGE_BYTES {
                return Err(Invalid::new(
                    "",
                    format!(
                        "a message is limited to {} KB, with the batch-level `context` merged in",
                        MAX_MESSAGE_BYTES / 1024
                    ),
                ));
            }
            parse_message(item, None, shared_context, batch_sent_at, received_at, fresh_id)
        })();
        match result {
            Ok(message) => parsed.messages.push(message),
            Err(mut invalid) => {
                invalid.field = if invalid.field.is_empty() {
                    format!("batch[{index}]")
                } else {
                    format!("batch[{index}].{}", invalid.field)
                };
                invalid.index = Some(index);
                parsed.rejected.push(invalid);
            }
        }
    }
    Ok(parsed)
}

/// The length of `value` as compact JSON, counted without building the text.
fn json_len(value: &(impl serde::Serialize + ?Sized)) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The size of a batch item once the shared context's entries it lacks are merged into it (an
/// upper bound, within a few bytes).
fn merged_len(item: &Json, shared: &[(&String, usize)]) -> usize {
    let own = json_len(item);
    if shared.is_empty() {
        return own;
    }
    match item.get("context") {
        Some(Json::Object(context)) => {
            own + shared
                .iter()
                .filter(|(key, _)| !context.contains_key(*key))
                .map(|(_, size)| size)
                .sum::<usize>()
        }
        // Not an object: the item is refused (`context` must be an object), nothing is merged.
        Some(context) if !context.is_null() => own,
        _ => own + r#","context":{}"#.len() + shared.iter().map(|(_, size)| size).sum::<usize>(),
    }
}

fn string_field(object: &Map<String, Json>, key: &str) -> Option<String> {
    id_value(object.get(key))
}

/// Ids may be strings or numbers; `null` and blank mean absent.
fn id_value(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An id field within `MAX_ID_CHARS`.
fn id_field(object: &Map<String, Json>, key: &str) -> Result<Option<String>, Invalid> {
    match string_field(object, key) {
        Some(id) if id.chars().count() > MAX_ID_CHARS => Err(Invalid::new(
            key,
            format!("`{key}` is longer than {MAX_ID_CHARS} characters"),
        )),
        id => Ok(id),
    }
}

/// Checks `traits`, `properties` or `context` against the depth, key and string limits, and
/// names the first place that breaks one (`properties.cart.items[2].name`).
pub fn check_limits(field: &str, map: &Map<String, Json>) -> Result<(), Invalid> {
    let mut path = field.to_string();
    check_object(&mut path, map, 1)
}

fn check_object(path: &mut String, map: &Map<String, Json>, depth: usize) -> Result<(), Invalid> {
    if map.len() > MAX_JSON_KEYS {
        return Err(Invalid::new(
            path,
            format!(
                "`{path}` has {} keys; an object holds at most {MAX_JSON_KEYS}",
                map.len()
            ),
        ));
    }
    for (key, value) in map {
        if key.chars().count() > MAX_KEY_CHARS {
            let start: String = key.chars().take(20).collect();
            return Err(Invalid::new(
                path,
                format!("the key `{start}…` in `{path}` is longer than {MAX_KEY_CHARS} characters"),
            ));
        }
        let length = path.len();
        path.push('.');
        path.push_str(key);
        check_value(path, value, depth)?;
        path.truncate(length);
    }
    Ok(())
}

/// `depth` is the level of the object or list that holds `value`.
fn check_value(path: &mut String, value: &Json, depth: usize) -> Result<(), Invalid> {
    let nested = matches!(value, Json::Object(_) | Json::Array(_));
    if nested && depth + 1 > MAX_JSON_DEPTH {
        let field = path.split(['.', '[']).next().unwrap_or_default().to_string();
        return Err(Invalid::new(
            path,
            format!("`{field}` nests objects and lists deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    match value {
        Json::String(text) if text.chars().count() > MAX_STRING_CHARS => Err(Invalid::new(
            path,
            format!("`{path}` is longer than {MAX_STRING_CHARS} characters"),
        )),
        Json::Object(map) => check_object(path, map, depth + 1),
        Json::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                check_value(path, item, depth + 1)?;
                path.truncate(length);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn parse_time(value: &Json) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn object_field(object: &Map<String, Json>, key: &str) -> Result<Map<String, Json>, Invalid> {
    match object.get(key) {
        None | Some(Json::Null) => Ok(Map::new()),
        Some(Json::Object(map)) => Ok(map.clone()),
        Some(_) => Err(Invalid::new(key, format!("`{key}` must be an object"))),
    }
}

/// One message; `shared_context` is a batch's `context`, merged into the message's own (whose
/// keys win) as the message is read, without copying the message first.
fn parse_message(
    object: &Map<String, Json>,
    route_kind: Option<Kind>,
    shared_context: Option<&Map<String, Json>>,
    batch_sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    fresh_id: &mut dyn FnMut() -> String,
) -> Result<Message, Invalid> {
    let kind = match route_kind {
        Some(kind) => kind,
        None => {
            let text = object
                .get("type")
                .and_then(Json::as_str)
                .ok_or_else(|| Invalid::new("type", "`type` is missing"))?;
            Kind::parse(text).ok_or_else(|| {
                Invalid::new(
                    "type",
                    format!("`{text}` is not a message type (identify, track, page, screen, group, alias)"),
                )
            })?
        }
    };
    let user_id = id_field(object, "userId")?;
    let anonymous_id = id_field(object, "anonymousId")?;
    let previous_id = id_field(object, "previousId")?;
    if user_id.is_none() && anonymous_id.is_none() && kind != Kind::Alias {
        return Err(Invalid::new("userId", "a message needs a `userId` or an `anonymousId`"));
    }
    let mut properties = object_field(object, "properties")?;
    let mut context = object_field(object, "context")?;
    for (key, value) in shared_context.into_iter().flatten() {
        context.entry(key.clone()).or_insert_with(|| value.clone());
    }
    // RudderStack sends identify traits only in `context.traits`.
    let mut traits = object_field(object, "traits")?;
    for (field, map) in [("properties", &properties), ("context", &context), ("traits", &traits)] {
        check_limits(field, map)?;
    }
    if traits.is_empty()
        && kind != Kind::Group
        && let Some(Json::Object(context_traits)) = context.get("traits")
    {
        traits = context_traits.clone();
    }
    let name = match kind {
        Kind::Track => {
            let name = string_field(object, "event")
                .ok_or_else(|| Invalid::new("event", "a track message needs an `event` name"))?;
            if name.chars().count() > MAX_EVENT_NAME_CHARS {
                return Err(Invalid::new(
                    "event",
                    format!("`event` is longer than {MAX_EVENT_NAME_CHARS} characters"),
                ));
            }
            name
        }
        Kind::Page => "Page Viewed".into(),
        Kind::Screen => "Screen Viewed".into(),
        Kind::Identify => "Identify".into(),
        Kind::Group => "Group".into(),
        Kind::Alias => "Alias".into(),
    };
    let group_id = id_field(object, "groupId")?;
    if kind == Kind::Group {
        let Some(id) = &group_id else {
            return Err(Invalid::new("groupId", "a group message needs a `groupId`"));
        };
        // A group's traits are the company's, not the person's: its `email` or `phone` must
        // never identify (and so merge) the colleagues who send it. They are kept whole under
        // the person's `group` trait, and are the `Group` event's properties.
        let mut group = std::mem::take(&mut traits);
        group.insert("id".into(), Json::String(id.clone()));
        properties.extend(group.clone());
        traits.insert("group".into(), Json::Object(group));
    }
    if kind == Kind::Alias && (previous_id.is_none() || user_id.is_none()) {
        let field = if previous_id.is_none() { "previousId" } else { "userId" };
        return Err(Invalid::new(
            field,
            "an alias message needs a `previousId` and a `userId`",
        ));
    }
    if matches!(kind, Kind::Page | Kind::Screen) {
        for key in ["name", "category"] {
            if let Some(value) = object.get(key).filter(|v| !v.is_null()) {
                properties.entry(key.to_string()).or_insert_with(|| value.clone());
            }
        }
    }
    let message_id = match id_field(object, "messageId")? {
        Some(id) => id,
        None => fresh_id(),
    };
    let original = object
        .get("timestamp")
        .or_else(|| object.get("originalTimestamp"))
        .filter(|v| !v.is_null());
    let original_timestamp = match original {
        Some(value) => Some(parse_time(value).ok_or_else(|| {
            Invalid::new(
                "timestamp",
                "`timestamp` must be an ISO 8601 time like 2026-01-05T10:00:00Z",
            )
        })?),
        None => None,
    };
    let sent_at = object.get("sentAt").and_then(parse_time).or(batch_sent_at);
    // Segment's skew correction: trust the client's clock only for the interval between the
    // event and the send, and our own clock for when it was sent.
    let timestamp = match (original_timestamp, sent_at) {
        (Some(original), Some(sent)) => received_at - (sent - original),
        (Some(original), None) => original,
        (None, _) => received_at,
    };
    // Nothing happened after we received it: a time in the future (a client clock ahead with
    // no `sentAt`, or a `sentAt` before the event) is clamped to the receipt, so it can neither
    // pin `last_seen_at` (and stop inactivity counting) nor win every last-writer-wins trait.
    let timestamp = timestamp.min(received_at);
    Ok(Message {
        kind,
        message_id,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        name,
        properties,
        traits,
        context,
        timestamp,
        original_timestamp,
        sent_at,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T14:16:12Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("generated-{n}")
        }
    }

    #[test]
    fn clock_skew_is_corrected_as_segment_does() {
        let body = json!({"userId": "u1", "event": "Signed Up", "timestamp": "2026-11-23T14:00:00Z", "sentAt": "2026-11-23T14:00:10Z"});
        let parsed = parse_single(&body, Kind::Track, now(), &mut ids()).unwrap();
        let message = &parsed.messages[0];
        assert_eq!(message.timestamp, now() - chrono::Duration::seconds(10));
        assert_eq!(message.message_id, "generated-1");
    }

    #[test]
    fn a_time_in_the_future_is_clamped_to_the_receipt() {
        let future = json!({"userId": "u1", "event": "X", "timestamp": "2030-01-01T00:00:00Z"});
        let parsed = parse_single(&future, Kind::Track, now(), &mut ids()).unwrap();
        assert_eq!(parsed.messages[0].timestamp, now());
        assert_eq!(
            parsed.messages[0].original_timestamp,
            Some("2030-01-01T00:00:00Z".parse().unwrap()),
            "what the client said is kept beside it"
        );
        // A `sentAt` before the event would put it after the receipt too.
        let backwards = json!({"userId": "u1", "event": "X", "timestamp": "2026-11-23T14:00:10Z", "sentAt": "2026-11-23T14:00:00Z"});
        let parsed = parse_single(&backwards, Kind::Track, now(), &mut ids()).unwrap();
        assert_eq!(parsed.messages[0].timestamp, now());
    }

    #[test]
    fn a_group_keeps_the_company_traits_away_from_the_person() {
        let body = json!({"userId": "u1", "groupId": "acme", "traits": {"name": "Acme", "email": "info@acme.example", "phone": "+8621000000"},
                          "context": {"traits": {"email": "ada@acme.example"}}});
        let parsed = parse_single(&body, Kind::Group, now(), &mut ids()).unwrap();
        let message = &parsed.messages[0];
        assert_eq!(
            Json::Object(message.traits.clone()),
            json!({"group": {"id": "acme", "name": "Acme", "email": "info@acme.example", "phone": "+8621000000"}})
        );
        assert_eq!(message.properties["email"], "info@acme.example");
        assert_eq!(message.properties["id"], "acme");
    }

    #[test]
    fn null_ids_are_absent_and_numbers_are_ids() {
        let body = json!({"userId": null, "anonymousId": 42, "event": "X"});
        let parsed = parse_single(&body, Kind::Track, now(), &mut ids()).unwrap();
        assert_eq!(parsed.messages[0].user_id, None);
        assert_eq!(parsed.messages[0].anonymous_id.as_deref(), Some("42"));
        let error = parse_single(
            &json!({"userId": null, "anonymousId": "  ", "event": "X"}),
            Kind::Track,
            now(),
            &mut ids(),
        )
        .unwrap_err();
        assert_eq!(error.field, "userId");
    }

    #[test]
    fn a_bad_item_is_reported_by_index_and_the_good_ones_are_kept() {
        let body = json!({"batch": [
            {"type": "track", "userId": "a", "event": "One"},
            {"type": "track", "userId": "b"},
            {"type": "identify", "anonymousId": "x", "context": {"traits": {"email": "x@example.com"}}}
        ], "context": {"library": {"name": "analytics-python"}}});
        let parsed = parse_batch(&body, now(), &mut ids()).unwrap();
        assert_eq!(parsed.messages.len(), 2);
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].field, "batch[1].event");
        assert_eq!(parsed.messages[1].traits.get("email"), Some(&json!("x@example.com")));
        assert_eq!(parsed.messages[0].context["library"]["name"], "analytics-python");
    }

    #[test]
    fn a_shared_context_counts_against_the_limits_before_it_is_copied() {
        let item = json!({"type": "track", "anonymousId": "a", "event": "E"});
        let huge = json!({"batch": vec![item.clone(); 2400], "context": {"pad": "x".repeat(40_000)}});
        assert_eq!(parse_batch(&huge, now(), &mut ids()).unwrap_err().field, "context");
        let wide = json!({"batch": vec![item.clone(); 60], "context": {"pad": "x".repeat(10_000)}});
        assert_eq!(parse_batch(&wide, now(), &mut ids()).unwrap_err().field, "batch");
        let big = json!({"type": "track", "anonymousId": "b", "event": "E", "context": null, "properties": {"pad": "y".repeat(25_000)}});
        let mixed = json!({"batch": [item, big], "context": {"pad": "x".repeat(5_000), "pad2": "x".repeat(5_000)}});
        let parsed = parse_batch(&mixed, now(), &mut ids()).unwrap();
        assert_eq!(parsed.messages.len(), 1);
        assert_eq!(parsed.rejected[0].field, "batch[1]");
        assert_eq!(parsed.messages[0].context["pad2"].as_str().map(str::len), Some(5_000));
        // Measured as serde_json writes it.
        let value = json!({"a": [1, "two", null], "b": {"c": true}});
        assert_eq!(json_len(&value), value.to_string().len());
    }

    #[test]
    fn gzip_bodies_are_read_within_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(br#"{"userId": "u", "event": "E"}"#).unwrap();
        let gz = encoder.finish().unwrap();
        assert!(read_body(&gz, true, 1024).is_ok());
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2000));
        assert_eq!(read_body(big.as_bytes(), false, 1024).unwrap_err().field, "body");
    }
}

#[cfg(test)]
#[path = "segment_limits_tests.rs"]
mod limits_tests;
