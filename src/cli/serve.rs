//! `nurture serve` (workers, scheduler, reconciler; the events API joins it) and
//! `nurture worker` (step workers and the reconciler only).

use crate::app;
use crate::config::Config;
use anyhow::{Context, Result};
use futures::FutureExt;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(clap::Args)]
pub struct Args {
    /// Journeys directory (default: journeys/ of the working directory).
    #[arg(long)]
    journeys: Option<std::path::PathBuf>,
    /// Templates directory (default: templates/ of the working directory).
    #[arg(long)]
    templates: Option<std::path::PathBuf>,
}

pub fn config_with(args: &Args) -> Result<Config> {
    let mut config = Config::load(std::path::Path::new("."))?;
    if let Some(dir) = &args.journeys {
        config.journeys = dir.clone();
    }
    if let Some(dir) = &args.templates {
        config.templates = dir.clone();
    }
    Ok(config)
}

/// What a process runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API, step workers, schedules and the reconciler.
    Serve,
    /// Step workers and the reconciler.
    Worker,
    /// The HTTP API only.
    Api,
}

pub fn run(args: Args, role: Role) -> Result<ExitCode> {
    let config = config_with(&args)?;
    if role != Role::Worker {
        config.check_api_credentials()?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        super::init_tracing();
        let engine = app::build_default(config).await?;
        if role != Role::Api {
            // Loudly, before anything runs: a worker must be able to deliver what journeys send.
            engine.start_sending()?;
        }
        let mode = if engine.config.is_embedded() {
            format!(
                "embedded mode: state and queue in {}, messages in {}/",
                engine.config.sqlite_path.display(),
                engine.config.outbox.display()
            )
        } else {
            "production mode: PostgreSQL + Redis".to_string()
        };
        info!(
            journeys = engine.catalog().journeys.len(),
            "nurture is running ({mode})."
        );
        let (stop, stopped) = watch::channel(false);
        let wait = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
        if role != Role::Api {
            let name = app::process_name(if role == Role::Serve { "serve" } else { "worker" });
            tasks.spawn(app::run_worker(engine.clone(), name, wait(stopped.clone())));
            let reconciler = engine.clone();
            let reconciler_stop = wait(stopped.clone());
            tasks.spawn(async move {
                app::run_reconciler(reconciler, reconciler_stop).await;
                Ok(())
            });
        }
        if role != Role::Worker {
            let listener = tokio::net::TcpListener::bind(&engine.config.listen)
                .await
                .with_context(|| format!("Failed to listen on {}", engine.config.listen))?;
            info!(address = %listener.local_addr()?, "Events API listening.");
            let state = crate::api::AppState {
                keys: Arc::new(crate::api::keys_for(&engine)),
                engine: engine.clone(),
            };
            let api_stop = wait(stopped.clone());
            tasks.spawn(async move {
                let header_timeout = state.engine.config.http.header_timeout;
                crate::api::serve_with(listener, crate::api::router(state), header_timeout, api_stop).await?;
                Ok(())
            });
        }
        if role != Role::Api {
            // One process at a time (the `reports` lease) adds new facts to the rollups.
            tasks.spawn(
                crate::engine::reports::run_rollups(
                    engine.clone(),
                    app::process_name("reports"),
                    wait(stopped.clone()),
                )
                .map(Ok),
            );
        }
        if role == Role::Api {
            // Workers keep the statistics; an API-only process helps where none runs.
            tokio::spawn(app::keep_statistics(engine.clone(), app::process_name("api")));
        }
        if role == Role::Serve {
            let scheduler = engine.clone();
            let scheduler_stop = wait(stopped.clone());
            tasks.spawn(async move {
                app::run_scheduler(scheduler, app::process_name("scheduler"), scheduler_stop).await;
                Ok(())
            });
        }
        tokio::spawn(reload_on_sighup(engine.clone()));
        let outcome = crate::supervise::run(
            &mut tasks,
            app::shutdown_signal(),
            move || {
                let _ = stop.send(true);
            },
            std::time::Duration::from_secs(30),
        )
        .await;
        if let Err(why) = outcome {
            anyhow::bail!("nurture stopped: {why}");
        }
        // Requests answered but not applied yet: apply them before leaving.
        if !engine.drain_inbox(std::time::Duration::from_secs(10)).await {
            warn!("Stopped with answered requests not applied yet; the next reconciler pass applies them.");
        }
        info!("Stopped.");
        Ok(ExitCode::SUCCESS)
    })
}

async fn reload_on_sighup(engine: Arc<crate::engine::runner::Engine>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match app::reload(&engine).await {
                Ok(count) => info!(journeys = count, "Reloaded the journeys."),
                Err(error) => warn!(%error, "Reload refused."),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = engine;
}
