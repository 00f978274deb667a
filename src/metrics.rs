//! What `GET /metrics` shows, in the Prometheus text exposition format (version 0.0.4), every
//! name prefixed `nurture_`. A small registry of atomics rather than a metrics crate: the
//! counters are few and fixed, and counting must cost nothing on the hot paths. Counts are
//! added with relaxed atomics, once per step batch or request; a labelled family takes a read
//! lock to find its series, and a write lock only the first time a label set is seen.
//!
//! Counters start at zero when the process starts (Prometheus's `rate` handles the reset).
//! Queue depth, held waits and paused journeys are read at scrape time; timer lateness comes
//! from `queue::Timers`, which measures it for every fired wait.

use crate::engine::transition::Effect;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::Hash;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the HTTP latency buckets.
pub const HTTP_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Upper bounds (milliseconds) of the timer lateness buckets.
pub const LATENESS_BUCKETS_MS: [u64; 10] = [1, 5, 10, 25, 50, 100, 250, 1_000, 5_000, 10_000];

/// Where effects go, as a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Email,
    Sms,
    Webhook,
    Sales,
}

impl Channel {
    pub fn of(effect: &Effect) -> Channel {
        match effect {
            Effect::SendEmail { .. } => Channel::Email,
            Effect::SendSms { .. } => Channel::Sms,
            Effect::Webhook { .. } => Channel::Webhook,
            Effect::AssignToSales { .. } => Channel::Sales,
        }
    }

    /// The channel of a message step's kind (`send_email`, `send_sms`), for suppressions.
    fn of_step_kind(kind: &str) -> Option<Channel> {
        match kind {
            "send_email" => Some(Channel::Email),
            "send_sms" => Some(Channel::Sms),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Webhook => "webhook",
            Channel::Sales => "sales",
        }
    }
}

/// A family of counters (or histograms) by label values.
struct Family<K, V>(RwLock<HashMap<K, V>>);

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Family(RwLock::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone + Ord, V: Default> Family<K, V> {
    fn with(&self, key: &K, f: impl FnOnce(&V)) {
        if let Some(value) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return f(value);
        }
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        f(map.entry(key.clone()).or_default());
    }

    /// Every series, sorted by labels, so the output is stable.
    fn each(&self, mut f: impl FnMut(&K, &V)) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&K> = map.keys().collect();
        keys.sort();
        for key in keys {
            f(key, &map[key]);
        }
    }
}

/// A histogram of HTTP request durations: per-bucket counts (cumulated when shown), the
/// count and the sum in microseconds.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; HTTP_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        if let Some(bucket) = HTTP_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    events_ingested: AtomicU64,
    events_duplicate: AtomicU64,
    events_rejected: Family<&'static str, AtomicU64>,
    steps: Family<(String, String), AtomicU64>,
    /// `(channel, outcome)`: outcome `sent`, `failed` or `suppressed`.
    effects: Family<(Channel, &'static str), AtomicU64>,
    /// `(route template, status class)`.
    http: Family<(String, u16), Histogram>,
}

/// What a scrape reads at the moment it is made.
pub struct Gauges {
    /// Step jobs waiting in the queue (Redis or the SQLite queue file).
    pub queue_depth: Option<u64>,
    /// Requests stored by the events API and not applied yet, and those set aside after
    /// failing too often (rows of `inbox`, all processes).
    pub inbox: Option<(u64, u64)>,
    /// Waits this process holds in memory until they come due.
    pub timers_held: u64,
    pub paused_journeys: u64,
    /// `queue::Timers::lateness_buckets` for `LATENESS_BUCKETS_MS`: cumulative counts, the
    /// count of all and the sum in milliseconds.
    pub lateness: (Vec<u64>, u64, u64),
}

impl Metrics {
    /// Messages stored by the events API, and replays of messages stored before.
    pub fn events_ingested(&self, accepted: usize, duplicates: usize) {
        self.events_ingested.fetch_add(accepted as u64, Relaxed);
        self.events_duplicate.fetch_add(duplicates as u64, Relaxed);
    }

    /// Messages (or whole requests, when the count is unknown) the events API refused.
    pub fn events_rejected(&self, reason: &'static str, count: usize) {
        if count > 0 {
            self.events_rejected.with(&reason, |n| {
                n.fetch_add(count as u64, Relaxed);
            });
        }
    }

