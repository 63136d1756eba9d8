//! One HTTP request through the proxy: policy (inbound RBAC), route (by
//! authority and path, weighted clusters, faults, mirrors), balance (pick
//! an endpoint, honour circuit breakers) and connect (pooled, mTLS to
//! sidecars), with retries, timeouts and outlier detection around it.
//! Every reply the proxy makes itself says why in its body.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rampart_plan::Plan;
use rampart_plan::cluster::Balance;
use rampart_plan::connection_manager::HttpPlan;
use rampart_plan::listener::App;
use rampart_plan::rbac::{self, Decision, Subject};
use rampart_plan::route::{Route, Routes};
use rand::Rng;

use super::Proxy;
use super::access_log::{Entry, UpstreamInfo};
use super::body::{Body, BoxError, full};
use super::downstream::Downstream;
use super::grpc_status::{GRPC_STATUS, grpc_status_in_headers, is_grpc_server_error};
use super::local_reply::{for_grpc, is_grpc, reply};
use super::metrics::{ClusterLabels, DurationLabels, ListenerLabels, RequestLabels};
use super::outgoing::Outgoing;
use super::pool::Sender;
use super::timeouts::Busy;
use super::upstream::{ClusterState, Endpoint, InFlight, Limit, Outcome, Slot, backoff};

/// 503 from a circuit breaker, counted: Envoy's `x-envoy-overloaded` and the reason.
fn overflow(proxy: &Proxy, cluster: &str, limit: &'static str, why: String) -> Response<Body> {
    proxy.record_overflow(cluster, limit);
    let mut r = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("circuit breaker open: {why}"),
    );
    r.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    r
}

/// The route's cluster for this request (weighted pick), or why there is
/// none yet (for a 503).
fn cluster_for(proxy: &Proxy, route: &Route) -> Result<(Arc<str>, Arc<ClusterState>), String> {
    let name = pick_weighted(&route.clusters);
    match proxy.upstreams.get(name) {
        Some(c) => Ok((c.name.clone(), c)),
        None => Err(format!(
            "cluster {name} not received from the control plane yet"
        )),
    }
}

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The caller's identity is the proxy's to state, never the app's: drop
/// any `x-forwarded-client-cert` and, inbound over mTLS, set the verified one.
fn set_client_identity(
    proxy: &Proxy,
    down: &Downstream,
    forward_identity: bool,
    headers: &mut HeaderMap,
) {
    headers.remove(XFCC);
    if down.inbound
        && forward_identity
        && let Some(peer) = &down.peer
        && let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(format!(
            "By={};URI={peer}",
            proxy.tls.own_id()
        )))
    {
        headers.insert(XFCC, v);
    }
}

/// Handles one request from `down`.
pub async fn handle(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let grpc = is_grpc(req.headers());
    // Looked up per request: a configuration change (the access log turned
    // on) reaches long-lived connections too.
    let plan = proxy.plan();
    let http = match http_plan(&plan, down) {
        Ok(http) => http,
        Err(why) => {
            let r = reply(StatusCode::SERVICE_UNAVAILABLE, why);
            return if grpc { for_grpc(r) } else { r };
        }
    };
    let Some(log) = &http.access_log else {
        let response = route_request(proxy, down, &plan, http, req, grpc, false).await;
        return if grpc { for_grpc(response) } else { response };
    };
    // As Envoy does: a request leaving without an id gets one, so the
    // caller's and the callee's lines can be matched.
    if !down.inbound && !req.headers().contains_key(X_REQUEST_ID) {
        req.headers_mut().insert(X_REQUEST_ID, request_id());
    }
    let entry = Entry::start(log, down, &req, proxy.access_log.clone());
    let response = route_request(proxy, down, &plan, http, req, grpc, true).await;
    let response = if grpc { for_grpc(response) } else { response };
    entry.finish(response)
}

