//! rustls configurations for mutual TLS between SPIFFE identities: the peer
//! must present an X.509-SVID that chains to the trust bundle, and its SPIFFE
//! ID must be one the caller allows. Hostnames play no part; identities do.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{BundleError, SpiffeId, Svid, SvidError, TrustBundle, TrustDomain, spiffe_id_of_leaf};

/// The one crypto provider of the whole workspace.
///
/// TLS 1.3 suites are ordered AES-128-GCM first, as BoringSSL (Envoy) and
/// Go order them: every hop of a mixed mesh then agrees on the same suite,
/// and it costs less CPU per byte than AES-256-GCM.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Which peer identities a TLS endpoint accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any SVID of this trust domain.
    TrustDomain(TrustDomain),
    /// Only these SPIFFE IDs.
    OneOf(BTreeSet<SpiffeId>),
}

impl PeerPolicy {
    /// Whether `id` is acceptable.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            PeerPolicy::TrustDomain(td) => id.trust_domain() == td,
            PeerPolicy::OneOf(ids) => ids.contains(id),
        }
    }

    /// Only `id`.
    pub fn exactly(id: SpiffeId) -> Self {
        PeerPolicy::OneOf(BTreeSet::from([id]))
    }

    fn check(&self, der: &[u8]) -> Result<SpiffeId, Error> {
        let id = spiffe_id_of_leaf(der).map_err(invalid)?;
        if self.allows(&id) {
            Ok(id)
        } else {
            Err(invalid(PeerNotAllowed(id.to_string())))
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer SPIFFE ID {0} is not allowed here")]
struct PeerNotAllowed(String);

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The SPIFFE ID of a TLS peer, from the certificates it presented.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    spiffe_id_of_leaf(certs.first()?).ok()
}

/// Checks `chain` (leaf first) against `bundle` now, as a peer holding that
/// bundle would check it: e.g. that a new trust bundle still accepts this
/// workload's own SVID before it is put in use.
pub fn verify_chain(chain: &[CertificateDer<'_>], bundle: &TrustBundle) -> Result<(), TlsError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| TlsError::Rustls("the certificate chain is empty".into()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(bundle.root_store()?),
        crypto_provider(),
    )
    .build()
    .map_err(|e| TlsError::Rustls(e.to_string()))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(())
}

/// The workload's current SVID for rustls, swapped in place on renewal so that
/// new handshakes use the new certificate and open connections are untouched.
#[derive(Debug)]
pub struct CurrentSvid {
    key: RwLock<Arc<CertifiedKey>>,
}

impl CurrentSvid {
    /// Starts with `svid`.
    pub fn new(svid: &Svid) -> Result<Arc<Self>, SvidError> {
        Ok(Arc::new(Self {
            key: RwLock::new(svid.certified_key()?),
        }))
    }

    /// Replaces the SVID used by future handshakes.
    pub fn update(&self, svid: &Svid) -> Result<(), SvidError> {
        let key = svid.certified_key()?;
        *self.key.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.key.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a server's SVID: chain to the bundle, serverAuth, allowed ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    policy: PeerPolicy,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        self.policy.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies a client's SVID: chain to the bundle, clientAuth, allowed ID.
#[derive(Debug)]
struct SpiffeClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    policy: PeerPolicy,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Our clients have one identity; hints would only cost bytes.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        self.policy.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Whether a server demands a client SVID.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Every client must present an allowed SVID.
    Required(PeerPolicy),
    /// Clients may connect without a certificate (e.g. to bootstrap with a
    /// join token); a certificate that is presented must be valid and allowed.
    Optional(PeerPolicy),
}

/// A TLS 1.3 server config presenting `identity` and checking clients by SPIFFE ID.
pub fn server_config(
    identity: Arc<CurrentSvid>,
    bundle: &TrustBundle,
    clients: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(bundle.root_store()?);
    let (policy, mandatory) = match clients {
        ClientAuth::Required(p) => (p, true),
        ClientAuth::Optional(p) => (p, false),
    };
    let mut chain = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !mandatory {
        chain = chain.allow_unauthenticated();
    }
    let chain = chain.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier = Arc::new(SpiffeClientVerifier {
        chain,
        policy,
        mandatory,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client config that accepts only servers allowed by `server`,
/// presenting `identity` if given.
pub fn client_config(
    identity: Option<Arc<CurrentSvid>>,
    bundle: &TrustBundle,
    server: PeerPolicy,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: Arc::new(bundle.root_store()?),
        policy: server,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
