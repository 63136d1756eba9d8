//! The proxy's admin port (loopback, default 127.0.0.1:15000): `/live` (the
//! process is up), `/ready` (it holds an SVID), `/metrics` (Prometheus) and
//! `/config_dump` (the xDS resources it holds, by type, with versions) and
//! `POST /drain` (close the listeners, let in-flight requests finish).
//! The metrics themselves are `crate::metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use rampart_plan::resources::Config;
use tokio::net::TcpListener;

use crate::metrics::ProxyMetrics;

/// `{"<type url>": {"<name>": "<version>"}}`.
fn config_dump(config: &Config) -> serde_json::Value {
    config
        .types
        .iter()
        .map(|(t, resources)| {
            let versions = resources
                .iter()
                .map(|(n, h)| (n.clone(), serde_json::Value::from(h.version.clone())))
                .collect::<serde_json::Map<_, _>>();
            (t.as_str().to_owned(), serde_json::Value::Object(versions))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<ProxyMetrics>,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    drain: Arc<tokio::sync::watch::Sender<bool>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let for_metrics = metrics.clone();
    let for_certs = metrics.clone();
    let draining = drain.subscribe();
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        // The SVID chain in use (certificates only; the key never leaves the proxy).
        .route(
            "/certs",
            get(move || {
                let pem = for_certs.chain_pem();
                async move {
                    if pem.is_empty() {
                        (StatusCode::SERVICE_UNAVAILABLE, "no SVID yet\n".to_owned())
                            .into_response()
                    } else {
                        ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()
                    }
                }
            }),
        )
        .route(
            "/drain",
            post(move || {
                drain.send_replace(true);
                async { "draining: listeners closed, in-flight requests finish\n" }
            }),
        )
        .route(
            "/config_dump",
            get(move || {
                let held = config.borrow().clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        config_dump(&held).to_string(),
                    )
                }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let ready = metrics.ready.load(Ordering::Acquire);
                let drained = *draining.borrow();
                async move {
                    if drained {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
                    } else if ready {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "waiting for an SVID\n").into_response()
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = for_metrics.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
    use rampart_api::http_serve::{serve, tcp_incoming};
    serve(tcp_incoming(listener), app, shutdown).await
}
