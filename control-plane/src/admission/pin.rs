//! `/pin-images`: a mutating webhook that rewrites the tag of each image
//! whose signature a policy verified to the digest that was verified
//! (`app:1` -> `app:1@sha256:…`, `images.pinDigest`), so the kubelet pulls
//! the content that was checked, not whatever the tag names when it pulls.
//! It only rewrites; `/validate` still judges the pod (now by digest, from
//! the verifier's cache), so its API server registration may fail open.

use serde_json::{Value, json};

use super::review::{self, Request};
use super::validate::{Gathered, PolicyInputs};

/// Answers one parsed review: `(result, AdmissionReview)`.
pub async fn answer(inputs: &PolicyInputs, request: &Request) -> (&'static str, Value) {
    let skip = || ("skipped", review::allowed(&request.uid, None));
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod
        || request.operation != "CREATE"
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return skip();
    }
    let Some(pod) = &request.object else {
        let message = "the AdmissionReview request has no object";
        return ("malformed", review::denied(&request.uid, 400, message));
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let gathered = match Gathered::new(inputs, &namespace, pod).await {
        Ok(gathered) => gathered,
        Err(e) => {
            // Nothing pinned; /validate still judges the pod.
            tracing::error!(error = %e, "reading the SecurityPolicies to pin image digests");
            return ("error", review::allowed(&request.uid, None));
        }
    };
    let pins = gathered.digest_pins(&namespace, pod);
    if pins.is_empty() {
        return skip();
    }
    let operations: Vec<Value> = pins
        .iter()
        .map(|p| json!({"op": "replace", "path": p.pointer, "value": p.image}))
        .collect();
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(operations)).expect("replace operations parse");
    let name = pod["metadata"]["name"]
        .as_str()
        .or_else(|| pod["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    let images: Vec<&str> = pins.iter().map(|p| p.image.as_str()).collect();
    tracing::info!(
        namespace,
        pod = name,
        images = images.join(", "),
        "pinned verified images to their digests"
    );
    ("pinned", review::allowed(&request.uid, Some(&patch)))
}
