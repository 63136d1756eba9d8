//! The Aggregated Discovery Service over gRPC. Each stream runs the
//! [`SotwStream`] state machine in its own task; replies go out through a
//! small bounded channel, and snapshots arrive through a watch channel that
//! keeps only the newest, so a slow client never builds a queue: when it
//! catches up it gets the current state, not a backlog.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::snapshot::Snapshot;
use super::sotw::{Event, SotwStream};
use super::status::StreamRegistry;
use crate::ca::proof::caller_spiffe_id;
use crate::metrics::Metrics;

/// Replies waiting to be written per stream; more waits for the client.
const STREAM_BUFFER: usize = 4;

/// Serves ADS from the current snapshot.
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    registry: StreamRegistry,
}

impl AdsServer {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
        registry: StreamRegistry,
    ) -> Self {
        Self {
            snapshots,
            metrics,
            registry,
        }
    }
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let Some(peer) = caller_spiffe_id(&request) else {
            return Err(Status::unauthenticated("xDS needs a client SVID (mTLS)"));
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let incoming = request.into_inner();
        let snapshots = self.snapshots.clone();
        let metrics = self.metrics.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            metrics.xds_connected.inc();
            let id = registry.open(peer.to_string());
            tracing::info!(peer = %peer, stream = id, "xDS stream opened");
            let reason = run_sotw(
                incoming,
                tx,
                snapshots,
                &metrics,
                (&registry, id),
                &peer.to_string(),
            )
            .await;
            registry.close(id);
            metrics.xds_connected.dec();
            tracing::info!(peer = %peer, stream = id, reason, "xDS stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "delta ADS is not served yet; use state-of-the-world ADS",
        ))
    }
}

async fn run_sotw(
    mut incoming: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: &Metrics,
    (registry, id): (&StreamRegistry, u64),
    peer: &str,
) -> &'static str {
    let mut stream = SotwStream::default();
    loop {
        let responses = tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(request)) => {
                    let snapshot = snapshots.borrow_and_update().clone();
                    let (event, response) = stream.on_request(request, &snapshot);
                    log_event(event, metrics, peer, &stream);
                    response.into_iter().collect::<Vec<_>>()
                }
                Ok(None) => return "client closed the stream",
                Err(_) => return "stream error",
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return "control plane stopping";
                }
                let snapshot = snapshots.borrow_and_update().clone();
                stream.on_snapshot(&snapshot)
            }
        };
        registry.update(id, &stream);
        for response in responses {
            metrics.count_push(&response.type_url);
            if tx.send(Ok(response)).await.is_err() {
                return "client went away";
            }
        }
    }
}

fn log_event(event: Option<Event>, metrics: &Metrics, peer: &str, stream: &SotwStream) {
    let node = stream
        .node
        .as_ref()
        .map(|n| n.id.as_str())
        .unwrap_or_default();
    match event {
        Some(Event::Nack {
            type_url,
            version,
            message,
        }) => {
            metrics.count_nack(type_url.as_str());
            tracing::warn!(
                peer,
                node,
                r#type = type_url.short(),
                version,
                message,
                "xDS NACK: the client rejected this version and keeps its last good one"
            );
        }
        Some(Event::Ack { type_url, version }) => {
            tracing::debug!(peer, node, r#type = type_url.short(), version, "xDS ACK");
        }
        Some(Event::Stale { type_url }) => tracing::debug!(
            peer,
            node,
            r#type = type_url.short(),
            "stale nonce: subscription recorded, no reply"
        ),
        Some(Event::UnknownType(url)) => tracing::debug!(
            peer,
            node,
            type_url = url,
            "request for a type this server does not serve"
        ),
        None => {}
    }
}
