//! Two real Envoy sidecars, each with a rampart-proxy as its local SDS
//! agent, carry mTLS traffic configured entirely by rampart-control: the
//! echo sidecar registers itself as its service's endpoint, the frontend
//! sidecar reaches it over mTLS and the app sees the caller's SPIFFE ID;
//! plaintext is refused in STRICT and accepted in PERMISSIVE; DENY and
//! ALLOW policies give 403s; an injected fault answers for the app; the
//! endpoint leaves after the grace period.

use std::process::Stdio;

use rampart_tests::load::ECHO_SERVICE;
use rampart_tests::{ControlPlane, Logs, envoy, free_port, proxy, python_checks};

const DENY: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-frontend, namespace: default}
spec:
  selector: {app: echo}
  action: DENY
  rules: [{from: [{principals: ["spiffe://cluster.local/ns/default/sa/frontend"]}]}]
"#;

const ALLOW: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: default}
spec:
  selector: {app: echo}
  action: ALLOW
  rules:
  - from: [{namespaces: [default]}]
    to: [{methods: [GET], paths: ["/ok*"]}]
"#;

const PERMISSIVE: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {mtls: {mode: PERMISSIVE}}
"#;

const FAULT: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: echo-fault, namespace: default}
spec:
  service: echo
  fault: {abort: {httpStatus: 418, percent: 100}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecars_carry_mtls_with_identity_policy_and_registration() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &["--endpoint-grace", "2s"]).await;
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let model = write("model.yaml", ECHO_SERVICE);
    assert!(cp.meshctl(&["apply", "-f", &model]).status.success());

    // One rampart-proxy per sidecar, as the Envoy's SDS agent.
    let logs = Logs::default();
    let mut agents = Vec::new();
    let mut sockets = serde_json::Map::new();
    for sa in ["frontend", "echo"] {
        let token = cp.join_token("default", sa, 0).await;
        let sds = dir.path().join(format!("{sa}-sds.sock"));
        let mut child = proxy(&cp, &token, &dir.path().join(format!("{sa}-workload.sock")))
            .0
            .arg("--agent-only")
            .arg("--sds-socket")
            .arg(&sds)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        logs.capture_public(child.stderr.take().unwrap());
        agents.push(child);
        sockets.insert(sa.into(), sds.display().to_string().into());
    }
    for socket in sockets.values() {
        let path = std::path::PathBuf::from(socket.as_str().unwrap());
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            path.exists(),
            "agent socket {}:\n{}",
            path.display(),
            logs.text()
        );
    }

    let config = serde_json::json!({
        "envoy": envoy,
        "control_plane": cp.grpc_addr,
        "control_plane_id": "spiffe://cluster.local/ns/rampart-system/sa/rampart-control",
        "agents": sockets,
        "app_port": free_port(),
        "inbound_port": free_port(),
        "outbound_port": free_port(),
        "admin_ports": {"frontend": free_port(), "echo": free_port()},
        "meshctl": cp.meshctl_argv(&[]),
        "files": {
            "deny": write("deny.yaml", DENY),
            "allow": write("allow.yaml", ALLOW),
            "permissive": write("permissive.yaml", PERMISSIVE),
            "fault": write("fault.yaml", FAULT),
        },
        "work_dir": dir.path(),
    });
    let out = python_checks("envoy_mesh.py", &config, dir.path());
    for mut agent in agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    let tail = |name: &str| {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        let start = text.len().saturating_sub(20_000);
        String::from_utf8_lossy(&text.as_bytes()[start..]).into_owned()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "Envoy mesh checks failed:\n{}\n{}\necho envoy:\n{}\nfrontend envoy:\n{}\nagents:\n{}\ncontrol plane:\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr),
        tail("echo-1.log"),
        tail("frontend-1.log"),
        logs.text(),
        cp.logs.text(),
    );
}
