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

/// `meshctl policy report` as JSON.
fn report(cp: &rampart_tests::ControlPlane, namespace: &str) -> Value {
    let out = cp.meshctl_ok(&["policy", "report", "-n", namespace, "-o", "json"]);
    serde_json::from_slice(&out.stdout).expect("meshctl policy report -o json prints JSON")
}

/// The policies `report` says pod `name` violates, with their action.
fn violated(report: &Value, name: &str) -> Vec<(String, String)> {
    report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .flat_map(|p| p["findings"].as_array().unwrap().clone())
        .map(|f| {
            (
                f["policy"].as_str().unwrap().to_owned(),
                f["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn running_pods_are_judged_again_when_the_policy_changes() {
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    // No webhook at all: these pods are stored whatever they are, like pods
    // admitted before Rampart or while its webhook was down.
    let cp = k8s::control_plane(&client, dir.path(), &[]).await;
    let ns = k8s::namespace(&client, "running", &[]).await;
    k8s::service_account(&client, &ns, "default").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for pod in [root_pod("legacy"), compliant_pod("fine")] {
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let judged = eventually(100, || async { report(&cp, &ns)["podsChecked"] == 2 }).await;
    assert!(
        judged,
        "the two pods were never judged: {}",
        report(&cp, &ns)
    );
    assert!(violated(&report(&cp, &ns), "legacy").is_empty());

    // A policy arrives: the running root pod is reported, the other is not.
    let policies = Api::<SecurityPolicy>::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy("strict", "enforce"))
        .await
        .unwrap();
    let strict = (format!("SecurityPolicy {ns}/strict"), "enforce".to_owned());
    let reported = eventually(100, || async {
        violated(&report(&cp, &ns), "legacy") == [strict.clone()]
    })
    .await;
    let now = report(&cp, &ns);
    assert!(reported, "{now}");
    assert!(violated(&now, "fine").is_empty(), "{now}");
    let legacy = now["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "legacy")
        .unwrap();
    let paths: Vec<&str> = legacy["findings"][0]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"spec.containers[0].securityContext.runAsUser"),
        "{paths:?}"
    );
    // The people's format says the same.
    let text = cp.meshctl_ok(&["policy", "report", "-n", &ns]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("2 pods judged"), "{text}");
    assert!(text.contains("1 violate a policy"), "{text}");
    assert!(
        text.contains("fix: set runAsUser to a non-zero UID"),
        "{text}"
    );
    let gauge = |metrics: &str| {
        counter(
            metrics,
            "rampart_policy_violating_pods",
            &[&format!(r#"policy="SecurityPolicy {ns}/strict""#)],
        )
    };
    let metrics = cp.http_get("/metrics").await.unwrap().1;
    assert_eq!(gauge(&metrics), 1.0, "{metrics}");

    // A namespace label is a policy too.
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let restricted =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/warn": "restricted"}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&restricted))
        .await
        .unwrap();
    let label_restricted = (
        "namespace label pod-security.kubernetes.io/warn=restricted".to_owned(),
        "warn".to_owned(),
    );
    let both = eventually(100, || async {
        let found = violated(&report(&cp, &ns), "legacy");
        found.contains(&label_restricted) && found.contains(&strict)
    })
    .await;
    assert!(both, "{}", report(&cp, &ns));

    // The policy and the label go: nothing is reported, the series is gone.
    policies
        .delete("strict", &DeleteParams::default())
        .await
        .unwrap();
    let unlabel = json!({"metadata": {"labels": {"pod-security.kubernetes.io/warn": null}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .unwrap();
    let clean = eventually(100, || async {
        violated(&report(&cp, &ns), "legacy").is_empty()
    })
    .await;
    assert!(clean, "{}", report(&cp, &ns));
    let metrics = cp.http_get("/metrics").await.unwrap().1;
    assert_eq!(gauge(&metrics), 0.0, "{metrics}");
}

#[tokio::test]
async fn the_api_server_stores_signed_images_pinned_to_the_verified_digest() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use rampart_tests::registry::Registry;
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path()).await;
    let addr = registry.addr.clone();
    let digest = registry.push(dir.path(), "shop/web", "1.0", "/web");
    let selector = k8s::suffix();
    let name = format!("rampart-pin-{selector}");
    let cp = k8s::control_plane(
        &client,
        &dir.path().join("cp"),
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--registry-plain-http",
            &addr,
            "--webhook-configuration",
            &name,
            "--validating-webhook-configuration",
            &name,
        ],
    )
    .await;
    let key = dir.path().join("release.key").display().to_string();
    Registry::keygen(&key);
    let image = format!("{addr}/shop/web:1.0");
    registry.sign(&key, &image);
    let base = format!("https://{}", cp.webhook_addr.as_ref().unwrap());
    // The same registrations as meshctl install's, for this test's namespace.
    let rules = json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]);
    let webhook = |name: &str, path: &str, failure: &str| {
        json!({
            "name": name, "clientConfig": {"url": format!("{base}{path}")}, "rules": rules,
            "namespaceSelector": {"matchLabels": {"rampart-test/pin": selector}},
            "failurePolicy": failure, "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
        })
    };
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [webhook("images.rampart.dev", "/pin-images", "Ignore")]
    }))
    .unwrap();
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [webhook("policy.rampart.dev", "/validate", "Fail")]
    }))
    .unwrap();
    let mutating_api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let validating_api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    mutating_api
        .create(&PostParams::default(), &mutating)
        .await
        .unwrap();
    validating_api
        .create(&PostParams::default(), &validating)
        .await
        .unwrap();

    let ns = k8s::namespace(
        &client,
        "pinned",
        &[("rampart-test/pin", selector.as_str())],
    )
    .await;
    k8s::service_account(&client, &ns, "default").await;
    let public = std::fs::read_to_string(format!("{key}.pub")).unwrap();
    let signed_only: SecurityPolicy = serde_json::from_value(json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "signed"},
        "spec": {"images": {"signedBy": [{"name": "release", "publicKey": public}]}}
    }))
    .unwrap();
    Api::<SecurityPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &signed_only)
        .await
        .unwrap();

    // Once both webhooks are trusted and the policy is read, the pod is
    // stored with the digest that was verified.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pinned = format!("{image}@{digest}");
    let mut stored = Vec::new();
    for attempt in 0..100 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{attempt}")},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }))
        .unwrap();
        if let Ok(created) = pods.create(&PostParams::default(), &pod).await {
            stored = created.spec.unwrap().containers;
            if stored[0].image.as_deref() == Some(pinned.as_str()) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored.first().and_then(|c| c.image.as_deref()),
        Some(pinned.as_str()),
        "the signed image was never stored pinned"
    );
    // An unsigned image is not pinned, and /validate refuses it.
    registry.push(dir.path(), "shop/unsigned", "1.0", "/u");
    let unsigned: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unsigned"},
        "spec": {"containers": [{"name": "app", "image": format!("{addr}/shop/unsigned:1.0")}]}
    }))
    .unwrap();
    let message = refusal(&pods, &unsigned)
        .await
        .expect("an unsigned image was admitted");
    assert!(
        message.contains("no valid signature by release"),
        "{message}"
    );

    mutating_api
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    validating_api
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_running_pod_is_reported_when_its_image_report_gets_worse() {
    use rampart_tests::registry::Registry;
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path()).await;
    let addr = registry.addr.clone();
    let digest = registry.push(dir.path(), "shop/api", "1.0", "/api");
    let image = format!("{addr}/shop/api@{digest}");
    let cp = k8s::control_plane(
        &client,
        &dir.path().join("cp"),
        &["--registry-plain-http", &addr],
    )
    .await;
    let ns = k8s::namespace(&client, "scanned", &[]).await;
    k8s::service_account(&client, &ns, "default").await;
    let budget: SecurityPolicy = serde_json::from_value(json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "budget"},
        "spec": {"enforcementAction": "audit",
                 "images": {"vulnerabilities": {"maxCritical": 0}}}
    }))
    .unwrap();
    Api::<SecurityPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"containers": [{"name": "api", "image": image}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let budget_finding = (format!("SecurityPolicy {ns}/budget"), "audit".to_owned());
    // No report yet: reported as unscanned.
    let unscanned = eventually(100, || async {
        violated(&report(&cp, &ns), "api") == [budget_finding.clone()]
    })
    .await;
    assert!(unscanned, "{}", report(&cp, &ns));

    // A clean scan is supplied (a cluster-scoped VulnerabilityReport, as
    // `meshctl image report` writes it): the pod is compliant.
    let reports = Api::<rampart_api::policy::VulnerabilityReport>::all(client.clone());
    let name = format!("api-{}", k8s::suffix());
    let scan = |critical: u32| {
        serde_json::from_value::<rampart_api::policy::VulnerabilityReport>(json!({
            "apiVersion": "rampart.dev/v1alpha1", "kind": "VulnerabilityReport",
            "metadata": {"name": name},
            "spec": {"image": image, "summary": {"critical": critical, "high": 4}}
        }))
        .unwrap()
    };
    reports
        .patch(
            &name,
            &PatchParams::apply("rampart-test"),
            &Patch::Apply(&scan(0)),
        )
        .await
        .unwrap();
    let clean = eventually(100, || async {
        violated(&report(&cp, &ns), "api").is_empty()
    })
    .await;
    assert!(clean, "{}", report(&cp, &ns));

    // A rescan finds a CRITICAL: the running pod is reported within moments.
    reports
        .patch(
            &name,
            &PatchParams::apply("rampart-test"),
            &Patch::Apply(&scan(1)),
        )
        .await
        .unwrap();
    let worse = eventually(100, || async {
        let now = report(&cp, &ns);
        now.to_string().contains("1 critical (at most 0)")
    })
    .await;
    assert!(worse, "{}", report(&cp, &ns));
    reports
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}
