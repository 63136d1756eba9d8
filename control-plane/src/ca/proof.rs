//! How a caller proves who it is to the CA. The proof is read from the
//! request's metadata or its TLS session, never from the CSR.
//!
//! Bearer tokens are told apart by their prefix: Rampart join tokens start
//! with `rjt_`; any other bearer token is taken as a Kubernetes
//! ServiceAccount token, which only a control plane running with
//! `--kubernetes` can check (TokenReview, [`crate::k8s::token_review`]).

use rampart_certs::SpiffeId;
use tonic::{Request, Status};

use crate::peer::caller_spiffe_id;
use crate::store::join_tokens_prefix;

/// A claim of identity, not yet checked.
pub enum Proof {
    /// A one-time join token (the secret itself; never log it).
    JoinToken(String),
    /// A projected Kubernetes ServiceAccount token (never log it either).
    ServiceAccountToken(String),
    /// The caller's current SVID, already verified against the trust bundle
    /// by the TLS handshake.
    Svid(SpiffeId),
}

impl Proof {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Proof::JoinToken(_) => "join_token",
            Proof::ServiceAccountToken(_) => "service_account_token",
            Proof::Svid(_) => "svid",
        }
    }

    /// Reads the proof from a request: a bearer token wins over the TLS
    /// client certificate, so a workload can re-bootstrap with a new token.
    pub fn from_request<T>(request: &Request<T>) -> Result<Self, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let value = value
                .to_str()
                .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
            let token = value.strip_prefix("Bearer ").ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be \"Bearer <token>\"")
            })?;
            if token.is_empty() {
                return Err(Status::unauthenticated("the bearer token is empty"));
            }
            if token.starts_with(join_tokens_prefix()) {
                return Ok(Proof::JoinToken(token.to_owned()));
            }
            return Ok(Proof::ServiceAccountToken(token.to_owned()));
        }
        if let Some(id) = caller_spiffe_id(request) {
            return Ok(Proof::Svid(id));
        }
        Err(Status::unauthenticated(
            "no proof of identity: send a join token (authorization: Bearer rjt_...), a ServiceAccount token for audience rampart-ca, or connect with your current SVID",
        ))
    }
}
