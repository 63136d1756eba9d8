//! Two rampart-proxy sidecars carry real traffic: an app calls `hello`
//! through its sidecar's outbound listeners; the calls cross mTLS to the
//! hello sidecar, which checks the caller against the authorization
//! policy and hands them to the hello app. HTTP/1.1, HTTP/2, raw TCP with
//! half-close, HTTP/1.1 upgrades, the caller's identity at the app, plaintext refused, DENY
//! and ALLOW policies, and the metrics that show it. One sidecar speaks
//! state-of-the-world ADS, the other delta.

use bytes::Bytes;
use rampart_tests::apps::{self, get_h1, get_h2, post_chunked_h1, tcp_exchange};
use rampart_tests::{ControlPlane, Sidecar, counter, eventually, free_port, python_checks};

const HELLO: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  ports:
  - {name: http, port: 8080, protocol: http}
  - {name: h2, port: 8081, protocol: http2}
  - {name: tcp, port: 9000, protocol: tcp}
  serviceAccounts: [hello]
"#;

const DENY_FRONTEND: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {app: hello}
  action: DENY
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/default/sa/frontend"]}]
    to: [{paths: ["/admin*"]}]
"#;

const ALLOW_OTHERS: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-others, namespace: default}
spec:
  selector: {app: hello}
  action: ALLOW
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/default/sa/someone-else"]}]
"#;

