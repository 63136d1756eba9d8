//! Where the CA's keys come from: generated on first start and kept in the
//! data directory (owner-only files), or a plug-in CA from PEM files.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};

use crate::files::{read_private_key, read_to_string, write_private};

/// Which CA to run.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A self-signed root kept in `<data-dir>/ca/`; with `intermediate`, the
    /// root signs an intermediate at start and the intermediate signs SVIDs.
    SelfSigned { intermediate: bool },
    /// A plug-in CA directory holding `ca-cert.pem` (signing certificate),
    /// `ca-key.pem`, `root-cert.pem` and optionally `cert-chain.pem`
    /// (intermediates between the signing certificate and the root).
    PlugIn(PathBuf),
    /// A root given as PEM (read from a Kubernetes Secret, never written to
    /// disk).
    Pem { cert: String, key: String },
}

/// Builds the CA, creating and persisting a root on first start.
pub fn load_or_create(
    data_dir: &Path,
    trust_domain: &TrustDomain,
    source: &CaSource,
    lifetimes: SvidLifetimes,
) -> anyhow::Result<CertificateAuthority> {
    match source {
        CaSource::SelfSigned { intermediate } => {
            let dir = data_dir.join("ca");
            let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
            if !cert_path.exists() {
                if key_path.exists() {
                    bail!(
                        "{} exists without {}; refusing to overwrite a CA key",
                        key_path.display(),
                        cert_path.display()
                    );
                }
                let root = CertificateAuthority::generate_root(trust_domain)?;
                write_private(&key_path, root.key_pem.as_bytes())?;
                write_private(&cert_path, root.cert_pem.as_bytes())?;
                tracing::info!(path = %cert_path.display(), "generated a new self-signed root CA");
            }
            let cert = read_to_string(&cert_path)?;
            let key = read_private_key(&key_path)?;
            let td = trust_domain.clone();
            let ca = if *intermediate {
                CertificateAuthority::with_generated_intermediate(td, &cert, &key, lifetimes)
            } else {
                CertificateAuthority::from_root_pem(td, &cert, &key, lifetimes)
            };
            ca.with_context(|| format!("loading the CA from {}", dir.display()))
        }
        CaSource::Pem { cert, key } => {
            CertificateAuthority::from_root_pem(trust_domain.clone(), cert, key, lifetimes)
                .context("loading the CA root from its Secret")
        }
        CaSource::PlugIn(dir) => {
            let file = |name: &str| read_to_string(&dir.join(name));
            let chain = if dir.join("cert-chain.pem").exists() {
                file("cert-chain.pem")?
            } else {
                String::new()
            };
            CertificateAuthority::from_pem(
                trust_domain.clone(),
                &file("ca-cert.pem")?,
                &read_private_key(&dir.join("ca-key.pem"))?,
                &chain,
                &file("root-cert.pem")?,
                lifetimes,
            )
            .with_context(|| format!("loading the plug-in CA from {}", dir.display()))
        }
    }
}
