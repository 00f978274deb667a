//! The `webhook` step: its URL and body rendered with the message data, then one call through
//! the shared HTTP client under the address policy of `nurture.toml`. A failure says whether a
//! retry can help (`Reply::judge`); the engine retries with backoff.

use super::Error;
use super::http::{self, Client};
use crate::journey::templates::Templates;
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// One webhook effect, as the journey wrote it.
pub struct Call<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub body: Option<&'a Json>,
    /// The effect key, sent as `Idempotency-Key`: a receiver that honours it drops the copy a
    /// retry after a lost answer sends.
    pub key: &'a str,
}

pub async fn deliver(client: &Client, templates: &Templates, data: &Json, call: Call<'_>) -> Result<String, Error> {
    let url = templates
        .render_inline(call.url, data)
        .map_err(|e| Error::Permanent(format!("the webhook url failed to render: {e}")))?;
    let body = match call.body {
        Some(body) => Some(
            templates
                .render_json(body, data)
                .map_err(|e| Error::Permanent(format!("the webhook body failed to render: {e}")))?,
        ),
        None => None,
    };
    let mut headers: Vec<(String, String)> = call.headers.clone().into_iter().collect();
    let has = |headers: &[(String, String)], name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if body.is_some() && !has(&headers, "content-type") {
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    if !has(&headers, "idempotency-key") {
        headers.push(("Idempotency-Key".into(), call.key.to_string()));
    }
    let reply = client
        .send(http::Request {
            method: call.method,
            url: &url,
            headers,
            body: body
                .map(|b| serde_json::to_vec(&b).unwrap_or_default())
                .unwrap_or_default(),
        })
        .await?;
    reply.judge("the webhook")?;
    Ok(format!("webhook {} {}", call.method, reply.status))
}
