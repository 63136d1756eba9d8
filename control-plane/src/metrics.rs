//! The control plane's Prometheus metrics. Names are stable and documented in
//! docs/metrics.md; dashboards and alerts depend on them.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a signing outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignLabels {
    /// `join_token`, `svid`, `admin`, or `none`.
    pub proof: &'static str,
    /// `issued`, `invalid_csr`, `unauthenticated`, `permission_denied`, `error`.
    pub result: &'static str,
}

/// Labels of xDS counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    /// The resource type URL.
    pub type_url: String,
}

/// Labels of an admission outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `inject`, `validate` or `pin`.
    pub webhook: &'static str,
    /// `injected`, `pinned`, `admitted`, `skipped`, `denied`, `malformed`, `error`.
    pub result: &'static str,
}

/// Labels of `rampart_admission_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `inject`, `validate` or `pin`.
    pub webhook: &'static str,
}

/// Labels of a security policy violation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    /// `SecurityPolicy rampart-system/default`, `namespace label ...`.
    pub policy: String,
    /// `enforce`, `audit` or `warn`.
    pub action: &'static str,
}

/// Labels of `rampart_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BuildLabels {
    pub component: &'static str,
    pub version: &'static str,
}

/// All control-plane metrics.
pub struct Metrics {
    registry: Registry,
    pub certificates: Family<SignLabels, Counter>,
    pub signing_seconds: Histogram,
    pub join_tokens_created: Counter,
    pub ca_expiry: Gauge,
    pub root_expiry: Gauge,
    /// Roots in the bundle: 2 while a root rotation is under way.
    pub trusted_roots: Gauge,
    pub xds_connected: Gauge,
    pub xds_pushes: Family<XdsLabels, Counter>,
    pub xds_nacks: Family<XdsLabels, Counter>,
    pub xds_convergence: Histogram,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_seconds: Family<WebhookLabels, Histogram, fn() -> Histogram>,
    /// Pods admitted or denied with violations, by policy and action.
    pub policy_violations: Family<ViolationLabels, Counter>,
    /// Running pods that violate a policy now, by policy and action
    /// (the continuous evaluation, `admission::running`).
    pub violating_pods: Family<ViolationLabels, Gauge>,
    /// Pods the last continuous evaluation judged.
    pub evaluated_pods: Gauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let certificates = Family::<SignLabels, Counter>::default();
        registry.register(
            "rampart_ca_certificates",
            "Certificate signing requests handled by the CA, by proof and result",
            certificates.clone(),
        );
        // 100 us .. ~3 s
        let signing_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "rampart_ca_signing_duration_seconds",
            "Time to verify a CSR and sign the SVID, successful requests only",
            signing_seconds.clone(),
        );
        let join_tokens_created = Counter::default();
        registry.register(
            "rampart_join_tokens_created",
            "Join tokens created",
            join_tokens_created.clone(),
        );
        let ca_expiry = Gauge::default();
        registry.register(
            "rampart_ca_expiry_timestamp_seconds",
            "When the CA's signing chain (root included) expires, Unix seconds",
            ca_expiry.clone(),
        );
        let root_expiry = Gauge::default();
        registry.register(
            "rampart_ca_root_expiry_timestamp_seconds",
            "When the earliest trusted root expires, Unix seconds",
            root_expiry.clone(),
        );
        let trusted_roots = Gauge::default();
        registry.register(
            "rampart_ca_trusted_roots",
            "Roots in the trust bundle served (2 while a root rotation is under way)",
            trusted_roots.clone(),
        );
        let xds_connected = Gauge::default();
        registry.register(
            "rampart_xds_connected_streams",
            "ADS streams currently open",
            xds_connected.clone(),
        );
        let xds_pushes = Family::<XdsLabels, Counter>::default();
        registry.register(
            "rampart_xds_pushes",
            "xDS responses sent, by resource type",
            xds_pushes.clone(),
        );
        let xds_nacks = Family::<XdsLabels, Counter>::default();
        registry.register(
            "rampart_xds_nacks",
            "xDS responses rejected by clients (NACK), by resource type",
            xds_nacks.clone(),
        );
        // 1 ms .. ~65 s
        let xds_convergence = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "rampart_xds_convergence_seconds",
            "From a model change being accepted to every affected xDS stream answering the push",
            xds_convergence.clone(),
        );
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "rampart_admission_reviews",
            "AdmissionReviews answered, by webhook and result",
            admissions.clone(),
        );
        // 50 us .. ~1.6 s
        let admission_seconds =
            Family::<WebhookLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 16))
            });
        registry.register(
            "rampart_admission_review_seconds",
            "Time to answer an AdmissionReview, from its body read to the response, by webhook",
            admission_seconds.clone(),
        );
        let policy_violations = Family::<ViolationLabels, Counter>::default();
        registry.register(
            "rampart_admission_policy_violations",
            "Pods reviewed with security policy violations, by policy and its enforcement action",
            policy_violations.clone(),
        );
        let violating_pods = Family::<ViolationLabels, Gauge>::default();
        registry.register(
            "rampart_policy_violating_pods",
            "Pods in the cluster that violate a security policy now, by policy and its enforcement action (re-evaluated when policies, namespaces or pods change, and periodically)",
            violating_pods.clone(),
        );
        let evaluated_pods = Gauge::default();
        registry.register(
            "rampart_policy_evaluated_pods",
            "Pods judged by the last continuous evaluation of the security policy",
            evaluated_pods.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "rampart_build_info",
            "Always 1; the version of rampart-control in a label",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                component: "rampart-control",
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        // Export the common series at zero from the start, so rates and alerts
        // work before the first request.
        for proof in ["join_token", "svid", "admin"] {
            let _ = certificates.get_or_create(&SignLabels {
                proof,
                result: "issued",
            });
        }
        for type_url in rampart_api::xds::TypeUrl::ORDER {
            let labels = XdsLabels {
                type_url: type_url.as_str().to_owned(),
            };
            let _ = xds_pushes.get_or_create(&labels);
            let _ = xds_nacks.get_or_create(&labels);
        }
        Arc::new(Self {
            registry,
            certificates,
            signing_seconds,
            join_tokens_created,
            ca_expiry,
            root_expiry,
            trusted_roots,
            xds_connected,
            xds_pushes,
            xds_nacks,
            xds_convergence,
            admissions,
            admission_seconds,
            policy_violations,
            violating_pods,
            evaluated_pods,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts one xDS response sent.
    pub fn count_push(&self, type_url: &str) {
        self.xds_pushes
            .get_or_create(&XdsLabels {
                type_url: type_url.to_owned(),
            })
            .inc();
    }

    /// Counts one NACK.
    pub fn count_nack(&self, type_url: &str) {
        self.xds_nacks
            .get_or_create(&XdsLabels {
                type_url: type_url.to_owned(),
            })
            .inc();
    }

    /// Counts one admission outcome and the time it took.
    pub fn count_admission(
        &self,
        webhook: &'static str,
        result: &'static str,
        took: std::time::Duration,
    ) {
        self.admissions
            .get_or_create(&AdmissionLabels { webhook, result })
            .inc();
        self.admission_seconds
            .get_or_create(&WebhookLabels { webhook })
            .observe(took.as_secs_f64());
    }

    /// Counts one signing outcome.
    pub fn count_sign(&self, proof: &'static str, result: &'static str) {
        self.certificates
            .get_or_create(&SignLabels { proof, result })
            .inc();
    }
}
