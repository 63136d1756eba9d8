//! Service discovery from the API server: reflectors (a watch each, kept
//! in memory, never polled) on Services, EndpointSlices and Pods become mesh
//! Services and WorkloadEntries beside those in the store. Every change
//! bumps a revision, which the snapshot builder debounces like a store
//! change, so an endpoint change reaches the proxies through the same push
//! path as a `meshctl apply`.
//!
//! * A Service: its ports (protocol from `appProtocol`, else the port
//!   name's prefix `http-`/`http2-`/`grpc-`/`tcp-`, else detected), its
//!   cluster IPs (captured traffic to them goes to its cluster).
//! * An endpoint of an EndpointSlice: a WorkloadEntry with the Pod's
//!   labels and ServiceAccount, mTLS when the Pod has the sidecar. Ready
//!   endpoints take traffic; terminating ones that still serve are
//!   draining (no new requests); the rest are left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use rampart_api::inject::PROXY_CONTAINER;
use rampart_api::mesh::{
    API_VERSION, Metadata, Object, Protocol, ServicePort, ServiceSpec, WorkloadEntrySpec,
};
use tokio::sync::watch;

use super::reflect;

/// What the API server currently says, kept current in the background.
#[derive(Clone)]
pub struct Discovery {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    revision: watch::Receiver<u64>,
}

impl Discovery {
    /// Starts the watches, and returns once each has listed everything
    /// (so the first snapshot is not an empty mesh).
    pub async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let (tx, revision) = watch::channel(0);
        let tx = Arc::new(tx);
        let services = reflect(Api::<Service>::all(client.clone()), (), tx.clone());
        let slices = reflect(Api::<EndpointSlice>::all(client.clone()), (), tx.clone());
        let pods = reflect(Api::<Pod>::all(client), (), tx);
        for (kind, ready) in [
            ("Services", services.wait_until_ready().await),
            ("EndpointSlices", slices.wait_until_ready().await),
            ("Pods", pods.wait_until_ready().await),
        ] {
            ready.map_err(|e| anyhow::anyhow!("watching {kind}: {e}"))?;
        }
        Ok(Self {
            services,
            slices,
            pods,
            revision,
        })
    }

    /// Changes whenever anything watched does.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }

    /// Every pod, as last seen.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }

    /// The mesh Services and WorkloadEntries the cluster describes now.
    pub fn resources(&self) -> (Vec<Object<ServiceSpec>>, Vec<Object<WorkloadEntrySpec>>) {
        let services: Vec<Arc<Service>> = self.services.state();
        let slices: Vec<Arc<EndpointSlice>> = self.slices.state();
        let pods: BTreeMap<(String, String), Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter_map(|p| {
                let key = (p.metadata.namespace.clone()?, p.metadata.name.clone()?);
                Some((key, p))
            })
            .collect();
        to_mesh(&services, &slices, &pods)
    }
}

/// The pure part: Kubernetes objects to mesh resources.
pub fn to_mesh(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pods: &BTreeMap<(String, String), Arc<Pod>>,
) -> (Vec<Object<ServiceSpec>>, Vec<Object<WorkloadEntrySpec>>) {
    // Slices by (namespace, service), once: this runs on every rebuild.
    let mut slices_of: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if let (Some(namespace), Some(service)) = (&slice.metadata.namespace, service) {
            slices_of
                .entry((namespace.as_str(), service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let mut mesh_services = Vec::new();
    let mut entries = Vec::new();
    for service in services {
        let (Some(name), Some(namespace)) = (&service.metadata.name, &service.metadata.namespace)
        else {
            continue;
        };
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(ServicePort {
                    name: port_name(p.name.as_deref(), p.port)?,
                    port: u16::try_from(p.port).ok()?,
                    protocol: protocol(p.app_protocol.as_deref(), p.name.as_deref()),
                })
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let addresses = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .cloned()
            .collect();
        mesh_services.push(Object {
            api_version: API_VERSION.to_owned(),
            metadata: Metadata {
                name: name.clone(),
                namespace: namespace.clone(),
                labels: BTreeMap::new(),
            },
            spec: ServiceSpec {
                ports,
                service_accounts: Vec::new(),
                addresses,
            },
        });
        let of_service = slices_of.get(&(namespace.as_str(), name.as_str()));
        for slice in of_service.into_iter().flatten() {
            entries.extend(slice_entries(name, namespace, slice, pods));
        }
    }
    (mesh_services, entries)
}

fn slice_entries(
    service: &str,
    namespace: &str,
    slice: &EndpointSlice,
    pods: &BTreeMap<(String, String), Arc<Pod>>,
) -> Vec<Object<WorkloadEntrySpec>> {
    let ports: BTreeMap<String, u16> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = p.port?;
            Some((
                port_name(p.name.as_deref().filter(|n| !n.is_empty()), port)?,
                u16::try_from(port).ok()?,
            ))
        })
        .collect();
    let slice_name = slice.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        // Absent conditions mean "unknown", which Kubernetes reads as yes
        // for ready and serving, no for terminating.
        let ready = conditions.ready.unwrap_or(true);
        let serving = conditions.serving.unwrap_or(ready);
        let terminating = conditions.terminating.unwrap_or(false);
        if !serving || (!ready && !terminating) {
            continue;
        }
        // Addresses of one endpoint are fungible: the first one.
        let Some(address) = endpoint.addresses.first() else {
            continue;
        };
        let pod = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| pods.get(&(namespace.to_owned(), r.name.clone()?)));
        let name = pod
            .and_then(|p| p.metadata.name.clone())
            .unwrap_or_else(|| format!("{slice_name}-{i}"));
        let pod_spec = pod.and_then(|p| p.spec.as_ref());
        let sidecar = pod_spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == PROXY_CONTAINER)
        });
        out.push(Object {
            api_version: API_VERSION.to_owned(),
            metadata: Metadata {
                name,
                namespace: namespace.to_owned(),
                labels: pod
                    .and_then(|p| p.metadata.labels.clone())
                    .unwrap_or_default(),
            },
            spec: WorkloadEntrySpec {
                service: service.to_owned(),
                address: address.clone(),
                ports: ports.clone(),
                service_account: pod_spec
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".to_owned()),
                sidecar,
                weight: 1,
                locality: String::new(),
                draining: !ready,
            },
        });
    }
    out
}

