//! Who is calling: the SPIFFE ID of a gRPC request's verified client
//! certificate. A leaf, shared by the CA, the admin API and the ADS server.

use rampart_certs::SpiffeId;
use rampart_certs::tls::peer_spiffe_id;
use tonic::Request;

/// The SPIFFE ID of the TLS client certificate, if one was presented (and
/// therefore verified against the bundle during the handshake).
pub fn caller_spiffe_id<T>(request: &Request<T>) -> Option<SpiffeId> {
    request
        .peer_certs()
        .and_then(|certs| peer_spiffe_id(&certs))
}
