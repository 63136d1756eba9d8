//! The admission security policy: what may run in the cluster. One engine
//! for the validating webhook (`/validate`) and for `meshctl policy check`
//! on manifests, so what a CI pipeline checks offline is what the cluster
//! admits.
//!
//! A pod is checked against every policy that applies to it: the
//! `SecurityPolicy` resources of its namespace and of the root namespace,
//! and the standard `pod-security.kubernetes.io/{enforce,audit,warn}`
//! labels of its namespace. Each gives a [`Finding`] with its own
//! enforcement action; a pod is denied if an `enforce` finding has
//! violations, and every violation names the field and the fix.

pub mod pss;
mod rules;
pub mod spec;
pub mod vulnerability;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image::{ImageRef, allowed_by};
use crate::oci::cosign::PublicKey;
use crate::oci::{ReportCheck, SignatureCheck};
pub use spec::{EnforcementAction, SecurityPolicy, SecurityPolicySpec};
pub use vulnerability::{SuppliedReport, VulnerabilityReport, VulnerabilityReportSpec};

/// Where Rampart runs by default; its SecurityPolicies apply cluster-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "rampart-system";

/// Whether a SecurityPolicy in `policy_namespace` applies to a pod in
/// `pod_namespace`: its own namespace, or any if it is in the root namespace.
pub fn applies(policy_namespace: &str, pod_namespace: &str, root_namespace: &str) -> bool {
    policy_namespace == pod_namespace || policy_namespace == root_namespace
}

/// A Pod Security Standards level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `pod-security/restricted:runAsNonRoot`, `images:allowedRegistries`.
    pub rule: String,
    /// The field, as kubectl spells it: `spec.containers[0].securityContext.privileged`.
    pub path: String,
    pub message: String,
    /// What to change.
    pub fix: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} [{}]; fix: {}",
            self.path, self.message, self.rule, self.fix
        )
    }
}

/// What one policy said of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `SecurityPolicy shop/strict`, `namespace label pod-security.kubernetes.io/enforce=restricted`.
    pub source: String,
    pub action: EnforcementAction,
    pub violations: Vec<Violation>,
}

/// Every policy's verdict on one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Policies with violations.
    pub findings: Vec<Finding>,
    /// Exemptions used: which policy did not apply, and why.
    pub exemptions: Vec<String>,
}

impl Report {
    /// Denied: an `enforce` policy has violations.
    pub fn denied(&self) -> bool {
        self.with(EnforcementAction::Enforce).next().is_some()
    }

    /// The findings with `action`.
    pub fn with(&self, action: EnforcementAction) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.action == action)
    }

    /// Every violation of the findings with `action`, one per line, each
    /// prefixed by its policy.
    pub fn lines(&self, action: EnforcementAction) -> Vec<String> {
        self.with(action)
            .flat_map(|f| {
                f.violations
                    .iter()
                    .map(move |v| format!("{}: {v}", f.source))
            })
            .collect()
    }
}

/// Where a pod is being admitted.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    pub namespace: &'a str,
    /// The namespace's labels (for the `pod-security.kubernetes.io/*` ones).
    pub namespace_labels: BTreeMap<String, String>,
    /// What the registries said of the signatures of the pod's images (by
    /// the image as written), for `images.signedBy`; see [`registry_lookups`].
    pub signatures: BTreeMap<String, SignatureCheck>,
    /// Their vulnerability reports, for `images.vulnerabilities`.
    pub vulnerabilities: BTreeMap<String, ReportCheck>,
}

/// What to ask the registries before [`evaluate`].
#[derive(Debug, Default)]
pub struct Lookups {
    /// The pod's images, if a policy needs their signatures or reports.
    pub images: Vec<String>,
    /// The keys signatures and attested reports are checked with (none:
    /// no signature is asked for).
    pub keys: Vec<PublicKey>,
    /// Whether a policy needs their vulnerability reports too.
    pub reports: bool,
    /// Reports supplied to the control plane (`VulnerabilityReport`),
    /// matched to the images by repository and digest once resolved.
    pub supplied: Vec<SuppliedReport>,
}

