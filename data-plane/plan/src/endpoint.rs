//! Endpoints: addresses, weights, mTLS and locality; draining endpoints get
//! nothing new while others serve.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};

use crate::proto::socket_addr;
use crate::{Refusal, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointPlan {
    pub address: SocketAddr,
    pub weight: u32,
    pub mtls: bool,
    pub locality: Locality,
}

/// Where an endpoint, or this proxy, runs (any part may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// As it was written: `region[/zone[/sub-zone]]`.
impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [&self.region, &self.zone, &self.sub_zone];
        let given: Vec<&str> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.as_str())
            .collect();
        f.write_str(&given.join("/"))
    }
}

impl Locality {
    /// `region/zone/sub-zone`, the last two optional; each part letters,
    /// digits, `.`, `_` or `-`.
    pub fn parse(text: &str) -> std::result::Result<Locality, String> {
        let parts = rampart_api::locality::parse(text)?;
        let part = |i: usize| parts.get(i).map_or(String::new(), |p| (*p).to_owned());
        Ok(Locality {
            region: part(0),
            zone: part(1),
            sub_zone: part(2),
        })
    }

    /// How far `other` is from here, in Istio's failover order: 0 the same
    /// sub-zone, 1 the same zone, 2 the same region, 3 elsewhere.
    pub fn distance(&self, other: &Locality) -> u8 {
        if self.region != other.region {
            3
        } else if self.zone != other.zone {
            2
        } else if self.sub_zone != other.sub_zone {
            1
        } else {
            0
        }
    }
}

/// The endpoints new requests may go to. Draining ones (EDS health status
/// DRAINING: a terminating pod that still serves) finish what they have and
/// get nothing new, unless every endpoint drains (a rollout of a single
/// replica): then they are all there is, as Envoy's panic mode would do.
pub(crate) fn endpoint_plans(assignment: &ClusterLoadAssignment) -> Result<Vec<EndpointPlan>> {
    let draining = HealthStatus::Draining as i32;
    let mut out = Vec::new();
    let mut drained = Vec::new();
    for locality in &assignment.endpoints {
        for e in &locality.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                return Err(Refusal::invalid(
                    "an endpoint without an address".to_owned(),
                ));
            };
            let mtls = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
                .and_then(|s| s.fields.get("tls"))
                .is_some_and(|v| matches!(&v.kind, Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) if s == "mtls"));
            let at = locality.locality.as_ref();
            let into = if e.health_status == draining {
                &mut drained
            } else {
                &mut out
            };
            into.push(EndpointPlan {
                address: socket_addr(endpoint.address.as_ref())?,
                weight: e.load_balancing_weight.map_or(1, |w| w.value.max(1)),
                mtls,
                locality: Locality {
                    region: at.map_or(String::new(), |l| l.region.clone()),
                    zone: at.map_or(String::new(), |l| l.zone.clone()),
                    sub_zone: at.map_or(String::new(), |l| l.sub_zone.clone()),
                },
            });
        }
    }
    Ok(if out.is_empty() { drained } else { out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};

    #[test]
    fn draining_endpoints_get_new_requests_only_when_all_drain() {
        use envoy_types::pb::envoy::config::core::v3::SocketAddress;
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint, LbEndpoint, LocalityLbEndpoints,
        };
        let endpoint = |port: u32, status: HealthStatus| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            health_status: status as i32,
            ..Default::default()
        };
        let assignment = |endpoints: Vec<LbEndpoint>| ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints,
                ..Default::default()
            }],
            ..Default::default()
        };
        let ports = |a: &ClusterLoadAssignment| -> Vec<u16> {
            endpoint_plans(a)
                .unwrap()
                .iter()
                .map(|e| e.address.port())
                .collect()
        };
        let mixed = assignment(vec![
            endpoint(1, HealthStatus::Unknown),
            endpoint(2, HealthStatus::Draining),
        ]);
        assert_eq!(ports(&mixed), [1]);
        let all = assignment(vec![
            endpoint(2, HealthStatus::Draining),
            endpoint(3, HealthStatus::Draining),
        ]);
        assert_eq!(ports(&all), [2, 3]);
    }
}
