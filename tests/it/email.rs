//! Email end to end, with a real SMTP server the test starts and the HTTP API on a loopback
//! port: the message as sent (MIME, headers, content, `Message-ID`), the unsubscribe round trip,
//! the tracking round trip through the whitepaper journey, and bounces that suppress.

use crate::support::{Mode, SmtpSink, TestEnv, eventually, http, root, serve_api_on, test_config, virtual_clock};
use nurture::engine::VirtualClock;
use nurture::expr::EventFacts;
use nurture::store::contacts::NewContact;
use serde_json::json;
use sqlx::Row;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const ADMIN: &str = "admin-email";
const WRITE_KEY: &str = "wk-email";
const BOUNCE_TOKEN: &str = "pm-email";

pub(crate) struct Mail {
    headers: Vec<(String, String)>,
    /// `(content type, decoded body)` of each part.
    parts: Vec<(String, String)>,
}

impl Mail {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    pub(crate) fn part(&self, content_type: &str) -> &str {
        self.parts
            .iter()
            .find(|(t, _)| t.starts_with(content_type))
            .map(|(_, body)| body.as_str())
            .unwrap_or_else(|| panic!("no {content_type} part"))
    }
}

/// Headers (unfolded) and body of a message as the SMTP server got it.
fn split(raw: &str) -> (Vec<(String, String)>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    // SMTP dot-stuffing.
    let body = body
        .lines()
        .map(|l| l.strip_prefix('.').filter(|_| l.starts_with("..")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    (headers, body)
}

fn decode(encoding: &str, body: &str) -> String {
    use base64::Engine as _;
    match encoding.to_ascii_lowercase().as_str() {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(compact).unwrap()).unwrap()
        }
        "quoted-printable" => {
            let joined = body.replace("=\n", "");
            let bytes = joined.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
                    let hex = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())]).unwrap_or("");
                    if let Ok(byte) = u8::from_str_radix(hex, 16) {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8(out).unwrap()
        }
        _ => body.to_string(),
    }
}

pub(crate) fn parse_mail(raw: &str) -> Mail {
    let (headers, body) = split(raw);
    let content_type = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .map(|b| b.trim_matches('"').to_string())
        .expect("a multipart message");
    let mut parts = Vec::new();
    for chunk in body.split(&format!("--{boundary}")).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let (part_headers, part_body) = split(chunk.trim_start_matches('\n'));
        let get = |name: &str| {
            part_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        parts.push((
            get("content-type"),
            decode(&get("content-transfer-encoding"), part_body.trim_end()),
        ));
    }
    Mail { headers, parts }
}

/// The engine with SMTP to `sink`, its API on a port chosen first so links point at it.
async fn start(mode: Mode, journeys: &Path, sink: &SmtpSink) -> (TestEnv, VirtualClock, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = test_config(mode, journeys).await;
    config.smtp_url = Some(sink.url());
    config.public_url = Some(base.clone());
    config.reconcile_grace = Duration::ZERO;
    config.admin_tokens = vec![ADMIN.into()];
    config.write_keys = vec![WRITE_KEY.into()];
    config.bounce_tokens = vec![BOUNCE_TOKEN.into()];
    let clock = virtual_clock("2026-01-05T10:00:00+08:00");
    let env = TestEnv::start(config, Arc::new(clock.clone()), false).await;
    assert_eq!(serve_api_on(&env, listener), base);
    (env, clock, base)
}

fn event(name: &str, properties: serde_json::Value) -> EventFacts {
    EventFacts {
        name: name.into(),
        properties: properties.as_object().cloned().unwrap_or_default(),
        timestamp: None,
    }
}

async fn contact(env: &TestEnv, email: &str, first_name: &str) -> i64 {
    env.engine
        .create_contact(&NewContact {
            email: Some(email.into()),
            traits: json!({"first_name": first_name}).as_object().cloned().unwrap(),
            ..NewContact::default()
        })
        .await
        .unwrap()
}

