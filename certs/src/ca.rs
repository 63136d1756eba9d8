//! The certificate authority: a self-signed root (optionally with an
//! intermediate that does the signing), or a plug-in CA loaded from PEM files.
//! It turns a verified CSR plus a proven identity into an X.509-SVID.

use std::time::Duration;

use ::time::OffsetDateTime;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::*;

use crate::csr::{CsrError, KeyKind, VerifiedCsr};
use crate::{SpiffeId, TrustBundle, TrustDomain};

/// Leaves are backdated this much so that peers whose clocks run a little
/// behind do not see a "not yet valid" certificate (istio/istio#32176).
pub const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(120);
/// Default SVID lifetime.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default cap on requested SVID lifetimes.
pub const DEFAULT_MAX_SVID_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a self-signed root.
pub const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Lifetime of a generated intermediate.
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the CA could not be built or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("the CA's signing chain expired at {0}; rotate the CA")]
    Expired(OffsetDateTime),
    #[error("plug-in CA: {0}")]
    PlugIn(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// How long SVIDs live.
#[derive(Debug, Clone, Copy)]
pub struct SvidLifetimes {
    /// Used when the caller asks for none.
    pub default_ttl: Duration,
    /// Longer requests are cut down to this.
    pub max_ttl: Duration,
}

impl Default for SvidLifetimes {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_SVID_TTL,
            max_ttl: DEFAULT_MAX_SVID_TTL,
        }
    }
}

/// An issued X.509-SVID, without its key (the key never leaves the workload).
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates; the root is in the bundle.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: OffsetDateTime,
}

/// The CA of one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    signer: Issuer<'static, KeyPair>,
    /// Signing certificate first, then any further intermediates; no root.
    chain: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
    /// The earliest notAfter in the signing chain, root included: no SVID
    /// may outlive it (istio/istio#18990).
    chain_not_after: OffsetDateTime,
    lifetimes: SvidLifetimes,
}

