//! Publishes the mesh's root bundle as ConfigMap `rampart-root-ca`
//! (`bundle.pem`) in every namespace labeled for injection, which is where
//! injected sidecars read their trust anchor from. A leader's singleton:
//! it follows the namespaces (a watch) and server-side applies the
//! ConfigMap on every namespace event and whenever leadership starts (a
//! ConfigMap deleted by hand comes back then, not at once).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::watcher;
use rampart_api::inject::{INJECT_KEY, ROOT_CA_CONFIGMAP};
use tokio_stream::StreamExt;

/// Keeps the ConfigMap in every labeled namespace; runs until dropped.
pub async fn publish(client: kube::Client, bundle_pem: String) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{INJECT_KEY}=enabled"));
    let mut stream = std::pin::pin!(watcher::watcher(namespaces, config));
    while let Some(event) = stream.next().await {
        let namespace = match event {
            Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => ns,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching namespaces; resuming");
                continue;
            }
        };
        let Some(name) = namespace.metadata.name else {
            continue;
        };
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(ROOT_CA_CONFIGMAP.to_owned()),
                namespace: Some(name.clone()),
                ..Default::default()
            },
            data: Some([("bundle.pem".to_owned(), bundle_pem.clone())].into()),
            ..Default::default()
        };
        let result = Api::<ConfigMap>::namespaced(client.clone(), &name)
            .patch(
                ROOT_CA_CONFIGMAP,
                &PatchParams::apply("rampart").force(),
                &Patch::Apply(&map),
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(namespace = name, error = %e, "publishing the root bundle failed");
        }
    }
}
