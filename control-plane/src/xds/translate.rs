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
//! The output is a pure function of the model: the same model gives the same
//! bytes, so unchanged resources keep their versions.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Locality, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    retry_policy::RetryBackOff, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use rampart_api::mesh::{
    LoadBalancer, Object, Protocol, Resource, ServicePort, ServiceSpec, TrafficPolicySpec,
    WorkloadEntrySpec,
};

use super::snapshot::{Snapshot, TypeUrl};

/// The parts of the model the translator reads.
#[derive(Debug, Default)]
pub struct Model {
    services: Vec<Object<ServiceSpec>>,
    entries: Vec<Object<WorkloadEntrySpec>>,
    policies: Vec<Object<TrafficPolicySpec>>,
}

impl Model {
    /// Sorts the stored resources into the model.
    pub fn new(resources: Vec<Resource>) -> Self {
        let mut model = Model::default();
        for resource in resources {
            match resource {
                Resource::Service(s) => model.services.push(s),
                Resource::WorkloadEntry(e) => model.entries.push(e),
                Resource::TrafficPolicy(p) => model.policies.push(*p),
                Resource::MeshConfig(_) | Resource::AuthorizationPolicy(_) => {}
            }
        }
        model
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

/// Translates the whole model.
pub fn translate(model: &Model) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for service in &model.services {
        let (name, namespace) = (&service.metadata.name, &service.metadata.namespace);
        for port in &service.spec.ports {
            let policy = model.policy_for(namespace, name, &port.name);
            let mut subsets = vec![BTreeMap::new()];
            subsets.extend(
                policy
                    .iter()
                    .flat_map(|p| p.split.iter().map(|t| t.subset.clone())),
            );
            for subset in &subsets {
                let cluster = cluster_name(name, namespace, port.port, subset);
                snapshot.insert(
                    TypeUrl::Cluster,
                    cluster.clone(),
                    build_cluster(&cluster, policy),
                );
                let endpoints = endpoints(model, namespace, name, port, subset);
                snapshot.insert(
                    TypeUrl::Endpoint,
                    cluster.clone(),
                    load_assignment(&cluster, endpoints),
                );
            }
            if port.protocol != Protocol::Tcp {
                let listener = listener_name(name, namespace, port.port);
                snapshot.insert(TypeUrl::Listener, listener.clone(), api_listener(&listener));
                snapshot.insert(
                    TypeUrl::Route,
                    listener.clone(),
                    route_configuration(&listener, name, namespace, port.port, policy),
                );
            }
        }
    }
    snapshot
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
    let d = rampart_api::duration::parse(text).ok()?;
    Some(PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn build_cluster(name: &str, policy: Option<&TrafficPolicySpec>) -> Cluster {
    // Proxyless gRPC NACKs a whole CDS response over an lb_policy it does not
    // know, and LEAST_REQUEST is one; it balances ROUND_ROBIN instead.
    let lb_policy = match policy.and_then(|p| p.load_balancer) {
        Some(LoadBalancer::RingHash) => cluster::LbPolicy::RingHash,
        _ => cluster::LbPolicy::RoundRobin,
    };
    let circuit_breakers =
        policy
            .and_then(|p| p.circuit_breakers.as_ref())
            .map(|cb| CircuitBreakers {
                thresholds: vec![circuit_breakers::Thresholds {
                    max_connections: cb.max_connections.map(|value| UInt32Value { value }),
                    max_pending_requests: cb
                        .max_pending_requests
                        .map(|value| UInt32Value { value }),
                    max_requests: cb.max_requests.map(|value| UInt32Value { value }),
                    max_retries: cb.max_retries.map(|value| UInt32Value { value }),
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
        lb_policy: lb_policy as i32,
        circuit_breakers,
        outlier_detection,
        ..Default::default()
    }
}

/// Endpoints of a service port, filtered by subset labels: (locality, address, port, weight).
fn endpoints<'a>(
    model: &'a Model,
    namespace: &str,
    service: &str,
    port: &ServicePort,
    subset: &BTreeMap<String, String>,
) -> Vec<(&'a str, &'a str, u16, u32)> {
    let mut out: Vec<_> = model
        .entries
        .iter()
        .filter(|e| e.metadata.namespace == namespace && e.spec.service == service)
        .filter(|e| {
            subset
                .iter()
                .all(|(k, v)| e.metadata.labels.get(k) == Some(v))
        })
        .filter_map(|e| {
            let target = *e.spec.ports.get(&port.name)?;
            Some((
                e.spec.locality.as_str(),
                e.spec.address.as_str(),
                target,
                e.spec.weight,
            ))
        })
        .collect();
    out.sort();
    out
}

fn load_assignment(cluster: &str, endpoints: Vec<(&str, &str, u16, u32)>) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<(&str, u16, u32)>> = BTreeMap::new();
    for (locality, address, port, weight) in endpoints {
        by_locality
            .entry(locality)
            .or_default()
            .push((address, port, weight));
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
            let total: u32 = endpoints.iter().map(|e| e.2).sum();
            LocalityLbEndpoints {
                locality: Some(locality),
                load_balancing_weight: Some(UInt32Value {
                    value: total.max(1),
                }),
                priority: 0,
                lb_endpoints: endpoints
                    .into_iter()
                    .map(|(address, port, weight)| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(address, port)),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(UInt32Value { value: weight }),
                        ..Default::default()
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

fn api_listener(name: &str) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
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
        ..Default::default()
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const MODEL: &str = include_str!("../../../docs/examples/echo.yaml");

    fn snapshot(yaml: &str) -> Snapshot {
        translate(&Model::new(
            rampart_api::mesh::parse_documents("t", yaml).unwrap(),
        ))
    }

    #[test]
    fn one_service_gives_clusters_endpoints_listeners_routes() {
        let s = snapshot(MODEL);
        // 2 ports x (whole service + 2 subsets) clusters and assignments.
        assert_eq!(s.count(TypeUrl::Cluster), 6);
        assert_eq!(s.count(TypeUrl::Endpoint), 6);
        assert_eq!(s.count(TypeUrl::Listener), 2);
        assert_eq!(s.count(TypeUrl::Route), 2);
        let cla = ClusterLoadAssignment::decode(
            s.get(TypeUrl::Endpoint, "outbound|50051|version=v1|echo.default")
                .unwrap()
                .any
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(
            cla.endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1, "only the v1 entry");
        let all = ClusterLoadAssignment::decode(
            s.get(TypeUrl::Endpoint, "outbound|50051||echo.default")
                .unwrap()
                .any
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(all.endpoints[0].lb_endpoints.len(), 2);
        let route = RouteConfiguration::decode(
            s.get(TypeUrl::Route, "echo.default:50051")
                .unwrap()
                .any
                .value
                .as_slice(),
        )
        .unwrap();
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
