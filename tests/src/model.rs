//! Mesh models tests apply: a service split between two versions.

use std::path::{Path, PathBuf};

use crate::ControlPlane;

/// [`split_model`] as two files in `dir`: 80/20 (applied now) and 0/100
/// (for the test to apply later); returns the second.
pub fn apply_split(
    cp: &ControlPlane,
    dir: &Path,
    port: (&str, u16, &str),
    v1: u16,
    v2: u16,
) -> PathBuf {
    let first = dir.join("split-80-20.yaml");
    let second = dir.join("split-0-100.yaml");
    std::fs::write(&first, split_model(port, v1, v2, (80, 20))).unwrap();
    std::fs::write(&second, split_model(port, v1, v2, (0, 100))).unwrap();
    cp.meshctl_ok(&["apply", "-f", first.to_str().unwrap()]);
    second
}

/// The TrafficPolicy splitting `echo` between its v1 and v2 by `weights`.
pub fn split_policy(weights: (u32, u32)) -> String {
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: echo-split, namespace: default}}
spec:
  service: echo
  split: [{{subset: {{version: v1}}, weight: {}}}, {{subset: {{version: v2}}, weight: {}}}]
"#,
        weights.0, weights.1
    )
}

/// The echo service on one port (`name`, `port`, `protocol`) with two
/// endpoints on loopback, v1 and v2, and a weighted split between them.
pub fn split_model(port: (&str, u16, &str), v1: u16, v2: u16, weights: (u32, u32)) -> String {
    let (name, number, protocol) = port;
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: {name}, port: {number}, protocol: {protocol}}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: echo-v1, namespace: default, labels: {{app: echo, version: v1}}}}
spec: {{service: echo, address: 127.0.0.1, ports: {{{name}: {v1}}}, serviceAccount: echo}}
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: echo-v2, namespace: default, labels: {{app: echo, version: v2}}}}
spec: {{service: echo, address: 127.0.0.1, ports: {{{name}: {v2}}}, serviceAccount: echo}}
---
{}"#,
        split_policy(weights)
    )
}
