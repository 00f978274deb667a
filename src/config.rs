//! Configuration: defaults give the embedded mode; `nurture.toml` and then the environment
//! (`DATABASE_URL`, `REDIS_URL`, `NURTURE_*`) override them.

use crate::journey::values::Guardrails;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `postgres://...` for production; unset means the embedded SQLite file.
    pub database_url: Option<String>,
    /// `redis://...` for production; unset means the queue lives in SQLite too.
    pub redis_url: Option<String>,
    /// Where the embedded mode keeps its state and queue.
    pub sqlite_path: PathBuf,
    pub listen: String,
    pub journeys: PathBuf,
    pub templates: PathBuf,
    pub sales: PathBuf,
    pub scoring: PathBuf,
    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    pub namespace: String,
    /// Step jobs one worker process runs at once.
    pub concurrency: usize,
    /// Database connections one process keeps open at most.
    pub db_pool: u32,
    /// Where mail and SMS go when no provider is configured.
    pub outbox: PathBuf,
    /// `smtp://user:pass@host:port`; unset means the outbox.
    pub smtp_url: Option<String>,
    pub mail_from: String,
    /// Country calling code for phone numbers written without one (86: China).
    pub phone_country_code: String,
    /// Write keys accepted by the events API (`NURTURE_WRITE_KEYS`, comma-separated).
    pub write_keys: Vec<Secret>,
    /// Admin tokens for everything else (`NURTURE_ADMIN_TOKENS`, comma-separated).
    pub admin_tokens: Vec<Secret>,
    /// Public base URL, for links in messages and analytics.js settings; default `http://LISTEN`.
    pub public_url: Option<String>,
    /// Signs unsubscribe, click and open links (`NURTURE_SECRET`). Unset: one is generated
    /// once and kept in the database, so every process and restart signs alike.
    pub secret: Option<Secret>,
    /// Tokens email providers present to report bounces and complaints
    /// (`NURTURE_BOUNCE_TOKENS`, comma-separated); admin tokens work too.
    pub bounce_tokens: Vec<Secret>,
    /// Tokens that may read `/metrics` and nothing else (`NURTURE_METRICS_TOKENS`,
    /// comma-separated), for a Prometheus that should not hold an admin token; admin tokens
    /// work too.
    pub metrics_tokens: Vec<Secret>,
    /// `[rep_tokens]`: each sales rep's token for `/v1/sales/leads` (rep id = token), or
    /// `NURTURE_REP_TOKENS=rep_id:token,...`. A rep sees and acts on their own leads only.
    #[serde(deserialize_with = "rep_tokens")]
    pub rep_tokens: Vec<(String, Secret)>,
    /// How often the reconciler looks for due steps that have no job.
    #[serde(with = "humantime_secs")]
    pub reconcile_every: Duration,
    /// How late a step must be before the reconciler re-enqueues it.
    #[serde(with = "humantime_secs")]
    pub reconcile_grace: Duration,
    /// How long a worker may take to perform one effect before another may try it again.
    #[serde(with = "humantime_secs")]
    pub effect_lease: Duration,
    /// Attempts of a failing effect before the enrollment is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubled on every attempt, with jitter.
    #[serde(with = "humantime_secs")]
    pub retry_base: Duration,
    /// `[guardrails]`: quiet hours and a frequency cap for every journey.
    #[serde(deserialize_with = "guardrails::deserialize")]
    pub guardrails: Guardrails,
    /// `[sms]`: the SMS provider. Without one, SMS go to the outbox in the embedded mode, and
    /// the production mode refuses to start while a journey sends SMS.
    pub sms: SmsConfig,
    /// `[webhooks]`: outgoing calls of `webhook` steps.
    pub webhooks: WebhooksConfig,
    /// `[reports]`: the workspace currency, prices, revenue events and attribution settings.
    pub reports: ReportsConfig,
    /// `[http]`: timeouts and limits of the HTTP API.
    pub http: HttpConfig,
}