/// A freshly generated root (and its key, PEM) for the control plane to persist.
pub struct GeneratedRoot {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain`, valid 10 years.
    pub fn generate_root(trust_domain: &TrustDomain) -> Result<GeneratedRoot, CaError> {
        let key = KeyPair::generate()?;
        let params = ca_params(trust_domain, "Rampart Root CA", ROOT_TTL, None)?;
        let cert = params.self_signed(&key)?;
        Ok(GeneratedRoot {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA signing directly with a root whose certificate and key are PEM.
    pub fn from_root_pem(
        trust_domain: TrustDomain,
        root_cert_pem: &str,
        root_key_pem: &str,
        lifetimes: SvidLifetimes,
    ) -> Result<Self, CaError> {
        Self::from_pem(
            trust_domain,
            root_cert_pem,
            root_key_pem,
            "",
            root_cert_pem,
            lifetimes,
        )
    }

    /// A CA whose root signs a fresh intermediate (valid 1 year, capped by the
    /// root) that then signs every SVID; workloads receive the intermediate
    /// in their chain.
    pub fn with_generated_intermediate(
        trust_domain: TrustDomain,
        root_cert_pem: &str,
        root_key_pem: &str,
        lifetimes: SvidLifetimes,
    ) -> Result<Self, CaError> {
        let root_key = KeyPair::from_pem(root_key_pem)?;
        let root_der = CertificateDer::from_pem_slice(root_cert_pem.as_bytes())
            .map_err(|e| CaError::PlugIn(format!("root certificate: {e}")))?;
        let root_not_after = not_after_of(&root_der)?;
        let root_issuer = Issuer::from_ca_cert_der(&root_der, root_key)?;
        let key = KeyPair::generate()?;
        let params = ca_params(
            &trust_domain,
            "Rampart Intermediate CA",
            INTERMEDIATE_TTL,
            Some(root_not_after),
        )?;
        let cert = params.signed_by(&key, &root_issuer)?;
        Self::from_pem(
            trust_domain,
            &cert.pem(),
            &key.serialize_pem(),
            "",
            root_cert_pem,
            lifetimes,
        )
    }

    /// A plug-in CA: the signing certificate and its key, any intermediates
    /// between it and the root (may be empty), and the root(s). The chain is
    /// checked: the key must match the signing certificate, which must be a
    /// CA allowed to sign certificates, and each link must verify.
    pub fn from_pem(
        trust_domain: TrustDomain,
        signing_cert_pem: &str,
        signing_key_pem: &str,
        intermediates_pem: &str,
        roots_pem: &str,
        lifetimes: SvidLifetimes,
    ) -> Result<Self, CaError> {
        let signing_cert = CertificateDer::from_pem_slice(signing_cert_pem.as_bytes())
            .map_err(|e| CaError::PlugIn(format!("signing certificate: {e}")))?;
        let key = KeyPair::from_pem(signing_key_pem)
            .map_err(|e| CaError::PlugIn(format!("signing key: {e}")))?;
        let intermediates = parse_pem_certs(intermediates_pem, "intermediate chain")?;
        let mut roots = parse_pem_certs(roots_pem, "roots")?;
        if roots.is_empty() {
            return Err(CaError::PlugIn("no root certificate given".into()));
        }

        let mut chain = vec![signing_cert.clone()];
        chain.extend(intermediates);
        let anchor = check_signing_chain(&chain, &key, &roots)?;
        // The signing root first: workloads renew early when it changes.
        let signing_root = roots.remove(anchor);
        roots.insert(0, signing_root);
        let bundle = TrustBundle::new(trust_domain.clone(), roots);

        // Only the chain up to its own root caps what is signed; another
        // root trusted beside it may expire sooner.
        let mut chain_not_after = not_after_of(&bundle.roots()[0])?;
        for cert in &chain {
            chain_not_after = chain_not_after.min(not_after_of(cert)?);
        }
        // The signing cert may itself be a root: it is then not sent in chains.
        if bundle.roots().contains(&signing_cert) {
            chain.clear();
        }
        let signer = Issuer::from_ca_cert_der(&signing_cert, key)?;
        Ok(Self {
            trust_domain,
            signer,
            chain,
            bundle,
            chain_not_after,
            lifetimes,
        })
    }

    /// The same CA, with `roots` trusted after its own (a root rotation's
    /// other root). They only widen the bundle: what is signed is still
    /// capped by the signing chain alone.
    pub fn trusting_also(mut self, roots: &[CertificateDer<'static>]) -> Self {
        for root in roots {
            self.bundle.add_root(root.clone());
        }
        self
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots workloads must trust.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// When the signing chain (root included) first expires.
    pub fn chain_not_after(&self) -> OffsetDateTime {
        self.chain_not_after
    }

    /// When the earliest root expires.
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.bundle
            .roots()
            .iter()
            .filter_map(|r| not_after_of(r).ok())
            .min()
            .unwrap_or(self.chain_not_after)
    }

    /// Issues an X.509-SVID for `identity` (which the caller has proven) to the
    /// key in `csr`. `requested_ttl` of `None` means the default lifetime.
    pub fn sign(
        &self,
        csr: &VerifiedCsr,
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
    ) -> Result<IssuedSvid, CaError> {
        self.sign_with_hosts(csr, identity, requested_ttl, &[], &[])
    }

    /// Like [`sign`](Self::sign), adding DNS and IP SANs beside the SPIFFE ID
    /// (the X509-SVID spec allows them). Only for servers that clients reach
    /// with hostname verification, such as the control plane for gRPC's
    /// xDS channel credentials; never for workloads.
    pub fn sign_with_hosts(
        &self,
        csr: &VerifiedCsr,
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<IssuedSvid, CaError> {
        csr.check_identity(identity)?;
        if identity.trust_domain() != &self.trust_domain {
            return Err(CsrError::IdentityMismatch {
                requested: identity.to_string(),
                proven: format!("an identity in trust domain {}", self.trust_domain),
            }
            .into());
        }
        let now = OffsetDateTime::now_utc();
        let ttl = requested_ttl
            .unwrap_or(self.lifetimes.default_ttl)
            .min(self.lifetimes.max_ttl);
        let not_after = (now + ttl).min(self.chain_not_after);
        if not_after <= now {
            return Err(CaError::Expired(self.chain_not_after));
        }

        let mut params = CertificateParams::default();
        // Empty subject: rcgen then marks the SAN extension critical, as
        // RFC 5280 4.1.2.6 and the X509-SVID spec require.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if csr.key_kind() == KeyKind::Rsa {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = now - CLOCK_SKEW_GRACE;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(csr, &self.signer)?;

        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(IssuedSvid {
            spiffe_id: identity.clone(),
            chain,
            not_after,
        })
    }
}

/// A 128-bit random serial (RFC 5280 allows up to 20 octets; the DER
/// encoder adds a leading zero when the top bit is set).
fn random_serial() -> SerialNumber {
    let bytes: [u8; 16] = rand::random();
    SerialNumber::from_slice(&bytes)
}

fn ca_params(
    trust_domain: &TrustDomain,
    common_name: &str,
    ttl: Duration,
    cap: Option<OffsetDateTime>,
) -> Result<CertificateParams, CaError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain.as_str());
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // A signing certificate SHOULD carry the trust domain's SPIFFE ID (no path).
    params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = now - CLOCK_SKEW_GRACE;
    params.not_after = cap.map_or(now + ttl, |cap| (now + ttl).min(cap));
    params.use_authority_key_identifier_extension = cap.is_some();
    Ok(params)
}

fn parse_pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::PlugIn(format!("{what}: {e}")))
}

pub(crate) fn not_after_of(der: &CertificateDer<'_>) -> Result<OffsetDateTime, CaError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CaError::PlugIn(format!("unparseable certificate: {e}")))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Checks that `key` belongs to `chain[0]`, that every certificate in the
/// chain is a CA allowed to sign certificates, and that each is signed by the
/// next (the last by one of `roots`).
fn parse_cert<'a>(der: &'a CertificateDer<'static>) -> Result<X509Certificate<'a>, CaError> {
    Ok(X509Certificate::from_der(der)
        .map_err(|e| CaError::PlugIn(format!("unparseable certificate: {e}")))?
        .1)
}

fn check_signing_chain(
    chain: &[CertificateDer<'static>],
    key: &KeyPair,
    roots: &[CertificateDer<'static>],
) -> Result<usize, CaError> {
    let signing = parse_cert(&chain[0])?;
    if signing.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::PlugIn(
            "the signing key does not match the signing certificate".into(),
        ));
    }
    let parsed: Vec<_> = chain.iter().map(parse_cert).collect::<Result<_, _>>()?;
    for cert in &parsed {
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        let can_sign = cert
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|ku| ku.value.key_cert_sign());
        if !is_ca || !can_sign {
            return Err(CaError::PlugIn(format!(
                "{} is not a CA certificate with keyCertSign",
                cert.subject()
            )));
        }
    }
    for pair in parsed.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                CaError::PlugIn(format!(
                    "{} is not signed by {}",
                    pair[0].subject(),
                    pair[1].subject()
                ))
            })?;
    }
    let last = parsed.last().expect("chain is never empty");
    let parsed_roots: Vec<_> = roots.iter().map(parse_cert).collect::<Result<_, _>>()?;
    parsed_roots
        .iter()
        .position(|root| last.verify_signature(Some(root.public_key())).is_ok())
        .ok_or_else(|| {
            CaError::PlugIn(format!(
                "{} does not chain to any of the given roots",
                last.subject()
            ))
        })
}
