//! The names and IDs the control plane and its clients agree on: workload
//! SPIFFE IDs, secret names, and the names of a service port's listener,
//! route table and clusters.

use std::collections::BTreeMap;

/// `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn workload_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The name of the trust-bundle secret.
pub const ROOTCA: &str = "ROOTCA";

/// The name of a workload's own certificate secret (from its local agent).
pub const DEFAULT_SECRET: &str = "default";

/// `<svc>.<ns>:<port>`: the listener and route name a gRPC client asks for.
pub fn listener_name(service: &str, namespace: &str, port: u16) -> String {
    format!("{service}.{namespace}:{port}")
}

/// `outbound|<port>|<subset>|<svc>.<ns>` (subset empty for the whole service).
pub fn cluster_name(
    service: &str,
    namespace: &str,
    port: u16,
    subset: &BTreeMap<String, String>,
) -> String {
    let subset: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("outbound|{port}|{}|{service}.{namespace}", subset.join(","))
}
