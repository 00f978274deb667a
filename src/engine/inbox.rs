//! Store first, apply right after: the events API's default (`[http] acknowledge = "stored"`).
//!
//! A request's checked messages are written to the `inbox` as one row, in a group commit with
//! the requests that arrive alongside, and the request is answered once that commits: the
//! messages are durable and will be applied. The process then applies them from memory in
//! large groups (dedupe, identities, contacts, traits, events, enrollments: `ingest.rs`), and
//! each group's transaction deletes its inbox rows first, so a row is applied once even when
//! a sweep reaches it too. Rows a process could not apply (it died, or fell behind and let
//! them wait in the database) are swept by the next process to start and by the reconciler.
//!
//! Why: applying costs a few rows per message with their indexes, and a client should not
//! wait for that work, nor be slowed to its pace; storing a batch of 200 is one row.

use super::groups::{gather, run_groups};
use super::runner::{Engine, Error, Result};
use crate::events::{Kind, Message};
use crate::store::{self, inbox};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{mpsc, oneshot};

/// Most messages one group applies, and one group of stored requests holds.
const MAX_GROUP_MESSAGES: usize = 2_000;
/// Messages held in memory for applying; past this, rows wait in the database and are swept
/// in order, so a burst costs disk, not memory.
const MAX_HELD_MESSAGES: usize = 50_000;
/// Rows read back per sweep.
const SWEEP_ROWS: i64 = 256;
/// A row not applied this long after it was stored is an orphan any process may apply.
pub const ORPHAN_AFTER_MS: i64 = 5_000;
/// Failures after which a row is left for an operator (it stays in `inbox`, with its error).
pub const MAX_ATTEMPTS: i64 = 10;
/// How long a row whose application failed waits before it is tried again.
const RETRY_AFTER_MS: i64 = 30_000;

/// Step jobs to enqueue once their transaction has committed.
type Jobs = Vec<(crate::queue::StepJob, DateTime<Utc>)>;

/// A request waiting for its group's commit to the inbox.
pub(crate) struct Receiving {
    source: String,
    messages: Vec<Message>,
    body: String,
    received_at: i64,
    done: oneshot::Sender<Result<(), String>>,
}

/// A stored request, to be applied.
pub(crate) struct Held {
    id: i64,
    source: String,
    messages: Vec<Message>,
}

/// The two channels of this process's inbox: requests to store, rows to apply.
pub(crate) struct Inbox {
    receiving: mpsc::UnboundedSender<Receiving>,
    applying: mpsc::UnboundedSender<Held>,
    /// Messages handed to the applier and not applied yet.
    held: std::sync::atomic::AtomicUsize,
    /// Rows were left in the database (memory was full): sweep until the inbox is empty.
    behind: std::sync::atomic::AtomicBool,
    wake: Arc<tokio::sync::Notify>,
    /// Requests received and not answered yet, and a signal each time some are answered: on
    /// SQLite (one writer) the applier lets them have the database first.
    answering: Arc<std::sync::atomic::AtomicUsize>,
    answered: Arc<tokio::sync::Notify>,
}

