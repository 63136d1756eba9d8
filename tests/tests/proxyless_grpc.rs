//! Proxyless gRPC (PyPI grpcio) resolves services through rampart-control's
//! ADS over mTLS, follows the traffic split, ACKs what it gets (CSDS), and
//! moves traffic when the split changes.

use std::process::Command;

use rampart_tests::{ControlPlane, bin, python};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn model(v1: u16, v2: u16, weights: (u32, u32)) -> String {
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: grpc, port: 50051, protocol: grpc}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: echo-v1, namespace: default, labels: {{app: echo, version: v1}}}}
spec: {{service: echo, address: 127.0.0.1, ports: {{grpc: {v1}}}, serviceAccount: echo}}
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: echo-v2, namespace: default, labels: {{app: echo, version: v2}}}}
spec: {{service: echo, address: 127.0.0.1, ports: {{grpc: {v2}}}, serviceAccount: echo}}
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: echo-split, namespace: default}}
spec:
  service: echo
  split: [{{subset: {{version: v1}}, weight: {}}}, {{subset: {{version: v2}}, weight: {}}}]
"#,
        weights.0, weights.1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_follows_the_split_and_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let (v1, v2) = (free_port(), free_port());
    let first = dir.path().join("split-80-20.yaml");
    let second = dir.path().join("split-0-100.yaml");
    std::fs::write(&first, model(v1, v2, (80, 20))).unwrap();
    std::fs::write(&second, model(v1, v2, (0, 100))).unwrap();
    let out = cp.meshctl(&["apply", "-f", first.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cert_dir = dir.path().join("client-cert");
    let out = cp.meshctl(&[
        "certificate",
        "issue",
        "--namespace",
        "default",
        "--service-account",
        "client",
        "--out",
        cert_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let reweigh = vec![
        bin("meshctl").display().to_string(),
        "--data-dir".into(),
        cp.data_dir.display().to_string(),
        "apply".into(),
        "-f".into(),
        second.display().to_string(),
    ];
    let config = serde_json::json!({
        "control_plane": cp.grpc_addr,
        "cert_dir": cert_dir,
        "backends": {"v1": v1, "v2": v2},
        "target": "xds:///echo.default:50051",
        "reweigh": reweigh,
        "work_dir": dir.path(),
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/proxyless_grpc.py"
        ))
        .arg(&config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcio checks failed:\n{stdout}\n{}\ncontrol plane:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cp.logs.text()
    );
    assert!(stdout.contains("all checks passed"));
    eprintln!("{stdout}");
    let streams = cp.logs.text().matches("xDS stream opened").count();
    assert_eq!(
        streams,
        1,
        "one ADS stream for the whole run:\n{}",
        cp.logs.text()
    );

    let (_, metrics) = cp.http_get("/metrics").await.unwrap();
    assert!(metrics.contains("rampart_xds_pushes_total{type_url=\"type.googleapis.com/envoy.config.route.v3.RouteConfiguration\"}"), "{metrics}");
}