/// What the HTTP API allows one client before it answers 408, 429 or 503 (see README, "Limits").
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head by then is closed (slowloris).
    /// Also how long an idle keep-alive connection stays open.
    #[serde(with = "humantime_secs")]
    pub header_timeout: Duration,
    /// A request not answered by then (body read included) gets a 503 with `Retry-After`.
    #[serde(with = "humantime_secs")]
    pub request_timeout: Duration,
    /// Requests handled at once; more get a 503 with `Retry-After` at once, instead of queueing
    /// until every one of them is late. `/healthz` and `/readyz` are not counted.
    pub max_concurrent_requests: usize,
    /// Requests per second one write key may send to the events API, sustained; `0` is no
    /// limit. Unset: no limit in the embedded mode (a laptop, benchmarks), 2,000 in production.
    pub rate_limit: Option<u32>,
    /// Requests one write key may send at once above `rate_limit` (the token bucket's size).
    /// Unset: five seconds' worth of `rate_limit`.
    pub rate_burst: Option<u32>,
    /// When the events API answers `200`: once the messages are `stored` (in the inbox, one row
    /// per request, applied right after: the default) or once they are `applied` (contacts,
    /// events and enrollments committed, so a read right after sees them).
    pub acknowledge: Acknowledge,
}

/// See `HttpConfig::acknowledge`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acknowledge {
    #[default]
    Stored,
    Applied,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            rate_limit: None,
            rate_burst: None,
            acknowledge: Acknowledge::Stored,
        }
    }
}

/// Production's default per-write-key limit: 2,000 requests/s (a batch is one request) is
/// above what one write key of a large site sends, and below what lets one leaked key starve
/// the others.
const PRODUCTION_RATE_LIMIT: u32 = 2_000;

/// A sustained rate and a burst, in requests per second per write key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Every amount in a report is in this currency (ISO 4217).
    pub currency: String,
    /// What one unit of another currency is worth in `currency` (`CNY = 0.14`). Amounts in a
    /// currency without a rate are never added to the others.
    pub rates: std::collections::BTreeMap<String, f64>,
    /// `[reports.costs]`: the price of one email and of one lead handed to sales, in
    /// `currency`. SMS cost `[sms] price_per_segment` per segment.
    pub costs: UnitCosts,
    /// Events that carry revenue, and the property holding it (`currency` holds its currency).
    pub revenue_events: std::collections::BTreeMap<String, String>,
    /// How far back a touch may be to earn credit for a conversion.
    #[serde(with = "humantime_secs")]
    pub lookback: Duration,
    /// `time_decay`: a touch this much older than the conversion earns half the credit.
    #[serde(with = "humantime_secs")]
    pub half_life: Duration,
    /// How often the holder of the `reports` lease adds new facts to the daily rollups.
    #[serde(with = "humantime_secs")]
    pub roll_up_every: Duration,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnitCosts {
    pub email: f64,
    pub assignment: f64,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            currency: "USD".into(),
            rates: Default::default(),
            costs: UnitCosts::default(),
            // `Lead Won` is the sales loop's won deal: its revenue counts like an order's.
            revenue_events: [("Order Completed", "revenue"), ("Lead Won", "revenue")]
                .into_iter()
                .map(|(event, property)| (event.to_string(), property.to_string()))
                .collect(),
            lookback: Duration::from_secs(30 * 86_400),
            half_life: Duration::from_secs(7 * 86_400),
            roll_up_every: Duration::from_secs(60),
        }
    }
}

impl ReportsConfig {
    /// What one unit of `currency` is worth in the workspace currency; `None`: no rate, so
    /// the amount must not be added to others.
    pub fn rate(&self, currency: &str) -> Option<f64> {
        if currency.eq_ignore_ascii_case(&self.currency) {
            Some(1.0)
        } else {
            self.rates.get(&currency.to_ascii_uppercase()).copied()
        }
    }

