//! Keeping a process whole: a long-lived part that panics or stops on its own must stop the
//! process with an error, never leave it half alive (an API that answers 200 while nothing
//! runs its steps, a worker that no longer hears wake-ups).
//!
//! `serve`, `worker` and `api` run their components in a `JoinSet` and wait with `run`; tasks
//! the engine starts for itself (timers, the sales desk, the Redis wake-up listener) go
//! through `spawn_critical`, whose death `run` hears too.

use std::future::Future;
use std::sync::LazyLock;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

/// The first critical task that ended, if any.
static DIED: LazyLock<watch::Sender<Option<String>>> = LazyLock::new(|| watch::channel(None).0);

/// Spawns a task that must live as long as the process: if it panics or returns, that is
/// logged as an error and `run` stops the process.
/// Aborting it (the handle returned) is not a death.
pub fn spawn_critical<F>(name: &'static str, task: F) -> tokio::task::AbortHandle
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(task);
    let abort = handle.abort_handle();
    tokio::spawn(async move {
        let why = match handle.await {
            Ok(()) => format!("{name} stopped"),
            Err(error) if error.is_cancelled() => return,
            Err(error) => format!("{name} panicked: {}", panic_text(error)),
        };
        tracing::error!(component = name, "{why}; stopping the process.");
        DIED.send_if_modified(|died| died.is_none() && died.replace(why).is_none());
    });
    abort
}

/// Completes when a critical task has died, with why.
async fn a_critical_task_died() -> String {
    let mut died = DIED.subscribe();
    match died.wait_for(Option::is_some).await {
        Ok(why) => why.clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// Runs components until `shutdown` completes or one of them ends first (an error, a panic,
/// or a return: none of them ends on its own), then tells them all to stop (`stop`) and waits
/// for them (after an early end, up to `grace`). Returns why the process stopped early, if it
/// did.
pub async fn run(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: impl Future<Output = ()>,
    stop: impl FnOnce(),
    grace: std::time::Duration,
) -> Result<(), String> {
    let early = tokio::select! {
        _ = shutdown => None,
        why = a_critical_task_died() => Some(why),
        Some(ended) = tasks.join_next() => Some(match ended {
            Ok(Ok(())) => "a component stopped by itself".to_string(),
            Ok(Err(error)) => format!("a component failed: {error:#}"),
            Err(error) => format!("a component panicked: {}", panic_text(error)),
        }),
    };
    if let Some(why) = &early {
        tracing::error!("{why}; stopping the process.");
    }
    stop();
    let drain = async {
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "A component stopped with an error."),
                Err(error) => tracing::error!(error = panic_text(error), "A component panicked while stopping."),
            }
        }
    };
    // A clean stop lets in-flight work finish however long it takes; a broken process waits
    // only `grace`, since a part of it may never answer.
    if early.is_none() {
        drain.await;
    } else if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("Components did not stop in time; leaving them.");
    }
    early.map_or(Ok(()), Err)
}

fn panic_text(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(error) => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_component_that_panics_stops_the_others_and_the_process_with_an_error() {
        let (stop, stopped) = watch::channel(false);
        let other_stopped = Arc::new(AtomicBool::new(false));
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        let flag = other_stopped.clone();
        let mut receiver = stopped.clone();
        tasks.spawn(async move {
            let _ = receiver.wait_for(|stop| *stop).await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("the worker hit a bug");
        });
        let outcome = run(
            &mut tasks,
            std::future::pending(),
            move || {
                let _ = stop.send(true);
            },
            Duration::from_secs(5),
        )
        .await;
        let why = outcome.expect_err("the process stops with an error");
        assert!(why.contains("panicked: the worker hit a bug"), "{why}");
        assert!(
            other_stopped.load(Ordering::SeqCst),
            "the other component was told to stop"
        );
    }

    #[tokio::test]
    async fn a_component_that_returns_early_stops_the_process_too() {
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        tasks.spawn(async { Err(anyhow::anyhow!("the listener closed")) });
        let why = run(&mut tasks, std::future::pending(), || {}, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(why.contains("the listener closed"), "{why}");
    }

    #[tokio::test]
    async fn shutdown_is_not_an_error() {
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        let (stop, stopped) = watch::channel(false);
        let mut receiver = stopped.clone();
        tasks.spawn(async move {
            let _ = receiver.wait_for(|stop| *stop).await;
            Ok(())
        });
        let outcome = run(
            &mut tasks,
            async {},
            move || {
                let _ = stop.send(true);
            },
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(outcome, Ok(()));
    }
}