async fn mails(sink: &SmtpSink, count: usize) -> Vec<Mail> {
    eventually(&format!("{count} messages at the SMTP server"), WAIT, || async {
        (sink.count() >= count).then_some(())
    })
    .await;
    sink.messages.lock().unwrap().iter().map(|m| parse_mail(m)).collect()
}

async fn count(env: &TestEnv, sql: &'static str, contact: i64) -> i64 {
    sqlx::query(sql)
        .bind(contact)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0)
}

async fn status(env: &TestEnv, contact: i64, journey: &str) -> Option<String> {
    sqlx::query("SELECT status FROM enrollments WHERE contact_id = $1 AND journey_id = $2 ORDER BY id DESC LIMIT 1")
        .bind(contact)
        .bind(journey)
        .fetch_optional(&env.engine.store.pool)
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn reaches(env: &TestEnv, contact: i64, journey: &str, want: &str) {
    eventually(&format!("{journey} {want}"), WAIT, || async {
        (status(env, contact, journey).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// `(status, result)` of the contact's last effect in a journey, once it is done.
async fn effect_done(env: &TestEnv, contact: i64, journey: &str) -> String {
    eventually(&format!("the {journey} effect done"), WAIT, || async {
        let row = sqlx::query(
            "SELECT status, result FROM effects WHERE contact_id = $1 AND journey_id = $2 ORDER BY created_at DESC, effect_key DESC LIMIT 1",
        )
        .bind(contact)
        .bind(journey)
        .fetch_optional(&env.engine.store.pool)
        .await
        .unwrap()?;
        (row.get::<String, _>(0) == "done").then(|| row.get::<Option<String>, _>(1).unwrap_or_default())
    })
    .await
}

/// The `href` of the link named `data-link="name"` in an HTML part.
pub(crate) fn named_link(html: &str, name: &str) -> String {
    let tag_start = html[..html.find(&format!("data-link=\"{name}\"")).expect("the named link")]
        .rfind("<a")
        .unwrap();
    let tag = &html[tag_start..];
    tag.split("href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

pub(crate) fn path_of(url: &str, base: &str) -> String {
    url.strip_prefix(base)
        .unwrap_or_else(|| panic!("{url} is not under {base}"))
        .to_string()
}

/// `<URL>` of a List-Unsubscribe header.
fn unsubscribe_url(mail: &Mail) -> String {
    mail.header("List-Unsubscribe")
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

async fn sent_by_whitepaper(mode: Mode) -> (TestEnv, VirtualClock, String, SmtpSink, i64, Mail) {
    let sink = SmtpSink::start(0, 250).await;
    let (env, clock, base) = start(mode, &root().join("journeys"), &sink).await;
    let ada = contact(&env, "ada@example.com", "Ada").await;
    env.engine
        .track(ada, event("Whitepaper Downloaded", json!({"topic": "automation"})))
        .await
        .unwrap();
    reaches(&env, ada, "whitepaper-nurture", "waiting").await;
    clock.advance(chrono::Duration::hours(1));
    env.engine.reconcile().await.unwrap();
    let mail = mails(&sink, 1).await.remove(0);
    (env, clock, base, sink, ada, mail)
}

async fn the_sent_message_is_what_the_template_says(mode: Mode) {
    let (env, _clock, base, _sink, ada, mail) = sent_by_whitepaper(mode).await;
    let key: String = sqlx::query("SELECT effect_key FROM effects WHERE contact_id = $1 AND kind = 'email'")
        .bind(ada)
        .fetch_one(&env.engine.store.pool)
        .await
        .unwrap()
        .get(0);
    // One Message-ID per effect key, on the sender's domain.
    assert_eq!(
        mail.header("Message-ID"),
        format!("<{}@example.com>", key.replace('/', "."))
    );
    assert!(
        mail.header("From").contains("<hello@example.com>"),
        "{}",
        mail.header("From")
    );
    assert_eq!(mail.header("To"), "ada@example.com");
    assert_eq!(mail.header("Reply-To"), "sales@example.com");
    assert_eq!(mail.header("Subject"), "Your automation whitepaper, Ada");
    assert_eq!(mail.header("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
    assert_eq!(
        mail.header("List-Id"),
        "Whitepaper nurture <whitepaper-nurture.example.com>"
    );
    assert!(mail.header("Content-Type").starts_with("multipart/alternative"));
    assert_eq!(mail.parts.len(), 2, "a text and an HTML part");
    // The unsubscribe link is ours, signed for this contact and enrollment.
    let unsubscribe = unsubscribe_url(&mail);
    let token = path_of(&unsubscribe, &base).trim_start_matches("/u/").to_string();
    let enrollment: i64 = key.split('/').next().unwrap().parse().unwrap();
    assert_eq!(
        env.engine
            .links
            .read_unsubscribe(&token, env.engine.clock.now())
            .map(|c| c.value),
        Some((ada, enrollment))
    );
    let text = mail.part("text/plain");
    assert!(text.starts_with("Hi Ada,"), "{text}");
    assert!(text.contains(&format!("Unsubscribe: {unsubscribe}")), "{text}");
    assert!(
        text.contains(&format!("See pricing and pilot packages: {base}/c/")),
        "tracked in text too: {text}"
    );
    let html = mail.part("text/html");
    assert!(html.contains("<p>Hi Ada,</p>"), "{html}");
    assert!(
        html.contains(&format!("href=\"{unsubscribe}\"")),
        "the unsubscribe link is not tracked"
    );
    assert!(named_link(html, "pricing").starts_with(&format!("{base}/c/")));
    assert!(!html.contains("href=\"https://example.com/pricing\""));
    assert!(html.contains(&format!("<img src=\"{base}/o/")), "the open pixel");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sent_message_is_what_the_template_says_on_sqlite() {
    the_sent_message_is_what_the_template_says(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sent_message_is_what_the_template_says_on_postgres_and_redis() {
    the_sent_message_is_what_the_template_says(Mode::Production).await;
}

async fn a_pricing_click_takes_the_whitepaper_journey_to_sales(mode: Mode) {
    let (env, _clock, base, _sink, ada, mail) = sent_by_whitepaper(mode).await;
    reaches(&env, ada, "whitepaper-nurture", "waiting").await;
    let html = mail.part("text/html");
    let click = path_of(&named_link(html, "pricing"), &base);
    // A changed token is no redirect at all.
    let forged = format!("{}x", &click[..click.len() - 1]);
    assert_eq!(http(&base, "GET", &forged, &[], b"").await.status, 404);
    let answer = http(&base, "GET", &click, &[("user-agent", "Mozilla/5.0 test")], b"").await;
    assert_eq!(answer.status, 302);
    assert_eq!(answer.header("location"), Some("https://example.com/pricing"));
    // The click is an event like any other: the wait_for answers and Ada goes to sales.
    reaches(&env, ada, "whitepaper-nurture", "completed").await;
    eventually("Ada assigned to the inbound team", WAIT, || async {
        (count(
            &env,
            "SELECT COUNT(*) FROM assignments WHERE contact_id = $1 AND team = 'inbound'",
            ada,
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let properties: String =
        sqlx::query("SELECT properties FROM events WHERE contact_id = $1 AND name = 'Email Link Clicked'")
            .bind(ada)
            .fetch_one(&env.engine.store.pool)
            .await
            .unwrap()
            .get(0);
    let properties: serde_json::Value = serde_json::from_str(&properties).unwrap();
    assert_eq!(properties["link"], "pricing");
    assert_eq!(properties["url"], "https://example.com/pricing");
    assert_eq!(properties["journey"], "whitepaper-nurture");
    assert_eq!(properties["step"], "intro-email");
    // A second click still redirects, and is not counted again.
    assert_eq!(http(&base, "GET", &click, &[], b"").await.status, 302);
    let pixel = html.split("<img src=\"").nth(1).unwrap().split('"').next().unwrap();
    let opened = http(&base, "GET", &path_of(pixel, &base), &[], b"").await;
    assert_eq!(opened.status, 200);
    assert_eq!(opened.header("content-type"), Some("image/gif"));
    assert_eq!(opened.body.len(), 43);
    assert_eq!(
        count(
            &env,
            "SELECT COUNT(*) FROM events WHERE contact_id = $1 AND name = 'Email Link Clicked'",
            ada
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &env,
            "SELECT COUNT(*) FROM events WHERE contact_id = $1 AND name = 'Email Opened'",
            ada
        )
        .await,
        1
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pricing_click_takes_the_whitepaper_journey_to_sales_on_sqlite() {
    a_pricing_click_takes_the_whitepaper_journey_to_sales(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pricing_click_takes_the_whitepaper_journey_to_sales_on_postgres_and_redis() {
    a_pricing_click_takes_the_whitepaper_journey_to_sales(Mode::Production).await;
}

async fn unsubscribing_stops_marketing_mail_and_keeps_receipts(mode: Mode) {
    let sink = SmtpSink::start(0, 250).await;
    let (env, clock, base) = start(mode, &root().join("tests/fixtures/email/journeys"), &sink).await;
    let bo = contact(&env, "bo@example.com", "Bo").await;
    env.engine.track(bo, event("Signed Up", json!({}))).await.unwrap();
    let first = mails(&sink, 1).await.remove(0);
    assert!(first.part("text/html").contains("Hello Bo"));
    let path = path_of(&unsubscribe_url(&first), &base);

    // A GET shows a page and changes nothing: link scanners follow links.
    let page = http(&base, "GET", &path, &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    reaches(&env, bo, "newsletter", "waiting").await;
    let forged = path.replacen(&format!("/u/{bo}-"), &format!("/u/{}-", bo + 1), 1);
    assert_eq!(http(&base, "GET", &forged, &[], b"").await.status, 404);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let bad = http(&base, "POST", &path, &form, b"List-Unsubscribe=Later").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "List-Unsubscribe");

    // The one-click POST (RFC 8058), twice: the same answer, one opt-out, one exit.
    for _ in 0..2 {
        let done = http(&base, "POST", &path, &form, b"List-Unsubscribe=One-Click").await;
        assert_eq!(done.status, 200);
        assert!(done.header("location").is_none(), "never a redirect");
    }
    reaches(&env, bo, "newsletter", "exited").await;
    assert_eq!(
        count(
            &env,
            "SELECT COUNT(*) FROM contact_consent WHERE contact_id = $1 AND channel = 'email' AND NOT granted",
            bo
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &env,
            "SELECT COUNT(*) FROM events WHERE contact_id = $1 AND name = 'Unsubscribed'",
            bo
        )
        .await,
        1
    );
    assert_eq!(
        count(&env, "SELECT COUNT(*) FROM step_history h JOIN enrollments e ON e.id = h.enrollment_id WHERE e.contact_id = $1 AND h.kind = 'unsubscribe'", bo).await,
        1
    );

    // A day later the second issue is not sent; another marketing journey sends nothing
    // either, and the receipt (transactional) still goes, untracked and without unsubscribe.
    clock.advance(chrono::Duration::days(1));
    env.engine.reconcile().await.unwrap();
    env.engine.track(bo, event("Promo Eligible", json!({}))).await.unwrap();
    // Decided in the move (`advance`): no effect is recorded, the history says why.
    let promo = eventually("the promo email suppressed", WAIT, || async {
        let row = sqlx::query(
            "SELECT h.detail FROM step_history h JOIN enrollments e ON e.id = h.enrollment_id
             WHERE e.contact_id = $1 AND h.journey_id = 'promo' AND h.outcome = 'suppressed'",
        )
        .bind(bo)
        .fetch_optional(&env.engine.store.pool)
        .await
        .unwrap()?;
        Some(row.get::<String, _>(0))
    })
    .await;
    assert_eq!(promo, "the contact opted out of marketing email");
    env.engine.track(bo, event("Order Completed", json!({}))).await.unwrap();
    let all = mails(&sink, 2).await;
    assert_eq!(all.len(), 2, "only the first issue and the receipt");
    let receipt = &all[1];
    assert_eq!(receipt.header("Subject"), "Your receipt");
    assert!(!receipt.has_header("List-Unsubscribe"));
    assert!(
        receipt
            .part("text/html")
            .contains("href=\"https://acme.example/orders\""),
        "not tracked"
    );
    assert!(!receipt.part("text/html").contains("/o/"));
    assert_eq!(status(&env, bo, "newsletter").await.as_deref(), Some("exited"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_stops_marketing_mail_and_keeps_receipts_on_sqlite() {
    unsubscribing_stops_marketing_mail_and_keeps_receipts(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_stops_marketing_mail_and_keeps_receipts_on_postgres_and_redis() {
    unsubscribing_stops_marketing_mail_and_keeps_receipts(Mode::Production).await;
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn a_hard_bounce_suppresses_the_address_until_an_admin_lifts_it(mode: Mode) {
    let sink = SmtpSink::start(0, 250).await;
    let (env, _clock, base) = start(mode, &root().join("tests/fixtures/email/journeys"), &sink).await;
    let cy = contact(&env, "cy@example.com", "Cy").await;
    let postmark = json!({
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807u64, "Type": "HardBounce",
        "TypeCode": 1, "Name": "Hard bounce", "Tag": "", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "Cy@Example.com", "From": "news@acme.example", "BouncedAt": "2026-01-05T01:00:00Z",
        "Inactive": true, "CanActivate": true, "Subject": "News"
    })
    .to_string();
    let json_type = ("content-type", "application/json");
    // A write key is public: it cannot report bounces.
    let refused = http(
        &base,
        "POST",
        "/v1/email/bounces/postmark",
        &[json_type, ("authorization", &basic(WRITE_KEY, ""))],
        postmark.as_bytes(),
    )
    .await;
    assert_eq!(refused.status, 403, "a known key outside its scope");
    let token = basic("postmark", BOUNCE_TOKEN);
    let auth = ("authorization", token.as_str());
    let first = http(
        &base,
        "POST",
        "/v1/email/bounces/postmark",
        &[json_type, auth],
        postmark.as_bytes(),
    )
    .await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(
        first.json()["report"],
        json!({"suppressed": 1, "events": 1, "duplicates": 0})
    );
    let replay = http(
        &base,
        "POST",
        "/v1/email/bounces/postmark",
        &[json_type, auth],
        postmark.as_bytes(),
    )
    .await;
    assert_eq!(
        replay.json()["report"],
        json!({"suppressed": 0, "events": 0, "duplicates": 1})
    );
    let bad = http(
        &base,
        "POST",
        "/v1/email/bounces",
        &[json_type, auth],
        br#"[{"email": "x@example.com"}]"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "[0].type");
    let complaint = json!({"email": "dee@example.com", "type": "complaint", "id": "c-1"}).to_string();
    let generic = http(
        &base,
        "POST",
        "/v1/email/bounces",
        &[json_type, auth],
        complaint.as_bytes(),
    )
    .await;
    assert_eq!(generic.json()["report"]["suppressed"], 1);

    // The 360 view shows it, with the bounce as an event.
    let admin = format!("Bearer {ADMIN}");
    let view = http(
        &base,
        "GET",
        &format!("/v1/contacts/{cy}"),
        &[("authorization", &admin)],
        b"",
    )
    .await
    .json();
    let suppressions = view["suppressions"].as_array().unwrap();
    assert_eq!(suppressions.len(), 1, "{view}");
    assert_eq!(suppressions[0]["reason"], "hard_bounce");
    assert_eq!(suppressions[0]["address"], "cy@example.com");
    assert!(suppressions[0]["detail"].as_str().unwrap().contains("550 5.1.1"));
    assert!(
        view["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "Email Bounced")
    );

    // Nothing goes to a suppressed address: not marketing, not even a receipt.
    env.engine.track(cy, event("Order Completed", json!({}))).await.unwrap();
    let receipt = effect_done(&env, cy, "receipts").await;
    assert!(
        receipt.starts_with("suppressed: the address is suppressed (hard_bounce)"),
        "{receipt}"
    );
    assert_eq!(sink.count(), 0);

    // An admin lifts it; then mail flows again, tracked as the template says (clicks only).
    let listed = http(&base, "GET", "/v1/suppressions", &[("authorization", &admin)], b"")
        .await
        .json();
    assert_eq!(listed["suppressions"].as_array().unwrap().len(), 2);
    let lift = http(
        &base,
        "DELETE",
        "/v1/suppressions/email/cy@example.com",
        &[("authorization", &admin)],
        b"",
    )
    .await;
    assert_eq!(lift.status, 200, "{}", String::from_utf8_lossy(&lift.body));
    assert!(lift.json()["lifted"]["lifted_at"].is_string());
    let again = http(
        &base,
        "DELETE",
        "/v1/suppressions/email/cy@example.com",
        &[("authorization", &admin)],
        b"",
    )
    .await;
    assert_eq!(again.status, 404);
    env.engine.track(cy, event("Promo Eligible", json!({}))).await.unwrap();
    let offer = mails(&sink, 1).await.remove(0);
    let html = offer.part("text/html");
    assert!(named_link(html, "offer").starts_with(&format!("{base}/c/")));
    assert!(!html.contains("/o/"), "the template asks for clicks only");
    let history = http(
        &base,
        "GET",
        "/v1/suppressions?email=cy@example.com",
        &[("authorization", &admin)],
        b"",
    )
    .await
    .json();
    assert!(
        history["suppressions"][0]["lifted_at"].is_string(),
        "the record stays: {history}"
    );
    let openapi = http(&base, "GET", "/openapi.json", &[], b"").await.json();
    for path in [
        "/u/{token}",
        "/c/{token}",
        "/o/{token}.gif",
        "/v1/email/bounces",
        "/v1/email/bounces/postmark",
        "/v1/suppressions",
        "/v1/suppressions/{channel}/{address}",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is in /openapi.json");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_suppresses_the_address_until_an_admin_lifts_it_on_sqlite() {
    a_hard_bounce_suppresses_the_address_until_an_admin_lifts_it(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_suppresses_the_address_until_an_admin_lifts_it_on_postgres_and_redis() {
    a_hard_bounce_suppresses_the_address_until_an_admin_lifts_it(Mode::Production).await;
}

async fn the_link_secret_is_kept_and_links_survive_a_restart(mode: Mode) {
    let sink = SmtpSink::start(0, 250).await;
    let (env, _clock, _base) = start(mode, &root().join("tests/fixtures/email/journeys"), &sink).await;
    let now = env.engine.clock.now();
    let token = env.engine.links.unsubscribe_token(7, 9, now);
    let config = env.config.clone();
    env.stop().await;
    let again = nurture::app::build(config.clone(), Arc::new(nurture::engine::SystemClock))
        .await
        .unwrap();
    assert_eq!(
        again.links.read_unsubscribe(&token, now).map(|c| c.value),
        Some((7, 9)),
        "the same secret after a restart"
    );
    let mut other = config;
    other.secret = Some(nurture::config::Secret("another secret".into()));
    let other = nurture::app::build(other, Arc::new(nurture::engine::SystemClock))
        .await
        .unwrap();
    assert_eq!(
        other.links.read_unsubscribe(&token, now),
        None,
        "NURTURE_SECRET decides"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_secret_is_kept_and_links_survive_a_restart_on_sqlite() {
    the_link_secret_is_kept_and_links_survive_a_restart(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_secret_is_kept_and_links_survive_a_restart_on_postgres_and_redis() {
    the_link_secret_is_kept_and_links_survive_a_restart(Mode::Production).await;
}
