//! Where the control plane keeps its state. The embedded default is sled in
//! the data directory; in Kubernetes the mesh model is custom resources in
//! the API server ([`crate::k8s::mesh_store`]) and [`Mesh`] is either.
//! Every write that a caller is told about is flushed to disk first, so a
//! crash never loses an acknowledged change.

mod join_tokens;
mod mesh;

pub use mesh::{ApplyOutcome, MeshStore, SledMeshStore, selected};

pub use join_tokens::{JoinTokenError, JoinTokenRecord, JoinTokens, TOKEN_PREFIX};

/// The prefix every join token starts with.
pub fn join_tokens_prefix() -> &'static str {
    TOKEN_PREFIX
}

use std::path::Path;

/// Errors from the store itself (disk, corruption).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("Kubernetes API server: {0}")]
    Kubernetes(String),
}

/// The embedded store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Self { db })
    }

    /// The mesh model (open once: the handle carries the change revision).
    pub fn mesh(&self) -> Result<SledMeshStore, StoreError> {
        Ok(SledMeshStore::new(self.db.open_tree("mesh")?))
    }

    /// The tree of endpoints registered by connected sidecars.
    pub fn registrations(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("registrations")?)
    }

    /// The join-token table.
    pub fn join_tokens(&self) -> Result<JoinTokens, StoreError> {
        Ok(JoinTokens::new(self.db.open_tree("join_tokens")?))
    }
}

impl Store {
    /// Flushes everything to disk (on shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        flush(&self.db).await
    }
}

/// Waits until everything written to `tree` is on disk.
///
/// sled 0.34's own `flush_async` deadlocks when several run at once: each
/// waits on sled's small thread pool for a write that needs a thread of
/// that same pool (spacejam/sled#1308, fixed only on its unreleased main).
/// Found here as a hung control plane under 12 concurrent token
/// redemptions. A blocking `flush` on tokio's blocking pool leaves sled's
/// pool free to do the write.
pub async fn flush(tree: &sled::Tree) -> Result<(), StoreError> {
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || tree.flush())
        .await
        .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e))))??;
    Ok(())
}
