//! Hostile inputs to the control plane's listeners, each expecting a
//! refusal and no harm done: clients that open connections and then send
//! nothing or trickle a request (slowloris) are cut off while others are
//! still served, and an oversized AdmissionReview is refused without
//! reaching the policy. (The CA's and the admin API's refusals are in
//! ca_service.rs, xDS identity checks in xds_protocol.rs, STRICT mTLS in
//! proxy_mesh.rs, crafted SPIFFE IDs in rampart-certs' unit tests.)

use std::sync::Arc;
use std::time::Duration;

use rampart_tests::ControlPlane;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slow connections opened against each listener.
const SLOW: usize = 20;

/// Whether the server closes `stream` (EOF or reset) within a generous
/// bound: the listeners cut such clients after 10 s; this waits up to 60.
async fn closed_by_server(mut stream: impl AsyncRead + Unpin) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before closing is fine; keep reading to EOF.
            Ok(Ok(_)) => continue,
        }
    }
}

/// A TLS client trusting the mesh root (the control plane's serving
/// certificate names localhost).
async fn tls(
    cp: &ControlPlane,
    addr: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(cp.bundle().root_store().unwrap())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_everyone_else_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &["--webhook-addr", "127.0.0.1:0"]).await;
    let webhook = cp.webhook_addr.clone().unwrap();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        // Metrics (plain HTTP): half a request head, then nothing.
        let mut metrics = TcpStream::connect(&cp.metrics_addr).await.unwrap();
        metrics
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push((
            "metrics: half a head",
            tokio::spawn(closed_by_server(metrics)),
        ));
        // Webhook (HTTPS): the head, then a body trickled one byte.
        let mut hook = tls(&cp, &webhook, b"http/1.1").await;
        hook.write_all(
            b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        hook.flush().await.unwrap();
        slow.push((
            "webhook: a trickled body",
            tokio::spawn(closed_by_server(hook)),
        ));
        // Webhook and gRPC: a TCP connection that never starts TLS.
        for addr in [&webhook, &cp.grpc_addr] {
            let silent = TcpStream::connect(addr.as_str()).await.unwrap();
            slow.push(("no TLS handshake", tokio::spawn(closed_by_server(silent))));
        }
        // gRPC: TLS done, then no HTTP/2 preface.
        let quiet = tls(&cp, &cp.grpc_addr, b"h2").await;
        slow.push((
            "gRPC: no HTTP/2 preface",
            tokio::spawn(closed_by_server(quiet)),
        ));
    }
    // Meanwhile everyone else is served.
    let (status, metrics) = cp.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("rampart_build_info"));
    let token = cp.join_token("shop", "web", 0).await;
    assert!(!token.is_empty(), "the admin API answers");
    for (what, closed) in slow {
        assert!(
            closed.await.unwrap(),
            "{what}: the connection was left open"
        );
    }
    assert!(cp.http_get("/healthz").await.is_ok());
}

#[tokio::test]
async fn an_oversized_admission_review_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &["--webhook-addr", "127.0.0.1:0"]).await;
    let webhook = cp.webhook_addr.clone().unwrap();
    let mut conn = tls(&cp, &webhook, b"http/1.1").await;
    // 10 MB declared (etcd stores at most ~1.5 MB; the API server sends
    // at most two copies of an object).
    let size = 10 << 20;
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 1 << 20];
    // The server may answer and close before all of it is sent.
    for _ in 0..10 {
        if conn.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let metrics = cp.http_get("/metrics").await.unwrap().1;
    assert_eq!(
        rampart_tests::counter(
            &metrics,
            "rampart_admission_reviews_total",
            &[r#"webhook="validate""#]
        ),
        0.0,
        "nothing was judged: {metrics}"
    );
}
