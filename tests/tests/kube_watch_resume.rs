//! The real kube-apiserver restarted under a running control plane (as an
//! upgrade or a crash would), with steady load through sidecars of that
//! control plane: not one request fails while the API server is away, and
//! the control plane's watches resume by themselves, so the mesh model, the
//! namespaces and the pods written after the restart all reach it. (This
//! file runs last of the Kubernetes tests: it restarts the API server every
//! test shares.)

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rampart_api::mesh::Service;
use rampart_tests::load::{EchoUnderLoad, apply_echo_split};
use rampart_tests::{eventually, kube as k8s};
use serde_json::{Value, json};

fn mesh_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "http"}]}
    }))
    .unwrap()
}

/// Whether the control plane's model holds mesh Service `name` in `ns`.
fn known(cp: &rampart_tests::ControlPlane, ns: &str, name: &str) -> bool {
    cp.meshctl(&["get", "service", name, "-n", ns, "-o", "json"])
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_the_api_server_restarts() {
    let client = k8s::client().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = k8s::control_plane(&client, dir.path(), &[]).await;
    let ns = k8s::namespace(&client, "resume", &[]).await;
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    services
        .create(&PostParams::default(), &mesh_service("before"))
        .await
        .unwrap();
    assert!(eventually(100, || async { known(&cp, &ns, "before") }).await);
    apply_echo_split(&cp, 50, 50).await;
    let scratch = tempfile::tempdir().unwrap();
    let under_load = EchoUnderLoad::start(&cp, scratch.path(), None).await;
    let tally = under_load.load.tally.clone();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kube-test-env.sh");
    let restarted = std::process::Command::new("bash")
        .args([script, "restart-apiserver"])
        .status()
        .expect("running kube-test-env.sh restart-apiserver");
    assert!(restarted.success(), "the API server did not come back");
    let answered_before_writes = tally.ok();

    // Written after the restart: a mesh Service, a namespace label, a pod.
    let written = eventually(100, || async {
        services
            .create(&PostParams::default(), &mesh_service("after"))
            .await
            .is_ok()
    })
    .await;
    assert!(written, "the restarted API server took no write");
    let resumed = eventually(300, || async { known(&cp, &ns, "after") }).await;
    assert!(resumed, "the mesh model's watch did not resume");
    let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/warn": "restricted"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "app", "image": "app:1",
                                 "securityContext": {"runAsUser": 0}}]}
    }))
    .unwrap();
    k8s::create_pod(&client, &ns, &pod).await;
    // The pod (pods watch) judged by the label (namespaces watch).
    let judged = eventually(300, || async {
        let out = cp.meshctl(&["policy", "report", "-n", &ns, "-o", "json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        report
            .to_string()
            .contains("namespace label pod-security.kubernetes.io/warn=restricted")
    })
    .await;
    assert!(
        judged,
        "the pods or namespaces watch did not resume\n{}",
        cp.logs.text()
    );

    // Traffic went on through it all, and still goes.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let tally = under_load.load.stop().await;
    assert!(tally.ok() > answered_before_writes);
    assert_eq!(
        tally.failed(),
        0,
        "requests failed across the API server restart; last: {}",
        tally.last_failure.lock().unwrap()
    );
    eprintln!(
        "API server restarted under load: {} requests answered ({} v1, {} v2), 0 failed",
        tally.ok(),
        tally.answered_by("v1"),
        tally.answered_by("v2")
    );
}
