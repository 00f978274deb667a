//! Step jobs on an apalis queue: Redis in production, SQLite in the embedded mode.
//!
//! A job is only `(enrollment, seq)`: the truth is in the database, so a lost, stale or
//! duplicate job is harmless. One queue task carries up to `JOBS_PER_TASK` jobs (`StepTask`):
//! apalis spends about 20 µs of Redis time per task (a metadata hash, a JSON decode, a sorted
//! set entry), so 100,000 waits due together cost two seconds of Redis as single jobs and a
//! few tens of milliseconds as tasks of 64. Waits are not jobs: they live in the database (`due_at`) and in
//! this process's `Timers` (see `timers.rs`), which push the job when it comes due, to the
//! millisecond. A waiting enrollment costs no Redis memory.
//!
//! apalis workers fetch when woken. We wake them from a `WakeHub` instead of a polling timer:
//! in-process pushes notify it directly, other processes' pushes arrive over Redis pub/sub.
//! apalis does not delete a job it ran when results are not persisted, so `finished` does.

pub mod timers;

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Notify;

/// Run the enrollment's next move if it is still at `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepJob {
    #[serde(rename = "e")]
    pub enrollment: i64,
    #[serde(rename = "s")]
    pub seq: u64,
}

/// Jobs in one queue task at most.
pub const JOBS_PER_TASK: usize = 64;

/// What one queue task carries: step jobs pushed together, each run in the next step batch.
/// Tasks stored before tasks carried many jobs hold one `StepJob` object, and still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StepTask(pub Vec<StepJob>);

impl<'de> Deserialize<'de> for StepTask {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Many(Vec<StepJob>),
            One(StepJob),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Many(jobs) => StepTask(jobs),
            Stored::One(job) => StepTask(vec![job]),
        })
    }
}

