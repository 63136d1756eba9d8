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

use std::collections::BTreeMap;
#[cfg(test)]
use std::sync::Arc;

use rampart_api::mesh::{
    AuthorizationPolicySpec, ConnectionSettings, MtlsMode, Object, Protocol, Resource, ServicePort,
    ServiceSpec, TrafficPolicySpec, WorkloadEntrySpec,
};

use super::sidecar::{ServiceInfo, SidecarInputs};
use super::snapshot::{Snapshot, TypeUrl};
use super::timeouts::ConnectionTimeouts;

use super::clusters::{Flavour, build_cluster};
use super::endpoints::{PortEndpoint, load_assignment};
/// The parts of the model the translator reads.
use super::names::{ROOTCA, cluster_name, listener_name, workload_id};
use super::routes::{api_listener, route_configuration};
use super::secrets::roots;

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
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    use prost::Message;

    use super::*;
    use crate::xds::envoy_blocks::FAULT_FILTER;

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
