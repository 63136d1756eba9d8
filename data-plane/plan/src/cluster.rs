//! Clusters: how to balance, connect (HTTP/2, mTLS and the SPIFFE IDs
//! accepted), the circuit-breaking limits and outlier detection.

use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::Any;
use rampart_api::xds::{CaptureMetadata, TypeUrl};

use crate::endpoint::{EndpointPlan, endpoint_plans};
use crate::proto::{decode, duration};
use crate::{Refusal, Result};

const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    LeastRequest,
    RoundRobin,
    RingHash,
    Random,
}

#[derive(Debug, PartialEq)]
pub struct ClusterPlan {
    pub name: String,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 to plaintext endpoints (on mTLS, ALPN decides).
    pub http2: bool,
    /// mTLS to endpoints marked `tls: mtls`: the SPIFFE IDs accepted.
    pub mtls: Option<Vec<String>>,
    pub limits: Limits,
    pub outlier: Option<OutlierPlan>,
    pub endpoints: Vec<EndpointPlan>,
    /// Endpoints come over EDS (and are in `endpoints` once they have).
    pub eds: bool,
    /// An EDS cluster whose endpoints have not arrived yet.
    pub warming: bool,
    /// The service port is declared `auto` (cluster metadata
    /// `rampart.protocol`): a captured connection to it is told HTTP from
    /// opaque TCP on its first bytes.
    pub detect_protocol: bool,
    /// The service's virtual IPs (cluster metadata `rampart.addresses`):
    /// captured connections to them on the service port come here too.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Retries in flight at most this percent of requests in flight (but
    /// always `min` allowed); replaces `max_retries` when set, as in Envoy.
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min: u32,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPlan {
    pub consecutive_5xx: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

pub(crate) fn cluster_plan(cluster: &Cluster, assignment: Option<&Any>) -> Result<ClusterPlan> {
    use cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    let eds = match cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => true,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Static as i32 => false,
        _ => {
            return Err(Refusal::unsupported(
                "only STATIC and EDS clusters are supported".to_owned(),
            ));
        }
    };
    let balance = match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::LeastRequest) => Balance::LeastRequest,
        Ok(LbPolicy::RoundRobin) => Balance::RoundRobin,
        Ok(LbPolicy::RingHash) => Balance::RingHash,
        Ok(LbPolicy::Random) => Balance::Random,
        _ => {
            return Err(Refusal::unsupported(format!(
                "lb_policy {} is not supported",
                cluster.lb_policy
            )));
        }
    };
    let http2 = match cluster.typed_extension_protocol_options.get(HTTP_OPTIONS) {
        None => false,
        Some(any) => {
            let o: HttpProtocolOptions = decode(
                any,
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            )?;
            use http_protocol_options::{
                UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
            };
            matches!(
                o.upstream_protocol_options,
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(c))
                    if matches!(c.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
            )
        }
    };
    let CaptureMetadata {
        detect_protocol,
        addresses,
    } = CaptureMetadata::from_cluster(cluster).map_err(|e| Refusal::invalid(e.to_string()))?;
    let mut mtls = None;
    for m in &cluster.transport_socket_matches {
        let wants_mtls = m
            .r#match
            .as_ref()
            .and_then(|s| s.fields.get("tls"))
            .is_some_and(|v| {
                matches!(&v.kind, Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) if s == "mtls")
            });
        if !wants_mtls {
            return Err(Refusal::unsupported(format!(
                "transport_socket_matches {:?}: only the match tls=mtls is supported",
                m.name
            )));
        }
        let Some(transport_socket::ConfigType::TypedConfig(any)) = m
            .transport_socket
            .as_ref()
            .and_then(|s| s.config_type.as_ref())
        else {
            return Err(Refusal::invalid(format!(
                "transport_socket_matches {:?}: no typed_config",
                m.name
            )));
        };
        let tls: UpstreamTlsContext = decode(any, UPSTREAM_TLS)?;
        mtls = Some(expected_sans(&tls)?);
    }
    if cluster.transport_socket.is_some() {
        return Err(Refusal::unsupported(
            "a cluster-wide transport_socket is not supported (use transport_socket_matches)"
                .to_owned(),
        ));
    }
    let limits = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.first())
        .map(|t| {
            let d = Limits::default();
            Limits {
                max_connections: t.max_connections.map_or(d.max_connections, |v| v.value),
                max_pending: t.max_pending_requests.map_or(d.max_pending, |v| v.value),
                max_requests: t.max_requests.map_or(d.max_requests, |v| v.value),
                max_retries: t.max_retries.map_or(d.max_retries, |v| v.value),
                retry_budget: t.retry_budget.map(|b| RetryBudget {
                    percent: b.budget_percent.map_or(20.0, |p| p.value),
                    min: b.min_retry_concurrency.map_or(3, |v| v.value),
                }),
            }
        })
        .unwrap_or_default();
    let outlier = cluster.outlier_detection.as_ref().map(|o| OutlierPlan {
        consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value),
        base_ejection: duration(o.base_ejection_time.as_ref()).unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value),
    });
    let endpoints = match (eds, assignment, &cluster.load_assignment) {
        (true, Some(any), _) => {
            let a: ClusterLoadAssignment = decode(any, TypeUrl::Endpoint.as_str())?;
            endpoint_plans(&a).map_err(|e| e.at("endpoints"))?
        }
        (true, None, _) => Vec::new(),
        (false, _, Some(a)) => endpoint_plans(a)?,
        (false, _, None) => {
            return Err(Refusal::invalid(
                "a STATIC cluster needs a load_assignment".to_owned(),
            ));
        }
    };
    Ok(ClusterPlan {
        name: cluster.name.clone(),
        balance,
        connect_timeout: duration(cluster.connect_timeout.as_ref())
            .unwrap_or(Duration::from_secs(5)),
        http2,
        mtls,
        limits,
        outlier,
        endpoints,
        eds,
        warming: eds && assignment.is_none(),
        detect_protocol,
        addresses,
    })
}

/// The URI SANs an upstream TLS context requires of the server.
fn expected_sans(tls: &UpstreamTlsContext) -> Result<Vec<String>> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let common = tls
        .common_tls_context
        .as_ref()
        .ok_or(Refusal::invalid("mTLS without a common_tls_context"))?;
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
        &common.validation_context_type
    else {
        return Err(Refusal::unsupported(
            "mTLS needs a combined validation context (ROOTCA plus SAN matchers)".to_owned(),
        ));
    };
    let mut out = Vec::new();
    for m in combined
        .default_validation_context
        .iter()
        .flat_map(|v| &v.match_typed_subject_alt_names)
    {
        match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
            Some(MatchPattern::Exact(id)) => out.push(id.clone()),
            _ => {
                return Err(Refusal::unsupported(
                    "SAN matchers must be exact SPIFFE IDs".to_owned(),
                ));
            }
        }
    }
    Ok(out)
}
