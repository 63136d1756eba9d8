//! The admin credential: an SVID for `spiffe://<td>/ns/rampart-system/sa/rampart-admin`
//! written to `<data-dir>/admin/` (owner-only) so that `meshctl --data-dir`
//! can authenticate. It is re-issued at start when less than half its life
//! remains. Whoever can read these files is an admin: protect the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_certs::{CertificateAuthority, KeyAndCsr, VerifiedCsr, der_to_pem, key_to_pem};

use crate::files::write_private;

/// Lifetime of the admin credential (capped by the CA's maximum).
const ADMIN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Paths of the admin credential files.
pub struct AdminFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl AdminFiles {
    /// The files under `<data-dir>/admin/`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("admin");
        Self {
            cert_chain: dir.join("cert-chain.pem"),
            key: dir.join("key.pem"),
            bundle: dir.join("bundle.pem"),
        }
    }
}

/// Writes a fresh admin credential unless a valid one with more than half its
/// life left is already there.
pub fn write_admin_credential(data_dir: &Path, ca: &CertificateAuthority) -> anyhow::Result<()> {
    let files = AdminFiles::in_data_dir(data_dir);
    // The bundle may have changed (plug-in CA): always rewrite it.
    write_private(&files.bundle, ca.bundle().to_pem().as_bytes())?;
    if still_fresh(&files, ca) {
        return Ok(());
    }
    let id = rampart_certs::well_known::admin_id(ca.trust_domain());
    let request = KeyAndCsr::generate()?;
    let issued = ca.sign(
        &VerifiedCsr::from_der(&request.csr_der)?,
        &id,
        Some(ADMIN_TTL),
    )?;
    let chain: String = issued.chain.iter().map(|c| der_to_pem(c)).collect();
    write_private(&files.key, key_to_pem(&request.key).as_bytes())?;
    write_private(&files.cert_chain, chain.as_bytes())?;
    tracing::info!(path = %files.cert_chain.display(), "wrote the admin credential");
    Ok(())
}

/// Whether the credential on disk has more than half its life left and
/// chains to the root the CA signs with now (after a root rotation's
/// switch, the old one is soon no longer trusted).
fn still_fresh(files: &AdminFiles, ca: &CertificateAuthority) -> bool {
    let Ok(pem) = std::fs::read(&files.cert_chain) else {
        return false;
    };
    if !files.key.exists() {
        return false;
    }
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Ok(chain) = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() else {
        return false;
    };
    if rampart_certs::tls::verify_chain(&chain, &ca.bundle().signing_root()).is_err() {
        return false;
    }
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let validity = cert.validity();
    let (start, end) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    time::OffsetDateTime::now_utc().unix_timestamp() < start + (end - start) / 2
}
