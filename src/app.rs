//! Assembly: builds the store, the queue and the engine from a `Config`, loads the journeys,
//! and runs the long-lived parts (workers, scheduler, reconciler) until told to stop.

use crate::config::Config;
use crate::engine::runner::Engine;
use crate::engine::{Clock, SystemClock};
use crate::journey::model::{Trigger, When};
use crate::journey::{self, Diagnostic};
use crate::queue::{self, Backend, Queue, StepTask};
use crate::store::Store;
use anyhow::{Context, Result};
use apalis::prelude::*;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Connects to the state store and the queue the config names, and migrates the schema.
pub async fn connect(config: &Config) -> Result<(Store, Queue)> {
    match &config.database_url {
        Some(url) => {
            let store = Store::connect(url, config.db_pool)
                .await
                .with_context(|| "Failed to connect to the database")?;
            store.migrate().await.context("Failed to migrate the database")?;
            let redis_url = config
                .redis_url
                .as_deref()
                .context("production mode needs REDIS_URL next to DATABASE_URL")?;
            let queue = Queue::redis(redis_url, &config.namespace)
                .await
                .context("Failed to connect to Redis")?;
            Ok((store, queue))
        }
        None => {
            let url = format!("sqlite://{}?mode=rwc", config.sqlite_path.display());
            // One connection: SQLite has one writer anyway, and the pool's queue hands the
            // connection over at once where SQLite's busy handler would sleep, or fail a
            // transaction that read before another wrote (SQLITE_BUSY_SNAPSHOT).
            let store = Store::connect(&url, 1)
                .await
                .with_context(|| format!("Failed to open {}", config.sqlite_path.display()))?;
            store.migrate().await.context("Failed to migrate the database")?;
            // The queue has its own file: apalis keeps its own migration history.
            let queue_url = format!("sqlite://{}?mode=rwc", queue_path(&config.sqlite_path).display());
            // WAL with `synchronous = NORMAL` on every connection: commits are durable against
            // a process crash without an fsync each (the state file does the same).
            let options = queue_url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()?
                .busy_timeout(Duration::from_secs(10))
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            let queue = Queue::sqlite(&pool)
                .await
                .context("Failed to set up the SQLite queue")?;
            Ok((store, queue))
        }
    }
}

/// `nurture.db` keeps its queue in `nurture.queue.db`.
pub fn queue_path(state: &std::path::Path) -> std::path::PathBuf {
    state.with_extension("queue.db")
}

/// Compiles the project's journeys; refuses to run broken ones.
pub fn compile_project(config: &Config) -> Result<(journey::Catalog, journey::Sources, Vec<Diagnostic>)> {
    let paths = if config.journeys.is_dir() {
        vec![config.journeys.clone()]
    } else {
        Vec::new()
    };
    let sources = crate::project::load_sources(&paths, &config.templates, &config.sales, &config.scoring)?;
    let (catalog, diagnostics) = journey::compile_with(&sources, &config.guardrails);
    Ok((catalog, sources, diagnostics))
}

/// Builds the engine and loads the journeys.
pub async fn build(mut config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Engine>> {
    let (store, queue) = connect(&config).await?;
    if config.secret.is_none() {
        config.secret = Some(kept_secret(&store, &config, clock.now()).await?);
    }
    let (catalog, sources, diagnostics) = compile_project(&config)?;
    if diagnostics.iter().any(Diagnostic::is_error) {
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "the journeys have errors; fix them (see `nurture validate`):\n{}",
            text.join("\n")
        );
    }
    let engine = Arc::new(Engine::new(store, queue, clock, config)?);
    engine.install(catalog, sources).await?;
    engine.record_prices().await?;
    // Paused journeys hold from the first step job on, and pauses made elsewhere reach us.
    engine.refresh_pauses().await?;
    tokio::spawn(Engine::run_pause_refresh(Arc::downgrade(&engine)));
    // Waits this process parks come due here, whatever else it runs; so do the accept
    // deadlines of the leads it places, and the notices of their reps.
    crate::supervise::spawn_critical("the timers", engine.queue.timers.clone().run(engine.queue.clone()));
    crate::supervise::spawn_critical("the sales desk", engine.clone().run_sales());
    Ok(engine)
}

/// The link-signing secret generated on first start and kept in the database, for when
/// `NURTURE_SECRET` is not set: every process that shares the database signs alike.
async fn kept_secret(
    store: &Store,
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<crate::config::Secret> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    let generated: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut connection = store.pool.acquire().await?;
    let secret = crate::store::email::server_secret(&mut connection, "links", &generated, now)
        .await
        .context("Failed to read the link-signing secret")?;
    if !config.is_embedded() {
        warn!(
            "NURTURE_SECRET is not set: links in email are signed with a key kept in the database; set NURTURE_SECRET to keep it elsewhere."
        );
    }
    Ok(crate::config::Secret(secret))
}

