//! Kubernetes: what the control plane takes from the API server when it
//! runs in a cluster (`--kubernetes`). Standalone it needs none of this.

pub mod discovery;
pub mod leader;
pub mod mesh_store;
pub mod namespaces;
pub mod root_bundle;
pub mod token_review;
pub mod webhook_config;

pub use token_review::{ReviewError, TokenReviewer};

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// A reflector (a watch kept in memory) over `api`, whose every event
/// bumps `revision`; the watcher backs off and re-lists by itself.
pub(crate) fn reflect<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    revision: Arc<watch::Sender<u64>>,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync + Unpin,
{
    let kind = K::kind(&dyntype).into_owned();
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => revision.send_modify(|r| *r += 1),
                Err(e) => tracing::warn!(kind, error = %e, "watch interrupted; resuming"),
            }
        }
    });
    reader
}

/// Whether the API server runs native sidecars (init containers with
/// `restartPolicy: Always`, on by default since Kubernetes 1.29).
pub async fn supports_native_sidecars(client: &kube::Client) -> anyhow::Result<bool> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("asking the API server for its version: {e}"))?;
    // `minor` may carry a suffix ("29+") on vendor builds.
    let minor: u32 = info
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .map_err(|_| anyhow::anyhow!("the API server reports minor version {:?}", info.minor))?;
    Ok(info.major == "1" && minor >= 29)
}
