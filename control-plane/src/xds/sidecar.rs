//! What a sidecar gets besides the shared resources: its inbound side.
//!
//! A sidecar says so in its node metadata (`rampart_api::xds::SidecarMetadata`).
//! Its namespace and service account are never taken from the metadata but
//! from the SVID it connected with. It then gets, per port, an inbound
//! listener terminating mTLS (certificate `default` from its local agent,
//! peers verified against `ROOTCA`), the RBAC filters of the authorization
//! policies that select its labels, and a cluster to the app; PERMISSIVE
//! adds a plaintext filter chain beside the TLS one. While it is connected
//! it is an endpoint of its service (see `discovery::registered`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ConfigSource, GrpcService, api_config_source, config_source, grpc_service,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteAction, route_action};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, common_tls_context, subject_alt_name_matcher,
    tls_parameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use rampart_api::mesh::{
    AuthorizationPolicySpec, MtlsMode, Object, Protocol, RateLimit, ServicePort, WorkloadEntrySpec,
};
use rampart_api::xds::SidecarMetadata;
use rampart_certs::SpiffeId;

use super::envoy_blocks::{ads, catch_all, protocol_options, router, socket, tls_socket};
use super::names::{DEFAULT_SECRET, ROOTCA};
use super::rbac;
use super::snapshot::{Entry, Resources, TypeUrl};
use super::timeouts::ConnectionTimeouts;

/// The cluster in a sidecar's bootstrap that reaches its local secret
/// agent (Istio's name for it, so existing bootstraps work).
pub const SDS_CLUSTER: &str = "sds-grpc";

/// What the translator leaves for building sidecar views.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarInputs {
    pub trust_domain: String,
    pub mtls: MtlsMode,
    /// Set on every listener the sidecars get.
    pub timeouts: ConnectionTimeouts,
    /// Sidecar HTTP listeners log each request (JSON on stdout).
    pub access_log: bool,
    /// The sidecar flavour of the service clusters (upstream mTLS).
    pub clusters: Arc<Resources>,
    /// Services by (namespace, name).
    pub services: BTreeMap<(String, String), ServiceInfo>,
    /// Authorization policies by namespace.
    pub authorization: BTreeMap<String, Vec<Object<AuthorizationPolicySpec>>>,
}

impl SidecarInputs {
    /// Keeps `previous`'s cluster map if it did not change.
    pub fn reuse_unchanged(&mut self, previous: &SidecarInputs) {
        if previous.clusters == self.clusters {
            self.clusters = previous.clusters.clone();
        }
    }
}

/// A service's ports, the identities allowed to serve it, and the names of
/// its resources (so a scoped view picks them without scanning the mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub ports: Vec<ServicePort>,
    pub service_accounts: Vec<String>,
    /// Local rate limits by port name (from its TrafficPolicy).
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// Cluster (and ClusterLoadAssignment) names.
    pub clusters: Vec<String>,
    /// RouteConfiguration names.
    pub routes: Vec<String>,
}

/// A sidecar, as its SVID and node metadata describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub namespace: String,
    pub service_account: String,
    /// The endpoint it fronts, if it serves a service.
    pub workload: Option<Workload>,
    /// `svc.ns` names it may call; None = every service.
    pub dependencies: Option<BTreeSet<String>>,
}

/// The endpoint a sidecar fronts.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The node id (the registered endpoint's name).
    pub name: String,
    pub service: String,
    pub address: IpAddr,
    /// Service port name -> where the sidecar listens for peers.
    pub ports: BTreeMap<String, u16>,
    /// Service port name -> where the app listens on loopback.
    pub app_ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub locality: String,
}

/// Why a node cannot be served as a sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("node metadata: {0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
}

impl Sidecar {
    /// The sidecar a node's metadata describes, with its identity from
    /// `peer`; `Ok(None)` if the node is not a sidecar.
    pub fn from_metadata(
        node_id: &str,
        metadata: &SidecarMetadata,
        peer: &SpiffeId,
    ) -> Result<Option<Sidecar>, SidecarError> {
        if !metadata.sidecar {
            return Ok(None);
        }
        let Some((namespace, service_account)) = peer.namespace_and_service_account() else {
            return Err(SidecarError::Forbidden(format!(
                "a sidecar connects with a workload SVID (spiffe://<trust domain>/ns/<namespace>/sa/<account>), not {peer}"
            )));
        };
        let workload = metadata.serves.as_ref().map(|serves| Workload {
            name: node_id.to_owned(),
            service: serves.service.clone(),
            address: serves.address,
            ports: serves.ports.clone(),
            app_ports: serves.app_ports.clone(),
            labels: metadata.labels.clone(),
            locality: metadata.locality.clone().unwrap_or_default(),
        });
        if workload.is_some() && node_id.is_empty() {
            return Err(SidecarError::Invalid(
                "a sidecar serving a service needs a node id".into(),
            ));
        }
        Ok(Some(Sidecar {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            workload,
            dependencies: metadata.dependencies.clone(),
        }))
    }