pub async fn build_default(config: Config) -> Result<Arc<Engine>> {
    build(config, Arc::new(SystemClock)).await
}

/// Compiles the project again and makes it current (SIGHUP, `nurture reload`).
pub async fn reload(engine: &Engine) -> Result<usize> {
    let (catalog, sources, diagnostics) = compile_project(&engine.config)?;
    if diagnostics.iter().any(Diagnostic::is_error) {
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        anyhow::bail!("not reloaded, the journeys have errors:\n{}", text.join("\n"));
    }
    let count = catalog.journeys.len();
    engine.install(catalog, sources).await?;
    Ok(count)
}

async fn handle_step(
    jobs: StepTask,
    engine: Data<Arc<Engine>>,
    task: TaskId,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let task = Some((task.to_string(), worker.name().to_string()));
    let count = jobs.0.len();
    engine.run_task(jobs.0, task).await.map_err(|error| {
        warn!(%error, jobs = count, "Step jobs failed; the reconciler will retry them.");
        Box::new(error) as BoxDynError
    })
}

/// Runs this process's step worker until `shutdown` completes; in-flight steps finish first.
/// If the queue fails (Redis restarted or flushed), the worker starts again after a pause.
pub async fn run_worker(
    engine: Arc<Engine>,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use futures::FutureExt;
    engine.start_sending()?;
    let shutdown = shutdown.boxed().shared();
    // Jobs in flight wait for their batch (engine::steps), so many in flight make big batches.
    let concurrency = engine.config.concurrency.max(1);
    let loader = crate::supervise::spawn_critical("the timer loader", load_timers(engine.clone(), name.clone()));
    let _stop_loader = AbortOnDrop(loader);
    let statistics = tokio::spawn(keep_statistics(engine.clone(), name.clone()));
    let _stop_statistics = AbortOnDrop(statistics.abort_handle());
    // Jobs this process pushes (fresh enrollments, fired waits) run here without a trip
    // through the queue, while the worker runs.
    engine.queue.run_here(Some(engine.runs_here()));
    let _stop_here = StopRunningHere(engine.clone());
    loop {
        let wake = queue::wake_stream(engine.queue.hub.clone());
        let stop = shutdown.clone();
        let signal = async move {
            stop.await;
            Ok::<(), std::io::Error>(())
        };
        // The handler is written once; only the backend differs.
        let result = match engine.queue.backend.clone() {
            Backend::Redis(storage) => {
                WorkerBuilder::new(name.clone())
                    .backend(storage.poll_with_stream(wake))
                    .concurrency(concurrency)
                    .data(engine.clone())
                    .build(handle_step)
                    .run_until(signal)
                    .await
            }
            Backend::Sqlite(storage) => {
                WorkerBuilder::new(name.clone())
                    .backend(storage.poll_with_stream(wake))
                    .concurrency(concurrency)
                    .data(engine.clone())
                    .build(handle_step)
                    .run_until(signal)
                    .await
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) => {
                warn!(%error, "The step worker stopped; starting it again.");
                tokio::select! {
                    _ = shutdown.clone() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

struct StopRunningHere(Arc<Engine>);

impl Drop for StopRunningHere {
    fn drop(&mut self) {
        self.0.queue.run_here(None);
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Loads coming waits from the database into this process's timers: everything due soon (or
/// overdue) once at start, then, while this process holds the `timers` lease, each next window.
pub async fn load_timers(engine: Arc<Engine>, process: String) {
    use crate::queue::timers::WINDOW_MS;
    let every = Duration::from_millis((WINDOW_MS / 3) as u64);
    let mut loaded_until = i64::MIN;
    let mut first = true;
    loop {
        let now = engine.clock.now();
        let lease_until = now + chrono::Duration::milliseconds(WINDOW_MS / 2);
        let lead = first
            || engine
                .store
                .take_lease("timers", &process, now, lease_until)
                .await
                .unwrap_or_else(|error| {
                    warn!(%error, "Could not take the timers lease.");
                    false
                });
        if lead {
            let until = now.timestamp_millis() + WINDOW_MS;
            if let Err(error) = engine.load_lead_deadlines(loaded_until, until).await {
                warn!(%error, "Could not load coming accept deadlines; trying again.");
            }
            match engine.load_timer_window(loaded_until, until).await {
                Ok(until) => {
                    loaded_until = until;
                    first = false;
                }
                Err(error) => warn!(%error, "Could not load coming waits; trying again."),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Keeps PostgreSQL's statistics of fast-growing tables fresh (`Store::analyze_grown_tables`),
/// in the one process holding the `statistics` lease. Looks every two seconds: plans made for
/// a tiny table cost the most in a burst's first minute, before autovacuum comes round.
pub async fn keep_statistics(engine: Arc<Engine>, process: String) {
    if engine.store.kind != crate::store::Kind::Postgres {
        return;
    }
    let every = Duration::from_secs(2);
    loop {
        tokio::time::sleep(every).await;
        let now = engine.clock.now();
        let until = now + chrono::Duration::seconds(6);
        match engine.store.take_lease("statistics", &process, now, until).await {
            Ok(true) => match engine.store.analyze_grown_tables().await {
                Ok(tables) if !tables.is_empty() => debug!(?tables, "Analyzed tables that grew."),
                Ok(_) => {}
                Err(error) => warn!(%error, "Could not analyze the tables that grew."),
            },
            Ok(false) => {}
            Err(error) => warn!(%error, "Could not take the statistics lease."),
        }
    }
}

/// Repairs lost jobs every `reconcile_every`, and once at start.
pub async fn run_reconciler(engine: Arc<Engine>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        if let Err(error) = engine.reconcile().await {
            warn!(%error, "Reconciler failed.");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(engine.config.reconcile_every) => {}
        }
    }
}

/// Fires schedule triggers: sleeps until the next tick of any scheduled journey (looking
/// around at least every minute, for a reload or a resumed journey). Every process may run
/// this; each tick is claimed once in the database, so a broadcast fires once however many
/// processes run it and however often they restart.
pub async fn run_scheduler(engine: Arc<Engine>, process: String, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut last = engine.clock.now();
    // Broadcasts this process has seen fire or fired (or found fired by another process).
    let mut broadcasts_done = std::collections::HashSet::new();
    loop {
        let catalog = engine.catalog();
        // Audiences a dead process left half enrolled, first: a late broadcast's claim below
        // finds its tick taken.
        match engine.resume_abandoned_ticks(&process).await {
            Ok(0) => {}
            Ok(resumed) => info!(resumed, "Resumed schedule ticks left unfinished."),
            Err(error) => warn!(%error, "Could not resume the schedule ticks left unfinished."),
        }
        fire_late_broadcasts(&engine, &catalog, &process, &mut broadcasts_done).await;
        let next = catalog
            .journeys
            .iter()
            .filter_map(|j| match &j.trigger {
                Trigger::Schedule { when, .. } => {
                    when.next_after(last, j.settings.timezone).map(|tick| (tick, j.clone()))
                }
                _ => None,
            })
            .min_by_key(|(tick, _)| *tick);
        let look_around = Duration::from_secs(60);
        let wait = match &next {
            Some((tick, _)) => (*tick - engine.clock.now())
                .to_std()
                .unwrap_or_default()
                .min(look_around),
            None => look_around,
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some((tick, _)) = next else { continue };
        if engine.clock.now() < tick {
            continue;
        }
        for journey in catalog.journeys.iter() {
            if let Trigger::Schedule { when, .. } = &journey.trigger
                && when.next_after(last, journey.settings.timezone) == Some(tick)
            {
                match engine.fire_schedule(journey, tick, &process).await {
                    Ok(_) if matches!(when, When::At { .. }) && !engine.holds(&journey.id) => {
                        broadcasts_done.insert((journey.id.clone(), tick));
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, journey = %journey.id, "Schedule failed to fire."),
                }
            }
        }
        last = tick;
    }
}

/// Fires the broadcasts (`at:`) whose time passed while no process ran them, or while their
/// journey was paused, up to `BROADCAST_LATE_LIMIT` late. The claim in the database keeps
/// each to once.
async fn fire_late_broadcasts(
    engine: &Engine,
    catalog: &journey::Catalog,
    process: &str,
    done: &mut std::collections::HashSet<(String, chrono::DateTime<chrono::Utc>)>,
) {
    let now = engine.clock.now();
    for journey in &catalog.journeys {
        let Trigger::Schedule { when, .. } = &journey.trigger else {
            continue;
        };
        let When::At { time, text, .. } = when else {
            continue;
        };
        if *time > now || engine.holds(&journey.id) || done.contains(&(journey.id.clone(), *time)) {
            continue;
        }
        if now - *time > journey::compile::BROADCAST_LATE_LIMIT {
            warn!(journey = %journey.id, at = %text, "A broadcast more than a day late is not sent.");
        } else {
            match engine.fire_schedule(journey, *time, process).await {
                Ok(Some(enrolled)) => info!(journey = %journey.id, at = %text, enrolled, "A late broadcast fired."),
                Ok(None) => {}
                Err(error) => {
                    warn!(%error, journey = %journey.id, "Broadcast failed to fire.");
                    continue;
                }
            }
        }
        done.insert((journey.id.clone(), *time));
    }
}

/// A unique name for this process's worker.
pub fn process_name(role: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!(
        "{role}-{host}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    info!("Shutting down: finishing in-flight steps.");
}
