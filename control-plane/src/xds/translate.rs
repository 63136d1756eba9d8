//! Mesh model -> Envoy v3 resources, for clients that name what they want
//! (proxyless gRPC today; sidecar listeners come with the data plane).
//!
//! Per service port:
//! * Cluster `outbound|<port>||<svc>.<ns>` (EDS over ADS), and one per split
//!   subset `outbound|<port>|<k=v,...>|<svc>.<ns>`;
//! * ClusterLoadAssignment of the same name, endpoints grouped by locality,
//!   every locality weighted (gRPC ignores localities without a weight);
//! * for HTTP, HTTP/2 and gRPC ports, Listener `<svc>.<ns>:<port>` (an
//!   api_listener, what `xds:///<svc>.<ns>:<port>` asks for) whose HTTP
//!   connection manager takes RouteConfiguration `<svc>.<ns>:<port>` over ADS.
//!
//! Endpoints fronted by a sidecar carry the metadata `tls: mtls`. Sidecars
//! get their own flavour of each cluster ([`SidecarInputs::clusters`]) that
//! reaches those endpoints over mTLS, checking the server's SPIFFE ID, and
//! the rest in plaintext (auto-mTLS, as Istio does); clients without an
//! identity of their own (proxyless gRPC, a plain Envoy) get the plaintext
//! flavour. The trust bundle is the Secret `ROOTCA`.
//!
//! The output is a pure function of the model: the same model gives the same
//! bytes, so unchanged resources keep their versions.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(test)]
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, DataSource, HealthStatus, Locality, Metadata,
    RuntimeFractionalPercent, SocketAddress, TransportSocket, address, config_source, data_source,
    socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    retry_policy::RetryBackOff, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, UpstreamTlsContext, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{
    Duration as PbDuration, Struct, UInt32Value, Value, value,
};
use envoy_types::util::pack_any;
use rampart_api::mesh::{
    AuthorizationPolicySpec, ConnectionSettings, Fault, LoadBalancer, MtlsMode, Object, Protocol,
    Resource, ServicePort, ServiceSpec, TrafficPolicySpec, WorkloadEntrySpec,
};

use super::sidecar::{self, ServiceInfo, SidecarInputs};
use super::snapshot::{Entry, Snapshot, TypeUrl};
use super::timeouts::ConnectionTimeouts;
use rampart_api::xds::CaptureMetadata;

/// The parts of the model the translator reads.
#[derive(Debug)]
pub struct Model {
    services: Vec<Object<ServiceSpec>>,
    entries: Vec<Object<WorkloadEntrySpec>>,
    policies: Vec<Object<TrafficPolicySpec>>,
    authorization: Vec<Object<AuthorizationPolicySpec>>,
    mtls: MtlsMode,
    connections: ConnectionSettings,
    access_log: bool,
    trust_domain: String,
    /// The trust bundle (PEM) served as the Secret `ROOTCA`; none if empty.
    roots_pem: String,
}

impl Model {
    /// Sorts the stored resources into the model of a mesh whose identities
    /// are in `trust_domain` and are verified with `roots_pem`.
    pub fn new(resources: Vec<Resource>, trust_domain: &str, roots_pem: &str) -> Self {
        let mut model = Model {
            services: Vec::new(),
            entries: Vec::new(),
            policies: Vec::new(),
            authorization: Vec::new(),
            mtls: MtlsMode::default(),
            connections: ConnectionSettings::default(),
            access_log: false,
            trust_domain: trust_domain.to_owned(),
            roots_pem: roots_pem.to_owned(),
        };
        for resource in resources {
            match resource {
                Resource::Service(s) => model.services.push(s),
                Resource::WorkloadEntry(e) => model.entries.push(e),
                Resource::TrafficPolicy(p) => model.policies.push(*p),
                Resource::AuthorizationPolicy(p) => model.authorization.push(p),
                Resource::MeshConfig(m) => {
                    model.mtls = m.spec.mtls.mode;
                    model.connections = m.spec.connections.clone();
                    model.access_log = m.spec.access_log;
                }
                // Admission policy: what may run, not how traffic flows.
                Resource::SecurityPolicy(_) | Resource::VulnerabilityReport(_) => {}
            }
        }
        model
    }

