//! Replicas side by side on the real kube-apiserver: they share one CA
//! (its root in a Secret), one of them holds the Lease and runs the
//! singletons (the webhook caBundle, the root bundle ConfigMaps), and when
//! the leader is killed the other takes the Lease and carries on, with
//! steady load through sidecars of the survivor failing no request.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use rampart_tests::load::{EchoUnderLoad, apply_echo_split};
use rampart_tests::{eventually, kube as k8s, sign};
use serde_json::json;

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_runs_the_singletons_and_a_killed_leader_is_replaced() {
    let replicas = k8s::Replicas::new("ha").await;
    let client = replicas.client.clone();
    let id = k8s::suffix();
    let (lease, webhooks) = (replicas.lease.clone(), replicas.webhooks.clone());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replicas.start("a", dir_a.path(), &[]).await;
    let b = replicas.start("b", dir_b.path(), &[]).await;

    // One CA for both: the second replica found the first one's Secret.
    let bundle =
        |dir: &std::path::Path| std::fs::read_to_string(dir.join("admin/bundle.pem")).unwrap();
    assert_eq!(bundle(dir_a.path()), bundle(dir_b.path()));
    let pem = bundle(dir_a.path());

    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let led = eventually(100, || async { holder(&leases, &lease).await.is_some() }).await;
    assert!(led, "nobody took the lease");
    let leader = holder(&leases, &lease).await.unwrap();
    let (mut leader_cp, follower_cp, follower) = match leader.as_str() {
        "a" => (a, b, "b"),
        "b" => (b, a, "a"),
        other => panic!("unexpected holder {other}"),
    };

    // The leader's singletons: the caBundle, the ConfigMaps.
    let url = format!(
        "https://{}/inject",
        follower_cp.webhook_addr.as_ref().unwrap()
    );
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": webhooks},
        "webhooks": [{"name": "inject.rampart.dev", "clientConfig": {"url": url},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"rampart-ha-test": id}},
            "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]
    }))
    .unwrap();
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    let has_bundle = || k8s::has_ca_bundle(&client, &webhooks, &pem);
    assert!(
        eventually(100, has_bundle).await,
        "the leader never set the caBundle"
    );
    let has_config_map = |ns: String| {
        let maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let pem = pem.clone();
        async move {
            eventually(100, || async {
                maps.get_opt("rampart-root-ca")
                    .await
                    .unwrap()
                    .and_then(|m| m.data)
                    .is_some_and(|d| d.get("bundle.pem") == Some(&pem))
            })
            .await
        }
    };
    let first = k8s::namespace(&client, "ha", &[("rampart.dev/inject", "enabled")]).await;
    assert!(has_config_map(first).await, "no root bundle ConfigMap");

    // Steady load through sidecars of the follower.
    apply_echo_split(&follower_cp, 50, 50).await;
    let scratch = tempfile::tempdir().unwrap();
    let under_load = EchoUnderLoad::start(&follower_cp, scratch.path(), None).await;

    // Kill the leader: the follower takes the lease once it expires.
    leader_cp.kill9();
    let moved = eventually(400, || async {
        holder(&leases, &lease).await.as_deref() == Some(follower)
    })
    .await;
    assert!(moved, "the lease did not move to {follower}");
    // The new leader does the singletons' work.
    k8s::reset_ca_bundle(&client, &webhooks).await;
    assert!(
        eventually(100, has_bundle).await,
        "the new leader did not restore the caBundle"
    );
    let second = k8s::namespace(&client, "ha", &[("rampart.dev/inject", "enabled")]).await;
    assert!(
        has_config_map(second).await,
        "the new leader publishes no ConfigMaps"
    );

    // And the survivor still issues identities from the shared CA.
    let ns = k8s::namespace(&client, "ha-id", &[]).await;
    k8s::service_account(&client, &ns, "app").await;
    let token = k8s::token(&client, &ns, "app", "rampart-ca", None).await;
    let (response, _) = sign(follower_cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    assert_eq!(
        response.spiffe_id,
        format!("spiffe://cluster.local/ns/{ns}/sa/app")
    );

    let tally = under_load.load.stop().await;
    assert_eq!(
        tally.failed(),
        0,
        "requests failed while the leader died; last: {}",
        tally.last_failure.lock().unwrap()
    );
    eprintln!(
        "leader killed under load: {} requests answered, 0 failed",
        tally.ok()
    );
    configs
        .delete(&webhooks, &DeleteParams::default())
        .await
        .unwrap();
}
