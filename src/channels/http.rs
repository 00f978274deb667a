//! The one HTTP client behind every outgoing call: SMS providers and `webhook` steps.
//!
//! HTTP/1.1 on hyper, over plain TCP or rustls (ring, webpki roots), all already in the build
//! for lettre and axum. Each request has one deadline (connect, TLS, answer). Connections are
//! kept alive per origin for the next request. A client built with an address `Policy` (calls
//! written in journeys) resolves the host itself, checks every address it resolves to and
//! connects to a checked one, so a name that resolves to an internal address is refused like
//! the address (SSRF, DNS rebinding); redirects are never followed, for the same reason.

use super::Error;
use crate::addresses::Policy;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls;

/// Answers larger than this are cut: we only read a provider's id or an error message.
const MAX_ANSWER: usize = 256 * 1024;
/// How long an idle connection is kept for the next request to the same origin.
const IDLE_FOR: Duration = Duration::from_secs(30);
const IDLE_PER_ORIGIN: usize = 64;

pub struct Client {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    /// `None`: the destination comes from `nurture.toml` and is trusted (an SMS gateway may
    /// well sit on the internal network).
    policy: Option<Policy>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

/// A kept-alive connection and since when it has waited.
type Idle = (SendRequest<Full<Bytes>>, Instant);

pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The start of the answer, for error messages and logs.
    pub fn snippet(&self) -> String {
        // Answers echo what they were sent (Twilio names the `To` number): never keep that.
        let text = crate::redact::personal_data(String::from_utf8_lossy(&self.body).trim());
        let text = text.as_str();
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_string(),
        }
    }

    /// What the status means for delivery: 2xx is done; 408, 429 and 5xx are worth another try
    /// later; any other answer (a 4xx, a redirect) will not change by itself.
    pub fn judge(&self, what: &str) -> Result<(), Error> {
        let detail = || format!("{what} answered {}: {}", self.status, self.snippet());
        match self.status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(Error::Transient(detail())),
            300..=399 => Err(Error::Permanent(format!("{}; redirects are not followed", detail()))),
            _ => Err(Error::Permanent(detail())),
        }
    }
}

impl Client {
    pub fn new(timeout: Duration, policy: Option<Policy>) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
            policy,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Sends one request and reads the answer, whatever its status. A network failure or a
    /// timeout is transient; a URL or header that cannot be sent, or a refused address, is not.
    pub async fn send(&self, request: Request<'_>) -> Result<Reply, Error> {
        let target = Target::parse(request.url)?;
        let outgoing = build(&target, &request)?;
        match tokio::time::timeout(self.timeout, self.exchange(&target, outgoing)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Transient(format!(
                "{} did not answer within {:?}",
                target.host, self.timeout
            ))),
        }
    }

    async fn exchange(&self, target: &Target, mut outgoing: hyper::Request<Full<Bytes>>) -> Result<Reply, Error> {
        let network = |e: hyper::Error| Error::Transient(format!("{}: {e}", target.host));
        // A kept-alive connection may have been closed by the server meanwhile: a request it
        // never took goes again on a new connection.
        let (mut sender, response) = loop {
            let (mut sender, reused) = match self.take_idle(&target.origin) {
                Some(sender) => (sender, true),
                None => (self.connect(target).await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(outgoing).await {
                Ok(response) => break (sender, response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => outgoing = unsent,
                    _ => return Err(network(error.into_error())),
                },
            }
        };
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Error::Transient(format!("{}: reading the answer: {e}", target.host)))?
            .to_bytes()
            .to_vec();
        if sender.ready().await.is_ok() {
            self.keep_idle(&target.origin, sender);
        }
        Ok(Reply { status, body })
    }

    fn take_idle(&self, origin: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.get_mut(origin)?;
        while let Some((sender, since)) = connections.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_FOR {
                return Some(sender);
            }
        }
        None
    }

    fn keep_idle(&self, origin: &str, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.entry(origin.to_string()).or_default();
        if connections.len() < IDLE_PER_ORIGIN {
            connections.push((sender, Instant::now()));
        }
    }

    /// Resolves, checks every address against the policy, connects to the first that answers.
    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, Error> {
        let addresses: Vec<SocketAddr> = match target.ip {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| Error::Transient(format!("cannot resolve {}: {e}", target.host)))?
                .collect(),
        };
        if let Some(policy) = &self.policy {
            for address in &addresses {
                if let Err(why) = policy.check(address.ip()) {
                    return Err(Error::Permanent(format!(
                        "refused to call {}: it resolves to {}, {why}; list the network under `allow_networks` in the [webhooks] section of nurture.toml to allow it",
                        target.host,
                        address.ip()
                    )));
                }
            }
        }
        let mut last_error = format!("{} resolves to no address", target.host);
        for address in addresses {
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return self.handshake(target, stream).await;
                }
                Err(error) => last_error = format!("cannot connect to {} ({address}): {error}", target.host),
            }
        }
        Err(Error::Transient(last_error))
    }

    async fn handshake(
        &self,
        target: &Target,
        stream: tokio::net::TcpStream,
    ) -> Result<SendRequest<Full<Bytes>>, Error> {
        let failed = |e: &dyn std::fmt::Display| Error::Transient(format!("{}: {e}", target.host));
        if !target.tls {
            return http1(stream).await.map_err(|e| failed(&e));
        }
        let name = match target.ip {
            Some(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            None => rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| Error::Permanent(format!("`{}` is not a valid TLS server name: {e}", target.host)))?,
        };
        let stream = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|e| failed(&format!("TLS: {e}")))?;
        http1(stream).await.map_err(|e| failed(&e))
    }
}

