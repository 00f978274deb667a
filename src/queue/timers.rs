//! Waits, fired to the millisecond. A parked enrollment's `due_at` is in the database; this
//! process holds the ones coming due soon in memory and pushes each step job when its time
//! comes. Nothing waits in Redis, so a waiting enrollment costs Redis nothing.
//!
//! Which process holds what:
//! - a process holds the waits it parks itself, up to `HOLD_AHEAD` ahead;
//! - at start, every process loads everything due within `WINDOW` (and everything overdue), so
//!   a restart ends a wait on time rather than at the next reconciler pass;
//! - after that, the process holding the `timers` lease loads each next `WINDOW` from the
//!   database, well before it comes due (`engine::Engine::load_timers`).
//!
//! A wait may be held by two processes (its own and the lease holder); the second job finds
//! the enrollment moved on (a stale `seq`) and does nothing.

use super::StepJob;
use crate::engine::{Clock, SystemClock};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;

/// How far ahead the lease holder loads waits from the database.
pub const WINDOW_MS: i64 = 30_000;
/// How far ahead a process holds the waits it parks itself: beyond the lease holder's window,
/// so every wait is held by somebody.
pub const HOLD_AHEAD_MS: i64 = 2 * WINDOW_MS;

/// Pushes of due waits (`super::PUSH_CHUNK` each) side by side.
const PUSHES_AT_ONCE: usize = 4;
/// Lateness is counted per millisecond up to this; later ones share the last bucket.
const LATENESS_BUCKETS: usize = 10_001;

pub struct Timers {
    /// `(due ms, enrollment, seq)`, earliest first.
    entries: Mutex<BTreeSet<(i64, i64, u64)>>,
    changed: Notify,
    clock: RwLock<Arc<dyn Clock>>,
    /// How many fired waits were pushed how many ms after they came due (the last bucket holds
    /// everything from 10 s on). Benchmarks and operators read it with `lateness`.
    lateness: Mutex<Vec<u64>>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            entries: Mutex::new(BTreeSet::new()),
            changed: Notify::new(),
            clock: RwLock::new(Arc::new(SystemClock)),
            lateness: Mutex::new(vec![0; LATENESS_BUCKETS]),
        }
    }
}