    /// Checks the workload against the model: a sidecar may only serve a
    /// service its identity is allowed to serve, and only its ports.
    pub fn check(&self, inputs: &SidecarInputs) -> Result<(), SidecarError> {
        let Some(workload) = &self.workload else {
            return Ok(());
        };
        let Some(service) = inputs
            .services
            .get(&(self.namespace.clone(), workload.service.clone()))
        else {
            // Not (yet) applied: nothing inbound until it is.
            return Ok(());
        };
        if !service.service_accounts.is_empty()
            && !service.service_accounts.contains(&self.service_account)
        {
            return Err(SidecarError::Forbidden(format!(
                "service account {:?} may not serve {}.{} (its serviceAccounts are {:?})",
                self.service_account, workload.service, self.namespace, service.service_accounts
            )));
        }
        // A pod names all its container ports, some of which (metrics, an
        // admin port) are not the service's: those are ignored, and only a
        // sidecar that serves none of the service's ports is refused.
        let (known, unknown): (Vec<&String>, Vec<&String>) = workload
            .ports
            .keys()
            .partition(|n| service.ports.iter().any(|p| p.name == **n));
        if known.is_empty() {
            return Err(SidecarError::Invalid(format!(
                "rampart.ports names {unknown:?}, none of which service {}.{} has (its ports are {:?})",
                workload.service,
                self.namespace,
                service.ports.iter().map(|p| &p.name).collect::<Vec<_>>()
            )));
        }
        if !unknown.is_empty() {
            tracing::warn!(sidecar = workload.name, service = %format!("{}.{}", workload.service, self.namespace), ignored = ?unknown, "rampart.ports names ports the service does not have; ignoring them");
        }
        Ok(())
    }

    /// The endpoint this sidecar registers while connected.
    pub fn endpoint(&self) -> Option<Object<WorkloadEntrySpec>> {
        let w = self.workload.as_ref()?;
        Some(Object {
            api_version: rampart_api::mesh::API_VERSION.to_owned(),
            metadata: rampart_api::mesh::Metadata {
                name: w.name.clone(),
                namespace: self.namespace.clone(),
                labels: w.labels.clone(),
            },
            spec: WorkloadEntrySpec {
                service: w.service.clone(),
                address: w.address.to_string(),
                ports: w.ports.clone(),
                service_account: self.service_account.clone(),
                sidecar: true,
                weight: 1,
                locality: w.locality.clone(),
                draining: false,
            },
        })
    }

    /// The names of `type_url` resources of the services this sidecar
    /// depends on; None if it did not narrow its dependencies.
    pub fn dependency_names<'a>(
        &'a self,
        inputs: &'a SidecarInputs,
        type_url: TypeUrl,
    ) -> Option<impl Iterator<Item = &'a String>> {
        let dependencies = self.dependencies.as_ref()?;
        Some(
            dependencies
                .iter()
                .filter_map(|d| {
                    let (service, namespace) = d.split_once('.')?;
                    inputs
                        .services
                        .get(&(namespace.to_owned(), service.to_owned()))
                })
                .flat_map(move |info| match type_url {
                    TypeUrl::Cluster | TypeUrl::Endpoint => info.clusters.iter(),
                    TypeUrl::Route => info.routes.iter(),
                    TypeUrl::Secret | TypeUrl::Listener => [].iter(),
                }),
        )
    }

    /// Inbound listeners and clusters (by name).
    pub fn inbound(&self, inputs: &SidecarInputs) -> (Resources, Resources) {
        let (mut listeners, mut clusters) = (Resources::new(), Resources::new());
        let Some(workload) = &self.workload else {
            return (listeners, clusters);
        };
        let Some(service) = inputs
            .services
            .get(&(self.namespace.clone(), workload.service.clone()))
            .filter(|s| {
                s.service_accounts.is_empty() || s.service_accounts.contains(&self.service_account)
            })
        else {
            return (listeners, clusters);
        };
        let policies = inputs
            .authorization
            .get(&self.namespace)
            .map(|p| rbac::selecting(p, &workload.labels))
            .unwrap_or_default();
        let fqdn = format!("{}.{}", workload.service, self.namespace);
        for port in &service.ports {
            let Some(&listen) = workload.ports.get(&port.name) else {
                continue;
            };
            let app = workload
                .app_ports
                .get(&port.name)
                .copied()
                .unwrap_or(port.port);
            let cluster = format!("inbound|{app}|{}|{fqdn}", port.name);
            clusters.insert(
                cluster.clone(),
                Entry::new(app_cluster(&cluster, app, port)),
            );
            let rules =
                |http| rbac::rules_for_port(&policies, port.port, http, &inputs.trust_domain);
            let name = format!("inbound|{listen}");
            let listener = inbound_listener(
                &name,
                (workload.address, listen),
                (port.protocol, service.rate_limits.get(&port.name)),
                &cluster,
                rules,
                inputs,
            );
            listeners.insert(name, Entry::new(listener));
        }
        (listeners, clusters)
    }
}

