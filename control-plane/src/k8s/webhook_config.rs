//! Keeps the caBundle of Rampart's webhook configurations (the injector's
//! MutatingWebhookConfiguration, the policy's ValidatingWebhookConfiguration)
//! equal to the mesh's root bundle, so the API server trusts the webhook's
//! serving certificate (issued by the mesh CA) without anyone copying PEM
//! around. It watches the one object: an install that resets the field, or
//! a `kubectl apply` of the chart, is corrected within a moment.

use base64::Engine;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher;
use tokio_stream::StreamExt;

/// Which kind of webhook configuration.
#[derive(Debug, Clone, Copy)]
pub enum WebhookKind {
    Mutating,
    Validating,
}

impl WebhookKind {
    fn resource(self) -> ApiResource {
        let kind = match self {
            WebhookKind::Mutating => "MutatingWebhookConfiguration",
            WebhookKind::Validating => "ValidatingWebhookConfiguration",
        };
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ))
    }
}

/// Watches the `kind` configuration `name` and writes `bundle_pem` into
/// every webhook's caBundle that differs; runs until the process ends.
pub async fn keep_ca_bundle(
    client: kube::Client,
    kind: WebhookKind,
    name: String,
    bundle_pem: String,
) {
    let resource = kind.resource();
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config);
    let mut stream = std::pin::pin!(stream);
    // The API serves caBundle as base64 (it is a []byte).
    let wanted = base64::engine::general_purpose::STANDARD.encode(bundle_pem);
    loop {
        match stream.next().await.transpose() {
            Ok(Some(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                if let Err(e) = correct(&api, object, &wanted).await {
                    tracing::warn!(kind = resource.kind, name, error = %e, "updating the caBundle failed; retrying on the next change");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            // The watcher backs off and resumes by itself.
            Err(e) => {
                tracing::warn!(kind = resource.kind, name, error = %e, "watching the webhook configuration")
            }
        }
    }
}

async fn correct(
    api: &Api<DynamicObject>,
    mut object: DynamicObject,
    wanted: &str,
) -> Result<(), kube::Error> {
    let mut changed = false;
    let webhooks = object.data["webhooks"].as_array_mut();
    for webhook in webhooks.into_iter().flatten() {
        let bundle = &mut webhook["clientConfig"]["caBundle"];
        if bundle.as_str() != Some(wanted) {
            *bundle = wanted.into();
            changed = true;
        }
    }
    if changed {
        let name = object.metadata.name.clone().unwrap_or_default();
        // The resourceVersion we read: a concurrent writer makes this a
        // conflict, and the watcher brings the newer object back to us.
        api.replace(&name, &PostParams::default(), &object).await?;
        tracing::info!(
            kind = object.types.as_ref().map(|t| t.kind.as_str()),
            name,
            "caBundle set to the mesh root bundle"
        );
    }
    Ok(())
}
