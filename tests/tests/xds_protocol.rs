//! The ADS protocol as a client sees it, over real gRPC and mTLS: named and
//! wildcard subscriptions, ACK, NACK (visible in `meshctl proxy-status`, and
//! the rejected version not sent again), pushes when the model changes.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use rampart_tests::{ControlPlane, sign, svid_of};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MODEL: &str = include_str!("../../docs/examples/echo.yaml");
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "protocol-test".into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn next(responses: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("a response within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

async fn apply(cp: &ControlPlane, yaml: &str) {
    let path = cp.data_dir.join("model.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = cp.meshctl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_status_and_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &["--xds-debounce", "50ms"]).await;
    apply(&cp, MODEL).await;
    let token = cp.join_token("default", "client", 0).await;
    let (response, key) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    let svid = svid_of(&response, &key);

    let mut client = AggregatedDiscoveryServiceClient::new(cp.channel(Some(&svid)).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(request(LDS, &["echo.default:50051"], "", ""))
        .await
        .unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // The model was applied a moment ago: the first answer may predate it
    // (debounce); an ACK and the push that follows bring the listener.
    let mut lds = next(&mut responses).await;
    while lds.resources.is_empty() {
        tx.send(request(
            LDS,
            &["echo.default:50051"],
            &lds.version_info,
            &lds.nonce,
        ))
        .await
        .unwrap();
        lds = next(&mut responses).await;
    }
    assert_eq!(lds.type_url, LDS);
    assert_eq!(lds.resources.len(), 1, "only the named listener");
    assert!(!lds.version_info.is_empty() && !lds.nonce.is_empty());
    tx.send(request(
        LDS,
        &["echo.default:50051"],
        &lds.version_info,
        &lds.nonce,
    ))
    .await
    .unwrap();

    tx.send(request(CDS, &[], "", "")).await.unwrap();
    let cds = next(&mut responses).await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(cds.resources.len(), 6, "wildcard CDS: every cluster");
    let mut nack = request(CDS, &[], "", &cds.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "cluster rejected for the test".into(),
        details: vec![],
    });
    tx.send(nack).await.unwrap();

    // proxy-status shows LDS synced and CDS nacked, with the reason.
    let mut status = serde_json::Value::Null;
    for _ in 0..50 {
        let out = cp.meshctl(&["proxy-status", "-o", "json"]);
        status = serde_json::from_slice(&out.stdout).unwrap();
        let types = &status[0]["types"];
        if types.as_array().is_some_and(|t| t.len() == 2) && types[0]["state"] == "NACKED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxy = &status[0];
    assert_eq!(proxy["nodeId"], "protocol-test");
    assert_eq!(
        proxy["spiffeId"],
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert_eq!(proxy["types"][0]["type"], "cds");
    assert_eq!(proxy["types"][0]["state"], "NACKED", "{status}");
    assert_eq!(
        proxy["types"][0]["nackMessage"],
        "cluster rejected for the test"
    );
    assert_eq!(proxy["types"][1]["type"], "lds");
    assert_eq!(proxy["types"][1]["state"], "SYNCED", "{status}");
    let table = String::from_utf8(cp.meshctl(&["proxy-status"]).stdout).unwrap();
    assert!(
        table.contains("NACKED") && table.contains("cluster rejected for the test"),
        "{table}"
    );

    // A model change that alters clusters pushes a new CDS version (the
    // NACKed one is never re-sent); listeners are untouched.
    apply(
        &cp,
        &MODEL.replace("timeout: 2s", "timeout: 2s\n  loadBalancer: RING_HASH"),
    )
    .await;
    let pushed = next(&mut responses).await;
    assert_eq!(pushed.type_url, CDS, "only CDS changed");
    assert_ne!(pushed.version_info, cds.version_info);
    tx.send(request(CDS, &[], &pushed.version_info, &pushed.nonce))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), responses.message())
            .await
            .is_err(),
        "nothing else is pushed"
    );

    let (_, metrics) = cp.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!("rampart_xds_nacks_total{{type_url=\"{CDS}\"}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_xds_connected_streams 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn xds_needs_a_client_svid() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let mut client = AggregatedDiscoveryServiceClient::new(cp.channel(None).await);
    let (tx, rx) = mpsc::channel(1);
    tx.send(request(LDS, &[], "", "")).await.unwrap();
    let err = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_only_changes_and_resumes_with_initial_versions() {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &["--xds-debounce", "50ms"]).await;
    apply(&cp, MODEL).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let the snapshot catch up
    let token = cp.join_token("default", "delta", 0).await;
    let (response, key) = sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();
    let svid = svid_of(&response, &key);
    let delta_request =
        |nonce: &str, initial: std::collections::HashMap<String, String>| DeltaDiscoveryRequest {
            node: Some(Node {
                id: "delta-test".into(),
                ..Default::default()
            }),
            type_url: CDS.into(),
            response_nonce: nonce.into(),
            initial_resource_versions: initial,
            ..Default::default()
        };
    async fn next_delta(
        r: &mut tonic::Streaming<DeltaDiscoveryResponse>,
    ) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), r.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    let mut client = AggregatedDiscoveryServiceClient::new(cp.channel(Some(&svid)).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(delta_request("", Default::default()))
        .await
        .unwrap();
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next_delta(&mut responses).await;
    assert_eq!(first.resources.len(), 6);
    let held: std::collections::HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    tx.send(delta_request(&first.nonce, Default::default()))
        .await
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_slice(&cp.meshctl(&["proxy-status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status[0]["nodeId"], "delta-test");
    drop(tx);
    drop(responses);

    // Reconnect holding everything: nothing is re-sent until something changes.
    let mut client = AggregatedDiscoveryServiceClient::new(cp.channel(Some(&svid)).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(delta_request("", held)).await.unwrap();
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), responses.message())
            .await
            .is_err(),
        "nothing unchanged is re-sent"
    );
    apply(
        &cp,
        &MODEL.replace(", {name: http, port: 8080, protocol: http}", ""),
    )
    .await;
    let removed = next_delta(&mut responses).await;
    assert!(removed.resources.is_empty());
    let mut names = removed.removed_resources.clone();
    names.sort();
    assert_eq!(
        names,
        vec![
            "outbound|8080|version=v1|echo.default",
            "outbound|8080|version=v2|echo.default",
            "outbound|8080||echo.default"
        ]
    );
}
