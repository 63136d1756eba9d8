//! A scripted control plane for rampart-proxy tests: a CA that signs the one
//! identity it was made for, and a delta ADS server whose responses the test
//! writes and whose requests (ACKs, NACKs, what a reconnecting proxy says it
//! holds) the test reads, over the same mTLS a real control plane speaks.
//! It is for what rampart-control never sends (a resource the proxy must
//! refuse) and for exact protocol steps; everything else is tested against
//! the real rampart-control.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use rampart_api::ca::certificate_service_server::{CertificateService, CertificateServiceServer};
use rampart_api::ca::{SignRequest, SignResponse};
use rampart_certs::tls::{ClientAuth, CurrentSvid, PeerPolicy, server_config};
use rampart_certs::well_known::control_plane_id;
use rampart_certs::{
    CertificateAuthority, KeyAndCsr, SpiffeId, Svid, SvidLifetimes, TrustDomain, VerifiedCsr,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long a test waits for the proxy's next step before failing.
const WAIT: Duration = Duration::from_secs(20);

/// The scripted control plane; stops when dropped.
pub struct ScriptedControlPlane {
    /// Where the proxy connects (`--control-plane`).
    pub addr: String,
    /// The CA root, PEM, in a file (`--trust-anchor`).
    pub trust_anchor: PathBuf,
    /// The same root, PEM (what a `ROOTCA` secret carries).
    pub root_pem: String,
    streams: mpsc::Receiver<AdsStream>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedControlPlane {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One ADS stream a proxy opened.
pub struct AdsStream {
    requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    nonce: u64,
}

impl AdsStream {
    /// The proxy's next request on this stream.
    pub async fn request(&mut self) -> DeltaDiscoveryRequest {
        match tokio::time::timeout(WAIT, self.requests.message()).await {
            Ok(Ok(Some(request))) => request,
            Ok(other) => panic!("the ADS stream ended: {other:?}"),
            Err(_) => panic!("no ADS request within {WAIT:?}"),
        }
    }

    /// The proxy's next request of `type_url` (others are skipped).
    pub async fn request_of(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        loop {
            let request = self.request().await;
            if request.type_url == type_url {
                return request;
            }
        }
    }

    /// Sends `resources` (name, version, message) of one type; returns the
    /// response's nonce, which the proxy's ACK or NACK names.
    pub async fn send(&mut self, type_url: &str, resources: Vec<(&str, &str, Any)>) -> String {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            nonce: nonce.clone(),
            system_version_info: format!("scripted-{nonce}"),
            resources: resources
                .into_iter()
                .map(|(name, version, resource)| Resource {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    resource: Some(resource),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.responses
            .send(Ok(response))
            .await
            .expect("the proxy's ADS stream is open");
        nonce
    }

    /// Ends the stream from the server's side (the proxy reconnects).
    pub async fn close(self) {
        let _ = self
            .responses
            .send(Err(Status::unavailable("scripted: stream closed")))
            .await;
    }
}

impl ScriptedControlPlane {
    /// Starts it for workloads of `identity` (every CSR is signed for it),
    /// with its files in `dir`.
    pub async fn start(dir: &Path, identity: &str) -> ScriptedControlPlane {
        let td: TrustDomain = "cluster.local".parse().unwrap();
        let root = CertificateAuthority::generate_root(&td).unwrap();
        let ca = CertificateAuthority::from_root_pem(
            td.clone(),
            &root.cert_pem,
            &root.key_pem,
            SvidLifetimes::default(),
        )
        .unwrap();
        // The server's own SVID, as rampart-control's: the proxy accepts
        // nothing else on the other end.
        let own = KeyAndCsr::generate().unwrap();
        let csr = VerifiedCsr::from_der(&own.csr_der).unwrap();
        let issued = ca
            .sign(
                &csr,
                &control_plane_id(&td),
                Some(Duration::from_secs(3600)),
            )
            .unwrap();
        let svid = Svid::new(issued.chain, own.key).unwrap();
        let tls = server_config(
            CurrentSvid::new(&svid).unwrap(),
            ca.bundle(),
            ClientAuth::Optional(PeerPolicy::TrustDomain(td.clone())),
        )
        .unwrap();
        let trust_anchor = dir.join("scripted-root.pem");
        std::fs::write(&trust_anchor, &root.cert_pem).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let (connections, incoming) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, connections) = (acceptor.clone(), connections.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = connections.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                });
            }
        });
        let (streams_tx, streams) = mpsc::channel(8);
        let signer = Signer {
            ca: Arc::new(ca),
            identity: identity.parse().expect("a SPIFFE ID"),
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(CertificateServiceServer::new(signer))
                .add_service(AggregatedDiscoveryServiceServer::new(Ads {
                    streams: streams_tx,
                }))
                .serve_with_incoming(ReceiverStream::new(incoming))
                .await;
        });
        ScriptedControlPlane {
            addr,
            trust_anchor,
            root_pem: root.cert_pem,
            streams,
            server,
        }
    }

    /// The next ADS stream a proxy opens.
    pub async fn stream(&mut self) -> AdsStream {
        match tokio::time::timeout(WAIT, self.streams.recv()).await {
            Ok(Some(stream)) => stream,
            _ => panic!("no proxy opened an ADS stream within {WAIT:?}"),
        }
    }
}

/// Signs every CSR for one identity.
struct Signer {
    ca: Arc<CertificateAuthority>,
    identity: SpiffeId,
}

#[tonic::async_trait]
impl CertificateService for Signer {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let body = request.into_inner();
        let csr = VerifiedCsr::from_der(&body.csr_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = (body.ttl_seconds > 0).then(|| Duration::from_secs(body.ttl_seconds as u64));
        let issued = self
            .ca
            .sign(&csr, &self.identity, ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(SignResponse {
            spiffe_id: issued.spiffe_id.to_string(),
            cert_chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: self
                .ca
                .bundle()
                .roots()
                .iter()
                .map(|c| c.to_vec())
                .collect(),
            expires_at_unix: issued.not_after.unix_timestamp(),
        }))
    }
}

/// Hands each delta ADS stream to the test.
struct Ads {
    streams: mpsc::Sender<AdsStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("scripted: delta ADS only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (responses, rx) = mpsc::channel(16);
        let stream = AdsStream {
            requests: request.into_inner(),
            responses,
            nonce: 0,
        };
        self.streams
            .send(stream)
            .await
            .map_err(|_| Status::unavailable("scripted: the test is gone"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