    /// Adds endpoints that sidecars registered when they connected. A static
    /// entry with the same address and port wins.
    pub fn with_registered(mut self, registered: Vec<Object<WorkloadEntrySpec>>) -> Self {
        self.entries.extend(registered);
        self
    }

    /// The cluster receiving the mirrored copies of `port`'s requests: the
    /// mirror service's port of the same name, else of the same number.
    fn mirror_cluster(
        &self,
        namespace: &str,
        port: &ServicePort,
        policy: Option<&TrafficPolicySpec>,
    ) -> Option<(String, u32)> {
        let mirror = policy?.mirror.as_ref()?;
        let service = self
            .services
            .iter()
            .find(|s| s.metadata.namespace == namespace && s.metadata.name == mirror.service)?;
        let target = service
            .spec
            .ports
            .iter()
            .find(|p| p.name == port.name)
            .or_else(|| service.spec.ports.iter().find(|p| p.port == port.port))
            .filter(|p| p.protocol != Protocol::Tcp)?;
        let cluster = cluster_name(&mirror.service, namespace, target.port, &BTreeMap::new());
        Some((cluster, mirror.percent))
    }

    /// The SPIFFE IDs a client accepts from the endpoints of a service: its
    /// declared service accounts, else those of its sidecar endpoints.
    fn expected_ids(&self, service: &Object<ServiceSpec>) -> Vec<String> {
        let (name, namespace) = (&service.metadata.name, &service.metadata.namespace);
        let mut accounts: Vec<&str> = if service.spec.service_accounts.is_empty() {
            self.entries
                .iter()
                .filter(|e| e.metadata.namespace == *namespace && e.spec.service == *name)
                .filter(|e| e.spec.sidecar)
                .map(|e| e.spec.service_account.as_str())
                .collect()
        } else {
            service
                .spec
                .service_accounts
                .iter()
                .map(String::as_str)
                .collect()
        };
        accounts.sort_unstable();
        accounts.dedup();
        accounts
            .into_iter()
            .map(|sa| workload_id(&self.trust_domain, namespace, sa))
            .collect()
    }

