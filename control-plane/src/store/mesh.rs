//! Mesh resources in sled: one tree, keyed `Kind/namespace/name`, values the
//! canonical JSON. Applies and deletes are single transactions flushed
//! before they are acknowledged, and every change bumps a revision that
//! watchers (the xDS translator) follow.

use std::sync::Arc;

use rampart_api::mesh::{Kind, Resource, ResourceKey};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use super::StoreError;

/// What applying did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    /// `created`, `configured` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// Where the mesh model is kept. The embedded store is sled; the Kubernetes
/// backend (CRDs in the API server) implements the same operations.
pub trait MeshStore: Send + Sync {
    /// Stores all of `resources` or none; returns what happened to each.
    fn apply(
        &self,
        resources: &[Resource],
        dry_run: bool,
    ) -> impl std::future::Future<Output = Result<Vec<ApplyOutcome>, StoreError>> + Send;
    /// Resources matching the filters (None = any), sorted by key.
    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError>;
    /// Deletes all of `keys` that exist, in one step; returns which existed.
    fn delete(
        &self,
        keys: &[ResourceKey],
    ) -> impl std::future::Future<Output = Result<Vec<bool>, StoreError>> + Send;
    /// A revision number that increases on every change.
    fn revision(&self) -> watch::Receiver<u64>;
}

/// Whether `key` passes a list's namespace and name filters (None = any;
/// a cluster-wide kind is in every namespace).
pub fn selected(key: &ResourceKey, namespace: Option<&str>, name: Option<&str>) -> bool {
    namespace.is_none_or(|ns| !key.kind.namespaced() || key.namespace == ns)
        && name.is_none_or(|n| key.name == n)
}

/// The sled-backed mesh store.
#[derive(Clone)]
pub struct SledMeshStore {
    tree: sled::Tree,
    revision: Arc<watch::Sender<u64>>,
}

impl SledMeshStore {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self {
            tree,
            revision: Arc::new(watch::channel(0).0),
        }
    }

    fn changed(&self) {
        self.revision.send_modify(|r| *r += 1);
    }
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

impl MeshStore for SledMeshStore {
    async fn apply(
        &self,
        resources: &[Resource],
        dry_run: bool,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let encoded: Vec<(String, String)> = resources
            .iter()
            .map(|r| (r.key().storage_key(), r.to_json()))
            .collect();
        let outcomes = unwrap_tx((&self.tree,).transaction(|(tree,)| {
            let mut outcomes = Vec::with_capacity(encoded.len());
            for (key, json) in &encoded {
                let old = tree.get(key.as_bytes())?;
                let outcome = match old {
                    None => ApplyOutcome::Created,
                    Some(old) if old.as_ref() == json.as_bytes() => ApplyOutcome::Unchanged,
                    Some(_) => ApplyOutcome::Configured,
                };
                if !dry_run && outcome != ApplyOutcome::Unchanged {
                    tree.insert(key.as_bytes(), json.as_bytes())?;
                }
                outcomes.push(outcome);
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(outcomes)
        }))?;
        if !dry_run && outcomes.iter().any(|o| *o != ApplyOutcome::Unchanged) {
            super::flush(&self.tree).await?;
            self.changed();
        }
        Ok(outcomes)
    }

    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError> {
        let prefix = kind.map(|k| format!("{k}/")).unwrap_or_default();
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(prefix.as_bytes()) {
            let (key, value) = entry?;
            let corrupt = |reason: String| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason,
            };
            let json = std::str::from_utf8(&value).map_err(|e| corrupt(e.to_string()))?;
            let resource = Resource::from_json(json).map_err(|e| corrupt(e.to_string()))?;
            if selected(&resource.key(), namespace, name) {
                out.push(resource);
            }
        }
        Ok(out)
    }

    async fn delete(&self, keys: &[ResourceKey]) -> Result<Vec<bool>, StoreError> {
        let storage_keys: Vec<String> = keys.iter().map(ResourceKey::storage_key).collect();
        let existed = unwrap_tx((&self.tree,).transaction(|(tree,)| {
            let mut existed = Vec::with_capacity(storage_keys.len());
            for key in &storage_keys {
                existed.push(tree.remove(key.as_bytes())?.is_some());
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(existed)
        }))?;
        if existed.iter().any(|e| *e) {
            super::flush(&self.tree).await?;
            self.changed();
        }
        Ok(existed)
    }

    fn revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}
