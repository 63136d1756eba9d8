//! ADS over gRPC with every response framed in its own buffer.
//!
//! tonic's generated server encodes all responses of a stream into one
//! buffer that keeps the capacity of the largest response it ever held: for
//! a proxy that takes the whole mesh that is a full CDS state, hundreds of
//! KB, kept for the life of the stream (measured: it was most of the
//! control plane's memory per proxy). Here each response is encoded into a
//! buffer of its exact size, handed to h2 and freed once written. Requests
//! are decoded by tonic as usual, and the stream logic is `AdsServer`'s.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body::Frame;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic_prost::ProstCodec;

use super::delta::DeltaStream;
use super::server::{AdsServer, Protocol};
use super::sotw::SotwStream;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// Requests larger than this are refused (a SotW request names every
/// resource it wants; 4 MiB is tens of thousands of names).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The ADS gRPC service, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub fn new(server: AdsServer) -> Self {
        Self { server }
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let response = match method {
            "StreamAggregatedResources" => {
                stream::<SotwStream, DiscoveryRequest, DiscoveryResponse>(&server, request, "sotw")
            }
            "DeltaAggregatedResources" => {
                stream::<DeltaStream, DeltaDiscoveryRequest, DeltaDiscoveryResponse>(
                    &server, request, "delta",
                )
            }
            other => Status::unimplemented(format!("{SERVICE}/{other} is not served")).into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}

/// Decodes the request stream with tonic, runs the stream, frames replies.
fn stream<P, Req, Resp>(
    server: &AdsServer,
    request: http::Request<Body>,
    variant: &'static str,
) -> http::Response<Body>
where
    P: Protocol<Request = Req, Response = Resp> + 'static,
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
{
    let (parts, body) = request.into_parts();
    let decoder = ProstCodec::<Resp, Req>::default().decoder();
    let incoming = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
    let request = tonic::Request::from_http(http::Request::from_parts(parts, incoming));
    match server.serve::<P>(request, variant) {
        Ok(replies) => {
            let mut response = http::Response::new(Body::new(Framed {
                replies: replies.into_inner(),
                done: false,
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The response body: one gRPC message frame per reply, then the status.
struct Framed<M> {
    replies: ReceiverStream<Result<M, Status>>,
    done: bool,
}

/// A gRPC message: uncompressed flag, big-endian length, the message.
fn frame<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    message
        .encode(&mut buf)
        .expect("a Vec with room for the message");
    Bytes::from(buf)
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    Frame::trailers(map)
}

impl<M: Message> http_body::Body for Framed<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        use tokio_stream::Stream;
        match Pin::new(&mut self.replies).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(Frame::data(frame(&message))))),
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(trailers(&status))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(trailers(&Status::ok("")))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
