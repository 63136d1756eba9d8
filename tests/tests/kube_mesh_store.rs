//! The mesh model as custom resources in the real kube-apiserver: the CRDs
//! in `deploy/` are accepted and enforce the schema; `meshctl apply` of a
//! Rampart YAML creates the same objects `kubectl apply` would, objects
//! written with the Kubernetes API are the model `meshctl get` shows and the
//! proxies get, and a resource the model's checks refuse is left out.

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rampart_api::mesh::{Service, TrafficPolicy};
use rampart_tests::ads::{Ads, CDS, cluster_names};
use rampart_tests::{free_port, kube as k8s};
use serde_json::json;

const MODEL: &str = include_str!("../../docs/examples/echo.yaml");

fn strict_apply() -> PatchParams {
    let mut params = PatchParams::apply("kubectl-like").force();
    params.field_validation = Some(kube::api::ValidationDirective::Strict);
    params
}

#[tokio::test]
async fn meshctl_apply_and_the_kubernetes_api_share_one_model() {
    let client = k8s::client().await;
    let ns = k8s::namespace(&client, "model", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let xds = format!("127.0.0.1:{}", free_port());
    let cp = k8s::control_plane(
        &client,
        dir.path(),
        &["--dev-plaintext-xds", &xds, "--xds-debounce", "20ms"],
    )
    .await;

    // meshctl apply writes custom resources.
    let model = MODEL.replace("namespace: default", &format!("namespace: {ns}"));
    let file = dir.path().join("echo.yaml");
    std::fs::write(&file, &model).unwrap();
    let out = cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let echo = services
        .get("echo")
        .await
        .expect("the Service custom resource");
    assert_eq!(echo.spec.ports.len(), 2);
    let again = cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(
        !again.contains("created") && again.contains("unchanged"),
        "{again}"
    );

    // What the Kubernetes API writes is the model too.
    let policy = json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": "echo-timeout", "namespace": ns},
        "spec": {"service": "echo", "ports": ["http"], "timeout": "3s"}
    });
    Api::<TrafficPolicy>::namespaced(client.clone(), &ns)
        .patch("echo-timeout", &strict_apply(), &Patch::Apply(&policy))
        .await
        .unwrap();
    let listed = rampart_tests::eventually(100, || async {
        let out = cp.meshctl_ok(&["get", "tp", "-n", &ns]);
        String::from_utf8_lossy(&out.stdout).contains("echo-timeout")
    })
    .await;
    assert!(
        listed,
        "a TrafficPolicy written with the Kubernetes API is not in meshctl get"
    );

    // And it reaches the proxies.
    let cluster = format!("outbound|8080||echo.{ns}");
    let mut ads = Ads::connect(&xds, &[(CDS, vec![])]).await;
    ads.until(CDS, |r| cluster_names(r).contains(&cluster))
        .await;

    // The schema is the API server's to enforce: a typo, a wrong type or
    // an unknown enum value is refused before it is stored.
    for (spec, expected) in [
        (json!({"portz": []}), "portz"),
        (
            json!({"ports": [{"name": "http", "port": "eighty"}]}),
            "port",
        ),
        (
            json!({"ports": [{"name": "http", "port": 80, "protocol": "quic"}]}),
            "quic",
        ),
    ] {
        let bad = json!({
            "apiVersion": "rampart.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "bad", "namespace": ns}, "spec": spec
        });
        let err = services
            .patch("bad", &strict_apply(), &Patch::Apply(&bad))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
    // What only the model's own checks catch is stored but left out.
    let empty = json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": "no-ports", "namespace": ns}, "spec": {"ports": []}
    });
    services
        .patch("no-ports", &strict_apply(), &Patch::Apply(&empty))
        .await
        .unwrap();
    let refused = rampart_tests::eventually(100, || async {
        cp.logs.text().contains("Service no-ports")
            && cp.logs.text().contains("fails the model's checks")
    })
    .await;
    assert!(
        refused,
        "the control plane never read the Service without ports:\n{}",
        cp.logs.text()
    );
    let shown = cp.meshctl_ok(&["get", "svc", "-n", &ns]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("echo") && !shown.contains("no-ports"),
        "{shown}"
    );

    // meshctl delete removes the custom resource, and its cluster goes.
    cp.meshctl_ok(&["delete", "-f", file.to_str().unwrap()]);
    assert!(services.get_opt("echo").await.unwrap().is_none());
    ads.until(CDS, |r| !cluster_names(r).contains(&cluster))
        .await;
    services
        .delete("no-ports", &DeleteParams::default())
        .await
        .unwrap();
}
