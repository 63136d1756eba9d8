//! One HTTP request through the proxy: policy (inbound RBAC), route (by
//! authority and path, weighted clusters, faults, mirrors), balance (pick
//! an endpoint, honour circuit breakers) and connect (pooled, mTLS to
//! sidecars), with retries, timeouts and outlier detection around it.
//! Every reply the proxy makes itself says why in its body.
//!
//! By stage: `handle` (here: the connection manager, the access log entry)
//! -> `route` (policy, rate limit, route table) -> `upgrade` (its own
//! connection) or `forward` (faults, mirrors, route timeout) -> `retry` (the
//! tries: endpoint, breakers, connect, send) -> `observe` (metrics when the
//! body ends). Helpers here are shared by the stages.

mod forward;
mod observe;
mod retry;
mod route;
mod upgrade;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use rampart_plan::Plan;
use rampart_plan::connection_manager::HttpPlan;
use rampart_plan::listener::App;
use rampart_plan::route::Route;
use rand::Rng;

use super::Proxy;
use super::access_log::Entry;
use super::body::Body;
use super::downstream::Downstream;
use super::error::Error;
use super::local_reply::{for_grpc, is_grpc, reply};
use super::upstream::ClusterState;

use route::route_request;

/// The route's cluster for this request (weighted pick), or why there is
/// none yet.
fn cluster_for(proxy: &Proxy, route: &Route) -> Result<(Arc<str>, Arc<ClusterState>), Error> {
    let name = pick_weighted(&route.clusters);
    match proxy.upstreams.get(name) {
        Some(c) => Ok((c.name.clone(), c)),
        None => Err(Error::NoCluster(name.to_owned())),
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
        Err(error) => {
            let r = reply(error);
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
/// there is none (the listener changed under the connection).
fn http_plan<'a>(plan: &'a Plan, down: &Downstream) -> Result<&'a HttpPlan, Error> {
    let Some(listener) = plan.listeners.get(&down.listener) else {
        let why = format!("listener {} was removed", down.listener);
        return Err(Error::ListenerGone(why));
    };
    match listener.chains.get(down.chain).map(|c| &c.app) {
        Some(App::Http(http)) => Ok(http),
        _ => Err(Error::ListenerGone(format!(
            "listener {} no longer serves HTTP here",
            down.listener
        ))),
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

#[cfg(test)]
mod tests {
    use super::{pick_weighted, request_id};

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
}
