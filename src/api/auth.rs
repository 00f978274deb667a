//! Write keys (ingest only), bounce tokens (email providers' bounce and complaint reports
//! only), rep tokens (a sales rep's own leads only), metrics tokens (`/metrics` only) and admin
//! tokens (everything), kept as
//! SHA-256 digests and compared in constant time.
//! Write keys arrive as Segment sends them: the HTTP Basic user name, or `writeKey` in the body.
//! Admin tokens arrive as `Authorization: Bearer TOKEN`. A write key is public (it sits in every
//! web page with analytics.js), so it cannot report bounces: that would let anyone suppress
//! anyone's address.

use super::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Admin,
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

/// Compares two digests without an early exit, so timing says nothing about how much matched.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Keys {
    pub fn new(write_keys: &[String], admin_tokens: &[String]) -> Keys {
        Keys {
            write: write_keys.iter().map(|k| digest(k)).collect(),
            admin: admin_tokens.iter().map(|k| digest(k)).collect(),
            bounce: Vec::new(),
            reps: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Also accepts these reps' tokens, for their own leads only.
    pub fn with_rep_tokens(mut self, tokens: &[(String, crate::config::Secret)]) -> Keys {
        self.reps = tokens
            .iter()
            .map(|(rep, token)| (digest(&token.0), rep.clone()))
            .collect();
        self
    }

    /// Who calls the sales API: an admin (every lead) or a rep (their own), by `Bearer TOKEN`.
    pub fn sales_actor(&self, headers: &HeaderMap) -> Result<crate::engine::sales::Actor, ApiError> {
        use crate::engine::sales::Actor;
        let Some(token) = bearer(headers).or_else(|| basic_user(headers)) else {
            return Err(ApiError::unauthorized(
                "a rep or admin token is required: `Authorization: Bearer TOKEN`",
            ));
        };
        let presented = digest(&token);
        // Every token is compared, match or not, so the time taken says nothing.
        let rep = self.reps.iter().fold(
            None,
            |found, (key, rep)| {
                if same(key, &presented) { Some(rep) } else { found }
            },
        );
        match (self.scope_of(&token), rep) {
            (Some(Scope::Admin), _) => Ok(Actor::Admin),
            (_, Some(rep)) => Ok(Actor::Rep(rep.clone())),
            (Some(Scope::Ingest), None) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a write key can only send events; leads need a rep or admin token",
            )),
            (None, None) => Err(ApiError::unauthorized("unknown token")),
        }
    }

    /// Also accepts these tokens, for bounce and complaint reports only.
    pub fn with_bounce_tokens(mut self, tokens: &[String]) -> Keys {
        self.bounce = tokens.iter().map(|k| digest(k)).collect();
        self
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
        let known = presented.iter().any(|token| {
            let presented = digest(token);
            let bounce = self
                .bounce
                .iter()
                .fold(false, |found, key| found | same(key, &presented));
            bounce | matches!(self.scope_of(token), Some(Scope::Admin))
        });
        if known {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "unknown bounce token (write keys cannot report bounces: they are public)",
            ))
        }
    }

    /// Also accepts these tokens, for `/metrics` only.
    pub fn with_metrics_tokens(mut self, tokens: &[String]) -> Keys {
        self.metrics = tokens.iter().map(|k| digest(k)).collect();
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
        let presented = digest(&token);
        let metrics = self
            .metrics
            .iter()
            .fold(false, |found, key| found | same(key, &presented));
        match (metrics, self.scope_of(&token)) {
            (true, _) | (_, Some(Scope::Admin)) => Ok(()),
            (false, Some(Scope::Ingest)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a write key can only send events; /metrics needs a metrics or admin token",
            )),
            (false, None) => Err(ApiError::unauthorized("unknown token")),
        }
    }

    fn scope_of(&self, secret: &str) -> Option<Scope> {
        let presented = digest(secret);
        // Check every key, match or not, so the time taken does not depend on which matched.
        let admin = self
            .admin
            .iter()
            .fold(false, |found, key| found | same(key, &presented));
        let write = self
            .write
            .iter()
            .fold(false, |found, key| found | same(key, &presented));
        if admin {
            Some(Scope::Admin)
        } else if write {
            Some(Scope::Ingest)
        } else {
            None
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
        match self.scope_of(&key) {
            Some(_) => Ok(key),
            None => Err(ApiError::unauthorized("unknown write key")),
        }
    }

    pub fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = bearer(headers).or_else(|| basic_user(headers)) else {
            return Err(ApiError::unauthorized(
                "an admin token is required: `Authorization: Bearer TOKEN`",
            ));
        };
        match self.scope_of(&token) {
            Some(Scope::Admin) => Ok(()),
            Some(Scope::Ingest) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a write key can only send events; this needs an admin token",
            )),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }

    /// Whether `token` is an admin token (not a write key, rep or bounce token).
    pub fn is_admin(&self, token: &str) -> bool {
        self.scope_of(token) == Some(Scope::Admin)
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
        assert_eq!(keys.scope_of("wk"), Some(Scope::Ingest));
        assert_eq!(keys.scope_of("admin"), Some(Scope::Admin));
        assert_eq!(keys.scope_of("nope"), None);
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
        assert!(with("Basic d2s6").is_err(), "a write key is public");
        assert!(keys.require_bounce_token(&HeaderMap::new()).is_err());
    }
}
