//! The demo's applications, plain servers that know nothing of the mesh:
//! each runs as its own process (`meshctl demo app ...`) behind its own
//! rampart-proxy, so killing one is killing a real backend.
//! - backend: `GET /api/work` over HTTP and `Backend/Work` over gRPC, both
//!   answering with its version and the caller identity its sidecar
//!   verified (the `x-forwarded-client-cert` header).
//! - frontend: `GET /` calls the backend over HTTP and over gRPC through
//!   its sidecar, and answers with how each call went (JSON).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart_api::demo::backend_client::BackendClient;
use rampart_api::demo::backend_server::{Backend, BackendServer};
use rampart_api::demo::{WorkReply, WorkRequest};
use serde::{Deserialize, Serialize};

use crate::http::get;
use tokio::net::TcpListener;

/// The caller's SPIFFE ID from `x-forwarded-client-cert` (`...;URI=<id>`).
fn caller(xfcc: Option<&str>) -> String {
    xfcc.and_then(|v| v.split(';').find_map(|p| p.strip_prefix("URI=")))
        .unwrap_or("")
        .to_owned()
}

/// Serves HTTP/1.1 with `handle` on `listener`, one task per connection.
async fn serve_http<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: u16, value: &impl Serialize) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(value).unwrap_or_default(),
        )))
        .expect("a valid response")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    pub version: String,
    pub caller: String,
}

struct BackendService {
    version: String,
}

#[tonic::async_trait]
impl Backend for BackendService {
    async fn work(
        &self,
        request: tonic::Request<WorkRequest>,
    ) -> Result<tonic::Response<WorkReply>, tonic::Status> {
        let xfcc = request
            .metadata()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok());
        Ok(tonic::Response::new(WorkReply {
            version: self.version.clone(),
            caller_identity: caller(xfcc),
        }))
    }
}

/// The backend: HTTP on `http`, gRPC on `grpc`, until killed.
pub async fn backend(version: String, http: SocketAddr, grpc: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(http).await?;
    let grpc_listener = TcpListener::bind(grpc).await?;
    let v = version.clone();
    tokio::spawn(serve_http(listener, move |request| {
        let version = v.clone();
        async move {
            if request.uri().path().starts_with("/api/") {
                let xfcc = request
                    .headers()
                    .get("x-forwarded-client-cert")
                    .and_then(|v| v.to_str().ok());
                json(
                    200,
                    &Work {
                        version,
                        caller: caller(xfcc),
                    },
                )
            } else {
                json(404, &"try /api/work")
            }
        }
    }));
    tonic::transport::Server::builder()
        .add_service(BackendServer::new(BackendService { version }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
            grpc_listener,
        ))
        .await?;
    Ok(())
}

/// How one call from the frontend to the backend went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Call {
    /// The backend's version, when it answered.
    pub version: Option<String>,
    /// HTTP status, or gRPC status code as `grpc N`; or the failure.
    pub outcome: String,
    pub ok: bool,
    pub millis: f64,
}

/// The frontend's answer: one call over each protocol.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrontendReply {
    pub http: Call,
    pub grpc: Call,
}

/// The frontend: serves `GET /` on `listen`, calling the backend through
/// its sidecar's outbound listeners `backend_http` and `backend_grpc`.
pub async fn frontend(
    listen: SocketAddr,
    backend_http: SocketAddr,
    backend_grpc: SocketAddr,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{backend_grpc}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let listener = TcpListener::bind(listen).await?;
    serve_http(listener, move |_request| {
        let grpc = BackendClient::new(channel.clone());
        async move {
            let (http, grpc) = tokio::join!(call_http(backend_http), call_grpc(grpc));
            json(200, &FrontendReply { http, grpc })
        }
    })
    .await;
    Ok(())
}

async fn call_http(backend: SocketAddr) -> Call {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), get(backend, "/api/work")).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(Ok((200, body))) => match serde_json::from_slice::<Work>(&body) {
            Ok(work) => Call {
                version: Some(work.version),
                outcome: "200".to_owned(),
                ok: true,
                millis,
            },
            Err(_) => failed("200 without the backend's answer".to_owned(), millis),
        },
        Ok(Ok((status, _))) => failed(status.to_string(), millis),
        Ok(Err(e)) => failed(e, millis),
        Err(_) => failed("timeout".to_owned(), millis),
    }
}

async fn call_grpc(mut client: BackendClient<tonic::transport::Channel>) -> Call {
    let started = Instant::now();
    let result = client
        .work(WorkRequest {
            caller: "frontend".to_owned(),
        })
        .await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(reply) => Call {
            version: Some(reply.into_inner().version),
            outcome: "grpc 0".to_owned(),
            ok: true,
            millis,
        },
        Err(status) => failed(format!("grpc {}", status.code() as i32), millis),
    }
}

fn failed(outcome: String, millis: f64) -> Call {
    Call {
        version: None,
        outcome,
        ok: false,
        millis,
    }
}
