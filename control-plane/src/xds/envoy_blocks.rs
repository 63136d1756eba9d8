//! Small Envoy building blocks shared by the mesh-wide translation and
//! the per-sidecar views: config sources, durations, addresses, TLS
//! sockets, protocol options, the router filter and RDS managers.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, SocketAddress, TransportSocket, address,
    config_source, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Struct, Value, value};
use envoy_types::util::pack_any;
use rampart_api::mesh::Protocol;

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub(super) fn duration(text: &str) -> Option<PbDuration> {
    rampart_api::duration::parse(text).ok().map(pb_duration)
}

pub(super) fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The endpoint metadata that selects the mTLS transport socket.
pub(super) const TLS_MATCH: (&str, &str) = ("tls", "mtls");

pub(super) fn string_value(s: &str) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s.to_owned())),
    }
}

pub(super) fn tls_match() -> Struct {
    one_string(TLS_MATCH.0, TLS_MATCH.1)
}

/// `{key: "value"}`.
pub(super) fn one_string(key: &str, value: &str) -> Struct {
    Struct {
        fields: [(key.to_owned(), string_value(value))].into(),
    }
}

/// A TLS transport socket.
pub(super) fn tls_socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

/// HTTP/2 to the endpoints of HTTP/2 and gRPC ports, HTTP/1.1 (the
/// default) to HTTP ports. (Envoy refuses ALPN-chosen protocols on a
/// cluster that may also connect in plaintext, as auto-mTLS clusters do.)
pub(super) fn http_options(protocol: Protocol) -> Option<HttpProtocolOptions> {
    use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
    use http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config,
    };
    let options = match protocol {
        Protocol::Tcp | Protocol::Http | Protocol::Auto => return None,
        Protocol::Http2 | Protocol::Grpc => {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            })
        }
    };
    Some(HttpProtocolOptions {
        upstream_protocol_options: Some(options),
        ..Default::default()
    })
}

/// The cluster's `typed_extension_protocol_options` for `protocol`.
pub(super) fn protocol_options(
    protocol: Protocol,
) -> std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any> {
    http_options(protocol)
        .map(|o| {
            (
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                pack_any(o),
            )
        })
        .into_iter()
        .collect()
}

pub(super) fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The router, last of every HTTP filter chain.
pub(super) fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    }
}

/// An HTTP connection manager taking its routes `route` over ADS.
pub(super) fn rds_manager(stat_prefix: &str, route: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.to_owned(),
        })),
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    HttpFault::default(),
                ))),
                ..Default::default()
            },
            router(),
        ],
        ..Default::default()
    }
}

/// A route configuration sending every request of any host to `action`.
pub(super) fn catch_all(name: &str, action: RouteAction) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(action)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn percentage(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent,
        denominator: fractional_percent::DenominatorType::Hundred as i32,
    }
}

/// The HTTP fault filter's name; every HTTP connection manager carries it
/// (doing nothing), so a route can turn faults on without a listener change.
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
