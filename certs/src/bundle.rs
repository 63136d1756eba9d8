//! Trust bundles: the root certificates of a trust domain. A bundle holds any
//! number of roots so that a new root can be trusted before it signs anything
//! and the old one kept until nothing it signed is left (hands-free rotation).

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::TrustDomain;

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("trust bundle has no certificates")]
    Empty,
    #[error("trust bundle PEM: {0}")]
    Pem(String),
    #[error("trust bundle root rejected: {0}")]
    Root(String),
}

/// The roots of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle with the given roots (duplicates dropped, order kept).
    pub fn new(trust_domain: TrustDomain, roots: Vec<CertificateDer<'static>>) -> Self {
        let mut bundle = Self {
            trust_domain,
            roots: Vec::new(),
        };
        for root in roots {
            bundle.add_root(root);
        }
        bundle
    }

    /// Reads roots from PEM text.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(Self::new(trust_domain, roots))
    }

    /// Reads roots from PEM text, taking the trust domain from the first
    /// root's SPIFFE ID (`spiffe://<td>` URI SAN, as Rampart's CAs carry).
    pub fn from_pem_detect(pem: &[u8]) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        let first = roots.first().ok_or(BundleError::Empty)?;
        let td = trust_domain_of_ca(first).ok_or_else(|| {
            BundleError::Root(
                "the root has no spiffe://<trust-domain> URI SAN; give the trust domain explicitly"
                    .into(),
            )
        })?;
        Ok(Self::new(td, roots))
    }

    /// Adds a root unless it is already present.
    pub fn add_root(&mut self, root: CertificateDer<'static>) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, the one the CA signs with first (Rampart's convention:
    /// during a root rotation the order tells workloads when to renew).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle of the first root alone: the one the CA signs with now.
    pub fn signing_root(&self) -> TrustBundle {
        Self::new(
            self.trust_domain.clone(),
            self.roots.first().cloned().into_iter().collect(),
        )
    }

    /// All roots as PEM.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| der_to_pem(r)).collect()
    }

    /// All roots as concatenated DER (the Workload API's bundle format).
    pub fn concatenated_der(&self) -> Vec<u8> {
        self.roots.iter().flat_map(|r| r.iter().copied()).collect()
    }

    /// The roots as a rustls trust store.
    pub fn root_store(&self) -> Result<RootCertStore, BundleError> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .map_err(|e| BundleError::Root(e.to_string()))?;
        }
        Ok(store)
    }
}

/// The trust domain named by a CA certificate's `spiffe://<td>` URI SAN.
pub fn trust_domain_of_ca(der: &[u8]) -> Option<TrustDomain> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => TrustDomain::new(uri).ok(),
        _ => None,
    })
}

/// PEM-encodes one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// PEM-encodes a PKCS#8 private key. Write it only to owner-only files.
pub fn key_to_pem(key: &rustls_pki_types::PrivatePkcs8KeyDer<'_>) -> String {
    pem_encode("PRIVATE KEY", key.secret_pkcs8_der())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}
