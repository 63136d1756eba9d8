//! The proxy's admin port (loopback, default 127.0.0.1:15000): `/live` (the
//! process is up), `/ready` (it holds an SVID), `/metrics` (Prometheus) and
//! `/config_dump` (the xDS resources it holds, by type, with versions) and
//! `POST /drain` (close the listeners, let in-flight requests finish).
//! Metric names are stable and documented in docs/metrics.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rampart_plan::resources::Config;
use tokio::net::TcpListener;

/// Labels of a renewal attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of an xDS update the proxy received.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    /// `cds`, `eds`, `lds`, `rds` or `sds`.
    pub r#type: &'static str,
    /// `ack` or `nack`.
    pub result: &'static str,
}

/// Labels of the resources held, by type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

/// The proxy's metrics.
pub struct ProxyMetrics {
    registry: Registry,
    /// notBefore and notAfter of the SVID in use, seconds since the Unix epoch.
    certificate_start: Gauge,
    certificate_expiry: Gauge,
    pub renewals: Family<RenewalLabels, Counter>,
    pub xds_updates: Family<XdsLabels, Counter>,
    pub xds_resources: Family<TypeLabels, Gauge>,
    /// The certificate chain of the SVID in use, PEM (public; for `/certs`).
    chain_pem: std::sync::RwLock<String>,
    /// Whether the proxy holds an SVID (for `/ready`).
    pub ready: AtomicBool,
    pub traffic: crate::proxy::metrics::TrafficMetrics,
}

impl ProxyMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let certificate_start = Gauge::default();
        registry.register(
            "rampart_proxy_certificate_start_timestamp_seconds",
            "notBefore of the SVID the proxy uses, seconds since the Unix epoch",
            certificate_start.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "rampart_proxy_certificate_expiry_timestamp_seconds",
            "notAfter of the SVID the proxy uses, seconds since the Unix epoch",
            certificate_expiry.clone(),
        );
        let renewals = Family::<RenewalLabels, Counter>::default();
        registry.register(
            "rampart_proxy_svid_renewals",
            "SVID renewal attempts, by result",
            renewals.clone(),
        );
        let xds_updates = Family::<XdsLabels, Counter>::default();
        registry.register(
            "rampart_proxy_xds_updates",
            "xDS responses received, by type and whether the proxy applied (ack) or refused (nack) them",
            xds_updates.clone(),
        );
        let xds_resources = Family::<TypeLabels, Gauge>::default();
        registry.register(
            "rampart_proxy_xds_resources",
            "xDS resources held, by type",
            xds_resources.clone(),
        );
        let traffic = crate::proxy::metrics::TrafficMetrics::register(&mut registry);
        // The series alerts watch exist at zero from the start, so "no
        // failures yet" is a value and not an empty result.
        for result in ["ok", "error"] {
            let _ = renewals.get_or_create(&RenewalLabels { result });
        }
        for r#type in ["cds", "eds", "lds", "rds", "sds"] {
            for result in ["ack", "nack"] {
                let _ = xds_updates.get_or_create(&XdsLabels { r#type, result });
            }
        }
        Arc::new(Self {
            traffic,
            xds_updates,
            xds_resources,
            registry,
            certificate_start,
            certificate_expiry,
            renewals,
            chain_pem: std::sync::RwLock::new(String::new()),
            ready: AtomicBool::new(false),
        })
    }

    /// Records the validity of the SVID now in use.
    pub fn svid_in_use(&self, svid: &rampart_certs::Svid) {
        self.certificate_start
            .set(svid.not_before().unix_timestamp());
        self.certificate_expiry
            .set(svid.not_after().unix_timestamp());
        let pem: String = svid
            .chain()
            .iter()
            .map(|c| rampart_certs::der_to_pem(c))
            .collect();
        *self.chain_pem.write().expect("chain lock") = pem;
    }

    fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

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
                let pem = for_certs.chain_pem.read().expect("chain lock").clone();
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
