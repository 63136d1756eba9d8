//! Serves an axum app on a stream of connections (plain TCP or TLS) with
//! the bounds a listener open to a cluster needs: a connection that has
//! not sent a complete request head within `HEAD_TIMEOUT` is closed
//! (slowloris), and a request (body included) gets `REQUEST_TIMEOUT` to be
//! read and answered. axum's own `serve` sets no timer, so hyper's header
//! timeout never fires there. The control plane's HTTP listeners and the
//! proxy's admin listener use it.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};

/// From a connection's first byte (or the end of the previous request) to
/// a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// From a request head to its answer, its body read included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on every connection `incoming` yields until `shutdown`,
/// then lets the requests in flight finish.
pub async fn serve<I>(
    incoming: impl Stream<Item = std::io::Result<I>>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = app.layer(axum::middleware::from_fn(bounded));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut incoming = std::pin::pin!(incoming);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection failed before serving");
                    continue;
                }
                None => break,
            },
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Answers 408 when a request takes longer than `REQUEST_TIMEOUT` (a body
/// trickled in a byte at a time).
async fn bounded(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "the request took too long\n").into_response(),
    }
}

/// The accepted connections of `listener`, as a stream.
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
