//! The demo's mesh resources, as the YAML an operator would write: the
//! demo applies them through the same admin API as `meshctl apply`, and
//! prints what it applies so the tutorial teaches the real resources.

pub const NAMESPACE: &str = "demo";

/// Two services: `frontend` (HTTP) and `backend` (HTTP and gRPC), each
/// servable only by its own identity.
pub const SERVICES: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: frontend, namespace: demo}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [frontend]
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  ports:
  - {name: http, port: 8080, protocol: http}
  - {name: grpc, port: 9090, protocol: grpc}
  serviceAccounts: [backend]
"#;

/// The backend's traffic policy: retries and outlier detection always,
/// plus a split between versions when `weights` are given.
pub fn backend_policy(weights: Option<&[(String, u32)]>) -> String {
    let mut yaml = String::from(
        r#"apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: backend, namespace: demo}
spec:
  service: backend
  retries: {attempts: 2, retryOn: [connect-failure, reset, unavailable]}
  outlierDetection: {consecutive5xx: 2, interval: 1s, baseEjectionTime: 20s, maxEjectionPercent: 50}
"#,
    );
    if let Some(weights) = weights {
        yaml.push_str("  split:\n");
        for (version, weight) in weights {
            yaml.push_str(&format!(
                "  - {{subset: {{version: {version}}}, weight: {weight}}}\n"
            ));
        }
    }
    yaml
}

pub const DENY_NAME: &str = "deny-frontend-api";

/// Denies the frontend the backend's HTTP API; gRPC stays allowed.
pub const DENY: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-frontend-api, namespace: demo}
spec:
  selector: {app: backend}
  action: DENY
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/demo/sa/frontend"]}]
    to: [{paths: ["/api/*"]}]
"#;

/// `v1=90,v2=10` -> [(v1, 90), (v2, 10)], checked: known versions, each
/// once, weights summing to 100.
pub fn parse_weights(text: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let mut weights: Vec<(String, u32)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (version, weight) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{item:?}: expected VERSION=WEIGHT, e.g. v1=90"))?;
        if !super::VERSIONS.contains(&version) {
            anyhow::bail!(
                "{item:?}: the demo backend has versions {}",
                super::VERSIONS.join(" and ")
            );
        }
        let weight: u32 = weight
            .parse()
            .map_err(|_| anyhow::anyhow!("{item:?}: {weight:?} is not a whole number"))?;
        if weights.iter().any(|(v, _)| v == version) {
            anyhow::bail!("{version} is given twice");
        }
        weights.push((version.to_owned(), weight));
    }
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    if total != 100 {
        anyhow::bail!("the weights add up to {total}, not 100 (e.g. v1=90,v2=10)");
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_checked() {
        assert_eq!(
            parse_weights("v1=90, v2=10").unwrap(),
            vec![("v1".to_owned(), 90), ("v2".to_owned(), 10)]
        );
        for (bad, says) in [
            ("v1=90,v2=20", "add up to 110"),
            ("v1=50,v1=50", "given twice"),
            ("v3=100", "versions v1 and v2"),
            ("v1", "VERSION=WEIGHT"),
            ("v1=x,v2=100", "not a whole number"),
        ] {
            let e = parse_weights(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn every_resource_parses() {
        let split = backend_policy(Some(&parse_weights("v1=90,v2=10").unwrap()));
        for yaml in [SERVICES, DENY, &backend_policy(None), &split] {
            rampart_api::mesh::parse_documents("demo", yaml).unwrap();
        }
    }
}
