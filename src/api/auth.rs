//! Write keys (ingest only) and admin tokens (everything), kept as SHA-256 digests and compared
//! in constant time. Write keys arrive as Segment sends them: the HTTP Basic user name, or
//! `writeKey` in the body. Admin tokens arrive as `Authorization: Bearer TOKEN`.

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

    /// A stable, non-secret name of a key: the dedupe scope of its messages.
    pub fn source_of(key: &str) -> String {
        digest(key).iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()
}

fn basic_user(headers: &HeaderMap) -> Option<String> {
    let encoded = authorization(headers)?
        .strip_prefix("Basic ")
        .or_else(|| authorization(headers)?.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or_default().to_string();
    (!user.is_empty()).then_some(user)
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
}