const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const HELLO_ID: &str = "spiffe://cluster.local/ns/default/sa/hello";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_carry_http_h2_and_tcp_over_mtls_under_policy() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    let model = dir.path().join("hello.yaml");
    std::fs::write(&model, HELLO).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    let app = apps::echo("hello").await;
    let tcp_app = apps::tcp_echo().await;
    let (http_in, h2_in, tcp_in) = (free_port(), free_port(), free_port());
    let hello = Sidecar::builder(&cp, dir.path(), "hello")
        .args(&[
            // This sidecar uses state-of-the-world ADS, the other delta.
            "--xds-sotw".into(),
            "--node-id".into(),
            "hello-1".into(),
            "--service".into(),
            "hello".into(),
            "--label".into(),
            "app=hello".into(),
            "--port".into(),
            format!("http={http_in}"),
            "--port".into(),
            format!("h2={h2_in}"),
            "--port".into(),
            format!("tcp={tcp_in}"),
            "--app-port".into(),
            format!("http={}", app.port),
            "--app-port".into(),
            format!("h2={}", app.port),
            "--app-port".into(),
            format!("tcp={tcp_app}"),
        ])
        .start()
        .await;
    let (http_out, h2_out, tcp_out) = (free_port(), free_port(), free_port());
    let frontend = Sidecar::builder(&cp, dir.path(), "frontend")
        .args(&[
            "--node-id".into(),
            "frontend-1".into(),
            "--outbound".into(),
            format!("127.0.0.1:{http_out}=hello.default:8080"),
            "--outbound".into(),
            format!("127.0.0.1:{h2_out}=hello.default:8081"),
            "--outbound".into(),
            format!("127.0.0.1:{tcp_out}=hello.default:9000"),
        ])
        .start()
        .await;
    let http_out = format!("127.0.0.1:{http_out}");
    let logs = || {
        format!(
            "frontend:\n{}\nhello:\n{}",
            frontend.logs.text(),
            hello.logs.text()
        )
    };

    // HTTP/1.1 from the app; the hello app sees the caller's identity.
    let up = eventually(150, || async {
        matches!(
            get_h1(&http_out, "hello.default:8080", "/hi").await,
            Ok((200, _))
        )
    })
    .await;
    assert!(
        up,
        "no 200 through the sidecars; last: {:?}\n{}",
        get_h1(&http_out, "hello", "/hi").await,
        logs()
    );
    let (code, body) = get_h1(&http_out, "hello.default:8080", "/hi")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("name=hello")
            && body.contains("version=HTTP/1.1")
            && body.contains("path=/hi"),
        "{body}"
    );
    assert!(
        body.contains(&format!("URI={FRONTEND_ID}")),
        "the app must see the caller's SPIFFE ID: {body}"
    );

    // A Host that is no host[:port] is the caller's error: 400, saying so.
    let bad = get_h1(&http_out, "hello default", "/hi").await;
    assert!(
        matches!(&bad, Ok((400, why)) if why.contains("Host header")),
        "{bad:?}"
    );

    // HTTP/2 with prior knowledge, all the way to the app.
    let (code, body) = get_h2(&format!("127.0.0.1:{h2_out}"), "hello.default:8081", "/two")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("version=HTTP/2.0") && body.contains("path=/two"),
        "{body}"
    );

    // Bodies larger than the HTTP/2 windows between the proxies (1 MiB on
    // the server's side, 2 MiB on the client's), each way: they cross only
    // if each side gives the window back as it reads.
    let mib = 1024 * 1024;
    let chunks = vec![Bytes::from(vec![b'u'; 64 * 1024]); 48];
    let path = format!("/big/{}", 3 * mib);
    let big = post_chunked_h1(&http_out, "hello.default:8080", &path, chunks);
    // A window never given back stalls the body: fail rather than hang.
    let (code, body) = tokio::time::timeout(std::time::Duration::from_secs(30), big)
        .await
        .expect("a 3 MiB body each way stalled")
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("body={}", 3 * mib)),
        "{}",
        &body[..200.min(body.len())]
    );
    assert!(body.len() > 3 * mib, "{}", body.len());

    // An HTTP/1.1 upgrade (as WebSocket does): 101, then bytes both ways.
    let (status, echoed) = apps::upgrade_exchange(&http_out, "echo", b"framed bytes")
        .await
        .unwrap();
    assert!(status.contains(" 101 "), "{status}");
    assert_eq!(echoed, b"framed bytes");

    // Raw TCP: the app answers only after our half-close, which must cross both proxies.
    let answer = tcp_exchange(&format!("127.0.0.1:{tcp_out}"), b"ping over tcp")
        .await
        .unwrap();
    assert_eq!(answer, "got 13 bytes: ping over tcp");

    // STRICT: a plaintext client talking straight to the hello sidecar gets nothing.
    let direct = get_h1(&format!("127.0.0.1:{http_in}"), "hello", "/hi").await;
    assert!(direct.is_err(), "plaintext must be refused, got {direct:?}");
    let refused = tcp_exchange(&format!("127.0.0.1:{tcp_in}"), b"plain")
        .await
        .unwrap_or_default();
    // (The sidecar answers a TLS alert at most.)
    assert!(
        !refused.contains("got"),
        "plaintext TCP must not reach the app: {refused:?}"
    );

    // DENY a path for the frontend: 403 there, 200 elsewhere; TCP closed.
    let deny = dir.path().join("deny.yaml");
    std::fs::write(&deny, DENY_FRONTEND).unwrap();
    cp.meshctl_ok(&["apply", "-f", deny.to_str().unwrap()]);
    let denied = eventually(100, || async {
        matches!(get_h1(&http_out, "hello", "/admin/x").await, Ok((403, _)))
    })
    .await;
    assert!(denied, "/admin/x should become 403\n{}", logs());
    assert!(matches!(
        get_h1(&http_out, "hello", "/fine").await,
        Ok((200, _))
    ));

    // ALLOW only someone else: HTTP gets 403, TCP gets a closed connection.
    let allow = dir.path().join("allow.yaml");
    std::fs::write(&allow, ALLOW_OTHERS).unwrap();
    cp.meshctl_ok(&["apply", "-f", allow.to_str().unwrap()]);
    let forbidden = eventually(100, || async {
        matches!(get_h1(&http_out, "hello", "/fine").await, Ok((403, _)))
    })
    .await;
    assert!(
        forbidden,
        "the ALLOW policy should make /fine 403\n{}",
        logs()
    );
    // (TCP was already closed by the DENY rule: on TCP a path cannot be
    // seen, so a DENY rule that names one applies to the whole connection.)
    let tcp = tcp_exchange(&format!("127.0.0.1:{tcp_out}"), b"x")
        .await
        .unwrap_or_default();
    assert!(
        !tcp.contains("got"),
        "TCP must be closed by policy: {tcp:?}"
    );

    assert!(
        hello
            .logs
            .text()
            .contains("xDS stream open (state of the world)"),
        "{}",
        hello.logs.text()
    );

    // What an operator sees.
    let inbound = hello.metrics().await;
    assert!(
        counter(
            &inbound,
            "rampart_proxy_authz_decisions_total",
            &["decision=\"deny\"", "protocol=\"http\""]
        ) >= 2.0,
        "{inbound}"
    );
    assert!(
        counter(
            &inbound,
            "rampart_proxy_authz_decisions_total",
            &["decision=\"deny\"", "protocol=\"tcp\""]
        ) >= 1.0,
        "{inbound}"
    );
    assert!(
        counter(
            &inbound,
            "rampart_proxy_tls_handshake_failures_total",
            &["reason=\"not_tls\""]
        ) >= 2.0,
        "{inbound}"
    );
    let outbound = frontend.metrics().await;
    let ok = counter(
        &outbound,
        "rampart_proxy_requests_total",
        &[
            "direction=\"outbound\"",
            &format!("source_identity=\"{FRONTEND_ID}\""),
            &format!("destination_identity=\"{HELLO_ID}\""),
            "response_code=\"200\"",
        ],
    );
    assert!(ok >= 3.0, "{outbound}");
    assert!(
        counter(
            &outbound,
            "rampart_proxy_tcp_connections_total",
            &["direction=\"outbound\""]
        ) >= 1.0,
        "{outbound}"
    );
    // 13 bytes went out, "got 13 bytes: ping over tcp" (27) came back.
    assert!(
        counter(
            &outbound,
            "rampart_proxy_tcp_bytes_total",
            &["flow=\"sent\""]
        ) >= 13.0,
        "{outbound}"
    );
    assert!(
        counter(
            &outbound,
            "rampart_proxy_tcp_bytes_total",
            &["flow=\"received\""]
        ) >= 27.0,
        "{outbound}"
    );
}

