//! `/validate`: the admission security policy (`rampart_api::policy`) on
//! every Pod created or updated, and on ephemeral containers added to one.
//! The SecurityPolicies come from the mesh store and the namespace labels
//! from a watch, both in memory, so a review makes no call of its own.
//!
//! `enforce` violations deny, with every violation in the message; `warn`
//! ones come back as warnings (kubectl prints them); `audit` ones admit and
//! are recorded: an audit annotation, a Kubernetes Event on the namespace,
//! and `rampart_admission_policy_violations_total`. Exemptions used are
//! returned as warnings and annotations too, so none is silent.

use std::sync::Arc;

use rampart_api::image_verifier::ImageVerifier;
use rampart_api::mesh::{Kind, Resource};
use rampart_api::policy::{self, EnforcementAction, Named, Report, SecurityPolicySpec};
use serde_json::Value;

use super::review::{self, Request};
use crate::k8s::namespaces::Namespaces;
use crate::model_store::Mesh;
use crate::store::MeshStore;

/// Where the policy comes from.
#[derive(Clone)]
pub struct PolicyInputs {
    pub mesh: Mesh,
    /// Namespace labels; None standalone (no labels).
    pub namespaces: Option<Namespaces>,
    /// Its SecurityPolicies apply to every namespace.
    pub root_namespace: String,
    /// Asks registries about image signatures (`images.signedBy`).
    pub signatures: Arc<ImageVerifier>,
}

/// What a review decided, for the metrics and the audit trail.
pub struct Verdict {
    /// `admitted`, `denied`, `skipped`, `malformed`.
    pub result: &'static str,
    pub response: Value,
    /// The pod's namespace and name (or generateName), and the report.
    pub judged: Option<(String, String, Report)>,
}

/// Answers one parsed review.
pub async fn answer(inputs: &PolicyInputs, request: &Request) -> Verdict {
    let skip = |result| Verdict {
        result,
        response: review::allowed(&request.uid, None),
        judged: None,
    };
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let judged_subresource = matches!(
        request.sub_resource.as_deref(),
        None | Some("") | Some("ephemeralcontainers")
    );
    if !is_pod || !judged_subresource || !matches!(request.operation.as_str(), "CREATE" | "UPDATE")
    {
        return skip("skipped");
    }
    let Some(pod) = &request.object else {
        return Verdict {
            result: "malformed",
            response: review::denied(
                &request.uid,
                400,
                "the AdmissionReview request has no object",
            ),
            judged: None,
        };
    };
    // A pod being deleted must be able to shed its finalizers.
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return skip("skipped");
    }
    // Like Pod Security Admission: an update that leaves the spec as it was
    // (labels, annotations, finalizers) is not judged again, so a policy
    // made stricter later does not wedge the controllers of running pods.
    // Those pods are reported by the continuous evaluation instead.
    if request.operation == "UPDATE"
        && request
            .old_object
            .as_ref()
            .is_some_and(|old| old["spec"] == pod["spec"])
    {
        return skip("skipped");
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let name = pod["metadata"]["name"]
        .as_str()
        .or_else(|| pod["metadata"]["generateName"].as_str())
        .unwrap_or_default()
        .to_owned();
    let report = match judge(inputs, &namespace, pod).await {
        Ok(report) => report,
        Err(e) => {
            // Without its policies the webhook cannot judge; the API
            // server's failurePolicy decides what that means.
            tracing::error!(error = %e, "reading the SecurityPolicies");
            return Verdict {
                result: "error",
                response: review::denied(
                    &request.uid,
                    500,
                    &format!("rampart cannot read the security policies: {e}"),
                ),
                judged: None,
            };
        }
    };
    let (result, response) = respond(&request.uid, &report);
    Verdict {
        result,
        response,
        judged: Some((namespace, name, report)),
    }
}

/// What judging a pod in a namespace takes: the policies that apply there
/// (named for the reports) and what the registries say of the pod's images.
pub struct Gathered {
    policies: Vec<(String, SecurityPolicySpec)>,
    context: policy::Context<'static>,
}

impl Gathered {
    /// Reads the policies that apply in `namespace` and asks the
    /// registries what their image rules need (cached by digest).
    pub async fn new(
        inputs: &PolicyInputs,
        namespace: &str,
        pod: &Value,
    ) -> Result<Self, crate::store::StoreError> {
        let policies = policies_for(inputs, namespace)?;
        let named = Self::name(&policies);
        let mut lookups = policy::registry_lookups(pod, &named);
        if lookups.reports {
            lookups.supplied = supplied_reports(inputs)?;
        }
        let (signatures, vulnerabilities) = inputs.signatures.check(&lookups).await;
        let context = policy::Context {
            // Set per use: the context borrows the namespace.
            namespace: "",
            namespace_labels: inputs
                .namespaces
                .as_ref()
                .map(|n| n.labels(namespace))
                .unwrap_or_default(),
            signatures,
            vulnerabilities,
        };
        Ok(Self { policies, context })
    }

