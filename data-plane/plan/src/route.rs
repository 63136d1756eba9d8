//! Route tables: virtual hosts by domain, routes by path, and what a
//! route does (weighted clusters, timeout, retries, mirrors, faults).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;

use crate::proto::{decode, duration, percent};
use crate::{Refusal, Result};

pub(crate) const FAULT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

const FAULT_FILTER: &str = "envoy.filters.http.fault";

#[derive(Debug, PartialEq)]
pub enum Routes {
    Named(String),
    Inline(Arc<RouteTable>),
}

#[derive(Debug, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub hosts: Vec<VirtualHost>,
}

#[derive(Debug, PartialEq)]
pub struct VirtualHost {
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, PartialEq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, PartialEq)]
pub struct Route {
    pub path: PathMatch,
    /// (cluster, weight); one entry for a plain cluster.
    pub clusters: Vec<(String, u32)>,
    /// Whole-request deadline (headers), `None` for none.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPlan>,
    /// (cluster, percent of requests copied there).
    pub mirrors: Vec<(String, f64)>,
    pub fault: Option<FaultPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPlan {
    pub attempts: u32,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_refused_stream: bool,
    /// gRPC statuses (by number) that are retried.
    pub grpc_statuses: Vec<u32>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// (delay, percent).
    pub delay: Option<(Duration, f64)>,
    /// (HTTP status, percent).
    pub abort: Option<(u16, f64)>,
}

pub(crate) fn route_table(config: &RouteConfiguration) -> Result<RouteTable> {
    let mut hosts = Vec::new();
    for (h, host) in config.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::new();
        for (r, route) in host.routes.iter().enumerate() {
            let at = |e: Refusal| e.at(format!("virtual_hosts[{h}].routes[{r}]"));
            routes.push(route_plan(route).map_err(at)?);
        }
        hosts.push(VirtualHost {
            domains: host
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            routes,
        });
    }
    Ok(RouteTable {
        name: config.name.clone(),
        hosts,
    })
}

fn route_plan(route: &envoy_types::pb::envoy::config::route::v3::Route) -> Result<Route> {
    let m = route.r#match.as_ref().ok_or(Refusal::invalid("no match"))?;
    if !m.headers.is_empty() || !m.query_parameters.is_empty() {
        return Err(Refusal::unsupported(
            "header and query matches are not supported".to_owned(),
        ));
    }
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        _ => {
            return Err(Refusal::unsupported(
                "only prefix and path matches are supported".to_owned(),
            ));
        }
    };
    let Some(route::Action::Route(action)) = &route.action else {
        return Err(Refusal::unsupported(
            "only route actions are supported".to_owned(),
        ));
    };
    let clusters = match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
            .collect(),
        _ => {
            return Err(Refusal::unsupported(
                "needs a cluster or weighted clusters".to_owned(),
            ));
        }
    };
    if clusters.iter().all(|(_, w)| *w == 0) {
        return Err(Refusal::invalid(
            "weighted clusters all have weight 0".to_owned(),
        ));
    }
    let retry = action.retry_policy.as_ref().map(|r| {
        let on: Vec<&str> = r.retry_on.split(',').map(str::trim).collect();
        let has = |c: &str| on.contains(&c);
        let grpc = [
            ("cancelled", 1),
            ("deadline-exceeded", 4),
            ("resource-exhausted", 8),
            ("internal", 13),
            ("unavailable", 14),
        ];
        RetryPlan {
            attempts: r.num_retries.map_or(1, |n| n.value),
            on_5xx: has("5xx"),
            on_gateway_error: has("gateway-error"),
            on_connect_failure: has("connect-failure") || has("5xx") || has("gateway-error"),
            on_reset: has("reset") || has("5xx") || has("gateway-error"),
            on_refused_stream: has("refused-stream") || has("5xx"),
            grpc_statuses: grpc
                .iter()
                .filter(|(name, _)| has(name))
                .map(|(_, code)| *code)
                .collect(),
            per_try_timeout: duration(r.per_try_timeout.as_ref()),
            backoff: r
                .retry_back_off
                .as_ref()
                .and_then(|b| duration(b.base_interval.as_ref()))
                .unwrap_or(Duration::from_millis(25)),
        }
    });
    let mirrors = action
        .request_mirror_policies
        .iter()
        .map(|m| {
            (
                m.cluster.clone(),
                percent(
                    m.runtime_fraction
                        .as_ref()
                        .and_then(|f| f.default_value.as_ref()),
                ),
            )
        })
        .collect();
    let fault = match route.typed_per_filter_config.get(FAULT_FILTER) {
        None => None,
        Some(any) => {
            use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
            use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort;
            let f: HttpFault = decode(any, FAULT)?;
            let delay = match f.delay {
                None => None,
                Some(d) => match d.fault_delay_secifier {
                    Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)) => Some((
                        duration(Some(&fixed)).unwrap_or_default(),
                        percent(d.percentage.as_ref()),
                    )),
                    _ => {
                        return Err(Refusal::unsupported(
                            "fault delay: only fixed delays are supported".to_owned(),
                        ));
                    }
                },
            };
            let abort = match f.abort {
                None => None,
                Some(a) => match a.error_type {
                    Some(fault_abort::ErrorType::HttpStatus(code)) => {
                        let code = u16::try_from(code)
                            .ok()
                            .filter(|c| (200..600).contains(c))
                            .ok_or(Refusal::invalid(format!(
                                "fault abort: {code} is not an HTTP status"
                            )))?;
                        Some((code, percent(a.percentage.as_ref())))
                    }
                    _ => {
                        return Err(Refusal::unsupported(
                            "fault abort: only HTTP statuses are supported".to_owned(),
                        ));
                    }
                },
            };
            Some(FaultPlan { delay, abort })
        }
    };
    Ok(Route {
        path,
        clusters,
        timeout: duration(action.timeout.as_ref()),
        retry,
        mirrors,
        fault,
    })
}

impl RouteTable {
    /// Every cluster its routes send requests to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .flat_map(|h| &h.routes)
            .flat_map(|r| &r.clusters)
            .map(|(c, _)| c.as_str())
    }

    /// The route for `host` (port stripped, lower-case) and `path`:
    /// exact domain, then `*.suffix`/`prefix*` wildcards, then `*`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        let host = host.as_ref();
        let bare = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let matches = |d: &str| {
            d == host
                || d == bare
                || d.strip_prefix('*')
                    .is_some_and(|s| !s.is_empty() && bare.ends_with(s))
                || d.strip_suffix('*')
                    .is_some_and(|p| !p.is_empty() && bare.starts_with(p))
        };
        let vhost = self
            .hosts
            .iter()
            .find(|v| v.domains.iter().any(|d| d != "*" && matches(d)))
            .or_else(|| {
                self.hosts
                    .iter()
                    .find(|v| v.domains.iter().any(|d| d == "*"))
            })?;
        let path_only = path.split(['?', '#']).next().unwrap_or(path);
        vhost.routes.iter().find(|r| match &r.path {
            PathMatch::Prefix(p) => path_only.starts_with(p.as_str()),
            PathMatch::Exact(p) => path_only == p,
        })
    }
}
