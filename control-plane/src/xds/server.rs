//! The Aggregated Discovery Service, state-of-the-world and delta (its gRPC
//! framing is in `transport`).
//! Each stream runs its protocol state machine ([`SotwStream`] or
//! [`DeltaStream`]) in its own task; replies go out through a small bounded
//! channel, and snapshots arrive through a watch channel that keeps only the
//! newest, so a slow client never builds a queue: when it catches up it gets
//! the current state, not a backlog.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convergence::Convergence;
use super::delta::DeltaStream;
use super::snapshot::{Entry, Snapshot, TypeUrl};
use super::snapshot_builder::Published;
use super::sotw::{Event, SotwStream, TypeSummary};
use super::source::{NodeConfig, NodeSource};
use super::status::ConfigRequest;
use super::status::StreamRegistry;
use crate::metrics::Metrics;
use crate::peer::caller_spiffe_id;
use rampart_certs::SpiffeId;

/// Replies waiting to be written per stream; more waits for the client.
const STREAM_BUFFER: usize = 4;

/// What the stream loop needs from a protocol variant.
pub trait Protocol: Default + Send {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    fn handle(
        &mut self,
        request: Self::Request,
        snapshot: &Arc<Snapshot>,
    ) -> (Option<Event>, Vec<Self::Response>);
    fn push(&mut self, snapshot: &Arc<Snapshot>) -> Vec<Self::Response>;
    /// Whether `request` stays within `limits`; the stream ends if not.
    fn check(&self, request: &Self::Request) -> Result<(), String>;
    fn type_url(response: &Self::Response) -> &str;
    fn request_node(request: &Self::Request) -> Option<&Node>;
    fn node(&self) -> Option<&Node>;
    fn summary(&self) -> Vec<TypeSummary<'_>>;
    fn served<'a>(&self, view: &'a Snapshot) -> Vec<(TypeUrl, &'a String, &'a Entry)>;
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
                snapshot: &Arc<Snapshot>,
            ) -> (Option<Event>, Vec<$response>) {
                let (event, response) = self.on_request(request, snapshot);
                (event, response.into_iter().collect())
            }
            fn push(&mut self, snapshot: &Arc<Snapshot>) -> Vec<$response> {
                self.on_snapshot(snapshot)
            }
            fn check(&self, request: &$request) -> Result<(), String> {
                <$stream>::check(self, request)
            }
            fn type_url(response: &$response) -> &str {
                &response.type_url
            }
            fn request_node(request: &$request) -> Option<&Node> {
                request.node.as_ref()
            }
            fn node(&self) -> Option<&Node> {
                self.node.as_ref()
            }
            fn served<'a>(&self, view: &'a Snapshot) -> Vec<(TypeUrl, &'a String, &'a Entry)> {
                <$stream>::served(self, view)
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
#[derive(Clone)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Published>>,
    metrics: Arc<Metrics>,
    registry: StreamRegistry,
    convergence: Arc<Convergence>,
    nodes: Arc<dyn NodeSource>,
    /// The identity of callers without a client certificate; None: they
    /// are refused (the default; only the dev plaintext listener sets it).
    anonymous: Option<SpiffeId>,
}

impl AdsServer {
    pub fn new(
        snapshots: watch::Receiver<Arc<Published>>,
        metrics: Arc<Metrics>,
        registry: StreamRegistry,
        nodes: Arc<dyn NodeSource>,
    ) -> Self {
        let convergence = Arc::new(Convergence::new(metrics.xds_convergence.clone()));
        Self {
            snapshots,
            metrics,
            registry,
            convergence,
            nodes,
            anonymous: None,
        }
    }

    /// The same server, treating callers without a certificate as `id`.
    pub fn anonymous_as(mut self, id: SpiffeId) -> Self {
        self.anonymous = Some(id);
        self
    }

