//! Who may call what. Five kinds of credential, each with its own scope:
//! - write keys: ingest only (the Segment routes). They are public: they sit in every web page
//!   with analytics.js, so they can neither read data nor report bounces (that would let anyone
//!   suppress anyone's address);
//! - bounce tokens: email providers' bounce and complaint reports only;
//! - rep tokens: a sales rep's own leads only (see `api::sales`);
//! - metrics tokens: `/metrics` only;
//! - admin tokens: everything, ingest included.
//!
//! A credential the server does not know is a `401`; a known one used outside its scope is a
//! `403`. Every credential is kept as a SHA-256 digest (the config may give the digest itself,
//! `sha256:HEX`, so the plain secret is on no disk of ours) and every presented one is compared
//! with all of them in constant time, so timing says neither which matched nor how much.
//! Write keys arrive as Segment sends them: the HTTP Basic user name, or `writeKey` in the
//! body; the others as `Authorization: Bearer TOKEN` (or the Basic user name).

use super::AppState;
use super::error::ApiError;
use crate::config::Secret;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Whose credential a presented token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Admin,
    /// A write key: ingest only.
    Writer,
    /// An email provider reporting bounces and complaints.
    BounceReporter,
    /// A sales rep, by id.
    Rep(String),
}

impl Holder {
    /// What this credential may do, for the `403` message.
    fn scope(&self) -> &'static str {
        match self {
            Holder::Admin => "everything",
            Holder::Writer => "a write key can only send events",
            Holder::BounceReporter => "a bounce token can only report bounces and complaints",
            Holder::Rep(_) => "a rep token can only see and act on its rep's own leads",
        }
    }
}

pub struct Keys {
    write: Vec<[u8; 32]>,
    admin: Vec<[u8; 32]>,
    bounce: Vec<[u8; 32]>,
    /// `(digest, rep id)`.
    reps: Vec<([u8; 32], String)>,
    metrics: Vec<[u8; 32]>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The digest of a configured credential: `sha256:` and 64 hex digits is the digest itself
/// (`printf %s TOKEN | sha256sum`); anything else is the plain secret.
fn configured(entry: &str) -> [u8; 32] {
    let Some(hex) = entry.strip_prefix("sha256:").filter(|hex| hex.len() == 64) else {
        return digest(entry);
    };
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(value) => *byte = value,
            Err(_) => return digest(entry),
        }
    }
    out
}

/// Compares two digests without an early exit, so timing says nothing about how much matched.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `presented` is among `keys`, comparing with every one of them.
fn any_same(keys: &[[u8; 32]], presented: &[u8; 32]) -> bool {
    keys.iter().fold(false, |found, key| found | same(key, presented))
}

fn forbidden(holder: &Holder, needs: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{}; {needs}", holder.scope()),
    )
}