const GRPC: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: mesh, namespace: default}
spec:
  ports: [{name: grpc, port: 50051, protocol: grpc}]
  serviceAccounts: [mesh]
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: mesh, namespace: default}
spec:
  service: mesh
  retries: {attempts: 2, retryOn: [unavailable]}
"#;

/// grpcio's client and server (tests/python/grpc_through_proxies.py) on
/// both ends: unary, server, client and bidirectional streaming, metadata
/// and statuses all cross the two sidecars intact (their bodies recorded
/// for retries on the way), and a unary call failed with UNAVAILABLE is
/// retried with its (streamed) body whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_cross_two_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let model = dir.path().join("grpc.yaml");
    std::fs::write(&model, GRPC).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
    let app_port = free_port();
    let server = Sidecar::builder(&cp, dir.path(), "mesh")
        .args(&[
            "--node-id".into(),
            "mesh-1".into(),
            "--service".into(),
            "mesh".into(),
            "--port".into(),
            format!("grpc={}", free_port()),
            "--app-port".into(),
            format!("grpc={app_port}"),
        ])
        .start()
        .await;
    let (client, out) =
        Sidecar::caller(&cp, dir.path(), "frontend", None, "mesh.default:50051").await;
    let config = serde_json::json!({"app_port": app_port, "outbound": out});
    let result = python_checks("grpc_through_proxies.py", &config, dir.path());
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}\nclient sidecar:\n{}\nserver sidecar:\n{}",
        String::from_utf8_lossy(&result.stderr),
        client.logs.text(),
        server.logs.text()
    );
    // The status of every RPC is counted, trailers included.
    let metrics = client.metrics().await;
    assert!(
        counter(
            &metrics,
            "rampart_proxy_requests_total",
            &["grpc_status=\"0\""]
        ) >= 4.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "rampart_proxy_requests_total",
            &["grpc_status=\"5\""]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "rampart_proxy_retries_total",
            &["cluster=\"outbound|50051||mesh.default\""]
        ) >= 5.0,
        "{metrics}"
    );
}
