//! Group commit: what arrives while earlier groups run is gathered into the next group, and a
//! few groups run at once. The ingest groups (`ingest.rs`), the step batches (`steps.rs`) and
//! the inbox's stored requests (`inbox.rs`) all take their work this way.

use super::runner::Engine;
use crate::store;
use std::future::Future;
use std::sync::{Arc, Weak};
use tokio::sync::{Semaphore, mpsc};

impl Engine {
    /// Groups of one kind that run at once: SQLite has one writer, so its groups take turns;
    /// PostgreSQL runs a few side by side, within the connection pool.
    pub(crate) fn groups_at_once(&self) -> usize {
        match self.store.kind {
            store::Kind::Sqlite => 1,
            store::Kind::Postgres => (self.config.db_pool as usize / 2).clamp(1, 4),
        }
    }
}

/// `first` and whatever else is queued already, while the group's `size` is under `limit`;
/// returns the group and its size.
pub(crate) fn gather<T>(
    first: T,
    receiver: &mut mpsc::UnboundedReceiver<T>,
    limit: usize,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, usize) {
    let mut total = size(&first);
    let mut group = vec![first];
    while total < limit {
        match receiver.try_recv() {
            Ok(next) => {
                total += size(&next);
                group.push(next);
            }
            Err(_) => break,
        }
    }
    (group, total)
}

/// Runs what `receiver` brings in groups (see `gather`), up to `parallel` groups at once, each
/// through `run`; ends when the channel closes or the engine is gone.
pub(crate) async fn run_groups<T, Fut>(
    engine: Weak<Engine>,
    mut receiver: mpsc::UnboundedReceiver<T>,
    parallel: usize,
    limit: usize,
    size: impl Fn(&T) -> usize,
    run: impl Fn(Arc<Engine>, Vec<T>) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(parallel));
    while let Some(first) = receiver.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // While other groups run, a free slot took only what had arrived since the last one
        // left: groups of a few dozen, each paying a group's fixed statements. A moment's
        // wait lets the callers a commit just answered send their next ones.
        if slots.available_permits() + 1 < parallel && receiver.len() < limit / 8 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let (group, _) = gather(first, &mut receiver, limit, &size);
        let Some(engine) = engine.upgrade() else { return };
        let work = run(engine, group);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}
