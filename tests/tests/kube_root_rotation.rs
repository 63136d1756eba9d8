//! The root rotated hands-free in a cluster, on the real kube-apiserver:
//! two control plane replicas share the CA's roots in a Secret; the
//! sidecars under load are all connected to the replica that does not
//! lead, so the leader moves the rotation on only from that replica's
//! reports. One `meshctl ca rotate-root`; no request fails, no sidecar
//! restarts; the webhook caBundle and the Secret follow every phase, and
//! the old root's key leaves the Secret. An xDS client of replica b that
//! keeps its SVID of the old root (a certificate from a file, say) holds
//! the rotation before the old root is dropped, named by the leader, until
//! it goes away.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rampart_api::admin::GetRootRotationRequest;
use rampart_tests::ads::{Ads, CDS};
use rampart_tests::load::{EchoUnderLoad, apply_echo_split};
use rampart_tests::{eventually, kube as k8s, rotation_phase, until_rotated};
use serde_json::json;

/// The keys of the CA Secret's data.
async fn secret_keys(secrets: &Api<Secret>, name: &str) -> Vec<String> {
    secrets
        .get(name)
        .await
        .unwrap()
        .data
        .unwrap_or_default()
        .into_keys()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rotate_the_shared_root_hands_free_under_load() {
    let replicas = k8s::Replicas::new("rot").await;
    let client = replicas.client.clone();
    let id = k8s::suffix();
    let (lease, secret, webhooks) = (
        replicas.lease.clone(),
        replicas.secret.clone(),
        replicas.webhooks.clone(),
    );
    let settle = ["--root-rotation-settle", "3s"];
    // `a` first, so that it takes the Lease; the sidecars go to `b`.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replicas.start("a", dir_a.path(), &settle).await;
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let led = eventually(100, || async {
        leases
            .get_opt(&lease)
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .as_deref()
            == Some("a")
    })
    .await;
    assert!(led, "replica a did not take the lease");
    let b = replicas.start("b", dir_b.path(), &settle).await;
    let old_pem = std::fs::read_to_string(dir_b.path().join("admin/bundle.pem")).unwrap();

    // A webhook configuration whose caBundle the leader keeps.
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": webhooks},
        "webhooks": [{"name": "inject.rampart.dev",
            "clientConfig": {"url": format!("https://{}/inject", a.webhook_addr.as_ref().unwrap())},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"rampart-rotation-test": id}},
            "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    assert!(eventually(100, || k8s::has_ca_bundle(&client, &webhooks, &old_pem)).await);

    // Steady load through sidecars of replica b.
    apply_echo_split(&b, 50, 50).await;
    let scratch = tempfile::tempdir().unwrap();
    let under_load = EchoUnderLoad::start(&b, scratch.path(), None).await;
    let tally = under_load.load.tally.clone();
    let holdout_svid = b.workload_svid("default", "holdout").await;
    let holdout = Ads::over(b.channel(Some(&holdout_svid)).await, &[(CDS, vec![])]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The one step, asked of the replica that does not lead.
    let out = b.meshctl_ok(&["ca", "rotate-root"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("phase: trust"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Both replicas follow the Secret.
    assert!(
        eventually(50, || async {
            matches!(rotation_phase(&a).await.as_deref(), Some("trust" | "sign"))
        })
        .await
    );

    // The leader waits in `sign` for the stream of replica b still on the
    // old root, and says so; longer than the settle time.
    let held = eventually(300, || async {
        let status = a
            .admin()
            .await
            .get_root_rotation(GetRootRotationRequest {})
            .await
            .unwrap()
            .into_inner();
        status.phase == "sign"
            && status
                .on_old_root
                .iter()
                .any(|w| w.contains("/sa/holdout") && w.contains("(replica b)"))
    })
    .await;
    assert!(
        held,
        "the leader did not wait for replica b's old-root stream: {}",
        String::from_utf8_lossy(&a.meshctl(&["ca", "rotation"]).stdout)
    );
    // The sidecars renew and reconnect (within seconds); the holdout is
    // then all it waits for, and it keeps waiting.
    let only_holdout = eventually(300, || async {
        let waiting = String::from_utf8_lossy(&a.meshctl(&["ca", "rotation"]).stdout).to_string();
        waiting.contains("phase: sign")
            && waiting.contains("still connected with an SVID of the old root (1)")
            && waiting.contains("/sa/holdout")
    })
    .await;
    assert!(
        only_holdout,
        "{}",
        String::from_utf8_lossy(&a.meshctl(&["ca", "rotation"]).stdout)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rotation_phase(&a).await.as_deref(), Some("sign"));
    drop(holdout);

    let after = until_rotated(&[&a, &b])
        .await
        .unwrap_or_else(|why| panic!("the rotation did not finish: {why}"));
    let mut seen = [vec!["trust".to_owned(), "sign".to_owned()], after].concat();
    seen.dedup();
    assert!(seen.iter().all(|p| p == "sign" || p == "trust"), "{seen:?}");

    // One new root everywhere: both replicas (each rewrites its bundle file
    // just after it takes the last step), the Secret, the caBundle.
    let bundle_of = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("admin/bundle.pem")).unwrap_or_default()
    };
    let one_root = eventually(50, || async {
        let (pem_a, pem_b) = (bundle_of(dir_a.path()), bundle_of(dir_b.path()));
        pem_a == pem_b && pem_b.matches("BEGIN CERTIFICATE").count() == 1
    })
    .await;
    assert!(
        one_root,
        "the replicas' bundles: {} and {} roots",
        bundle_of(dir_a.path()).matches("BEGIN CERTIFICATE").count(),
        bundle_of(dir_b.path()).matches("BEGIN CERTIFICATE").count()
    );
    let new_pem = bundle_of(dir_b.path());
    assert_ne!(new_pem, old_pem);
    assert!(
        eventually(100, || k8s::has_ca_bundle(&client, &webhooks, &new_pem)).await,
        "the webhook caBundle did not follow"
    );
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let keys = secret_keys(&secrets, &secret).await;
    assert!(
        !keys.contains(&"root-key.pem".to_owned()),
        "the old root's key is still in the Secret: {keys:?}"
    );
    assert_eq!(
        keys.len(),
        3,
        "one root's cert and key, and the list: {keys:?}"
    );

    // No sidecar restarted, none failed a request.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (sidecar, _) in &under_load.echoes {
        assert!(sidecar.is_running());
    }
    assert!(under_load.client.is_running());
    let answered = tally.ok();
    let tally = under_load.load.stop().await;
    assert!(tally.ok() >= answered);
    assert_eq!(
        tally.failed(),
        0,
        "requests failed; last: {}",
        tally.last_failure.lock().unwrap()
    );
    eprintln!(
        "kube root rotation: {} requests answered, 0 failed, phases {seen:?}",
        tally.ok()
    );
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&webhooks, &Default::default())
        .await;
}
