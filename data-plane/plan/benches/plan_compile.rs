//! What one xDS update costs a proxy holding a large mesh: N services, each
//! an EDS cluster with 3 endpoints and a route table (as a capturing
//! sidecar holds them). Prints the time to compile the plan from nothing
//! and to compile it again after one endpoint moved (what every EDS update
//! during a rolling deploy costs every proxy), median of 21.
//!
//! Run: `cargo bench -p rampart-plan --bench plan_compile [-- N]`

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use rampart_api::xds::TypeUrl;
use rampart_plan::resources::{Config, Held};
use rampart_plan::{Plan, compile};

fn hold(config: &mut Config, type_url: TypeUrl, name: String, version: &str, resource: Any) {
    config.types.entry(type_url).or_default().insert(
        name,
        Held {
            version: version.to_owned(),
            resource: std::sync::Arc::new(resource),
        },
    );
}

fn assignment(cluster: &str, first_port: u32) -> ClusterLoadAssignment {
    let endpoint = |port: u32| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.0.0.1".to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: (first_port..first_port + 3).map(endpoint).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn mesh(n: usize) -> Config {
    let mut config = Config::default();
    for i in 0..n {
        let cluster = format!("outbound|8080||svc-{i}.default");
        let c = Cluster {
            name: cluster.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        };
        hold(
            &mut config,
            TypeUrl::Cluster,
            cluster.clone(),
            "1",
            pack_any(c),
        );
        let a = assignment(&cluster, 20_000 + 3 * i as u32);
        hold(
            &mut config,
            TypeUrl::Endpoint,
            cluster.clone(),
            "1",
            pack_any(a),
        );
        let name = format!("svc-{i}.default:8080");
        let table = RouteConfiguration {
            name: name.clone(),
            virtual_hosts: vec![VirtualHost {
                name: name.clone(),
                domains: vec![format!("svc-{i}.default"), format!("svc-{i}.default:8080")],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        hold(&mut config, TypeUrl::Route, name, "1", pack_any(table));
    }
    config
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Compiles the mesh from nothing, then after one endpoint moved, 21
/// times; the medians.
fn measure(config: &Config, n: usize, capture: bool) -> (Duration, Duration) {
    let empty = || Plan::new(capture);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut plan = empty();
    for round in 0..21u32 {
        let started = Instant::now();
        plan = compile(config, &empty()).expect("the mesh compiles");
        cold.push(started.elapsed());
        // One endpoint of svc-0 moves: a new version of its assignment.
        let mut next = config.clone();
        let cluster = "outbound|8080||svc-0.default".to_owned();
        let moved = assignment(&cluster, 30_000 + round);
        hold(
            &mut next,
            TypeUrl::Endpoint,
            cluster,
            &format!("2-{round}"),
            pack_any(moved),
        );
        let started = Instant::now();
        plan = compile(&next, &plan).expect("the update compiles");
        warm.push(started.elapsed());
    }
    assert_eq!(plan.clusters.len(), n);
    assert_eq!(plan.captured.is_empty(), !capture);
    (median(cold), median(warm))
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let config = mesh(n);
    println!(
        "plan compile, {n} services (cluster + 3 endpoints + route table each), median of 21:"
    );
    for capture in [false, true] {
        let (cold, warm) = measure(&config, n, capture);
        let mode = if capture { "--capture" } else { "no capture" };
        println!(
            "  {mode:<11} from nothing: {:>9.3} ms; after one endpoint moved: {:>9.3} ms",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3
        );
    }
}