impl Engine {
    /// Stores a request's messages in the inbox and returns once they are committed; they are
    /// applied right after (see the module's documentation).
    pub async fn receive(self: &Arc<Self>, source: &str, messages: Vec<Message>) -> Result<()> {
        let body = encode(&messages);
        let (done, outcome) = oneshot::channel();
        let receiving = Receiving {
            source: source.to_string(),
            messages,
            body,
            received_at: self.clock.now().timestamp_millis(),
            done,
        };
        let inbox = self.inbox();
        inbox.answering.fetch_add(1, Relaxed);
        if inbox.receiving.send(receiving).is_err() {
            inbox.answering.fetch_sub(1, Relaxed);
            return Err(Error::Invalid("the inbox has stopped".into()));
        }
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Invalid(error)),
            Err(_) => Err(Error::Invalid("the inbox group was abandoned".into())),
        }
    }

    /// Messages stored and not applied yet by this process, and whether it left rows in the
    /// database to sweep.
    pub fn inbox_held(&self) -> (usize, bool) {
        self.inbox.get().map_or((0, false), |inbox| {
            (inbox.held.load(Relaxed), inbox.behind.load(Relaxed))
        })
    }

    /// Waits until this process has applied every request it answered, at most `within`;
    /// whether it did. For a graceful stop: what is left is applied by the next reconciler.
    pub async fn drain_inbox(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.inbox_held() != (0, false) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    fn inbox(self: &Arc<Self>) -> &Inbox {
        self.inbox.get_or_init(|| {
            let (receiving, receiver) = mpsc::unbounded_channel();
            let (applying, applier) = mpsc::unbounded_channel();
            tokio::spawn(run_groups(
                Arc::downgrade(self),
                receiver,
                self.groups_at_once(),
                MAX_GROUP_MESSAGES,
                |r: &Receiving| r.messages.len(),
                |engine, group| async move { engine.store_group(group).await },
            ));
            // One group at a time: groups of many messages need no company to keep up, the
            // rows are applied in the order they were stored, and two groups touching the same
            // contacts never deadlock each other.
            tokio::spawn(apply_groups(Arc::downgrade(self), applier));
            Inbox {
                receiving,
                applying,
                held: Default::default(),
                behind: Default::default(),
                wake: Arc::new(tokio::sync::Notify::new()),
                answering: Arc::default(),
                answered: Arc::new(tokio::sync::Notify::new()),
            }
        })
    }

    /// Writes a group of requests to the inbox in one transaction, answers them, and hands
    /// the stored rows to the applier.
    async fn store_group(self: &Arc<Self>, group: Vec<Receiving>) {
        let rows: Vec<(&str, &str, i64)> = group
            .iter()
            .map(|r| (r.source.as_str(), r.body.as_str(), r.received_at))
            .collect();
        // However it ends, the group's requests are answered by the end of this function.
        let inbox = self.inbox();
        let _answered = Answered(&inbox.answering, &inbox.answered, group.len());
        let stored = async {
            let mut tx = self.store.begin().await?;
            let ids = inbox::store(&mut tx, &rows).await?;
            tx.commit().await?;
            Ok::<_, store::Error>(ids)
        }
        .await;
        let ids = match stored {
            Ok(ids) => ids,
            Err(error) => {
                let error = error.to_string();
                for request in group {
                    let _ = request.done.send(Err(error.clone()));
                }
                return;
            }
        };
        for (request, id) in group.into_iter().zip(ids) {
            let _ = request.done.send(Ok(()));
            let count = request.messages.len();
            // Memory full, or rows already wait in the database: keep the order, leave it there.
            if inbox.behind.load(Relaxed) || inbox.held.load(Relaxed) + count > MAX_HELD_MESSAGES {
                inbox.behind.store(true, Relaxed);
                inbox.wake.notify_one();
                continue;
            }
            inbox.held.fetch_add(count, Relaxed);
            let held = Held {
                id,
                source: request.source,
                messages: request.messages,
            };
            if inbox.applying.send(held).is_err() {
                inbox.behind.store(true, Relaxed);
            }
        }
    }

    /// Applies stored requests in one transaction that first takes (deletes) their rows;
    /// rows another process took meanwhile are skipped. If the group fails as a whole, each
    /// request is tried on its own, and one that fails alone is noted for a later retry.
    /// Returns the step jobs of what was applied, for the caller to enqueue.
    async fn apply_held(&self, group: Vec<Held>) -> Jobs {
        if let Ok(jobs) = self.apply_retrying(&group).await {
            return jobs;
        }
        let mut jobs = Vec::new();
        for held in &group {
            match self.apply_retrying(std::slice::from_ref(held)).await {
                Ok(more) => jobs.extend(more),
                Err(error) => {
                    let retry_at = self.clock.now().timestamp_millis() + RETRY_AFTER_MS;
                    tracing::warn!(%error, inbox = held.id, "Stored messages could not be applied; they will be tried again.");
                    if let Err(error) = inbox::failed(&self.store.pool, held.id, &error.to_string(), retry_at).await {
                        tracing::warn!(%error, inbox = held.id, "Could not note the failure; the reconciler will try the row again.");
                    }
                }
            }
        }
        jobs
    }

    /// Enqueues the step jobs of applied messages; a failure is repaired by the reconciler.
    async fn enqueue_applied(&self, jobs: Jobs) {
        let count = jobs.len();
        if let Err(error) = self.enqueue_jobs(jobs).await {
            tracing::warn!(%error, jobs = count, "Messages applied, but their step jobs could not be enqueued; the reconciler will.");
        }
    }

    /// `apply_together`, tried again a few times when it lost a lock race (a deadlock with
    /// another process's transaction, SQLite's busy writer), which says nothing of the rows.
    async fn apply_retrying(&self, group: &[Held]) -> Result<Jobs> {
        let mut tries = 0;
        loop {
            match self.apply_together(group).await {
                Err(error) if tries < 3 && lost_a_lock_race(&error) => {
                    tries += 1;
                    tracing::debug!(%error, tries, "Applying stored requests lost a lock race; trying again.");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn apply_together(&self, group: &[Held]) -> Result<Jobs> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        inbox::apply_without_waiting_for_disk(&mut tx).await?;
        let ids: Vec<i64> = group.iter().map(|h| h.id).collect();
        let taken: std::collections::HashSet<i64> = inbox::take(&mut tx, &ids).await?.into_iter().collect();
        let requests: Vec<(&str, &[Message])> = group
            .iter()
            .filter(|h| taken.contains(&h.id))
            .map(|h| (h.source.as_str(), h.messages.as_slice()))
            .collect();
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let clock = std::time::Instant::now();
        let (reports, _, jobs) = self.ingest_in(&mut tx, &requests, &[], now).await?;
        let applied = clock.elapsed();
        tx.commit().await?;
        // Where applying goes (`RUST_LOG=nurture::engine::inbox=debug`).
        tracing::debug!(requests = requests.len(), ?applied, committed = ?clock.elapsed(), "Inbox group applied.");
        let (accepted, duplicates) = reports
            .iter()
            .fold((0, 0), |(a, d), r| (a + r.accepted, d + r.duplicates));
        self.metrics.events_ingested(accepted, duplicates);
        Ok(jobs)
    }

    /// Applies rows stored before `before` that no process applied (it died, or left them in
    /// the database when it fell behind), oldest first, until none is left. Returns how many
    /// requests it applied.
    pub async fn apply_inbox_backlog(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut applied = 0;
        loop {
            let now = self.clock.now().timestamp_millis();
            let rows = {
                let mut connection = self.store.pool.acquire().await?;
                inbox::oldest(
                    &mut connection,
                    before.timestamp_millis(),
                    MAX_ATTEMPTS,
                    now,
                    SWEEP_ROWS,
                )
                .await?
            };
            let count = rows.len();
            let mut group = Vec::with_capacity(count);
            for row in rows {
                match decode(&row.body) {
                    Ok(messages) => group.push(Held {
                        id: row.id,
                        source: row.source,
                        messages,
                    }),
                    Err(error) => {
                        let retry_at = now + RETRY_AFTER_MS;
                        tracing::error!(%error, inbox = row.id, "A stored request is not readable; it is left in the inbox.");
                        inbox::failed(&self.store.pool, row.id, &error, retry_at).await?;
                    }
                }
            }
            applied += group.len();
            // In groups of at most MAX_GROUP_MESSAGES, like requests applied from memory.
            let mut batch: Vec<Held> = Vec::new();
            let mut size = 0;
            for held in group {
                if size + held.messages.len() > MAX_GROUP_MESSAGES && !batch.is_empty() {
                    let jobs = self.apply_held(std::mem::take(&mut batch)).await;
                    self.enqueue_applied(jobs).await;
                    size = 0;
                }
                size += held.messages.len();
                batch.push(held);
            }
            if !batch.is_empty() {
                let jobs = self.apply_held(batch).await;
                self.enqueue_applied(jobs).await;
            }
            if count < SWEEP_ROWS as usize {
                return Ok(applied);
            }
        }
    }

    /// Rows waiting in the inbox and rows given up on after `MAX_ATTEMPTS` failures.
    pub async fn inbox_counts(&self) -> Result<(i64, i64)> {
        Ok(inbox::counts(&self.store.pool, MAX_ATTEMPTS).await?)
    }
}

fn lost_a_lock_race(error: &Error) -> bool {
    let text = error.to_string();
    [
        "deadlock detected",
        "could not serialize",
        "database is locked",
        "lock timeout",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// Applies stored requests from memory in groups, one group at a time; when rows were left in
/// the database, sweeps them once memory is empty.
async fn apply_groups(engine: std::sync::Weak<Engine>, mut receiver: mpsc::UnboundedReceiver<Held>) {
    loop {
        let first = match receiver.try_recv() {
            Ok(first) => Some(first),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                let Some(strong) = engine.upgrade() else { return };
                if strong.inbox().behind.load(Relaxed) {
                    None
                } else {
                    // Wait without keeping the engine alive: only the inbox's own handle.
                    let wake = Arc::clone(&strong.inbox().wake);
                    drop(strong);
                    tokio::select! {
                        next = receiver.recv() => match next {
                            Some(first) => Some(first),
                            None => return,
                        },
                        _ = wake.notified() => continue,
                    }
                }
            }
        };
        let Some(engine) = engine.upgrade() else { return };
        let Some(first) = first else {
            // Behind, and memory is empty: sweep the database in order.
            engine.inbox().behind.store(false, Relaxed);
            if let Err(error) = engine
                .apply_inbox_backlog(engine.clock.now() + chrono::Duration::days(1))
                .await
            {
                tracing::warn!(%error, "Could not sweep the inbox; the reconciler will.");
            }
            continue;
        };
        // On SQLite, while requests wait for the one writer, a group holds it briefly.
        let limit = match engine.store.kind {
            store::Kind::Sqlite if engine.inbox().answering.load(Relaxed) > 0 => MAX_GROUP_WHILE_ANSWERING,
            _ => MAX_GROUP_MESSAGES,
        };
        let (group, size) = gather(first, &mut receiver, limit, |r| r.messages.len());
        let jobs = engine.apply_held(group).await;
        engine.inbox().held.fetch_sub(size, Relaxed);
        match engine.store.kind {
            // The next group need not wait for Redis: one group's pushes overlap the next's apply.
            store::Kind::Postgres => {
                let pusher = engine.clone();
                tokio::spawn(async move { pusher.enqueue_applied(jobs).await });
            }
            // SQLite has one writer: groups applied back to back kept the requests' inbox
            // writes waiting (batch p50 4 ms -> 159 ms). Until queue tasks carried many jobs,
            // the push's own time let them in; now the applier waits for the requests received
            // meanwhile to be answered (at most `YIELD_TO_REQUESTS`, so applying goes on under
            // a steady stream), and its next group is the larger for it.
            store::Kind::Sqlite => {
                engine.enqueue_applied(jobs).await;
                let inbox = engine.inbox();
                let (answering, answered) = (inbox.answering.clone(), inbox.answered.clone());
                drop(engine);
                yield_to_requests(&answering, &answered).await;
            }
        }
    }
}

/// Messages in a SQLite group applied while requests wait to be stored: a smaller group holds
/// the one writer for less time.
const MAX_GROUP_WHILE_ANSWERING: usize = 200;

/// Longest the SQLite applier waits for requests to be answered before its next group.
const YIELD_TO_REQUESTS: std::time::Duration = std::time::Duration::from_millis(20);

async fn yield_to_requests(answering: &std::sync::atomic::AtomicUsize, answered: &tokio::sync::Notify) {
    let deadline = tokio::time::Instant::now() + YIELD_TO_REQUESTS;
    loop {
        // Registered before the count is read, so an answer in between is not missed.
        let notified = answered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if answering.load(Relaxed) == 0 {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Counts a group's requests as answered when dropped.
struct Answered<'a>(&'a std::sync::atomic::AtomicUsize, &'a tokio::sync::Notify, usize);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.2, Relaxed);
        self.1.notify_waiters();
    }
}

/// A message as the inbox keeps it: times in microseconds. Borrowed when written (a
/// `/v1/batch` of 200 messages was cloned map by map only to be serialized), owned when read.
#[derive(Serialize, Deserialize)]
struct StoredMessage<'a> {
    kind: Cow<'a, str>,
    id: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anonymous: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<Cow<'a, str>>,
    name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "is_empty")]
    properties: Cow<'a, Map<String, Json>>,
    #[serde(default, skip_serializing_if = "is_empty")]
    traits: Cow<'a, Map<String, Json>>,
    #[serde(default, skip_serializing_if = "is_empty")]
    context: Cow<'a, Map<String, Json>>,
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    original: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent: Option<i64>,
    received: i64,
}

// serde hands `skip_serializing_if` a reference to the field's own type.
#[allow(clippy::ptr_arg)]
fn is_empty(map: &Cow<'_, Map<String, Json>>) -> bool {
    map.is_empty()
}

fn borrowed(text: &Option<String>) -> Option<Cow<'_, str>> {
    text.as_deref().map(Cow::Borrowed)
}

fn encode(messages: &[Message]) -> String {
    let stored: Vec<StoredMessage<'_>> = messages
        .iter()
        .map(|m| StoredMessage {
            kind: Cow::Borrowed(m.kind.as_str()),
            id: Cow::Borrowed(&m.message_id),
            user: borrowed(&m.user_id),
            anonymous: borrowed(&m.anonymous_id),
            previous: borrowed(&m.previous_id),
            group: borrowed(&m.group_id),
            name: Cow::Borrowed(&m.name),
            properties: Cow::Borrowed(&m.properties),
            traits: Cow::Borrowed(&m.traits),
            context: Cow::Borrowed(&m.context),
            at: m.timestamp.timestamp_micros(),
            original: m.original_timestamp.map(|t| t.timestamp_micros()),
            sent: m.sent_at.map(|t| t.timestamp_micros()),
            received: m.received_at.timestamp_micros(),
        })
        .collect();
    serde_json::to_string(&stored).expect("messages serialize")
}

fn decode(body: &str) -> std::result::Result<Vec<Message>, String> {
    let stored: Vec<StoredMessage<'static>> = serde_json::from_str(body).map_err(|e| format!("inbox row: {e}"))?;
    let time = |micros: i64| {
        Utc.timestamp_micros(micros)
            .single()
            .ok_or_else(|| format!("inbox row: time {micros} out of range"))
    };
    let owned = |text: Option<Cow<'static, str>>| text.map(Cow::into_owned);
    stored
        .into_iter()
        .map(|s| {
            Ok(Message {
                kind: Kind::parse(&s.kind).ok_or_else(|| format!("inbox row: kind {}", s.kind))?,
                message_id: s.id.into_owned(),
                user_id: owned(s.user),
                anonymous_id: owned(s.anonymous),
                previous_id: owned(s.previous),
                group_id: owned(s.group),
                name: s.name.into_owned(),
                properties: s.properties.into_owned(),
                traits: s.traits.into_owned(),
                context: s.context.into_owned(),
                timestamp: time(s.at)?,
                original_timestamp: s.original.map(time).transpose()?,
                sent_at: s.sent.map(time).transpose()?,
                received_at: time(s.received)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_messages_read_back_as_they_were() {
        let at = Utc.timestamp_micros(1_764_600_000_123_456).unwrap();
        let mut properties = Map::new();
        properties.insert("plan".into(), Json::from("pro"));
        let message = Message {
            kind: Kind::Track,
            message_id: "m-1".into(),
            user_id: Some("u-1".into()),
            anonymous_id: None,
            previous_id: None,
            group_id: None,
            name: "Trial Started".into(),
            properties,
            traits: Map::new(),
            context: Map::new(),
            timestamp: at,
            original_timestamp: Some(at),
            sent_at: None,
            received_at: at,
        };
        assert_eq!(decode(&encode(std::slice::from_ref(&message))).unwrap(), vec![message]);
        assert!(decode("[{\"kind\":\"shout\"}]").is_err());
    }
}
