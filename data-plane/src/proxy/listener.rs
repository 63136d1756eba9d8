//! Accepting connections: tell TLS from plaintext on the first bytes (when
//! the listener has chains for both), terminate mTLS and learn the caller's
//! SPIFFE ID, apply connection-level RBAC before any byte reaches the app,
//! then serve HTTP (HTTP/1.1 or HTTP/2, detected) or proxy TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_plan::connection_manager::HttpTimeouts;
use rampart_plan::listener::{App, ListenerPlan, Transport};
use rampart_plan::rbac::{self, Decision, Subject};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::access_log::{TcpLine, UpstreamInfo};
use super::body::Stream;
use super::detect;
use super::downstream::Downstream;
use super::error::Error;
use super::http;
use super::pool::{ConnectError, connect};
use super::timeouts::{self, Busy, HeadTimer};
use super::tls::{Alpn, H2, HTTP1};
use super::upstream::{Endpoint, Outcome};
use super::{Proxy, until_true};
use crate::metrics::traffic::{
    BytesLabels, HandshakeFailureLabels, ListenerLabels, TcpLabels, handshake_failure_reason,
};

/// How long the first bytes may take to arrive before a connection is
/// taken as plaintext (a server-speaks-first protocol sends nothing).
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plaintext connection on an `auto` port may take to show
/// whether it is HTTP; after it, it is carried as opaque TCP (a
/// server-speaks-first protocol waits this long for its first byte).
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn accept(
    proxy: Arc<Proxy>,
    name: String,
    socket: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(remote);
                    tokio::spawn(connection(proxy.clone(), name.clone(), stream, remote, local, drain.clone()));
                }
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = until_true(&mut stop) => return,
        }
    }
}

/// Whether the connection opens with a TLS handshake record.
async fn starts_with_tls(stream: &TcpStream) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(DETECT_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == 0x16),
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

/// The chains a connection can take on its transport, in order.
fn candidates(listener: &ListenerPlan, tls: bool) -> impl Iterator<Item = usize> + '_ {
    listener
        .chains
        .iter()
        .enumerate()
        .filter(move |(_, c)| c.transport.takes(tls))
        .map(|(i, _)| i)
}

