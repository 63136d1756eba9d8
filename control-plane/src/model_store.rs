//! Where the mesh model lives: the embedded sled store, or the API server
//! (`rampart.dev` custom resources) with `--kubernetes`. Above both, so
//! that neither knows of the other.

use rampart_api::mesh::{Kind, Resource, ResourceKey};

use crate::k8s::mesh_store::KubeMeshStore;
use crate::store::{ApplyOutcome, MeshStore, SledMeshStore, StoreError};

/// The mesh model's store: embedded, or the API server.
#[derive(Clone)]
pub enum Mesh {
    Embedded(SledMeshStore),
    Kubernetes(KubeMeshStore),
}

impl MeshStore for Mesh {
    async fn apply(
        &self,
        resources: &[Resource],
        dry_run: bool,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        match self {
            Mesh::Embedded(s) => s.apply(resources, dry_run).await,
            Mesh::Kubernetes(s) => s.apply(resources, dry_run).await,
        }
    }

    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError> {
        match self {
            Mesh::Embedded(s) => s.list(kind, namespace, name),
            Mesh::Kubernetes(s) => s.list(kind, namespace, name),
        }
    }

    async fn delete(&self, keys: &[ResourceKey]) -> Result<Vec<bool>, StoreError> {
        match self {
            Mesh::Embedded(s) => s.delete(keys).await,
            Mesh::Kubernetes(s) => s.delete(keys).await,
        }
    }

    fn revision(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Mesh::Embedded(s) => s.revision(),
            Mesh::Kubernetes(s) => s.revision(),
        }
    }
}
