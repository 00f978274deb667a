//! I/O. Accept deadlines, fired to the millisecond the way waits are (`queue::timers`): the
//! deadline is in the database (`assignments.accept_by`, indexed); each process holds in
//! memory the deadlines of the leads it places (up to `HOLD_AHEAD_MS` ahead) and, at start
//! and then while it holds the `timers` lease, every deadline of the coming window. A deadline
//! held twice recycles once: the recycle is a compare-and-set on the lead's status. The
//! reconciler repairs what a dead process left (deadlines passed, reps not told).

use super::runner::{Engine, Result};
use crate::store::sales as leads;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tracing::warn;

/// The sales loop's in-process parts: accept deadlines coming due, and leads whose rep is to
/// be told (handed to `run_sales`).
pub(crate) struct SalesDesk {
    /// `(due ms, lead)`, earliest first: like `queue::Timers`, loaded in windows by the
    /// process holding the `timers` lease, and by every process for the leads it places.
    deadlines: Mutex<BTreeSet<(i64, i64)>>,
    changed: Notify,
    notices: tokio::sync::mpsc::UnboundedSender<i64>,
    inbox: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<i64>>>,
}

impl Default for SalesDesk {
    fn default() -> Self {
        let (notices, inbox) = tokio::sync::mpsc::unbounded_channel();
        SalesDesk {
            deadlines: Mutex::new(BTreeSet::new()),
            changed: Notify::new(),
            notices,
            inbox: Mutex::new(Some(inbox)),
        }
    }
}

impl SalesDesk {
    pub(super) fn hold(&self, deadlines: impl IntoIterator<Item = (i64, i64)>) {
        let mut entries = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = entries.first().map(|e| e.0);
        let mut sooner = false;
        for (lead, due) in deadlines {
            sooner |= earliest.is_none_or(|first| due < first);
            entries.insert((due, lead));
        }
        drop(entries);
        if sooner {
            self.changed.notify_one();
        }
    }

    /// Hands new leads to the task that tells their reps.
    pub(super) fn tell(&self, leads: Vec<i64>) {
        for lead in leads {
            // The receiver lives as long as the engine; a notice lost with the process is
            // repaired by the reconciler (`notified_at` is still NULL).
            let _ = self.notices.send(lead);
        }
    }

    fn take_due(&self, now: i64) -> Vec<i64> {
        let mut entries = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        let later = entries.split_off(&(now + 1, i64::MIN));
        std::mem::replace(&mut *entries, later)
            .into_iter()
            .map(|(_, lead)| lead)
            .collect()
    }

    fn next_due(&self) -> Option<i64> {
        self.deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map(|e| e.0)
    }
}

impl Engine {
    /// Holds the accept deadlines due in `(after, until]` (ms) and recycles the overdue ones
    /// now: what the `timers` lease holder does for each window.
    pub async fn load_lead_deadlines(&self, after: i64, until: i64) -> Result<()> {
        let mut connection = self.store.pool.acquire().await?;
        let due = leads::deadlines_between(&mut connection, after, until).await?;
        drop(connection);
        let now = self.clock.now().timestamp_millis();
        let (overdue, coming): (Vec<_>, Vec<_>) = due.into_iter().partition(|(_, at)| *at <= now);
        self.sales.hold(coming);
        let overdue: Vec<i64> = overdue.into_iter().map(|(lead, _)| lead).collect();
        if !overdue.is_empty() {
            self.recycle(&overdue).await?;
        }
        Ok(())
    }

    /// Repairs what a dead process left: deadlines passed more than `grace` ago and reps not
    /// told. Part of `reconcile`.
    pub(crate) async fn reconcile_sales(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut connection = self.store.pool.acquire().await?;
        let overdue = leads::deadlines_between(&mut connection, i64::MIN, before.timestamp_millis()).await?;
        let untold: Vec<i64> = leads::unnotified(&mut connection, before, 500)
            .await?
            .iter()
            .map(|lead| lead.id)
            .collect();
        drop(connection);
        let ids: Vec<i64> = overdue.into_iter().map(|(lead, _)| lead).collect();
        let recycled = self.recycle(&ids).await?;
        self.tell_reps(&untold).await;
        Ok(recycled + untold.len())
    }

    /// Fires accept deadlines as they come due, and tells reps of their new leads, until the
    /// process ends. Started once per engine (`app::build`).
    pub async fn run_sales(self: Arc<Self>) {
        let inbox = self.sales.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut inbox) = inbox {
            let engine = Arc::downgrade(&self);
            tokio::spawn(async move {
                while let Some(first) = inbox.recv().await {
                    let mut batch = vec![first];
                    while let Ok(next) = inbox.try_recv() {
                        batch.push(next);
                    }
                    let Some(engine) = engine.upgrade() else { return };
                    engine.tell_reps(&batch).await;
                }
            });
        }
        loop {
            let sleep = async {
                match self.sales.next_due() {
                    Some(due) => {
                        let wait = (due - self.clock.now().timestamp_millis()).max(0) as u64;
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                // Something sooner was added: look again.
                _ = self.sales.changed.notified() => continue,
            }
            let due = self.sales.take_due(self.clock.now().timestamp_millis());
            if due.is_empty() {
                continue;
            }
            if let Err(error) = self.recycle(&due).await {
                // The database is the truth: the lease holder's next window or the reconciler
                // recycles them.
                warn!(%error, leads = due.len(), "Could not recycle unaccepted leads; will retry.");
                let retry = self.clock.now().timestamp_millis() + 1_000;
                self.sales.hold(due.into_iter().map(|lead| (lead, retry)));
            }
        }
    }
}
