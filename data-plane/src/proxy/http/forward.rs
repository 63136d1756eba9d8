//! Forward a routed request: faults, mirrors and the route timeout around
//! the tries, hop-by-hop headers dropped both ways, and the response counted
//! as the caller sees it.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rampart_plan::route::Route;
use rand::Rng;

use crate::metrics::traffic::RequestLabels;
use crate::proxy::Proxy;
use crate::proxy::access_log::UpstreamInfo;
use crate::proxy::body::Body;
use crate::proxy::downstream::Downstream;
use crate::proxy::error::Error;
use crate::proxy::grpc_status::GRPC_STATUS;
use crate::proxy::local_reply::{DelayInjected, for_grpc, reply, response_flags};
use crate::proxy::outgoing::Outgoing;
use crate::proxy::upstream::ClusterState;

use super::observe::Observed;
use super::retry::{Upstream, attempt, attempts};
use super::{cluster_for, set_client_identity};

/// Headers that belong to one hop (RFC 9110 §7.6.1); `te: trailers` stays,
/// gRPC needs it.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, no lookups.
    if !headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || *k == header::TE)
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

pub(super) const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How a request is forwarded, besides where.
#[derive(Clone, Copy)]
pub(super) struct How {
    /// Tell the app the caller's SPIFFE ID.
    pub(super) forward_identity: bool,
    /// The caller speaks gRPC: the proxy's own answers are put as gRPC.
    pub(super) grpc: bool,
    /// The request is access-logged: say where it went.
    pub(super) logged: bool,
}

pub(super) async fn forward(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    route: &Route,
    req: Request<Incoming>,
    authority: &Authority,
    how: How,
) -> Response<Body> {
    let started = Instant::now();
    // Every answer is counted, the proxy's own (a fault, no cluster) too.
    let (cluster_name, (response, upstream)) = match cluster_for(proxy, route) {
        Err(error) => (Arc::from(""), (reply(error), Upstream::default())),
        Ok((name, cluster)) => {
            let sent = send(
                proxy,
                down,
                route,
                req,
                &cluster,
                authority,
                how.forward_identity,
            )
            .await;
            (name, sent)
        }
    };
    // Converted here already so the metrics count what the caller sees.
    let response = if how.grpc {
        for_grpc(response)
    } else {
        response
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if how.logged {
        parts.extensions.insert(UpstreamInfo {
            cluster: cluster_name.clone(),
            host: upstream.host,
            peer: upstream.peer.clone(),
        });
    }
    let destination = upstream.peer;
    let (source, destination) = if down.inbound {
        (
            down.peer.clone().unwrap_or_else(|| Arc::from("")),
            proxy.tls.own_id(),
        )
    } else {
        (
            proxy.tls.own_id(),
            destination.unwrap_or_else(|| Arc::from("")),
        )
    };
    let grpc_status = parts
        .headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let labels = RequestLabels {
        direction: if down.inbound { "inbound" } else { "outbound" },
        source_identity: source,
        destination_identity: destination,
        destination_service: cluster_name,
        response_code: parts.status.as_u16(),
        grpc_status: grpc_status.unwrap_or_default(),
        response_flags: response_flags(&parts.extensions),
    };
    // The response body keeps the connection busy until it ends.
    down.activity.begin();
    let observed = Observed {
        inner: body,
        proxy: proxy.clone(),
        down: down.clone(),
        labels: Some(labels),
        started,
    };
    Response::from_parts(parts, observed.boxed())
}

/// The request to `cluster` as the route says (faults, mirrors, retries,
/// timeout); the response and who gave it.
pub(super) async fn send(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    route: &Route,
    req: Request<Incoming>,
    cluster: &Arc<ClusterState>,
    authority: &Authority,
    forward_identity: bool,
) -> (Response<Body>, Upstream) {
    let mut delayed = false;
    if let Some(f) = &route.fault {
        let roll = |percent: f64| rand::rng().random_range(0.0..100.0) < percent;
        if let Some((delay, p)) = f.delay
            && roll(p)
        {
            tokio::time::sleep(delay).await;
            delayed = true;
        }
        if let Some((code, p)) = f.abort
            && roll(p)
        {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let abort = Error::FaultAbort { status };
            return (reply(abort), Upstream::default());
        }
    }
    let mut out = match Outgoing::new(req, route.retry.is_some() || !route.mirrors.is_empty()).await
    {
        Ok(o) => o,
        Err(error) => return (reply(error), Upstream::default()),
    };
    strip_hop_by_hop(&mut out.parts.headers);
    set_client_identity(proxy, down, forward_identity, &mut out.parts.headers);
    for (mirror, percent) in &route.mirrors {
        // As Envoy does, the copy's authority says it is one.
        if rand::rng().random_range(0.0..100.0) < *percent
            && let (Some(c), Some(copy)) = (proxy.upstreams.get(mirror), out.copy())
            && let Ok(shadow) = Authority::try_from(shadow_host(authority.as_str()))
        {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                if let Some(mut copy) = copy.await
                    && let Some(endpoint) = c.pick(None, &[])
                {
                    if let Ok(v) = HeaderValue::from_str(shadow.as_str()) {
                        copy.parts.headers.insert(header::HOST, v);
                    }
                    let _ = attempt(&proxy, &c, &endpoint, &mut copy, &shadow, None).await;
                }
            });
        }
    }
    let work = attempts(proxy, cluster, route, &mut out, authority);
    let (mut response, upstream) = match route.timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => {
                let timeout = Error::RouteTimeout(limit.as_millis());
                (reply(timeout), Upstream::default())
            }
        },
    };
    if delayed {
        response.extensions_mut().insert(DelayInjected);
    }
    (response, upstream)
}

/// A mirrored request's authority: `-shadow` after the host, before any
/// port (`shop:8080` -> `shop-shadow:8080`), as Envoy's mirror policy does.
pub(super) fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::{shadow_host, strip_hop_by_hop};

    #[test]
    fn hop_by_hop_headers_stop_at_the_proxy() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-end-to-end", "2"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-end-to-end"]);

        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-end-to-end"]
        );
    }

    #[test]
    fn a_mirrored_authority_says_shadow_before_the_port() {
        assert_eq!(shadow_host("shop"), "shop-shadow");
        assert_eq!(shadow_host("shop.default:8080"), "shop.default-shadow:8080");
        assert_eq!(shadow_host("10.0.0.1:80"), "10.0.0.1-shadow:80");
    }
}