/// The HTTP connection manager of the chain `down` came in on, or why
/// there is none (the listener changed under the connection: a 503).
fn http_plan<'a>(plan: &'a Plan, down: &Downstream) -> Result<&'a HttpPlan, String> {
    let Some(listener) = plan.listeners.get(&down.listener) else {
        return Err(format!("listener {} was removed", down.listener));
    };
    match listener.chains.get(down.chain).map(|c| &c.app) {
        Some(App::Http(http)) => Ok(http),
        _ => Err(format!(
            "listener {} no longer serves HTTP here",
            down.listener
        )),
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random UUID (version 4).
fn request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    HeaderValue::from_str(&id).expect("hex and dashes")
}

async fn route_request(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    plan: &Plan,
    http: &HttpPlan,
    req: Request<Incoming>,
    grpc: bool,
    logged: bool,
) -> Response<Body> {
    if let Some(denied) = authorize(proxy, down, http, &req) {
        return denied;
    }
    if let Some(bucket) = &http.rate_limit
        && !bucket.take()
    {
        proxy
            .metrics()
            .rate_limited
            .get_or_create(&ListenerLabels {
                listener: down.listener.clone(),
            })
            .inc();
        let mut r = reply(bucket.status, "local_rate_limited");
        r.headers_mut()
            .insert("x-ratelimit-limited", HeaderValue::from_static("true"));
        return r;
    }
    let table = match &http.routes {
        Routes::Inline(t) => t.clone(),
        Routes::Named(name) => match plan.routes.get(name) {
            Some(t) => t.clone(),
            None => {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("route configuration {name} not received from the control plane yet"),
                );
            }
        },
    };
    let authority = match request_authority(&req) {
        Ok(a) => a,
        Err(why) => return reply(StatusCode::BAD_REQUEST, why),
    };
    let host = authority.as_str();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Some(route) = table.find(host, path) else {
        return reply(
            StatusCode::NOT_FOUND,
            format!("no route for {host}{path} in {}", table.name),
        );
    };
    let forward_identity = http.forward_client_identity;
    if is_upgrade(&req) {
        return upgrade(proxy, down, route, req, host, forward_identity).await;
    }
    let how = How {
        forward_identity,
        grpc,
        logged,
    };
    forward(proxy, down, route, req, &authority, how).await
}

/// Whom the request is for: its `:authority` (HTTP/2, absolute URIs) or
/// its `Host` header, as a valid `host[:port]`, which the upstream request
/// needs. A request without one is the caller's error (400), never counted
/// against an upstream.
fn request_authority(req: &Request<Incoming>) -> Result<Authority, String> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let Some(host) = req.headers().get(header::HOST) else {
        return Err("the request names no host: send a Host header".into());
    };
    Authority::try_from(host.as_bytes())
        .map_err(|e| format!("the Host header {host:?} is not a valid host[:port]: {e}"))
}

/// An HTTP/1.1 request to switch protocols (WebSocket and the like).
fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Carries an upgrade on a connection of its own (HTTP/1.1 on every hop,
/// mTLS between sidecars); after `101 Switching Protocols` both sides are
/// spliced byte for byte until either closes.
async fn upgrade(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    route: &Route,
    mut req: Request<Incoming>,
    host: &str,
    forward_identity: bool,
) -> Response<Body> {
    let (cluster_name, cluster) = match cluster_for(proxy, route) {
        Ok(c) => c,
        Err(why) => return reply(StatusCode::SERVICE_UNAVAILABLE, why),
    };
    let Some(endpoint) = cluster.pick(None, &[]) else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream in cluster {cluster_name}"),
        );
    };
    let plan = cluster.plan();
    let mut sender = match endpoint
        .pool
        .dedicated_h1(&endpoint.target(&plan, &cluster), &proxy.tls)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: {e}"),
            );
        }
    };
    let downstream = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let mut up = Request::new(full(Bytes::new()));
    *up.method_mut() = parts.method;
    *up.uri_mut() = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_default();
    *up.headers_mut() = parts.headers;
    let headers = up.headers_mut();
    set_client_identity(proxy, down, forward_identity, headers);
    if !headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(header::HOST, v);
    }
    let mut response = match sender.send_request(up).await {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::BAD_GATEWAY, format!("upstream reset: {e}")),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        // The tunnel is one long request: the connection's request headers
        // timeout must not read its bytes as a slow head.
        let busy = Busy::new(down.clone());
        tokio::spawn(async move {
            let _busy = busy;
            let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
                return;
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
    response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())
}

