//! rampart-proxy's Prometheus metrics: identity (the SVID in use, its
//! renewals), xDS (updates, resources held) and traffic (`traffic`). Names
//! are stable and documented in docs/metrics.md. A leaf: the admin port
//! serves them, everything else counts into them.

pub mod traffic;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    pub traffic: traffic::TrafficMetrics,
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
        let traffic = traffic::TrafficMetrics::register(&mut registry);
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

    /// The certificate chain of the SVID in use, PEM (empty before the first).
    pub fn chain_pem(&self) -> String {
        self.chain_pem.read().expect("chain lock").clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
