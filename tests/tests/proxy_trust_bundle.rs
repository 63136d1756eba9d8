//! A root rotation under running sidecars, with no restart of theirs and
//! no dropped connection. Step 1 trusts the new root beside the old one:
//! the control plane (a plug-in CA) restarts with both roots, and a
//! sidecar trusts the new one as soon as the `ROOTCA` secret reaches it
//! over xDS, not at its next SVID renewal (24 hours away here). Step 2
//! signs with the new root: every sidecar renews under it at once (the
//! served bundle starts with the root that signs), even one 24 hours from
//! its renewal, and one that started trusting only the old root can (it
//! verifies the control plane with the bundle in use, not its start-up
//! anchor). Step 3 drops the old root: the
//! renewed sidecar stops taking callers of the old root, again without a
//! restart, and goes on renewing. A connection opened at the start works
//! throughout.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config};
use rampart_certs::{
    CertificateAuthority, KeyAndCsr, SpiffeId, Svid, TrustBundle, TrustDomain, VerifiedCsr,
};
use rampart_tests::apps;
use rampart_tests::{ControlPlane, Sidecar, counter, eventually, free_port};
use tokio::net::TcpStream;

const ECHO: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [echo]
"#;

/// A CA of `trust_domain` with a root of its own.
fn new_ca(trust_domain: &TrustDomain) -> (CertificateAuthority, String, String) {
    let root = CertificateAuthority::generate_root(trust_domain).unwrap();
    let ca = CertificateAuthority::from_root_pem(
        trust_domain.clone(),
        &root.cert_pem,
        &root.key_pem,
        Default::default(),
    )
    .unwrap();
    (ca, root.cert_pem, root.key_pem)
}

/// An SVID for `default/<account>` signed by `ca`.
fn svid(ca: &CertificateAuthority, account: &str) -> Svid {
    let request = KeyAndCsr::generate().unwrap();
    let csr = VerifiedCsr::from_der(&request.csr_der).unwrap();
    let id = SpiffeId::new(
        ca.trust_domain().clone(),
        &format!("/ns/default/sa/{account}"),
    )
    .unwrap();
    let issued = ca.sign(&csr, &id, None).unwrap();
    Svid::new(issued.chain, request.key).unwrap()
}