/// `jobs` as queue tasks of up to `JOBS_PER_TASK` each.
fn tasks(jobs: &[StepJob]) -> Vec<StepTask> {
    jobs.chunks(JOBS_PER_TASK)
        .map(|chunk| StepTask(chunk.to_vec()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queue error: {0}")]
    Queue(String),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis failed a push moments ago: this one was not tried, its jobs are held (see
    /// `Breaker`).
    #[error("Redis was unreachable moments ago; the jobs are held until it answers")]
    Resting,
}

/// How long one Redis call of a push may take, reconnecting included, before the push gives
/// up: the connection's own response timeout (redis-rs's default, 500 ms). Without it a push
/// during an outage waited for the connection manager's whole reconnect backoff (~4.5 s).
const REDIS_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// How long pushes leave Redis alone after one failed, before one of them tries again.
const REDIS_REST: std::time::Duration = std::time::Duration::from_secs(2);

/// Most jobs held in memory while Redis is down; past it they are left to the reconciler.
const MAX_HELD: usize = 100_000;

/// Pushes to Redis fail fast once Redis is known to be down. After a failed push, the next
/// ones for `REDIS_REST` are not tried; then one push tries Redis while the others keep
/// resting, until one succeeds or the wake-up listener subscribes again. The jobs of a push
/// that failed or rested are held here (up to `MAX_HELD`, each once) and pushed by
/// `flush_held` as soon as Redis answers, and the push still returns the error, which its
/// caller logs or retries. So with Redis down an events API request waits at most
/// `REDIS_ANSWER_WITHIN` for its enqueue, and most wait not at all. Nothing depends on the
/// held jobs: what they stand for is in the database (`due_at`), and the reconciler queues
/// overdue steps again if this process dies first.
#[derive(Default)]
struct Breaker {
    state: std::sync::Mutex<Resting>,
    /// Redis answered with jobs held: `flush_held` pushes them.
    back: Notify,
}

#[derive(Default)]
struct Resting {
    /// Until when pushes skip Redis; `None` while Redis answers.
    until: Option<std::time::Instant>,
    held: std::collections::HashSet<StepJob>,
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, Resting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this push may try Redis: while it answers, always; after a failure, once the rest
    /// is over, one push at a time (the others rest for another `REDIS_REST` meanwhile).
    fn admit(&self) -> bool {
        let mut state = self.state();
        let now = std::time::Instant::now();
        match state.until {
            None => true,
            Some(end) if now >= end => {
                state.until = Some(now + REDIS_REST);
                true
            }
            Some(_) => false,
        }
    }

    /// Whether Redis failed a push less than `REDIS_REST` ago.
    fn resting(&self) -> bool {
        self.state().until.is_some_and(|end| std::time::Instant::now() < end)
    }

    /// Redis answered (a push, or the wake-up listener's subscription).
    fn answered(&self) {
        let mut state = self.state();
        if state.until.take().is_some() {
            tracing::info!(held = state.held.len(), "Redis answers again.");
        }
        if !state.held.is_empty() {
            self.back.notify_one();
        }
    }

    fn failed(&self, error: &Error) {
        let mut state = self.state();
        if state.until.is_none() {
            tracing::warn!(%error, "Redis failed a push: pushes rest for {REDIS_REST:?} at a time, their jobs held until it answers.");
        }
        state.until = Some(std::time::Instant::now() + REDIS_REST);
    }

    fn hold(&self, jobs: &[StepJob]) {
        let mut state = self.state();
        let room = MAX_HELD.saturating_sub(state.held.len());
        if jobs.len() > room {
            tracing::warn!(
                dropped = jobs.len() - room,
                "Too many step jobs held while Redis is down: the rest are left to the reconciler."
            );
        }
        state.held.extend(jobs.iter().take(room).copied());
    }

    fn take_held(&self) -> Vec<StepJob> {
        self.state().held.drain().collect()
    }
}

/// One Redis call of a push, within `REDIS_ANSWER_WITHIN`.
async fn within<T, E: Into<Error>>(call: impl std::future::Future<Output = Result<T, E>>) -> Result<T, Error> {
    match tokio::time::timeout(REDIS_ANSWER_WITHIN, call).await {
        Ok(outcome) => outcome.map_err(Into::into),
        Err(_) => Err(Error::Queue(format!(
            "Redis did not answer within {REDIS_ANSWER_WITHIN:?}"
        ))),
    }
}

/// Wakes this process's worker when jobs are pushed.
#[derive(Default)]
pub struct WakeHub {
    notify: Notify,
}

impl WakeHub {
    pub fn jobs_available(&self) {
        self.notify.notify_one();
    }
}

/// A stream that yields whenever the worker should fetch.
pub fn wake_stream(hub: Arc<WakeHub>) -> WakeStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    // A (re)started worker looks once at once: jobs may have been pushed while it was down.
    let _ = sender.try_send(());
    tokio::spawn(async move {
        // A wake-up that arrives while a fetch is already running is absorbed by that fetch,
        // which may have looked before the job was pushed: so every wake-up is repeated once,
        // a moment later.
        let mut follow_up: Option<tokio::time::Instant> = None;
        loop {
            let repeat = async {
                match follow_up {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = hub.notify.notified() => {
                    follow_up = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(20));
                }
                _ = repeat => {
                    follow_up = None;
                }
                // The worker is gone (stopped or restarting): let its successor have the hub.
                _ = sender.closed() => return,
            }
            // A full channel already holds a wake-up; the worker will fetch everything then.
            let _ = sender.try_send(());
        }
    });
    WakeStream(receiver)
}

/// What the apalis worker polls: one item per wake-up.
pub struct WakeStream(tokio::sync::mpsc::Receiver<()>);

impl futures::Stream for WakeStream {
    type Item = ();

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<()>> {
        self.0.poll_recv(cx)
    }
}

/// Jobs one fetch takes: enough to fill a batch of moves (see `engine::steps`).
const FETCH_BATCH: usize = 256;

/// Most tasks handed to apalis in one push (one Lua script): larger scripts block Redis for
/// long enough to outlive the connection's response timeout.
const TASKS_PER_PUSH: usize = 1_000;

/// Most jobs the timers push at once (`timers::Timers::run`), a few pushes side by side.
pub const PUSH_CHUNK: usize = 16 * JOBS_PER_TASK;

#[derive(Clone)]
pub enum Backend {
    Redis(RedisStorage<StepTask, ConnectionManager>),
    Sqlite(SqliteStorage<StepTask>),
}

/// Most jobs handed to this process's own step batcher and not finished yet; past it, jobs go
/// through the shared queue, where any worker can take them.
const LOCAL_BACKLOG: usize = 4_096;

/// How a process that runs a step worker takes jobs itself (`Queue::run_here`).
type RunHere = Arc<dyn Fn(Vec<StepJob>) + Send + Sync>;

/// Where step jobs go.
#[derive(Clone)]
pub struct Queue {
    pub backend: Backend,
    /// Set while this process runs a step worker: jobs it pushes go straight to its own step
    /// batcher, up to `LOCAL_BACKLOG`, with no trip through Redis (or the SQLite queue file).
    /// Nothing is lost with the process: the database keeps every enrollment's `due_at`, and a
    /// process loads the overdue ones when it starts, as the reconciler does later.
    local: Arc<std::sync::RwLock<Option<RunHere>>>,
    local_backlog: Arc<std::sync::atomic::AtomicUsize>,
    pub hub: Arc<WakeHub>,
    pub timers: Arc<timers::Timers>,
    /// SQLite only: the queue file's pool, to delete jobs that ran.
    sqlite: Option<sqlx::SqlitePool>,
    /// Redis only: the channel that wakes other processes' workers.
    wake_channel: Option<String>,
    /// Redis only: whether pushes try Redis now.
    breaker: Arc<Breaker>,
}

impl Queue {
    /// The queue in Redis; `namespace` prefixes every key. The connection reconnects by itself
    /// after Redis restarts, and the wake-up listener subscribes again.
    pub async fn redis(url: &str, namespace: &str) -> Result<Queue, Error> {
        let client = redis::Client::open(url)?;
        // redis-rs's default backoff (6 retries from 100 ms, doubling, with jitter) holds every
        // command ~10 s while Redis is down (so each events API request took that long to
        // answer) and noticed Redis was back up to ~3 s late. Capped at 500 ms, the connection
        // is back within a second of Redis; a push gives up after `REDIS_ANSWER_WITHIN`, and
        // the next ones rest, their jobs held until Redis answers (`Breaker`).
        let manager = redis::aio::ConnectionManagerConfig::new().set_max_delay(std::time::Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client.clone(), manager).await?;
        let config = apalis_redis::Config::default()
            .queue(format!("{namespace}:steps"))
            .batch_size(FETCH_BATCH)
            // The database is the truth: no results, no per-job events, no per-job locks.
            .persist_results(false)
            .emit_events(false)
            .lock_tasks(false);
        let storage = RedisStorage::new(connection).with_config(config.clone());
        let hub = Arc::new(WakeHub::default());
        let available = format!("{namespace}:wake");
        let breaker = Arc::new(Breaker::default());
        crate::supervise::spawn_critical(
            "the Redis wake-up listener",
            listen(client, available.clone(), hub.clone(), breaker.clone()),
        );
        crate::supervise::spawn_critical(
            "the pusher of step jobs held while Redis was down",
            flush_held(storage.clone(), available.clone(), breaker.clone()),
        );
        Ok(Queue {
            backend: Backend::Redis(storage),
            local: Arc::default(),
            local_backlog: Arc::default(),
            hub,
            timers: Arc::new(timers::Timers::default()),
            sqlite: None,
            wake_channel: Some(available),
            breaker,
        })
    }

    /// The queue in the embedded SQLite file.
    pub async fn sqlite(pool: &sqlx::SqlitePool) -> Result<Queue, Error> {
        SqliteStorage::setup(pool)
            .await
            .map_err(|e| Error::Queue(e.to_string()))?;
        let config = apalis_sqlite::Config::default()
            .queue("nurture:steps")
            .batch_size(FETCH_BATCH)
            .persist_results(false);
        let storage = SqliteStorage::new(pool).with_config(config);
        Ok(Queue {
            backend: Backend::Sqlite(storage),
            local: Arc::default(),
            local_backlog: Arc::default(),
            hub: Arc::new(WakeHub::default()),
            timers: Arc::new(timers::Timers::default()),
            sqlite: Some(pool.clone()),
            wake_channel: None,
            breaker: Arc::default(),
        })
    }

    /// The Redis connection of the queue, for other shared state (the write keys' rate
    /// limit); `None` in the embedded mode.
    pub fn redis_connection(&self) -> Option<ConnectionManager> {
        match &self.backend {
            Backend::Redis(storage) => Some(storage.clone().get_connection().clone()),
            Backend::Sqlite(_) => None,
        }
    }

    /// From now on, jobs this process pushes run here through `run` (this process's step
    /// batcher), while fewer than `LOCAL_BACKLOG` are unfinished; `None` stops that (the worker
    /// stopped). `run` must call `finished_here` for every job it was given.
    pub fn run_here(&self, run: Option<RunHere>) {
        *self.local.write().unwrap_or_else(|e| e.into_inner()) = run;
    }

    /// `count` jobs given to `run_here` have finished (or failed).
    pub fn finished_here(&self, count: usize) {
        self.local_backlog
            .fetch_sub(count, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives what fits of `jobs` to this process's own batcher; returns the rest.
    fn take_here(&self, mut jobs: Vec<StepJob>) -> Vec<StepJob> {
        use std::sync::atomic::Ordering;
        let local = self.local.read().unwrap_or_else(|e| e.into_inner());
        let Some(run) = local.as_ref() else {
            return jobs;
        };
        let backlog = self.local_backlog.load(Ordering::Relaxed);
        let here = jobs.len().min(LOCAL_BACKLOG.saturating_sub(backlog));
        if here == 0 {
            return jobs;
        }
        let rest = jobs.split_off(here);
        self.local_backlog.fetch_add(here, Ordering::Relaxed);
        run(jobs);
        rest
    }

    /// Enqueues jobs to run now, and wakes every worker (here and, through Redis, elsewhere).
    pub async fn push_now(&self, jobs: Vec<StepJob>) -> Result<(), Error> {
        let jobs = self.take_here(jobs);
        if jobs.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Redis(storage) => {
                if !self.breaker.admit() {
                    self.breaker.hold(&jobs);
                    return Err(Error::Resting);
                }
                match push_redis(storage, self.wake_channel.as_deref(), &jobs).await {
                    Ok(()) => self.breaker.answered(),
                    Err(error) => {
                        self.breaker.failed(&error);
                        self.breaker.hold(&jobs);
                        return Err(error);
                    }
                }
            }
            Backend::Sqlite(storage) => {
                for chunk in tasks(&jobs).chunks(TASKS_PER_PUSH) {
                    storage
                        .clone()
                        .push_bulk(chunk.to_vec())
                        .await
                        .map_err(|e| Error::Queue(e.to_string()))?;
                }
            }
        }
        self.hub.jobs_available();
        Ok(())
    }

    /// Runs `job` at `at`: now if it is due, else when this process's timer fires; a wait too
    /// far ahead to hold in memory is loaded from the database when it comes near.
    pub async fn push_at(&self, job: StepJob, at: DateTime<Utc>) -> Result<(), Error> {
        if at.timestamp_millis() <= self.timers.now_ms() {
            return self.push_now(vec![job]).await;
        }
        self.timers.hold(job, at.timestamp_millis());
        Ok(())
    }

    /// Queue tasks waiting to run (queued now or scheduled; each up to `JOBS_PER_TASK` step
    /// jobs), for `/metrics`: one cheap read.
    pub async fn depth(&self) -> Result<u64, Error> {
        match &self.backend {
            Backend::Redis(storage) => {
                // A scrape while Redis is known down answers at once, without the depth.
                if self.breaker.resting() {
                    return Err(Error::Resting);
                }
                let config = storage.get_config();
                let mut connection = storage.clone().get_connection().clone();
                let (queued, scheduled): (u64, u64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(config.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(config.scheduled_jobs_set())
                    .query_async(&mut connection)
                    .await?;
                Ok(queued + scheduled)
            }
            Backend::Sqlite(_) => {
                let Some(pool) = &self.sqlite else { return Ok(0) };
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE status = 'Pending'")
                    .fetch_one(pool)
                    .await
                    .map_err(|e| Error::Queue(e.to_string()))?;
                Ok(count as u64)
            }
        }
    }

    /// Deletes what the queue keeps of jobs that ran (apalis keeps them when results are not
    /// persisted): their data and metadata, and the worker's in-flight entry.
    pub async fn finished(&self, worker: &str, task_ids: &[String]) -> Result<(), Error> {
        if task_ids.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Redis(storage) => {
                let config = storage.get_config();
                let mut pipe = redis::pipe();
                pipe.cmd("HDEL").arg(config.job_data_hash()).arg(task_ids).ignore();
                let meta = config.job_meta_hash();
                pipe.cmd("DEL")
                    .arg(task_ids.iter().map(|id| format!("{meta}:{id}")).collect::<Vec<_>>())
                    .ignore();
                pipe.cmd("SREM")
                    .arg(format!("{}:{worker}", config.inflight_jobs_set()))
                    .arg(task_ids)
                    .ignore();
                let mut connection = storage.clone().get_connection().clone();
                let () = pipe.query_async(&mut connection).await?;
            }
            Backend::Sqlite(_) => {
                if let Some(pool) = &self.sqlite {
                    let sql = format!(
                        "DELETE FROM Jobs WHERE id IN ({})",
                        task_ids.iter().map(|_| "?").collect::<Vec<_>>().join(", ")
                    );
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in task_ids {
                        query = query.bind(id.clone());
                    }
                    query.execute(pool).await.map_err(|e| Error::Queue(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

/// `Queue::push_now` through Redis, each call within `REDIS_ANSWER_WITHIN`.
async fn push_redis(
    storage: &RedisStorage<StepTask, ConnectionManager>,
    wake_channel: Option<&str>,
    jobs: &[StepJob],
) -> Result<(), Error> {
    // apalis pushes a bulk with one Lua script. A script of 100,000 tasks blocks Redis for
    // seconds and outlives the connection's response timeout, so the push "fails" after it
    // succeeded, and a retry pushes it all again (a restart with 100k waits due together once
    // grew to 22M queued jobs, when a task was one job). Chunks stay quick.
    for chunk in tasks(jobs).chunks(TASKS_PER_PUSH) {
        let mut storage = storage.clone();
        within(async {
            storage
                .push_bulk(chunk.to_vec())
                .await
                .map_err(|e| Error::Queue(e.to_string()))
        })
        .await?;
        within(promote_due(&storage)).await?;
    }
    if let Some(channel) = wake_channel {
        let mut connection = storage.clone().get_connection().clone();
        let _: i64 = within(redis::cmd("PUBLISH").arg(channel).arg(1).query_async(&mut connection)).await?;
    }
    Ok(())
}

/// Pushes the jobs the breaker held while Redis was down, once it answers again; while they
/// cannot be pushed, tries again after each rest. The task is critical.
async fn flush_held(storage: RedisStorage<StepTask, ConnectionManager>, wake_channel: String, breaker: Arc<Breaker>) {
    loop {
        breaker.back.notified().await;
        loop {
            let jobs = breaker.take_held();
            if jobs.is_empty() {
                break;
            }
            match push_redis(&storage, Some(&wake_channel), &jobs).await {
                Ok(()) => {
                    tracing::info!(jobs = jobs.len(), "Pushed the step jobs held while Redis was down.");
                    breaker.answered();
                }
                Err(error) => {
                    breaker.failed(&error);
                    breaker.hold(&jobs);
                    tokio::time::sleep(REDIS_REST).await;
                }
            }
        }
    }
}

/// Wakes this process when another pushes jobs, for as long as the process runs: after Redis
/// restarts it subscribes again, ends the pushes' rest (`Breaker`), and wakes the worker in
/// case it missed something meanwhile.
/// A subscription whose connection died without a word (a dropped NAT or firewall entry, a
/// frozen host) ends no stream, so a `PING` on it every few seconds must be answered, or it is
/// dropped and made again. The task is critical (`supervise::spawn_critical`): if it ever
/// ends, the process stops rather than run on without wake-ups.
async fn listen(client: redis::Client, channel: String, hub: Arc<WakeHub>, breaker: Arc<Breaker>) {
    const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
    loop {
        let subscribed = tokio::time::timeout(CHECK_EVERY, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                // Redis is back: pushes need not rest, and the jobs held meanwhile go out.
                breaker.answered();
                hub.jobs_available();
                let (mut sink, mut messages) = pubsub.split();
                let mut check = tokio::time::interval(CHECK_EVERY);
                check.tick().await;
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(_) => hub.jobs_available(),
                            None => break,
                        },
                        _ = check.tick() => {
                            let answer = tokio::time::timeout(ANSWER_WITHIN, sink.ping::<redis::Value>()).await;
                            if !matches!(answer, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!("Lost the Redis wake-up subscription; subscribing again.");
                // Whatever was published meanwhile is lost: look now.
                hub.jobs_available();
            }
            Ok(Err(error)) => tracing::warn!(%error, "Redis is unreachable for wake-ups; trying again."),
            Err(_) => tracing::warn!("Redis did not answer a wake-up subscription in time; trying again."),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Moves due jobs from apalis's scheduled set to its active list, 1,000 at a time.
///
/// apalis-redis 1.0 files every pushed job under the scheduled set (due "now", in whole
/// seconds), and its fetch script promotes all due ones with a single Lua `unpack`, which fails
/// past a few thousand values ("too many results to unpack"). A burst bigger than that, such as
/// 100,000 waits coming due together, then stopped every fetch for good. Promoting right after
/// each push keeps the set small, so the fetch never meets more than one push's worth.
async fn promote_due(storage: &RedisStorage<StepTask, ConnectionManager>) -> Result<(), Error> {
    static PROMOTE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"local ids = redis.call('zrangebyscore', KEYS[1], 0, ARGV[1], 'LIMIT', 0, ARGV[2])
            if #ids > 0 then
                redis.call('rpush', KEYS[2], unpack(ids))
                redis.call('zrem', KEYS[1], unpack(ids))
                redis.call('del', KEYS[3])
                redis.call('lpush', KEYS[3], 1)
            end
            return #ids",
        )
    });
    const AT_ONCE: usize = 1_000;
    let config = storage.get_config();
    let mut connection = storage.clone().get_connection().clone();
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let moved: usize = PROMOTE
            .key(config.scheduled_jobs_set())
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .arg(now)
            .arg(AT_ONCE)
            .invoke_async(&mut connection)
            .await?;
        if moved < AT_ONCE {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_carries_many_jobs_and_old_single_job_tasks_still_read() {
        let jobs: Vec<StepJob> = (0..130).map(|i| StepJob { enrollment: i, seq: 1 }).collect();
        let split = tasks(&jobs);
        assert_eq!(split.iter().map(|t| t.0.len()).collect::<Vec<_>>(), vec![64, 64, 2]);
        let text = serde_json::to_string(&split[2]).unwrap();
        assert_eq!(text, r#"[{"e":128,"s":1},{"e":129,"s":1}]"#);
        assert_eq!(serde_json::from_str::<StepTask>(&text).unwrap(), split[2]);
        // What a task held before tasks carried many jobs.
        let old: StepTask = serde_json::from_str(r#"{"e":7,"s":3}"#).unwrap();
        assert_eq!(old, StepTask(vec![StepJob { enrollment: 7, seq: 3 }]));
        assert!(serde_json::from_str::<StepTask>(r#"{"e":"x"}"#).is_err());
    }
}
