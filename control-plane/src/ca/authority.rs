//! Where the CA's keys come from: roots the control plane owns (generated
//! on first start, kept in the data directory or a Kubernetes Secret, and
//! rotated by it), or a plug-in CA from PEM files.

use std::path::PathBuf;

use anyhow::Context;
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};

use super::root_store::RootStore;
use super::roots::RootSet;
use crate::files::{read_private_key, read_to_string};

/// Which CA to run.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Self-signed roots the control plane owns (`roots.rs`): in
    /// `<data-dir>/ca/`, or in a Kubernetes Secret when given one. With
    /// `intermediate`, the signing root signs an intermediate at start and
    /// the intermediate signs SVIDs.
    SelfSigned { intermediate: bool },
    /// A plug-in CA directory holding `ca-cert.pem` (signing certificate),
    /// `ca-key.pem`, `root-cert.pem` and optionally `cert-chain.pem`
    /// (intermediates between the signing certificate and the root).
    PlugIn(PathBuf),
}

/// The CA of roots the control plane owns, and the set it was built from.
pub async fn from_store(
    store: &RootStore,
    trust_domain: &TrustDomain,
    intermediate: bool,
    lifetimes: SvidLifetimes,
) -> anyhow::Result<(CertificateAuthority, RootSet)> {
    let set = store.open(trust_domain).await?;
    let ca = set
        .authority(trust_domain, intermediate, lifetimes)
        .context("loading the CA's roots")?;
    Ok((ca, set))
}

/// A plug-in CA from its directory.
pub fn plug_in(
    dir: &std::path::Path,
    trust_domain: &TrustDomain,
    lifetimes: SvidLifetimes,
) -> anyhow::Result<CertificateAuthority> {
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
