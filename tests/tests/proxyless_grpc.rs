//! Proxyless gRPC (PyPI grpcio) resolves services through rampart-control's
//! ADS over mTLS, follows the traffic split, ACKs what it gets (CSDS), and
//! moves traffic when the split changes.

use rampart_tests::{ControlPlane, apply_split, free_port, python_checks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_follows_the_split_and_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let (v1, v2) = (free_port(), free_port());
    let second = apply_split(&cp, dir.path(), ("grpc", 50051, "grpc"), v1, v2);
    let cert_dir = dir.path().join("client-cert");
    cp.issue_certificate("client", &cert_dir);

    let reweigh = cp.meshctl_argv(&["apply", "-f", second.to_str().unwrap()]);
    let config = serde_json::json!({
        "control_plane": cp.grpc_addr,
        "cert_dir": cert_dir,
        "backends": {"v1": v1, "v2": v2},
        "target": "xds:///echo.default:50051",
        "reweigh": reweigh,
        "work_dir": dir.path(),
    });
    let out = python_checks("proxyless_grpc.py", &config, dir.path());
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
