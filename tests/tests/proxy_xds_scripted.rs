//! rampart-proxy against a scripted control plane, step by step: it ACKs
//! what it can carry, NACKs (naming the resource and the reason) what it
//! cannot while its traffic goes on with what it last accepted, and after
//! the stream ends resumes with the versions it ACKed, not the one it
//! refused. The real control plane never sends a resource the proxy must
//! refuse, so this is where that path is tested end to end.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, SocketAddress, address, data_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use rampart_api::xds::TypeUrl;
use rampart_tests::scripted::{AdsStream, ScriptedControlPlane};
use rampart_tests::{Sidecar, apps, bin, counter, free_port, http_get, proxy_to};

const IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/hello";

fn socket(port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    })
}

fn rootca(pem: &str) -> Any {
    pack_any(Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(pem.into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    })
}

/// A STATIC cluster with one endpoint on loopback.
fn cluster(name: &str, port: u16) -> Any {
    pack_any(Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: socket(port),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A listener on `port` whose one filter is `filter`.
fn listener(name: &str, port: u16, filter: Any) -> Any {
    pack_any(Listener {
        name: name.into(),
        address: socket(port),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "only".into(),
                config_type: Some(filter::ConfigType::TypedConfig(filter)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn tcp_proxy_to(cluster: &str) -> Any {
    pack_any(TcpProxy {
        stat_prefix: "out".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    })
}

/// The proxy's answer to the response `nonce` of `type_url`: its next
/// request of that type that names the nonce.
async fn answer(stream: &mut AdsStream, type_url: TypeUrl, nonce: &str) -> DeltaDiscoveryRequest {
    loop {
        let request = stream.request_of(type_url.as_str()).await;
        if request.response_nonce == nonce {
            return request;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_is_nacked_and_the_last_good_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ScriptedControlPlane::start(dir.path(), IDENTITY).await;
    let echo = apps::tcp_echo().await;
    let out = free_port();
    let (mut command, admin) = proxy_to(
        &bin("rampart-proxy"),
        &cp.addr,
        &cp.trust_anchor,
        "rjt_scripted",
        &dir.path().join("hello.sock"),
    );
    command.args(["--node-id", "hello-1"]);
    let proxy = Sidecar::spawn(command, admin);
    let logs = &proxy.logs;
    let mut stream = cp.stream().await;

    // What a control plane sends first: the trust bundle, a cluster, and a
    // listener in front of it. Each is ACKed: the same nonce, no error.
    let sent = stream
        .send(
            TypeUrl::Secret.as_str(),
            vec![("ROOTCA", "1", rootca(&cp.root_pem))],
        )
        .await;
    let ack = answer(&mut stream, TypeUrl::Secret, &sent).await;
    assert_eq!(ack.error_detail, None, "{}", logs.text());
    let sent = stream
        .send(
            TypeUrl::Cluster.as_str(),
            vec![("echo", "1", cluster("echo", echo))],
        )
        .await;
    let ack = answer(&mut stream, TypeUrl::Cluster, &sent).await;
    assert_eq!(ack.error_detail, None, "{}", logs.text());
    let good = listener("out", out, tcp_proxy_to("echo"));
    let sent = stream
        .send(TypeUrl::Listener.as_str(), vec![("out", "1", good)])
        .await;
    let ack = answer(&mut stream, TypeUrl::Listener, &sent).await;
    assert_eq!(ack.error_detail, None, "{}", logs.text());
    let through = format!("127.0.0.1:{out}");
    let flowing = rampart_tests::eventually(100, || async {
        apps::tcp_exchange(&through, b"one").await.ok().as_deref() == Some("got 3 bytes: one")
    })
    .await;
    assert!(
        flowing,
        "no traffic through the ACKed listener\n{}",
        logs.text()
    );

    // A listener it cannot carry faithfully (a filter it does not have):
    // NACKed with the resource and the reason; the old one keeps serving.
    let redis = Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
            .into(),
        value: Vec::new(),
    };
    let sent = stream
        .send(
            TypeUrl::Listener.as_str(),
            vec![("out", "2", listener("out", out, redis))],
        )
        .await;
    let nack = answer(&mut stream, TypeUrl::Listener, &sent).await;
    let status = nack.error_detail.expect("a NACK carries its reason");
    // A feature the proxy lacks, not a wrong configuration: UNIMPLEMENTED.
    assert_eq!(status.code, tonic::Code::Unimplemented as i32, "{status:?}");
    let why = status.message;
    assert!(why.contains("out"), "{why}");
    assert!(why.contains("RedisProxy is not supported"), "{why}");
    assert_eq!(
        apps::tcp_exchange(&through, b"two").await.ok().as_deref(),
        Some("got 3 bytes: two"),
        "the last good listener stopped serving\n{}",
        logs.text()
    );
    let metrics = http_get(&proxy.admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let nacked = counter(
        &metrics,
        "rampart_proxy_xds_updates_total",
        &["type=\"lds\"", "result=\"nack\""],
    );
    assert!(nacked >= 1.0, "{metrics}");

    // The stream ends; the proxy comes back saying what it holds: the
    // versions it ACKed, not the one it refused. Traffic never stopped.
    stream.close().await;
    let mut again = cp.stream().await;
    // It opens with one request per type, the wildcard ones among them.
    let mut opening = std::collections::BTreeMap::new();
    while !(opening.contains_key(TypeUrl::Listener.as_str())
        && opening.contains_key(TypeUrl::Cluster.as_str()))
    {
        let request = again.request().await;
        opening.insert(request.type_url.clone(), request.initial_resource_versions);
    }
    let held = |type_url: TypeUrl, name: &str| opening[type_url.as_str()].get(name).cloned();
    assert_eq!(
        held(TypeUrl::Listener, "out").as_deref(),
        Some("1"),
        "{opening:?}"
    );
    assert_eq!(
        held(TypeUrl::Cluster, "echo").as_deref(),
        Some("1"),
        "{opening:?}"
    );
    assert_eq!(
        apps::tcp_exchange(&through, b"three").await.ok().as_deref(),
        Some("got 5 bytes: three"),
        "{}",
        logs.text()
    );
}