    fn name(policies: &[(String, SecurityPolicySpec)]) -> Vec<Named<'_>> {
        policies
            .iter()
            .map(|(source, spec)| Named {
                source: source.clone(),
                spec,
            })
            .collect()
    }

    fn context<'a>(&'a self, namespace: &'a str) -> policy::Context<'a> {
        policy::Context {
            namespace,
            ..self.context.clone()
        }
    }

    /// Every policy's verdict on `pod`.
    pub fn evaluate(&self, namespace: &str, pod: &Value) -> Report {
        policy::evaluate(pod, &self.context(namespace), &Self::name(&self.policies))
    }

    /// The images of `pod` to pin to their verified digest.
    pub fn digest_pins(&self, namespace: &str, pod: &Value) -> Vec<policy::DigestPin> {
        policy::digest_pins(pod, &self.context(namespace), &Self::name(&self.policies))
    }
}

/// Judges `pod` in `namespace` by every policy that applies there: the
/// one judgement of the webhook and of the continuous evaluation.
pub async fn judge(
    inputs: &PolicyInputs,
    namespace: &str,
    pod: &Value,
) -> Result<Report, crate::store::StoreError> {
    Ok(Gathered::new(inputs, namespace, pod)
        .await?
        .evaluate(namespace, pod))
}

/// The vulnerability reports supplied to the control plane.
fn supplied_reports(
    inputs: &PolicyInputs,
) -> Result<Vec<policy::SuppliedReport>, crate::store::StoreError> {
    let all = inputs
        .mesh
        .list(Some(Kind::VulnerabilityReport), None, None)?;
    Ok(all
        .iter()
        .filter_map(|r| match r {
            Resource::VulnerabilityReport(o) => {
                policy::SuppliedReport::new(&o.metadata.name, &o.spec)
            }
            _ => None,
        })
        .collect())
}

/// The SecurityPolicies that apply in `namespace`, named for the reports.
fn policies_for(
    inputs: &PolicyInputs,
    namespace: &str,
) -> Result<Vec<(String, SecurityPolicySpec)>, crate::store::StoreError> {
    let all = inputs.mesh.list(Some(Kind::SecurityPolicy), None, None)?;
    Ok(all
        .into_iter()
        .filter_map(|r| match r {
            Resource::SecurityPolicy(p)
                if policy::applies(&p.metadata.namespace, namespace, &inputs.root_namespace) =>
            {
                Some((
                    format!(
                        "SecurityPolicy {}/{}",
                        p.metadata.namespace, p.metadata.name
                    ),
                    p.spec,
                ))
            }
            _ => None,
        })
        .collect())
}

fn respond(uid: &str, report: &Report) -> (&'static str, Value) {
    let mut warnings = report.lines(EnforcementAction::Warn);
    warnings.extend(report.exemptions.iter().map(|e| format!("exempt: {e}")));
    let mut annotations = Vec::new();
    let audited = report.lines(EnforcementAction::Audit);
    if !audited.is_empty() {
        annotations.push(("violations", audited.join("; ")));
    }
    if !report.exemptions.is_empty() {
        annotations.push(("exemptions", report.exemptions.join("; ")));
    }
    if report.denied() {
        let lines = report.lines(EnforcementAction::Enforce);
        let message = format!(
            "denied by the Rampart security policy ({} violation{}):\n- {}",
            lines.len(),
            if lines.len() == 1 { "" } else { "s" },
            lines.join("\n- ")
        );
        let denied = review::denied(uid, 403, &message);
        return (
            "denied",
            review::with_notes(denied, &warnings, &annotations),
        );
    }
    let allowed = review::allowed(uid, None);
    (
        "admitted",
        review::with_notes(allowed, &warnings, &annotations),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_denial_lists_every_violation_and_warnings_ride_along() {
        let strict = SecurityPolicySpec {
            pod_security: Some(policy::Level::Restricted),
            ..Default::default()
        };
        let warn = SecurityPolicySpec {
            enforcement_action: EnforcementAction::Warn,
            images: policy::spec::ImageRules {
                require_digest: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
        let report = policy::evaluate(
            &pod,
            &policy::Context::default(),
            &[
                Named {
                    source: "SecurityPolicy a/strict".into(),
                    spec: &strict,
                },
                Named {
                    source: "SecurityPolicy a/warn".into(),
                    spec: &warn,
                },
            ],
        );
        let (result, review) = respond("u1", &report);
        assert_eq!(result, "denied");
        let response = &review["response"];
        assert_eq!(response["uid"], "u1");
        assert_eq!(response["status"]["code"], 403);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains("(4 violations)"), "{message}");
        assert!(message.contains("spec.containers[0].securityContext.runAsNonRoot"));
        let warnings = response["warnings"].as_array().unwrap();
        assert!(
            warnings[0]
                .as_str()
                .unwrap()
                .contains("images:requireDigest")
        );
    }
}
