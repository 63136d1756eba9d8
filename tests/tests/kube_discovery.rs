//! Service discovery through the real kube-apiserver: Services and
//! EndpointSlices created with the Kubernetes API appear in the xDS a
//! connected client gets (ready endpoints as they are, terminating ones
//! that still serve as DRAINING), and what is deleted disappears after the
//! push.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use rampart_tests::ads::{Ads, CDS, EDS, cluster_names, endpoints};
use rampart_tests::{free_port, kube as k8s};
use serde_json::json;

#[tokio::test]
async fn services_and_endpoint_slices_reach_the_proxies_and_leave_with_them() {
    let client = k8s::client().await;
    let ns = k8s::namespace(&client, "discovery", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let xds = format!("127.0.0.1:{}", free_port());
    let _cp = k8s::control_plane(
        &client,
        dir.path(),
        &["--dev-plaintext-xds", &xds, "--xds-debounce", "20ms"],
    )
    .await;

    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "web:1"}]}
    }))
    .unwrap();
    k8s::create_pod(&client, &ns, &pod).await;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": ns}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}}
        ]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let cluster = format!("outbound|80||web.{ns}");
    let mut ads = Ads::connect(&xds, &[(CDS, vec![]), (EDS, vec![cluster.clone()])]).await;
    let wanted = vec![
        ("10.1.0.1".to_owned(), 8080, false),
        ("10.1.0.2".to_owned(), 8080, true),
    ];
    ads.until(EDS, |r| endpoints(r) == wanted).await;
    ads.until(CDS, |r| cluster_names(r).contains(&cluster))
        .await;

    // The slice goes: its endpoints go with it.
    slices
        .delete("web-abc", &DeleteParams::default())
        .await
        .unwrap();
    ads.until(EDS, |r| endpoints(r).is_empty()).await;
    // The Service goes: so does its cluster.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    ads.until(CDS, |r| !cluster_names(r).contains(&cluster))
        .await;
}