pub async fn connection(
    proxy: Arc<Proxy>,
    name: String,
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    drain: watch::Receiver<bool>,
) {
    let _open = proxy.opened();
    let plan = proxy.plan();
    let Some(listener) = plan.listeners.get(&name).cloned() else {
        return;
    };
    let label = || ListenerLabels {
        listener: name.clone(),
    };
    let timed_out = || {
        proxy
            .metrics()
            .detect_timeouts
            .get_or_create(&label())
            .inc();
    };
    let detect_tls = listener
        .chains
        .iter()
        .any(|c| c.transport != Transport::Any);
    let tls = if detect_tls {
        starts_with_tls(&stream).await.unwrap_or_else(|| {
            timed_out();
            false
        })
    } else {
        false
    };
    let candidates: Vec<usize> = candidates(&listener, tls).collect();
    let Some(&first) = candidates.first() else {
        tracing::debug!(listener = %name, %remote, tls, "no filter chain matches; closing");
        return;
    };
    // Chains told apart by application protocol: in plaintext, by the
    // first bytes (before anything is read); under mTLS, by the ALPN the
    // handshake settles (the plan has every such chain terminate alike).
    let by_protocol = candidates
        .iter()
        .any(|&i| !listener.chains[i].application_protocols.is_empty());
    let terminate = listener.chains[first].terminate_mtls;
    let mut protocol = None;
    if by_protocol && !terminate {
        match detect::sniff(&stream, SNIFF_TIMEOUT).await {
            Some(detected) => protocol = detected.application_protocol(),
            None => timed_out(),
        }
    }
    let (stream, peer): (Stream, Option<Arc<str>>) = if terminate {
        let acceptor = tokio_rustls::TlsAcceptor::from(proxy.tls.server());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let session = tls.get_ref().1;
                let peer = session
                    .peer_certificates()
                    .and_then(rampart_certs::tls::peer_spiffe_id)
                    .map(|id| Arc::from(id.to_string()));
                protocol = match session.alpn_protocol() {
                    Some(H2) => Some("h2"),
                    Some(HTTP1) => Some("http/1.1"),
                    _ => None,
                };
                (Box::pin(tls), peer)
            }
            Ok(Err(e)) => {
                handshake_failed(&proxy, &name, Some(&e));
                tracing::debug!(listener = %name, %remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                handshake_failed(&proxy, &name, None);
                return;
            }
        }
    } else {
        (Box::pin(stream), None)
    };
    let Some(index) = candidates.into_iter().find(|&i| {
        let wanted = &listener.chains[i].application_protocols;
        wanted.is_empty() || protocol.is_some_and(|p| wanted.iter().any(|w| w == p))
    }) else {
        tracing::debug!(listener = %name, %remote, ?protocol, "no filter chain takes this protocol; closing");
        return;
    };
    let chain = &listener.chains[index];
    if !chain.network_rbac.is_empty() {
        let subject = Subject {
            peer: peer.as_deref(),
            remote: remote.ip(),
            local_port: local.port(),
            request: None,
            headers: None,
        };
        let decision = rbac::decide(&chain.network_rbac, &subject);
        proxy.record_authz("tcp", decision, peer.as_deref());
        if decision != Decision::Allow {
            tracing::debug!(listener = %name, %remote, peer = ?peer, "connection denied by RBAC");
            return;
        }
    }
    let down = Arc::new(Downstream {
        listener: name.clone(),
        inbound: listener.inbound || chain.terminate_mtls,
        peer,
        remote,
        local,
        chain: index,
        counted: Default::default(),
        activity: Default::default(),
    });
    match &chain.app {
        App::Http(http) => serve_http(proxy, down, http.timeouts, stream, drain).await,
        App::Tcp {
            cluster,
            idle_timeout,
            access_log,
        } => {
            let line = access_log
                .as_ref()
                .map(|plan| TcpLine::start(plan, &down, proxy.access_log.clone()));
            proxy_tcp(proxy, down, (cluster.clone(), *idle_timeout), line, stream).await
        }
    }
}

