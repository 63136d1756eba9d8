//! A local SDS server (Envoy's Secret Discovery Service) on a unix socket,
//! so an Envoy beside this process gets the workload's certificate the way
//! istio-agent hands it over: `default` is the SVID and its key, `ROOTCA`
//! the trust bundle. Both are pushed again on every rotation, so Envoy
//! swaps certificates without dropping a connection. The key never leaves
//! the machine: the socket is the only way in, so protect it with file
//! permissions like the Workload API's.
//!
//! The protocol is state-of-the-world per stream: a request with new names
//! gets a reply; an ACK (same nonce, no error) gets nothing; a NACK is
//! logged and the version is not re-sent until the identity changes.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::util::pack_any;
use rampart_certs::{der_to_pem, key_to_pem};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::identity::Identity;

/// The workload's own certificate.
pub const DEFAULT: &str = "default";
/// The trust bundle.
pub const ROOTCA: &str = "ROOTCA";

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves `default` and `ROOTCA` from the current identity.
pub struct Sds {
    identity: watch::Receiver<Arc<Identity>>,
}

impl Sds {
    pub fn new(identity: watch::Receiver<Arc<Identity>>) -> Self {
        Self { identity }
    }
}

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text)),
        ..Default::default()
    })
}

/// The named secret from `identity`, if it is one this agent holds.
fn secret(name: &str, identity: &Identity) -> Option<Secret> {
    let r#type = match name {
        DEFAULT => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(
                identity
                    .svid
                    .chain()
                    .iter()
                    .map(|c| der_to_pem(c))
                    .collect(),
            ),
            private_key: inline(key_to_pem(identity.svid.private_key())),
            ..Default::default()
        }),
        ROOTCA => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(identity.bundle.to_pem()),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_owned(),
        r#type: Some(r#type),
    })
}

/// One SotW stream's state.
#[derive(Default)]
struct SecretStream {
    names: Vec<String>,
    nonce: u64,
    last_nonce: String,
}

impl SecretStream {
    fn response(&mut self, identity: &Identity) -> DiscoveryResponse {
        self.nonce += 1;
        self.last_nonce = self.nonce.to_string();
        DiscoveryResponse {
            // The serial names the identity: a rotation is a new version.
            version_info: identity.svid.serial_hex(),
            resources: self
                .names
                .iter()
                .filter_map(|n| secret(n, identity))
                .map(pack_any)
                .collect(),
            type_url: rampart_api::xds::TypeUrl::Secret.as_str().to_owned(),
            nonce: self.last_nonce.clone(),
            ..Default::default()
        }
    }

    /// A reply to `request`, if it needs one.
    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        identity: &Identity,
    ) -> Option<DiscoveryResponse> {
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                version = request.version_info,
                error = error.message,
                "Envoy rejected a secret"
            );
            return None;
        }
        let mut names = request.resource_names;
        names.sort();
        let stale = !request.response_nonce.is_empty() && request.response_nonce != self.last_nonce;
        if stale || (names == self.names && !self.last_nonce.is_empty()) {
            return None;
        }
        if let Some(unknown) = names.iter().find(|n| secret(n, identity).is_none()) {
            tracing::warn!(
                secret = unknown,
                "Envoy asked for a secret this agent does not hold ({DEFAULT}, {ROOTCA})"
            );
        }
        self.names = names;
        Some(self.response(identity))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = Streamed<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "use StreamSecrets (state of the world)",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut incoming = request.into_inner();
        let mut identity = self.identity.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut stream = SecretStream::default();
            loop {
                let reply = tokio::select! {
                    message = incoming.next() => match message {
                        Some(Ok(request)) => {
                            let current = identity.borrow().clone();
                            stream.on_request(request, &current)
                        }
                        _ => return,
                    },
                    changed = identity.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let current = identity.borrow_and_update().clone();
                        (!stream.names.is_empty()).then(|| stream.response(&current))
                    }
                };
                if let Some(reply) = reply
                    && tx.send(Ok(reply)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let mut stream = SecretStream::default();
        let identity = self.identity.borrow().clone();
        stream
            .on_request(request.into_inner(), &identity)
            .map(Response::new)
            .ok_or_else(|| Status::invalid_argument("name the secrets to fetch"))
    }
}
