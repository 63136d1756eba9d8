//! The injection webhook through the real kube-apiserver: the API server
//! calls rampart-control's `/inject` over HTTPS (trusting it through the
//! caBundle rampart-control keeps in sync), and the Pod it stores has the
//! sidecar. Pods in unlabeled namespaces, pods that opt out and pods that
//! already have it are stored as they were sent.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use rampart_tests::{counter, eventually, kube as k8s};
use serde_json::{Value, json};

const IMAGE: &str = "registry.example/rampart-proxy:test";

fn webhook_configuration(name: &str, url: &str) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.rampart.dev",
            "clientConfig": {"url": url},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"rampart.dev/inject": "enabled"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "reinvocationPolicy": "IfNeeded",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10
        }]
    }))
    .unwrap()
}

fn pod(name: &str, extra_metadata: Value) -> Pod {
    let mut metadata = json!({"name": name, "labels": {"app": "web"}});
    for (k, v) in extra_metadata.as_object().unwrap() {
        metadata[k] = v.clone();
    }
    serde_json::from_value(json!({
        "metadata": metadata,
        "spec": {"serviceAccountName": "web", "containers": [{
            "name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]
        }]}
    }))
    .unwrap()
}

/// Names of the stored pod's init containers and containers.
fn containers(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref().unwrap();
    let names = |cs: &Vec<k8s_openapi::api::core::v1::Container>| {
        cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    };
    (
        spec.init_containers.as_ref().map(names).unwrap_or_default(),
        names(&spec.containers),
    )
}