    fn policy_for(&self, namespace: &str, service: &str, port: &str) -> Option<&TrafficPolicySpec> {
        // Port-specific policies win over service-wide ones; names break ties.
        let mut matching: Vec<_> = self
            .policies
            .iter()
            .filter(|p| p.metadata.namespace == namespace && p.spec.service == service)
            .filter(|p| p.spec.ports.is_empty() || p.spec.ports.iter().any(|n| n == port))
            .collect();
        matching.sort_by_key(|p| (p.spec.ports.is_empty(), p.metadata.name.clone()));
        matching.first().map(|p| &p.spec)
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn workload_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The name of the trust-bundle secret.
pub const ROOTCA: &str = "ROOTCA";

/// The name of a workload's own certificate secret (from its local agent).
pub const DEFAULT_SECRET: &str = "default";

/// `<svc>.<ns>:<port>`: the listener and route name a gRPC client asks for.
pub fn listener_name(service: &str, namespace: &str, port: u16) -> String {
    format!("{service}.{namespace}:{port}")
}

/// `outbound|<port>|<subset>|<svc>.<ns>` (subset empty for the whole service).
pub fn cluster_name(
    service: &str,
    namespace: &str,
    port: u16,
    subset: &BTreeMap<String, String>,
) -> String {
    let subset: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("outbound|{port}|{}|{service}.{namespace}", subset.join(","))
}

/// What the translator makes of the model: the resources every node may
/// share, and what per-node views are built from. Nodes are served by a
/// [`super::source::NodeSource`], which combines the two.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshConfig {
    pub snapshot: Snapshot,
    pub sidecars: SidecarInputs,
}

/// Translates the whole model.
pub fn translate(model: &Model) -> MeshConfig {
    let mut snapshot = Snapshot::default();
    let mut sidecar_clusters = Snapshot::default();
    let mut inputs = SidecarInputs {
        trust_domain: model.trust_domain.clone(),
        mtls: model.mtls,
        timeouts: ConnectionTimeouts::new(&model.connections),
        access_log: model.access_log,
        ..Default::default()
    };
    for policy in &model.authorization {
        inputs
            .authorization
            .entry(policy.metadata.namespace.clone())
            .or_default()
            .push(policy.clone());
    }
    if !model.roots_pem.is_empty() {
        snapshot.insert(TypeUrl::Secret, ROOTCA.to_owned(), roots(&model.roots_pem));
    }
    for service in &model.services {
        let (name, namespace) = (&service.metadata.name, &service.metadata.namespace);
        let mut info = ServiceInfo {
            ports: service.spec.ports.clone(),
            service_accounts: service.spec.service_accounts.clone(),
            rate_limits: BTreeMap::new(),
            clusters: Vec::new(),
            routes: Vec::new(),
        };
        let expected = model.expected_ids(service);
        for port in &service.spec.ports {
            let policy = model.policy_for(namespace, name, &port.name);
            if let Some(limit) = policy.and_then(|p| p.rate_limit.clone()) {
                info.rate_limits.insert(port.name.clone(), limit);
            }
            let mut subsets = vec![BTreeMap::new()];
            subsets.extend(
                policy
                    .iter()
                    .flat_map(|p| p.split.iter().map(|t| t.subset.clone())),
            );
            // The service's virtual IPs are for its own cluster, which
            // holds every endpoint (not for subsets).
            let addresses = &service.spec.addresses;
            for subset in &subsets {
                let cluster = cluster_name(name, namespace, port.port, subset);
                let kind = (
                    port.protocol,
                    if subset.is_empty() {
                        &addresses[..]
                    } else {
                        &[]
                    },
                );
                snapshot.insert(
                    TypeUrl::Cluster,
                    cluster.clone(),
                    build_cluster(&cluster, policy, kind, Flavour::Plain),
                );
                sidecar_clusters.insert(
                    TypeUrl::Cluster,
                    cluster.clone(),
                    build_cluster(
                        &cluster,
                        policy,
                        kind,
                        Flavour::Sidecar {
                            expected: &expected,
                        },
                    ),
                );
                let endpoints = endpoints(model, service, port, subset);
                snapshot.insert(
                    TypeUrl::Endpoint,
                    cluster.clone(),
                    load_assignment(&cluster, endpoints),
                );
                info.clusters.push(cluster);
            }
            if port.protocol != Protocol::Tcp {
                let listener = listener_name(name, namespace, port.port);
                snapshot.insert(TypeUrl::Listener, listener.clone(), api_listener(&listener));
                snapshot.insert(
                    TypeUrl::Route,
                    listener.clone(),
                    route_configuration(
                        &listener,
                        name,
                        namespace,
                        port.port,
                        policy,
                        model.mirror_cluster(namespace, port, policy),
                    ),
                );
                info.routes.push(listener);
            }
        }
        inputs
            .services
            .insert((namespace.clone(), name.clone()), info);
    }
    inputs.clusters = sidecar_clusters.shared(TypeUrl::Cluster);
    MeshConfig {
        snapshot,
        sidecars: inputs,
    }
}

/// The `ROOTCA` entry served for the bundle `pem`: what a root rotation
/// waits for every stream to hold.
pub fn rootca_entry(pem: &str) -> Entry {
    Entry::new(roots(pem))
}

fn roots(pem: &str) -> Secret {
    Secret {
        name: ROOTCA.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(pem.to_owned())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn duration(text: &str) -> Option<PbDuration> {
    rampart_api::duration::parse(text).ok().map(pb_duration)
}

pub(super) fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Who a cluster is built for.
#[derive(Clone, Copy)]
enum Flavour<'a> {
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
fn lb_policy(policy: Option<&TrafficPolicySpec>, flavour: Flavour<'_>) -> cluster::LbPolicy {
    match (policy.and_then(|p| p.load_balancer), flavour) {
        (Some(LoadBalancer::RingHash), _) => cluster::LbPolicy::RingHash,
        (Some(LoadBalancer::RoundRobin), _) | (_, Flavour::Plain) => cluster::LbPolicy::RoundRobin,
        (Some(LoadBalancer::LeastRequest) | None, Flavour::Sidecar { .. }) => {
            cluster::LbPolicy::LeastRequest
        }
    }
}

/// The endpoint metadata that selects the mTLS transport socket.
const TLS_MATCH: (&str, &str) = ("tls", "mtls");

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s.to_owned())),
    }
}

