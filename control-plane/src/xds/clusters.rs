//! A service port's clusters: the plain flavour for clients without an
//! identity of their own and the sidecar flavour (mTLS to sidecar
//! endpoints), with balancing, limits, retry budget and outlier detection.

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use rampart_api::mesh::{LoadBalancer, Protocol, TrafficPolicySpec};

use super::sidecar;
use rampart_api::xds::CaptureMetadata;

use super::envoy_blocks::{ads, duration, protocol_options, tls_match, tls_socket};

/// Who a cluster is built for.
#[derive(Clone, Copy)]
pub(super) enum Flavour<'a> {
    /// Clients without an identity of their own: proxyless gRPC, tools.
    Plain,
    /// Sidecars: mTLS to endpoints with a sidecar, requiring `expected` IDs.
    Sidecar { expected: &'a [String] },
}

/// The `lb_policy`. Sidecars (Envoy, rampart-proxy) get LEAST_REQUEST.
/// Other clients get ROUND_ROBIN for it: proxyless gRPC NACKs a whole CDS
/// response over an `lb_policy` it does not know, and the typed
/// `load_balancing_policy` list that would let it fall back (gRFC A52)
/// costs about 230 bytes per cluster, which every stream's transport buffer
/// then holds (measured: 645 vs 329 KiB per stream at 1,000 services).
pub(super) fn lb_policy(
    policy: Option<&TrafficPolicySpec>,
    flavour: Flavour<'_>,
) -> cluster::LbPolicy {
    match (policy.and_then(|p| p.load_balancer), flavour) {
        (Some(LoadBalancer::RingHash), _) => cluster::LbPolicy::RingHash,
        (Some(LoadBalancer::RoundRobin), _) | (_, Flavour::Plain) => cluster::LbPolicy::RoundRobin,
        (Some(LoadBalancer::LeastRequest) | None, Flavour::Sidecar { .. }) => {
            cluster::LbPolicy::LeastRequest
        }
    }
}

/// mTLS to a sidecar: present `default`, verify the peer against `ROOTCA`
/// and require one of `expected` as its SPIFFE ID. ALPN names the protocol
/// the cluster speaks, so the peer's codec picks the same one.
pub(super) fn upstream_mtls(expected: &[String], protocol: Protocol) -> UpstreamTlsContext {
    let alpn: &[&str] = match protocol {
        Protocol::Http2 | Protocol::Grpc => &["h2"],
        Protocol::Http => &["http/1.1"],
        // The connection may carry HTTP or not; no ALPN makes the peer's
        // sidecar take it as opaque TCP, which is right either way.
        Protocol::Tcp | Protocol::Auto => &[],
    };
    UpstreamTlsContext {
        common_tls_context: Some(sidecar::common_tls(Some(expected), alpn)),
        ..Default::default()
    }
}

/// A service cluster in one flavour.
pub(super) fn build_cluster(
    name: &str,
    policy: Option<&TrafficPolicySpec>,
    (protocol, addresses): (Protocol, &[String]),
    flavour: Flavour<'_>,
) -> Cluster {
    let expected = match flavour {
        Flavour::Plain => &[][..],
        Flavour::Sidecar { expected } => expected,
    };
    // Limits, and the retry budget (which Envoy keeps beside them).
    let limits = policy.and_then(|p| p.circuit_breakers.as_ref());
    let budget = policy
        .and_then(|p| p.retries.as_ref())
        .and_then(|r| r.budget_percent);
    let limit = |field: fn(&rampart_api::mesh::CircuitBreakers) -> Option<u32>| {
        limits.and_then(field).map(|value| UInt32Value { value })
    };
    let circuit_breakers = (limits.is_some() || budget.is_some()).then(|| CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: limit(|cb| cb.max_connections),
            max_pending_requests: limit(|cb| cb.max_pending_requests),
            max_requests: limit(|cb| cb.max_requests),
            max_retries: limit(|cb| cb.max_retries),
            retry_budget: budget.map(|percent| circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                    value: f64::from(percent),
                }),
                min_retry_concurrency: Some(UInt32Value { value: 3 }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let outlier_detection =
        policy
            .and_then(|p| p.outlier_detection.as_ref())
            .map(|od| OutlierDetection {
                consecutive_5xx: Some(UInt32Value {
                    value: od.consecutive_5xx.unwrap_or(5),
                }),
                interval: od.interval.as_deref().and_then(duration),
                base_ejection_time: od.base_ejection_time.as_deref().and_then(duration),
                max_ejection_percent: Some(UInt32Value {
                    value: od.max_ejection_percent.unwrap_or(10),
                }),
                ..Default::default()
            });
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 5,
            nanos: 0,
        }),
        lb_policy: lb_policy(policy, flavour) as i32,
        circuit_breakers,
        outlier_detection,
        typed_extension_protocol_options: protocol_options(protocol),
        metadata: CaptureMetadata {
            detect_protocol: protocol == Protocol::Auto,
            // The model checked that each is an IP address.
            addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        }
        .to_metadata(),
        transport_socket_matches: if expected.is_empty() {
            Vec::new()
        } else {
            vec![cluster::TransportSocketMatch {
                name: "mtls".to_owned(),
                r#match: Some(tls_match()),
                transport_socket: Some(tls_socket(pack_any(upstream_mtls(expected, protocol)))),
            }]
        },
        ..Default::default()
    }
}