#[tokio::test]
async fn pods_in_labeled_namespaces_are_stored_with_the_sidecar() {
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    let config_name = format!("rampart-injector-{}", k8s::suffix());
    let cp = k8s::control_plane(
        &client,
        dir.path(),
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-configuration",
            &config_name,
            "--sidecar-image",
            IMAGE,
        ],
    )
    .await;
    let url = format!("https://{}/inject", cp.webhook_addr.as_ref().unwrap());
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    configs
        .create(
            &PostParams::default(),
            &webhook_configuration(&config_name, &url),
        )
        .await
        .unwrap();

    // rampart-control fills in the caBundle (the mesh root), and puts it
    // back when someone resets it.
    let bundle = std::fs::read_to_string(dir.path().join("admin/bundle.pem")).unwrap();
    let has_bundle = || k8s::has_ca_bundle(&client, &config_name, &bundle);
    assert!(
        eventually(100, has_bundle).await,
        "the caBundle was never set"
    );
    k8s::reset_ca_bundle(&client, &config_name).await;
    assert!(
        eventually(100, has_bundle).await,
        "a reset caBundle was not restored"
    );

    let injected_ns = k8s::namespace(&client, "inject", &[("rampart.dev/inject", "enabled")]).await;
    k8s::service_account(&client, &injected_ns, "web").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &injected_ns);

    // A bare Pod.
    let stored = pods
        .create(&PostParams::default(), &pod("web-0", json!({})))
        .await
        .unwrap();
    assert_eq!(
        containers(&stored),
        (
            vec!["rampart-init".to_owned(), "rampart-proxy".to_owned()],
            vec!["app".to_owned()]
        )
    );
    let read_back = pods.get("web-0").await.unwrap();
    let spec = read_back.spec.as_ref().unwrap();
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(
        proxy.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar on 1.36"
    );
    assert_eq!(proxy.image.as_deref(), Some(IMAGE));
    let args = proxy.args.clone().unwrap();
    assert!(args.contains(&"--service=web".to_owned()), "{args:?}");
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "rampart-token")
        .expect("the projected token volume");
    let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("rampart-ca"));
    assert_eq!(
        read_back.metadata.annotations.unwrap()["rampart.dev/status"],
        "injected"
    );

    // A Deployment's pod template, created the way its ReplicaSet would.
    let mut from_template = pod("ignored", json!({}));
    from_template.metadata.name = None;
    from_template.metadata.generate_name = Some("web-7d9f-".into());
    let stored = pods
        .create(&PostParams::default(), &from_template)
        .await
        .unwrap();
    assert_eq!(containers(&stored).0, ["rampart-init", "rampart-proxy"]);

    // Opted out, and already injected (e.g. by `meshctl inject`): as sent.
    let stored = pods
        .create(
            &PostParams::default(),
            &pod(
                "opted-out",
                json!({"annotations": {"rampart.dev/inject": "disabled"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(containers(&stored), (vec![], vec!["app".to_owned()]));
    let mut already: Pod = pod("already", json!({}));
    already
        .spec
        .as_mut()
        .unwrap()
        .containers
        .push(serde_json::from_value(json!({"name": "rampart-proxy", "image": IMAGE})).unwrap());
    let stored = pods.create(&PostParams::default(), &already).await.unwrap();
    assert_eq!(
        containers(&stored),
        (vec![], vec!["app".to_owned(), "rampart-proxy".to_owned()])
    );

    // An unlabeled namespace is not the webhook's business.
    let plain_ns = k8s::namespace(&client, "plain", &[]).await;
    k8s::service_account(&client, &plain_ns, "web").await;
    let stored = Api::<Pod>::namespaced(client.clone(), &plain_ns)
        .create(&PostParams::default(), &pod("web-0", json!({})))
        .await
        .unwrap();
    assert_eq!(containers(&stored), (vec![], vec!["app".to_owned()]));

    let metrics = cp.http_get("/metrics").await.unwrap().1;
    assert_eq!(
        counter(
            &metrics,
            "rampart_admission_reviews_total",
            &[r#"result="injected""#]
        ),
        2.0,
        "{metrics}"
    );

    // A webhook with failurePolicy Fail must not outlive its server.
    configs
        .delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
}

/// `meshctl inject` on a manifest file, as stdout.
fn meshctl_inject(dir: &std::path::Path, yaml: &str) -> String {
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(rampart_tests::bin("meshctl"))
        .args(["inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshctl inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A pod whose app container passes the `restricted` Pod Security level.
const RESTRICTED_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {app: web}, annotations: ANNOTATIONS}
spec:
  serviceAccountName: web
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: app
    image: web:1
    ports: [{name: http, containerPort: 8080}]
    securityContext:
      runAsUser: 1000
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
"#;

#[tokio::test]
async fn meshctl_inject_output_is_valid_and_the_sidecar_passes_the_restricted_level() {
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    let ns = k8s::namespace(
        &client,
        "restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    k8s::service_account(&client, &ns, "web").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);

    // Without traffic capture the pod is only the app and the sidecar, and
    // the API server's own PodSecurity admission lets it in.
    let sidecar_only = RESTRICTED_POD
        .replace("NAME", "web-0")
        .replace("ANNOTATIONS", r#"{"rampart.dev/capture": "none"}"#);
    let injected: Pod = serde_saphyr::from_str(&meshctl_inject(dir.path(), &sidecar_only)).unwrap();
    let stored = pods
        .create(&PostParams::default(), &injected)
        .await
        .unwrap();
    assert_eq!(containers(&stored).0, ["rampart-proxy"]);

    // The iptables init container needs NET_ADMIN as root, which
    // `restricted` forbids: refused, and the message names it.
    let captured = RESTRICTED_POD
        .replace("NAME", "web-1")
        .replace("ANNOTATIONS", "{}");
    let injected: Pod = serde_saphyr::from_str(&meshctl_inject(dir.path(), &captured)).unwrap();
    let refused = pods
        .create(&PostParams::default(), &injected)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("rampart-init") && refused.contains("restricted"),
        "{refused}"
    );

    // A multi-document file: the Deployment's template is injected (and
    // valid to the API server), the Service passes through.
    let manifests = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 80, targetPort: http}], selector: {app: web}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers: [{name: app, image: web:1, ports: [{name: http, containerPort: 8080}]}]
"#;
    let out = meshctl_inject(dir.path(), manifests);
    let documents: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(documents.len(), 2);
    assert_eq!(documents[0]["kind"], "Service");
    assert!(documents[0]["spec"].get("template").is_none());
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(documents[1].clone()).unwrap();
    let plain_ns = k8s::namespace(&client, "manifests", &[]).await;
    let stored =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &plain_ns)
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
    let template = stored.spec.unwrap().template;
    let names: Vec<String> = template
        .spec
        .unwrap()
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["rampart-init", "rampart-proxy"]);
}