/// An HTTP/1.1 connection over mTLS straight to a sidecar's inbound port,
/// presenting `svid` and trusting `bundle` for the sidecar's own SVID.
async fn connect(
    addr: &str,
    svid: &Svid,
    bundle: &TrustBundle,
) -> Result<SendRequest<Empty<Bytes>>, String> {
    let mut tls = client_config(
        Some(CurrentSvid::new(svid).unwrap()),
        bundle,
        PeerPolicy::TrustDomain(bundle.trust_domain().clone()),
    )
    .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("echo.default".try_into().unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The status of a GET on `sender`'s connection.
async fn get(sender: &mut SendRequest<Empty<Bytes>>) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = hyper::Request::get("/")
        .header("host", "echo.default:8080")
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// A GET on a new connection (in TLS 1.3 a client's certificate is refused
/// after its handshake is done, so a refusal shows on the request).
async fn get_once(addr: &str, svid: &Svid, bundle: &TrustBundle) -> Result<u16, String> {
    get(&mut connect(addr, svid, bundle).await?).await
}

/// An `echo` sidecar (SVIDs of `ttl` seconds, else the default) in front
/// of the app on `app_port`; returns it and its inbound address.
async fn echo_sidecar(
    cp: &ControlPlane,
    dir: &std::path::Path,
    node: &str,
    ttl: Option<u64>,
    app_port: u16,
) -> (Sidecar, String) {
    let inbound = free_port();
    let args = [
        "--node-id".into(),
        node.into(),
        "--service".into(),
        "echo".into(),
        "--port".into(),
        format!("http={inbound}"),
        "--app-port".into(),
        format!("http={app_port}"),
    ];
    let sidecar = Sidecar::builder(cp, dir, "echo")
        .ttl(ttl)
        .args(&args)
        .start()
        .await;
    (sidecar, format!("127.0.0.1:{inbound}"))
}

/// Stops the control plane with SIGTERM and starts it again with `flags`.
async fn restart(mut cp: ControlPlane, data: &std::path::Path, flags: &[&str]) -> ControlPlane {
    assert!(cp.terminate().success(), "{}", cp.logs.text());
    drop(cp);
    ControlPlane::start(data, flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_needs_no_sidecar_restart_and_drops_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let trust_domain = TrustDomain::new("cluster.local").unwrap();
    let (old, old_root, old_key) = new_ca(&trust_domain);
    let (new, new_root, new_key) = new_ca(&trust_domain);
    let ca_dir = dir.path().join("cacerts");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), &old_root).unwrap();
    rampart_tests::write_key(&ca_dir.join("ca-key.pem"), &old_key);
    std::fs::write(ca_dir.join("root-cert.pem"), &old_root).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let plugin = ca_dir.to_str().unwrap();
    let flags = ["--grpc-addr", &addr, "--plugin-ca-dir", plugin];
    let data = dir.path().join("cp");
    let cp = ControlPlane::start(&data, &flags).await;
    let model = dir.path().join("echo.yaml");
    std::fs::write(&model, ECHO).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    let app = apps::echo("echo").await;
    let (echo, inbound) = echo_sidecar(&cp, dir.path(), "echo-1", None, app.port).await;
    // A second one whose SVIDs live 16 s (renewed every ~8 s).
    let (echo_2, inbound_2) = echo_sidecar(&cp, dir.path(), "echo-2", Some(16), app.port).await;
    // Both callers trust the old root, which signed the sidecar's SVID; only
    // the sidecar's trust in the callers' roots is under test.
    let insider = svid(&old, "insider");
    let outsider = svid(&new, "outsider");
    let old_bundle = old.bundle().clone();
    let up = eventually(150, || async {
        get_once(&inbound, &insider, &old_bundle).await == Ok(200)
    })
    .await;
    assert!(
        up,
        "the inbound listener never answered\n{}",
        echo.logs.text()
    );
    let mut kept = connect(&inbound, &insider, &old_bundle).await.unwrap();
    assert_eq!(get(&mut kept).await, Ok(200));
    let refused = get_once(&inbound, &outsider, &old_bundle).await;
    assert!(
        refused.is_err(),
        "an SVID of a root the mesh does not trust yet got {refused:?}"
    );
    let untrusted = |metrics: &str| {
        counter(
            metrics,
            "rampart_proxy_tls_handshake_failures_total",
            &["reason=\"bad_client_cert\""],
        )
    };
    assert_eq!(untrusted(&echo.metrics().await), 1.0);

    // Rotation, step 1: the control plane trusts both roots (it still signs
    // with the old one).
    std::fs::write(
        ca_dir.join("root-cert.pem"),
        format!("{old_root}{new_root}"),
    )
    .unwrap();
    let cp = restart(cp, &data, &flags).await;

    let trusted = eventually(300, || async {
        get_once(&inbound, &outsider, &old_bundle).await == Ok(200)
    })
    .await;
    assert!(
        trusted,
        "the sidecar never trusted the new root\nsidecar:\n{}\ncontrol plane:\n{}",
        echo.logs.text(),
        cp.logs.text()
    );
    assert!(
        echo.logs
            .text()
            .contains("trust bundle updated from ROOTCA"),
        "{}",
        echo.logs.text()
    );
    // The connection opened before the change is still up and usable.
    assert_eq!(get(&mut kept).await, Ok(200), "{}", echo.logs.text());
    // The old root is still trusted.
    assert_eq!(get_once(&inbound, &insider, &old_bundle).await, Ok(200));

    // Rotation, step 2: the new root signs.
    std::fs::write(ca_dir.join("ca-cert.pem"), &new_root).unwrap();
    rampart_tests::write_key(&ca_dir.join("ca-key.pem"), &new_key);
    let cp = restart(cp, &data, &flags).await;
    // A caller that trusts only the new root reaches echo-2 once it renewed.
    let new_bundle = new.bundle().clone();
    let renewed = eventually(300, || async {
        get_once(&inbound_2, &outsider, &new_bundle).await == Ok(200)
    })
    .await;
    assert!(
        renewed,
        "echo-2 never renewed under the new root\nsidecar:\n{}\ncontrol plane:\n{}",
        echo_2.logs.text(),
        cp.logs.text()
    );
    assert_eq!(get(&mut kept).await, Ok(200), "{}", echo.logs.text());
    // Until step 3, echo-2 still takes callers of the old root.
    assert_eq!(get_once(&inbound_2, &insider, &new_bundle).await, Ok(200));
    // echo, 24 hours from its renewal, renews at once too: the served bundle
    // now starts with the root that signs, and its SVID does not chain to it.
    let renewed_early = eventually(300, || async {
        get_once(&inbound, &outsider, &new_bundle).await == Ok(200)
    })
    .await;
    assert!(
        renewed_early,
        "echo did not renew under the new signing root\n{}",
        echo.logs.text()
    );
    assert!(
        echo.logs.text().contains("renewing the SVID early"),
        "{}",
        echo.logs.text()
    );

    // Rotation, step 3: echo-2 has renewed under the new root; the old root
    // is dropped.
    std::fs::write(ca_dir.join("root-cert.pem"), &new_root).unwrap();
    let cp = restart(cp, &data, &flags).await;
    let renewals = |metrics: &str| {
        counter(
            metrics,
            "rampart_proxy_svid_renewals_total",
            &["result=\"ok\""],
        )
    };
    let renewed_before = renewals(&echo_2.metrics().await);
    // echo-2 stops trusting the old root without a restart...
    let dropped = eventually(300, || async {
        get_once(&inbound_2, &insider, &new_bundle).await.is_err()
    })
    .await;
    assert!(
        dropped,
        "echo-2 still takes the old root\nsidecar:\n{}\ncontrol plane:\n{}",
        echo_2.logs.text(),
        cp.logs.text()
    );
    assert!(untrusted(&echo_2.metrics().await) >= 1.0);
    assert_eq!(get_once(&inbound_2, &outsider, &new_bundle).await, Ok(200));
    // ...and goes on renewing its SVID with a control plane that now trusts
    // the new root alone.
    let renewing = eventually(300, || async {
        renewals(&echo_2.metrics().await) > renewed_before
    })
    .await;
    assert!(
        renewing,
        "echo-2 stopped renewing after step 3\nsidecar:\n{}\ncontrol plane:\n{}",
        echo_2.logs.text(),
        cp.logs.text()
    );
    // The connection opened at the start still works, and echo serves new
    // callers with its SVID of the new root.
    assert_eq!(get(&mut kept).await, Ok(200), "{}", echo.logs.text());
    assert_eq!(get_once(&inbound, &outsider, &new_bundle).await, Ok(200));
}
