//! Access log formats: the keys of a JSON line and the Envoy command
//! operator each holds. The subset below is understood and anything else is
//! refused (NACK) by name, so a line never silently lacks what the control
//! plane asked for. The proxy writes the lines (its `access_log`).

use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use http::header::HeaderName;
use prost::Message;

use crate::Refusal;

const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// What one key of a line holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    StartTime,
    Method,
    Path,
    Authority,
    Protocol,
    RequestHeader(HeaderName),
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    GrpcStatus,
    BytesSent,
    /// TCP only: bytes read from the downstream.
    BytesReceived,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamPeer,
    DownstreamRemote,
    DownstreamLocal,
    DownstreamPeer,
}

/// The keys of a line and what each holds, sorted by key.
#[derive(Debug, PartialEq)]
pub struct AccessLogPlan {
    pub fields: Vec<(String, Field)>,
}

/// What a log is of: HTTP requests or TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    Http,
    Tcp,
}

/// The access log of an HTTP connection manager or a TCP proxy, if it has one.
pub fn compile(logs: &[AccessLog], of: Of) -> Result<Option<Arc<AccessLogPlan>>, Refusal> {
    match logs {
        [] => Ok(None),
        [log] => compile_one(log, of).map(|p| Some(Arc::new(p))),
        _ => Err(Refusal::unsupported(
            "access_log: only one access log per connection manager is supported",
        )),
    }
}

fn compile_one(log: &AccessLog, of: Of) -> Result<AccessLogPlan, Refusal> {
    if log.filter.is_some() {
        return Err(Refusal::unsupported(
            "access_log.filter is not supported (every request is logged)",
        ));
    }
    let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err(Refusal::invalid("access_log has no typed_config"));
    };
    if any.type_url != STDOUT {
        return Err(Refusal::unsupported(format!(
            "access_log: {} is not supported (only StdoutAccessLog)",
            any.type_url
        )));
    }
    let stdout = StdoutAccessLog::decode(any.value.as_slice())
        .map_err(|e| Refusal::invalid(format!("access_log: does not decode: {e}")))?;
    let format = match stdout.access_log_format {
        Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => f.format,
        _ => None,
    };
    let Some(Format::JsonFormat(json)) = format else {
        return Err(Refusal::unsupported(
            "access_log: only a log_format with json_format is supported",
        ));
    };
    json_fields(&json, of).map(|fields| AccessLogPlan { fields })
}

fn json_fields(json: &Struct, of: Of) -> Result<Vec<(String, Field)>, Refusal> {
    let mut fields = Vec::new();
    for (key, value) in &json.fields {
        let Some(Kind::StringValue(text)) = &value.kind else {
            return Err(Refusal::unsupported(format!(
                "access_log json_format.{key}: only string values are supported"
            )));
        };
        let field = operator(text)
            .and_then(|f| match (f, of) {
                (Field::BytesReceived, Of::Http) => Err(Refusal::unsupported(
                    "%BYTES_RECEIVED% is not supported on HTTP listeners",
                )),
                (f, _) => Ok(f),
            })
            .map_err(|e| e.at(format!("access_log json_format.{key}: {text:?}")))?;
        fields.push((key.clone(), field));
    }
    // The format is a map: keys in order, so lines read the same each time.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(fields)
}

/// One operator (`%NAME%`, `%REQ(HEADER)%`) or text without any.
fn operator(text: &str) -> Result<Field, Refusal> {
    let Some(inner) = text.strip_prefix('%').and_then(|t| t.strip_suffix('%')) else {
        if text.contains('%') {
            return Err(Refusal::invalid(
                "a value is one operator or plain text, not a mix",
            ));
        }
        return Ok(Field::Text(text.to_owned()));
    };
    if inner.contains('%') {
        return Err(Refusal::invalid(
            "a value is one operator or plain text, not a mix",
        ));
    }
    if let Some(header) = inner.strip_prefix("REQ(").and_then(|h| h.strip_suffix(')')) {
        return match header.to_ascii_lowercase().as_str() {
            ":method" => Ok(Field::Method),
            ":path" => Ok(Field::Path),
            ":authority" => Ok(Field::Authority),
            h if h.contains(['?', ':']) => Err(Refusal::unsupported(
                "alternative headers and length limits are not supported",
            )),
            h => HeaderName::from_bytes(h.as_bytes())
                .map(Field::RequestHeader)
                .map_err(|_| Refusal::invalid(format!("{header:?} is not a header name"))),
        };
    }
    Ok(match inner {
        "START_TIME" => Field::StartTime,
        "PROTOCOL" => Field::Protocol,
        "RESPONSE_CODE" => Field::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Field::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Field::ResponseFlags,
        "GRPC_STATUS(NUMBER)" => Field::GrpcStatus,
        "BYTES_SENT" => Field::BytesSent,
        "BYTES_RECEIVED" => Field::BytesReceived,
        "DURATION" => Field::Duration,
        "UPSTREAM_HOST" => Field::UpstreamHost,
        "UPSTREAM_CLUSTER" => Field::UpstreamCluster,
        "UPSTREAM_PEER_URI_SAN" => Field::UpstreamPeer,
        "DOWNSTREAM_REMOTE_ADDRESS" => Field::DownstreamRemote,
        "DOWNSTREAM_LOCAL_ADDRESS" => Field::DownstreamLocal,
        "DOWNSTREAM_PEER_URI_SAN" => Field::DownstreamPeer,
        _ => {
            return Err(Refusal::unsupported(format!(
                "the operator %{inner}% is not supported"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    fn format(pairs: &[(&str, &str)]) -> Struct {
        Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(Kind::StringValue((*v).to_owned())),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn operators_are_understood_or_refused_by_name() {
        let fields = json_fields(
            &format(&[
                ("code", "%RESPONSE_CODE%"),
                ("method", "%REQ(:METHOD)%"),
                ("id", "%REQ(X-REQUEST-ID)%"),
                ("mesh", "rampart"),
                ("flags", "%RESPONSE_FLAGS%"),
            ]),
            Of::Http,
        )
        .unwrap();
        assert_eq!(
            fields,
            [
                ("code".to_owned(), Field::ResponseCode),
                ("flags".to_owned(), Field::ResponseFlags),
                (
                    "id".to_owned(),
                    Field::RequestHeader(HeaderName::from_static("x-request-id"))
                ),
                ("mesh".to_owned(), Field::Text("rampart".into())),
                ("method".to_owned(), Field::Method),
            ]
        );
        for (value, error) in [
            ("%BYTES_RECEIVED%", "not supported on HTTP listeners"),
            (
                "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                "the operator %UPSTREAM_TRANSPORT_FAILURE_REASON% is not supported",
            ),
            ("%REQ(X?Y)%", "alternative headers"),
            ("took %DURATION% ms", "not a mix"),
        ] {
            let refused = json_fields(&format(&[("k", value)]), Of::Http).unwrap_err();
            // What Rampart lacks, not what is wrong, except a mixed value.
            let unsupported = !error.contains("mix");
            assert_eq!(
                matches!(refused, Refusal::Unsupported(_)),
                unsupported,
                "{refused:?}"
            );
            let e = refused.to_string();
            assert!(e.starts_with("access_log json_format.k: "), "{e}");
            assert!(e.contains(error), "{e}");
        }
    }
}
