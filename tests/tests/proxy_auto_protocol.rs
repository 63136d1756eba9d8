//! Ports whose protocol is not declared (`auto`): the caller's sidecar
//! tells HTTP/1.1 and HTTP/2 from anything else on the first bytes, sends
//! HTTP through its routes and the rest as opaque TCP, and the server's
//! sidecar takes each the same way (by the ALPN of the mTLS hop). A
//! server-speaks-first protocol gets through after the detection timeout,
//! which is counted.

use rampart_tests::apps::{self, get_h1, get_h2, tcp_exchange};
use rampart_tests::{ControlPlane, Sidecar, counter, eventually, free_port};
use tokio::io::AsyncReadExt;

const SERVICE: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  ports:
  - {name: web, port: 8080}
  - {name: raw, port: 9000, protocol: auto}
  - {name: greet, port: 9100}
"#;

const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";

/// A server that speaks first: it sends a greeting as soon as a client
/// connects, then closes.
async fn greeter() -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"220 ready\r\n").await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_ports_carry_http_and_tcp_as_detected() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let model = dir.path().join("hello.yaml");
    std::fs::write(&model, SERVICE).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    let web = apps::echo("hello").await;
    let raw = apps::tcp_echo().await;
    let greet = greeter().await;
    let mut args = vec!["--node-id".to_owned(), "hello-1".into()];
    args.extend(["--service".into(), "hello".into()]);
    for (name, app) in [("web", web.port), ("raw", raw), ("greet", greet)] {
        args.extend(["--port".into(), format!("{name}={}", free_port())]);
        args.extend(["--app-port".into(), format!("{name}={app}")]);
    }
    let hello = Sidecar::builder(&cp, dir.path(), "hello")
        .args(&args)
        .start()
        .await;
    let outbound: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut args = vec!["--node-id".to_owned(), "frontend-1".into()];
    for (local, port) in outbound.iter().zip([8080, 9000, 9100]) {
        args.extend(["--outbound".into(), format!("{local}=hello.default:{port}")]);
    }
    let frontend = Sidecar::builder(&cp, dir.path(), "frontend")
        .args(&args)
        .start()
        .await;
    let logs = || {
        format!(
            "frontend:\n{}\nhello:\n{}",
            frontend.logs.text(),
            hello.logs.text()
        )
    };
    let (web_out, raw_out, greet_out) = (&outbound[0], &outbound[1], &outbound[2]);

    // HTTP/1.1 is detected and routed: the server's sidecar took it as HTTP
    // too, since the app sees the caller's identity header it adds.
    let up = eventually(150, || async {
        matches!(
            get_h1(web_out, "hello.default:8080", "/hi").await,
            Ok((200, _))
        )
    })
    .await;
    assert!(up, "no 200 on the auto port\n{}", logs());
    let (code, body) = get_h1(web_out, "hello.default:8080", "/hi").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("path=/hi") && body.contains(&format!("URI={FRONTEND_ID}")),
        "{body}"
    );

    // HTTP/2 with prior knowledge is detected too.
    let (code, body) = get_h2(web_out, "hello.default:8080", "/two").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("path=/two"), "{body}");

    // Bytes that are not HTTP cross as opaque TCP, half-close included.
    let answer = tcp_exchange(raw_out, b"\x00\x01binary ping").await.unwrap();
    assert_eq!(answer, "got 13 bytes: \u{0}\u{1}binary ping", "{}", logs());
    // Even bytes that start like an HTTP method.
    let answer = tcp_exchange(raw_out, b"GET me a coffee\r\n").await.unwrap();
    assert_eq!(answer, "got 17 bytes: GET me a coffee\r\n", "{}", logs());

    // The server speaks first: the client sends nothing, so detection waits
    // out its timeout, then the connection is carried as TCP.
    let mut stream = tokio::net::TcpStream::connect(greet_out).await.unwrap();
    let mut greeting = vec![0u8; 11];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_exact(&mut greeting),
    )
    .await
    .expect("the greeting never came")
    .unwrap();
    assert_eq!(greeting, b"220 ready\r\n");

    let metrics = frontend.metrics().await;
    let service = "destination_service=\"outbound|8080||hello.default\"";
    let requests = |m: &str| counter(m, "rampart_proxy_requests_total", &[service]);
    assert!(requests(&metrics) >= 2.0, "{metrics}");
    assert!(
        counter(&metrics, "rampart_proxy_tcp_connections_total", &[]) >= 3.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "rampart_proxy_protocol_detect_timeouts_total",
            &["listener=\"outbound|"]
        ) >= 1.0,
        "{metrics}"
    );
    // The server side counted the HTTP requests as HTTP, from the caller.
    let metrics = hello.metrics().await;
    assert!(
        counter(
            &metrics,
            "rampart_proxy_requests_total",
            &[
                "direction=\"inbound\"",
                &format!("source_identity=\"{FRONTEND_ID}\"")
            ]
        ) >= 2.0,
        "{metrics}"
    );
}
