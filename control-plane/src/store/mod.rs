//! Where the control plane keeps its state. The embedded default is sled in
//! the data directory; the Kubernetes backend (CRDs) will sit beside it.
//! Every write that a caller is told about is flushed to disk first, so a
//! crash never loses an acknowledged change.

mod join_tokens;
mod mesh;

pub use mesh::{ApplyOutcome, MeshStore, SledMeshStore};

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
        self.db.flush_async().await?;
        Ok(())
    }
}
