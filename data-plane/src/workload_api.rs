//! The SPIFFE Workload API on a unix socket, so applications beside the proxy
//! can fetch their SVID and bundle with any standard SPIFFE client. Each
//! stream sends the full current state at once and again on every rotation.

use std::pin::Pin;
use std::sync::Arc;

use rampart_api::WORKLOAD_API_HEADER;
use rampart_api::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use rampart_api::workload::*;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::identity::Identity;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves the Workload API from the current identity.
pub struct WorkloadApi {
    identity: watch::Receiver<Arc<Identity>>,
}

impl WorkloadApi {
    pub fn new(identity: watch::Receiver<Arc<Identity>>) -> Self {
        Self { identity }
    }

    fn stream<T: Send + 'static>(&self, map: fn(&Identity) -> T) -> Streamed<T> {
        Box::pin(WatchStream::new(self.identity.clone()).map(move |identity| Ok(map(&identity))))
    }
}

/// The spec's anti-SSRF rule: every call carries `workload.spiffe.io: true`.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request
        .metadata()
        .get(WORKLOAD_API_HEADER)
        .map(|v| v.to_str())
    {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: {WORKLOAD_API_HEADER}: true"
        ))),
    }
}

fn x509_svid_response(identity: &Identity) -> X509svidResponse {
    let chain: Vec<u8> = identity
        .svid
        .chain()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: identity.svid.spiffe_id().to_string(),
            x509_svid: chain,
            x509_svid_key: identity.svid.private_key().secret_pkcs8_der().to_vec(),
            bundle: identity.bundle.concatenated_der(),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: Default::default(),
    }
}

fn x509_bundles_response(identity: &Identity) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: [(
            identity.bundle.trust_domain().id_string(),
            identity.bundle.concatenated_der(),
        )]
        .into(),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;
    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        Ok(Response::new(self.stream(x509_svid_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        Ok(Response::new(self.stream(x509_bundles_response)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("JWT-SVIDs are not issued yet"))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented("JWT bundles are not served yet"))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "JWT-SVID validation is not available yet",
        ))
    }
}