impl Keys {
    /// Write keys and admin tokens, plain or as `sha256:HEX` digests.
    pub fn new(write_keys: &[Secret], admin_tokens: &[Secret]) -> Keys {
        Keys {
            write: write_keys.iter().map(|k| configured(&k.0)).collect(),
            admin: admin_tokens.iter().map(|k| configured(&k.0)).collect(),
            bounce: Vec::new(),
            reps: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Also accepts these reps' tokens, for their own leads only.
    pub fn with_rep_tokens(mut self, tokens: &[(String, Secret)]) -> Keys {
        self.reps = tokens
            .iter()
            .map(|(rep, token)| (configured(&token.0), rep.clone()))
            .collect();
        self
    }

    /// Also accepts these tokens, for bounce and complaint reports only.
    pub fn with_bounce_tokens(mut self, tokens: &[Secret]) -> Keys {
        self.bounce = tokens.iter().map(|k| configured(&k.0)).collect();
        self
    }

    /// Whose credential `secret` is; `None` for one the server does not know. Every configured
    /// digest is compared, match or not, so the time taken does not depend on which matched.
    pub fn holder_of(&self, secret: &str) -> Option<Holder> {
        let presented = digest(secret);
        let admin = any_same(&self.admin, &presented);
        let write = any_same(&self.write, &presented);
        let bounce = any_same(&self.bounce, &presented);
        let rep = self.reps.iter().fold(
            None,
            |found, (key, rep)| {
                if same(key, &presented) { Some(rep) } else { found }
            },
        );
        // A secret that is also a write key is public, so it gets no rep or bounce scope. Admin
        // comes first for the embedded mode's `dev`, both write key and admin token.
        if admin {
            Some(Holder::Admin)
        } else if write {
            Some(Holder::Writer)
        } else if let Some(rep) = rep {
            Some(Holder::Rep(rep.clone()))
        } else if bounce {
            Some(Holder::BounceReporter)
        } else {
            None
        }
    }

    /// Who calls the sales API: an admin (every lead) or a rep (their own), by `Bearer TOKEN`.
    pub fn sales_actor(&self, headers: &HeaderMap) -> Result<crate::engine::sales::Actor, ApiError> {
        use crate::engine::sales::Actor;
        let Some(token) = bearer(headers).or_else(|| basic_user(headers)) else {
            return Err(ApiError::unauthorized(
                "a rep or admin token is required: `Authorization: Bearer TOKEN`",
            ));
        };
        match self.holder_of(&token) {
            Some(Holder::Admin) => Ok(Actor::Admin),
            Some(Holder::Rep(rep)) => Ok(Actor::Rep(rep)),
            Some(other) => Err(forbidden(&other, "leads need a rep or admin token")),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }

    /// A bounce or complaint report: a bounce token or an admin token, as `Bearer TOKEN` or
    /// in HTTP Basic (user name or password: providers' webhook settings ask for both).
    pub fn require_bounce_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented: Vec<String> = bearer(headers)
            .into_iter()
            .chain(
                basic_credentials(headers)
                    .into_iter()
                    .flat_map(|(user, password)| [user, password]),
            )
            .filter(|t| !t.is_empty())
            .collect();
        if presented.is_empty() {
            return Err(ApiError::unauthorized(
                "a bounce token is required: `Authorization: Bearer TOKEN`, or TOKEN as the HTTP Basic user name or password",
            ));
        }
        let holders: Vec<Holder> = presented.iter().filter_map(|token| self.holder_of(token)).collect();
        if holders
            .iter()
            .any(|holder| matches!(holder, Holder::Admin | Holder::BounceReporter))
        {
            return Ok(());
        }
        match holders.first() {
            Some(other) => Err(forbidden(other, "bounce reports need a bounce or admin token")),
            None => Err(ApiError::unauthorized("unknown bounce token")),
        }
    }

    /// Also accepts these tokens, for `/metrics` only (plain or `sha256:HEX`).
    pub fn with_metrics_tokens(mut self, tokens: &[Secret]) -> Keys {
        self.metrics = tokens.iter().map(|k| configured(&k.0)).collect();
        self
    }

    /// `/metrics`: a metrics token or an admin token, as `Bearer TOKEN` (what Prometheus's
    /// `authorization` setting sends).
    pub fn require_metrics_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = bearer(headers) else {
            return Err(ApiError::unauthorized(
                "a metrics or admin token is required: `Authorization: Bearer TOKEN`",
            ));
        };
        if any_same(&self.metrics, &digest(&token)) {
            return Ok(());
        }
        match self.holder_of(&token) {
            Some(Holder::Admin) => Ok(()),
            Some(other) => Err(forbidden(&other, "/metrics needs a metrics or admin token")),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }

    /// The write key of an ingest request, from the Basic header and/or the body; if both are
    /// present they must agree. Admin tokens may ingest too.
    pub fn ingest_key(&self, headers: &HeaderMap, body_key: Option<&str>) -> Result<String, ApiError> {
        let header_key = basic_user(headers).or_else(|| bearer(headers));
        let key = match (header_key.as_deref(), body_key) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::unauthorized(
                    "the write key in the Authorization header and `writeKey` in the body differ",
                ));
            }
            (Some(key), _) | (None, Some(key)) => key.to_string(),
            (None, None) => {
                return Err(ApiError::unauthorized(
                    "a write key is required: send it as the HTTP Basic user name, or as `writeKey` in the body",
                ));
            }
        };
        match self.holder_of(&key) {
            Some(Holder::Writer | Holder::Admin) => Ok(key),
            Some(other) => Err(forbidden(&other, "events need a write key")),
            None => Err(ApiError::unauthorized("unknown write key")),
        }
    }

    pub fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = bearer(headers).or_else(|| basic_user(headers)) else {
            return Err(ApiError::unauthorized(
                "an admin token is required: `Authorization: Bearer TOKEN`",
            ));
        };
        self.admin_token(&token)
    }

    /// `Ok` for an admin token; `403` for another known credential, `401` for an unknown one.
    pub fn admin_token(&self, token: &str) -> Result<(), ApiError> {
        match self.holder_of(token) {
            Some(Holder::Admin) => Ok(()),
            Some(other) => Err(forbidden(&other, "this needs an admin token")),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }

    /// Whether `token` is a write key (what analytics.js's settings may name).
    pub fn is_write_key(&self, token: &str) -> bool {
        self.holder_of(token) == Some(Holder::Writer)
    }

    /// Whether `source` (see `source_of`) names an admin token configured now, so a session
    /// ends when its token is removed from the config.
    pub fn is_admin_source(&self, source: &str) -> bool {
        self.admin
            .iter()
            .fold(false, |found, key| found | (name_of(key) == source))
    }

    /// A stable, non-secret name of a key: the dedupe scope of its messages.
    pub fn source_of(key: &str) -> String {
        name_of(&digest(key))
    }
}