fn tls_match() -> Struct {
    one_string(TLS_MATCH.0, TLS_MATCH.1)
}

/// `{key: "value"}`.
fn one_string(key: &str, value: &str) -> Struct {
    Struct {
        fields: [(key.to_owned(), string_value(value))].into(),
    }
}

/// A TLS transport socket.
pub(super) fn tls_socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

/// mTLS to a sidecar: present `default`, verify the peer against `ROOTCA`
/// and require one of `expected` as its SPIFFE ID. ALPN names the protocol
/// the cluster speaks, so the peer's codec picks the same one.
fn upstream_mtls(expected: &[String], protocol: Protocol) -> UpstreamTlsContext {
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

/// HTTP/2 to the endpoints of HTTP/2 and gRPC ports, HTTP/1.1 (the
/// default) to HTTP ports. (Envoy refuses ALPN-chosen protocols on a
/// cluster that may also connect in plaintext, as auto-mTLS clusters do.)
pub(super) fn http_options(protocol: Protocol) -> Option<HttpProtocolOptions> {
    use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
    use http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config,
    };
    let options = match protocol {
        Protocol::Tcp | Protocol::Http | Protocol::Auto => return None,
        Protocol::Http2 | Protocol::Grpc => {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            })
        }
    };
    Some(HttpProtocolOptions {
        upstream_protocol_options: Some(options),
        ..Default::default()
    })
}

/// The cluster's `typed_extension_protocol_options` for `protocol`.
pub(super) fn protocol_options(
    protocol: Protocol,
) -> std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any> {
    http_options(protocol)
        .map(|o| {
            (
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                pack_any(o),
            )
        })
        .into_iter()
        .collect()
}

/// A service cluster in one flavour.
fn build_cluster(
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

/// One endpoint of a service port, as EDS carries it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortEndpoint<'a> {
    locality: &'a str,
    address: &'a str,
    port: u16,
    weight: u32,
    sidecar: bool,
    draining: bool,
}

/// Endpoints of a service port, filtered by subset labels.
/// A sidecar endpoint whose service account the Service does not allow is
/// left out: clients would refuse its certificate anyway.
fn endpoints<'a>(
    model: &'a Model,
    service: &Object<ServiceSpec>,
    port: &ServicePort,
    subset: &BTreeMap<String, String>,
) -> Vec<PortEndpoint<'a>> {
    let (name, namespace) = (&service.metadata.name, &service.metadata.namespace);
    let allowed = &service.spec.service_accounts;
    let mut out: Vec<_> = model
        .entries
        .iter()
        .filter(|e| e.metadata.namespace == *namespace && e.spec.service == *name)
        .filter(|e| {
            !e.spec.sidecar || allowed.is_empty() || allowed.contains(&e.spec.service_account)
        })
        .filter(|e| {
            subset
                .iter()
                .all(|(k, v)| e.metadata.labels.get(k) == Some(v))
        })
        .filter_map(|e| {
            Some(PortEndpoint {
                locality: e.spec.locality.as_str(),
                address: e.spec.address.as_str(),
                port: *e.spec.ports.get(&port.name)?,
                weight: e.spec.weight,
                sidecar: e.spec.sidecar,
                draining: e.spec.draining,
            })
        })
        .collect();
    out.sort();
    // A registered sidecar and a static entry for the same address and port
    // are one endpoint.
    out.dedup_by_key(|e| (e.address, e.port));
    out
}