fn sds(name: &str, source: ConfigSource) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(source),
    }
}

/// The local agent that holds the workload's key.
fn agent() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
            ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: 2,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: SDS_CLUSTER.to_owned(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                set_node_on_first_message_only: true,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// TLS 1.3 only; the certificate `default`, peers verified against `ROOTCA`
/// and, if given, required to be one of `expected`.
pub(super) fn common_tls(expected: Option<&[String]>, alpn: &[&str]) -> CommonTlsContext {
    let sans = expected
        .unwrap_or_default()
        .iter()
        .map(|id| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(id.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds(DEFAULT_SECRET, agent())],
        alpn_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOTCA, ads())),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// The app behind the sidecar, on loopback.
fn app_cluster(name: &str, port: u16, service_port: &ServicePort) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket("127.0.0.1", port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: protocol_options(service_port.protocol),
        ..Default::default()
    }
}

/// The inbound listener of one service port: mTLS (and, PERMISSIVE, also
/// plaintext told apart by the TLS inspector) into the HTTP connection
/// manager or the TCP proxy. An `auto` port has both: HTTP for connections
/// that are HTTP (the ALPN under mTLS, the HTTP inspector in plaintext),
/// TCP for the rest.
fn inbound_listener(
    name: &str,
    (address, port): (IpAddr, u16),
    (protocol, rate_limit): (Protocol, Option<&RateLimit>),
    cluster: &str,
    rules: impl Fn(bool) -> Vec<envoy_types::pb::envoy::config::rbac::v3::Rbac>,
    inputs: &SidecarInputs,
) -> Listener {
    let permissive = inputs.mtls == MtlsMode::Permissive;
    let auto = protocol == Protocol::Auto;
    let stacks: &[bool] = match protocol {
        Protocol::Tcp => &[false],
        Protocol::Auto => &[true, false],
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => &[true],
    };
    let tls = DownstreamTlsContext {
        common_tls_context: Some(common_tls(None, &["h2", "http/1.1"])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    let mut chains = Vec::new();
    for &http in stacks {
        let filters = if http {
            vec![inbound_http(
                name,
                cluster,
                (&rules(true), rate_limit),
                inputs,
            )]
        } else {
            inbound_tcp(name, cluster, &rules(false), inputs)
        };
        let suffix = if auto && http { "-http" } else { "" };
        let matching = |transport: &str, protocols: &[&str]| {
            let m = FilterChainMatch {
                transport_protocol: transport.to_owned(),
                application_protocols: if auto && http {
                    protocols.iter().map(|p| (*p).to_owned()).collect()
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            (m != FilterChainMatch::default()).then_some(m)
        };
        chains.push(FilterChain {
            name: format!("mtls{suffix}"),
            filter_chain_match: matching(if permissive { "tls" } else { "" }, &["h2", "http/1.1"]),
            filters: filters.clone(),
            transport_socket: Some(tls_socket(pack_any(tls.clone()))),
            ..Default::default()
        });
        if permissive {
            chains.push(FilterChain {
                name: format!("plaintext{suffix}"),
                filter_chain_match: matching("raw_buffer", &["http/1.1", "h2c"]),
                filters,
                ..Default::default()
            });
        }
    }
    let mut listener_filters = Vec::new();
    if permissive || auto {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    if permissive && auto {
        listener_filters.push(http_inspector());
    }
    Listener {
        name: name.to_owned(),
        address: Some(socket(&address.to_string(), port)),
        filter_chains: chains,
        listener_filters,
        ..Default::default()
    }
}

/// Envoy's HTTP inspector: names plaintext HTTP/1.1 and HTTP/2 (`http/1.1`,
/// `h2c`) for `application_protocols` matching.
pub(super) fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            HttpInspector::default(),
        ))),
        ..Default::default()
    }
}

