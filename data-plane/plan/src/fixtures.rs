//! Resources and plans for tests, here and in the proxy's.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use rampart_api::xds::TypeUrl;

use crate::Plan;
use crate::resources::{Config, Held};

pub fn hold(config: &mut Config, type_url: TypeUrl, name: &str, resource: Any) {
    config.types.entry(type_url).or_default().insert(
        name.to_owned(),
        Held {
            version: "1".to_owned(),
            resource: Arc::new(resource),
        },
    );
}

/// EDS clusters `a` and `b` (only `a` has endpoints) and the route
/// table `r` sending everything to `to`.
pub fn config(to: &str) -> Config {
    let mut config = Config::default();
    for name in ["a", "b"] {
        let cluster = Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        };
        hold(&mut config, TypeUrl::Cluster, name, pack_any(cluster));
    }
    let assignment = ClusterLoadAssignment {
        cluster_name: "a".to_owned(),
        ..Default::default()
    };
    hold(&mut config, TypeUrl::Endpoint, "a", pack_any(assignment));
    let table = RouteConfiguration {
        name: "r".to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "all".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(to.to_owned())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    hold(&mut config, TypeUrl::Route, "r", pack_any(table));
    config
}

pub fn target(plan: &Plan) -> Vec<&str> {
    plan.routes["r"].clusters().collect()
}
