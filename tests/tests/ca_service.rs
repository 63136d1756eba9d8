//! The CA service over real gRPC and TLS on loopback: what a workload and an
//! operator see when they get, renew or are refused a certificate.

use rampart_api::admin::{CreateJoinTokenRequest, GetTrustBundleRequest};
use rampart_tests::{ControlPlane, csr_naming, sign, svid_of};
use tonic::Code;

#[tokio::test]
async fn a_join_token_gets_exactly_its_identity_once() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("shop", "checkout", 0).await;

    let (response, request) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    assert_eq!(
        response.spiffe_id,
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
    let svid = svid_of(&response, &request);
    assert_eq!(svid.spiffe_id().to_string(), response.spiffe_id);
    assert_eq!(response.trust_bundle_der.len(), 1);

    let again = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    assert!(
        again.message().contains("already used"),
        "{}",
        again.message()
    );
    assert!(
        !cp.logs.text().contains(&token),
        "the token must never be logged"
    );
}

#[tokio::test]
async fn refusals_are_clear_and_do_not_burn_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("shop", "checkout", 0).await;

    let malformed = sign(
        cp.channel(None).await,
        Some(&token),
        Some(b"garbage".to_vec()),
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(
        malformed.code(),
        Code::InvalidArgument,
        "{}",
        malformed.message()
    );

    let other = csr_naming("spiffe://cluster.local/ns/kube-system/sa/admin");
    let denied = sign(cp.channel(None).await, Some(&token), Some(other), 0)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("kube-system"),
        "{}",
        denied.message()
    );

    let negative = sign(cp.channel(None).await, Some(&token), None, -5)
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);

    // None of the refusals spent the token.
    assert!(
        sign(cp.channel(None).await, Some(&token), None, 0)
            .await
            .is_ok()
    );
    assert!(
        !cp.logs.text().contains(&token),
        "the token must never be logged"
    );
}

#[tokio::test]
async fn missing_unknown_and_expired_tokens_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;

    let none = sign(cp.channel(None).await, None, None, 0)
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(none.message().contains("no proof"), "{}", none.message());

    let unknown = "rjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let err = sign(cp.channel(None).await, Some(unknown), None, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("unknown"), "{}", err.message());

    let foreign = sign(
        cp.channel(None).await,
        Some("eyJhbGciOi.k8s.token"),
        None,
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(foreign.code(), Code::Unauthenticated);

    let short = cp.join_token("shop", "checkout", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = sign(cp.channel(None).await, Some(&short), None, 0)
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
}

#[tokio::test]
async fn an_svid_renews_itself_over_mtls_and_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("shop", "cart", 0).await;
    let (first, request) = sign(cp.channel(None).await, Some(&token), None, 3600)
        .await
        .unwrap();
    let svid = svid_of(&first, &request);

    let (renewed, request) = sign(cp.channel(Some(&svid)).await, None, None, 3600)
        .await
        .unwrap();
    let renewed_svid = svid_of(&renewed, &request);
    assert_eq!(renewed_svid.spiffe_id(), svid.spiffe_id());
    assert_ne!(renewed_svid.serial_hex(), svid.serial_hex());

    let other = csr_naming("spiffe://cluster.local/ns/shop/sa/payments");
    let err = sign(cp.channel(Some(&svid)).await, None, Some(other), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_admin_api_answers_only_the_admin() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let request = CreateJoinTokenRequest {
        namespace: "shop".into(),
        service_account: "cart".into(),
        ttl_seconds: 0,
    };

    let mut anonymous =
        rampart_api::admin::admin_service_client::AdminServiceClient::new(cp.channel(None).await);
    let err = anonymous
        .create_join_token(request.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anonymous
        .get_trust_bundle(GetTrustBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let workload = cp.workload_svid("shop", "cart").await;
    let mut as_workload = rampart_api::admin::admin_service_client::AdminServiceClient::new(
        cp.channel(Some(&workload)).await,
    );
    let err = as_workload
        .create_join_token(request.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let bad = CreateJoinTokenRequest {
        namespace: "Shop!".into(),
        ..request
    };
    let err = cp.admin().await.create_join_token(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("namespace"), "{}", err.message());
}

#[tokio::test]
async fn meshctl_creates_tokens_prints_the_bundle_and_issues_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;

    let out = cp.meshctl(&[
        "token",
        "create",
        "--namespace",
        "web",
        "--service-account",
        "front",
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "prints only the token");
    let token = token.trim();
    let (response, _) = sign(cp.channel(None).await, Some(token), None, 0)
        .await
        .unwrap();
    assert_eq!(response.spiffe_id, "spiffe://cluster.local/ns/web/sa/front");

    let out = cp.meshctl(&["ca", "bundle"]);
    assert!(out.status.success());
    let bundle = String::from_utf8(out.stdout).unwrap();
    assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        bundle,
        std::fs::read_to_string(dir.path().join("admin/bundle.pem")).unwrap()
    );

    let out_dir = dir.path().join("vm-cert");
    let out = cp.meshctl(&[
        "certificate",
        "issue",
        "--namespace",
        "vm",
        "--service-account",
        "db",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is owner-only");
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "any", "-CAfile"])
        .arg(out_dir.join("bundle.pem"))
        .arg(out_dir.join("cert-chain.pem"))
        .output()
        .expect("openssl CLI (installed by scripts/test.sh)");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let out = cp.meshctl(&[
        "token",
        "create",
        "--namespace",
        "web",
        "--service-account",
        "front",
        "--ttl",
        "ten",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duration"));

    // Without the admin credential, meshctl gets nothing.
    std::fs::remove_dir_all(dir.path().join("admin-copy")).ok();
    let out = std::process::Command::new(rampart_tests::bin("meshctl"))
        .args(["--control-plane", &cp.grpc_addr, "--credentials"])
        .arg(&out_dir)
        .args([
            "token",
            "create",
            "--namespace",
            "a",
            "--service-account",
            "b",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
}

#[tokio::test]
async fn metrics_count_issuance_by_result_and_show_ca_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("shop", "cart", 0).await;
    sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap_err();
    sign(cp.channel(None).await, None, None, 0)
        .await
        .unwrap_err();

    let (code, body) = cp.http_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    let value = |series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{body}"))
    };
    assert_eq!(
        value(r#"rampart_ca_certificates_total{proof="join_token",result="issued"}"#),
        1.0
    );
    assert_eq!(
        value(r#"rampart_ca_certificates_total{proof="join_token",result="unauthenticated"}"#),
        1.0
    );
    assert_eq!(
        value(r#"rampart_ca_certificates_total{proof="none",result="unauthenticated"}"#),
        1.0
    );
    assert_eq!(value("rampart_ca_signing_duration_seconds_count"), 1.0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let root_expiry = value("rampart_ca_root_expiry_timestamp_seconds");
    assert!(root_expiry > now + 9.0 * 365.0 * 86400.0, "10-year root");
    assert_eq!(cp.http_get("/healthz").await.unwrap().0, 200);
}
