//! The tries of a forwarded request: pick an endpoint (consistent hash,
//! avoiding those that failed), honour the circuit breakers, connect and
//! send, and retry as the route's policy says; outliers are recorded here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use rampart_plan::cluster::Balance;
use rampart_plan::route::Route;

use crate::metrics::traffic::ClusterLabels;
use crate::proxy::Proxy;
use crate::proxy::body::{Body, BoxError, full};
use crate::proxy::error::Error;
use crate::proxy::grpc_status::{grpc_status_in_headers, is_grpc_server_error};
use crate::proxy::local_reply::reply;
use crate::proxy::outgoing::Outgoing;
use crate::proxy::pool::{self, Sender};
use crate::proxy::upstream::{ClusterState, Endpoint, InFlight, Limit, Outcome, Slot, backoff};

/// The reply for a failed try; an open circuit breaker is counted.
fn failed(proxy: &Proxy, cluster: &str, error: Error) -> Response<Body> {
    if let Error::Overflow { limit, .. } = &error {
        proxy.record_overflow(cluster, limit);
    }
    reply(error)
}

/// Which endpoint answered: its SPIFFE ID and address.
#[derive(Default)]
pub(super) struct Upstream {
    pub(super) peer: Option<Arc<str>>,
    pub(super) host: Option<SocketAddr>,
}

/// Tries the request until it succeeds or the retry policy says stop;
/// returns the response and the endpoint of the last try.
pub(super) async fn attempts(
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
            failed(
                proxy,
                name,
                Error::Overflow {
                    limit: "max_requests",
                    why,
                },
            ),
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
            let none = Error::NoHealthyUpstream(name.to_owned());
            return (reply(none), Upstream::default());
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
            Err(Error::Overflow { .. } | Error::BodySpent) => Outcome::Success,
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
                    Err(Error::ConnectFailure(_)) => r.on_connect_failure,
                    Err(Error::Reset(_)) => r.on_reset || r.on_refused_stream,
                    Err(Error::PerTryTimeout) => r.on_5xx || r.on_gateway_error,
                    Err(_) => false,
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
            Err(error) => failed(proxy, name, error),
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
pub(super) fn hash_key(headers: &HeaderMap, host: &str) -> u64 {
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
pub(super) async fn send_h1<F, Fut>(
    endpoint: &Endpoint,
    mut sender: http1::SendRequest<Body>,
    reused: bool,
    req: Request<Body>,
    fresh: F,
) -> Result<Response<Incoming>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<http1::SendRequest<Body>, Error>>,
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
            _ => return Err(Error::Reset(e.into_error().to_string())),
        },
    };
    let mut sender = fresh().await?;
    let response = sender.try_send_request(again);
    endpoint.pool.put_back(sender);
    response
        .await
        .map_err(|e| Error::Reset(e.into_error().to_string()))
}

pub(super) fn connect_failure(e: pool::ConnectError, cluster: &str) -> Error {
    match e {
        pool::ConnectError::Overflow(n) => Error::Overflow {
            limit: "max_connections",
            why: format!("cluster {cluster} has {n} connections open"),
        },
        e => Error::ConnectFailure(e.to_string()),
    }
}

/// One try against `endpoint`. The request is taken from `out` once a
/// connection is ready, so a failure to connect leaves a streamed body
/// unsent for the next try.
pub(super) async fn attempt(
    proxy: &Arc<Proxy>,
    cluster: &Arc<ClusterState>,
    endpoint: &Endpoint,
    out: &mut Outgoing,
    authority: &Authority,
    per_try: Option<Duration>,
) -> Result<Response<Body>, Error> {
    let plan = cluster.plan();
    let target = endpoint.target(&plan, cluster);
    let send = async {
        // Waiting for a connection counts against max_pending_requests.
        let Some(pending) = Slot::take(cluster, Limit::Pending) else {
            return Err(Error::Overflow {
                limit: "max_pending_requests",
                why: format!("cluster {} is at max_pending_requests", plan.name),
            });
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
                s.ready().await.map_err(|e| Error::Reset(e.to_string()))?;
            }
        }
        drop(pending);
        let mut req = out.take().ok_or(Error::BodySpent)?;
        // The path is moved, not parsed again; HTTP/2 adds the authority.
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.path_and_query = uri.path_and_query.or(Some(PathAndQuery::from_static("/")));
        match sender {
            Sender::H2(mut s) => {
                (uri.scheme, uri.authority) = (Some(Scheme::HTTP), Some(authority.clone()));
                *req.uri_mut() = Uri::from_parts(uri)
                    .map_err(|e| Error::ConnectFailure(format!("the upstream URI: {e}")))?;
                req.headers_mut().remove(header::HOST);
                *req.version_mut() = http::Version::HTTP_2;
                s.send(req).await.map_err(|e| Error::Reset(e.to_string()))
            }
            Sender::H1 { sender, reused } => {
                (uri.scheme, uri.authority) = (None, None);
                *req.uri_mut() =
                    Uri::from_parts(uri).map_err(|e| Error::ConnectFailure(e.to_string()))?;
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
            .map_err(|_| Error::PerTryTimeout)?,
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::hash_key;

    #[test]
    fn the_hash_key_is_the_header_if_given_else_the_host() {
        let none = HeaderMap::new();
        assert_eq!(hash_key(&none, "a.shop"), hash_key(&none, "a.shop"));
        assert_ne!(hash_key(&none, "a.shop"), hash_key(&none, "b.shop"));
        let mut keyed = HeaderMap::new();
        keyed.insert("x-rampart-hash-key", HeaderValue::from_static("user-7"));
        assert_eq!(hash_key(&keyed, "a.shop"), hash_key(&keyed, "b.shop"));
    }
}
