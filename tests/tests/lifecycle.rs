//! Starting, stopping and restarting the control plane, and the CA choices an
//! operator makes on its command line.

use std::process::Command;

use rampart_tests::{ControlPlane, bin, sign, svid_of};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), &[]).await;
    let bundle_before = cp.bundle();
    // Secrets are owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for secret in ["ca/root-key.pem", "admin/key.pem", "admin/cert-chain.pem"] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    for private_dir in ["ca", "admin"] {
        assert_eq!(mode(private_dir), 0o700, "{private_dir}");
    }
    let token = cp.join_token("keep", "me", 3600).await;
    let status = cp.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    assert!(cp.logs.text().contains("stopped"));

    let cp = ControlPlane::start(dir.path(), &[]).await;
    assert_eq!(cp.bundle(), bundle_before, "the CA survives restarts");
    let (response, _) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    assert_eq!(response.spiffe_id, "spiffe://cluster.local/ns/keep/sa/me");
}

#[tokio::test]
async fn a_custom_trust_domain_and_an_intermediate_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(
        dir.path(),
        &["--trust-domain", "corp.example", "--intermediate-ca"],
    )
    .await;
    let token = cp.join_token("pay", "api", 0).await;
    let (response, key) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    assert_eq!(response.spiffe_id, "spiffe://corp.example/ns/pay/sa/api");
    assert_eq!(response.cert_chain_der.len(), 2, "leaf + intermediate");
    let svid = svid_of(&response, &key);
    // The renewed SVID chains through the intermediate too.
    let (renewed, _) = sign(cp.channel(Some(&svid)).await, None, None, 0)
        .await
        .unwrap();
    assert_eq!(renewed.cert_chain_der.len(), 2);
}

#[tokio::test]
async fn svid_lifetimes_follow_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(
        dir.path(),
        &["--default-svid-ttl", "1h", "--max-svid-ttl", "2h"],
    )
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = cp.join_token("a", "b", 0).await;
    let (default, _) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    assert!((default.expires_at_unix - now - 3600).abs() <= 5);
    let token = cp.join_token("a", "b", 0).await;
    let (capped, _) = sign(cp.channel(None).await, Some(&token), None, 30 * 86400)
        .await
        .unwrap();
    assert!((capped.expires_at_unix - now - 7200).abs() <= 5);
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![SanType::URI("spiffe://plugin.example".try_into().unwrap())];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

#[tokio::test]
async fn a_plug_in_ca_signs_and_its_chain_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("cacerts");
    std::fs::create_dir(&ca_dir).unwrap();
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("Corp Root").self_signed(&root_key).unwrap();
    let inter_key = KeyPair::generate().unwrap();
    let inter = ca_params("Corp Intermediate")
        .signed_by(&inter_key, &Issuer::new(ca_params("Corp Root"), root_key))
        .unwrap();
    std::fs::write(ca_dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), inter.pem()).unwrap();
    rampart_tests::write_key(&ca_dir.join("ca-key.pem"), inter_key.serialize_pem());

    let data = dir.path().join("data");
    let plugin = ca_dir.to_str().unwrap();
    let cp = ControlPlane::start(
        &data,
        &[
            "--trust-domain",
            "plugin.example",
            "--plugin-ca-dir",
            plugin,
        ],
    )
    .await;
    let token = cp.join_token("a", "b", 0).await;
    let (response, _) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    assert_eq!(response.cert_chain_der.len(), 2);
    assert_eq!(response.cert_chain_der[1], inter.der().to_vec());
    assert_eq!(response.trust_bundle_der, vec![root.der().to_vec()]);
}

#[test]
fn a_broken_plug_in_ca_is_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("cacerts");
    std::fs::create_dir(&ca_dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let root = ca_params("Corp Root").self_signed(&key).unwrap();
    std::fs::write(ca_dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), root.pem()).unwrap();
    // The wrong key for the signing certificate.
    rampart_tests::write_key(
        &ca_dir.join("ca-key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    );
    let out = Command::new(bin("rampart-control"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--plugin-ca-dir",
        ])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");
}

#[test]
fn bad_flags_are_refused_with_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(bin("rampart-control"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--trust-domain", "Bad_Domain"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid character"));
    let out = run(&["--serving-host", "not a host"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither an IP address nor a DNS name"));
    let out = run(&["--default-svid-ttl", "5y"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit"));
}

/// `rampart-proxy wait` (the postStart hook injected where native sidecars
/// are not available) returns once the proxy beside it is ready, and fails
/// with a clear message when it never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_wait_returns_when_the_proxy_is_ready_and_fails_when_it_never_is() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("default", "waiter", 600).await;
    let (mut command, admin) = rampart_tests::proxy(&cp, &token, &dir.path().join("waiter.sock"));
    let mut proxy = command
        .arg("--agent-only")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Started at once: it waits for the proxy, however long it takes.
    let waited = Command::new(bin("rampart-proxy"))
        .args(["wait", "--admin-addr", &admin, "--timeout-seconds", "60"])
        .output()
        .unwrap();
    let ready = rampart_tests::http_get(&admin, "/ready").await;
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert_eq!(
        ready.unwrap().0,
        200,
        "wait returned before the proxy was ready"
    );

    let port = rampart_tests::free_port();
    let never = Command::new(bin("rampart-proxy"))
        .args([
            "wait",
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
            "--timeout-seconds",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!never.status.success());
    let message = String::from_utf8_lossy(&never.stderr);
    assert!(message.contains("was not ready after 1 s"), "{message}");
}

#[test]
fn a_ca_key_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let root = ca_params("Corp Root").self_signed(&key).unwrap();
    let loose = |path: &std::path::Path, mode: u32| {
        rampart_tests::write_key(path, key.serialize_pem());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refusal = |data: &str, args: &[&str]| {
        let out = Command::new(bin("rampart-control"))
            .arg("--data-dir")
            .arg(dir.path().join(data))
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with a loose CA key");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A plug-in CA's key.
    let ca_dir = dir.path().join("cacerts");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), root.pem()).unwrap();
    loose(&ca_dir.join("ca-key.pem"), 0o644);
    let stderr = refusal("plugin", &["--plugin-ca-dir", ca_dir.to_str().unwrap()]);
    assert!(
        stderr.contains("ca-key.pem has mode 644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // The self-signed root in the data directory, once someone loosened it.
    let own = dir.path().join("self/ca");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("root-cert.pem"), root.pem()).unwrap();
    loose(&own.join("root-key.pem"), 0o604);
    let stderr = refusal("self", &[]);
    assert!(stderr.contains("root-key.pem has mode 604"), "{stderr}");
}
