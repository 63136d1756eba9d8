//! rampart-proxy and a real Envoy sidecar carry mTLS traffic to each other,
//! both ways, configured by the same control plane. The Envoy gets its
//! certificate from a rampart-proxy running as its local SDS agent (as
//! istio-agent does). Each app sees the other side's SPIFFE ID.

use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, EnvoySidecar, Sidecar, eventually, free_port};

const MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: viaenvoy, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}, {name: web, port: 8090}]
  serviceAccounts: [viaenvoy]
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: viarampart, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}, {name: web, port: 8090}]
  serviceAccounts: [viarampart]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampart_proxy_and_envoy_talk_mtls_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let model = dir.path().join("model.yaml");
    std::fs::write(&model, MODEL).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    // The rampart-proxy side: serves viarampart, calls viaenvoy.
    let rampart_app = apps::echo("rampart-app").await;
    let (to_envoy, to_envoy_auto) = (free_port(), free_port());
    let rampart = Sidecar::builder(&cp, dir.path(), "viarampart")
        .args(&[
            "--node-id".into(),
            "viarampart-1".into(),
            "--service".into(),
            "viarampart".into(),
            "--port".into(),
            format!("http={}", free_port()),
            "--app-port".into(),
            format!("http={}", rampart_app.port),
            "--port".into(),
            format!("web={}", free_port()),
            "--app-port".into(),
            format!("web={}", rampart_app.port),
            "--outbound".into(),
            format!("127.0.0.1:{to_envoy}=viaenvoy.default:8080"),
            "--outbound".into(),
            format!("127.0.0.1:{to_envoy_auto}=viaenvoy.default:8090"),
        ])
        .start()
        .await;

    // The Envoy side (with its SDS agent): serves viaenvoy, calls viarampart.
    let envoy_app = apps::echo("envoy-app").await;
    let (to_rampart, to_rampart_auto) = (free_port(), free_port());
    let metadata = [
        "rampart.service=viaenvoy".to_owned(),
        "rampart.address=127.0.0.1".to_owned(),
        format!("rampart.ports=http={},web={}", free_port(), free_port()),
        format!(
            "rampart.app_ports=http={},web={}",
            envoy_app.port, envoy_app.port
        ),
        format!(
            "rampart.outbound_listeners=127.0.0.1:{to_rampart}=viarampart.default:8080,127.0.0.1:{to_rampart_auto}=viarampart.default:8090"
        ),
    ];
    let envoy =
        EnvoySidecar::start(&cp, dir.path(), "viaenvoy-1", "viaenvoy", &metadata, &[]).await;
    let envoy_log = || envoy.log();

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

    // The `auto` ports. rampart-proxy detects HTTP and offers h2 on the
    // mTLS hop, so Envoy's inbound takes it as HTTP (and adds the caller's
    // identity). Envoy's HTTP inspector sends HTTP through its routes; its
    // cluster configures no ALPN, but Envoy's HTTP/1.1 pool offers
    // `http/1.1` of its own accord, so rampart-proxy too serves it as HTTP
    // and adds the caller's identity (as TCP, the app would get the request
    // without it).
    let auto = [
        (
            to_envoy_auto,
            "viaenvoy",
            "name=envoy-app",
            "URI=spiffe://cluster.local/ns/default/sa/viarampart",
        ),
        (
            to_rampart_auto,
            "viarampart",
            "name=rampart-app",
            "URI=spiffe://cluster.local/ns/default/sa/viaenvoy",
        ),
    ];
    for (port, host, app, seen) in auto {
        let answer = get_h1(&format!("127.0.0.1:{port}"), host, "/auto").await;
        assert!(
            matches!(&answer, Ok((200, body)) if body.contains(app) && body.contains(seen)),
            "{host} on its auto port: {answer:?}\nrampart-proxy:\n{}\nenvoy:\n{}",
            rampart.logs.text(),
            envoy_log()
        );
    }

    // Access logs from the same MeshConfig: Envoy takes the format the
    // control plane sends (or it would reject the listeners), and both
    // sidecars write the same keys; Envoy's request id reaches
    // rampart-proxy's line.
    let logging = dir.path().join("logging.yaml");
    std::fs::write(
        &logging,
        "apiVersion: rampart.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec: {accessLog: true}\n",
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", logging.to_str().unwrap()]);
    let json_lines = |text: String| -> Vec<serde_json::Value> {
        text.lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let logged = eventually(100, || async {
        let _ = get_h1(&to_rampart, "viarampart", "/logged").await;
        let seen = |lines: Vec<serde_json::Value>| lines.iter().any(|l| l["path"] == "/logged");
        seen(json_lines(envoy_log())) && seen(json_lines(rampart.stdout.text()))
    })
    .await;
    assert!(
        logged,
        "no access log line for /logged\nrampart-proxy:\n{}\nenvoy:\n{}",
        rampart.stdout.text(),
        envoy_log()
    );
    // Each side flushes its lines on its own clock: wait until some request
    // has its line on both.
    let pair = || {
        let rampart_lines = json_lines(rampart.stdout.text());
        json_lines(envoy_log())
            .into_iter()
            .filter(|l| l["path"] == "/logged")
            .find_map(|e| {
                let r = rampart_lines
                    .iter()
                    .find(|r| r["request_id"] == e["request_id"])?;
                Some((e.clone(), r.clone()))
            })
    };
    let matched = eventually(50, || async { pair().is_some() }).await;
    assert!(
        matched,
        "no request with a line on both sides\nrampart-proxy:\n{}\nenvoy:\n{}",
        rampart.stdout.text(),
        envoy_log()
    );
    let (by_envoy, by_rampart) = pair().expect("matched above");
    let keys = |l: &serde_json::Value| l.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&by_envoy),
        keys(&by_rampart),
        "{by_envoy}\n{by_rampart}"
    );
    for line in [&by_envoy, &by_rampart] {
        assert_eq!(line["response_code"], 200, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
    }
    assert_eq!(
        by_envoy["upstream_peer"],
        "spiffe://cluster.local/ns/default/sa/viarampart"
    );
    assert_eq!(
        by_rampart["downstream_peer"],
        "spiffe://cluster.local/ns/default/sa/viaenvoy"
    );

    // A local rate limit reaches Envoy as the same filter rampart-proxy
    // reads: Envoy takes it (a rejected listener would keep serving
    // without it) and refuses the calls beyond the burst.
    let limit = dir.path().join("limit.yaml");
    std::fs::write(
        &limit,
        "apiVersion: rampart.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: viaenvoy, namespace: default}\nspec: {service: viaenvoy, rateLimit: {requestsPerSecond: 1, burst: 2}}\n",
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", limit.to_str().unwrap()]);
    let limited = eventually(100, || async {
        let mut codes = Vec::new();
        for _ in 0..5 {
            codes.push(get_h1(&to_envoy, "viaenvoy", "/limited").await);
        }
        codes
            .iter()
            .any(|c| matches!(c, Ok((429, body)) if body.contains("local_rate_limited")))
    })
    .await;
    assert!(limited, "Envoy never rate-limited:\n{}", envoy_log());

    // Envoy took every update the MeshConfig and policies caused: access
    // logs on HTTP and TCP chains, the rate limit.
    assert!(
        !envoy_log().contains("rejected"),
        "Envoy rejected an update:\n{}",
        envoy_log()
    );
}
