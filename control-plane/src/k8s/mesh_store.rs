//! The mesh model in the API server: each mesh resource is a custom
//! resource of its kind (`deploy/crds/rampart.dev.yaml`), so `kubectl apply`
//! and `meshctl apply` are two ways to the same objects, and control plane
//! replicas share them through etcd instead of each keeping its own.
//!
//! Reads come from reflectors (watch caches), and every watch event bumps
//! the revision the snapshot builder follows. A custom resource that the
//! CRD schema accepted but the model's checks refuse (e.g. split weights
//! that do not add up) is left out with a warning, as `meshctl apply` would
//! have refused it. Writes are server-side applies: all of them are first
//! sent as a dry run, and only if every one passes are they made, so a
//! refused document leaves nothing half-applied (another writer in between
//! can still interleave: the API server has no multi-object transactions).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use rampart_api::mesh::{
    AuthorizationPolicy, Kind, MeshConfig, Resource, ResourceKey, Service, TrafficPolicy,
    WorkloadEntry, parse_documents,
};
use rampart_api::policy::{SecurityPolicy, VulnerabilityReport};
use serde_json::json;
use tokio::sync::watch;

use super::reflect;
use crate::store::{ApplyOutcome, MeshStore, StoreError, selected};

/// Who owns the fields Rampart writes (server-side apply).
const FIELD_MANAGER: &str = "rampart";

/// The API resource of a mesh kind.
fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::MeshConfig => ApiResource::erase::<MeshConfig>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::WorkloadEntry => ApiResource::erase::<WorkloadEntry>(&()),
        Kind::TrafficPolicy => ApiResource::erase::<TrafficPolicy>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::SecurityPolicy => ApiResource::erase::<SecurityPolicy>(&()),
        Kind::VulnerabilityReport => ApiResource::erase::<VulnerabilityReport>(&()),
    }
}

/// Mesh resources as custom resources.
#[derive(Clone)]
pub struct KubeMeshStore {
    client: kube::Client,
    caches: Arc<BTreeMap<Kind, Store<DynamicObject>>>,
    revision: watch::Receiver<u64>,
}

impl KubeMeshStore {
    /// Starts a reflector per kind and returns once each has listed (the
    /// CRDs must be installed: a missing one is an error that says so).
    pub async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let (tx, revision) = watch::channel(0);
        let tx = Arc::new(tx);
        let mut caches = BTreeMap::new();
        for kind in Kind::ALL {
            let resource = api_resource(kind);
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            // Fail fast and clearly when the CRD is not installed.
            api.list(&kube::api::ListParams::default().limit(1))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "listing {}.rampart.dev ({e}): are the CRDs installed (deploy/crds/rampart.dev.yaml)?",
                        resource.plural
                    )
                })?;
            let reader = reflect(api, resource.clone(), tx.clone());
            reader
                .wait_until_ready()
                .await
                .map_err(|e| anyhow::anyhow!("watching {kind}: {e}"))?;
            caches.insert(kind, reader);
        }
        Ok(Self {
            client,
            caches: Arc::new(caches),
            revision,
        })
    }

    fn api(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        let resource = api_resource(kind);
        if kind.namespaced() {
            Api::namespaced_with(self.client.clone(), namespace, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        }
    }

    /// The cached resource of `key`, as the model reads it.
    fn cached(&self, key: &ResourceKey) -> Option<Resource> {
        let mut object = ObjectRef::new_with(&key.name, api_resource(key.kind));
        if key.kind.namespaced() {
            object = object.within(&key.namespace);
        }
        let found = self.caches[&key.kind].get(&object)?;
        to_resource(key.kind, &found)
    }
}

