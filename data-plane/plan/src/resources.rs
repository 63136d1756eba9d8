//! What the proxy holds of the xDS resources it was sent, by type URL then
//! name: the input of the plan compiler, and what the xDS client subscribes
//! from (the clusters' endpoints, the listeners' route tables).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use rampart_api::xds::TypeUrl;

use crate::capture::service_route;

/// One held resource: its version and its encoded message (shared: the
/// configuration is copied on every update, its resources are not).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub version: String,
    pub resource: Arc<Any>,
}

/// Everything the proxy holds, by type URL then name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub types: BTreeMap<TypeUrl, BTreeMap<String, Held>>,
}

impl Config {
    /// The held resources of one type, by name.
    pub fn of(&self, type_url: TypeUrl) -> impl Iterator<Item = (&String, &Held)> {
        self.types.get(&type_url).into_iter().flat_map(|m| m.iter())
    }

    /// Names of the clusters whose endpoints come over EDS.
    pub fn eds_clusters(&self) -> BTreeSet<String> {
        self.of(TypeUrl::Cluster)
            .filter_map(|(name, held)| {
                let cluster = Cluster::decode(held.resource.value.as_slice()).ok()?;
                cluster.eds_cluster_config.is_some().then(|| name.clone())
            })
            .collect()
    }

    /// Names of the route configurations the listeners take over RDS; with
    /// traffic capture also every service port's (`SVC.NS:PORT`, named after
    /// the cluster `outbound|PORT||SVC.NS`): captured HTTP calls use them.
    pub fn rds_routes(&self, capture: bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if capture {
            out.extend(
                self.of(TypeUrl::Cluster)
                    .filter_map(|(name, _)| service_route(name)),
            );
        }
        for (_, held) in self.of(TypeUrl::Listener) {
            let Ok(listener) = Listener::decode(held.resource.value.as_slice()) else {
                continue;
            };
            let managers = listener
                .api_listener
                .and_then(|a| a.api_listener)
                .into_iter()
                .chain(
                    listener
                        .filter_chains
                        .into_iter()
                        .flat_map(|c| c.filters)
                        .filter_map(|f| match f.config_type {
                            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
                            _ => None,
                        }),
                );
            for any in managers {
                if let Ok(manager) = HttpConnectionManager::decode(any.value.as_slice())
                    && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                        manager.route_specifier
                {
                    out.insert(rds.route_config_name);
                }
            }
        }
        out
    }
}
