//! Hostile inputs to the control plane's listeners (and the sidecar's
//! admin listener), each expecting a
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_admin_listener_cuts_off_slow_clients_too() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let (sidecar, _) =
        rampart_tests::Sidecar::caller(&cp, dir.path(), "client", None, "echo.default:8080").await;
    let listening = rampart_tests::eventually(100, || async {
        TcpStream::connect(&sidecar.admin).await.is_ok()
    })
    .await;
    assert!(listening, "the admin listener never opened");
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut admin = TcpStream::connect(&sidecar.admin).await.unwrap();
        admin
            .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tokio::spawn(closed_by_server(admin)));
    }
    assert!(sidecar.metrics().await.contains("rampart_proxy"));
    for closed in slow {
        assert!(closed.await.unwrap(), "a half head was left open");
    }
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

#[tokio::test]
async fn a_certificate_from_another_ca_gets_nothing_even_naming_the_admin() {
    use rampart_certs::{CertificateAuthority, KeyAndCsr, Svid, SvidLifetimes, VerifiedCsr};
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let trust_domain = cp.bundle().trust_domain().clone();
    // An impostor CA of the same trust domain name, minting the admin's
    // own SPIFFE ID and a workload's: only the mesh's root is trusted.
    let root = CertificateAuthority::generate_root(&trust_domain).unwrap();
    let impostor = CertificateAuthority::from_root_pem(
        trust_domain.clone(),
        &root.cert_pem,
        &root.key_pem,
        SvidLifetimes::default(),
    )
    .unwrap();
    let forge = |id: rampart_certs::SpiffeId| {
        let request = KeyAndCsr::generate().unwrap();
        let csr = VerifiedCsr::from_der(&request.csr_der).unwrap();
        let issued = impostor.sign(&csr, &id, None).unwrap();
        Svid::new(issued.chain, request.key.clone_key()).unwrap()
    };
    let admin = forge(rampart_certs::well_known::admin_id(&trust_domain));
    let channel = cp.channel(Some(&admin)).await;
    let refused = rampart_api::admin::admin_service_client::AdminServiceClient::new(channel)
        .create_join_token(rampart_api::admin::CreateJoinTokenRequest {
            namespace: "shop".into(),
            service_account: "web".into(),
            ttl_seconds: 0,
        })
        .await;
    assert!(refused.is_err(), "a forged admin SVID made a join token");
    // A forged workload SVID cannot renew itself at the CA either.
    let workload = forge(trust_domain.workload_id("shop", "web").unwrap());
    let renewal = rampart_tests::sign(cp.channel(Some(&workload)).await, None, None, 0).await;
    assert!(renewal.is_err(), "a forged SVID was renewed");
    // Nothing was issued, and the real admin is still served.
    let metrics = cp.http_get("/metrics").await.unwrap().1;
    assert_eq!(
        rampart_tests::counter(
            &metrics,
            "rampart_ca_certificates_total",
            &[r#"result="issued""#]
        ),
        0.0,
        "{metrics}"
    );
    assert!(!cp.join_token("shop", "web", 0).await.is_empty());
}

/// The base64 lines of every PEM private key under `dir`.
fn key_material(dir: &std::path::Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            key_material(&path, out);
        } else if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains("PRIVATE KEY-----")
        {
            out.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                    .map(str::to_owned),
            );
        }
    }
}

#[test]
fn no_private_key_or_token_reaches_a_log_line() {
    use rampart_tests::demo::{Demo, HTTP, meshctl, route};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    // Every process at debug level: what a curious operator would turn on.
    let demo = Demo::start_with_env(&dir, &[("RUST_LOG", "debug")]);
    demo.until("traffic", 120, |s| {
        route(s, HTTP)["requests"].as_u64() > Some(20)
    });
    // Secrets made while it runs: a join token, and a certificate's key.
    let token = meshctl(
        &dir,
        &["token", "create", "-n", "shop", "--service-account", "web"],
    );
    let token = token.trim().to_owned();
    assert!(token.len() >= 16, "{token}");
    let issued = tmp.path().join("issued");
    meshctl(
        &dir,
        &[
            "certificate",
            "issue",
            "-n",
            "shop",
            "--service-account",
            "web",
            "--out",
            issued.to_str().unwrap(),
        ],
    );
    let mut secrets = vec![token];
    key_material(&dir, &mut secrets);
    key_material(&issued, &mut secrets);
    assert!(secrets.len() > 3, "the keys were found: {}", secrets.len());
    drop(demo);

    let mut lines = 0;
    let mut logs: Vec<(String, String)> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.path().display().to_string(), text)
        })
        .collect();
    assert!(
        logs.len() >= 5,
        "the control plane's, the apps' and the proxies' logs"
    );
    logs.sort();
    for (file, text) in &logs {
        lines += text.lines().count();
        assert!(!text.contains("PRIVATE KEY"), "{file} holds a PEM key");
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{file} holds a secret ({}...)",
                &secret[..8]
            );
        }
    }
    assert!(lines > 100, "debug logs were written: {lines} lines");
}
