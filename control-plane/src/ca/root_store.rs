//! Where the CA's roots are kept: files in the data directory
//! (standalone) or the CA Secret (a cluster's replicas share it).

use rampart_certs::TrustDomain;

use super::roots::{RootFiles, RootSet};
use super::secret_roots::SecretRoots;

/// Where the roots are kept.
pub enum RootStore {
    Files(RootFiles),
    Secret(Box<SecretRoots>),
}

impl RootStore {
    /// The stored roots, generating the first one on first start.
    pub async fn open(&self, trust_domain: &TrustDomain) -> anyhow::Result<RootSet> {
        match self {
            RootStore::Files(files) => {
                files.create_first(trust_domain)?;
                files.read()
            }
            RootStore::Secret(secret) => secret.open(trust_domain).await,
        }
    }

    /// The stored roots. Never creates any: roots gone from under a
    /// running control plane are an error, not a reason for a new root
    /// that nothing trusts.
    pub async fn read(&self) -> anyhow::Result<RootSet> {
        match self {
            RootStore::Files(files) => files.read(),
            RootStore::Secret(secret) => secret.read().await,
        }
    }

    /// Stores `set` in place of what is there: the roots it adds first, then
    /// the list (the switch), then the removal of what it no longer names.
    pub async fn write(&self, set: &RootSet) -> anyhow::Result<()> {
        match self {
            RootStore::Files(files) => files.write(set),
            RootStore::Secret(secret) => secret.write(set).await,
        }
    }
}
