//! A state-of-the-world ADS client for tests: subscribes, ACKs every
//! response, and waits for the configuration a test expects.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Node, address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A state-of-the-world ADS client that ACKs everything and remembers the
/// newest response of each type.
pub struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
    names: std::collections::BTreeMap<&'static str, Vec<String>>,
    latest: std::collections::BTreeMap<String, DiscoveryResponse>,
}

impl Ads {
    /// Over plaintext (a control plane's `--dev-plaintext-xds`).
    pub async fn connect(addr: &str, subscriptions: &[(&'static str, Vec<String>)]) -> Self {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self::over(channel, subscriptions).await
    }

    /// Over `channel` (e.g. mTLS with an SVID: `ControlPlane::channel`).
    pub async fn over(
        channel: tonic::transport::Channel,
        subscriptions: &[(&'static str, Vec<String>)],
    ) -> Self {
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
    pub async fn until(
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
pub fn endpoints(response: &DiscoveryResponse) -> Vec<(String, u32, bool)> {
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

pub fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}
