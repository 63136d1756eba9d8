//! Certificate signing requests from workloads: parsed, signature checked, key
//! type and size checked, before the CA looks at anything else.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::SpiffeId;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not valid DER-encoded PKCS#10: {0}")]
    Malformed(String),
    #[error("CSR signature does not verify with the key it carries")]
    BadSignature,
    #[error(
        "CSR key type {0} is not accepted; use ECDSA P-256 (recommended), ECDSA P-384, Ed25519 or RSA >= 2048 bits"
    )]
    UnsupportedKey(String),
    #[error("CSR RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    RsaKeyTooSmall(usize),
    #[error("CSR asks for identity {requested}, but the caller proved {proven}")]
    IdentityMismatch { requested: String, proven: String },
}

/// The kinds of subject key the CA signs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

/// A CSR whose signature verified and whose key is acceptable.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    key_kind: KeyKind,
    /// The subjectPublicKey BIT STRING contents.
    public_key: Vec<u8>,
    /// URI SANs the CSR asked for (only ever compared, never issued).
    requested_uris: Vec<String>,
}

impl VerifiedCsr {
    /// Parses a DER CSR, verifies its self-signature and key.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("trailing bytes after the CSR".into()));
        }
        let spki = &csr.certification_request_info.subject_pki;
        let key_kind = key_kind(spki)?;
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        let mut requested_uris = Vec::new();
        if let Some(extensions) = csr.requested_extensions() {
            for ext in extensions {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            requested_uris.push((*uri).to_owned());
                        }
                    }
                }
            }
        }
        Ok(Self {
            key_kind,
            public_key: spki.subject_public_key.data.to_vec(),
            requested_uris,
        })
    }

    /// The key type of the CSR.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// Refuses the CSR if it names any identity other than `proven`.
    /// A CSR that names no URI at all is fine: the CA fills in the identity.
    pub fn check_identity(&self, proven: &SpiffeId) -> Result<(), CsrError> {
        let proven_str = proven.to_string();
        match self.requested_uris.iter().find(|uri| **uri != proven_str) {
            Some(other) => Err(CsrError::IdentityMismatch {
                requested: other.clone(),
                proven: proven_str,
            }),
            None => Ok(()),
        }
    }
}

impl PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        // Only the key part of the algorithm is used here: it becomes the
        // SubjectPublicKeyInfo algorithm identifier of the issued certificate.
        match self.key_kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    let parsed = spki
        .parsed()
        .map_err(|e| CsrError::Malformed(format!("subject public key: {e}")))?;
    match parsed {
        PublicKey::EC(_) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| CsrError::UnsupportedKey("EC without a named curve".into()))?;
            if curve == x509_parser::oid_registry::OID_EC_P256 {
                Ok(KeyKind::EcdsaP256)
            } else if curve == x509_parser::oid_registry::OID_NIST_EC_P384 {
                Ok(KeyKind::EcdsaP384)
            } else {
                Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
            }
        }
        PublicKey::RSA(rsa) => {
            let bits = rsa.key_size();
            if bits < MIN_RSA_BITS {
                Err(CsrError::RsaKeyTooSmall(bits))
            } else {
                Ok(KeyKind::Rsa)
            }
        }
        _ if *alg == x509_parser::oid_registry::OID_SIG_ED25519 => Ok(KeyKind::Ed25519),
        _ => Err(CsrError::UnsupportedKey(format!("algorithm {alg}"))),
    }
}
