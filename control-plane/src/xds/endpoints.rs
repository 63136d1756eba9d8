//! A service port's ClusterLoadAssignment: endpoints grouped by locality,
//! every locality weighted, sidecar endpoints marked for mTLS.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::envoy_blocks::{socket, tls_match};

/// One endpoint of a service port, as EDS carries it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PortEndpoint<'a> {
    pub(super) locality: &'a str,
    pub(super) address: &'a str,
    pub(super) port: u16,
    pub(super) weight: u32,
    pub(super) sidecar: bool,
    pub(super) draining: bool,
}

pub(super) fn load_assignment(
    cluster: &str,
    endpoints: Vec<PortEndpoint<'_>>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<PortEndpoint<'_>>> = BTreeMap::new();
    for e in endpoints {
        by_locality.entry(e.locality).or_default().push(e);
    }
    let localities = by_locality
        .into_iter()
        .map(|(locality, endpoints)| {
            let mut parts = locality.splitn(3, '/');
            let locality = Locality {
                region: parts.next().unwrap_or_default().to_owned(),
                zone: parts.next().unwrap_or_default().to_owned(),
                sub_zone: parts.next().unwrap_or_default().to_owned(),
            };
            let total: u32 = endpoints.iter().map(|e| e.weight).sum();
            LocalityLbEndpoints {
                locality: Some(locality),
                load_balancing_weight: Some(UInt32Value {
                    value: total.max(1),
                }),
                priority: 0,
                lb_endpoints: endpoints
                    .into_iter()
                    .map(|e| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(e.address, e.port)),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(UInt32Value { value: e.weight }),
                        health_status: if e.draining {
                            HealthStatus::Draining as i32
                        } else {
                            HealthStatus::Unknown as i32
                        },
                        metadata: e.sidecar.then(|| Metadata {
                            filter_metadata: [(
                                "envoy.transport_socket_match".to_owned(),
                                tls_match(),
                            )]
                            .into(),
                            ..Default::default()
                        }),
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: localities,
        ..Default::default()
    }
}
