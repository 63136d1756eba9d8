//! What operators are shown about a certificate (`meshctl check`,
//! `meshctl identity`): public facts only, never key material.

use ::time::OffsetDateTime;
use x509_parser::prelude::*;

/// The facts of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// Hex, as `openssl x509 -serial` prints it (without leading zeros).
    pub serial: String,
    /// The URI SANs (a SPIFFE ID for an SVID).
    pub uris: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

/// Reads the facts of a DER certificate.
pub fn describe(der: &[u8]) -> Result<CertificateInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let uris = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().replace(':', "").to_uppercase(),
        uris,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_an_svid_and_refuses_garbage() {
        let td = crate::TrustDomain::new("example.org").unwrap();
        let root = crate::CertificateAuthority::generate_root(&td).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(root.cert_pem.as_bytes()).unwrap();
        let info = describe(&der).unwrap();
        assert!(info.subject.contains("Rampart Root CA"), "{info:?}");
        assert!(info.is_ca);
        assert!(info.not_after > info.not_before);
        assert!(!info.serial.is_empty() && !info.serial.contains(':'));
        assert!(
            describe(b"not a certificate")
                .unwrap_err()
                .contains("not an X.509")
        );
    }
}
