//! Traffic metrics. Names and labels are stable and documented in
//! docs/metrics.md; identities are SPIFFE IDs, services are cluster names.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    pub source_identity: Arc<str>,
    pub destination_identity: Arc<str>,
    pub destination_service: Arc<str>,
    pub response_code: u16,
    /// The gRPC status, empty for plain HTTP.
    pub grpc_status: String,
    /// Envoy's response flags (`UH`, `UF`, `NR`...; `-` for an upstream's
    /// answer), as Istio labels its request metrics.
    pub response_flags: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: &'static str,
    pub destination_service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub destination_service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: &'static str,
    pub destination_service: String,
    /// `sent` (to the upstream) or `received` (from it).
    pub flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub source_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub cluster: String,
    /// `max_requests`, `max_pending_requests`, `max_connections` or `max_retries`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub listener: String,
    /// `idle` (HTTP), `request_headers` (HTTP/1.x) or `tcp_idle`.
    pub timeout: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeFailureLabels {
    pub listener: String,
    /// See [`handshake_failure_reason`].
    pub reason: &'static str,
}

/// Why an inbound TLS handshake failed, in words an operator can act on:
/// `not_tls` (a plaintext client in STRICT), `no_client_cert`,
/// `bad_client_cert` (untrusted root, expired, not an SVID of the trust
/// domain), `peer_refused` (the client sent an alert: it did not accept
/// this proxy's certificate), `timeout`, else `other`.
pub fn handshake_failure_reason(error: Option<&std::io::Error>) -> &'static str {
    use rustls::Error as E;
    let Some(error) = error else {
        return "timeout";
    };
    match error.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. }) => "not_tls",
        Some(E::NoCertificatesPresented) => "no_client_cert",
        Some(E::InvalidCertificate(_)) => "bad_client_cert",
        Some(E::AlertReceived(_)) => "peer_refused",
        _ => "other",
    }
}

pub struct TrafficMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<DurationLabels, Histogram>,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub tcp_bytes: Family<BytesLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    pub retries: Family<ClusterLabels, Counter>,
    pub ejections: Family<ClusterLabels, Counter>,
    pub overflows: Family<OverflowLabels, Counter>,
    pub detect_timeouts: Family<ListenerLabels, Counter>,
    pub tls_failures: Family<HandshakeFailureLabels, Counter>,
    pub bind_failures: Family<ListenerLabels, Counter>,
    pub timeouts: Family<TimeoutLabels, Counter>,
    pub resends: Family<ClusterLabels, Counter>,
    pub rate_limited: Family<ListenerLabels, Counter>,
}

impl TrafficMetrics {
    pub fn register(registry: &mut Registry) -> TrafficMetrics {
        let m = TrafficMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
            }),
            tcp_connections: Family::default(),
            tcp_bytes: Family::default(),
            authz: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            overflows: Family::default(),
            detect_timeouts: Family::default(),
            tls_failures: Family::default(),
            bind_failures: Family::default(),
            timeouts: Family::default(),
            resends: Family::default(),
            rate_limited: Family::default(),
        };
        registry.register(
            "rampart_proxy_requests",
            "HTTP and gRPC requests completed, by direction, identities, service and response",
            m.requests.clone(),
        );
        registry.register(
            "rampart_proxy_request_duration_seconds",
            "Time from request to the end of the response",
            m.duration.clone(),
        );
        registry.register(
            "rampart_proxy_tcp_connections",
            "TCP connections proxied, by direction and service",
            m.tcp_connections.clone(),
        );
        registry.register(
            "rampart_proxy_tcp_bytes",
            "Bytes proxied on TCP connections",
            m.tcp_bytes.clone(),
        );
        registry.register(
            "rampart_proxy_authz_decisions",
            "Authorization decisions on inbound traffic",
            m.authz.clone(),
        );
        registry.register(
            "rampart_proxy_retries",
            "Requests retried, by cluster",
            m.retries.clone(),
        );
        registry.register(
            "rampart_proxy_outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster",
            m.ejections.clone(),
        );
        registry.register(
            "rampart_proxy_circuit_breaker_overflows",
            "Requests refused by a circuit breaker, by cluster and limit",
            m.overflows.clone(),
        );
        registry.register(
            "rampart_proxy_protocol_detect_timeouts",
            "Connections whose first bytes did not tell their protocol in time (TLS or plaintext; HTTP or opaque on auto ports)",
            m.detect_timeouts.clone(),
        );
        registry.register(
            "rampart_proxy_tls_handshake_failures",
            "Inbound TLS handshakes that failed, by reason (not_tls, no_client_cert, bad_client_cert, peer_refused, timeout, other)",
            m.tls_failures.clone(),
        );
        registry.register(
            "rampart_proxy_listener_bind_failures",
            "Attempts to bind a listener that failed (its address taken or not local); retried every 5 s",
            m.bind_failures.clone(),
        );
        registry.register(
            "rampart_proxy_connection_timeouts",
            "Downstream connections closed by a timeout, by listener and timeout (idle, request_headers, tcp_idle)",
            m.timeouts.clone(),
        );
        registry.register(
            "rampart_proxy_upstream_resends",
            "Requests sent again on a new connection because the app closed the pooled one under them, by cluster",
            m.resends.clone(),
        );
        registry.register(
            "rampart_proxy_rate_limited",
            "Requests refused by a local rate limit (429), by listener",
            m.rate_limited.clone(),
        );
        m
    }
}
