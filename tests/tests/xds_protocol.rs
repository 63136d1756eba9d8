//! The ADS protocol as a client sees it, over real gRPC and mTLS: named and
//! wildcard subscriptions, ACK, NACK (visible in `meshctl proxy-status`, and
//! the rejected version not sent again), pushes when the model changes.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use rampart_tests::ControlPlane;
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

/// Opens a SotW stream on `channel` subscribed to the listener
/// `echo.default:50051` and waits until it arrives (the model may have been
/// applied a moment ago, inside the debounce: an ACK and the push that
/// follows bring it).
async fn echo_listener(
    channel: tonic::transport::Channel,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
    DiscoveryResponse,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(request(LDS, &["echo.default:50051"], "", ""))
        .await
        .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut lds = next(&mut responses).await;
    while lds.resources.is_empty() {
        let ack = request(LDS, &["echo.default:50051"], &lds.version_info, &lds.nonce);
        tx.send(ack).await.unwrap();
        lds = next(&mut responses).await;
    }
    (tx, responses, lds)
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
    let svid = cp.workload_svid("default", "client").await;

    let (tx, mut responses, lds) = echo_listener(cp.channel(Some(&svid)).await).await;
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
    // proxy-config: what this client is served, as Envoy JSON; an unknown
    // node is a clear error.
    let out = cp.meshctl(&["proxy-config", "protocol-test", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listener = config
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "lds")
        .expect("the listener");
    assert_eq!(listener["name"], "echo.default:50051");
    assert_eq!(
        listener["resource"]["apiListener"]["apiListener"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let out = cp.meshctl(&["proxy-config", "nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no connected proxy has node id \"nobody\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
    let svid = cp.workload_svid("default", "delta").await;
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

const SIDECAR_MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [echo]
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: db, namespace: default}
spec:
  ports: [{name: tcp, port: 5432, protocol: tcp}]
"#;
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const ECHO_CLUSTER: &str = "outbound|8080||echo.default";

/// A sidecar node: `rampart.sidecar=true` plus `metadata`.
fn sidecar_request(id: &str, metadata: &[(&str, &str)], type_url: &str) -> DiscoveryRequest {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let mut fields: std::collections::HashMap<String, Value> = metadata
        .iter()
        .map(|(k, v)| {
            let value = Value {
                kind: Some(Kind::StringValue((*v).into())),
            };
            ((*k).to_owned(), value)
        })
        .collect();
    fields.insert(
        "rampart.sidecar".into(),
        Value {
            kind: Some(Kind::StringValue("true".into())),
        },
    );
    let mut request = request(type_url, &[], "", "");
    request.node = Some(Node {
        id: id.into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    });
    request
}

/// Opens an ADS stream as `sa` and sends `first`.
async fn open_as(
    cp: &ControlPlane,
    sa: &str,
    first: DiscoveryRequest,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    Result<tonic::Streaming<DiscoveryResponse>, tonic::Status>,
) {
    let svid = cp.workload_svid("default", sa).await;
    let mut client = AggregatedDiscoveryServiceClient::new(cp.channel(Some(&svid)).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, stream)
}

/// The first error a stream ends with.
async fn refusal(
    stream: Result<tonic::Streaming<DiscoveryResponse>, tonic::Status>,
) -> tonic::Status {
    match stream {
        Err(status) => status,
        Ok(mut s) => tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("an answer within 5 s")
            .expect_err("the stream is refused"),
    }
}

/// Endpoint addresses (ip:port) of a ClusterLoadAssignment response.
fn endpoints(response: &DiscoveryResponse) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
    use prost::Message;
    let mut out = Vec::new();
    for any in &response.resources {
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                continue;
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                continue;
            };
            let mtls = e.metadata.is_some();
            out.push(format!(
                "{}:{port}{}",
                sa.address,
                if mtls { " mtls" } else { "" }
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_register_are_checked_against_their_identity_and_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(
        dir.path(),
        &["--xds-debounce", "20ms", "--endpoint-grace", "1s"],
    )
    .await;
    apply(&cp, SIDECAR_MODEL).await;
    let echo = [
        ("rampart.service", "echo"),
        ("rampart.address", "127.0.0.1"),
        ("rampart.ports", "http=15080"),
        ("rampart.app_ports", "http=8081"),
        ("rampart.labels", "app=echo"),
    ];

    // A client watching echo's endpoints: none yet.
    let (watch_tx, watch) = open_as(&cp, "client", request(EDS, &[ECHO_CLUSTER], "", "")).await;
    let mut watch = watch.unwrap();
    let first = next(&mut watch).await;
    assert!(endpoints(&first).is_empty(), "{:?}", endpoints(&first));

    // Another identity may not serve echo (its serviceAccounts are [echo]).
    let (_tx, stream) = open_as(&cp, "frontend", sidecar_request("intruder", &echo, CDS)).await;
    let status = refusal(stream).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("may not serve echo.default"),
        "{status:?}"
    );

    // Malformed metadata is refused with what was wrong.
    let bad = [
        ("rampart.service", "echo"),
        ("rampart.address", "127.0.0.1"),
        ("rampart.ports", "http=port"),
    ];
    let (_tx, stream) = open_as(&cp, "echo", sidecar_request("bad", &bad, CDS)).await;
    let status = refusal(stream).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("\"port\" (for http) is not a port"),
        "{status:?}"
    );
    let (_tx, stream) = open_as(
        &cp,
        "echo",
        sidecar_request("bad-deps", &[("rampart.dependencies", "db")], CDS),
    )
    .await;
    let status = refusal(stream).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("\"db\" is not SERVICE.NAMESPACE"),
        "{status:?}"
    );

    // The echo sidecar, scoped to db: it registers, and its CDS holds its
    // inbound cluster and db's cluster, not echo's.
    let mut scoped = echo.to_vec();
    scoped.push(("rampart.dependencies", "db.default"));
    let (echo_tx, stream) = open_as(&cp, "echo", sidecar_request("echo-1", &scoped, CDS)).await;
    let mut stream = stream.unwrap();
    let cds = next(&mut stream).await;
    let names: Vec<String> = cds
        .resources
        .iter()
        .map(|any| {
            use prost::Message;
            envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(any.value.as_slice())
                .unwrap()
                .name
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "inbound|8081|http|echo.default",
            "outbound|5432||db.default"
        ],
        "its inbound side and its one dependency"
    );

    // The watcher is pushed the registered endpoint, marked for mTLS.
    let mut eds = next(&mut watch).await;
    let mut ack = request(EDS, &[ECHO_CLUSTER], &eds.version_info, &eds.nonce);
    watch_tx.send(ack).await.unwrap();
    while endpoints(&eds).is_empty() {
        eds = next(&mut watch).await;
        ack = request(EDS, &[ECHO_CLUSTER], &eds.version_info, &eds.nonce);
        watch_tx.send(ack).await.unwrap();
    }
    assert_eq!(endpoints(&eds), vec!["127.0.0.1:15080 mtls"]);

    // The sidecar goes away: after the grace period the endpoint leaves.
    drop(echo_tx);
    drop(stream);
    let eds = next(&mut watch).await;
    assert!(endpoints(&eds).is_empty(), "{:?}", endpoints(&eds));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_xds_is_opt_in_loopback_only_and_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    // Anywhere but loopback is refused before anything starts.
    let out = std::process::Command::new(rampart_tests::bin("rampart-control"))
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .args(["--dev-plaintext-xds", "0.0.0.0:15010"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");

    let port = rampart_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &["--dev-plaintext-xds", &addr, "--xds-debounce", "20ms"],
    )
    .await;
    assert!(
        cp.logs.text().contains("PLAINTEXT xDS IS ON"),
        "logged loudly"
    );
    apply(&cp, MODEL).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (_tx, _responses, lds) = echo_listener(channel.clone()).await;
    assert_eq!(
        lds.resources.len(),
        1,
        "an anonymous client gets the shared config"
    );

    // But never a sidecar's: that needs a workload SVID.
    let (tx, rx) = mpsc::channel(4);
    tx.send(sidecar_request("anon", &[], CDS)).await.unwrap();
    let stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    let status = refusal(stream).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("workload SVID"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_bounds_requests_end_the_stream_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    // A 1 MB resource name (within the 4 MB request limit): refused.
    let huge = "x".repeat(1 << 20);
    let (_tx, stream) = open_as(&cp, "greedy", request(cds, &[huge.as_str()], "", "")).await;
    let status = refusal(stream).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("bytes (at most 4096)"),
        "{status:?}"
    );
    // 200,000 names across requests on one stream: refused once over 100,000.
    let names: Vec<String> = (0..50_000).map(|i| format!("cluster-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (tx, stream) = open_as(&cp, "greedy", request(cds, &names, "", "")).await;
    let mut stream = stream.unwrap();
    let first = stream.message().await.unwrap();
    assert!(first.is_some(), "50,000 names are taken");
    // SotW names the whole subscription each time: 150,000 is too many.
    let more: Vec<String> = (0..150_000).map(|i| format!("c{i}")).collect();
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    tx.send(request(cds, &more, "", "")).await.unwrap();
    let status = refusal(Ok(stream)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 100000"), "{status:?}");
    // Everyone else is still served.
    let (_tx, stream) = open_as(&cp, "fine", request(cds, &[], "", "")).await;
    assert!(stream.unwrap().message().await.unwrap().is_some());
}
