//! HTTP/1.1 upgrades (WebSocket and the like): a dedicated connection per
//! upgrade, spliced byte for byte after `101 Switching Protocols`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rampart_plan::route::Route;

use crate::proxy::Proxy;
use crate::proxy::body::{Body, BoxError, full};
use crate::proxy::downstream::Downstream;
use crate::proxy::error::Error;
use crate::proxy::local_reply::reply;
use crate::proxy::timeouts::Busy;

use super::{cluster_for, set_client_identity};

/// An HTTP/1.1 request to switch protocols (WebSocket and the like).
pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
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
pub(super) async fn upgrade(
    proxy: &Arc<Proxy>,
    down: &Arc<Downstream>,
    route: &Route,
    mut req: Request<Incoming>,
    host: &str,
    forward_identity: bool,
) -> Response<Body> {
    let (cluster_name, cluster) = match cluster_for(proxy, route) {
        Ok(c) => c,
        Err(error) => return reply(error),
    };
    let Some(endpoint) = cluster.pick(None, &[]) else {
        return reply(Error::NoHealthyUpstream(cluster_name.to_string()));
    };
    let plan = cluster.plan();
    let mut sender = match endpoint
        .pool
        .dedicated_h1(&endpoint.target(&plan, &cluster), &proxy.tls)
        .await
    {
        Ok(s) => s,
        Err(e) => return reply(Error::ConnectFailure(e.to_string())),
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
        Err(e) => return reply(Error::Reset(e.to_string())),
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