/// Inbound RBAC; `Some(403)` if the request is denied.
fn authorize(
    proxy: &Proxy,
    down: &Downstream,
    http: &HttpPlan,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    if http.rbac.is_empty() {
        return None;
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let subject = Subject {
        peer: down.peer.as_deref(),
        remote: down.remote.ip(),
        local_port: down.local.port(),
        request: Some((req.method().as_str(), path)),
        headers: Some(req.headers()),
    };
    let decision = rbac::decide(&http.rbac, &subject);
    proxy.record_authz("http", decision, down.peer.as_deref());
    match decision {
        Decision::Allow => None,
        Decision::Deny { .. } => Some(reply(StatusCode::FORBIDDEN, "RBAC: access denied")),
    }
}

fn pick_weighted(clusters: &[(String, u32)]) -> &str {
    let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut at = rand::rng().random_range(0..total.max(1));
    for (name, w) in clusters {
        if at < u64::from(*w) {
            return name;
        }
        at -= u64::from(*w);
    }
    &clusters[0].0
}

/// Headers that belong to one hop (RFC 9110 §7.6.1); `te: trailers` stays,
/// gRPC needs it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How a request is forwarded, besides where.
#[derive(Clone, Copy)]
struct How {
    /// Tell the app the caller's SPIFFE ID.
    forward_identity: bool,
    /// The caller speaks gRPC: the proxy's own answers are put as gRPC.
    grpc: bool,
    /// The request is access-logged: say where it went.
    logged: bool,
}

async fn forward(
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
        Err(why) => (
            Arc::from(""),
            (
                reply(StatusCode::SERVICE_UNAVAILABLE, why),
                Upstream::default(),
            ),
        ),
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

/// Which endpoint answered: its SPIFFE ID and address.
#[derive(Default)]
struct Upstream {
    peer: Option<Arc<str>>,
    host: Option<SocketAddr>,
}

/// The request to `cluster` as the route says (faults, mirrors, retries,
/// timeout); the response and who gave it.
async fn send(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    route: &Route,
    req: Request<Incoming>,
    cluster: &Arc<ClusterState>,
    authority: &Authority,
    forward_identity: bool,
) -> (Response<Body>, Upstream) {
    if let Some(f) = &route.fault {
        let roll = |percent: f64| rand::rng().random_range(0.0..100.0) < percent;
        if let Some((delay, p)) = f.delay
            && roll(p)
        {
            tokio::time::sleep(delay).await;
        }
        if let Some((code, p)) = f.abort
            && roll(p)
        {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (reply(status, "fault filter abort"), Upstream::default());
        }
    }
    let mut out = match Outgoing::new(req, route.retry.is_some() || !route.mirrors.is_empty()).await
    {
        Ok(o) => o,
        Err(r) => return (r, Upstream::default()),
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
    match route.timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => (
                reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream request timeout ({} ms)", limit.as_millis()),
                ),
                Upstream::default(),
            ),
        },
    }
}

/// A mirrored request's authority: `-shadow` after the host, before any
/// port (`shop:8080` -> `shop-shadow:8080`), as Envoy's mirror policy does.
fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

