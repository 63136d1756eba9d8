//! X.509-SVIDs held by a workload: the certificate chain, the private key that
//! never leaves the process, the SPIFFE ID read from the leaf, and when to renew.

use std::sync::Arc;
use std::time::Duration;

use ::time::OffsetDateTime;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::*;

use crate::{SpiffeId, SpiffeIdError};

/// Why a certificate is not a usable X.509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("an X.509-SVID has exactly one URI SAN; this certificate has {0}")]
    UriSanCount(usize),
    #[error("URI SAN is not a workload SPIFFE ID: {0}")]
    BadId(#[from] SpiffeIdError),
    #[error("leaf certificate is a CA (basicConstraints cA=true) or lacks basicConstraints")]
    NotALeaf,
    #[error("leaf keyUsage must include digitalSignature and exclude keyCertSign and cRLSign")]
    KeyUsage,
    #[error("private key is not usable: {0}")]
    Key(String),
}

/// Reads the SPIFFE ID of a leaf SVID, enforcing the X509-SVID leaf rules:
/// exactly one URI SAN holding a SPIFFE ID with a path, basicConstraints
/// present with cA=false, keyUsage with digitalSignature and no CA bits.
pub fn spiffe_id_of_leaf(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    let id = SpiffeId::parse(uris[0])?;
    match cert
        .basic_constraints()
        .map_err(|e| SvidError::Parse(e.to_string()))?
    {
        Some(bc) if !bc.value.ca => {}
        _ => return Err(SvidError::NotALeaf),
    }
    match cert
        .key_usage()
        .map_err(|e| SvidError::Parse(e.to_string()))?
    {
        Some(ku)
            if ku.value.digital_signature()
                && !ku.value.key_cert_sign()
                && !ku.value.crl_sign() => {}
        _ => return Err(SvidError::KeyUsage),
    }
    Ok(id)
}

/// A workload's SVID with its private key.
#[derive(Clone)]
pub struct Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// When this process got the SVID. Renewal counts from here, not from
    /// notBefore, which the CA backdates for clock skew: otherwise a short
    /// SVID would look half-spent the moment it arrives.
    obtained_at: OffsetDateTime,
}

impl std::fmt::Debug for Svid {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Builds an SVID from its chain (leaf first) and PKCS#8 key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, SvidError> {
        let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
        let spiffe_id = spiffe_id_of_leaf(leaf)?;
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| SvidError::Parse(e.to_string()))?;
        let validity = cert.validity();
        Ok(Self {
            spiffe_id,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            obtained_at: OffsetDateTime::now_utc(),
            chain,
            key: Arc::new(key),
        })
    }

    /// Reads an SVID from PEM: the chain (leaf first) and a PKCS#8 key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, SvidError> {
        use rustls_pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidError::Parse(e.to_string()))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem)
            .map_err(|e| SvidError::Key(format!("expected a PKCS#8 PEM key: {e}")))?;
        Self::new(chain, key)
    }

    /// The identity.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        X509Certificate::from_der(&self.chain[0])
            .map(|(_, c)| c.raw_serial_as_string().replace(':', ""))
            .unwrap_or_default()
    }

    /// The PKCS#8 private key. Handle with care: never log or send it.
    pub fn private_key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }

    /// Start of validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// When to renew: at half of the remaining life (counted from when it was
    /// obtained), moved by up to ±5% so a fleet started together does not
    /// renew together.
    pub fn renewal_deadline(&self) -> OffsetDateTime {
        let jitter = rand::random_range(-0.05..=0.05);
        renewal_deadline(
            self.obtained_at.max(self.not_before),
            self.not_after,
            jitter,
        )
    }

    /// The chain and key as a rustls signing identity.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, SvidError> {
        let key = PrivateKeyDer::Pkcs8(self.key.clone_key());
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| SvidError::Key(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signer)))
    }
}

/// Half-life of `[not_before, not_after]` moved by `jitter` (a fraction of the
/// lifetime, e.g. 0.05 = 5% later).
pub fn renewal_deadline(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    jitter: f64,
) -> OffsetDateTime {
    let lifetime = (not_after - not_before).max(::time::Duration::ZERO);
    not_before + lifetime * (0.5 + jitter.clamp(-0.25, 0.25))
}

/// A fresh ECDSA P-256 key and a CSR for it. The CSR carries no identity:
/// the CA decides it from the proof the caller presents.
pub struct KeyAndCsr {
    pub key: PrivatePkcs8KeyDer<'static>,
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    /// Generates the key in memory and signs an empty-subject CSR with it.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        Self::for_key(&key)
    }

    /// A CSR for an existing key.
    pub fn for_key(key: &KeyPair) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(key)?;
        Ok(Self {
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            csr_der: csr.der().to_vec(),
        })
    }
}

/// Seconds until `t`, or zero if it has passed.
pub fn until(t: OffsetDateTime) -> Duration {
    (t - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO)
}
