//! Route a request: the listener's policy (RBAC, local rate limit), then its
//! route table by authority and path; an upgrade is carried on a connection
//! of its own, anything else forwarded.

use std::sync::Arc;

use http::header::{self};
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use rampart_plan::Plan;
use rampart_plan::connection_manager::HttpPlan;
use rampart_plan::rbac::{self, Decision, Subject};
use rampart_plan::route::Routes;

use crate::metrics::traffic::ListenerLabels;
use crate::proxy::Proxy;
use crate::proxy::body::Body;
use crate::proxy::downstream::Downstream;
use crate::proxy::error::Error;
use crate::proxy::local_reply::reply;

use super::forward::{How, forward};
use super::upgrade::{is_upgrade, upgrade};

pub(super) async fn route_request(
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
        return reply(Error::RateLimited {
            status: bucket.status,
        });
    }
    let table = match &http.routes {
        Routes::Inline(t) => t.clone(),
        Routes::Named(name) => match plan.routes.get(name) {
            Some(t) => t.clone(),
            None => return reply(Error::RoutesMissing(name.clone())),
        },
    };
    let authority = match request_authority(&req) {
        Ok(a) => a,
        Err(error) => return reply(error),
    };
    let host = authority.as_str();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Some(route) = table.find(host, path) else {
        return reply(Error::NoRoute {
            host: host.to_owned(),
            path: path.to_owned(),
            table: table.name.clone(),
        });
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
pub(super) fn request_authority(req: &Request<Incoming>) -> Result<Authority, Error> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let Some(host) = req.headers().get(header::HOST) else {
        let why = "the request names no host: send a Host header";
        return Err(Error::BadAuthority(why.to_owned()));
    };
    Authority::try_from(host.as_bytes()).map_err(|e| {
        Error::BadAuthority(format!(
            "the Host header {host:?} is not a valid host[:port]: {e}"
        ))
    })
}

/// Inbound RBAC; `Some(403)` if the request is denied.
pub(super) fn authorize(
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
        Decision::Deny { .. } => {
            let policy = rbac::denying_policy(&http.rbac, &subject).map(str::to_owned);
            Some(reply(Error::Denied { policy }))
        }
    }
}