/// What `policies` need to know of `pod`'s images from their registries.
/// The caller adds the supplied reports, if it has any.
pub fn registry_lookups(pod: &Value, policies: &[Named<'_>]) -> Lookups {
    let mut keys: Vec<PublicKey> = Vec::new();
    for key in policies.iter().flat_map(|p| &p.spec.images.signed_by) {
        // A key that does not parse was refused when the policy was
        // applied; here it simply trusts nothing.
        if let Ok(key) = PublicKey::from_pem(&key.public_key)
            && !keys.contains(&key)
        {
            keys.push(key);
        }
    }
    let reports = policies
        .iter()
        .any(|p| p.spec.images.vulnerabilities.is_some());
    if keys.is_empty() && !reports {
        return Lookups::default();
    }
    let mut images: Vec<String> = containers(&pod["spec"])
        .iter()
        .filter_map(|c| c.value["image"].as_str().map(str::to_owned))
        .collect();
    images.sort();
    images.dedup();
    Lookups {
        images,
        keys,
        reports,
        supplied: Vec::new(),
    }
}

/// A policy and the name it is reported under.
pub struct Named<'a> {
    /// `SecurityPolicy rampart-system/default`.
    pub source: String,
    pub spec: &'a SecurityPolicySpec,
}

/// The namespace label that sets a Pod Security level for an action.
const PSA_LABELS: [(&str, EnforcementAction); 3] = [
    (
        "pod-security.kubernetes.io/enforce",
        EnforcementAction::Enforce,
    ),
    ("pod-security.kubernetes.io/audit", EnforcementAction::Audit),
    ("pod-security.kubernetes.io/warn", EnforcementAction::Warn),
];

/// Checks `pod` (a Pod or pod template) against `policies` and the
/// namespace's Pod Security labels.
pub fn evaluate(pod: &Value, context: &Context<'_>, policies: &[Named<'_>]) -> Report {
    let mut report = Report::default();
    for (label, action) in PSA_LABELS {
        let Some(value) = context.namespace_labels.get(label) else {
            continue;
        };
        // An unknown level is read as the strictest, as a typo must not
        // open the namespace.
        let level = Level::parse(value).unwrap_or(Level::Restricted);
        let violations = pss::check(pod, level);
        if !violations.is_empty() {
            report.findings.push(Finding {
                source: format!("namespace label {label}={value}"),
                action,
                violations,
            });
        }
    }
    let service_account = service_account(pod, context.namespace);
    for policy in policies {
        if let Some(why) = pod_exemption(policy, context.namespace, &service_account) {
            report.exemptions.push(format!("{}: {why}", policy.source));
            continue;
        }
        let exemptions = &policy.spec.exemptions;
        let exempt_image = |image: &str| {
            ImageRef::parse(image)
                .is_ok_and(|r| exemptions.images.iter().any(|e| allowed_by(&r, e)))
        };
        let exempt_paths: Vec<String> = containers(&pod["spec"])
            .into_iter()
            .filter(|c| exempt_image(c.value["image"].as_str().unwrap_or_default()))
            .map(|c| {
                report.exemptions.push(format!(
                    "{}: container {:?} runs an exempt image",
                    policy.source, c.name
                ));
                format!("{}.", c.path)
            })
            .collect();
        let mut violations = match policy.spec.pod_security {
            Some(level) => pss::check(pod, level),
            None => Vec::new(),
        };
        violations.retain(|v| !exempt_paths.iter().any(|p| v.path.starts_with(p)));
        violations.extend(rules::check(
            pod,
            &policy.spec.containers,
            &policy.spec.images,
            &exempt_image,
            context,
        ));
        if !violations.is_empty() {
            report.findings.push(Finding {
                source: policy.source.clone(),
                action: policy.spec.enforcement_action,
                violations,
            });
        }
    }
    report
}

/// `namespace/name` of the pod's ServiceAccount.
fn service_account(pod: &Value, namespace: &str) -> String {
    let name = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    format!("{namespace}/{name}")
}

/// Why `policy` does not apply to the pod at all, if it does not.
fn pod_exemption(policy: &Named<'_>, namespace: &str, service_account: &str) -> Option<String> {
    let exemptions = &policy.spec.exemptions;
    if exemptions.namespaces.iter().any(|n| n == namespace) {
        return Some(format!("namespace {namespace} is exempt"));
    }
    if exemptions
        .service_accounts
        .iter()
        .any(|s| s == service_account)
    {
        return Some(format!("service account {service_account} is exempt"));
    }
    None
}

/// An image reference to rewrite: the container's `image` field (a JSON
/// pointer) and the reference with the verified digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestPin {
    pub pointer: String,
    pub image: String,
}

