//! The mesh model: the resources operators write (as Kubernetes-style YAML
//! documents) and the control plane turns into proxy configuration. The same
//! schemas become CRDs in Kubernetes.
//!
//! Each document has `apiVersion: rampart.dev/v1alpha1`, a `kind`,
//! `metadata` (name, namespace, labels) and a `spec`. Unknown fields are
//! errors, so a typo never silently does nothing.

pub mod crd;
mod parse;
mod spec;
mod validate;

pub use crate::policy::{SecurityPolicySpec, VulnerabilityReportSpec};
pub use parse::{DocumentError, ParseError, parse_documents};
pub use spec::*;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The API version of every mesh resource.
pub const API_VERSION: &str = "rampart.dev/v1alpha1";

/// Name, namespace and labels of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS label, unique per kind and namespace.
    pub name: String,
    /// Defaults to `default`; ignored (empty) for cluster-wide kinds.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Free-form labels (used by subsets and selectors).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// The kinds of mesh resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    MeshConfig,
    Service,
    WorkloadEntry,
    TrafficPolicy,
    AuthorizationPolicy,
    SecurityPolicy,
    VulnerabilityReport,
}

impl Kind {
    /// Every kind, in the order resources are applied and shown.
    pub const ALL: [Kind; 7] = [
        Kind::MeshConfig,
        Kind::Service,
        Kind::WorkloadEntry,
        Kind::TrafficPolicy,
        Kind::AuthorizationPolicy,
        Kind::SecurityPolicy,
        Kind::VulnerabilityReport,
    ];

    /// The `kind:` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MeshConfig => "MeshConfig",
            Kind::Service => "Service",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::SecurityPolicy => "SecurityPolicy",
            Kind::VulnerabilityReport => "VulnerabilityReport",
        }
    }

    /// Parses a kind as users type it: `Service`, `service`, `services`, `svc`...
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Some(match singular {
            "meshconfig" | "mc" => Kind::MeshConfig,
            "service" | "svc" => Kind::Service,
            "workloadentry" | "workloadentrie" | "we" => Kind::WorkloadEntry,
            "trafficpolicy" | "trafficpolicie" | "tp" => Kind::TrafficPolicy,
            "authorizationpolicy" | "authorizationpolicie" | "ap" => Kind::AuthorizationPolicy,
            "securitypolicy" | "securitypolicie" | "secp" => Kind::SecurityPolicy,
            "vulnerabilityreport" | "vulnreport" => Kind::VulnerabilityReport,
            _ => return None,
        })
    }

    /// Whether resources of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::MeshConfig | Kind::VulnerabilityReport)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated mesh resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Resource {
    MeshConfig(Object<MeshConfigSpec>),
    Service(Object<ServiceSpec>),
    WorkloadEntry(Object<WorkloadEntrySpec>),
    TrafficPolicy(Box<Object<TrafficPolicySpec>>),
    AuthorizationPolicy(Object<AuthorizationPolicySpec>),
    SecurityPolicy(Object<SecurityPolicySpec>),
    VulnerabilityReport(Object<VulnerabilityReportSpec>),
}

/// Metadata plus a typed spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: S,
}

/// Identifies a resource: kind, namespace (empty for cluster-wide kinds), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl ResourceKey {
    /// The storage key: `Kind/namespace/name`.
    pub fn storage_key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::MeshConfig(_) => Kind::MeshConfig,
            Resource::Service(_) => Kind::Service,
            Resource::WorkloadEntry(_) => Kind::WorkloadEntry,
            Resource::TrafficPolicy(_) => Kind::TrafficPolicy,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::SecurityPolicy(_) => Kind::SecurityPolicy,
            Resource::VulnerabilityReport(_) => Kind::VulnerabilityReport,
        }
    }

    /// The resource's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::MeshConfig(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::WorkloadEntry(o) => &o.metadata,
            Resource::TrafficPolicy(o) => &o.metadata,
            Resource::AuthorizationPolicy(o) => &o.metadata,
            Resource::SecurityPolicy(o) => &o.metadata,
            Resource::VulnerabilityReport(o) => &o.metadata,
        }
    }

    /// Its key.
    pub fn key(&self) -> ResourceKey {
        let metadata = self.metadata();
        ResourceKey {
            kind: self.kind(),
            namespace: if self.kind().namespaced() {
                metadata.namespace.clone()
            } else {
                String::new()
            },
            name: metadata.name.clone(),
        }
    }

    /// Canonical JSON (what is stored and compared).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("mesh resources serialize")
    }

    /// Reads back canonical JSON written by [`Resource::to_json`].
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}
