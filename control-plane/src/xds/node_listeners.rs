//! Listeners a proxy asks for through its node metadata. A workload without
//! traffic capture (Envoy or rampart-proxy beside a process on a VM) names
//! the local ports it wants as outbound listeners:
//!
//! ```text
//! rampart.outbound_listeners = "127.0.0.1:15080=echo.default:8080,127.0.0.1:15051=echo.default:50051"
//! ```
//!
//! Each becomes a Listener on that address: an HTTP connection manager that
//! takes its routes (`<svc>.<ns>:<port>`) over ADS for HTTP ports, a TCP proxy
//! to the service's cluster for TCP ports. A proxy that names listeners gets
//! exactly these for a wildcard LDS subscription.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::util::pack_any;

use rampart_api::mesh::Protocol;
use rampart_api::xds::OutboundListener;

use super::envoy_blocks::{rds_manager, socket};
use super::names::{cluster_name, listener_name};
use super::sidecar::{SidecarInputs, http_inspector};
use super::snapshot::{Resources, Snapshot, TypeUrl};

/// The listeners for `requested`: HTTP ports (those with routes in the
/// snapshot) get the HTTP connection manager, TCP ports the TCP proxy, and
/// `auto` ports both, the HTTP inspector telling which a connection takes.
pub fn listeners(
    requested: &[OutboundListener],
    snapshot: &Snapshot,
    inputs: &SidecarInputs,
) -> Resources {
    let mut built = Snapshot::default();
    for o in requested {
        let name = format!("outbound|{}", o.local);
        let route = listener_name(&o.service, &o.namespace, o.port);
        let http = || {
            let mut manager = rds_manager(&name, &route);
            inputs.timeouts.set_http(&mut manager);
            if inputs.access_log {
                manager.access_log = vec![super::access_log::http()];
            }
            Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
            }
        };
        let tcp = || {
            let cluster = cluster_name(&o.service, &o.namespace, o.port, &BTreeMap::new());
            let mut proxy = TcpProxy {
                stat_prefix: name.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)),
                ..Default::default()
            };
            inputs.timeouts.set_tcp(&mut proxy);
            if inputs.access_log {
                proxy.access_log = vec![super::access_log::tcp()];
            }
            Filter {
                name: "envoy.filters.network.tcp_proxy".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
            }
        };
        let chain = |filter: Filter, protocols: &[&str]| FilterChain {
            filters: vec![filter],
            filter_chain_match: (!protocols.is_empty()).then(|| FilterChainMatch {
                application_protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let auto = inputs
            .services
            .get(&(o.namespace.clone(), o.service.clone()))
            .and_then(|s| s.ports.iter().find(|p| p.port == o.port))
            .is_some_and(|p| p.protocol == Protocol::Auto);
        let (filter_chains, listener_filters) = if snapshot.get(TypeUrl::Route, &route).is_none() {
            (vec![chain(tcp(), &[])], Vec::new())
        } else if auto {
            (
                vec![chain(http(), &["http/1.1", "h2c"]), chain(tcp(), &[])],
                vec![http_inspector()],
            )
        } else {
            (vec![chain(http(), &[])], Vec::new())
        };
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(&o.local.ip().to_string(), o.local.port())),
            filter_chains,
            listener_filters,
            ..Default::default()
        };
        built.insert(TypeUrl::Listener, name, listener);
    }
    built
        .of(TypeUrl::Listener)
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect()
}