/// The images of `pod` written by tag whose signature was verified, by a
/// key of a policy that applies and pins digests (`images.pinDigest`):
/// each is pinned to the digest that was verified, keeping the tag for
/// people (`app:1@sha256:…`; the kubelet pulls by the digest).
pub fn digest_pins(pod: &Value, context: &Context<'_>, policies: &[Named<'_>]) -> Vec<DigestPin> {
    let service_account = service_account(pod, context.namespace);
    let trusted: Vec<String> = policies
        .iter()
        .filter(|p| p.spec.images.pin_digest)
        .filter(|p| pod_exemption(p, context.namespace, &service_account).is_none())
        .flat_map(|p| &p.spec.images.signed_by)
        .filter_map(|k| PublicKey::from_pem(&k.public_key).ok())
        .map(|k| k.fingerprint())
        .collect();
    if trusted.is_empty() {
        return Vec::new();
    }
    containers(&pod["spec"])
        .into_iter()
        .filter_map(|c| {
            let image = c.value["image"].as_str()?;
            if ImageRef::parse(image).ok()?.digest.is_some() {
                return None;
            }
            match context.signatures.get(image)? {
                SignatureCheck::Verified { digest, by }
                    if by.iter().any(|f| trusted.contains(f)) =>
                {
                    Some(DigestPin {
                        pointer: format!("{}/image", c.pointer),
                        image: format!("{image}@{digest}"),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// One container of the pod, with where it sits.
struct Container<'a> {
    /// `spec.containers[0]`
    path: String,
    /// `/spec/containers/0` (a JSON pointer, for patches).
    pointer: String,
    name: &'a str,
    value: &'a Value,
}

impl Container<'_> {
    fn security(&self) -> &Value {
        &self.value["securityContext"]
    }
}

/// Every container: init, regular and ephemeral.
fn containers(spec: &Value) -> Vec<Container<'_>> {
    let mut all = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, value) in spec[list].as_array().into_iter().flatten().enumerate() {
            all.push(Container {
                path: format!("spec.{list}[{i}]"),
                pointer: format!("/spec/{list}/{i}"),
                name: value["name"].as_str().unwrap_or("?"),
                value,
            });
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "web", "containers": containers}})
    }

    fn named(spec: &SecurityPolicySpec) -> Vec<Named<'_>> {
        vec![Named {
            source: "SecurityPolicy rampart-system/default".into(),
            spec,
        }]
    }

    #[test]
    fn an_exempt_image_exempts_its_container_and_says_so() {
        let spec = SecurityPolicySpec {
            pod_security: Some(Level::Baseline),
            exemptions: spec::Exemptions {
                images: vec!["registry.k8s.io/debug".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let p = pod(json!([
            {"name": "debug", "image": "registry.k8s.io/debug/tools:1", "securityContext": {"privileged": true}},
            {"name": "app", "image": "app:1", "securityContext": {"privileged": true}},
        ]));
        let report = evaluate(&p, &Context::default(), &named(&spec));
        let paths: Vec<&str> = report.findings[0]
            .violations
            .iter()
            .map(|v| v.path.as_str())
            .collect();
        assert_eq!(paths, ["spec.containers[1].securityContext.privileged"]);
        assert!(report.exemptions[0].contains("\"debug\" runs an exempt image"));
    }

    #[test]
    fn a_service_account_exemption_is_scoped_to_its_namespace() {
        let spec = SecurityPolicySpec {
            pod_security: Some(Level::Restricted),
            exemptions: spec::Exemptions {
                service_accounts: vec!["ops/web".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let p = pod(json!([{"name": "app", "image": "app:1"}]));
        let in_ops = Context {
            namespace: "ops",
            ..Default::default()
        };
        assert!(!evaluate(&p, &in_ops, &named(&spec)).denied());
        let in_shop = Context {
            namespace: "shop",
            ..Default::default()
        };
        assert!(evaluate(&p, &in_shop, &named(&spec)).denied());
    }

    #[test]
    fn a_misspelled_pod_security_label_is_read_as_restricted() {
        let p = pod(json!([{"name": "app", "image": "app:1"}]));
        let context = Context {
            namespace: "shop",
            namespace_labels: [(
                "pod-security.kubernetes.io/enforce".into(),
                "restrictd".into(),
            )]
            .into(),
            ..Default::default()
        };
        let report = evaluate(&p, &context, &[]);
        assert!(report.denied());
        assert!(
            report.findings[0].violations[0]
                .rule
                .starts_with("pod-security/restricted:")
        );
        // audit and warn findings never deny.
        let context = Context {
            namespace: "shop",
            namespace_labels: [(
                "pod-security.kubernetes.io/audit".into(),
                "restricted".into(),
            )]
            .into(),
            ..Default::default()
        };
        let report = evaluate(&p, &context, &[]);
        assert!(!report.denied());
        assert!(!report.lines(EnforcementAction::Audit).is_empty());
    }

    fn new_key() -> PublicKey {
        use crate::oci::cosign::SigningKey;
        SigningKey::from_pem(&SigningKey::generate_pem())
            .unwrap()
            .public_key()
    }

    /// A key, and a policy that wants images signed by it.
    fn signed_by_release() -> (PublicKey, SecurityPolicySpec) {
        let release = new_key();
        let spec = SecurityPolicySpec {
            images: spec::ImageRules {
                signed_by: vec![spec::TrustedKey {
                    name: "release".into(),
                    public_key: release.to_pem(),
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        (release, spec)
    }

    #[test]
    fn signed_by_admits_only_images_its_keys_signed() {
        let (release, spec) = signed_by_release();
        let other = new_key();
        let p = pod(json!([{"name": "app", "image": "reg.example/app:1"}]));
        let lookups = registry_lookups(&p, &named(&spec));
        assert_eq!(lookups.images, ["reg.example/app:1"]);
        assert_eq!(lookups.keys, std::slice::from_ref(&release));
        assert!(!lookups.reports);
        let digest = "sha256:00".to_owned();
        let judged = |check: Option<SignatureCheck>| {
            let context = Context {
                signatures: check
                    .map(|c| [("reg.example/app:1".to_owned(), c)].into())
                    .unwrap_or_default(),
                ..Default::default()
            };
            let report = evaluate(&p, &context, &named(&spec));
            report.lines(EnforcementAction::Enforce).join("\n")
        };
        let verified = |by: &PublicKey| {
            Some(SignatureCheck::Verified {
                digest: digest.clone(),
                by: vec![by.fingerprint()],
            })
        };
        assert_eq!(judged(verified(&release)), "");
        assert!(judged(verified(&other)).contains("is signed, but not by release"));
        let unsigned = judged(Some(SignatureCheck::Unsigned {
            digest: digest.clone(),
            found: 0,
        }));
        assert!(unsigned.contains("spec.containers[0].image"), "{unsigned}");
        assert!(
            unsigned.contains("no valid signature by release"),
            "{unsigned}"
        );
        assert!(unsigned.contains("meshctl image sign"), "{unsigned}");
        let down = judged(Some(SignatureCheck::Failed("registry down".into())));
        assert!(down.contains("cannot be checked: registry down"), "{down}");
        assert!(judged(None).contains("was not checked"));
    }

    #[test]
    fn verified_tags_are_pinned_to_their_digest_unless_the_policy_says_not() {
        let (release, mut spec) = signed_by_release();
        assert!(spec.images.pin_digest, "pinning is the default");
        let pinned_already = format!("reg.example/side@sha256:{}", "1".repeat(64));
        let p = json!({"spec": {
        "initContainers": [{"name": "init", "image": "reg.example/app:1"}],
        "containers": [
            {"name": "app", "image": "reg.example/app:1"},
            {"name": "other", "image": "reg.example/other:2"},
            {"name": "side", "image": pinned_already},
        ]}});
        let digest = format!("sha256:{}", "a".repeat(64));
        let context = Context {
            namespace: "shop",
            signatures: [
                (
                    "reg.example/app:1".to_owned(),
                    SignatureCheck::Verified {
                        digest: digest.clone(),
                        by: vec![release.fingerprint()],
                    },
                ),
                (
                    "reg.example/other:2".to_owned(),
                    SignatureCheck::Unsigned {
                        digest: digest.clone(),
                        found: 0,
                    },
                ),
                (
                    pinned_already.clone(),
                    SignatureCheck::Verified {
                        digest: digest.clone(),
                        by: vec![release.fingerprint()],
                    },
                ),
            ]
            .into(),
            ..Default::default()
        };
        let pins = digest_pins(&p, &context, &named(&spec));
        let expected = |pointer: &str| DigestPin {
            pointer: pointer.into(),
            image: format!("reg.example/app:1@{digest}"),
        };
        assert_eq!(
            pins,
            [
                expected("/spec/initContainers/0/image"),
                expected("/spec/containers/0/image")
            ]
        );
        // A policy that does not apply to the pod pins nothing.
        spec.exemptions.namespaces = vec!["shop".into()];
        assert!(digest_pins(&p, &context, &named(&spec)).is_empty());
        spec.exemptions.namespaces.clear();
        spec.images.pin_digest = false;
        assert!(digest_pins(&p, &context, &named(&spec)).is_empty());
        // Written out, the default is left out and the opt-out kept.
        let yaml = serde_json::to_value(&spec.images).unwrap();
        assert_eq!(yaml["pinDigest"], false);
        spec.images.pin_digest = true;
        assert!(serde_json::to_value(&spec.images).unwrap()["pinDigest"].is_null());
    }
}