async fn serve_http(
    proxy: Arc<Proxy>,
    down: Arc<Downstream>,
    timeouts: HttpTimeouts,
    stream: Stream,
    mut drain: watch::Receiver<bool>,
) {
    let io = HeadTimer::new(
        stream,
        timeouts.request_headers,
        proxy.clone(),
        down.clone(),
    );
    let (p, d) = (proxy.clone(), down.clone());
    let service = service_fn(move |req| {
        // Busy from the moment the head is complete, not from the first poll.
        let (busy, proxy) = (Busy::new(d.clone()), p.clone());
        async move { Ok::<_, Infallible>(http::handle(&proxy, busy.down(), req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = until_true(&mut drain) => {}
        _ = timeouts::idle(&down.activity, timeouts.idle) => {
            timeouts::count(&proxy, &down.listener, "idle");
        }
    }
    // Draining or idle: finish what is in flight, then close (GOAWAY on
    // HTTP/2, `connection: close` on HTTP/1.1).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Counts a TCP connection against its endpoint for least-request balancing.
struct Active(Arc<Endpoint>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Carries a TCP connection to an endpoint of `cluster` (trying up to three
/// endpoints to connect), both directions, half-close included.
/// `line`: the connection's access log line, if it is logged (written when
/// it is dropped, whichever way this ends).
async fn proxy_tcp(
    proxy: Arc<Proxy>,
    down: Arc<Downstream>,
    (cluster, idle_timeout): (String, Option<Duration>),
    mut line: Option<TcpLine>,
    downstream: Stream,
) {
    // Why no upstream was reached, for the connection's log line.
    let mut fail = |error: Error| {
        if let Some(line) = line.as_mut() {
            line.failure = Some(error);
        }
    };
    let Some(state) = proxy.upstreams.get(&cluster) else {
        tracing::warn!(%cluster, "TCP connection for a cluster not received yet; closing");
        fail(Error::NoCluster(cluster));
        return;
    };
    let plan = state.plan();
    let mut avoid = Vec::new();
    let mut upstream = None;
    let mut last_error = None;
    for _ in 0..3 {
        let Some(endpoint) = state.pick(None, &avoid) else {
            break;
        };
        let target = endpoint.target(&plan, &state);
        match connect(&target, &proxy.tls, Alpn::None).await {
            Ok(connected) => {
                state.record(&endpoint, Outcome::Success);
                endpoint.active.fetch_add(1, Ordering::AcqRel);
                upstream = Some((connected, Active(endpoint)));
                break;
            }
            Err(ConnectError::Overflow(n)) => {
                // The cluster's limit, not the endpoint's fault: no retry.
                proxy.record_overflow(&cluster, "max_connections");
                tracing::warn!(%cluster, max_connections = n, "TCP connection refused by the circuit breaker; closing");
                fail(Error::Overflow {
                    limit: "max_connections",
                    why: format!("cluster {cluster} has {n} connections open"),
                });
                return;
            }
            Err(e) => {
                tracing::debug!(%cluster, endpoint = %endpoint.address, error = %e, "TCP upstream connect failed");
                state.record(&endpoint, Outcome::Failure);
                avoid.push(endpoint.address);
                last_error = Some(e.to_string());
            }
        }
    }
    let Some((connected, active)) = upstream else {
        tracing::warn!(%cluster, "no TCP upstream could be reached; closing");
        fail(match last_error {
            Some(why) => Error::ConnectFailure(why),
            None => Error::NoHealthyUpstream(cluster),
        });
        return;
    };
    if let Some(line) = line.as_mut() {
        line.upstream = Some(UpstreamInfo {
            cluster: state.name.clone(),
            host: Some(active.0.address),
            peer: connected.peer.clone(),
        });
    }
    let direction = if down.inbound { "inbound" } else { "outbound" };
    proxy
        .metrics()
        .tcp_connections
        .get_or_create(&TcpLabels {
            direction,
            destination_service: cluster.clone(),
        })
        .inc();
    // Count what was read from each side as it goes, so a connection that
    // ends in an error (a reset) still has its bytes counted.
    let mut downstream = Counting::new(downstream, down.clone());
    // `_counted` holds the connection's place in max_connections until it ends.
    let (mut upstream, _counted) = (connected.stream, connected.counted);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(%cluster, error = %e, "TCP connection ended with an error");
            }
        }
        _ = timeouts::idle(&down.activity, idle_timeout) => {
            tracing::debug!(%cluster, ?idle_timeout, "TCP connection idle; closing");
            timeouts::count(&proxy, &down.listener, "tcp_idle");
        }
    }
    let (sent, received) = (downstream.read, downstream.written);
    if let Some(line) = line.as_mut() {
        (line.sent, line.received) = (received, sent);
    }
    for (flow, n) in [("sent", sent), ("received", received)] {
        proxy
            .metrics()
            .tcp_bytes
            .get_or_create(&BytesLabels {
                direction,
                destination_service: cluster.clone(),
                flow,
            })
            .inc_by(n);
    }
}

/// A stream that counts the bytes read from it and written to it, and
/// marks the connection active whenever one moves.
struct Counting {
    inner: Stream,
    read: u64,
    written: u64,
    down: Arc<Downstream>,
}

impl Counting {
    fn new(inner: Stream, down: Arc<Downstream>) -> Self {
        Counting {
            inner,
            read: 0,
            written: 0,
            down,
        }
    }
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.down.activity.touch();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = self.inner.as_mut().poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.written += *n as u64;
            self.down.activity.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// Counts a failed inbound handshake (`None`: it timed out) by reason.
fn handshake_failed(proxy: &Proxy, listener: &str, error: Option<&std::io::Error>) {
    proxy
        .metrics()
        .tls_failures
        .get_or_create(&HandshakeFailureLabels {
            listener: listener.to_owned(),
            reason: handshake_failure_reason(error),
        })
        .inc();
}