/// A port's mesh name: its Kubernetes name, or `port-<n>` for the one
/// unnamed port a Service may have.
fn port_name(name: Option<&str>, port: i32) -> Option<String> {
    match name {
        Some(n) if !n.is_empty() => Some(n.to_owned()),
        _ => (port > 0).then(|| format!("port-{port}")),
    }
}

/// `appProtocol` first (the standard field), then Istio's port-name
/// convention, else detected on each connection.
fn protocol(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    let by_name = |p: &str| match p {
        "http" => Some(Protocol::Http),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "tcp" => Some(Protocol::Tcp),
        _ => None,
    };
    app_protocol
        .and_then(by_name)
        .or_else(|| {
            let name = name?;
            by_name(name.split_once('-').map_or(name, |(prefix, _)| prefix))
        })
        .unwrap_or(Protocol::Auto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service() -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIPs": ["10.96.0.10"], "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
                    {"name": "grpc-api", "port": 9090},
                    {"name": "dns", "port": 53, "protocol": "UDP"}
                ]}
            }))
            .unwrap(),
        )
    }

    fn slice() -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web-abc", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}, {"name": "grpc-api", "port": 9090}],
                "endpoints": [
                    {"addresses": ["10.1.0.1"], "conditions": {"ready": true},
                     "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
                    {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                    {"addresses": ["10.1.0.4"], "conditions": {"ready": false}}
                ]
            }))
            .unwrap(),
        )
    }

    fn pods() -> BTreeMap<(String, String), Arc<Pod>> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "version": "v2"}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}],
                     "initContainers": [{"name": "rampart-proxy", "restartPolicy": "Always"}]}
        }))
        .unwrap();
        [(("shop".into(), "web-1".into()), Arc::new(pod))].into()
    }

    #[test]
    fn services_keep_their_tcp_ports_with_protocols_and_addresses() {
        let (services, _) = to_mesh(&[service()], &[], &pods());
        let spec = &services[0].spec;
        let ports: Vec<_> = spec
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 80, Protocol::Http),
                ("grpc-api", 9090, Protocol::Grpc)
            ]
        );
        assert_eq!(spec.addresses, ["10.96.0.10"]);
    }

    #[test]
    fn ready_endpoints_serve_terminating_ones_drain_the_rest_are_gone() {
        let (_, entries) = to_mesh(&[service()], &[slice()], &pods());
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.spec.address.as_str(), e.spec.draining))
            .collect();
        assert_eq!(summary, [("10.1.0.1", false), ("10.1.0.2", true)]);
        let pod = &entries[0];
        assert_eq!(pod.metadata.name, "web-1");
        assert_eq!(pod.metadata.labels["version"], "v2");
        assert_eq!(pod.spec.service_account, "web");
        assert!(pod.spec.sidecar, "the pod has the sidecar: mTLS");
        assert_eq!(pod.spec.ports["http"], 8080);
        assert!(!entries[1].spec.sidecar, "no pod known: plaintext");
        assert_eq!(entries[1].metadata.name, "web-abc-1");
    }

    #[test]
    fn protocols_come_from_app_protocol_then_the_port_name() {
        assert_eq!(protocol(Some("kubernetes.io/h2c"), None), Protocol::Http2);
        assert_eq!(protocol(None, Some("http-web")), Protocol::Http);
        assert_eq!(protocol(None, Some("tcp")), Protocol::Tcp);
        assert_eq!(protocol(Some("mysql"), Some("db")), Protocol::Auto);
    }
}