/// Why an attempt failed, for the retry decision.
enum Failure {
    Connect(String),
    Reset(String),
    Timeout,
    Overflow(&'static str, String),
    /// The body was streamed by an earlier try and cannot be sent again.
    Spent,
}

/// Tries the request until it succeeds or the retry policy says stop;
/// returns the response and the endpoint of the last try.
async fn attempts(
    proxy: &Arc<Proxy>,
    cluster: &Arc<ClusterState>,
    route: &Route,
    out: &mut Outgoing,
    authority: &Authority,
) -> (Response<Body>, Upstream) {
    let plan = cluster.plan();
    let name = plan.name.as_str();
    let Some(mut in_flight) = InFlight::request(cluster) else {
        let why = format!("cluster {name} is at max_requests");
        return (
            overflow(proxy, name, "max_requests", why),
            Upstream::default(),
        );
    };
    let hash = (plan.balance == Balance::RingHash)
        .then(|| hash_key(&out.parts.headers, authority.as_str()));
    let mut tried = 0u32;
    let mut avoid = Vec::new();
    let mut _slot = None;
    loop {
        let Some(endpoint) = cluster.pick(hash, &avoid) else {
            return (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no healthy upstream in cluster {name}"),
                ),
                Upstream::default(),
            );
        };
        in_flight.on(endpoint.clone());
        let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
        let result = attempt(proxy, cluster, &endpoint, out, authority, per_try).await;
        let peer = endpoint.pool.peer.lock().expect("pool lock").clone();
        let grpc_status = result
            .as_ref()
            .ok()
            .and_then(|r| grpc_status_in_headers(r.headers()));
        let outcome = match &result {
            Ok(r)
                if r.status().is_server_error()
                    || grpc_status.is_some_and(is_grpc_server_error) =>
            {
                Outcome::Failure
            }
            Ok(_) => Outcome::Success,
            Err(Failure::Overflow(..) | Failure::Spent) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        let endpoint_address = endpoint.address;
        if cluster.record(&endpoint, outcome) {
            proxy
                .metrics()
                .ejections
                .get_or_create(&ClusterLabels {
                    cluster: name.to_owned(),
                })
                .inc();
        }
        let retry = route.retry.as_ref().filter(|r| {
            tried < r.attempts
                && out.retryable()
                && match &result {
                    Ok(resp) => {
                        let code = resp.status().as_u16();
                        (r.on_5xx && code >= 500)
                            || (r.on_gateway_error && matches!(code, 502..=504))
                            || grpc_status.is_some_and(|s| r.grpc_statuses.contains(&s))
                    }
                    Err(Failure::Connect(_)) => r.on_connect_failure,
                    Err(Failure::Reset(_)) => r.on_reset || r.on_refused_stream,
                    Err(Failure::Timeout) => r.on_5xx || r.on_gateway_error,
                    Err(Failure::Overflow(..) | Failure::Spent) => false,
                }
        });
        if let Some(policy) = retry {
            match Slot::take(cluster, Limit::Retry) {
                Some(slot) => {
                    _slot = Some(slot);
                    tried += 1;
                    avoid.push(endpoint_address);
                    proxy
                        .metrics()
                        .retries
                        .get_or_create(&ClusterLabels {
                            cluster: name.to_owned(),
                        })
                        .inc();
                    tokio::time::sleep(backoff(policy.backoff, tried)).await;
                    continue;
                }
                None => proxy.record_overflow(name, "max_retries"),
            }
        }
        let response = match result {
            Ok(r) => r,
            Err(Failure::Connect(why)) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: {why}"),
            ),
            Err(Failure::Reset(why)) => {
                reply(StatusCode::BAD_GATEWAY, format!("upstream reset: {why}"))
            }
            Err(Failure::Timeout) => reply(StatusCode::GATEWAY_TIMEOUT, "upstream per-try timeout"),
            Err(Failure::Overflow(limit, why)) => overflow(proxy, name, limit, why),
            Err(Failure::Spent) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream failed after a request body too long to keep was sent",
            ),
        };
        let upstream = Upstream {
            peer,
            host: Some(endpoint_address),
        };
        return (response, upstream);
    }
}