/// Network RBAC filters, then the TCP proxy to the app.
fn inbound_tcp(
    name: &str,
    cluster: &str,
    rules: &[envoy_types::pb::envoy::config::rbac::v3::Rbac],
    inputs: &SidecarInputs,
) -> Vec<Filter> {
    let mut filters: Vec<Filter> = rules
        .iter()
        .map(|r| Filter {
            name: "envoy.filters.network.rbac".to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(NetworkRbac {
                rules: Some(r.clone()),
                stat_prefix: format!("{name}."),
                ..Default::default()
            }))),
        })
        .collect();
    let mut proxy = TcpProxy {
        stat_prefix: name.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    inputs.timeouts.set_tcp(&mut proxy);
    if inputs.access_log {
        proxy.access_log = vec![super::access_log::tcp()];
    }
    filters.push(Filter {
        name: "envoy.filters.network.tcp_proxy".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    });
    filters
}

/// HTTP connection manager: RBAC filters, then the router to the app.
fn inbound_http(
    name: &str,
    cluster: &str,
    (rules, rate_limit): (
        &[envoy_types::pb::envoy::config::rbac::v3::Rbac],
        Option<&RateLimit>,
    ),
    inputs: &SidecarInputs,
) -> Filter {
    let mut http_filters: Vec<HttpFilter> = rules
        .iter()
        .map(|r| HttpFilter {
            name: "envoy.filters.http.rbac".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(HttpRbac {
                rules: Some(r.clone()),
                ..Default::default()
            }))),
            ..Default::default()
        })
        .collect();
    // After the policy, as Envoy's filter chain would run it: a denied
    // caller does not use up the allowance.
    if let Some(limit) = rate_limit {
        http_filters.push(rate_limit_filter(name, limit));
    }
    http_filters.push(router());
    let routes = catch_all(
        name,
        RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
            // Timeouts are the caller's to set (its outbound route).
            timeout: Some(envoy_types::pb::google::protobuf::Duration::default()),
            ..Default::default()
        },
    );
    let mut manager = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters,
        // The caller's identity, for the app (as Istio does).
        forward_client_cert_details: http_connection_manager::ForwardClientCertDetails::SanitizeSet
            as i32,
        set_current_client_cert_details: Some(
            http_connection_manager::SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    inputs.timeouts.set_http(&mut manager);
    if inputs.access_log {
        manager.access_log = vec![super::access_log::http()];
    }
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
    }
}

