//! The HTTP connection manager: its HTTP filters (RBAC, local rate limit,
//! fault, router), where its routes come from, its timeouts and its access
//! log.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};

use crate::access_log::{self, AccessLogPlan, Of};
use crate::proto::{checked_duration, decode};
use crate::rate_limit::{self, TokenBucket};
use crate::rbac;
use crate::route::{FAULT, Routes, route_table};
use crate::{Refusal, Result};

const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

const LOCAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// How long a downstream HTTP connection may stay open doing nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpTimeouts {
    /// Close (gracefully) after this long with no request in flight
    /// (`common_http_protocol_options.idle_timeout`; Envoy's default 1 h).
    pub idle: Option<Duration>,
    /// An HTTP/1.x request head must be complete this long after its first
    /// byte arrived, or the connection is closed (`request_headers_timeout`;
    /// off unless set, as in Envoy).
    pub request_headers: Option<Duration>,
}

/// Envoy's default for the HTTP connection and TCP proxy idle timeouts.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            request_headers: None,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct HttpPlan {
    /// Checked per request, DENY and ALLOW in order.
    pub rbac: Vec<Rbac>,
    pub routes: Routes,
    /// Tell the app the caller's SPIFFE ID (`x-forwarded-client-cert`).
    pub forward_client_identity: bool,
    pub timeouts: HttpTimeouts,
    /// One JSON line per request on stdout, if configured.
    pub access_log: Option<Arc<AccessLogPlan>>,
    /// A local rate limit, checked after the RBAC filters.
    pub rate_limit: Option<Arc<TokenBucket>>,
}

pub(crate) fn http_plan(manager: &HttpConnectionManager) -> Result<HttpPlan> {
    let mut rbac = Vec::new();
    let mut rate_limit = None;
    for f in &manager.http_filters {
        let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(Refusal::invalid(format!(
                "http filter {:?} has no typed_config",
                f.name
            )));
        };
        match any.type_url.as_str() {
            HTTP_RBAC => {
                let r: HttpRbac = decode(any, HTTP_RBAC)?;
                if let Some(rules) = r.rules {
                    rbac::validate(&rules)?;
                    rbac.push(rules);
                }
            }
            LOCAL_RATE_LIMIT => {
                if rate_limit.is_some() {
                    return Err(Refusal::unsupported(
                        "only one local_ratelimit filter is supported".to_owned(),
                    ));
                }
                let config: LocalRateLimit = decode(any, LOCAL_RATE_LIMIT)?;
                rate_limit = rate_limit::compile(&config)?.map(Arc::new);
            }
            // Faults come per route; the filter itself does nothing.
            FAULT | ROUTER => {}
            other => {
                return Err(Refusal::unsupported(format!(
                    "http filter {other} is not supported"
                )));
            }
        }
    }
    let routes = match &manager.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            Routes::Named(rds.route_config_name.clone())
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(r)) => {
            Routes::Inline(Arc::new(route_table(r)?))
        }
        _ => {
            return Err(Refusal::unsupported(
                "http_connection_manager needs rds or route_config".to_owned(),
            ));
        }
    };
    let timeouts = HttpTimeouts {
        idle: checked_duration(
            "common_http_protocol_options.idle_timeout",
            manager
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref()),
            Some(DEFAULT_IDLE_TIMEOUT),
        )?,
        request_headers: checked_duration(
            "request_headers_timeout",
            manager.request_headers_timeout.as_ref(),
            None,
        )?,
    };
    Ok(HttpPlan {
        rbac,
        routes,
        forward_client_identity: manager.forward_client_cert_details
            != http_connection_manager::ForwardClientCertDetails::Sanitize as i32,
        timeouts,
        access_log: access_log::compile(&manager.access_log, Of::Http)?,
        rate_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_timeouts_read_as_envoy_reads_them() {
        use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
        use envoy_types::pb::google::protobuf::Duration as Pb;
        let secs = |s: i64| {
            Some(Pb {
                seconds: s,
                nanos: 0,
            })
        };
        let http = |manager: HttpConnectionManager| {
            let manager = HttpConnectionManager {
                route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(
                    Default::default(),
                )),
                ..manager
            };
            http_plan(&manager).map(|p| p.timeouts)
        };
        // Unset: Envoy's defaults (1 h idle, no request headers timeout).
        assert_eq!(
            http(HttpConnectionManager::default()),
            Ok(HttpTimeouts::default())
        );
        let set = http(HttpConnectionManager {
            common_http_protocol_options: Some(Common {
                idle_timeout: secs(0),
                ..Default::default()
            }),
            request_headers_timeout: secs(10),
            ..Default::default()
        });
        // Zero turns a timeout off.
        assert_eq!(
            set,
            Ok(HttpTimeouts {
                idle: None,
                request_headers: Some(Duration::from_secs(10)),
            })
        );
        let negative = http(HttpConnectionManager {
            request_headers_timeout: secs(-1),
            ..Default::default()
        });
        let error = negative.expect_err("a negative timeout is refused");
        assert!(matches!(error, crate::Refusal::Invalid(_)), "{error:?}");
        let error = error.to_string();
        assert!(
            error.starts_with("request_headers_timeout: -1s 0ns is not a valid duration"),
            "{error}"
        );
    }
}
