//! The `SecurityPolicy` kind: what a pod must be to be admitted. One in a
//! namespace applies to that namespace; one in the control plane's root
//! namespace (`rampart-system`) applies to every namespace. Every policy
//! that applies is checked, each with its own enforcement action, so a
//! namespace cannot weaken the cluster's policy; only the cluster policy's
//! own exemptions can.

use serde::{Deserialize, Serialize};

use super::Level;

/// Admission rules for pods.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    kube::CustomResource,
)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "SecurityPolicy",
    namespaced,
    shortname = "secp"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityPolicySpec {
    /// `enforce` (default) denies a violating pod; `audit` admits it and
    /// records the violations (an Event, audit annotations, metrics); `warn`
    /// admits it and returns the violations as warnings to the client.
    #[serde(default)]
    pub enforcement_action: EnforcementAction,
    /// A Pod Security Standards level (`baseline` or `restricted`, latest
    /// version) every pod must meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security: Option<Level>,
    /// Rules beyond the standards (or stricter than them).
    #[serde(default, skip_serializing_if = "is_default")]
    pub containers: ContainerRules,
    /// Where images may come from.
    #[serde(default, skip_serializing_if = "is_default")]
    pub images: ImageRules,
    /// Who and what this policy does not apply to. Every exemption used is
    /// reported (a warning and an audit annotation), never silent.
    #[serde(default, skip_serializing_if = "is_default")]
    pub exemptions: Exemptions,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What happens to a pod that violates the policy.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementAction {
    #[default]
    Enforce,
    Audit,
    Warn,
}

impl EnforcementAction {
    /// As written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementAction::Enforce => "enforce",
            EnforcementAction::Audit => "audit",
            EnforcementAction::Warn => "warn",
        }
    }
}

impl std::fmt::Display for EnforcementAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-container rules, checked on containers, initContainers and
/// ephemeralContainers (the pod-level securityContext counts as their default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerRules {
    /// `runAsNonRoot: true` and no `runAsUser: 0`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_run_as_non_root: bool,
    /// `readOnlyRootFilesystem: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_read_only_root_filesystem: bool,
    /// No `privileged: true`, no `allowPrivilegeEscalation` left on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forbid_privileged: bool,
    /// No hostNetwork, hostPID or hostIPC.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forbid_host_namespaces: bool,
    /// A seccomp profile is required, of one of these types
    /// (`RuntimeDefault`, `Localhost`); empty: no rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seccomp_profile_types: Vec<String>,
    /// If set, an AppArmor profile is required, one of these:
    /// `RuntimeDefault`, `Localhost/<profile>` or `Localhost/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_armor_profiles: Vec<String>,
    /// If set, an SELinux type is required, one of these (`container_t`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub se_linux_types: Vec<String>,
}

/// Image rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRules {
    /// Registries or repository prefixes images must come from, matched on
    /// the normalized reference by whole path components (`ghcr.io/acme`,
    /// `nginx` = `docker.io/library/nginx`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_registries: Vec<String>,
    /// Only `image@sha256:…` references (a tag can be re-pushed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_digest: bool,
    /// If set, every image must carry a cosign signature (checked in its
    /// registry) by one of these keys; empty: no signature needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<TrustedKey>,
    /// If set, the image's vulnerability report must stay within these
    /// counts: a cosign vulnerability attestation signed by one of
    /// `signedBy`'s keys (carrying a Trivy JSON report), or a
    /// `VulnerabilityReport` for its digest; with both, the worse counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<VulnerabilityBudget>,
    /// With `signedBy`: rewrite each verified image's tag to the digest
    /// that was verified (`app:1` -> `app:1@sha256:…`) as the pod is
    /// created, so the kubelet pulls what was checked, not whatever the tag
    /// names by then. Default true; false leaves images as written.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub pin_digest: bool,
}

impl Default for ImageRules {
    fn default() -> Self {
        Self {
            allowed_registries: Vec::new(),
            require_digest: false,
            signed_by: Vec::new(),
            vulnerabilities: None,
            pin_digest: true,
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The most findings of each severity an image may have; a severity left
/// out is not limited.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VulnerabilityBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_critical: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_high: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_medium: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_low: Option<u32>,
    /// Deny images with no report (default true: an unscanned image is
    /// not known to be within the budget).
    #[serde(default = "yes")]
    pub require_report: bool,
}

fn yes() -> bool {
    true
}

/// A key images may be signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedKey {
    /// What reports call it (`release`, `ci`).
    pub name: String,
    /// The ECDSA P-256 public key, PEM (`-----BEGIN PUBLIC KEY-----`, as
    /// in cosign.pub).
    pub public_key: String,
}

/// Exemptions; each entry names what it exempts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exemptions {
    /// Namespaces the policy does not apply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `namespace/name` of ServiceAccounts whose pods are exempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Images (allow-list syntax) exempt from the image rules and from the
    /// container rules for the containers that run them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

/// Problems with a spec, as (field, message).
pub fn validate(spec: &SecurityPolicySpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, kind) in spec.containers.seccomp_profile_types.iter().enumerate() {
        if !matches!(kind.as_str(), "RuntimeDefault" | "Localhost") {
            problems.push((
                format!("spec.containers.seccompProfileTypes[{i}]"),
                format!("{kind:?} is not RuntimeDefault or Localhost"),
            ));
        }
    }
    for (i, profile) in spec.containers.app_armor_profiles.iter().enumerate() {
        if profile != "RuntimeDefault" && !profile.starts_with("Localhost/") {
            problems.push((
                format!("spec.containers.appArmorProfiles[{i}]"),
                format!("{profile:?} is not RuntimeDefault or Localhost/<profile>"),
            ));
        }
    }
    for (i, entry) in spec.images.allowed_registries.iter().enumerate() {
        if entry.trim().is_empty() || entry.contains(char::is_whitespace) || entry.contains('@') {
            problems.push((
                format!("spec.images.allowedRegistries[{i}]"),
                format!("{entry:?} is not a registry or repository prefix"),
            ));
        }
    }
    for (i, key) in spec.images.signed_by.iter().enumerate() {
        if key.name.trim().is_empty() {
            problems.push((
                format!("spec.images.signedBy[{i}].name"),
                "a key needs a name".to_owned(),
            ));
        }
        if let Err(e) = crate::oci::cosign::PublicKey::from_pem(&key.public_key) {
            problems.push((
                format!("spec.images.signedBy[{i}].publicKey"),
                e.to_string(),
            ));
        }
    }
    for (i, sa) in spec.exemptions.service_accounts.iter().enumerate() {
        if !matches!(sa.split_once('/'), Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        {
            problems.push((
                format!("spec.exemptions.serviceAccounts[{i}]"),
                format!("{sa:?} is not namespace/name"),
            ));
        }
    }
    problems
}
