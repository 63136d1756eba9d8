//! The security policy through the real kube-apiserver: it calls
//! rampart-control's `/validate` over HTTPS (trusting it through the
//! caBundle rampart-control keeps in sync) for every pod created or changed
//! and for ephemeral containers added to one. A root pod is refused with the
//! field and the fix, a compliant one is stored, an `audit` policy admits
//! and records an Event, and an update that leaves the spec alone is not
//! judged again.

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rampart_api::policy::SecurityPolicy;
use rampart_tests::{counter, eventually, kube as k8s};
use serde_json::{Value, json};

fn webhook_configuration(name: &str, url: &str, selector: &str) -> ValidatingWebhookConfiguration {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "policy.rampart.dev",
            "clientConfig": {"url": url},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods", "pods/ephemeralcontainers"]}],
            // Only this test's namespaces: other tests share the API server.
            "namespaceSelector": {"matchLabels": {"rampart-test/policy": selector}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        }]
    }))
    .unwrap()
}

fn policy(name: &str, action: &str) -> SecurityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": name},
        "spec": {
            "enforcementAction": action,
            "podSecurity": "restricted",
            "containers": {"requireRunAsNonRoot": true, "requireReadOnlyRootFilesystem": true}
        }
    }))
    .unwrap()
}

/// A pod that runs as root (UID 0).
fn root_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "web:1",
                                 "securityContext": {"runAsUser": 0}}]}
    }))
    .unwrap()
}

/// A pod that meets the restricted level and the policy's rules.
fn compliant_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "web:1", "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}}}]
        }
    }))
    .unwrap()
}

/// The message of the API server's refusal, or None if it stored the pod.
async fn refusal(pods: &Api<Pod>, pod: &Pod) -> Option<String> {
    match pods.create(&PostParams::default(), pod).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.message),
        Err(e) => panic!("creating a pod: {e}"),
    }
}

#[tokio::test]
async fn the_api_server_holds_pods_to_the_security_policy() {
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    let selector = k8s::suffix();
    let config_name = format!("rampart-policy-{selector}");
    let cp = k8s::control_plane(
        &client,
        dir.path(),
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--validating-webhook-configuration",
            &config_name,
        ],
    )
    .await;
    let url = format!("https://{}/validate", cp.webhook_addr.as_ref().unwrap());
    let configs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    configs
        .create(
            &PostParams::default(),
            &webhook_configuration(&config_name, &url, &selector),
        )
        .await
        .unwrap();
    let bundle = std::fs::read_to_string(dir.path().join("admin/bundle.pem")).unwrap();
    let trusted = eventually(100, || async {
        let config = configs.get(&config_name).await.unwrap();
        config.webhooks.unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| b.0 == bundle.as_bytes())
    })
    .await;
    assert!(trusted, "the validating webhook's caBundle was never set");

    let labels = [("rampart-test/policy", selector.as_str())];
    let enforced = k8s::namespace(&client, "enforced", &labels).await;
    k8s::service_account(&client, &enforced, "default").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &enforced);
    // Admitted before there is a policy; judged again only if its spec changes.
    pods.create(&PostParams::default(), &root_pod("before"))
        .await
        .unwrap();
    Api::<SecurityPolicy>::namespaced(client.clone(), &enforced)
        .create(&PostParams::default(), &policy("strict", "enforce"))
        .await
        .unwrap();

    // The control plane reads the policy from its watch: soon every root
    // pod is refused, with the field and the fix.
    let mut attempt = 0;
    let mut message = None;
    for _ in 0..100 {
        attempt += 1;
        message = refusal(&pods, &root_pod(&format!("root-{attempt}"))).await;
        if message.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let message = message.expect("a root pod was never refused");
    assert!(
        message.contains("denied by the Rampart security policy"),
        "{message}"
    );
    assert!(
        message.contains(&format!("SecurityPolicy {enforced}/strict")),
        "{message}"
    );
    assert!(
        message.contains("spec.containers[0].securityContext.runAsUser"),
        "{message}"
    );
    assert!(
        message.contains("set runAsUser to a non-zero UID"),
        "{message}"
    );
    assert!(message.contains("readOnlyRootFilesystem"), "{message}");
    let compliant = pods
        .create(&PostParams::default(), &compliant_pod("compliant"))
        .await;
    assert!(
        compliant.is_ok(),
        "a compliant pod was refused: {compliant:?}"
    );

    // A label on the pod admitted before the policy: the spec is the same.
    let relabel = json!({"metadata": {"labels": {"tier": "web"}}});
    pods.patch("before", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("a metadata-only update of a running pod is not judged again");

    // `kubectl debug` adding a privileged ephemeral container is judged.
    let debug = json!({"spec": {"ephemeralContainers": [{
        "name": "debugger", "image": "busybox:1", "securityContext": {"privileged": true}
    }]}});
    let added = pods
        .patch_subresource(
            "ephemeralcontainers",
            "compliant",
            &PatchParams::default(),
            &Patch::Strategic(&debug),
        )
        .await;
    let Err(kube::Error::Api(status)) = added else {
        panic!("a privileged ephemeral container was added: {added:?}");
    };
    assert!(
        status
            .message
            .contains("spec.ephemeralContainers[0].securityContext.privileged"),
        "{}",
        status.message
    );

    // An audit policy admits the same root pod and records it.
    let audited = k8s::namespace(&client, "audited", &labels).await;
    k8s::service_account(&client, &audited, "default").await;
    Api::<SecurityPolicy>::namespaced(client.clone(), &audited)
        .create(&PostParams::default(), &policy("watch", "audit"))
        .await
        .unwrap();
    let audited_pods = Api::<Pod>::namespaced(client.clone(), &audited);
    let events = Api::<Event>::namespaced(client.clone(), &audited);
    let mut recorded: Option<Value> = None;
    for attempt in 0..100 {
        let name = format!("root-{attempt}");
        let stored = audited_pods
            .create(&PostParams::default(), &root_pod(&name))
            .await;
        assert!(stored.is_ok(), "an audit policy refused a pod: {stored:?}");
        let found = eventually(20, || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some("PolicyViolation")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            })
        })
        .await;
        if found {
            let list = events.list(&ListParams::default()).await.unwrap();
            recorded = list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("PolicyViolation"))
                .map(|e| serde_json::to_value(e).unwrap());
            break;
        }
    }
    let event = recorded.expect("no PolicyViolation Event for an audited root pod");
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("SecurityPolicy {audited}/watch")),
        "{note}"
    );
    assert!(note.contains("runAsUser"), "{note}");

    let metrics = cp.http_get("/metrics").await.unwrap().1;
    let audit_count = counter(
        &metrics,
        "rampart_admission_policy_violations_total",
        &[r#"action="audit""#],
    );
    assert!(audit_count >= 1.0, "{metrics}");
    let denied = counter(
        &metrics,
        "rampart_admission_reviews_total",
        &[r#"webhook="validate""#, r#"result="denied""#],
    );
    assert!(
        denied >= 2.0,
        "a root pod and an ephemeral container: {metrics}"
    );

    configs
        .delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
}