    /// Steps a batch ran, as `(journey, step)` per history row: one registry call per batch.
    pub fn steps_ran<'a>(&self, steps: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a str)>) {
        let mut ran: HashMap<(&str, &str), u64> = HashMap::new();
        let mut suppressed: BTreeMap<Channel, u64> = BTreeMap::new();
        for (journey, step, kind, outcome) in steps {
            *ran.entry((journey, step)).or_default() += 1;
            if outcome == "suppressed"
                && let Some(channel) = Channel::of_step_kind(kind)
            {
                *suppressed.entry(channel).or_default() += 1;
            }
        }
        for ((journey, step), count) in ran {
            self.steps.with(&(journey.to_string(), step.to_string()), |n| {
                n.fetch_add(count, Relaxed);
            });
        }
        for (channel, count) in suppressed {
            self.effects.with(&(channel, "suppressed"), |n| {
                n.fetch_add(count, Relaxed);
            });
        }
    }

    /// Effects a batch performed: `(effect, whether it succeeded)`.
    pub fn effects_performed<'a>(&self, effects: impl IntoIterator<Item = (&'a Effect, bool)>) {
        let mut counts: BTreeMap<(Channel, &'static str), u64> = BTreeMap::new();
        for (effect, ok) in effects {
            let outcome = if ok { "sent" } else { "failed" };
            *counts.entry((Channel::of(effect), outcome)).or_default() += 1;
        }
        for (key, count) in counts {
            self.effects.with(&key, |n| {
                n.fetch_add(count, Relaxed);
            });
        }
    }

    /// History rows recorded for `journey` since the process started (benchmarks wait on it
    /// in-process, as the peer counts its own jobs, instead of counting rows in the database).
    pub fn steps_recorded(&self, journey: &str) -> u64 {
        let mut total = 0;
        self.steps.each(|(of, _), count| {
            if of == journey {
                total += count.load(Relaxed);
            }
        });
        total
    }

    /// Effects of every channel performed successfully since the process started.
    pub fn effects_sent(&self) -> u64 {
        let mut total = 0;
        self.effects.each(|(_, outcome), count| {
            if *outcome == "sent" {
                total += count.load(Relaxed);
            }
        });
        total
    }

    /// One HTTP request: its route template (`/v1/contacts/{id}`), status and duration.
    pub fn http_request(&self, route: &str, status: u16, seconds: f64) {
        let class = status / 100;
        let key = (route.to_string(), class);
        self.http.with(&key, |histogram| histogram.observe(seconds));
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP nurture_{name} {help}\n# TYPE nurture_{name} counter");
        };

        counter(&mut out, "events_ingested_total", "Events stored by the events API.");
        let _ = writeln!(
            out,
            "nurture_events_ingested_total {}",
            self.events_ingested.load(Relaxed)
        );
        counter(
            &mut out,
            "events_duplicate_total",
            "Events acknowledged again because their messageId was stored before.",
        );
        let _ = writeln!(
            out,
            "nurture_events_duplicate_total {}",
            self.events_duplicate.load(Relaxed)
        );
        counter(
            &mut out,
            "events_rejected_total",
            "Events (or whole requests) the events API refused, by reason.",
        );
        self.events_rejected.each(|reason, n| {
            let _ = writeln!(
                out,
                "nurture_events_rejected_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        });

        counter(&mut out, "steps_total", "Journey steps run, by journey and step.");
        self.steps.each(|(journey, step), n| {
            let _ = writeln!(
                out,
                "nurture_steps_total{{journey=\"{}\",step=\"{}\"}} {}",
                escape(journey),
                escape(step),
                n.load(Relaxed)
            );
        });

        for (outcome, help) in [
            (
                "sent",
                "Effects performed (messages sent, webhooks called, leads assigned), by channel.",
            ),
            ("failed", "Effect attempts that failed (each retry counts), by channel."),
            (
                "suppressed",
                "Messages not sent for consent, quiet hours or caps, by channel.",
            ),
        ] {
            counter(&mut out, &format!("effects_{outcome}_total"), help);
            self.effects.each(|(channel, kind), n| {
                if *kind == outcome {
                    let _ = writeln!(
                        out,
                        "nurture_effects_{outcome}_total{{channel=\"{}\"}} {}",
                        channel.name(),
                        n.load(Relaxed)
                    );
                }
            });
        }

        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP nurture_{name} {help}\n# TYPE nurture_{name} gauge\nnurture_{name} {value}"
            );
        };
        if let Some(depth) = gauges.queue_depth {
            gauge(&mut out, "queue_depth", "Step jobs waiting in the queue.", depth);
        }
        if let Some((waiting, failed)) = gauges.inbox {
            gauge(
                &mut out,
                "inbox_waiting",
                "Requests stored by the events API and not applied yet.",
                waiting,
            );
            gauge(
                &mut out,
                "inbox_failed",
                "Stored requests set aside after failing to apply too often (inbox.last_error says why).",
                failed,
            );
        }
        gauge(
            &mut out,
            "timers_held",
            "Waits this process holds in memory until they come due.",
            gauges.timers_held,
        );
        gauge(
            &mut out,
            "journeys_paused",
            "Journeys paused now.",
            gauges.paused_journeys,
        );

        let _ = writeln!(
            out,
            "# HELP nurture_timer_lateness_seconds How late fired waits reached the queue.\n# TYPE nurture_timer_lateness_seconds histogram"
        );
        let (cumulative, count, sum_ms) = &gauges.lateness;
        for (bound, n) in LATENESS_BUCKETS_MS.iter().zip(cumulative) {
            let _ = writeln!(
                out,
                "nurture_timer_lateness_seconds_bucket{{le=\"{}\"}} {n}",
                *bound as f64 / 1000.0
            );
        }
        let _ = writeln!(out, "nurture_timer_lateness_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "nurture_timer_lateness_seconds_sum {}", *sum_ms as f64 / 1000.0);
        let _ = writeln!(out, "nurture_timer_lateness_seconds_count {count}");

        let _ = writeln!(
            out,
            "# HELP nurture_http_request_duration_seconds HTTP requests by route template and status class.\n# TYPE nurture_http_request_duration_seconds histogram"
        );
        self.http.each(|(route, class), histogram| {
            let labels = format!("route=\"{}\",status=\"{class}xx\"", escape(route));
            let mut seen = 0;
            for (bound, bucket) in HTTP_BUCKETS.iter().zip(&histogram.buckets) {
                seen += bucket.load(Relaxed);
                let _ = writeln!(
                    out,
                    "nurture_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {seen}"
                );
            }
            let count = histogram.count.load(Relaxed);
            let _ = writeln!(
                out,
                "nurture_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "nurture_http_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "nurture_http_request_duration_seconds_count{{{labels}}} {count}");
        });
        out
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            queue_depth: Some(3),
            inbox: Some((2, 1)),
            timers_held: 0,
            paused_journeys: 0,
            lateness: (vec![0; LATENESS_BUCKETS_MS.len()], 0, 0),
        }
    }

    #[test]
    fn counts_add_up_per_label_and_histograms_are_cumulative() {
        let metrics = Metrics::default();
        metrics.steps_ran([
            ("welcome", "hello", "send_email", "sent"),
            ("welcome", "hello", "send_email", "suppressed"),
            ("welcome", "wait", "wait", "waiting"),
        ]);
        metrics.steps_ran([("welcome", "hello", "send_email", "sent")]);
        metrics.steps_ran([("other", "hello", "tag", "tagged")]);
        assert_eq!(metrics.steps_recorded("welcome"), 4);
        let email = Effect::SendEmail {
            template: "hello".into(),
        };
        metrics.effects_performed([(&email, true), (&email, false), (&email, true)]);
        assert_eq!(metrics.effects_sent(), 2);
        metrics.http_request("/v1/contacts/{id}", 200, 0.003);
        metrics.http_request("/v1/contacts/{id}", 204, 2.0);
        let text = metrics.render(&gauges());
        assert!(
            text.contains("nurture_steps_total{journey=\"welcome\",step=\"hello\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("nurture_effects_suppressed_total{channel=\"email\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "nurture_http_request_duration_seconds_bucket{route=\"/v1/contacts/{id}\",status=\"2xx\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "nurture_http_request_duration_seconds_bucket{route=\"/v1/contacts/{id}\",status=\"2xx\",le=\"2.5\"} 2\n"
        ));
        assert!(text.contains("nurture_queue_depth 3\n"));
        assert!(text.contains("nurture_inbox_waiting 2\n") && text.contains("nurture_inbox_failed 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
