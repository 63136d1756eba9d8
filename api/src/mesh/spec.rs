//! The specs of each kind. Field names follow the documented YAML
//! (camelCase); every field says its unit and default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Mesh-wide settings (one, named `default`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Default,
    schemars::JsonSchema,
    kube::CustomResource,
)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "MeshConfig",
    shortname = "rmc"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfigSpec {
    /// Informational: the control plane's `--trust-domain` decides; a
    /// different value here is refused so the two cannot disagree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Default mTLS mode for inbound traffic. Default STRICT.
    #[serde(default)]
    pub mtls: MtlsSettings,
    /// How long the sidecars keep connections that do nothing.
    #[serde(default)]
    pub connections: ConnectionSettings,
    /// Every sidecar writes one JSON line per HTTP request on its stdout.
    /// Default false.
    #[serde(default)]
    pub access_log: bool,
}

/// Timeouts every sidecar applies to the connections it accepts (from its
/// app outbound, from peers inbound). Durations like `90s`, `1h`; `0s`
/// turns one off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSettings {
    /// An HTTP connection with no request in flight for this long is closed
    /// (gracefully: GOAWAY on HTTP/2). Default `1h` (Envoy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_idle_timeout: Option<String>,
    /// An HTTP/1.x request head must be complete this long after its first
    /// byte, or the connection is closed (slow-loris clients). Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<String>,
    /// A TCP connection with no byte either way for this long is closed.
    /// Default `1h` (Envoy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_idle_timeout: Option<String>,
}

/// mTLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSettings {
    /// STRICT (mTLS only) or PERMISSIVE (mTLS and plaintext).
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Inbound mTLS mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Strict,
    Permissive,
}

/// A service: a name and its ports.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, kube::CustomResource,
)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "Service",
    namespaced,
    shortname = "rsvc"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// At least one port; names and numbers unique.
    pub ports: Vec<ServicePort>,
    /// The service accounts (same namespace) allowed to serve this service.
    /// Clients verify the server's SPIFFE ID against them, and a sidecar of
    /// another identity cannot register as its endpoint. Default: any
    /// service account of the namespace (clients then accept the identities
    /// of the endpoints they know).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Virtual IPs of the service (a Kubernetes ClusterIP, or addresses
    /// chosen for VMs): a connection captured on its way to one of them, on
    /// a service port, takes that port's routes and endpoints. Unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// DNS label, unique in the service.
    pub name: String,
    /// 1-65535.
    pub port: u16,
    /// How the traffic is spoken; `auto` (the default) when not given.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Application protocol of a port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    /// Not declared: the client's sidecar tells HTTP/1.1 and HTTP/2 from
    /// anything else on the first bytes of each connection and carries the
    /// rest as opaque TCP. Declare server-speaks-first protocols `tcp`:
    /// their connections wait out the detection timeout.
    #[default]
    Auto,
}

/// A standalone endpoint of a service (a VM or process without Kubernetes).
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, kube::CustomResource,
)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "WorkloadEntry",
    namespaced,
    shortname = "we"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// The service (same namespace) this endpoint belongs to.
    pub service: String,
    /// IPv4 or IPv6 address.
    pub address: String,
    /// Service port name -> the port this endpoint listens on.
    pub ports: BTreeMap<String, u16>,
    /// The workload's service account (its identity); default `default`.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Whether a Rampart sidecar fronts this endpoint (then it is reached
    /// over mTLS); default false (plaintext).
    #[serde(default)]
    pub sidecar: bool,
    /// Relative weight among endpoints of the same locality; default 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// Locality, e.g. `region/zone`; default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Draining: it finishes what it has but gets no new requests (unless
    /// every endpoint of the service is draining). Kubernetes discovery
    /// sets it for terminating pods that still serve; default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn default_service_account() -> String {
    "default".to_owned()
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// How traffic to a service is handled.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, kube::CustomResource,
)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    shortname = "tp"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// The service (same namespace) this policy applies to.
    pub service: String,
    /// Only these service ports (by name); default all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Per-request timeout, e.g. `2s`, `500ms`; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Load-balancing policy; default LEAST_REQUEST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Circuit breakers; default Envoy's (1024 each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Outlier detection; default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Weighted split between subsets (endpoint labels); weights sum to 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitTarget>,
    /// Fault injection; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Copy a share of requests to another service (responses ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Requests each endpoint's sidecar lets in; default no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A local rate limit: every endpoint's sidecar answers 429 to the HTTP
/// requests beyond it (a token bucket per sidecar and port, as Envoy's
/// local rate limit; not a limit shared across endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate, 1-1,000,000.
    pub requests_per_second: u32,
    /// Requests let through at once after a quiet spell; default
    /// `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try, 1-10.
    pub attempts: u32,
    /// Conditions: 5xx, gateway-error, reset, connect-failure, retriable-4xx,
    /// refused-stream, and gRPC: cancelled, deadline-exceeded, internal,
    /// resource-exhausted, unavailable. Default `[connect-failure, refused-stream, unavailable]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    /// Timeout of each try, e.g. `500ms`; default the route timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Retry budget: at most this percent of active requests may be retries
    /// (1-100); default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<u32>,
}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    LeastRequest,
    RoundRobin,
    RingHash,
}

/// Connection and request limits towards a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Ejecting endpoints that keep failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (or connect failures) before ejection; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// How often ejection is evaluated, e.g. `10s`; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Base ejection time, multiplied by the number of ejections; default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// At most this percent of endpoints ejected (0-100); default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// One target of a weighted split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitTarget {
    /// Endpoint labels that select the subset (non-empty).
    pub subset: BTreeMap<String, String>,
    /// Percent of requests, 0-100; all weights sum to 100.
    pub weight: u32,
}

/// Faults injected into requests (for testing resilience).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Delay a share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// e.g. `100ms`.
    pub fixed: String,
    /// 0-100.
    pub percent: u32,
}

/// Fail a share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status 200-599.
    pub http_status: u16,
    /// 0-100.
    pub percent: u32,
}

/// Traffic mirroring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Service (same namespace) receiving the copies.
    pub service: String,
    /// 0-100; default 100.
    #[serde(default = "hundred")]
    pub percent: u32,
}

fn hundred() -> u32 {
    100
}

/// Who may call the selected workloads.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, kube::CustomResource,
)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "ap"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workload labels the policy applies to (same namespace); empty = all
    /// workloads of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// ALLOW or DENY. DENY policies are checked first; if any ALLOW policy
    /// selects a workload, requests matching none of them are denied.
    pub action: AuthorizationAction,
    /// A request matches the policy if it matches any rule; no rules with
    /// ALLOW allows nothing, with DENY denies nothing.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// ALLOW or DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    Allow,
    Deny,
}

/// A rule matches if its `from` and its `to` both match (an empty list matches anything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
}

/// Callers: SPIFFE IDs (exact, or a trailing `*`) and/or namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// What is called: ports, HTTP methods, paths (exact, `prefix*` or `*suffix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}
