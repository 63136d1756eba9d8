//! rampart-proxy and a real Envoy sidecar carry mTLS traffic to each other,
//! both ways, configured by the same control plane. The Envoy gets its
//! certificate from a rampart-proxy running as its local SDS agent (as
//! istio-agent does). Each app sees the other side's SPIFFE ID.

use std::process::{Command, Stdio};

use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, Sidecar, envoy, eventually, free_port, python};

const MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: viaenvoy, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [viaenvoy]
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: viarampart, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [viarampart]
"#;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampart_proxy_and_envoy_talk_mtls_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let model = dir.path().join("model.yaml");
    std::fs::write(&model, MODEL).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    // The rampart-proxy side: serves viarampart, calls viaenvoy.
    let rampart_app = apps::echo("rampart-app").await;
    let to_envoy = free_port();
    let rampart = Sidecar::start(
        &cp,
        dir.path(),
        "viarampart",
        None,
        &[
            "--node-id".into(),
            "viarampart-1".into(),
            "--service".into(),
            "viarampart".into(),
            "--port".into(),
            format!("http={}", free_port()),
            "--app-port".into(),
            format!("http={}", rampart_app.port),
            "--outbound".into(),
            format!("127.0.0.1:{to_envoy}=viaenvoy.default:8080"),
        ],
    )
    .await;

    // The Envoy side: an SDS agent, then Envoy; serves viaenvoy, calls viarampart.
    let sds = dir.path().join("envoy-sds.sock");
    let agent = Sidecar::start(
        &cp,
        dir.path(),
        "viaenvoy",
        None,
        &[
            "--agent-only".into(),
            "--sds-socket".into(),
            sds.display().to_string(),
        ],
    )
    .await;
    assert!(
        eventually(100, || async { sds.exists() }).await,
        "no SDS socket\n{}",
        agent.logs.text()
    );
    let envoy_app = apps::echo("envoy-app").await;
    let to_rampart = free_port();
    let bootstrap = Command::new(python())
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/envoy_bootstrap.py"))
        .args([
            "viaenvoy-1",
            &free_port().to_string(),
            sds.to_str().unwrap(),
            &cp.grpc_addr,
        ])
        .args([
            "rampart.sidecar=true".to_owned(),
            "rampart.service=viaenvoy".to_owned(),
            "rampart.address=127.0.0.1".to_owned(),
            format!("rampart.ports=http={}", free_port()),
            format!("rampart.app_ports=http={}", envoy_app.port),
            format!("rampart.outbound_listeners=127.0.0.1:{to_rampart}=viarampart.default:8080"),
        ])
        .output()
        .unwrap();
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let config = dir.path().join("envoy.json");
    std::fs::write(&config, &bootstrap.stdout).unwrap();
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let _envoy = Killed(
        Command::new(envoy())
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .stdout(log.try_clone().unwrap())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let envoy_log = || std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();

    // rampart-proxy -> mTLS -> Envoy -> app.
    let to_envoy = format!("127.0.0.1:{to_envoy}");
    let ok = eventually(300, || async {
        matches!(get_h1(&to_envoy, "viaenvoy", "/x").await, Ok((200, _)))
    })
    .await;
    assert!(
        ok,
        "rampart-proxy -> Envoy failed: {:?}\nrampart-proxy:\n{}\nenvoy:\n{}",
        get_h1(&to_envoy, "viaenvoy", "/x").await,
        rampart.logs.text(),
        envoy_log()
    );
    let (_, body) = get_h1(&to_envoy, "viaenvoy", "/x").await.unwrap();
    assert!(body.contains("name=envoy-app"), "{body}");
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/viarampart"),
        "Envoy must see rampart-proxy's SPIFFE ID: {body}"
    );

    // Envoy -> mTLS -> rampart-proxy -> app.
    let to_rampart = format!("127.0.0.1:{to_rampart}");
    let ok = eventually(300, || async {
        matches!(get_h1(&to_rampart, "viarampart", "/y").await, Ok((200, _)))
    })
    .await;
    assert!(
        ok,
        "Envoy -> rampart-proxy failed: {:?}\nrampart-proxy:\n{}\nenvoy:\n{}",
        get_h1(&to_rampart, "viarampart", "/y").await,
        rampart.logs.text(),
        envoy_log()
    );
    let (_, body) = get_h1(&to_rampart, "viarampart", "/y").await.unwrap();
    assert!(body.contains("name=rampart-app"), "{body}");
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/viaenvoy"),
        "rampart-proxy must see Envoy's SPIFFE ID: {body}"
    );
}
