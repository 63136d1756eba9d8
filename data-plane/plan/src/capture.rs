//! Traffic capture: the unbound listeners that redirected outbound
//! connections take, by destination (a service's virtual IPs and its
//! endpoints on the service port).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Plan;
use crate::connection_manager::{DEFAULT_IDLE_TIMEOUT, HttpPlan, HttpTimeouts};
use crate::listener::{App, ChainPlan, ListenerPlan, Transport};
use crate::route::Routes;

/// The listeners redirected outbound connections take, by destination: an
/// endpoint of a service port goes to that port's routes (HTTP) or cluster
/// (TCP); for an `auto` port, to the routes if the first bytes are HTTP,
/// else to the cluster. Subset clusters (`outbound|PORT|SUBSET|...`) are skipped: the
/// service's own cluster holds every endpoint.
pub(crate) fn capture_listeners(plan: &mut Plan) {
    let mut names: Vec<&String> = plan.clusters.keys().collect();
    names.sort();
    for name in names {
        let Some((host, port)) = service_cluster(name) else {
            continue;
        };
        let route = format!("{host}:{port}");
        let cluster = &plan.clusters[name];
        let chain = |app_protocols: &[&str], app: App| ChainPlan {
            name: "captured".to_owned(),
            transport: Transport::Any,
            application_protocols: app_protocols.iter().map(|p| (*p).to_owned()).collect(),
            terminate_mtls: false,
            network_rbac: Vec::new(),
            app,
        };
        let http = || {
            App::Http(HttpPlan {
                rbac: Vec::new(),
                routes: Routes::Named(route.clone()),
                forward_client_identity: false,
                timeouts: HttpTimeouts::default(),
                access_log: None,
                rate_limit: None,
            })
        };
        let tcp = || App::Tcp {
            cluster: name.clone(),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            access_log: None,
        };
        let chains = match (plan.routes.contains_key(&route), cluster.detect_protocol) {
            (true, true) => vec![chain(&["http/1.1", "h2c"], http()), chain(&[], tcp())],
            (true, false) => vec![chain(&[], http())],
            (false, _) => vec![chain(&[], tcp())],
        };
        // The service's virtual IPs on the service port, then its endpoints.
        let port: Option<u16> = port.parse().ok();
        let virtual_ips = cluster
            .addresses
            .iter()
            .filter_map(|ip| Some(SocketAddr::new(*ip, port?)));
        let destinations: Vec<SocketAddr> = virtual_ips
            .chain(cluster.endpoints.iter().map(|e| e.address))
            .collect();
        let Some(&address) = destinations.first() else {
            continue;
        };
        let listener = Arc::new(ListenerPlan {
            name: format!("capture|{name}"),
            address,
            chains,
            bind: false,
            inbound: false,
        });
        for destination in destinations {
            plan.captured
                .entry(destination)
                .or_insert_with(|| listener.clone());
        }
        plan.listeners.insert(listener.name.clone(), listener);
    }
}

/// The host (`SVC.NS`) and port of a service port's own cluster
/// (`outbound|PORT||SVC.NS`); `None` for subset and inbound clusters.
fn service_cluster(cluster: &str) -> Option<(&str, &str)> {
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(port), Some(""), Some(host)) => Some((host, port)),
        _ => None,
    }
}

/// The route configuration (`SVC.NS:PORT`) of a service port's own cluster
/// (`outbound|PORT||SVC.NS`); `None` for subset and inbound clusters.
pub fn service_route(cluster: &str) -> Option<String> {
    let (host, port) = service_cluster(cluster)?;
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::google::protobuf::value::Kind;
    use envoy_types::util::pack_any;
    use rampart_api::xds::{CaptureMetadata, TypeUrl};

    use super::*;
    use crate::compile;
    use crate::fixtures::hold;
    use crate::resources::Config;

    /// The EDS service cluster `name` with these virtual IPs in its capture
    /// metadata (as text, so that a malformed one can be sent too).
    fn with_addresses(name: &str, addresses: &[&str]) -> Config {
        let placeholders = addresses
            .iter()
            .map(|_| IpAddr::from([0, 0, 0, 0]))
            .collect();
        let mut metadata = CaptureMetadata {
            detect_protocol: false,
            addresses: placeholders,
        }
        .to_metadata()
        .expect("addresses are metadata");
        for value in metadata
            .filter_metadata
            .values_mut()
            .flat_map(|s| s.fields.values_mut())
        {
            if let Some(Kind::ListValue(list)) = &mut value.kind {
                for (v, a) in list.values.iter_mut().zip(addresses) {
                    v.kind = Some(Kind::StringValue((*a).to_owned()));
                }
            }
        }
        let cluster = Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            metadata: Some(metadata),
            ..Default::default()
        };
        let mut config = Config::default();
        hold(&mut config, TypeUrl::Cluster, name, pack_any(cluster));
        config
    }

    #[test]
    fn a_service_address_on_the_service_port_is_captured_for_its_cluster() {
        let name = "outbound|8080||web.default";
        let capturing = Plan::new(true);
        let plan = compile(
            &with_addresses(name, &["10.96.0.10", "fd00::10"]),
            &capturing,
        )
        .unwrap();
        for destination in ["10.96.0.10:8080", "[fd00::10]:8080"] {
            let listener = &plan.captured[&destination.parse::<SocketAddr>().unwrap()];
            assert_eq!(listener.name, format!("capture|{name}"), "{destination}");
        }
        // Only on the service port.
        assert_eq!(plan.captured.len(), 2);
        // Kept from plan to plan; without capture nothing is built for it.
        assert!(plan.capture);
        let plain = compile(&with_addresses(name, &["10.96.0.10"]), &Plan::default()).unwrap();
        assert!(plain.captured.is_empty());

        let refused = compile(&with_addresses(name, &["10.96.0.300"]), &capturing);
        let errors = refused.expect_err("a bad address is refused");
        let error = errors.iter().map(ToString::to_string).collect::<String>();
        assert!(
            error.contains("\"10.96.0.300\" is not an IP address"),
            "{error}"
        );
    }

    #[test]
    fn only_a_service_port_s_own_cluster_names_a_route_table() {
        assert_eq!(
            service_route("outbound|8080||web.shop").as_deref(),
            Some("web.shop:8080")
        );
        for other in [
            "outbound|8080|v1|web.shop",
            "inbound|8080|http|web.shop",
            "outbound|8080",
            "",
        ] {
            assert_eq!(service_route(other), None, "{other}");
        }
    }
}
