//! The injection engine on a 64 KB pod spec (what the webhook does per
//! AdmissionReview besides TLS and HTTP): parse the review's JSON, inject,
//! diff to a JSON Patch, serialize. Printed next to a baseline measured in
//! the same run: parsing and serializing the same JSON, which any webhook
//! pays, so the ratio is what injection itself costs.
//!
//! Run: `cargo bench -p rampart-api --bench inject`

use std::time::{Duration, Instant};

use rampart_api::inject::{Outcome, Template, inject_pod, patch};
use serde_json::{Value, json};

fn big_pod() -> Vec<u8> {
    let containers: Vec<Value> = (0..40)
        .map(|i| {
            json!({"name": format!("c{i}"), "image": "registry.example/app:1",
                   "ports": [{"name": format!("http-{i}"), "containerPort": 8000 + i}],
                   "env": (0..20).map(|j| json!({"name": format!("VAR_{j}"), "value": "x".repeat(60)})).collect::<Vec<_>>()})
        })
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "big", "namespace": "shop", "labels": {"app": "big"}},
        "spec": {"serviceAccountName": "big", "containers": containers}
    }))
    .unwrap()
}

/// Per-iteration times of `op` over about two seconds: (p50, p99) in µs.
fn measure(mut op: impl FnMut()) -> (f64, f64) {
    for _ in 0..50 {
        op();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        op();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

fn main() {
    let body = big_pod();
    let template = Template {
        image: "rampart-proxy:bench".into(),
        control_plane: "cp:15012".into(),
        native_sidecar: true,
    };
    let baseline = measure(|| {
        let pod: Value = serde_json::from_slice(&body).unwrap();
        std::hint::black_box(serde_json::to_vec(&pod).unwrap());
    });
    let injection = measure(|| {
        let pod: Value = serde_json::from_slice(&body).unwrap();
        let Outcome::Injected(out) = inject_pod(&pod, &template).unwrap() else {
            panic!("not injected")
        };
        std::hint::black_box(serde_json::to_vec(&patch(&pod, &out)).unwrap());
    });
    println!("pod spec: {} bytes", body.len());
    println!(
        "baseline (parse + serialize): p50 {:.0} us, p99 {:.0} us",
        baseline.0, baseline.1
    );
    println!(
        "injection (parse, inject, diff, serialize): p50 {:.0} us, p99 {:.0} us",
        injection.0, injection.1
    );
    println!("ratio (p50): {:.1}x the baseline", injection.0 / baseline.0);
}
