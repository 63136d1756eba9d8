//! Keeps the caBundle of Rampart's MutatingWebhookConfiguration equal to
//! the mesh's root bundle, so the API server trusts the webhook's serving
//! certificate (issued by the mesh CA) without anyone copying PEM around.
//! It watches the one object: an install that resets the field, or a
//! `kubectl apply` of the chart, is corrected within a moment.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use tokio_stream::StreamExt;

/// Watches `name` and writes `bundle_pem` into every webhook's caBundle
/// that differs; runs until the process ends.
pub async fn keep_ca_bundle(client: kube::Client, name: String, bundle_pem: String) {
    let api = Api::<MutatingWebhookConfiguration>::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config);
    let mut stream = std::pin::pin!(stream);
    loop {
        match stream.next().await.transpose() {
            Ok(Some(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                if let Err(e) = correct(&api, object, &bundle_pem).await {
                    tracing::warn!(webhook_configuration = name, error = %e, "updating the caBundle failed; retrying on the next change");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            // The watcher backs off and resumes by itself.
            Err(e) => {
                tracing::warn!(webhook_configuration = name, error = %e, "watching the webhook configuration")
            }
        }
    }
}

async fn correct(
    api: &Api<MutatingWebhookConfiguration>,
    mut object: MutatingWebhookConfiguration,
    bundle_pem: &str,
) -> Result<(), kube::Error> {
    let wanted = ByteString(bundle_pem.as_bytes().to_vec());
    let mut changed = false;
    for webhook in object.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
            webhook.client_config.ca_bundle = Some(wanted.clone());
            changed = true;
        }
    }
    if changed {
        let name = object.metadata.name.clone().unwrap_or_default();
        // The resourceVersion we read: a concurrent writer makes this a
        // conflict, and the watcher brings the newer object back to us.
        api.replace(&name, &PostParams::default(), &object).await?;
        tracing::info!(
            webhook_configuration = name,
            "caBundle set to the mesh root bundle"
        );
    }
    Ok(())
}
