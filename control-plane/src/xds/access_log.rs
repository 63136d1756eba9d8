//! The access log every sidecar HTTP listener gets when the MeshConfig
//! turns it on: one JSON line per request on the sidecar's stdout, with the
//! fields below (Envoy's command operators, which rampart-proxy reads too;
//! the keys follow Istio's JSON access log where it has one).

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    SubstitutionFormatString, substitution_format_string,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::util::pack_any;

const FIELDS: [(&str, &str); 18] = [
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(:PATH)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("grpc_status", "%GRPC_STATUS(NUMBER)%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_peer", "%UPSTREAM_PEER_URI_SAN%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("downstream_peer", "%DOWNSTREAM_PEER_URI_SAN%"),
];

/// TCP connections also say how many bytes came from the downstream.
const TCP_ONLY: [(&str, &str); 1] = [("bytes_received", "%BYTES_RECEIVED%")];

/// For an HTTP connection manager.
pub fn http() -> AccessLog {
    stdout_json(&FIELDS)
}

/// For a TCP proxy: the same keys (request ones empty) and bytes received.
pub fn tcp() -> AccessLog {
    let fields: Vec<(&str, &str)> = FIELDS.iter().chain(&TCP_ONLY).copied().collect();
    stdout_json(&fields)
}

fn stdout_json(fields: &[(&str, &str)]) -> AccessLog {
    let fields = fields
        .iter()
        .map(|(k, v)| {
            let value = Value {
                kind: Some(value::Kind::StringValue((*v).to_owned())),
            };
            ((*k).to_owned(), value)
        })
        .collect();
    let format = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(Struct {
            fields,
        })),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            StdoutAccessLog {
                access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(format)),
            },
        ))),
        ..Default::default()
    }
}