impl KubeMeshStore {
    /// Waits (briefly) until the watch caches show what was just written,
    /// so a caller reads its own writes as with the embedded store: an
    /// apply followed by a get, or a second apply reporting `unchanged`.
    async fn settle(&self, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(self) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("the watch has not caught up with a write after 5 s");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// A custom resource as a mesh resource, checked like a `meshctl apply`.
fn to_resource(kind: Kind, object: &DynamicObject) -> Option<Resource> {
    let name = object.metadata.name.clone()?;
    let mut metadata = json!({"name": name});
    if kind.namespaced() {
        metadata["namespace"] = json!(object.metadata.namespace.clone()?);
    }
    if let Some(labels) = object.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = json!(labels);
    }
    let document = json!({
        "apiVersion": rampart_api::mesh::API_VERSION,
        "kind": kind.as_str(),
        "metadata": metadata,
        "spec": object.data.get("spec").cloned().unwrap_or_else(|| json!({})),
    });
    let source = format!("{kind} {name}");
    match parse_documents(&source, &document.to_string()) {
        Ok(mut parsed) if parsed.len() == 1 => parsed.pop(),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(resource = source, error = %e, "custom resource left out of the mesh: it fails the model's checks");
            None
        }
    }
}

/// A mesh resource as the custom resource to apply.
fn to_object(resource: &Resource) -> DynamicObject {
    let key = resource.key();
    let api = api_resource(key.kind);
    let document: serde_json::Value =
        serde_json::from_str(&resource.to_json()).expect("canonical JSON parses");
    let mut object = DynamicObject::new(&key.name, &api);
    if key.kind.namespaced() {
        object.metadata.namespace = Some(key.namespace.clone());
    }
    let labels = &resource.metadata().labels;
    if !labels.is_empty() {
        object.metadata.labels = Some(labels.clone());
    }
    object.data = json!({"spec": document["spec"]});
    object
}

fn api_error(e: kube::Error) -> StoreError {
    StoreError::Kubernetes(e.to_string())
}

impl MeshStore for KubeMeshStore {
    async fn apply(
        &self,
        resources: &[Resource],
        dry_run: bool,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let outcomes: Vec<ApplyOutcome> = resources
            .iter()
            .map(|r| match self.cached(&r.key()) {
                None => ApplyOutcome::Created,
                Some(old) if old == *r => ApplyOutcome::Unchanged,
                Some(_) => ApplyOutcome::Configured,
            })
            .collect();
        let changed: Vec<&Resource> = resources
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o != ApplyOutcome::Unchanged)
            .map(|(r, _)| r)
            .collect();
        // Everything as a dry run first: one refusal applies nothing.
        let passes = if dry_run { 1 } else { 2 };
        for pass in 0..passes {
            let mut params = PatchParams::apply(FIELD_MANAGER).force();
            params.dry_run = pass == 0;
            for resource in &changed {
                let key = resource.key();
                self.api(key.kind, &key.namespace)
                    .patch(&key.name, &params, &Patch::Apply(to_object(resource)))
                    .await
                    .map_err(|e| StoreError::Kubernetes(format!("{key}: {e}")))?;
            }
        }
        if !dry_run {
            self.settle(|store| {
                changed
                    .iter()
                    .all(|r| store.cached(&r.key()).as_ref() == Some(*r))
            })
            .await;
        }
        Ok(outcomes)
    }

    fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError> {
        let mut out = Vec::new();
        for (k, cache) in self.caches.iter() {
            if kind.is_some_and(|want| want != *k) {
                continue;
            }
            for object in cache.state() {
                let Some(resource) = to_resource(*k, &object) else {
                    continue;
                };
                if selected(&resource.key(), namespace, name) {
                    out.push(resource);
                }
            }
        }
        out.sort_by_key(|r| r.key());
        Ok(out)
    }

    async fn delete(&self, keys: &[ResourceKey]) -> Result<Vec<bool>, StoreError> {
        let mut existed = Vec::with_capacity(keys.len());
        for key in keys {
            let result = self
                .api(key.kind, &key.namespace)
                .delete(&key.name, &DeleteParams::default())
                .await;
            existed.push(match result {
                Ok(_) => true,
                Err(kube::Error::Api(status)) if status.code == 404 => false,
                Err(e) => return Err(api_error(e)),
            });
        }
        self.settle(|store| keys.iter().all(|k| store.cached(k).is_none()))
            .await;
        Ok(existed)
    }

    fn revision(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }
}