fn load_assignment(cluster: &str, endpoints: Vec<PortEndpoint<'_>>) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<PortEndpoint<'_>>> = BTreeMap::new();
    for e in endpoints {
        by_locality.entry(e.locality).or_default().push(e);
    }
    let localities = by_locality
        .into_iter()
        .map(|(locality, endpoints)| {
            let mut parts = locality.splitn(3, '/');
            let locality = Locality {
                region: parts.next().unwrap_or_default().to_owned(),
                zone: parts.next().unwrap_or_default().to_owned(),
                sub_zone: parts.next().unwrap_or_default().to_owned(),
            };
            let total: u32 = endpoints.iter().map(|e| e.weight).sum();
            LocalityLbEndpoints {
                locality: Some(locality),
                load_balancing_weight: Some(UInt32Value {
                    value: total.max(1),
                }),
                priority: 0,
                lb_endpoints: endpoints
                    .into_iter()
                    .map(|e| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(e.address, e.port)),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(UInt32Value { value: e.weight }),
                        health_status: if e.draining {
                            HealthStatus::Draining as i32
                        } else {
                            HealthStatus::Unknown as i32
                        },
                        metadata: e.sidecar.then(|| Metadata {
                            filter_metadata: [(
                                "envoy.transport_socket_match".to_owned(),
                                tls_match(),
                            )]
                            .into(),
                            ..Default::default()
                        }),
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: localities,
        ..Default::default()
    }
}

pub(super) fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The router, last of every HTTP filter chain.
pub(super) fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    }
}

/// An HTTP connection manager taking its routes `route` over ADS.
pub(super) fn rds_manager(stat_prefix: &str, route: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.to_owned(),
        })),
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    HttpFault::default(),
                ))),
                ..Default::default()
            },
            router(),
        ],
        ..Default::default()
    }
}

/// A route configuration sending every request of any host to `action`.
pub(super) fn catch_all(name: &str, action: RouteAction) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(action)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn api_listener(name: &str) -> Listener {
    let manager = rds_manager(name, name);
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    }
}