    /// Checks what serde cannot: costs and rates are positive numbers, and every currency a
    /// cost is written in can be converted.
    pub fn check(&self, sms: &SmsConfig) -> Result<(), String> {
        let code = |c: &str| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase());
        if !code(&self.currency) {
            return Err(format!(
                "[reports] currency `{}` is not a currency code; write three capital letters such as \"USD\"",
                self.currency
            ));
        }
        for (currency, rate) in &self.rates {
            if !(code(currency) && rate.is_finite() && *rate > 0.0) {
                return Err(format!(
                    "[reports.rates] {currency} = {rate}: write a currency code and what one unit of it is worth in {}, such as CNY = 0.14",
                    self.currency
                ));
            }
        }
        for (name, cost) in [("email", self.costs.email), ("assignment", self.costs.assignment)] {
            if !(cost.is_finite() && cost >= 0.0) {
                return Err(format!("[reports.costs] {name} = {cost}: write a price of 0 or more"));
            }
        }
        if sms.price_per_segment.is_some() && self.rate(&sms.currency).is_none() {
            return Err(format!(
                "[sms] prices SMS in {} but reports are in {}: add `{} = RATE` under [reports.rates] (what one {} is worth in {})",
                sms.currency, self.currency, sms.currency, sms.currency, self.currency
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// `[sms.twilio]`: Twilio, or any service that speaks its Messages API.
    pub twilio: Option<TwilioConfig>,
    /// `[sms.webhook]`: a gateway called with a JSON body of our making (Chinese SMS gateways).
    pub webhook: Option<SmsWebhookConfig>,
    /// Price of one SMS segment in `currency`, stored with every message for ROI.
    pub price_per_segment: Option<f64>,
    pub currency: String,
    /// Required as `?secret=` by `POST /v1/sms/inbound` (replies such as 退订 from a gateway).
    pub inbound_secret: Option<Secret>,
    #[serde(with = "humantime_secs")]
    pub timeout: Duration,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            twilio: None,
            webhook: None,
            price_per_segment: None,
            currency: "USD".into(),
            inbound_secret: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: String,
    /// Better set as `NURTURE_TWILIO_AUTH_TOKEN` than written in the file.
    #[serde(default)]
    pub auth_token: String,
    /// The sender number; or `messaging_service_sid`.
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    /// Where the Messages API is; a test points it at a local fake.
    #[serde(default = "twilio_api")]
    pub base_url: String,
}

fn twilio_api() -> String {
    "https://api.twilio.com".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsWebhookConfig {
    pub url: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// JSON whose strings are templates: `{{to}}`, `{{body}}`, `{{segments}}`, `{{reference}}`.
    pub body: serde_json::Value,
    /// Where the gateway's message id is in its answer (a JSON pointer such as `/data/msgid`).
    pub id_pointer: Option<String>,
    /// For gateways that answer 200 to a refusal: the answer is a success only when the value
    /// at `success_pointer` equals `success_value` (e.g. `/code` and `0`).
    pub success_pointer: Option<String>,
    pub success_value: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Internal networks that `webhook` steps may call (`["10.1.0.0/16", "127.0.0.1"]`);
    /// loopback, private and link-local addresses are refused otherwise.
    #[serde(deserialize_with = "networks")]
    pub allow_networks: Vec<crate::addresses::Network>,
    #[serde(with = "humantime_secs")]
    pub timeout: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_networks: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

fn rep_tokens<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, Secret)>, D::Error> {
    let written = std::collections::BTreeMap::<String, String>::deserialize(deserializer)?;
    Ok(written.into_iter().map(|(rep, token)| (rep, Secret(token))).collect())
}

fn secrets(plain: Vec<String>) -> Vec<Secret> {
    plain.into_iter().map(Secret).collect()
}

/// `rep_id:token,rep_id:token`.
fn parse_rep_tokens(text: &str) -> Result<Vec<(String, Secret)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((rep, token)) if !rep.trim().is_empty() && !token.trim().is_empty() => {
                Ok((rep.trim().to_string(), Secret(token.trim().to_string())))
            }
            _ => Err(format!(
                "`{}` is not `rep_id:token`",
                pair.split(':').next().unwrap_or_default()
            )),
        })
        .collect()
}

fn networks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<crate::addresses::Network>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: None,
            redis_url: None,
            sqlite_path: PathBuf::from("nurture.db"),
            listen: "127.0.0.1:8080".into(),
            journeys: PathBuf::from("journeys"),
            templates: PathBuf::from("templates"),
            sales: PathBuf::from("sales.yaml"),
            scoring: PathBuf::from("scoring.yaml"),
            namespace: "nurture".into(),
            concurrency: 512,
            db_pool: 16,
            outbox: PathBuf::from("outbox"),
            smtp_url: None,
            mail_from: "nurture <nurture@localhost>".into(),
            public_url: None,
            secret: None,
            bounce_tokens: Vec::new(),
            metrics_tokens: Vec::new(),
            rep_tokens: Vec::new(),
            phone_country_code: "86".into(),
            write_keys: Vec::new(),
            admin_tokens: Vec::new(),
            reconcile_every: Duration::from_secs(30),
            reconcile_grace: Duration::from_secs(60),
            effect_lease: Duration::from_secs(300),
            max_attempts: 8,
            retry_base: Duration::from_secs(10),
            guardrails: Guardrails::default(),
            sms: SmsConfig::default(),
            webhooks: WebhooksConfig::default(),
            reports: ReportsConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl From<&str> for Secret {
    fn from(secret: &str) -> Secret {
        Secret(secret.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Durations in config files are written like journeys' (`30s`, `5m`).
mod humantime_secs {
    use crate::journey::values::Delay;
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        if let Some(ms) = text.trim().strip_suffix("ms") {
            return ms
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| e.to_string());
        }
        text.parse::<Delay>().map(|d| Duration::from_secs(d.seconds))
    }
}

/// `[guardrails]` is written like a journey's `settings`: `quiet_hours = "21:00-08:00"`,
/// `frequency_cap = "3 per 7d"`.
mod guardrails {
    use crate::journey::values::{FrequencyCap, Guardrails, QuietHours};
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Written {
        #[serde(default, deserialize_with = "quiet_hours")]
        quiet_hours: Option<QuietHours>,
        #[serde(default, deserialize_with = "frequency_cap")]
        frequency_cap: Option<FrequencyCap>,
    }

    /// Each value is read on its own, so a mistake is reported at the value itself.
    fn quiet_hours<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<QuietHours>, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e}; write a range like \"21:00-08:00\"")))
    }

    fn frequency_cap<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<FrequencyCap>, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e}; write it like \"3 per 7d\"")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Guardrails, D::Error> {
        let written = Written::deserialize(deserializer)?;
        Ok(Guardrails {
            quiet_hours: written.quiet_hours,
            frequency_cap: written.frequency_cap,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

/// `nurture.toml`'s text; a mistake is reported as `FILE:LINE:COLUMN: message`.
pub fn parse_file(path: &str, text: &str) -> Result<Config, Error> {
    toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
                format!("{path}:{line}:{column}")
            })
            .unwrap_or_else(|| path.to_string());
        Error::Invalid {
            path: place,
            message: e.message().to_string(),
        }
    })
}

