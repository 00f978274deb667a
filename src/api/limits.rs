//! The API's limits (`[http]` of `nurture.toml`): a bound on requests handled at once and a
//! deadline for each (503 with `Retry-After`), and a token bucket per write key on the events
//! API (429 with `Retry-After`). Segment's libraries retry both after `Retry-After`.
//! The header-read timeout is the server's (`api::serve`).
//!
//! With Redis (production), a write key's bucket is in Redis, shared by every API process: one
//! Lua script per request takes a token on Redis's clock. If Redis does not answer within
//! `SHARED_WITHIN`, or failed in the last `SHARED_REST`, the process's own bucket decides, so
//! an outage never refuses or slows an event (each process then allows the whole rate).

use super::error::ApiError;
use crate::config::{Config, RateLimit};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The largest body read off the wire (after gunzip the events API allows far less); listed
/// with every other limit in `crate::limits`.
pub const MAX_BODY_BYTES: usize = crate::limits::MAX_REQUEST_BYTES;

/// Routes a load balancer or Prometheus calls: answered even when the API is saturated.
const UNLIMITED_ROUTES: [&str; 4] = ["/healthz", "/readyz", "/health", "/metrics"];

struct Guard {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
}

/// Adds the concurrency bound, the request deadline, and the write keys' rate limiter (as an
/// extension, for `RateLimiter::admit` in the events handler) to `routes`.
pub fn wrap<S>(routes: Router<S>, config: &Config, redis: Option<redis::aio::ConnectionManager>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let guard = Arc::new(Guard {
        in_flight: Arc::new(Semaphore::new(config.http.max_concurrent_requests.max(1))),
        request_timeout: config.http.request_timeout,
    });
    let mut limiter = RateLimiter::new(config.rate_limit());
    if let Some(connection) = redis {
        limiter = limiter.shared(connection, &config.namespace);
    }
    routes
        .layer(axum::Extension(Arc::new(limiter)))
        .layer(middleware::from_fn_with_state(guard, bounded))
}

async fn bounded(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if UNLIMITED_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    // A body announced too large is refused before a byte of it is read (a chunked one is cut
    // at the limit by `DefaultBodyLimit`).
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return ApiError {
            field: Some("body".into()),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {} MB", MAX_BODY_BYTES / (1024 * 1024)),
            )
        }
        .into_response();
    }
    // Refused at once rather than queued: a queued request would only wait to be late.
    let Ok(_permit) = guard.in_flight.clone().try_acquire_owned() else {
        return ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many requests are being handled; retry after the time in Retry-After",
            )
        }
        .into_response();
    };
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        // The handler is dropped: the events API stores a request in one transaction, so
        // nothing of it stays half-applied.
        Err(_) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request was not answered within {} s; retry after the time in Retry-After",
                    guard.request_timeout.as_secs_f64()
                ),
            )
        }
        .into_response(),
    }
}

/// A token bucket per write key. Only keys that authenticated get a bucket, so the map is as
/// large as the configured keys.
pub struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
    shared: Option<Shared>,
}

/// The buckets in Redis: `{namespace}:rate:{source}`.
struct Shared {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    /// Until when the local buckets decide, after Redis failed.
    resting_until: Mutex<Option<Instant>>,
}

/// How long a request waits for its shared bucket before its process's own bucket decides.
const SHARED_WITHIN: Duration = Duration::from_millis(200);

/// After Redis failed a bucket, how long the local buckets decide before Redis is asked again.
const SHARED_REST: Duration = Duration::from_secs(2);

/// One token from a bucket in Redis, on Redis's clock (one clock for every process). KEYS[1]:
/// the bucket, a hash of its tokens and when they were counted; ARGV: the rate per second and
/// the burst. Returns 0 when a token was taken, else the milliseconds until there is one. The
/// bucket expires once it would be full again anyway.
static TAKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local rate = tonumber(ARGV[1])
        local burst = tonumber(ARGV[2])
        local time = redis.call('TIME')
        local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
        local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
        local tokens = tonumber(bucket[1])
        local at = tonumber(bucket[2])
        if tokens == nil or at == nil then
            tokens = burst
            at = now
        end
        tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
        local wait = 0
        if tokens >= 1 then
            tokens = tokens - 1
        else
            wait = math.max(1, math.ceil((1 - tokens) / rate * 1000))
        end
        redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
        redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
        return wait",
    )
});

