//! Signed links in email, and the rewriting that puts them in. **Pure**: no I/O, no clock.
//!
//! Three kinds of link point back at nurture, each a token signed with the server secret
//! (HMAC-SHA-256, 128-bit tag), so nobody can make one for another contact or another address:
//! - `/u/{token}` unsubscribes a contact (RFC 8058 one-click, and the link in the footer);
//! - `/c/{token}` records a click and redirects to the address signed inside the token, so it
//!   is never an open redirect;
//! - `/o/{token}.gif` is the open pixel.
//!
//! Each token carries its expiry, signed with it (the caller gives `now`: this module reads no
//! clock). How long a link lives depends on what it is for (`Purpose::lifetime`): an
//! unsubscribe link a year, since the law wants it to work long after the mail (and anyone who
//! still gets mail has a fresh one in every message); click and open links are recorded for 90
//! days, after which a click still redirects (an old email must not break) but counts nothing.
//! Links signed before tokens carried an expiry count as signed on `UNSTAMPED_SIGNED_AT`, so
//! they keep working for one lifetime after the upgrade.

use crate::journey::templates::RenderedEmail;
use crate::journey::values::Tracking;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Bytes of the HMAC kept in a token: 128 bits cannot be guessed, and links stay short.
const TAG_BYTES: usize = 16;

/// Signs and checks link tokens with the server secret.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// What a link is for: part of what is signed, so a click token is no unsubscribe token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Unsubscribe,
    Click,
    Open,
    /// The dashboard's session cookie.
    Session,
}

/// When links without an expiry (signed by versions before expiries) count as signed, in Unix
/// seconds: 2026-12-01T00:00:00Z, the release that added expiries.
pub const UNSTAMPED_SIGNED_AT: i64 = 1_796_083_200;

const DAY_SECONDS: i64 = 86_400;

/// A link's payload, and whether its lifetime has passed.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked<T> {
    pub value: T,
    pub expired: bool,
}

impl Purpose {
    /// How long a link signed for this purpose is honoured, in seconds. Sessions carry their
    /// own expiry (`api::dashboard`).
    pub fn lifetime(self) -> i64 {
        match self {
            Purpose::Unsubscribe => 365 * DAY_SECONDS,
            Purpose::Click | Purpose::Open => 90 * DAY_SECONDS,
            Purpose::Session => 0,
        }
    }

    /// The expiry of a link signed at `now`, in Unix seconds.
    fn expiry(self, now: DateTime<Utc>) -> i64 {
        now.timestamp() + self.lifetime()
    }

    /// Whether a link with `expiry` (`None`: signed before links had one) has expired at `now`.
    fn expired(self, expiry: Option<i64>, now: DateTime<Utc>) -> bool {
        let expiry = expiry.unwrap_or(UNSTAMPED_SIGNED_AT + self.lifetime());
        now.timestamp() >= expiry
    }

    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Unsubscribe => b"unsubscribe",
            Purpose::Click => b"click",
            Purpose::Open => b"open",
            Purpose::Session => b"session",
        }
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer { key: secret.to_vec() }
    }

    fn mac(&self, purpose: Purpose, payload: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(purpose.label());
        mac.update(&[0]);
        mac.update(payload.as_bytes());
        mac
    }

    /// `payload.tag`; the payload must not contain `.` (callers use digits, `-` or base64url).
    pub fn sign(&self, purpose: Purpose, payload: &str) -> String {
        let tag = self.mac(purpose, payload).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]))
    }

    /// The payload of a token this server signed for `purpose`; `None` for anything else. The
    /// tag is compared in constant time.
    pub fn verify<'t>(&self, purpose: Purpose, token: &'t str) -> Option<&'t str> {
        let (payload, tag) = token.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        self.mac(purpose, payload).verify_truncated_left(&tag).ok()?;
        Some(payload)
    }

    /// The token of a contact's unsubscribe link, naming the enrollment that sent the mail:
    /// `contact-enrollment-expiry`.
    pub fn unsubscribe_token(&self, contact: i64, enrollment: i64, now: DateTime<Utc>) -> String {
        let expiry = Purpose::Unsubscribe.expiry(now);
        self.sign(Purpose::Unsubscribe, &format!("{contact}-{enrollment}-{expiry}"))
    }

    /// `(contact, enrollment)` of an unsubscribe token, with or without an expiry.
    pub fn read_unsubscribe(&self, token: &str, now: DateTime<Utc>) -> Option<Checked<(i64, i64)>> {
        let payload = self.verify(Purpose::Unsubscribe, token)?;
        let mut parts = payload.split('-');
        let contact = parts.next()?.parse().ok()?;
        let enrollment = parts.next()?.parse().ok()?;
        let expiry = match parts.next() {
            Some(expiry) => Some(expiry.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Checked {
            value: (contact, enrollment),
            expired: Purpose::Unsubscribe.expired(expiry, now),
        })
    }

    fn sign_json<T: Serialize>(&self, purpose: Purpose, value: &T, now: DateTime<Utc>) -> String {
        let stamped = Stamped {
            value,
            expiry: Some(purpose.expiry(now)),
        };
        let json = serde_json::to_vec(&stamped).unwrap_or_default();
        self.sign(purpose, &URL_SAFE_NO_PAD.encode(json))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        purpose: Purpose,
        token: &str,
        now: DateTime<Utc>,
    ) -> Option<Checked<T>> {
        let payload = self.verify(purpose, token)?;
        let stamped: Stamped<T> = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        Some(Checked {
            expired: purpose.expired(stamped.expiry, now),
            value: stamped.value,
        })
    }

    pub fn read_click(&self, token: &str, now: DateTime<Utc>) -> Option<Checked<Click>> {
        self.read_json(Purpose::Click, token, now)
    }

    pub fn read_open(&self, token: &str, now: DateTime<Utc>) -> Option<Checked<Sent>> {
        self.read_json(Purpose::Open, token, now)
    }
}

