//! The reconciler's memory between rounds. It repairs jobs that were lost; under a backlog
//! (more overdue enrollments than the workers keep up with) most overdue ones are not lost,
//! only queued. Without a memory every round re-pushed the same oldest 20,000, which then ran
//! as stale duplicates and crowded out the rest. So a round reads the next page after where
//! the last one stopped (a cursor over `(due_at, id)`, back to the start after the end), and
//! while there is a backlog (`BACKLOG` or more overdue) pushes nothing it pushed within
//! `REPUSH_AFTER` rounds: a job lost after its push (a Redis flush) is repaired then.

use super::runner::{Engine, Result};
use crate::store::backlog::{self, Cursor};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::collections::HashMap;

/// Overdue enrollments one round reads.
pub(crate) const PAGE: i64 = 10_000;
/// Rounds before the same job may be pushed again.
const REPUSH_AFTER: u32 = 10;
/// Overdue enrollments that make a backlog. Fewer are repaired every round, as ever: pushing
/// a few hundred again costs little, and a job lost twice (Redis flushed again) is repaired at
/// once.
pub const BACKLOG: usize = 1_000;

#[derive(Default)]
pub(crate) struct Repairs {
    cursor: Option<Cursor>,
    /// `(enrollment, seq)` pushed by a round, with when (ms).
    pushed: HashMap<(i64, u64), i64>,
}

impl Engine {
    /// The next page of overdue enrollments, after the last round's.
    pub(crate) async fn overdue_page(
        &self,
        connection: &mut AnyConnection,
        before: DateTime<Utc>,
    ) -> Result<Vec<(i64, u64)>> {
        let cursor = self.repairs.lock().unwrap_or_else(|e| e.into_inner()).cursor;
        let (found, last) = backlog::overdue_after(connection, before, cursor, PAGE).await?;
        // A short page is the end of the backlog: the next round starts again from the oldest.
        self.repairs.lock().unwrap_or_else(|e| e.into_inner()).cursor =
            if (found.len() as i64) < PAGE { None } else { last };
        Ok(found)
    }

    /// Of `found`, the jobs this process did not push in the last `REPUSH_AFTER` rounds; they
    /// are remembered as pushed now.
    pub(crate) fn not_pushed_recently(&self, found: Vec<(i64, u64)>, now: DateTime<Utc>) -> Vec<(i64, u64)> {
        let now = now.timestamp_millis();
        let every = i64::try_from(self.config.reconcile_every.as_millis()).unwrap_or(i64::MAX);
        let window = every.saturating_mul(i64::from(REPUSH_AFTER));
        let mut repairs = self.repairs.lock().unwrap_or_else(|e| e.into_inner());
        if found.len() < BACKLOG {
            repairs.pushed.clear();
            return found;
        }
        repairs.pushed.retain(|_, at| now - *at < window);
        found
            .into_iter()
            .filter(|job| {
                if repairs.pushed.contains_key(job) {
                    return false;
                }
                repairs.pushed.insert(*job, now);
                true
            })
            .collect()
    }
}
