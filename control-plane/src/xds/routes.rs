//! A service port's api_listener and route table: weighted splits,
//! timeouts, retries, mirrors and faults from its TrafficPolicy.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    RouteAction, RouteConfiguration, WeightedCluster, retry_policy::RetryBackOff, route_action,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use rampart_api::mesh::{Fault, TrafficPolicySpec};

use super::envoy_blocks::{FAULT_FILTER, catch_all, duration, percentage, rds_manager};
use super::names::cluster_name;

pub(super) fn api_listener(name: &str) -> Listener {
    let manager = rds_manager(name, name);
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    }
}

pub(super) fn route_configuration(
    name: &str,
    service: &str,
    namespace: &str,
    port: u16,
    policy: Option<&TrafficPolicySpec>,
    mirror: Option<(String, u32)>,
) -> RouteConfiguration {
    let split: Vec<_> = policy
        .map(|p| p.split.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.weight > 0)
        .collect();
    let cluster_specifier = if split.is_empty() {
        route_action::ClusterSpecifier::Cluster(cluster_name(
            service,
            namespace,
            port,
            &BTreeMap::new(),
        ))
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .iter()
                .map(|t| weighted_cluster::ClusterWeight {
                    name: cluster_name(service, namespace, port, &t.subset),
                    weight: Some(UInt32Value { value: t.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let timeout = policy.and_then(|p| p.timeout.as_deref()).and_then(duration);
    let retry_policy = policy.and_then(|p| p.retries.as_ref()).map(|r| {
        let conditions: BTreeSet<&str> = if r.retry_on.is_empty() {
            ["connect-failure", "refused-stream", "unavailable"].into()
        } else {
            r.retry_on.iter().map(String::as_str).collect()
        };
        envoy_types::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: conditions.into_iter().collect::<Vec<_>>().join(","),
            num_retries: Some(UInt32Value { value: r.attempts }),
            per_try_timeout: r.per_try_timeout.as_deref().and_then(duration),
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 25_000_000,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout,
        // gRPC clients read the deadline from max_stream_duration (gRFC A31).
        max_stream_duration: timeout.map(|t| route_action::MaxStreamDuration {
            max_stream_duration: Some(t),
            ..Default::default()
        }),
        retry_policy,
        request_mirror_policies: mirror
            .into_iter()
            .map(|(cluster, percent)| route_action::RequestMirrorPolicy {
                cluster,
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(percentage(percent)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut routes = catch_all(name, action);
    if let Some(fault) = policy.and_then(|p| p.fault.as_ref()) {
        routes.virtual_hosts[0].routes[0].typed_per_filter_config =
            [(FAULT_FILTER.to_owned(), pack_any(http_fault(fault)))].into();
    }
    routes
}

pub(super) fn http_fault(fault: &Fault) -> HttpFault {
    HttpFault {
        delay: fault.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(percentage(d.percent)),
            fault_delay_secifier: duration(&d.fixed)
                .map(fault_delay::FaultDelaySecifier::FixedDelay),
        }),
        abort: fault.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(percentage(a.percent)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(a.http_status))),
            ..Default::default()
        }),
        ..Default::default()
    }
}
