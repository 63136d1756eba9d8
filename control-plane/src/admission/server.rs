//! The HTTPS listener of the webhooks: `/inject` (the sidecar),
//! `/validate` (the security policy, in `validate`) and `/pin-images`
//! (verified tags to digests, in `pin`).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rampart_api::inject::{Outcome, Template, inject_pod, patch};
use serde_json::Value;
use tokio::net::TcpListener;

use super::audit::AuditTrail;
use super::review;
use super::validate::{self, PolicyInputs};
use crate::metrics::Metrics;

/// The API server sends objects of at most ~3 MiB (etcd's limit), twice
/// for an UPDATE (object and oldObject); anything larger is not from it.
const MAX_REVIEW_BYTES: usize = 8 << 20;

/// What the webhooks need.
pub struct WebhookConfig {
    /// The sidecar injected pods get.
    pub template: Template,
    /// What `/validate` judges pods by.
    pub policy: PolicyInputs,
    /// Where `/validate` records violations.
    pub audit: AuditTrail,
    pub metrics: Arc<Metrics>,
}

/// Serves the webhooks on `listener` with `tls` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Arc<WebhookConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate))
        .route("/pin-images", post(pin_images))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(config);
    // The API server presents no client certificate: one configuration
    // serves for the life of the listener.
    let (_, tls) = tokio::sync::watch::channel(tls);
    let incoming = crate::grpc::tls_incoming(listener, tls);
    rampart_api::http_serve::serve(incoming, app, shutdown).await
}

/// `/inject`: the sidecar for a pod being created.
async fn inject(State(config): State<Arc<WebhookConfig>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = answer_inject(&config.template, &body);
    config
        .metrics
        .count_admission("inject", result, started.elapsed());
    response
}

/// `/validate`: the security policy on a pod being created or changed.
async fn validate(State(config): State<Arc<WebhookConfig>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = match review::parse(&body) {
        Ok(request) => {
            let verdict = validate::answer(&config.policy, &request).await;
            if let Some((namespace, name, report)) = &verdict.judged {
                config.audit.record(namespace, name, report);
            }
            (verdict.result, json_response(&verdict.response))
        }
        Err(message) => malformed(message),
    };
    config
        .metrics
        .count_admission("validate", result, started.elapsed());
    response
}

/// `/pin-images`: verified image tags pinned to their digests.
async fn pin_images(State(config): State<Arc<WebhookConfig>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = match review::parse(&body) {
        Ok(request) => {
            let (result, review) = super::pin::answer(&config.policy, &request).await;
            (result, json_response(&review))
        }
        Err(message) => malformed(message),
    };
    config
        .metrics
        .count_admission("pin", result, started.elapsed());
    response
}

/// A body that is not an AdmissionReview: the API server only sends
/// those, so this is a 400 for whoever sent it.
fn malformed(message: String) -> (&'static str, Response) {
    tracing::warn!(error = %message, "malformed AdmissionReview");
    (
        "malformed",
        (StatusCode::BAD_REQUEST, message).into_response(),
    )
}

fn json_response(review: &Value) -> Response {
    let body = serde_json::to_vec(review).expect("a review serializes");
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn answer_inject(template: &Template, body: &[u8]) -> (&'static str, Response) {
    let request = match review::parse(body) {
        Ok(request) => request,
        Err(message) => return malformed(message),
    };
    let json = |v: Value| json_response(&v);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != "CREATE" {
        return ("skipped", json(review::allowed(&request.uid, None)));
    }
    let Some(object) = &request.object else {
        let message = "the AdmissionReview request has no object";
        return (
            "malformed",
            json(review::denied(&request.uid, 400, message)),
        );
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let name = object["metadata"]["name"]
        .as_str()
        .or_else(|| object["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    match inject_pod(object, template) {
        Ok(Outcome::Injected(pod)) => {
            tracing::info!(namespace, pod = name, "injected the sidecar");
            let patch = patch(object, &pod);
            (
                "injected",
                json(review::allowed(&request.uid, Some(&patch))),
            )
        }
        Ok(Outcome::Skipped(reason)) => {
            tracing::debug!(namespace, pod = name, reason, "not injected");
            ("skipped", json(review::allowed(&request.uid, None)))
        }
        Err(e) => {
            tracing::warn!(namespace, pod = name, error = %e, "cannot inject");
            let message = format!("rampart cannot inject this pod: {e}");
            ("denied", json(review::denied(&request.uid, 400, &message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> Template {
        Template {
            image: "rampart-proxy:test".into(),
            control_plane: "cp:15012".into(),
            native_sidecar: true,
        }
    }

    fn review_of(pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "7d1c", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "shop", "operation": "CREATE", "object": pod}
        }))
        .unwrap()
    }

    #[test]
    fn a_large_pod_is_injected() {
        // 64 KB of pod spec: many containers with long env lists.
        let containers: Vec<Value> = (0..40)
            .map(|i| {
                json!({"name": format!("c{i}"), "image": "app:1",
                       "env": (0..20).map(|j| json!({"name": format!("V{j}"), "value": "x".repeat(60)})).collect::<Vec<_>>()})
            })
            .collect();
        let body =
            review_of(json!({"metadata": {"name": "big"}, "spec": {"containers": containers}}));
        assert!(body.len() > 64 * 1024, "{}", body.len());
        let (result, response) = answer_inject(&template(), &body);
        assert_eq!(result, "injected");
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn garbage_gets_a_clear_400_and_a_bad_pod_a_denial() {
        let (result, response) = answer_inject(&template(), b"not json");
        assert_eq!(
            (result, response.status()),
            ("malformed", StatusCode::BAD_REQUEST)
        );
        let (result, _) =
            answer_inject(&template(), &review_of(json!({"spec": {"containers": []}})));
        assert_eq!(result, "denied");
    }
}
