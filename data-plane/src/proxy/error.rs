//! Why the proxy answered a request (or closed a connection) itself: one
//! type for every such case on the traffic path, and the one place that
//! says what each means to the caller (the HTTP status), to an operator
//! reading logs (Envoy's `%RESPONSE_FLAGS%` and `%RESPONSE_CODE_DETAILS%`,
//! so tooling written for Envoy or Istio reads Rampart's lines alike) and
//! to metrics (the `response_flags` label). The message, in words, is the
//! local reply's body.

use http::StatusCode;

/// Why the proxy answered itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The listener (or its HTTP connection manager) the connection came in
    /// on was removed or changed under it.
    #[error("{0}")]
    ListenerGone(String),
    /// The listener's route table has not arrived.
    #[error("route configuration {0} not received from the control plane yet")]
    RoutesMissing(String),
    #[error("no route for {host}{path} in {table}")]
    NoRoute {
        host: String,
        path: String,
        table: String,
    },
    /// The request names no valid authority.
    #[error("{0}")]
    BadAuthority(String),
    /// The request body could not be read from the caller.
    #[error("reading the request body: {0}")]
    BodyUnreadable(String),
    /// Inbound RBAC refused the caller; the DENY policy that matched, if
    /// one did (else no ALLOW policy did).
    #[error("RBAC: access denied")]
    Denied { policy: Option<String> },
    /// The listener's local rate limit is spent; answered with `status`.
    #[error("local_rate_limited")]
    RateLimited { status: StatusCode },
    /// The route's fault filter aborted the request with `status`.
    #[error("fault filter abort")]
    FaultAbort { status: StatusCode },
    /// The route's cluster has not arrived.
    #[error("cluster {0} not received from the control plane yet")]
    NoCluster(String),
    #[error("no healthy upstream in cluster {0}")]
    NoHealthyUpstream(String),
    /// A circuit breaker of the cluster is open (`limit` names it).
    #[error("circuit breaker open: {why}")]
    Overflow { limit: &'static str, why: String },
    #[error("upstream connect error: {0}")]
    ConnectFailure(String),
    /// The upstream reset the stream or closed the connection before a
    /// response.
    #[error("upstream reset: {0}")]
    Reset(String),
    #[error("upstream per-try timeout")]
    PerTryTimeout,
    /// The route's whole-request timeout, in milliseconds.
    #[error("upstream request timeout ({0} ms)")]
    RouteTimeout(u128),
    /// A try failed after streaming a body too long to keep for another.
    #[error("upstream failed after a request body too long to keep was sent")]
    BodySpent,
}

/// `%RESPONSE_FLAGS%` of a response the upstream gave.
pub const NO_FLAGS: &str = "-";
/// `%RESPONSE_CODE_DETAILS%` of a response the upstream gave.
pub const VIA_UPSTREAM: &str = "via_upstream";
/// The caller went away before the response: Envoy's flag and details.
pub const DOWNSTREAM_GONE: (&str, &str) = ("DC", "downstream_remote_disconnect");

impl Error {
    /// The HTTP status of the local reply.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            Error::BadAuthority(_) | Error::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Error::Denied { .. } => StatusCode::FORBIDDEN,
            Error::RateLimited { status } | Error::FaultAbort { status } => *status,
            Error::Reset(_) => StatusCode::BAD_GATEWAY,
            Error::PerTryTimeout | Error::RouteTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::ListenerGone(_)
            | Error::RoutesMissing(_)
            | Error::NoCluster(_)
            | Error::NoHealthyUpstream(_)
            | Error::Overflow { .. }
            | Error::ConnectFailure(_)
            | Error::BodySpent => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy's `%RESPONSE_FLAGS%`: `NR` no route, `NC` no cluster, `UH` no
    /// healthy upstream, `UO` overflow, `UF` connect failure, `UR` upstream
    /// reset, `UT` timeout, `RL` rate limited, `FI` fault abort, `DPE`
    /// downstream protocol error; `-` for an RBAC denial, as in Envoy.
    pub fn response_flags(&self) -> &'static str {
        match self {
            Error::ListenerGone(_) | Error::RoutesMissing(_) | Error::NoRoute { .. } => "NR",
            Error::BadAuthority(_) | Error::BodyUnreadable(_) => "DPE",
            Error::Denied { .. } => NO_FLAGS,
            Error::RateLimited { .. } => "RL",
            Error::FaultAbort { .. } => "FI",
            Error::NoCluster(_) => "NC",
            Error::NoHealthyUpstream(_) => "UH",
            Error::Overflow { .. } => "UO",
            Error::ConnectFailure(_) => "UF",
            Error::Reset(_) | Error::BodySpent => "UR",
            Error::PerTryTimeout | Error::RouteTimeout(_) => "UT",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this reply.
    pub fn details(&self) -> String {
        let fixed = match self {
            Error::Denied { policy } => {
                let policy = policy.as_deref().unwrap_or("none");
                return format!("rbac_access_denied_matched_policy[{policy}]");
            }
            Error::ListenerGone(_) => "listener_removed",
            Error::RoutesMissing(_) => "route_configuration_not_found",
            Error::NoRoute { .. } => "route_not_found",
            Error::BadAuthority(_) => "missing_host_header",
            Error::BodyUnreadable(_) => "downstream_remote_reset",
            Error::RateLimited { .. } => "local_rate_limited",
            Error::FaultAbort { .. } => "fault_filter_abort",
            Error::NoCluster(_) => "cluster_not_found",
            Error::NoHealthyUpstream(_) => "no_healthy_upstream",
            Error::Overflow { .. } => "upstream_reset_before_response_started{overflow}",
            Error::ConnectFailure(_) => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            Error::Reset(_) => "upstream_reset_before_response_started{remote_reset}",
            Error::BodySpent => "upstream_reset_after_body_sent",
            Error::PerTryTimeout => "upstream_per_try_timeout",
            Error::RouteTimeout(_) => "response_timeout",
        };
        fixed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reply_has_a_status_envoy_s_flags_and_details() {
        let cases = [
            (Error::NoCluster("c".into()), 503, "NC", "cluster_not_found"),
            (
                Error::NoHealthyUpstream("c".into()),
                503,
                "UH",
                "no_healthy_upstream",
            ),
            (
                Error::ConnectFailure("refused".into()),
                503,
                "UF",
                "upstream_reset_before_response_started{connection_failure}",
            ),
            (Error::RouteTimeout(100), 504, "UT", "response_timeout"),
            (
                Error::RateLimited {
                    status: StatusCode::TOO_MANY_REQUESTS,
                },
                429,
                "RL",
                "local_rate_limited",
            ),
            (
                Error::Denied { policy: None },
                403,
                "-",
                "rbac_access_denied_matched_policy[none]",
            ),
            (
                Error::Denied {
                    policy: Some("ns[shop]-policy[deny-all]".into()),
                },
                403,
                "-",
                "rbac_access_denied_matched_policy[ns[shop]-policy[deny-all]]",
            ),
        ];
        for (error, status, flags, details) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.response_flags(), flags, "{error:?}");
            assert_eq!(error.details(), details, "{error:?}");
        }
        // The body says it in words.
        let no_route = Error::NoRoute {
            host: "web".into(),
            path: "/x".into(),
            table: "web:80".into(),
        };
        assert_eq!(no_route.to_string(), "no route for web/x in web:80");
    }
}
