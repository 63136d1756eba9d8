//! Service discovery through the real kube-apiserver: Services and
//! EndpointSlices created with the Kubernetes API appear in the xDS a
//! connected client gets (ready endpoints as they are, terminating ones
//! that still serve as DRAINING), and what is deleted disappears after the
//! push.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Node, address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use prost::Message;
use rampart_tests::{ControlPlane, free_port, kube as k8s};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A state-of-the-world ADS client that ACKs everything and remembers the
/// newest response of each type.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
    names: std::collections::BTreeMap<&'static str, Vec<String>>,
    latest: std::collections::BTreeMap<String, DiscoveryResponse>,
}

impl Ads {
    async fn connect(addr: &str, subscriptions: &[(&'static str, Vec<String>)]) -> Self {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let ads = Self {
            tx,
            responses,
            names: subscriptions.iter().cloned().collect(),
            latest: Default::default(),
        };
        for (type_url, names) in subscriptions {
            ads.send(type_url, names.clone(), "", "").await;
        }
        ads
    }

    async fn send(&self, type_url: &str, names: Vec<String>, version: &str, nonce: &str) {
        let request = DiscoveryRequest {
            node: Some(Node {
                id: "discovery-test".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names: names,
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        self.tx.send(request).await.unwrap();
    }

    /// The newest response of `type_url` if it satisfies `done`, else the
    /// next one that does (reading and ACKing every response meanwhile).
    async fn until(
        &mut self,
        type_url: &str,
        mut done: impl FnMut(&DiscoveryResponse) -> bool,
    ) -> DiscoveryResponse {
        if let Some(latest) = self.latest.get(type_url).filter(|r| done(r)) {
            return latest.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = tokio::time::timeout_at(deadline, self.responses.message())
                .await
                .unwrap_or_else(|_| panic!("no {type_url} response as expected within 30 s"))
                .unwrap()
                .unwrap();
            let names = self.names[response.type_url.as_str()].clone();
            self.send(
                &response.type_url,
                names,
                &response.version_info,
                &response.nonce,
            )
            .await;
            self.latest
                .insert(response.type_url.clone(), response.clone());
            if response.type_url == type_url && done(&response) {
                return response;
            }
        }
    }
}

/// (address, port, draining) of each endpoint in an EDS response.
fn endpoints(response: &DiscoveryResponse) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    for any in &response.resources {
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                continue;
            };
            let Some(address::Address::SocketAddress(socket)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            let port = match socket.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            out.push((
                socket.address.clone(),
                port,
                e.health_status == HealthStatus::Draining as i32,
            ));
        }
    }
    out.sort();
    out
}

fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

#[tokio::test]
async fn services_and_endpoint_slices_reach_the_proxies_and_leave_with_them() {
    let client = k8s::client().await;
    let ns = k8s::namespace(&client, "discovery", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let xds = format!("127.0.0.1:{}", free_port());
    let _cp = ControlPlane::start(
        dir.path(),
        &[
            "--kubernetes",
            "--dev-plaintext-xds",
            &xds,
            "--xds-debounce",
            "20ms",
        ],
    )
    .await;

    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "web:1"}]}
    }))
    .unwrap();
    k8s::service_account(&client, &ns, "default").await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": ns}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}}
        ]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let cluster = format!("outbound|80||web.{ns}");
    let mut ads = Ads::connect(&xds, &[(CDS, vec![]), (EDS, vec![cluster.clone()])]).await;
    let wanted = vec![
        ("10.1.0.1".to_owned(), 8080, false),
        ("10.1.0.2".to_owned(), 8080, true),
    ];
    ads.until(EDS, |r| endpoints(r) == wanted).await;
    ads.until(CDS, |r| cluster_names(r).contains(&cluster))
        .await;

    // The slice goes: its endpoints go with it.
    slices
        .delete("web-abc", &DeleteParams::default())
        .await
        .unwrap();
    ads.until(EDS, |r| endpoints(r).is_empty()).await;
    // The Service goes: so does its cluster.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    ads.until(CDS, |r| !cluster_names(r).contains(&cluster))
        .await;
}
