//! The HTTP server under the router: hyper's HTTP/1 with a timer, so a client that does not
//! send a whole request head in time is disconnected (axum's `serve` has no such timeout, and a
//! slowloris client holds a connection, and a task, as long as it likes).

use axum::Router;
use std::future::Future;

/// Serves the API on `listener` until `shutdown` completes, with the default header timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = crate::config::HttpConfig::default().header_timeout;
    serve_with(listener, router, header_timeout, shutdown).await
}

/// Serves the API on `listener` until `shutdown` completes; requests in flight then finish.
/// A connection that has not sent a whole request head within `header_timeout` of starting
/// one (or of its last response) is closed: slow clients cannot hold connections open.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    header_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // pause rather than spin, and go on.
                    tracing::warn!(%error, "Could not accept a connection.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that went away or timed out: nothing to do.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
