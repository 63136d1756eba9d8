//! AdmissionReview v1 in and out. The object is kept as JSON (not a typed
//! Pod) so that the patch is computed against exactly what the API server
//! sent, including fields newer than our API types.

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

/// The part of an AdmissionReview request a webhook needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    pub kind: Kind,
    #[serde(default)]
    pub namespace: Option<String>,
    /// `ephemeralcontainers` when `kubectl debug` adds a container.
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    /// The object before an UPDATE.
    #[serde(default)]
    pub old_object: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Kind {
    #[serde(default)]
    pub group: String,
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

/// Reads an AdmissionReview v1 request; the error says what is wrong.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let review: Review =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
            .map_err(|e| format!("not an AdmissionReview: {}: {}", e.path(), e.inner()))?;
    if review.kind != "AdmissionReview" || review.api_version != "admission.k8s.io/v1" {
        return Err(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got {} {}",
            review.api_version, review.kind
        ));
    }
    let request = review.request.ok_or("the AdmissionReview has no request")?;
    if request.uid.is_empty() {
        return Err("the AdmissionReview request has no uid".into());
    }
    Ok(request)
}

/// An AdmissionReview v1 response: allowed, with an optional JSON Patch
/// (base64, as the API requires).
pub fn allowed(uid: &str, patch: Option<&json_patch::Patch>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch.filter(|p| !p.0.is_empty()) {
        let bytes = serde_json::to_vec(patch).expect("a patch serializes");
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    review(response)
}

/// An AdmissionReview v1 response refusing the request with `message`.
pub fn denied(uid: &str, code: u16, message: &str) -> Value {
    review(json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": code, "message": message},
    }))
}

/// `review` with warnings and audit annotations added (the API server
/// prefixes the annotation keys with the webhook's name).
pub fn with_notes(
    mut review: Value,
    warnings: &[String],
    audit_annotations: &[(&str, String)],
) -> Value {
    if !warnings.is_empty() {
        // kubectl shows each; the API server truncates long ones.
        let warnings: Vec<String> = warnings.iter().map(|w| truncate(w, 250)).collect();
        review["response"]["warnings"] = json!(warnings);
    }
    if !audit_annotations.is_empty() {
        review["response"]["auditAnnotations"] = audit_annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    review
}

/// `s` cut to at most `max` bytes on a character boundary, marked `...`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn review(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_reviews_say_what_is_wrong() {
        for (body, expected) in [
            (&b"{"[..], "not an AdmissionReview"),
            (br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#, "expected an admission.k8s.io/v1"),
            (br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#, "no request"),
            (br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}}"#, "request.uid"),
            (br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "", "kind": {"kind": "Pod"}}}"#, "no uid"),
        ] {
            let err = parse(body).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn an_allowed_response_carries_the_uid_and_a_base64_patch() {
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/a", "value": 1}])).unwrap();
        let out = allowed("u-1", Some(&patch));
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            json!([{"op": "add", "path": "/a", "value": 1}])
        );
        let none = allowed("u-2", None);
        assert!(none["response"].get("patch").is_none());
    }
}
