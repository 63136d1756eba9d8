//! Traffic capture: with the iptables rules of `rampart-proxy init`, the
//! kernel redirects the workload's outbound TCP to one port (15001) and the
//! traffic arriving for it to another (15006); the proxy reads where each
//! connection was going (`SO_ORIGINAL_DST`) and handles it as if it had
//! arrived on the right listener:
//! - inbound, by the original port: the inbound listener the control plane
//!   sent for that port (mTLS, RBAC, then the app on loopback);
//! - outbound, by the original address: the service that has an endpoint
//!   there (its routes for HTTP ports, its cluster for TCP ports), so
//!   balancing, retries and mTLS apply; anything else passes through
//!   unchanged to where it was going.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Proxy, listener, until_true};

/// Where a redirected connection was going.
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("SO_ORIGINAL_DST is not an IP address"))
}

/// A listener on `[::]:port` for IPv6 only (the IPv4 one is separate).
pub fn bind_v6_only(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[derive(Clone, Copy)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Accepts redirected connections on `socket` until `drain`.
pub async fn accept(
    proxy: Arc<Proxy>,
    socket: TcpListener,
    direction: Direction,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(dispatch(proxy.clone(), stream, remote, direction, drain.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on a capture port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = until_true(&mut drain) => return,
        }
    }
}

async fn dispatch(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    remote: SocketAddr,
    direction: Direction,
    drain: watch::Receiver<bool>,
) {
    let original = match original_dst(&stream) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "a connection on a capture port was not redirected by iptables (no SO_ORIGINAL_DST); closing");
            return;
        }
    };
    let plan = proxy.plan();
    let name = match direction {
        Direction::Inbound => plan.inbound_for_port(original.port()),
        Direction::Outbound => plan.captured.get(&original).map(|l| l.name.clone()),
    };
    match name {
        Some(name) => listener::connection(proxy, name, stream, remote, original, drain).await,
        None => match direction {
            Direction::Inbound => {
                tracing::debug!(%remote, port = original.port(), "inbound connection to a port no service declares; closing");
            }
            Direction::Outbound => passthrough(stream, original).await,
        },
    }
}

/// Carries a connection to a destination outside the mesh as it is.
async fn passthrough(mut stream: TcpStream, original: SocketAddr) {
    match TcpStream::connect(original).await {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        }
        Err(e) => {
            tracing::debug!(destination = %original, error = %e, "passthrough connect failed")
        }
    }
}
