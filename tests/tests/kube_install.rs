//! `meshctl install` against the real kube-apiserver: every object of the
//! install (CRDs, RBAC, Deployment, PodDisruptionBudget, Service, webhook
//! configuration) is accepted and stored, applying again changes nothing,
//! and `--dry-run` prints the same objects without touching the cluster.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams};
use rampart_tests::kube as k8s;
use serde_json::Value;

fn meshctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(rampart_tests::bin("meshctl"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn meshctl_install_applies_an_install_the_api_server_accepts() {
    let client = k8s::client().await;
    let ns = format!("rampart-it-{}", k8s::suffix());

    let dry = meshctl(&["install", "--dry-run", "--namespace", &ns]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(dry.stdout).unwrap()).unwrap();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "Role",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("rampart-control")
            .await
            .unwrap()
            .is_none(),
        "--dry-run changed the cluster"
    );

    let out = meshctl(&["install", "--wait=false", "--namespace", &ns]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(" applied")).count(),
        documents.len(),
        "{stdout}"
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("rampart-control")
        .await
        .unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    let role = Api::<ClusterRole>::all(client.clone())
        .get("rampart-control")
        .await
        .unwrap();
    assert!(
        role.rules.unwrap().iter().any(|r| r
            .resources
            .iter()
            .flatten()
            .any(|x| x == "tokenreviews"))
    );
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let webhook = configs.get("rampart-sidecar-injector").await.unwrap();
    let selector = webhook.webhooks.unwrap()[0]
        .namespace_selector
        .clone()
        .unwrap();
    let excluded = &selector.match_expressions.unwrap()[1];
    assert_eq!(
        excluded.values.clone().unwrap(),
        [ns.clone(), "kube-system".to_owned()]
    );

    // Applying again is a no-op that still succeeds.
    let again = meshctl(&["install", "--wait=false", "--namespace", &ns]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The security policy's webhook: every namespace but the control
    // plane's and kube-system, refusing pods when nothing answers.
    let policy = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let stored = policy.get("rampart-security-policy").await.unwrap();
    let webhook = &stored.webhooks.unwrap()[0];
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
    let excluded = &webhook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        excluded.values.clone().unwrap(),
        [ns.clone(), "kube-system".to_owned()]
    );

    // Nothing answers these webhooks here (no kubelet runs the control
    // plane): remove them so later tests' pods are not refused.
    configs
        .delete("rampart-sidecar-injector", &DeleteParams::default())
        .await
        .unwrap();
    policy
        .delete("rampart-security-policy", &DeleteParams::default())
        .await
        .unwrap();
}
