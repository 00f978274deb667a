//! Step jobs on an apalis queue: Redis in production, SQLite in the embedded mode.
//!
//! A job is only `(enrollment, seq)`: the truth is in the database, so a lost, stale or
//! duplicate job is harmless. Waits are jobs scheduled for their due time.
//!
//! apalis workers fetch when woken. We wake them from a `WakeHub` instead of a polling timer:
//! in-process pushes notify it directly, other processes' pushes arrive over Redis pub/sub, and
//! scheduled jobs wake it at their due second (apalis schedules with one-second resolution).

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Run the enrollment's next move if it is still at `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepJob {
    #[serde(rename = "e")]
    pub enrollment: i64,
    #[serde(rename = "s")]
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queue error: {0}")]
    Queue(String),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Wakes this process's worker: now for new jobs, later for scheduled ones.
#[derive(Default)]
pub struct WakeHub {
    notify: Notify,
    /// Due seconds of scheduled jobs this process knows about.
    timers: Mutex<BTreeSet<i64>>,
}

impl WakeHub {
    pub fn jobs_available(&self) {
        self.notify.notify_one();
    }

    pub fn job_scheduled(&self, due_second: i64) {
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = timers.first().copied();
        timers.insert(due_second);
        drop(timers);
        if earliest.is_none_or(|e| due_second < e) {
            self.notify.notify_one();
        }
    }

    fn next_timer(&self) -> Option<i64> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner()).first().copied()
    }

    fn pop_due(&self, now_second: i64) -> bool {
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<i64> = timers.range(..=now_second).copied().collect();
        for second in &due {
            timers.remove(second);
        }
        !due.is_empty()
    }
}

/// A stream that yields whenever the worker should fetch.
pub fn wake_stream(hub: Arc<WakeHub>) -> WakeStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        // A wake-up that arrives while a fetch is already running is absorbed by that fetch,
        // which may have looked before the job was pushed: so every wake-up is repeated once,
        // a moment later.
        let mut follow_up: Option<tokio::time::Instant> = None;
        loop {
            let next = hub.next_timer();
            let timer = async {
                match next {
                    Some(second) => {
                        let wait = (second * 1000 - unix_ms()).max(0) as u64;
                        // A few milliseconds past the second, so the queue sees it as due.
                        tokio::time::sleep(std::time::Duration::from_millis(wait + 5)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
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
                _ = timer => {
                    hub.pop_due(unix_ms() / 1000);
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

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Scheduled jobs run at whole seconds: round up so a job never runs before its time.
pub fn due_second(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    (ms + 999).div_euclid(1000)
}

#[derive(Clone)]
pub enum Backend {
    Redis(RedisStorage<StepJob, MultiplexedConnection>),
    Sqlite(SqliteStorage<StepJob>),
}

/// Where step jobs go.
#[derive(Clone)]
pub struct Queue {
    pub backend: Backend,
    pub hub: Arc<WakeHub>,
    /// Redis only: a connection for our own wake-up messages, and their channel.
    timers: Option<(MultiplexedConnection, String)>,
}

impl Queue {
    /// The queue in Redis; `namespace` prefixes every key.
    pub async fn redis(url: &str, namespace: &str) -> Result<Queue, Error> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_async_connection().await?;
        let config = apalis_redis::Config::default()
            .queue(format!("{namespace}:steps"))
            .persist_results(false);
        let storage = RedisStorage::new(connection.clone()).with_config(config.clone());
        let hub = Arc::new(WakeHub::default());
        let available = format!("tasks:{}:available", config.active_jobs_list());
        let timers = format!("{namespace}:timers");
        // Other processes' pushes and schedules wake us too.
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&available).await?;
        pubsub.subscribe(&timers).await?;
        let listener_hub = hub.clone();
        let timers_channel = timers.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                if message.get_channel_name() == timers_channel {
                    if let Ok(second) = message.get_payload::<i64>() {
                        listener_hub.job_scheduled(second);
                    }
                } else {
                    listener_hub.jobs_available();
                }
            }
        });
        Ok(Queue {
            backend: Backend::Redis(storage),
            hub,
            timers: Some((connection, timers)),
        })
    }

    /// The queue in the embedded SQLite file.
    pub async fn sqlite(pool: &sqlx::SqlitePool) -> Result<Queue, Error> {
        SqliteStorage::setup(pool)
            .await
            .map_err(|e| Error::Queue(e.to_string()))?;
        let config = apalis_sqlite::Config::default()
            .queue("nurture:steps")
            .persist_results(false);
        let storage = SqliteStorage::new(pool).with_config(config);
        Ok(Queue {
            backend: Backend::Sqlite(storage),
            hub: Arc::new(WakeHub::default()),
            timers: None,
        })
    }

    /// Enqueues jobs to run now.
    pub async fn push_now(&self, jobs: Vec<StepJob>) -> Result<(), Error> {
        if jobs.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Redis(storage) => storage
                .clone()
                .push_bulk(jobs)
                .await
                .map_err(|e| Error::Queue(e.to_string()))?,
            Backend::Sqlite(storage) => storage
                .clone()
                .push_bulk(jobs)
                .await
                .map_err(|e| Error::Queue(e.to_string()))?,
        }
        self.hub.jobs_available();
        Ok(())
    }

    /// Enqueues a job to run at `at` (rounded up to the second).
    pub async fn push_at(&self, job: StepJob, at: DateTime<Utc>) -> Result<(), Error> {
        let second = due_second(at);
        let task = TaskBuilder::new(job).run_at_timestamp(second.max(0) as u64).build();
        match &self.backend {
            Backend::Redis(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| Error::Queue(e.to_string()))?,
            Backend::Sqlite(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| Error::Queue(e.to_string()))?,
        }
        self.hub.job_scheduled(second);
        if let Some((connection, channel)) = &self.timers {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(second)
                .query_async(&mut connection.clone())
                .await?;
        }
        Ok(())
    }
}
