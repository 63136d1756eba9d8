//! Access logs, turned on in the MeshConfig while traffic flows: every
//! request through a pair of sidecars becomes one JSON line on each
//! sidecar's stdout, the caller's and the callee's lines sharing a request
//! id, each naming the identities, the endpoint and why the answer was
//! what it was (a denial by policy included).

use std::time::Duration;

use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, Sidecar, eventually, free_port};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
---
apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-private, namespace: default}
spec:
  selector: {app: web}
  action: DENY
  rules:
  - to: [{paths: ["/private*"]}]
"#;

const LOGGING: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {accessLog: true}
"#;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";

/// The JSON lines on `sidecar`'s stdout.
fn lines(sidecar: &Sidecar) -> Vec<Value> {
    sidecar
        .stdout
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// The line for `path`, once one has been written (lines are flushed
/// every second).
async fn line_for(sidecar: &Sidecar, path: &str) -> Value {
    let found = eventually(50, || async {
        lines(sidecar).iter().any(|l| l["path"] == path)
    })
    .await;
    assert!(found, "no line for {path}:\n{}", sidecar.stdout.text());
    lines(sidecar)
        .into_iter()
        .find(|l| l["path"] == path)
        .expect("found above")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_json_line_on_both_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let file = dir.path().join("model.yaml");
    std::fs::write(&file, MODEL).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let app = apps::echo("web").await;
    let inbound = free_port();
    let web = Sidecar::builder(&cp, dir.path(), "web")
        .args(&[
            "--node-id".into(),
            "web-1".into(),
            "--service".into(),
            "web".into(),
            "--label".into(),
            "app=web".into(),
            "--port".into(),
            format!("http={inbound}"),
            "--app-port".into(),
            format!("http={}", app.port),
        ])
        .start()
        .await;
    // The caller also reaches `raw`, a TCP service without a sidecar.
    let raw = apps::tcp_echo().await;
    let raw_model = dir.path().join("raw.yaml");
    std::fs::write(
        &raw_model,
        format!("apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: raw, namespace: default}}\nspec:\n  ports: [{{name: tcp, port: 9000, protocol: tcp}}]\n---\napiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: raw, namespace: default}}\nspec: {{service: raw, address: 127.0.0.1, ports: {{tcp: {raw}}}}}\n"),
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", raw_model.to_str().unwrap()]);
    let targets = ["web.default:8080", "raw.default:9000"];
    let (client, entries) = Sidecar::caller_of(&cp, dir.path(), "client", None, &targets).await;
    let (out, raw_out) = (entries[0].clone(), entries[1].clone());
    let up = eventually(150, || async {
        matches!(get_h1(&out, "web", "/").await, Ok((200, _)))
    })
    .await;
    assert!(up, "web never answered\n{}", client.logs.text());

    // Off by default: nothing on stdout.
    assert_eq!(
        get_h1(&out, "web", "/before").await.map(|(c, _)| c),
        Ok(200)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.stdout.text(), "");
    assert_eq!(web.stdout.text(), "");

    // On: the sidecars' connection to each other stays open, and its
    // requests are logged from the next one.
    std::fs::write(&file, LOGGING).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let logging = eventually(100, || async {
        let _ = get_h1(&out, "web", "/probe").await;
        !web.stdout.text().is_empty() && !client.stdout.text().is_empty()
    })
    .await;
    assert!(
        logging,
        "no access log line after turning it on\n{}",
        web.logs.text()
    );

    assert_eq!(
        get_h1(&out, "web", "/hello?x=1").await.map(|(c, _)| c),
        Ok(200)
    );
    let sent = line_for(&client, "/hello?x=1").await;
    let received = line_for(&web, "/hello?x=1").await;
    for (line, side) in [(&sent, "outbound"), (&received, "inbound")] {
        assert_eq!(line["method"], "GET", "{side}: {line}");
        assert_eq!(line["response_code"], 200, "{side}: {line}");
        assert_eq!(
            line["response_code_details"], "via_upstream",
            "{side}: {line}"
        );
        assert_eq!(line["response_flags"], "-", "{side}: {line}");
        assert_eq!(
            line["protocol"],
            if side == "outbound" {
                "HTTP/1.1"
            } else {
                "HTTP/2"
            },
            "{side}: {line}"
        );
        assert!(
            line["bytes_sent"].as_u64().is_some_and(|b| b > 0),
            "{side}: {line}"
        );
        assert!(line["duration"].is_u64(), "{side}: {line}");
        assert!(
            line["start_time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{side}: {line}"
        );
    }
    // The caller's sidecar gave the request an id; the callee's saw it.
    let id = sent["request_id"].as_str().expect("a request id");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(received["request_id"], id);
    // Who called whom, and where it went.
    assert_eq!(sent["upstream_cluster"], "outbound|8080||web.default");
    assert_eq!(sent["upstream_host"], format!("127.0.0.1:{inbound}"));
    assert_eq!(sent["upstream_peer"], WEB_ID);
    assert_eq!(received["downstream_peer"], CLIENT_ID);
    assert_eq!(received["upstream_host"], format!("127.0.0.1:{}", app.port));

    // Denied by policy at the callee: its line says why (as Envoy's does:
    // the DENY policy that matched, no response flag), and that the
    // request went nowhere; the caller's shows the 403 it got back.
    assert_eq!(
        get_h1(&out, "web", "/private/x").await.map(|(c, _)| c),
        Ok(403)
    );
    let denied = line_for(&web, "/private/x").await;
    assert_eq!(denied["response_code"], 403, "{denied}");
    assert_eq!(
        denied["response_code_details"], "rbac_access_denied_matched_policy[default/no-private]",
        "{denied}"
    );
    assert_eq!(denied["response_flags"], "-", "{denied}");
    assert_eq!(denied["upstream_host"], Value::Null, "{denied}");
    let refused = line_for(&client, "/private/x").await;
    assert_eq!(refused["response_code"], 403, "{refused}");
    assert_eq!(
        refused["response_code_details"], "via_upstream",
        "{refused}"
    );

    // A caller that gives up before the answer: both sidecars still write
    // the request's line, with code 0 and why.
    let mut gone = TcpStream::connect(&out).await.unwrap();
    gone.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gone);
    for sidecar in [&client, &web] {
        let line = line_for(sidecar, "/slow/3000").await;
        assert_eq!(line["response_code"], 0, "{line}");
        assert_eq!(
            line["response_code_details"], "downstream_remote_disconnect",
            "{line}"
        );
        assert_eq!(line["response_flags"], "DC", "{line}");
    }

    // A TCP connection is one line too: no request fields, code 0, the
    // bytes each way, the endpoint it reached.
    assert_eq!(
        apps::tcp_exchange(&raw_out, b"hello").await.ok().as_deref(),
        Some("got 5 bytes: hello")
    );
    let tcp = eventually(50, || async {
        lines(&client)
            .iter()
            .any(|l| l["upstream_cluster"] == "outbound|9000||raw.default")
    })
    .await;
    assert!(
        tcp,
        "no line for the TCP connection:\n{}",
        client.stdout.text()
    );
    let line = lines(&client)
        .into_iter()
        .find(|l| l["upstream_cluster"] == "outbound|9000||raw.default")
        .expect("found above");
    assert_eq!(line["bytes_received"], 5, "{line}");
    assert_eq!(line["bytes_sent"], 18, "{line}");
    assert_eq!(line["response_code"], 0, "{line}");
    assert_eq!(line["response_flags"], "-", "{line}");
    assert_eq!(line["method"], Value::Null, "{line}");
    assert_eq!(line["upstream_host"], format!("127.0.0.1:{raw}"), "{line}");
}
