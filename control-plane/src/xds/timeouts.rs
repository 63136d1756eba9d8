//! The MeshConfig's connection timeouts as the fields Envoy reads, set on
//! every sidecar listener explicitly (defaults included), so an Envoy
//! sidecar and rampart-proxy close idle connections alike.

use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use rampart_api::duration::parse_timeout;
use rampart_api::mesh::ConnectionSettings;

use super::envoy_blocks::pb_duration;

/// Zero: off (Envoy's reading of a zero timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionTimeouts {
    pub http_idle: PbDuration,
    pub request_headers: PbDuration,
    pub tcp_idle: PbDuration,
}

const HOUR: i64 = 3600;

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        ConnectionTimeouts {
            http_idle: seconds(HOUR),
            request_headers: seconds(30),
            tcp_idle: seconds(HOUR),
        }
    }
}

fn seconds(seconds: i64) -> PbDuration {
    PbDuration { seconds, nanos: 0 }
}

/// `value` (validated when applied) or `default`.
fn field(value: &Option<String>, default: PbDuration) -> PbDuration {
    match value.as_deref().map(parse_timeout) {
        Some(Ok(Some(d))) => pb_duration(d),
        Some(Ok(None)) => PbDuration::default(),
        // Refused by validation before it is stored.
        Some(Err(_)) | None => default,
    }
}

impl ConnectionTimeouts {
    pub fn new(settings: &ConnectionSettings) -> Self {
        let d = ConnectionTimeouts::default();
        ConnectionTimeouts {
            http_idle: field(&settings.http_idle_timeout, d.http_idle),
            request_headers: field(&settings.request_headers_timeout, d.request_headers),
            tcp_idle: field(&settings.tcp_idle_timeout, d.tcp_idle),
        }
    }

    pub fn set_http(&self, manager: &mut HttpConnectionManager) {
        manager.common_http_protocol_options = Some(HttpProtocolOptions {
            idle_timeout: Some(self.http_idle),
            ..Default::default()
        });
        manager.request_headers_timeout = Some(self.request_headers);
    }

    pub fn set_tcp(&self, proxy: &mut TcpProxy) {
        proxy.idle_timeout = Some(self.tcp_idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_envoy_fields_with_defaults_and_zero_as_off() {
        let t = ConnectionTimeouts::new(&ConnectionSettings {
            http_idle_timeout: Some("0s".into()),
            request_headers_timeout: Some("1500ms".into()),
            tcp_idle_timeout: None,
        });
        assert_eq!(t.http_idle, PbDuration::default());
        assert_eq!(
            t.request_headers,
            PbDuration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(t.tcp_idle, seconds(HOUR));
        let mut manager = HttpConnectionManager::default();
        t.set_http(&mut manager);
        assert_eq!(manager.request_headers_timeout, Some(t.request_headers));
        let idle = manager.common_http_protocol_options.unwrap().idle_timeout;
        assert_eq!(idle, Some(PbDuration::default()));
    }
}