impl Timers {
    /// Times are read from the engine's clock (a virtual one in tests).
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write().unwrap_or_else(|e| e.into_inner()) = clock;
    }

    pub fn now_ms(&self) -> i64 {
        self.clock
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .now()
            .timestamp_millis()
    }

    /// Holds `job` until `due_ms`, unless it is too far ahead (the lease holder loads it then).
    pub fn hold(&self, job: StepJob, due_ms: i64) {
        if due_ms > self.now_ms() + HOLD_AHEAD_MS {
            return;
        }
        self.hold_loaded(std::iter::once((job, due_ms)));
    }

    /// Holds jobs loaded from the database, whatever their distance.
    pub fn hold_loaded(&self, jobs: impl IntoIterator<Item = (StepJob, i64)>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = entries.first().map(|e| e.0);
        let mut sooner = false;
        for (job, due) in jobs {
            sooner |= earliest.is_none_or(|first| due < first);
            entries.insert((due, job.enrollment, job.seq));
        }
        drop(entries);
        if sooner {
            self.changed.notify_one();
        }
    }

    /// How many waits this process holds.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The held jobs due by `now`, with their due times.
    fn take_due(&self, now: i64) -> Vec<(i64, StepJob)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let later = entries.split_off(&(now + 1, i64::MIN, 0));
        let due = std::mem::replace(&mut *entries, later);
        due.into_iter()
            .map(|(at, enrollment, seq)| (at, StepJob { enrollment, seq }))
            .collect()
    }

    /// Counts waits due at `due_ms` that were pushed to the queue at `pushed_at`.
    pub fn count_lateness(&self, due_ms: impl IntoIterator<Item = i64>, pushed_at: i64) {
        let mut buckets = self.lateness.lock().unwrap_or_else(|e| e.into_inner());
        for at in due_ms {
            let late = (pushed_at - at).clamp(0, LATENESS_BUCKETS as i64 - 1) as usize;
            buckets[late] += 1;
        }
    }

    /// How late fired waits were pushed to the queue: their count and the given percentiles
    /// (0.5, 0.99, ...) in ms, since the process started or the last `reset_lateness`.
    pub fn lateness(&self, percentiles: &[f64]) -> (u64, Vec<u64>) {
        let buckets = self.lateness.lock().unwrap_or_else(|e| e.into_inner());
        let count: u64 = buckets.iter().sum();
        let at = |p: f64| {
            let rank = ((count as f64 * p).ceil() as u64).max(1);
            let mut seen = 0;
            for (ms, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return ms as u64;
                }
            }
            0
        };
        (count, percentiles.iter().map(|p| at(*p)).collect())
    }

    /// Lateness as a histogram: for each bound (ms), how many were at most that late
    /// (cumulative), then the count and the sum of all in ms (for `/metrics`).
    pub fn lateness_buckets(&self, bounds_ms: &[u64]) -> (Vec<u64>, u64, u64) {
        let buckets = self.lateness.lock().unwrap_or_else(|e| e.into_inner());
        let mut cumulative = vec![0; bounds_ms.len()];
        let (mut count, mut sum) = (0u64, 0u64);
        for (ms, n) in buckets.iter().enumerate() {
            count += n;
            sum += ms as u64 * n;
            // The last bucket holds everything from 10 s on: only `+Inf` may count it.
            let open_ended = ms == buckets.len() - 1;
            for (bound, total) in bounds_ms.iter().zip(cumulative.iter_mut()) {
                if !open_ended && ms as u64 <= *bound {
                    *total += n;
                }
            }
        }
        (cumulative, count, sum)
    }

    pub fn reset_lateness(&self) {
        self.lateness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .for_each(|n| *n = 0);
    }

    fn next_due(&self) -> Option<i64> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map(|e| e.0)
    }

    /// Pushes each held job to the queue when it comes due, until the process ends.
    pub async fn run(self: Arc<Self>, queue: super::Queue) {
        loop {
            let sleep = async {
                match self.next_due() {
                    Some(due) => {
                        let wait = (due - self.now_ms()).max(0) as u64;
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                // Something sooner was added: look again.
                _ = self.changed.notified() => continue,
            }
            let due = self.take_due(self.now_ms());
            if due.is_empty() {
                continue;
            }
            // Many waits due together (100,000 at one moment) go out `PUSH_CHUNK` at a time,
            // a few pushes side by side, so the first ones do not wait for the last.
            let chunks: Vec<Vec<(i64, StepJob)>> = due.chunks(super::PUSH_CHUNK).map(<[_]>::to_vec).collect();
            let pushes = chunks.into_iter().map(|chunk| {
                let queue = queue.clone();
                async move {
                    let outcome = queue.push_now(chunk.iter().map(|(_, job)| *job).collect()).await;
                    (chunk, outcome)
                }
            });
            let mut pushes = futures::stream::iter(pushes).buffer_unordered(PUSHES_AT_ONCE);
            let mut failed = Vec::new();
            while let Some((chunk, outcome)) = pushes.next().await {
                match outcome {
                    Ok(()) => self.count_lateness(chunk.iter().map(|(at, _)| *at), self.now_ms()),
                    Err(error) => {
                        tracing::warn!(%error, jobs = chunk.len(), "Could not push due waits; retrying.");
                        failed.extend(chunk.iter().map(|(_, job)| *job));
                    }
                }
            }
            drop(pushes);
            if !failed.is_empty() {
                // The queue is down (Redis restarting): try again shortly; nothing is lost,
                // as the database keeps every `due_at`.
                let retry = self.now_ms() + 500;
                self.hold_loaded(failed.into_iter().map(|job| (job, retry)));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_jobs_come_out_in_order_and_later_ones_stay() {
        let timers = Timers::default();
        let now = timers.now_ms();
        timers.hold(StepJob { enrollment: 2, seq: 1 }, now - 5);
        timers.hold(StepJob { enrollment: 1, seq: 3 }, now - 10);
        timers.hold(StepJob { enrollment: 3, seq: 1 }, now + 10_000);
        // Too far ahead: left to the lease holder's window.
        timers.hold(StepJob { enrollment: 4, seq: 1 }, now + HOLD_AHEAD_MS + 1_000);
        // The same wait held twice is one entry.
        timers.hold(StepJob { enrollment: 2, seq: 1 }, now - 5);
        assert_eq!(timers.len(), 3);
        let due = timers.take_due(now);
        assert_eq!(
            due,
            vec![
                (now - 10, StepJob { enrollment: 1, seq: 3 }),
                (now - 5, StepJob { enrollment: 2, seq: 1 })
            ]
        );
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_due(), Some(now + 10_000));
    }

    #[test]
    fn lateness_is_counted_per_millisecond() {
        let timers = Timers::default();
        timers.count_lateness([100, 100, 100, 90], 110);
        timers.count_lateness([0], 20_000);
        assert_eq!(timers.lateness(&[0.5, 0.6, 1.0]), (5, vec![10, 10, 10_000]));
        timers.reset_lateness();
        assert_eq!(timers.lateness(&[0.5]).0, 0);
    }
}