    /// Starts serving one ADS stream; the replies come out of the returned
    /// channel (framed by `transport`).
    pub(super) fn serve<P: Protocol + 'static>(
        &self,
        request: Request<Streaming<P::Request>>,
        variant: &'static str,
    ) -> Result<Response<Replies<P::Response>>, Status> {
        let Some(peer) = caller_spiffe_id(&request).or_else(|| self.anonymous.clone()) else {
            return Err(Status::unauthenticated("xDS needs a client SVID (mTLS)"));
        };
        let peer_chain = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let incoming = request.into_inner();
        let snapshots = self.snapshots.clone();
        let metrics = self.metrics.clone();
        let registry = self.registry.clone();
        let convergence = self.convergence.clone();
        let nodes = self.nodes.clone();
        tokio::spawn(async move {
            metrics.xds_connected.inc();
            let (id, dumps) = registry.open(peer.to_string(), peer_chain, variant);
            tracing::info!(peer = %peer, stream = id, variant, "xDS stream opened");
            let context = StreamContext {
                metrics: &metrics,
                registry: &registry,
                convergence: &convergence,
                nodes: &*nodes,
                id,
                peer,
            };
            let reason = run::<P>(incoming, tx, snapshots, dumps, &context).await;
            nodes.leave(id);
            convergence.closed(id);
            registry.close(id);
            metrics.xds_connected.dec();
            tracing::info!(peer = %context.peer, stream = id, reason, "xDS stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What a stream loop reports to.
struct StreamContext<'a> {
    metrics: &'a Metrics,
    registry: &'a StreamRegistry,
    convergence: &'a Convergence,
    nodes: &'a dyn NodeSource,
    id: u64,
    peer: SpiffeId,
}

/// Whether every response sent has been answered (ACKed or NACKed).
fn all_answered(summary: &[TypeSummary<'_>]) -> bool {
    summary.iter().all(|(_, sent, acked, nack)| match sent {
        None => true,
        Some(sent) => {
            acked.is_some_and(|a| *a == sent.version)
                || nack.is_some_and(|n| n.version == sent.version)
        }
    })
}

async fn run<P: Protocol>(
    mut incoming: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
    mut snapshots: watch::Receiver<Arc<Published>>,
    mut dumps: mpsc::Receiver<ConfigRequest>,
    cx: &StreamContext<'_>,
) -> &'static str {
    let mut stream = P::default();
    // What this node is served; set by its first request.
    let mut view: Option<Box<dyn NodeConfig>> = None;
    // The newest generation pushed to this stream and not yet answered.
    let mut awaiting: Option<u64> = None;
    // The newest generation this stream was served from.
    let mut handled: Option<u64> = None;
    loop {
        let responses = tokio::select! {
            message = incoming.message() => match message {
                Ok(Some(request)) => {
                    // Peek, do not mark seen: a snapshot that arrived meanwhile
                    // must still wake the push branch for the other types.
                    let published = snapshots.borrow().clone();
                    let view = match &mut view {
                        Some(view) => view,
                        None => match cx.nodes.admit(P::request_node(&request), &cx.peer, cx.id, &published) {
                            Ok(admitted) => view.insert(admitted),
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return "node refused";
                            }
                        },
                    };
                    if let Err(why) = stream.check(&request) {
                        tracing::warn!(peer = %cx.peer, error = why, "xDS request refused; closing the stream");
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        return "request out of bounds";
                    }
                    let (event, responses) = stream.handle(request, &view.of(&published));
                    handled = handled.max(Some(published.generation));
                    log_event(event, cx.metrics, &cx.peer.to_string(), stream.node());
                    responses
                }
                Ok(None) => return "client closed the stream",
                Err(_) => return "stream error",
            },
            Some(reply) = dumps.recv() => {
                let published = snapshots.borrow().clone();
                let resources = match &mut view {
                    Some(view) => served(&stream, &view.of(&published)),
                    None => Vec::new(),
                };
                let _ = reply.send(resources);
                continue;
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return "control plane stopping";
                }
                let published = snapshots.borrow_and_update().clone();
                let Some(view) = &mut view else {
                    continue; // nothing subscribed yet
                };
                let responses = stream.push(&view.of(&published));
                handled = handled.max(Some(published.generation));
                if let (false, Some(accepted_at)) = (responses.is_empty(), published.accepted_at) {
                    cx.convergence.pushed(published.generation, accepted_at, cx.id);
                    awaiting = Some(published.generation);
                }
                responses
            }
        };
        let summary = stream.summary();
        let settled = responses.is_empty() && all_answered(&summary);
        let synced = handled.filter(|_| settled);
        cx.registry.update(cx.id, stream.node(), &summary, synced);
        if settled && let Some(generation) = awaiting.take() {
            cx.convergence.answered(cx.id, generation);
        }
        for response in responses {
            cx.metrics.count_push(P::type_url(&response));
            if tx.send(Ok(response)).await.is_err() {
                return "client went away";
            }
        }
    }
}

/// What `stream` is served from `view`, for `meshctl proxy-config`.
fn served<P: Protocol>(stream: &P, view: &Snapshot) -> Vec<rampart_api::admin::ProxyResource> {
    stream
        .served(view)
        .into_iter()
        .map(|(t, name, entry)| rampart_api::admin::ProxyResource {
            r#type: t.short().to_owned(),
            name: name.clone(),
            version: format!("{:016x}", entry.hash),
            type_url: entry.any.type_url.clone(),
            value: entry.any.value.clone(),
        })
        .collect()
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
