//! Where the CA's keys come from: generated on first start and kept in the
//! data directory (owner-only files), or a plug-in CA from PEM files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};

use super::roots::RootFiles;
use crate::files::{read_private_key, read_to_string};

/// Which CA to run.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Self-signed roots kept in `<data-dir>/ca/` (`roots.rs`), rotated by
    /// the control plane itself; with `intermediate`, the signing root signs
    /// an intermediate at start and the intermediate signs SVIDs.
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
            let files = RootFiles::in_data_dir(data_dir);
            files.create_first(trust_domain)?;
            let roots = files.load()?;
            files.authority(&roots, trust_domain, *intermediate, lifetimes)
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
