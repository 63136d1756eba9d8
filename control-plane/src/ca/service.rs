//! The gRPC CertificateService: checks the CSR, checks the proof, and only
//! then spends a join token and signs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_api::ca::certificate_service_server::CertificateService;
use rampart_api::ca::{SignRequest, SignResponse};
use rampart_certs::{CaError, CertificateAuthority, CsrError, IssuedSvid, SpiffeId, VerifiedCsr};
use tonic::{Request, Response, Status};

use super::{CaHandle, Proof};
use crate::k8s::{ReviewError, TokenReviewer};
use crate::metrics::Metrics;
use crate::store::{JoinTokenError, JoinTokens};

/// Serves `rampart.ca.v1.CertificateService`.
pub struct CaService {
    ca: CaHandle,
    tokens: JoinTokens,
    /// Checks ServiceAccount tokens; None outside Kubernetes.
    reviewer: Option<TokenReviewer>,
    metrics: Arc<Metrics>,
}

impl CaService {
    pub fn new(
        ca: CaHandle,
        tokens: JoinTokens,
        reviewer: Option<TokenReviewer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ca,
            tokens,
            reviewer,
            metrics,
        }
    }

    async fn sign_with_proof(
        &self,
        proof: &Proof,
        csr: &VerifiedCsr,
        ttl: Option<Duration>,
    ) -> Result<(IssuedSvid, Arc<CertificateAuthority>), Status> {
        // One CA for the whole call: the chain and the bundle returned
        // belong together even if a rotation steps meanwhile.
        let ca = self.ca.current();
        let issued = match proof {
            Proof::Svid(id) => sign(&ca, csr, id, ttl),
            Proof::JoinToken(token) => {
                let record = self.tokens.peek(token).map_err(token_status)?;
                let id = ca
                    .trust_domain()
                    .workload_id(&record.namespace, &record.service_account)
                    .map_err(|e| Status::internal(format!("stored identity is invalid: {e}")))?;
                // Refuse a CSR for someone else before spending the token.
                csr.check_identity(&id).map_err(csr_status)?;
                self.tokens.consume(token).await.map_err(token_status)?;
                sign(&ca, csr, &id, ttl)
            }
            Proof::ServiceAccountToken(token) => {
                let Some(reviewer) = &self.reviewer else {
                    return Err(Status::unauthenticated(
                        "unsupported bearer token: this control plane runs without --kubernetes, so it accepts only Rampart join tokens (rjt_...)",
                    ));
                };
                let (namespace, account) = reviewer.review(token).await.map_err(|e| match e {
                    ReviewError::Unavailable(_) => Status::unavailable(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                })?;
                let id = ca
                    .trust_domain()
                    .workload_id(&namespace, &account)
                    .map_err(|e| Status::permission_denied(format!("no SPIFFE ID for it: {e}")))?;
                csr.check_identity(&id).map_err(csr_status)?;
                sign(&ca, csr, &id, ttl)
            }
        }?;
        Ok((issued, ca))
    }
}

/// Signs and maps CA errors to gRPC statuses.
pub fn sign(
    ca: &CertificateAuthority,
    csr: &VerifiedCsr,
    id: &SpiffeId,
    ttl: Option<Duration>,
) -> Result<IssuedSvid, Status> {
    ca.sign(csr, id, ttl).map_err(|e| match e {
        CaError::Csr(e) => csr_status(e),
        other => Status::internal(other.to_string()),
    })
}

/// An issued SVID as the wire carries it: ID, DER chain, DER roots, expiry.
pub fn wire_parts(
    issued: &IssuedSvid,
    ca: &CertificateAuthority,
) -> (String, Vec<Vec<u8>>, Vec<Vec<u8>>, i64) {
    (
        issued.spiffe_id.to_string(),
        issued.chain.iter().map(|c| c.to_vec()).collect(),
        ca.bundle().roots().iter().map(|c| c.to_vec()).collect(),
        issued.not_after.unix_timestamp(),
    )
}

/// The status for a refused CSR.
pub fn csr_status(e: CsrError) -> Status {
    match e {
        CsrError::IdentityMismatch { .. } => Status::permission_denied(e.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn token_status(e: JoinTokenError) -> Status {
    match e {
        JoinTokenError::Store(e) => Status::internal(e.to_string()),
        other => Status::unauthenticated(other.to_string()),
    }
}

/// Requested TTL from the wire: 0 means default; negative is an error.
pub fn requested_ttl(seconds: i64) -> Result<Option<Duration>, Status> {
    match seconds {
        0 => Ok(None),
        s if s > 0 => Ok(Some(Duration::from_secs(s as u64))),
        _ => Err(Status::invalid_argument("ttl_seconds must not be negative")),
    }
}

/// Metric label of a status code.
pub fn result_label(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::InvalidArgument => "invalid_csr",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "error",
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let started = Instant::now();
        let proof = match Proof::from_request(&request) {
            Ok(proof) => proof,
            Err(status) => {
                tracing::warn!(reason = status.message(), "CSR refused");
                self.metrics.count_sign("none", "unauthenticated");
                return Err(status);
            }
        };
        let body = request.into_inner();
        let outcome = async {
            let ttl = requested_ttl(body.ttl_seconds)?;
            let csr = VerifiedCsr::from_der(&body.csr_der).map_err(csr_status)?;
            self.sign_with_proof(&proof, &csr, ttl).await
        }
        .await;
        match outcome {
            Ok((issued, ca)) => {
                self.metrics
                    .signing_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.count_sign(proof.kind(), "issued");
                tracing::info!(spiffe_id = %issued.spiffe_id, proof = proof.kind(), not_after = %issued.not_after, "issued SVID");
                Ok(Response::new(SignResponse {
                    spiffe_id: issued.spiffe_id.to_string(),
                    cert_chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
                    trust_bundle_der: ca.bundle().roots().iter().map(|c| c.to_vec()).collect(),
                    expires_at_unix: issued.not_after.unix_timestamp(),
                }))
            }
            Err(status) => {
                self.metrics.count_sign(proof.kind(), result_label(&status));
                // The reason, never the token.
                tracing::warn!(proof = proof.kind(), code = ?status.code(), reason = status.message(), "CSR refused");
                Err(status)
            }
        }
    }
}