/// The consistent-hash key (for RING_HASH): the `x-rampart-hash-key`
/// header if set, else the authority.
fn hash_key(headers: &HeaderMap, host: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let key = headers
        .get("x-rampart-hash-key")
        .map(|v| v.as_bytes())
        .unwrap_or(host.as_bytes());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Sends `req` on a pooled HTTP/1.1 connection, and again on a new one
/// (from `fresh`) when the server closed the pooled one under it, as Go's
/// HTTP client does: if the request never left (hyper hands it back), or
/// if it was a bodyless GET, HEAD, OPTIONS or TRACE on a reused connection
/// that ended before any response (safe to send twice). Anything else is a
/// reset, for the retry policy.
async fn send_h1<F, Fut>(
    endpoint: &Endpoint,
    mut sender: http1::SendRequest<Body>,
    reused: bool,
    req: Request<Body>,
    fresh: F,
) -> Result<Response<Incoming>, Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<http1::SendRequest<Body>, Failure>>,
{
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let copy = (reused && idempotent && req.body().is_end_stream()).then(|| {
        let mut copy = Request::new(full(Bytes::new()));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let response = sender.try_send_request(req);
    endpoint.pool.put_back(sender);
    let again = match response.await {
        Ok(r) => return Ok(r),
        Err(mut e) => match (e.take_message(), copy) {
            (Some(unsent), _) => unsent,
            (None, Some(copy)) if e.error().is_incomplete_message() || e.error().is_canceled() => {
                copy
            }
            _ => return Err(Failure::Reset(e.into_error().to_string())),
        },
    };
    let mut sender = fresh().await?;
    let response = sender.try_send_request(again);
    endpoint.pool.put_back(sender);
    response
        .await
        .map_err(|e| Failure::Reset(e.into_error().to_string()))
}

fn connect_failure(e: super::pool::ConnectError, cluster: &str) -> Failure {
    match e {
        super::pool::ConnectError::Overflow(n) => Failure::Overflow(
            "max_connections",
            format!("cluster {cluster} has {n} connections open"),
        ),
        e => Failure::Connect(e.to_string()),
    }
}

/// One try against `endpoint`. The request is taken from `out` once a
/// connection is ready, so a failure to connect leaves a streamed body
/// unsent for the next try.
async fn attempt(
    proxy: &Arc<Proxy>,
    cluster: &Arc<ClusterState>,
    endpoint: &Endpoint,
    out: &mut Outgoing,
    authority: &Authority,
    per_try: Option<Duration>,
) -> Result<Response<Body>, Failure> {
    let plan = cluster.plan();
    let target = endpoint.target(&plan, cluster);
    let send = async {
        // Waiting for a connection counts against max_pending_requests.
        let Some(pending) = Slot::take(cluster, Limit::Pending) else {
            return Err(Failure::Overflow(
                "max_pending_requests",
                format!("cluster {} is at max_pending_requests", plan.name),
            ));
        };
        let connect = || async {
            endpoint
                .pool
                .sender(&target, &proxy.tls)
                .await
                .map_err(|e| connect_failure(e, &plan.name))
        };
        let mut sender = connect().await?;
        if let Sender::H2(s) = &mut sender
            && s.ready().await.is_err()
        {
            // The shared connection stopped taking streams (the peer sent
            // GOAWAY) before this request went on it: it goes on a new one.
            sender = connect().await?;
            if let Sender::H2(s) = &mut sender {
                s.ready().await.map_err(|e| Failure::Reset(e.to_string()))?;
            }
        }
        drop(pending);
        let mut req = out.take().ok_or(Failure::Spent)?;
        // The path is moved, not parsed again; HTTP/2 adds the authority.
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.path_and_query = uri.path_and_query.or(Some(PathAndQuery::from_static("/")));
        match sender {
            Sender::H2(mut s) => {
                (uri.scheme, uri.authority) = (Some(Scheme::HTTP), Some(authority.clone()));
                *req.uri_mut() = Uri::from_parts(uri)
                    .map_err(|e| Failure::Connect(format!("the upstream URI: {e}")))?;
                req.headers_mut().remove(header::HOST);
                *req.version_mut() = http::Version::HTTP_2;
                s.send(req).await.map_err(|e| Failure::Reset(e.to_string()))
            }
            Sender::H1 { sender, reused } => {
                (uri.scheme, uri.authority) = (None, None);
                *req.uri_mut() =
                    Uri::from_parts(uri).map_err(|e| Failure::Connect(e.to_string()))?;
                if !req.headers().contains_key(header::HOST)
                    && let Ok(v) = HeaderValue::from_str(authority.as_str())
                {
                    req.headers_mut().insert(header::HOST, v);
                }
                *req.version_mut() = http::Version::HTTP_11;
                let fresh = || async {
                    proxy
                        .metrics()
                        .resends
                        .get_or_create(&ClusterLabels {
                            cluster: plan.name.clone(),
                        })
                        .inc();
                    endpoint
                        .pool
                        .dedicated_h1(&target, &proxy.tls)
                        .await
                        .map_err(|e| connect_failure(e, &plan.name))
                };
                let response = send_h1(endpoint, sender, reused, req, fresh).await?;
                Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
            }
        }
    };
    match per_try {
        None => send.await,
        Some(limit) => tokio::time::timeout(limit, send)
            .await
            .map_err(|_| Failure::Timeout)?,
    }
}

/// A response body that records the request's metrics when it ends (with
/// the gRPC status from the trailers, if any) or is dropped.
struct Observed {
    inner: Body,
    proxy: Arc<Proxy>,
    down: Arc<Downstream>,
    labels: Option<RequestLabels>,
    started: Instant,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(status) = trailers.get(GRPC_STATUS).and_then(|v| v.to_str().ok())
            && let Some(labels) = self.labels.as_mut()
        {
            labels.grpc_status = status.to_owned();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.down.activity.end();
        let Some(labels) = self.labels.take() else {
            return;
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut last = self.down.counted.0.lock().expect("metrics cache lock");
        if let Some((_, requests, duration)) = last.as_ref().filter(|(l, ..)| *l == labels) {
            requests.inc();
            duration.observe(elapsed);
            return;
        }
        let m = self.proxy.metrics();
        let duration = m
            .duration
            .get_or_create(&DurationLabels {
                direction: labels.direction,
                destination_service: labels.destination_service.clone(),
            })
            .clone();
        let requests = m.requests.get_or_create(&labels).clone();
        requests.inc();
        duration.observe(elapsed);
        *last = Some((labels, requests, duration));
    }
}

#[cfg(test)]
mod tests {
    use super::{
        HeaderMap, HeaderValue, grpc_status_in_headers, hash_key, is_grpc_server_error,
        pick_weighted, request_id, shadow_host, strip_hop_by_hop,
    };

    #[test]
    fn request_ids_are_random_uuids() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        let id = a.to_str().unwrap();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        // Version 4, RFC 4122 variant.
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
    }

    #[test]
    fn weights_share_the_picks_and_a_zero_weight_gets_none() {
        let clusters = [
            ("a".to_owned(), 90),
            ("b".to_owned(), 10),
            ("never".to_owned(), 0),
        ];
        let mut a = 0;
        for _ in 0..10_000 {
            match pick_weighted(&clusters) {
                "a" => a += 1,
                "b" => {}
                other => panic!("picked {other}"),
            }
        }
        // 9,000 expected; 8,700..9,300 is over ten standard deviations wide.
        assert!((8_700..9_300).contains(&a), "{a}");
        // All weights zero: the first, rather than nothing.
        let zero = [("first".to_owned(), 0), ("second".to_owned(), 0)];
        assert_eq!(pick_weighted(&zero), "first");
    }

    #[test]
    fn grpc_errors_that_count_as_server_errors_are_envoy_s() {
        let counted: Vec<u32> = (0..=16).filter(|s| is_grpc_server_error(*s)).collect();
        assert_eq!(counted, [2, 4, 12, 13, 14, 15]);
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status_in_headers(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status_in_headers(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("unavailable"));
        assert_eq!(grpc_status_in_headers(&h), None);
    }

    #[test]
    fn the_hash_key_is_the_header_if_given_else_the_host() {
        let none = HeaderMap::new();
        assert_eq!(hash_key(&none, "a.shop"), hash_key(&none, "a.shop"));
        assert_ne!(hash_key(&none, "a.shop"), hash_key(&none, "b.shop"));
        let mut keyed = HeaderMap::new();
        keyed.insert("x-rampart-hash-key", HeaderValue::from_static("user-7"));
        assert_eq!(hash_key(&keyed, "a.shop"), hash_key(&keyed, "b.shop"));
    }

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