struct Bucket {
    tokens: f64,
    filled_at: Instant,
}

impl RateLimiter {
    pub fn new(limit: Option<RateLimit>) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Keeps the buckets in Redis, shared by every process of `namespace`.
    pub fn shared(mut self, connection: redis::aio::ConnectionManager, namespace: &str) -> RateLimiter {
        self.shared = Some(Shared {
            connection,
            prefix: format!("{namespace}:rate:"),
            resting_until: Mutex::new(None),
        });
        self
    }

    /// Takes one request from `source`'s bucket (`Keys::source_of`: the key's name, never the
    /// key), or answers 429 with how long until there is one again.
    pub async fn admit(&self, source: &str) -> Result<(), ApiError> {
        let Some(limit) = self.limit else { return Ok(()) };
        let taken = match self.take_shared(source, limit).await {
            Some(taken) => taken,
            None => self.take(source, limit, Instant::now()),
        };
        match taken {
            Ok(()) => Ok(()),
            Err(wait) => Err(ApiError {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "this write key sent more than {} requests per second (bursts of {}); retry after the time in Retry-After",
                        limit.per_second, limit.burst
                    ),
                )
            }),
        }
    }

    /// A token from the shared bucket; `None` without Redis, or when it did not answer in
    /// time (then the local bucket decides, and for `SHARED_REST` the next requests' too).
    async fn take_shared(&self, source: &str, limit: RateLimit) -> Option<Result<(), Duration>> {
        let shared = self.shared.as_ref()?;
        let now = Instant::now();
        {
            let resting = shared.resting_until.lock().unwrap_or_else(|e| e.into_inner());
            if resting.is_some_and(|until| now < until) {
                return None;
            }
        }
        let mut connection = shared.connection.clone();
        let mut invocation = TAKE.key(format!("{}{source}", shared.prefix));
        invocation.arg(limit.per_second).arg(limit.burst);
        let call = invocation.invoke_async::<i64>(&mut connection);
        let answer = tokio::time::timeout(SHARED_WITHIN, call).await;
        let mut resting = shared.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(Ok(wait)) => {
                *resting = None;
                Some(if wait <= 0 {
                    Ok(())
                } else {
                    Err(Duration::from_millis(wait as u64))
                })
            }
            Ok(Err(error)) => {
                if resting.is_none() {
                    tracing::warn!(%error, "The shared rate limit is unreachable in Redis: this process's own limit applies.");
                }
                *resting = Some(now + SHARED_REST);
                None
            }
            Err(_) => {
                if resting.is_none() {
                    tracing::warn!(
                        "Redis did not answer the shared rate limit in time: this process's own limit applies."
                    );
                }
                *resting = Some(now + SHARED_REST);
                None
            }
        }
    }

    fn take(&self, source: &str, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(source.to_string()).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            filled_at: now,
        });
        let refill = now.saturating_duration_since(bucket.filled_at).as_secs_f64() * f64::from(limit.per_second);
        bucket.tokens = (bucket.tokens + refill).min(f64::from(limit.burst));
        bucket.filled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / f64::from(limit.per_second),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(None);
        let limit = RateLimit {
            per_second: 2,
            burst: 3,
        };
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("a", limit, start).is_ok());
        }
        let wait = limiter.take("a", limit, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiter.take("b", limit, start).is_ok(), "each key has its own bucket");
        assert!(limiter.take("a", limit, start + Duration::from_millis(500)).is_ok());
        assert!(limiter.take("a", limit, start + Duration::from_millis(500)).is_err());
        // A long pause fills the bucket up to the burst, no further.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.take("a", limit, later).is_ok());
        }
        assert!(limiter.take("a", limit, later).is_err());
    }

    #[test]
    fn no_limit_admits_everything() {
        let limiter = RateLimiter::new(None);
        let admitted = futures::executor::block_on(async {
            let mut admitted = 0;
            for _ in 0..10_000 {
                admitted += usize::from(limiter.admit("a").await.is_ok());
            }
            admitted
        });
        assert_eq!(admitted, 10_000);
    }
}
