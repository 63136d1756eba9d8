//! rampart-proxy's own ADS stream: it registers its workload, takes its
//! sidecar configuration (inbound listener, clusters, endpoints, ROOTCA),
//! ACKs it (SYNCED in proxy-status, listed in its /config_dump), keeps it
//! when the control plane dies, and resumes when it comes back.

use std::process::Stdio;
use std::time::Duration;

use rampart_tests::{ControlPlane, Logs, free_port, http_get, proxy};

const MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [hello]
"#;

/// The proxy's /config_dump once `ready` holds, or what it last was.
async fn dump_until(admin: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        if let Ok((200, body)) = http_get(admin, "/config_dump").await {
            last = serde_json::from_str(&body).unwrap_or_default();
            if ready(&last) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// proxy-status's states for `node`, once all are SYNCED (or the last seen).
async fn synced(cp: &ControlPlane, node: &str) -> Vec<(String, String)> {
    let mut states = Vec::new();
    for _ in 0..100 {
        let out = cp.meshctl(&["proxy-status", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        states = status
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["nodeId"] == node)
            .flat_map(|p| p["types"].as_array().cloned().unwrap_or_default())
            .map(|t| {
                (
                    t["type"].as_str().unwrap_or_default().to_owned(),
                    t["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if states.len() >= 4 && states.iter().all(|(_, s)| s == "SYNCED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_takes_acks_keeps_and_resumes_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    let model = dir.path().join("model.yaml");
    std::fs::write(&model, MODEL).unwrap();
    assert!(
        cp.meshctl(&["apply", "-f", model.to_str().unwrap()])
            .status
            .success()
    );

    let token = cp.join_token("default", "hello", 0).await;
    let (listen, app) = (free_port(), free_port());
    let (mut command, admin) = proxy(&cp, &token, &dir.path().join("hello.sock"));
    let mut child = command
        .args([
            "--node-id",
            "hello-1",
            "--service",
            "hello",
            "--label",
            "app=hello",
        ])
        .args([
            "--port",
            &format!("http={listen}"),
            "--app-port",
            &format!("http={app}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Logs::default();
    logs.capture_public(child.stderr.take().unwrap());

    let inbound = format!("inbound|{listen}");
    let has_all = |d: &serde_json::Value| {
        d["type.googleapis.com/envoy.config.listener.v3.Listener"][&inbound].is_string()
            && d["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["outbound|8080||hello.default"].is_string()
            && d["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"]["outbound|8080||hello.default"].is_string()
            && d["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"]["ROOTCA"].is_string()
    };
    let dump = dump_until(&admin, has_all).await;
    assert!(
        has_all(&dump),
        "config_dump: {dump}\nproxy log:\n{}",
        logs.text()
    );
    let states = synced(&cp, "hello-1").await;
    assert!(
        states.len() >= 4 && states.iter().all(|(_, s)| s == "SYNCED"),
        "{states:?}\nproxy log:\n{}",
        logs.text()
    );
    // Its metrics say what it applied.
    let metrics = http_get(&admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    for t in ["cds", "eds", "lds", "sds"] {
        let acked = rampart_tests::counter(
            &metrics,
            "rampart_proxy_xds_updates_total",
            &[&format!("type=\"{t}\""), "result=\"ack\""],
        );
        assert!(acked >= 1.0, "no {t} update counted as applied:\n{metrics}");
    }
    assert!(
        rampart_tests::counter(&metrics, "rampart_proxy_xds_resources", &["type=\"lds\""]) >= 1.0,
        "{metrics}"
    );
    // Its own endpoint is in what it holds: it registered itself.
    let config = cp.meshctl(&["proxy-config", "hello-1", "--type", "eds", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&config.stdout).contains(&listen.to_string()),
        "{}",
        String::from_utf8_lossy(&config.stdout)
    );

    // The control plane dies: the proxy keeps its configuration.
    cp.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = dump_until(&admin, |_| true).await;
    assert_eq!(kept, dump, "the last good configuration is kept");
    assert!(logs.text().contains("keeping the last good configuration"));

    // It comes back: the proxy resumes and is SYNCED again.
    let cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    let states = synced(&cp, "hello-1").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        states.len() >= 4 && states.iter().all(|(_, s)| s == "SYNCED"),
        "{states:?}\nproxy log:\n{}",
        logs.text()
    );
}