/// An admin token, checked as an extractor. Handlers list it before `Path`, `Query` and the
/// body (axum runs extractors in order), so a caller without the right token gets its 401 or
/// 403 and learns nothing from a 400 about the rest of the request.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.keys.require_admin(&parts.headers).map(|()| Admin)
    }
}

/// Who calls the sales API (`Keys::sales_actor`), checked as an extractor like [`Admin`].
pub struct SalesCaller(pub crate::engine::sales::Actor);

impl FromRequestParts<AppState> for SalesCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.keys.sales_actor(&parts.headers).map(SalesCaller)
    }
}

/// Whether `presented` is the configured secret `configured` (plain or `sha256:HEX`), compared
/// as digests in constant time: neither content nor length shows in the timing.
pub fn matches_secret(configured_secret: &Secret, presented: &str) -> bool {
    same(&configured(&configured_secret.0), &digest(presented))
}

/// The first 8 bytes of a digest in hex: names a key without revealing it.
fn name_of(digest: &[u8; 32]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()
}

fn basic_user(headers: &HeaderMap) -> Option<String> {
    let (user, _) = basic_credentials(headers)?;
    (!user.is_empty()).then_some(user)
}

/// `(user, password)` of HTTP Basic auth.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = authorization(headers)?
        .strip_prefix("Basic ")
        .or_else(|| authorization(headers)?.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    Some((user.to_string(), password.to_string()))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let token = authorization(headers)?.strip_prefix("Bearer ")?.trim().to_string();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_keys_and_admin_tokens_have_their_scopes() {
        let keys = Keys::new(&["wk".into()], &["admin".into()]);
        assert_eq!(keys.holder_of("wk"), Some(Holder::Writer));
        assert_eq!(keys.holder_of("admin"), Some(Holder::Admin));
        assert_eq!(keys.holder_of("nope"), None);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Basic d2s6".parse().unwrap()); // "wk:"
        assert_eq!(keys.ingest_key(&headers, None).unwrap(), "wk");
        assert!(
            keys.ingest_key(&headers, Some("other")).is_err(),
            "header and body must agree"
        );
        assert_eq!(keys.require_admin(&headers).unwrap_err().status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_rep_token_names_its_rep_and_an_admin_token_sees_everything() {
        use crate::engine::sales::Actor;
        let keys = Keys::new(&["wk".into()], &["admin".into()])
            .with_rep_tokens(&[("li-wei".into(), crate::config::Secret("rt".into()))]);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value.parse().unwrap());
            keys.sales_actor(&headers)
        };
        assert_eq!(with("Bearer rt").unwrap(), Actor::Rep("li-wei".into()));
        assert_eq!(with("Bearer admin").unwrap(), Actor::Admin);
        assert_eq!(with("Bearer nope").unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(with("Bearer wk").unwrap_err().status, StatusCode::FORBIDDEN);
        assert!(
            keys.require_admin(&{
                let mut headers = HeaderMap::new();
                headers.insert("authorization", "Bearer rt".parse().unwrap());
                headers
            })
            .is_err(),
            "a rep token is not an admin token"
        );
    }

    #[test]
    fn bounce_reports_need_a_bounce_or_admin_token_never_a_write_key() {
        let keys = Keys::new(&["wk".into()], &["admin".into()]).with_bounce_tokens(&["pm".into()]);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value.parse().unwrap());
            keys.require_bounce_token(&headers)
        };
        assert!(with("Basic dXNlcjpwbQ==").is_ok(), "user:pm, the token as the password");
        assert!(with("Basic cG06").is_ok(), "pm: as the user name");
        assert!(with("Bearer admin").is_ok());
        assert_eq!(
            with("Basic d2s6").unwrap_err().status,
            StatusCode::FORBIDDEN,
            "a write key is public"
        );
        assert_eq!(with("Bearer nope").unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(keys.require_bounce_token(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_known_credential_outside_its_scope_is_forbidden_not_unknown() {
        let keys = Keys::new(&["wk".into()], &["admin".into()])
            .with_bounce_tokens(&["pm".into()])
            .with_rep_tokens(&[("li-wei".into(), crate::config::Secret("rt".into()))]);
        let bearer = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            headers
        };
        for token in ["rt", "pm"] {
            let refused = keys.ingest_key(&bearer(token), None).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{token} may not ingest");
            let refused = keys.require_admin(&bearer(token)).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{token} is no admin");
        }
        assert_eq!(
            keys.sales_actor(&bearer("pm")).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            keys.require_bounce_token(&bearer("rt")).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            keys.ingest_key(&bearer("admin"), None).unwrap(),
            "admin",
            "admin sees everything"
        );
    }

    #[test]
    fn a_write_key_configured_as_a_rep_or_bounce_token_too_stays_a_write_key() {
        let keys = Keys::new(&["public".into()], &["admin".into()])
            .with_bounce_tokens(&["public".into()])
            .with_rep_tokens(&[("li-wei".into(), Secret("public".into()))]);
        assert_eq!(keys.holder_of("public"), Some(Holder::Writer), "it sits in web pages");
    }

    #[test]
    fn credentials_may_be_configured_as_their_sha256_digest() {
        // printf %s admin | sha256sum
        let admin = "sha256:8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918";
        let keys = Keys::new(&[], &[admin.into()])
            .with_rep_tokens(&[("li-wei".into(), Secret(admin.replace("8c69", "0000")))]);
        assert_eq!(keys.holder_of("admin"), Some(Holder::Admin));
        assert_eq!(keys.holder_of(admin), None, "the digest itself is no token");
        assert_eq!(Keys::source_of("admin"), name_of(&configured(admin)));
        // Not 64 hex digits: a plain secret that happens to start with `sha256:`.
        assert_eq!(
            Keys::new(&[], &["sha256:xyz".into()]).holder_of("sha256:xyz"),
            Some(Holder::Admin)
        );
    }
}
