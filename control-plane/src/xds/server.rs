//! The Aggregated Discovery Service over gRPC, state-of-the-world and delta.
//! Each stream runs its protocol state machine ([`SotwStream`] or
//! [`DeltaStream`]) in its own task; replies go out through a small bounded
//! channel, and snapshots arrive through a watch channel that keeps only the
//! newest, so a slow client never builds a queue: when it catches up it gets
//! the current state, not a backlog.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::delta::DeltaStream;
use super::snapshot::{Snapshot, TypeUrl};
use super::sotw::{Event, Nack, Sent, SotwStream};
use super::status::StreamRegistry;
use crate::ca::proof::caller_spiffe_id;
use crate::metrics::Metrics;

/// Replies waiting to be written per stream; more waits for the client.
const STREAM_BUFFER: usize = 4;

/// Per type: last sent, last ACKed version, last NACK.
pub type TypeSummary<'a> = (
    TypeUrl,
    Option<&'a Sent>,
    Option<&'a String>,
    Option<&'a Nack>,
);

/// What the stream loop needs from a protocol variant.
pub trait Protocol: Default + Send {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    fn handle(
        &mut self,
        request: Self::Request,
        snapshot: &Snapshot,
    ) -> (Option<Event>, Vec<Self::Response>);
    fn push(&mut self, snapshot: &Snapshot) -> Vec<Self::Response>;
    fn type_url(response: &Self::Response) -> &str;
    fn node(&self) -> Option<&Node>;
    fn summary(&self) -> Vec<TypeSummary<'_>>;
}

/// Both state machines expose the same surface; one definition serves both.
macro_rules! impl_protocol {
    ($stream:ty, $request:ty, $response:ty) => {
        impl Protocol for $stream {
            type Request = $request;
            type Response = $response;
            fn handle(
                &mut self,
                request: $request,
                snapshot: &Snapshot,
            ) -> (Option<Event>, Vec<$response>) {
                let (event, response) = self.on_request(request, snapshot);
                (event, response.into_iter().collect())
            }
            fn push(&mut self, snapshot: &Snapshot) -> Vec<$response> {
                self.on_snapshot(snapshot)
            }
            fn type_url(response: &$response) -> &str {
                &response.type_url
            }
            fn node(&self) -> Option<&Node> {
                self.node.as_ref()
            }
            fn summary(&self) -> Vec<TypeSummary<'_>> {
                self.types
                    .iter()
                    .map(|(t, s)| {
                        (
                            *t,
                            s.sent.as_ref(),
                            s.acked_version.as_ref(),
                            s.nack.as_ref(),
                        )
                    })
                    .collect()
            }
        }
    };
}

impl_protocol!(SotwStream, DiscoveryRequest, DiscoveryResponse);
impl_protocol!(DeltaStream, DeltaDiscoveryRequest, DeltaDiscoveryResponse);

/// The outgoing half of a stream.
type Replies<R> = ReceiverStream<Result<R, Status>>;

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

    fn serve<P: Protocol + 'static>(
        &self,
        request: Request<Streaming<P::Request>>,
        variant: &'static str,
    ) -> Result<Response<Replies<P::Response>>, Status> {
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
            let id = registry.open(peer.to_string(), variant);
            tracing::info!(peer = %peer, stream = id, variant, "xDS stream opened");
            let reason = run::<P>(
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
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = Replies<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Replies<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.serve::<SotwStream>(request, "sotw")
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.serve::<DeltaStream>(request, "delta")
    }
}

async fn run<P: Protocol>(
    mut incoming: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: &Metrics,
    (registry, id): (&StreamRegistry, u64),
    peer: &str,
) -> &'static str {
    let mut stream = P::default();
    loop {
        let responses = tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(request)) => {
                    let snapshot = snapshots.borrow_and_update().clone();
                    let (event, responses) = stream.handle(request, &snapshot);
                    log_event(event, metrics, peer, stream.node());
                    responses
                }
                Ok(None) => return "client closed the stream",
                Err(_) => return "stream error",
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return "control plane stopping";
                }
                let snapshot = snapshots.borrow_and_update().clone();
                stream.push(&snapshot)
            }
        };
        registry.update(id, stream.node(), &stream.summary());
        for response in responses {
            metrics.count_push(P::type_url(&response));
            if tx.send(Ok(response)).await.is_err() {
                return "client went away";
            }
        }
    }
}

fn log_event(event: Option<Event>, metrics: &Metrics, peer: &str, node: Option<&Node>) {
    let node = node.map(|n| n.id.as_str()).unwrap_or_default();
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
        Some(Event::Stale { type_url }) => {
            tracing::debug!(
                peer,
                node,
                r#type = type_url.short(),
                "stale nonce: subscription recorded, no reply"
            )
        }
        Some(Event::UnknownType(url)) => {
            tracing::debug!(
                peer,
                node,
                type_url = url,
                "request for a type this server does not serve"
            )
        }
        None => {}
    }
}