/// Envoy's local rate limit filter: a token bucket of `burst` tokens,
/// refilled `requests_per_second` a second, enforced for every request.
fn rate_limit_filter(name: &str, limit: &RateLimit) -> HttpFilter {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
    let all = || {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: DenominatorType::Hundred as i32,
            }),
            runtime_key: String::new(),
        })
    };
    let config = LocalRateLimit {
        stat_prefix: format!("{name}.rate_limit"),
        token_bucket: Some(TokenBucket {
            max_tokens: limit.burst.unwrap_or(limit.requests_per_second),
            tokens_per_fill: Some(UInt32Value {
                value: limit.requests_per_second,
            }),
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
        }),
        filter_enabled: all(),
        filter_enforced: all(),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.local_ratelimit".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rampart_api::xds::Serves;

    use super::*;
    use crate::xds::translate::test_config;

    const MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports:
  - {name: http, port: 8080, protocol: http}
  - {name: db, port: 5432, protocol: tcp}
  serviceAccounts: [web]
"#;

    fn peer(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("example.org".parse().unwrap(), &format!("/ns/{ns}/sa/{sa}")).unwrap()
    }

    /// Metadata of a sidecar serving `web` on the given (name, listen, app) ports.
    fn serving(ports: &[(&str, u16, Option<u16>)]) -> SidecarMetadata {
        SidecarMetadata {
            sidecar: true,
            serves: Some(Serves {
                service: "web".into(),
                address: "10.0.0.7".parse().unwrap(),
                ports: ports.iter().map(|(n, p, _)| (n.to_string(), *p)).collect(),
                app_ports: ports
                    .iter()
                    .filter_map(|(n, _, a)| Some((n.to_string(), (*a)?)))
                    .collect(),
            }),
            labels: [("version".to_owned(), "v1".to_owned())].into(),
            ..Default::default()
        }
    }

    fn sidecar(metadata: &SidecarMetadata, ns: &str, sa: &str) -> Sidecar {
        Sidecar::from_metadata("web-1", metadata, &peer(ns, sa))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_identity_comes_from_the_svid_and_a_plain_node_is_no_sidecar() {
        let plain = SidecarMetadata::default();
        assert_eq!(
            Sidecar::from_metadata("n", &plain, &peer("shop", "web")),
            Ok(None)
        );
        let s = sidecar(&serving(&[("http", 15001, None)]), "shop", "web");
        assert_eq!(
            (s.namespace.as_str(), s.service_account.as_str()),
            ("shop", "web")
        );
        let workload = s.workload.unwrap();
        assert_eq!(
            (workload.name.as_str(), workload.service.as_str()),
            ("web-1", "web")
        );
    }

    #[test]
    fn a_sidecar_needs_a_workload_svid_and_a_node_id_to_serve() {
        let control = SpiffeId::new("example.org".parse().unwrap(), "/rampart/dev").unwrap();
        let metadata = serving(&[("http", 15001, None)]);
        assert!(matches!(
            Sidecar::from_metadata("web-1", &metadata, &control),
            Err(SidecarError::Forbidden(_))
        ));
        assert!(matches!(
            Sidecar::from_metadata("", &metadata, &peer("shop", "web")),
            Err(SidecarError::Invalid(_))
        ));
    }

    #[test]
    fn only_an_allowed_account_serving_a_known_port_passes_the_check() {
        let inputs = test_config(MODEL).sidecars;
        let ok = sidecar(
            &serving(&[("http", 15001, None), ("metrics", 9090, None)]),
            "shop",
            "web",
        );
        assert_eq!(ok.check(&inputs), Ok(()), "an extra pod port is ignored");
        let stranger = sidecar(&serving(&[("http", 15001, None)]), "shop", "other");
        assert!(
            matches!(stranger.check(&inputs), Err(SidecarError::Forbidden(m)) if m.contains("may not serve web.shop"))
        );
        let no_port = sidecar(&serving(&[("metrics", 9090, None)]), "shop", "web");
        assert!(
            matches!(no_port.check(&inputs), Err(SidecarError::Invalid(m)) if m.contains("none of which"))
        );
        // A service not applied yet: nothing to check against, nothing served.
        let elsewhere = sidecar(&serving(&[("http", 15001, None)]), "other", "web");
        assert_eq!(elsewhere.check(&inputs), Ok(()));
        assert_eq!(
            elsewhere.inbound(&inputs),
            (Resources::new(), Resources::new())
        );
    }

    #[test]
    fn inbound_has_a_listener_and_an_app_cluster_per_served_port() {
        let inputs = test_config(MODEL).sidecars;
        let s = sidecar(
            &serving(&[("http", 15001, Some(8081)), ("db", 15002, None)]),
            "shop",
            "web",
        );
        let (listeners, clusters) = s.inbound(&inputs);
        let names = |r: &Resources| r.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&listeners), ["inbound|15001", "inbound|15002"]);
        // The app's own port where given, else the service port.
        assert_eq!(
            names(&clusters),
            ["inbound|5432|db|web.shop", "inbound|8081|http|web.shop"]
        );
        let listener = Listener::decode(listeners["inbound|15001"].any.value.as_slice()).unwrap();
        let address = listener.address.unwrap();
        assert!(format!("{address:?}").contains("10.0.0.7"));
        // An account the service does not allow gets no inbound side.
        let stranger = sidecar(&serving(&[("http", 15001, None)]), "shop", "other");
        assert_eq!(
            stranger.inbound(&inputs),
            (Resources::new(), Resources::new())
        );
    }

    #[test]
    fn the_endpoint_registered_is_the_sidecar_s_own() {
        let s = sidecar(&serving(&[("http", 15001, None)]), "shop", "web");
        let endpoint = s.endpoint().unwrap();
        assert_eq!(endpoint.metadata.name, "web-1");
        assert_eq!(endpoint.metadata.namespace, "shop");
        assert_eq!(endpoint.spec.address, "10.0.0.7");
        assert_eq!(endpoint.spec.service_account, "web");
        assert!(endpoint.spec.sidecar);
        assert_eq!(endpoint.metadata.labels["version"], "v1");
        let caller = Sidecar::from_metadata(
            "c",
            &SidecarMetadata {
                sidecar: true,
                ..Default::default()
            },
            &peer("shop", "client"),
        )
        .unwrap()
        .unwrap();
        assert!(caller.endpoint().is_none());
    }
}