/// A signed JSON payload and its expiry (Unix seconds; absent in links signed before expiries).
#[derive(Serialize, Deserialize)]
struct Stamped<T> {
    #[serde(flatten)]
    value: T,
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    expiry: Option<i64>,
}

/// One sent email: whom, which message (its effect key), which journey and template.
/// Short field names: this travels inside every tracked link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    #[serde(rename = "c")]
    pub contact: i64,
    /// The effect key `enrollment/step/seq`, which is also the `Message-ID`'s left part.
    #[serde(rename = "m")]
    pub message: String,
    #[serde(rename = "j")]
    pub journey: String,
    #[serde(rename = "t")]
    pub template: String,
}

/// A tracked link of a sent email.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Click {
    #[serde(flatten)]
    pub sent: Sent,
    /// The link's `data-link` name; empty when it has none.
    #[serde(rename = "l")]
    pub link: String,
    #[serde(rename = "u")]
    pub url: String,
    /// Its place among the message's tracked links, so each link is counted once per message.
    #[serde(rename = "i")]
    pub index: usize,
}

impl Sent {
    /// The step of the journey that sent it.
    pub fn step(&self) -> &str {
        self.message.split('/').nth(1).unwrap_or_default()
    }

    /// Properties shared by the events of this email.
    pub fn properties(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut properties = serde_json::Map::new();
        properties.insert("journey".into(), self.journey.clone().into());
        properties.insert("step".into(), self.step().into());
        properties.insert("template".into(), self.template.clone().into());
        properties.insert("email_id".into(), self.message.clone().into());
        properties
    }
}

/// Rewrites the links of a rendered email to go through `base/c/...` and adds the open
/// pixel, as `tracking` says. Links that are not `http(s)`, and `keep` (the unsubscribe link:
/// a click on it must not count as interest), stay as they are. The text part's copies of
/// rewritten addresses are rewritten too.
pub fn track(
    email: &mut RenderedEmail,
    tracking: Tracking,
    base: &str,
    signer: &Signer,
    sent: &Sent,
    keep: &str,
    now: DateTime<Utc>,
) {
    if tracking.clicks() {
        let mut rewritten: Vec<(String, String)> = Vec::new();
        email.html = rewrite_anchors(&email.html, |href, name| {
            let url = decode_entities(href);
            let lower = url.to_ascii_lowercase();
            if url == keep || !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return None;
            }
            let click = Click {
                sent: sent.clone(),
                link: name.map(decode_entities).unwrap_or_default(),
                url: url.clone(),
                index: rewritten.len(),
            };
            let tracked = format!("{base}/c/{}", signer.sign_json(Purpose::Click, &click, now));
            rewritten.push((url, tracked.clone()));
            Some(tracked)
        });
        // Longest first, so a link that is a prefix of another does not take its place.
        rewritten.sort_by_key(|(url, _)| std::cmp::Reverse(url.len()));
        for (url, tracked) in &rewritten {
            email.text = replace_urls(&email.text, url, tracked);
        }
    }
    if tracking.opens() {
        let pixel = format!(
            "<img src=\"{base}/o/{}.gif\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
            signer.sign_json(Purpose::Open, sent, now)
        );
        match email.html.to_ascii_lowercase().rfind("</body") {
            Some(at) => email.html.insert_str(at, &pixel),
            None => email.html.push_str(&pixel),
        }
    }
}