impl Config {
    /// Reads `nurture.toml` in `dir` if present, then applies the environment.
    pub fn load(dir: &Path) -> Result<Config, Error> {
        let path = dir.join("nurture.toml");
        let mut config = if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.display().to_string(),
                source,
            })?;
            parse_file(&path.display().to_string(), &text)?
        } else {
            Config::default()
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.reports.check(&config.sms).map_err(|message| Error::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        let set = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        if let Some(url) = set(get("DATABASE_URL")) {
            self.database_url = Some(url);
        }
        if let Some(url) = set(get("REDIS_URL")) {
            self.redis_url = Some(url);
        }
        if let Some(listen) = set(get("NURTURE_LISTEN")) {
            self.listen = listen;
        }
        if let Some(ns) = set(get("NURTURE_NAMESPACE")) {
            self.namespace = ns;
        }
        if let Some(url) = set(get("NURTURE_SMTP_URL")) {
            self.smtp_url = Some(url);
        }
        if let Some(dir) = set(get("NURTURE_OUTBOX")) {
            self.outbox = dir.into();
        }
        if let Some(path) = set(get("NURTURE_SQLITE_PATH")) {
            self.sqlite_path = path.into();
        }
        if let Some(url) = set(get("NURTURE_PUBLIC_URL")) {
            self.public_url = Some(url);
        }
        if let Some(secret) = set(get("NURTURE_SECRET")) {
            self.secret = Some(Secret(secret));
        }
        for (name, field) in [
            ("NURTURE_RECONCILE_EVERY", &mut self.reconcile_every),
            ("NURTURE_RECONCILE_GRACE", &mut self.reconcile_grace),
            ("NURTURE_RETRY_BASE", &mut self.retry_base),
        ] {
            if let Some(text) = set(get(name)) {
                *field = humantime_secs::parse(&text).map_err(|message| Error::Env {
                    name: name.into(),
                    message,
                })?;
            }
        }
        if let Some(text) = set(get("NURTURE_CONCURRENCY")) {
            self.concurrency = text.parse().map_err(|_| Error::Env {
                name: "NURTURE_CONCURRENCY".into(),
                message: format!("`{text}` is not a number"),
            })?;
        }
        let list = |text: String| {
            text.split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect::<Vec<_>>()
        };
        if let Some(keys) = set(get("NURTURE_WRITE_KEYS")) {
            self.write_keys = secrets(list(keys));
        }
        if let Some(tokens) = set(get("NURTURE_ADMIN_TOKENS")) {
            self.admin_tokens = secrets(list(tokens));
        }
        if let Some(tokens) = set(get("NURTURE_BOUNCE_TOKENS")) {
            self.bounce_tokens = secrets(list(tokens));
        }
        if let Some(tokens) = set(get("NURTURE_METRICS_TOKENS")) {
            self.metrics_tokens = secrets(list(tokens));
        }
        if let Some(text) = set(get("NURTURE_REP_TOKENS")) {
            self.rep_tokens = parse_rep_tokens(&text).map_err(|message| Error::Env {
                name: "NURTURE_REP_TOKENS".into(),
                message: format!("{message}; write it like li-wei:TOKEN,zhang-min:TOKEN"),
            })?;
        }
        if let Some(code) = set(get("NURTURE_PHONE_COUNTRY_CODE")) {
            self.phone_country_code = code.trim_start_matches('+').to_string();
        }
        if let Some(text) = set(get("NURTURE_DB_POOL")) {
            self.db_pool = text.parse().map_err(|_| Error::Env {
                name: "NURTURE_DB_POOL".into(),
                message: format!("`{text}` is not a number"),
            })?;
        }
        if let Some(sid) = set(get("NURTURE_TWILIO_ACCOUNT_SID")) {
            let twilio = self.sms.twilio.get_or_insert_with(|| TwilioConfig {
                account_sid: String::new(),
                auth_token: String::new(),
                from: None,
                messaging_service_sid: None,
                base_url: twilio_api(),
            });
            twilio.account_sid = sid;
        }
        if let Some(twilio) = &mut self.sms.twilio {
            if let Some(token) = set(get("NURTURE_TWILIO_AUTH_TOKEN")) {
                twilio.auth_token = token;
            }
            if let Some(from) = set(get("NURTURE_TWILIO_FROM")) {
                twilio.from = Some(from);
            }
        }
        if let Some(text) = set(get("NURTURE_WEBHOOK_ALLOW_NETWORKS")) {
            self.webhooks.allow_networks = list(text)
                .iter()
                .map(|network| network.parse())
                .collect::<Result<_, _>>()
                .map_err(|message| Error::Env {
                    name: "NURTURE_WEBHOOK_ALLOW_NETWORKS".into(),
                    message,
                })?;
        }
        for (name, field) in [
            ("NURTURE_HEADER_TIMEOUT", &mut self.http.header_timeout),
            ("NURTURE_REQUEST_TIMEOUT", &mut self.http.request_timeout),
        ] {
            if let Some(text) = set(get(name)) {
                *field = humantime_secs::parse(&text).map_err(|message| Error::Env {
                    name: name.into(),
                    message,
                })?;
            }
        }
        let number = |name: &str, text: &str| {
            text.trim().parse::<u32>().map_err(|_| Error::Env {
                name: name.into(),
                message: format!("`{text}` is not a number"),
            })
        };
        if let Some(text) = set(get("NURTURE_MAX_CONCURRENT_REQUESTS")) {
            self.http.max_concurrent_requests = number("NURTURE_MAX_CONCURRENT_REQUESTS", &text)? as usize;
        }
        if let Some(text) = set(get("NURTURE_RATE_LIMIT")) {
            self.http.rate_limit = Some(number("NURTURE_RATE_LIMIT", &text)?);
        }
        if let Some(text) = set(get("NURTURE_ACKNOWLEDGE")) {
            self.http.acknowledge = match text.trim() {
                "stored" => Acknowledge::Stored,
                "applied" => Acknowledge::Applied,
                other => {
                    return Err(Error::Env {
                        name: "NURTURE_ACKNOWLEDGE".into(),
                        message: format!("`{other}` is neither `stored` nor `applied`"),
                    });
                }
            };
        }
        if let Some(text) = set(get("NURTURE_RATE_BURST")) {
            self.http.rate_burst = Some(number("NURTURE_RATE_BURST", &text)?);
        }
        if let Some(text) = set(get("NURTURE_MAX_ATTEMPTS")) {
            self.max_attempts = text.parse().map_err(|_| Error::Env {
                name: "NURTURE_MAX_ATTEMPTS".into(),
                message: format!("`{text}` is not a number"),
            })?;
        }
        Ok(())
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    pub fn is_embedded(&self) -> bool {
        self.database_url.is_none()
    }

    /// The per-write-key limit of the events API, `None` for none (see `HttpConfig::rate_limit`).
    pub fn rate_limit(&self) -> Option<RateLimit> {
        let default = if self.is_embedded() { 0 } else { PRODUCTION_RATE_LIMIT };
        let per_second = self.http.rate_limit.unwrap_or(default);
        (per_second > 0).then(|| RateLimit {
            per_second,
            burst: self.http.rate_burst.unwrap_or(per_second.saturating_mul(5)).max(1),
        })
    }

    /// Whether `listen` only takes connections from this machine: `127.0.0.0/8`, `::1` or
    /// `localhost`. Anything else (`0.0.0.0`, a LAN address, a name) is reachable by others.
    pub fn listens_on_loopback(&self) -> bool {
        if let Ok(address) = self.listen.parse::<std::net::SocketAddr>() {
            return address.ip().is_loopback();
        }
        self.listen
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
    }

    /// Whether the built-in `dev` write key and admin token are accepted: in the embedded mode,
    /// with no keys configured, listening on loopback only.
    pub fn accepts_dev_credentials(&self) -> bool {
        self.is_embedded() && self.write_keys.is_empty() && self.admin_tokens.is_empty() && self.listens_on_loopback()
    }

    /// Refuses an API that others could reach with the `dev` credentials, or with none at all.
    pub fn check_api_credentials(&self) -> Result<(), Error> {
        if self.write_keys.is_empty()
            && self.admin_tokens.is_empty()
            && self.is_embedded()
            && !self.listens_on_loopback()
        {
            return Err(Error::Env {
                name: "NURTURE_LISTEN".into(),
                message: format!(
                    "`{}` is reachable from other machines, and no keys are configured: the built-in `dev` key is only accepted on 127.0.0.1. Set NURTURE_WRITE_KEYS and NURTURE_ADMIN_TOKENS (or write_keys and admin_tokens in nurture.toml), or listen on 127.0.0.1",
                    self.listen
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guardrails_are_read_from_nurture_toml() {
        let config = parse_file(
            "nurture.toml",
            "[guardrails]\nquiet_hours = \"21:00-08:00\"\nfrequency_cap = \"3 per 7d\"\n",
        )
        .unwrap();
        assert_eq!(
            config.guardrails.frequency_cap.map(|c| c.to_string()).as_deref(),
            Some("3 per 1w")
        );
        assert_eq!(
            config.guardrails.quiet_hours.map(|q| q.to_string()).as_deref(),
            Some("21:00-08:00")
        );
    }

    #[test]
    fn a_bad_guardrail_names_its_place_and_what_to_write() {
        let error = parse_file(
            "nurture.toml",
            "listen = \"127.0.0.1:1\"\n[guardrails]\nfrequency_cap = \"3 in 7d\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("nurture.toml:3:"), "{error}");
        assert!(error.contains("write it like \"3 per 7d\""), "{error}");
    }

    #[test]
    fn sms_and_webhook_sections_read_from_the_file_and_the_environment() {
        let mut config: Config = toml::from_str(
            r#"
[sms]
price_per_segment = 0.05
currency = "CNY"

[sms.twilio]
account_sid = "AC123"
from = "+15005550006"

[webhooks]
allow_networks = ["10.1.0.0/16", "::1"]
timeout = "3s"
"#,
        )
        .unwrap();
        config
            .apply_env(|name| (name == "NURTURE_TWILIO_AUTH_TOKEN").then(|| "secret".to_string()))
            .unwrap();
        let twilio = config.sms.twilio.as_ref().unwrap();
        assert_eq!(
            (twilio.auth_token.as_str(), twilio.base_url.as_str()),
            ("secret", "https://api.twilio.com")
        );
        assert_eq!(config.sms.price_per_segment, Some(0.05));
        assert_eq!(config.webhooks.timeout, Duration::from_secs(3));
        assert!(config.webhooks.allow_networks[0].contains("10.1.200.3".parse().unwrap()));
    }

    #[test]
    fn rep_tokens_come_from_the_file_or_the_environment_and_never_show() {
        let mut config: Config = toml::from_str("[rep_tokens]\nli-wei = \"t1\"\n").unwrap();
        assert_eq!(config.rep_tokens, vec![("li-wei".to_string(), Secret("t1".into()))]);
        config
            .apply_env(|name| (name == "NURTURE_REP_TOKENS").then(|| "li-wei:t2, zhang-min:t3".to_string()))
            .unwrap();
        assert_eq!(config.rep_tokens.len(), 2);
        assert_eq!(config.rep_tokens[1].0, "zhang-min");
        assert!(!format!("{config:?}").contains("t3"), "tokens stay out of logs");
        let error = config
            .apply_env(|name| (name == "NURTURE_REP_TOKENS").then(|| "li-wei:t2,oops".to_string()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("`oops` is not `rep_id:token`"), "{error}");
    }

    #[test]
    fn dev_credentials_are_only_for_a_loopback_listener() {
        let with = |listen: &str| Config {
            listen: listen.into(),
            ..Config::default()
        };
        for listen in ["127.0.0.1:8080", "127.1.2.3:1", "[::1]:8080", "localhost:8080"] {
            assert!(with(listen).accepts_dev_credentials(), "{listen}");
            assert!(with(listen).check_api_credentials().is_ok(), "{listen}");
        }
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080", "nurture.example:8080"] {
            assert!(!with(listen).accepts_dev_credentials(), "{listen}");
            let error = with(listen).check_api_credentials().unwrap_err().to_string();
            assert!(
                error.contains("NURTURE_WRITE_KEYS") && error.contains(listen),
                "{error}"
            );
        }
        let configured = Config {
            write_keys: vec!["wk".into()],
            admin_tokens: vec!["at".into()],
            ..with("0.0.0.0:8080")
        };
        assert!(configured.check_api_credentials().is_ok() && !configured.accepts_dev_credentials());
    }

    #[test]
    fn the_rate_limit_is_off_in_the_embedded_mode_unless_set() {
        let mut config = Config::default();
        assert_eq!(config.rate_limit(), None);
        config.database_url = Some("postgres://x".into());
        assert_eq!(config.rate_limit().map(|limit| limit.per_second), Some(2_000));
        config
            .apply_env(|name| match name {
                "NURTURE_RATE_LIMIT" => Some("5".into()),
                "NURTURE_RATE_BURST" => Some("7".into()),
                "NURTURE_HEADER_TIMEOUT" => Some("2s".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.rate_limit(),
            Some(RateLimit {
                per_second: 5,
                burst: 7
            })
        );
        assert_eq!(config.http.header_timeout, Duration::from_secs(2));
        let file: Config = toml::from_str("[http]\nrate_limit = 0\nrequest_timeout = \"5s\"\n").unwrap();
        assert_eq!(
            (file.rate_limit(), file.http.request_timeout),
            (None, Duration::from_secs(5))
        );
    }

    #[test]
    fn the_events_api_answers_once_stored_unless_told_applied() {
        let mut config = Config::default();
        assert_eq!(config.http.acknowledge, Acknowledge::Stored);
        config
            .apply_env(|name| (name == "NURTURE_ACKNOWLEDGE").then(|| "applied".into()))
            .unwrap();
        assert_eq!(config.http.acknowledge, Acknowledge::Applied);
        let refused = config.apply_env(|name| (name == "NURTURE_ACKNOWLEDGE").then(|| "later".into()));
        assert!(refused.unwrap_err().to_string().contains("NURTURE_ACKNOWLEDGE"));
        let file: Config = toml::from_str("[http]\nacknowledge = \"applied\"\n").unwrap();
        assert_eq!(file.http.acknowledge, Acknowledge::Applied);
        assert!(toml::from_str::<Config>("[http]\nacknowledge = \"whenever\"\n").is_err());
    }

    #[test]
    fn keys_tokens_and_the_inbound_secret_never_show() {
        let mut config: Config = toml::from_str(
            "write_keys = [\"wk-file\"]\nadmin_tokens = [\"admin-file\"]\n[sms]\ninbound_secret = \"in-file\"\n",
        )
        .unwrap();
        config
            .apply_env(|name| match name {
                "NURTURE_BOUNCE_TOKENS" => Some("bt-env, bt-env-2".to_string()),
                "NURTURE_ADMIN_TOKENS" => Some("admin-env".to_string()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.bounce_tokens,
            vec![Secret::from("bt-env"), Secret::from("bt-env-2")]
        );
        let shown = format!("{config:?}");
        for secret in ["wk-file", "admin-file", "admin-env", "bt-env", "in-file"] {
            assert!(!shown.contains(secret), "{secret} shows: {shown}");
        }
    }

    #[test]
    fn a_bad_network_names_its_place_and_the_expected_form() {
        let error = toml::from_str::<Config>("[webhooks]\nallow_networks = [\"intranet\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("not an address or a network like 10.0.0.0/8"), "{error}");
        let mut config = Config::default();
        let error = config
            .apply_env(|name| (name == "NURTURE_WEBHOOK_ALLOW_NETWORKS").then(|| "10.0.0.0/40".to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("NURTURE_WEBHOOK_ALLOW_NETWORKS") && error.contains("0 to 32"),
            "{error}"
        );
    }
}
