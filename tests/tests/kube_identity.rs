//! Kubernetes identities through the real kube-apiserver: a projected
//! ServiceAccount token (audience `rampart-ca`, minted with TokenRequest as
//! the kubelet does) gets exactly `spiffe://<td>/ns/<ns>/sa/<sa>`; a token
//! for another audience, for a deleted ServiceAccount or bound to a deleted
//! Pod is refused, and a refused token issues nothing.

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use rampart_tests::{ControlPlane, csr_naming, eventually, kube as k8s, sign, svid_of};
use tonic::Code;

async fn kubernetes_control_plane(dir: &std::path::Path) -> ControlPlane {
    k8s::control_plane(&k8s::client().await, dir, &[]).await
}

/// Whether `token` is refused as unauthenticated within 30 s: kube-apiserver
/// caches successful token reviews for 10 s, so a revocation is not instant.
async fn refused_soon(cp: &ControlPlane, token: &str) -> bool {
    eventually(300, || async {
        match sign(cp.channel(None).await, Some(token), None, 0).await {
            Ok(_) => false,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
                true
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_service_account_token_gets_its_identity_and_no_other() {
    let client = k8s::client().await;
    let ns = k8s::namespace(&client, "identity", &[]).await;
    k8s::service_account(&client, &ns, "cart").await;
    let dir = tempfile::tempdir().unwrap();
    let cp = kubernetes_control_plane(dir.path()).await;

    let token = k8s::token(&client, &ns, "cart", "rampart-ca", None).await;
    let (response, request) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    let expected = format!("spiffe://cluster.local/ns/{ns}/sa/cart");
    assert_eq!(response.spiffe_id, expected);
    let svid = svid_of(&response, &request);
    assert_eq!(svid.spiffe_id().to_string(), expected);

    // The same token asking for another identity is refused.
    let other = csr_naming(&format!("spiffe://cluster.local/ns/{ns}/sa/admin"));
    let denied = sign(cp.channel(None).await, Some(&token), Some(other), 0)
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "{}",
        denied.message()
    );

    // A token for another audience (here: the API server's own) is no proof.
    for audience in ["https://kubernetes.default.svc.cluster.local", "vault"] {
        let foreign = k8s::token(&client, &ns, "cart", audience, None).await;
        let refused = sign(cp.channel(None).await, Some(&foreign), None, 0)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{audience}");
        assert!(
            refused.message().contains("does not accept the token"),
            "{}",
            refused.message()
        );
    }

    // Not a token at all.
    let garbage = sign(
        cp.channel(None).await,
        Some("eyJhbGciOi.not.a.jwt"),
        None,
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);

    // Deleting the ServiceAccount revokes its tokens (once the API
    // server's own cache of good tokens, 10 s, has let go of it).
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete("cart", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        refused_soon(&cp, &token).await,
        "a deleted ServiceAccount's token still works"
    );

    let metrics = cp.http_get("/metrics").await.unwrap().1;
    assert!(
        metrics.contains(r#"proof="service_account_token",result="issued""#),
        "{metrics}"
    );
    // No token in any log line.
    assert!(!cp.logs.text().contains(&token), "a token was logged");
}

#[tokio::test]
async fn a_token_bound_to_a_pod_dies_with_the_pod() {
    let client = k8s::client().await;
    let ns = k8s::namespace(&client, "bound", &[]).await;
    k8s::service_account(&client, &ns, "web").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-0"},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "example.invalid/web"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = kubernetes_control_plane(dir.path()).await;

    let token = k8s::token(&client, &ns, "web", "rampart-ca", Some(("web-0", &uid))).await;
    sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    // No kubelet: an unscheduled pod is gone at once.
    pods.delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    let gone = eventually(50, || async {
        pods.get_opt("web-0").await.unwrap().is_none()
    })
    .await;
    assert!(gone, "the pod was not deleted");
    assert!(
        refused_soon(&cp, &token).await,
        "a deleted Pod's token still works"
    );
}

#[tokio::test]
async fn a_proxy_bootstraps_from_its_projected_token_file() {
    let client = k8s::client().await;
    let ns = k8s::namespace(&client, "proxy", &[]).await;
    k8s::service_account(&client, &ns, "echo").await;
    let dir = tempfile::tempdir().unwrap();
    let cp = kubernetes_control_plane(dir.path()).await;
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        k8s::token(&client, &ns, "echo", "rampart-ca", None).await,
    )
    .unwrap();

    let socket = dir.path().join("workload.sock");
    let (mut cmd, admin) = rampart_tests::proxy(&cp, "", &socket);
    cmd.env_remove("RAMPART_JOIN_TOKEN")
        .arg("--agent-only")
        .arg("--token-file")
        .arg(&token_file)
        .stderr(std::process::Stdio::null());
    let mut proxy = cmd.spawn().unwrap();
    let ready = eventually(100, || async {
        rampart_tests::http_get(&admin, "/ready")
            .await
            .is_ok_and(|(code, _)| code == 200)
    })
    .await;
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(ready, "the proxy never became ready:\n{}", cp.logs.text());
    let issued = format!("spiffe://cluster.local/ns/{ns}/sa/echo");
    assert!(
        cp.logs.text().contains(&issued),
        "no SVID for {issued}:\n{}",
        cp.logs.text()
    );
}