/// Calls `rewrite(href, data-link)` for every `<a>` with an `href`, and puts what it returns
/// in place of the `href` value.
fn rewrite_anchors(html: &str, mut rewrite: impl FnMut(&str, Option<&str>) -> Option<String>) -> String {
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(start) = find_anchor(rest) {
        let Some(length) = tag_length(&rest[start..]) else {
            break;
        };
        let tag = &rest[start..start + length];
        out.push_str(&rest[..start]);
        match attribute_span(tag, "href") {
            Some((from, to)) => match rewrite(
                &tag[from..to],
                attribute_span(tag, "data-link").map(|(a, b)| &tag[a..b]),
            ) {
                Some(new) => {
                    out.push_str(&tag[..from]);
                    out.push_str(&new);
                    out.push_str(&tag[to..]);
                }
                None => out.push_str(tag),
            },
            None => out.push_str(tag),
        }
        rest = &rest[start + length..];
    }
    out.push_str(rest);
    out
}

/// Where the next `<a` tag starts (`<a ` or `<a` followed by any whitespace, any case).
fn find_anchor(html: &str) -> Option<usize> {
    let bytes = html.as_bytes();
    let mut from = 0;
    while let Some(offset) = html[from..].find('<') {
        let at = from + offset;
        if bytes.get(at + 1).is_some_and(|b| b.eq_ignore_ascii_case(&b'a'))
            && bytes.get(at + 2).is_some_and(|b| b.is_ascii_whitespace())
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The length of the tag at the start of `text`, up to its `>` outside quotes.
fn tag_length(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The byte range of an attribute's value inside a tag, without its quotes.
fn attribute_span(tag: &str, name: &str) -> Option<(usize, usize)> {
    let lower = tag.to_ascii_lowercase();
    let bytes = tag.as_bytes();
    let mut from = 0;
    while let Some(offset) = lower[from..].find(name) {
        let at = from + offset;
        from = at + name.len();
        // A whole attribute name: whitespace before, `=` (after optional spaces) behind.
        if !bytes.get(at.wrapping_sub(1)).is_some_and(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let after = tag[from..].trim_start();
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        let start = tag.len() - value.len();
        return match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].find(q).map(|end| (start + 1, start + 1 + end)),
            Some(_) => {
                let end = value
                    .find(|c: char| c.is_ascii_whitespace() || c == '>')
                    .unwrap_or(value.len());
                Some((start, start + end))
            }
            None => None,
        };
    }
    None
}

/// Undoes the escaping handlebars and HTML authors put in attribute values.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&#x60;", "`")
        .replace("&#x3D;", "=")
        .replace("&#61;", "=")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Replaces whole occurrences of `url` in plain text: not where it is only the start of a
/// longer address (`.../pricing` in `.../pricing-2`).
fn replace_urls(text: &str, url: &str, tracked: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(url) {
        let after = &rest[at + url.len()..];
        out.push_str(&rest[..at]);
        out.push_str(if ends_url(after) { tracked } else { url });
        rest = after;
    }
    out.push_str(rest);
    out
}

fn ends_url(after: &str) -> bool {
    let mut chars = after.chars();
    match chars.next() {
        None => true,
        Some(c) if c.is_whitespace() || ")>]\"'<".contains(c) => true,
        // Sentence punctuation right after an address is not part of it.
        Some(c) if ".,;:!?".contains(c) => chars.next().is_none_or(char::is_whitespace),
        Some(_) => false,
    }
}

/// A 1x1 transparent GIF: what the open pixel answers.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::templates::MailClass;

    fn sent() -> Sent {
        Sent {
            contact: 42,
            message: "7/intro-email/3".into(),
            journey: "whitepaper-nurture".into(),
            template: "whitepaper-intro".into(),
        }
    }

    fn email(html: &str, text: &str) -> RenderedEmail {
        RenderedEmail {
            template: "t".into(),
            language: String::new(),
            subject: "s".into(),
            from: None,
            reply_to: None,
            preheader: None,
            class: MailClass::Marketing,
            tracking: None,
            html: html.into(),
            text: text.into(),
        }
    }

    /// 2027-01-04T00:00:00Z, after the upgrade.
    const NOW: i64 = 1_799_020_800;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn a_token_is_only_good_for_its_purpose_and_its_secret() {
        let signer = Signer::new(b"secret one");
        let token = signer.unsubscribe_token(42, 7, at(NOW));
        let read = |signer: &Signer, token: &str| signer.read_unsubscribe(token, at(NOW)).map(|c| c.value);
        assert_eq!(read(&signer, &token), Some((42, 7)));
        assert_eq!(read(&Signer::new(b"secret two"), &token), None);
        assert_eq!(signer.verify(Purpose::Click, &token), None, "not a click token");
        let forged = token.replacen("42-", "43-", 1);
        assert_eq!(read(&signer, &forged), None, "another contact's id");
        assert_eq!(read(&signer, "42-7"), None);
        assert_eq!(read(&signer, "42-7.AAAA"), None);
    }

    #[test]
    fn links_go_through_the_click_redirect_and_keep_their_names() {
        let signer = Signer::new(b"k");
        let mut mail = email(
            "<html><body><p><a class=\"button\" href=\"https://example.com/w?a=1&amp;b=2\">Read</a>\n<A data-link=\"pricing\" HREF='https://example.com/pricing'>Pricing</A> <a href=\"mailto:x@example.com\">Mail</a> <a href=\"https://n.example/u/1-2.x\">Unsubscribe</a></p></body></html>",
            "Read: https://example.com/w?a=1&b=2\nPricing: https://example.com/pricing.\nOther: https://example.com/pricing-2\nUnsubscribe: https://n.example/u/1-2.x",
        );
        track(
            &mut mail,
            Tracking::ClicksAndOpens,
            "https://n.example",
            &signer,
            &sent(),
            "https://n.example/u/1-2.x",
            at(NOW),
        );
        let tokens: Vec<&str> = mail
            .html
            .split("https://n.example/c/")
            .skip(1)
            .map(|rest| rest.split(['"', '\'']).next().unwrap())
            .collect();
        assert_eq!(tokens.len(), 2, "{}", mail.html);
        let first = signer.read_click(tokens[0], at(NOW)).unwrap().value;
        assert_eq!(
            (first.link.as_str(), first.url.as_str(), first.index),
            ("", "https://example.com/w?a=1&b=2", 0)
        );
        let second = signer.read_click(tokens[1], at(NOW)).unwrap().value;
        assert_eq!(
            (second.link.as_str(), second.url.as_str(), second.index),
            ("pricing", "https://example.com/pricing", 1)
        );
        assert_eq!(second.sent, sent());
        assert!(mail.html.contains("mailto:x@example.com") && mail.html.contains("href=\"https://n.example/u/1-2.x\""));
        assert!(mail.html.contains("data-link=\"pricing\""));
        let pixel = mail.html.find("/o/").unwrap();
        assert!(
            pixel < mail.html.find("</body>").unwrap(),
            "the pixel is inside the body"
        );
        assert_eq!(mail.text.matches("https://n.example/c/").count(), 2, "{}", mail.text);
        assert!(
            mail.text.contains("https://example.com/pricing-2"),
            "a longer address is not rewritten"
        );
        assert!(mail.text.contains("Unsubscribe: https://n.example/u/1-2.x"));
        assert!(mail.text.contains(".\nOther"), "the full stop stays");
    }

    #[test]
    fn tracking_off_leaves_the_email_as_it_was() {
        let signer = Signer::new(b"k");
        let before = email("<a href=\"https://example.com\">x</a>", "https://example.com");
        let mut after = before.clone();
        track(
            &mut after,
            Tracking::Off,
            "https://n.example",
            &signer,
            &sent(),
            "",
            at(NOW),
        );
        assert_eq!(after, before);
        track(
            &mut after,
            Tracking::Opens,
            "https://n.example",
            &signer,
            &sent(),
            "",
            at(NOW),
        );
        assert!(
            after
                .html
                .starts_with("<a href=\"https://example.com\">x</a><img src=\"https://n.example/o/")
        );
        let token = after.html.split("/o/").nth(1).unwrap().split(".gif").next().unwrap();
        assert_eq!(signer.read_open(token, at(NOW)).map(|c| c.value), Some(sent()));
    }

    #[test]
    fn an_unsubscribe_link_works_for_a_year_and_a_tracking_link_counts_for_90_days() {
        let signer = Signer::new(b"k");
        let day = DAY_SECONDS;
        let unsubscribe = signer.unsubscribe_token(42, 7, at(NOW));
        let expired_at = |days: i64| {
            signer
                .read_unsubscribe(&unsubscribe, at(NOW + days * day))
                .map(|checked| checked.expired)
        };
        assert_eq!(expired_at(0), Some(false));
        assert_eq!(expired_at(364), Some(false), "months later, as the law wants");
        assert_eq!(expired_at(365), Some(true));
        let mut mail = email("<a href=\"https://example.com\">x</a></body>", "");
        track(
            &mut mail,
            Tracking::ClicksAndOpens,
            "https://n.example",
            &signer,
            &sent(),
            "",
            at(NOW),
        );
        let click = mail.html.split("/c/").nth(1).unwrap().split('"').next().unwrap();
        let open = mail.html.split("/o/").nth(1).unwrap().split(".gif").next().unwrap();
        let click_at = |days: i64| signer.read_click(click, at(NOW + days * day)).unwrap();
        assert!(!click_at(89).expired);
        assert_eq!(
            click_at(90).value.url,
            "https://example.com",
            "still readable, to redirect"
        );
        assert!(click_at(90).expired);
        assert!(!signer.read_open(open, at(NOW + 89 * day)).unwrap().expired);
        assert!(signer.read_open(open, at(NOW + 90 * day)).unwrap().expired);
        // The expiry is signed: moving it forward breaks the token.
        let (payload, tag) = unsubscribe.rsplit_once('.').unwrap();
        let later = payload.replace(&format!("-{}", NOW + 365 * day), &format!("-{}", NOW + 3650 * day));
        assert_ne!(later, payload);
        assert_eq!(signer.read_unsubscribe(&format!("{later}.{tag}"), at(NOW)), None);
    }

    #[test]
    fn links_signed_before_expiries_work_for_one_lifetime_after_the_upgrade() {
        let signer = Signer::new(b"k");
        // What earlier versions signed: no expiry in the payload.
        let unsubscribe = signer.sign(Purpose::Unsubscribe, "42-7");
        let click = signer.sign(
            Purpose::Click,
            &URL_SAFE_NO_PAD
                .encode(br#"{"c":42,"m":"7/intro-email/3","j":"w","t":"t","l":"","u":"https://example.com","i":0}"#),
        );
        let open = signer.sign(
            Purpose::Open,
            &URL_SAFE_NO_PAD.encode(br#"{"c":42,"m":"7/intro-email/3","j":"w","t":"t"}"#),
        );
        let day = DAY_SECONDS;
        let upgrade = UNSTAMPED_SIGNED_AT;
        let unsubscribe_at = |seconds: i64| signer.read_unsubscribe(&unsubscribe, at(seconds)).unwrap();
        assert_eq!(unsubscribe_at(upgrade + 364 * day).value, (42, 7));
        assert!(!unsubscribe_at(upgrade + 364 * day).expired);
        assert!(unsubscribe_at(upgrade + 365 * day).expired);
        let click_at = |seconds: i64| signer.read_click(&click, at(seconds)).unwrap();
        assert_eq!(click_at(upgrade).value.url, "https://example.com");
        assert!(!click_at(upgrade + 89 * day).expired);
        assert!(click_at(upgrade + 90 * day).expired);
        assert!(!signer.read_open(&open, at(upgrade + 89 * day)).unwrap().expired);
        assert!(signer.read_open(&open, at(upgrade + 90 * day)).unwrap().expired);
    }
}