async fn http1<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "Outgoing HTTP connection closed.");
        }
    });
    Ok(sender)
}

/// Where a URL points, read once.
struct Target {
    tls: bool,
    host: String,
    ip: Option<IpAddr>,
    port: u16,
    /// `scheme://host:port`: the key of kept-alive connections.
    origin: String,
    path: String,
    authority: String,
}

impl Target {
    fn parse(text: &str) -> Result<Target, Error> {
        let bad = |why: &str| Error::Permanent(crate::redact::personal_data(&format!("cannot call `{text}`: {why}")));
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(bad(&format!("`{other}` is not http or https"))),
        };
        let (host, ip) = match url.host() {
            Some(url::Host::Domain(domain)) => (domain.to_string(), None),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
            None => return Err(bad("there is no host")),
        };
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let authority = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return Err(bad("there is no host")),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Target {
            origin: format!("{}://{authority}:{port}", url.scheme()),
            tls,
            host,
            ip,
            port,
            path,
            authority,
        })
    }
}

fn build(target: &Target, request: &Request<'_>) -> Result<hyper::Request<Full<Bytes>>, Error> {
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(
            hyper::header::USER_AGENT,
            concat!("nurture/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|e| Error::Permanent(format!("cannot build the request to {}: {e}", target.host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_the_path_query_and_port() {
        let target = Target::parse("https://oapi.dingtalk.com/robot/send?access_token=abc").unwrap();
        assert!(target.tls);
        assert_eq!(
            (target.host.as_str(), target.port, target.path.as_str()),
            ("oapi.dingtalk.com", 443, "/robot/send?access_token=abc")
        );
        assert_eq!(target.origin, "https://oapi.dingtalk.com:443");
        let target = Target::parse("http://[::1]:8080/hook").unwrap();
        assert_eq!(target.ip, Some("::1".parse().unwrap()));
        assert_eq!(target.authority, "[::1]:8080");
        assert!(Target::parse("ftp://example.com/").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn statuses_are_judged_for_retry() {
        let reply = |status| Reply {
            status,
            body: b"nope".to_vec(),
        };
        assert!(reply(204).judge("x").is_ok());
        for status in [408, 429, 500, 503] {
            assert!(reply(status).judge("x").unwrap_err().is_transient(), "{status}");
        }
        for status in [301, 400, 401, 404, 422] {
            assert!(!reply(status).judge("x").unwrap_err().is_transient(), "{status}");
        }
    }
}