fn route_configuration(
    name: &str,
    service: &str,
    namespace: &str,
    port: u16,
    policy: Option<&TrafficPolicySpec>,
    mirror: Option<(String, u32)>,
) -> RouteConfiguration {
    let split: Vec<_> = policy
        .map(|p| p.split.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.weight > 0)
        .collect();
    let cluster_specifier = if split.is_empty() {
        route_action::ClusterSpecifier::Cluster(cluster_name(
            service,
            namespace,
            port,
            &BTreeMap::new(),
        ))
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .iter()
                .map(|t| weighted_cluster::ClusterWeight {
                    name: cluster_name(service, namespace, port, &t.subset),
                    weight: Some(UInt32Value { value: t.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let timeout = policy.and_then(|p| p.timeout.as_deref()).and_then(duration);
    let retry_policy = policy.and_then(|p| p.retries.as_ref()).map(|r| {
        let conditions: BTreeSet<&str> = if r.retry_on.is_empty() {
            ["connect-failure", "refused-stream", "unavailable"].into()
        } else {
            r.retry_on.iter().map(String::as_str).collect()
        };
        envoy_types::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: conditions.into_iter().collect::<Vec<_>>().join(","),
            num_retries: Some(UInt32Value { value: r.attempts }),
            per_try_timeout: r.per_try_timeout.as_deref().and_then(duration),
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 25_000_000,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout,
        // gRPC clients read the deadline from max_stream_duration (gRFC A31).
        max_stream_duration: timeout.map(|t| route_action::MaxStreamDuration {
            max_stream_duration: Some(t),
            ..Default::default()
        }),
        retry_policy,
        request_mirror_policies: mirror
            .into_iter()
            .map(|(cluster, percent)| route_action::RequestMirrorPolicy {
                cluster,
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(percentage(percent)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut routes = catch_all(name, action);
    if let Some(fault) = policy.and_then(|p| p.fault.as_ref()) {
        routes.virtual_hosts[0].routes[0].typed_per_filter_config =
            [(FAULT_FILTER.to_owned(), pack_any(http_fault(fault)))].into();
    }
    routes
}

/// The HTTP fault filter's name; every HTTP connection manager carries it
/// (doing nothing), so a route can turn faults on without a listener change.
const FAULT_FILTER: &str = "envoy.filters.http.fault";

fn percentage(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent,
        denominator: fractional_percent::DenominatorType::Hundred as i32,
    }
}

fn http_fault(fault: &Fault) -> HttpFault {
    HttpFault {
        delay: fault.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(percentage(d.percent)),
            fault_delay_secifier: duration(&d.fixed)
                .map(fault_delay::FaultDelaySecifier::FixedDelay),
        }),
        abort: fault.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(percentage(a.percent)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(a.http_status))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
pub fn test_config(yaml: &str) -> MeshConfig {
    translate(&Model::new(
        rampart_api::mesh::parse_documents("t", yaml).unwrap(),
        "example.org",
        "",
    ))
}

#[cfg(test)]
pub fn test_snapshot(yaml: &str) -> Snapshot {
    test_config(yaml).snapshot
}

/// Snapshots of successive models as the builder publishes them: each
/// reuses its predecessor's unchanged maps, and comes in two forms, with
/// its changes recorded (the fast paths) and without (full diffs).
#[cfg(test)]
pub fn test_sequence(models: &[String]) -> Vec<(Arc<Snapshot>, Arc<Snapshot>)> {
    let mut out: Vec<(Arc<Snapshot>, Arc<Snapshot>)> = Vec::new();
    for model in models {
        let mut next = test_snapshot(model);
        if let Some((previous, _)) = out.last() {
            next.reuse_unchanged(previous);
            let plain = Arc::new(next.clone());
            next.record_changes(previous);
            out.push((Arc::new(next), plain));
        } else {
            let first = Arc::new(next);
            out.push((first.clone(), first));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const MODEL: &str = include_str!("../../../docs/examples/echo.yaml");

    fn snapshot(yaml: &str) -> Snapshot {
        test_snapshot(yaml)
    }

    /// One resource of the snapshot, decoded.
    fn decoded<M: Message + Default>(s: &Snapshot, t: TypeUrl, name: &str) -> M {
        M::decode(s.get(t, name).unwrap().any.value.as_slice()).unwrap()
    }

    #[test]
    fn one_service_gives_clusters_endpoints_listeners_routes() {
        let s = snapshot(MODEL);
        // 2 ports x (whole service + 2 subsets) clusters and assignments.
        assert_eq!(s.count(TypeUrl::Cluster), 6);
        assert_eq!(s.count(TypeUrl::Endpoint), 6);
        assert_eq!(s.count(TypeUrl::Listener), 2);
        assert_eq!(s.count(TypeUrl::Route), 2);
        let cla = decoded::<ClusterLoadAssignment>(
            &s,
            TypeUrl::Endpoint,
            "outbound|50051|version=v1|echo.default",
        );
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(
            cla.endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1, "only the v1 entry");
        let all =
            decoded::<ClusterLoadAssignment>(&s, TypeUrl::Endpoint, "outbound|50051||echo.default");
        assert_eq!(all.endpoints[0].lb_endpoints.len(), 2);
        let route = decoded::<RouteConfiguration>(&s, TypeUrl::Route, "echo.default:50051");
        let Some(route::Action::Route(action)) = &route.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier
        else {
            panic!()
        };
        let weights: Vec<_> = w
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.unwrap().value))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("outbound|50051|version=v1|echo.default", 80),
                ("outbound|50051|version=v2|echo.default", 20)
            ]
        );
        assert_eq!(
            action.timeout,
            Some(PbDuration {
                seconds: 2,
                nanos: 0
            })
        );
    }

    #[test]
    fn a_retry_budget_goes_to_the_cluster_circuit_breakers() {
        let yaml = format!(
            "{MODEL}\n---\n{}",
            r#"apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: echo-retries, namespace: default}
spec:
  service: echo
  retries: {attempts: 2, budgetPercent: 25}
"#
        );
        let s = snapshot(&yaml);
        let cluster = decoded::<Cluster>(&s, TypeUrl::Cluster, "outbound|8080||echo.default");
        let budget = cluster.circuit_breakers.unwrap().thresholds[0]
            .retry_budget
            .unwrap();
        assert_eq!(budget.budget_percent.unwrap().value, 25.0);
        assert_eq!(budget.min_retry_concurrency.unwrap().value, 3);
    }

    #[test]
    fn faults_and_mirrors_are_set_on_the_route() {
        let yaml = format!(
            "{MODEL}\n---\n{}",
            r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: shadow, namespace: default}
spec:
  ports: [{name: http, port: 9090, protocol: http}]
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: echo-http, namespace: default}
spec:
  service: echo
  ports: [http]
  fault: {abort: {httpStatus: 418, percent: 25}, delay: {fixed: 50ms, percent: 10}}
  mirror: {service: shadow, percent: 5}
"#
        );
        let s = snapshot(&yaml);
        let route = decoded::<RouteConfiguration>(&s, TypeUrl::Route, "echo.default:8080");
        let r = &route.virtual_hosts[0].routes[0];
        let fault =
            HttpFault::decode(r.typed_per_filter_config[FAULT_FILTER].value.as_slice()).unwrap();
        let abort = fault.abort.unwrap();
        assert_eq!(
            abort.error_type,
            Some(fault_abort::ErrorType::HttpStatus(418))
        );
        assert_eq!(abort.percentage.unwrap().numerator, 25);
        assert_eq!(fault.delay.unwrap().percentage.unwrap().numerator, 10);
        let Some(route::Action::Route(action)) = &r.action else {
            panic!()
        };
        let mirror = &action.request_mirror_policies[0];
        assert_eq!(mirror.cluster, "outbound|9090||shadow.default");
        assert_eq!(
            mirror
                .runtime_fraction
                .as_ref()
                .unwrap()
                .default_value
                .unwrap()
                .numerator,
            5
        );
        // The other port's route has neither.
        let grpc = decoded::<RouteConfiguration>(&s, TypeUrl::Route, "echo.default:50051");
        assert!(
            grpc.virtual_hosts[0].routes[0]
                .typed_per_filter_config
                .is_empty()
        );
    }

    #[test]
    fn sidecars_of_a_service_account_it_does_not_allow_are_not_its_endpoints() {
        let yaml = MODEL
            .replace(
                "protocol: http}]",
                "protocol: http}]\n  serviceAccounts: [echo]",
            )
            .replace(
                "ports: {grpc: 50062, http: 18082}, serviceAccount: echo}",
                "ports: {grpc: 50062, http: 18082}, serviceAccount: intruder, sidecar: true}",
            );
        let s = snapshot(&yaml);
        let all: ClusterLoadAssignment =
            decoded(&s, TypeUrl::Endpoint, "outbound|50051||echo.default");
        let ports: Vec<_> = all.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| format!("{:?}", e.host_identifier))
            .collect();
        assert_eq!(ports.len(), 1, "only echo-v1: {ports:?}");
        assert!(ports[0].contains("50061"), "{ports:?}");
    }

    #[test]
    fn the_same_model_gives_the_same_bytes() {
        assert_eq!(snapshot(MODEL), snapshot(MODEL));
        let mut reordered: Vec<&str> = MODEL.split("---").collect();
        reordered.reverse();
        assert_eq!(
            snapshot(&reordered.join("\n---\n")),
            snapshot(MODEL),
            "document order does not matter"
        );
    }

    #[test]
    fn an_endpoint_change_touches_only_its_assignments() {
        let before = snapshot(MODEL);
        let after = snapshot(&MODEL.replace("50062", "50063"));
        for t in TypeUrl::ORDER {
            for (name, entry) in before.of(t) {
                let changed = after.get(t, name).unwrap() != entry;
                let expected = t == TypeUrl::Endpoint
                    && name.starts_with("outbound|50051|")
                    && !name.contains("v1");
                assert_eq!(changed, expected, "{} {name}", t.short());
            }
        }
    }
}
