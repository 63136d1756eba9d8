//! Namespace labels, watched (the validating webhook reads their
//! `pod-security.kubernetes.io/*` labels on every review, so they come from
//! memory, not from a call to the API server).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use super::reflect;

/// The cluster's namespaces, kept current in the background.
#[derive(Clone)]
pub struct Namespaces {
    store: Store<Namespace>,
    revision: watch::Receiver<u64>,
}

impl Namespaces {
    /// Starts the watch and returns once it has listed every namespace.
    pub async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let (tx, revision) = watch::channel(0);
        let store = reflect(Api::<Namespace>::all(client), (), Arc::new(tx));
        store
            .wait_until_ready()
            .await
            .map_err(|e| anyhow::anyhow!("watching Namespaces: {e}"))?;
        Ok(Self { store, revision })
    }

    /// The labels of namespace `name` (none if it is not known).
    pub fn labels(&self, name: &str) -> BTreeMap<String, String> {
        self.store
            .get(&ObjectRef::new(name))
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Changes whenever a namespace does.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }
}
