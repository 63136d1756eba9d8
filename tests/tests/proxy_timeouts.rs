//! Connections that do nothing are closed by rampart-proxy, as the
//! MeshConfig's `connections` timeouts say: an HTTP/1.1 client that never
//! finishes its request head (slow loris), HTTP/1.1 and HTTP/2 connections
//! with no request in flight, a TCP connection with no byte moving. And
//! what is busy is left alone: a slow response, a head sent in pieces, a
//! TCP connection with bytes trickling, an upgraded connection.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, Sidecar, counter, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn model(web: u16, raw: u16) -> String {
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: MeshConfig
metadata: {{name: default}}
spec:
  connections: {{httpIdleTimeout: 2s, requestHeadersTimeout: 1s, tcpIdleTimeout: 2s}}
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: web, namespace: default}}
spec: {{service: web, address: 127.0.0.1, ports: {{http: {web}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: raw, namespace: default}}
spec:
  ports: [{{name: tcp, port: 9000, protocol: tcp}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: raw, namespace: default}}
spec: {{service: raw, address: 127.0.0.1, ports: {{tcp: {raw}}}}}
"#
    )
}

/// Reads until the peer closes (Ok with what came) or 15 s pass (Err).
async fn read_until_closed(stream: &mut TcpStream) -> Result<String, String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    read.map(|()| text.clone())
        .map_err(|_| format!("still open after 15 s; read {text:?}"))
}

/// Reads one HTTP/1.1 response whose whole head and body fit the first
/// reads (the echo app's answers do); returns its status line.
async fn read_status(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("a readable answer");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

fn timeouts(metrics: &str, which: &str) -> f64 {
    counter(
        metrics,
        "rampart_proxy_connection_timeouts_total",
        &[&format!("timeout=\"{which}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_busy_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let web = apps::echo("web").await;
    let raw = apps::tcp_echo().await;
    let file = dir.path().join("model.yaml");
    std::fs::write(&file, model(web.port, raw)).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);

    let targets = ["web.default:8080", "raw.default:9000"];
    let (client, entries) = Sidecar::caller_of(&cp, dir.path(), "client", None, &targets).await;
    let (http_entry, tcp_entry) = (entries[0].clone(), entries[1].clone());
    let up = eventually(150, || async {
        matches!(get_h1(&http_entry, "web", "/").await, Ok((200, _)))
            && apps::tcp_exchange(&tcp_entry, b"hi")
                .await
                .is_ok_and(|a| a == "got 2 bytes: hi")
    })
    .await;
    assert!(up, "the mesh never answered\n{}", client.logs.text());

    // Slow loris: a head that never ends is cut off.
    let mut loris = TcpStream::connect(&http_entry).await.unwrap();
    loris
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Wait: ")
        .await
        .unwrap();
    let closed = read_until_closed(&mut loris).await;
    assert!(closed.is_ok(), "{closed:?}\n{}", client.logs.text());

    // A head in pieces, each well within the timeout in total, is served.
    let mut pieces = TcpStream::connect(&http_entry).await.unwrap();
    for piece in ["GET /ok HTTP/1.1\r\n", "Host: web\r\n", "\r\n"] {
        pieces.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read_status(&mut pieces).await, "HTTP/1.1 200 OK");

    // That keep-alive connection, now idle, is closed after the idle
    // timeout (2 s)...
    let closed = read_until_closed(&mut pieces).await;
    assert!(closed.is_ok(), "{closed:?}");

    // ...but a request slower than both timeouts is answered in full.
    let slow = get_h1(&http_entry, "web", "/slow/3500").await;
    assert!(
        matches!(&slow, Ok((200, body)) if body.contains("path=/slow/3500")),
        "{slow:?}\n{}",
        client.logs.text()
    );

    // HTTP/2: an idle connection gets GOAWAY and ends.
    let stream = TcpStream::connect(&http_entry).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("http://web/ok")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let ended = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection was still open after 15 s"
    );
    assert!(sender.is_closed());

    // An upgraded connection is a tunnel, not a slow head nor an idle
    // connection: quiet for longer than both timeouts, it still carries.
    let mut tunnel = TcpStream::connect(&http_entry).await.unwrap();
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_status(&mut tunnel).await,
        "HTTP/1.1 101 Switching Protocols"
    );
    tunnel.write_all(b"still ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    tunnel.write_all(b"here").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let echoed = read_until_closed(&mut tunnel).await;
    assert_eq!(echoed.as_deref(), Ok("still here"));

    // TCP: bytes trickling every 500 ms keep a connection open past the
    // idle timeout (the app answers once the client half-closes)...
    let mut trickle = TcpStream::connect(&tcp_entry).await.unwrap();
    for _ in 0..8 {
        trickle.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    trickle.shutdown().await.unwrap();
    let answer = read_until_closed(&mut trickle).await;
    assert_eq!(answer.as_deref(), Ok("got 8 bytes: xxxxxxxx"));

    // ...and a silent one is closed: the app never sees a half-close, so
    // only the proxy can end it.
    let mut silent = TcpStream::connect(&tcp_entry).await.unwrap();
    silent.write_all(b"y").await.unwrap();
    let closed = read_until_closed(&mut silent).await;
    assert!(closed.is_ok(), "{closed:?}\n{}", client.logs.text());

    let metrics = client.metrics().await;
    for (which, at_least) in [("request_headers", 1.0), ("idle", 2.0), ("tcp_idle", 1.0)] {
        assert!(
            timeouts(&metrics, which) >= at_least,
            "{which}: expected at least {at_least}\n{metrics}"
        );
    }
}
