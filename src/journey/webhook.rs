//! A `webhook` as a marketer writes it: in a journey step, or in `sales.yaml` to tell reps
//! about their leads (DingTalk, WeCom and Slack robots). The URL is checked here; the call is
//! made by `channels::webhook`.

use super::decode::Reader;
use super::diagnostic::Diagnostic;
use super::model::Webhook;
use super::yaml::{Node, Pos};
use std::collections::BTreeMap;

pub fn parse(reader: &mut Reader<'_>, value: &Node) -> Option<Webhook> {
    let fields = reader.fields(value, "webhook", &["url", "method", "headers", "body"])?;
    let url = reader.required_string(&fields, "url", "webhook", "https://erp.example.com/hooks/lead")?;
    let url_node = fields.get("url")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        reader.sink.error_hint(
            url_node.pos,
            "J070",
            format!("webhook url `{url}` must start with https:// or http://"),
            "write the full address, e.g. https://oapi.dingtalk.com/robot/send?access_token=...",
        );
        return None;
    }
    if let Err(reason) = super::templates::Templates::check_inline(&url) {
        reader
            .sink
            .error(url_node.pos, "J041", format!("the webhook url is {reason}"));
        return None;
    }
    warn_about_address(reader, &url, url_node.pos);
    let method = match fields.get("method") {
        Some(node) => {
            let method = reader.string(node, "method")?.to_ascii_uppercase();
            if !["POST", "PUT", "PATCH", "GET", "DELETE"].contains(&method.as_str()) {
                reader.sink.error_hint(
                    node.pos,
                    "J070",
                    format!("`{method}` is not an HTTP method"),
                    "use POST, PUT, PATCH, GET or DELETE",
                );
                return None;
            }
            method
        }
        None => "POST".into(),
    };
    let mut headers = BTreeMap::new();
    if let Some(node) = fields.get("headers") {
        let Some(entries) = node.as_map() else {
            reader.sink.error(
                node.pos,
                "J002",
                "`headers` must be a mapping of header names to values",
            );
            return None;
        };
        for (k, v) in entries {
            headers.insert(k.as_str().unwrap_or_default().to_string(), reader.string(v, "headers")?);
        }
    }
    let body = fields.get("body").map(Node::to_json);
    Some(Webhook {
        method,
        url,
        headers,
        body,
    })
}

/// Warnings, not errors: the call may work, but not as the marketer expects. Plain HTTP
/// sends the body (often a token in the URL too) unencrypted; an internal address is
/// refused at run time unless `nurture.toml` allows its network.
fn warn_about_address(reader: &mut Reader<'_>, url: &str, pos: Pos) {
    if url.starts_with("http://") {
        let warning = Diagnostic::warning(
            reader.sink.file,
            pos,
            "J071",
            "the webhook url is http://: the call and its body travel unencrypted",
        );
        reader
            .sink
            .push(warning.with_hint("use https:// unless the receiver is on your own network"));
    }
    // A host written with a template (`{{...}}`) is only known when the call is made.
    let Ok(parsed) = url::Url::parse(url) else { return };
    let address = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        Some(url::Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        _ => return,
    };
    if let Some(why) = crate::addresses::special_range(address) {
        let warning = Diagnostic::warning(
            reader.sink.file,
            pos,
            "J072",
            format!("the webhook url points at {address}, {why}: such calls are refused unless nurture.toml allows it"),
        );
        reader.sink.push(warning.with_hint(format!(
            "use the receiver's public address, or add \"{address}\" to `allow_networks` under [webhooks] in nurture.toml"
        )));
    }
}
