//! Connections to one endpoint: HTTP/2 connections are shared by every
//! request (multiplexed), HTTP/1.1 connections are reused one request at a
//! time. On an mTLS hop the proxy offers `h2` and `http/1.1` and speaks what
//! the peer picks, so HTTP/1.1 from the app rides HTTP/2 between sidecars.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h2_upstream::H2;
use super::tls::{self, Alpn, Tls};

use super::body::{Body, Stream};

/// How to reach an endpoint.
pub struct Target<'a> {
    pub address: SocketAddr,
    /// `Some(accepted server IDs)` for mTLS.
    pub mtls: Option<&'a [String]>,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 to this endpoint in plaintext.
    pub http2: bool,
    pub max_connections: u32,
    pub connections: &'a Arc<AtomicU32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection limit reached ({0} connections)")]
    Overflow(u32),
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Tls(SocketAddr, String),
    #[error("HTTP handshake with {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("HTTP/2 handshake with {0}: {1}")]
    H2(SocketAddr, h2::Error),
}

/// A connection's place in its cluster's `max_connections`, given back
/// when the connection ends (when this is dropped).
pub struct Counted(Arc<AtomicU32>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open connection to an endpoint.
pub struct Connected {
    pub stream: Stream,
    /// The peer's SPIFFE ID (mTLS only).
    pub peer: Option<Arc<str>>,
    /// The peer agreed to HTTP/2.
    pub h2: bool,
    /// Keep for as long as the connection is open.
    pub counted: Counted,
}

/// Opens a stream to `target` (TLS when it is mTLS), counted against the
/// cluster's `max_connections`: every HTTP and TCP connection goes here.
pub async fn connect(
    target: &Target<'_>,
    tls: &Tls,
    alpn: Alpn,
) -> Result<Connected, ConnectError> {
    let open = target.connections.fetch_add(1, Ordering::AcqRel);
    let counted = Counted(target.connections.clone());
    if open >= target.max_connections {
        return Err(ConnectError::Overflow(target.max_connections));
    }
    let address = target.address;
    let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(address))?
        .map_err(|e| ConnectError::Io(address, e))?;
    let _ = tcp.set_nodelay(true);
    let Some(expected) = target.mtls else {
        return Ok(Connected {
            stream: Box::pin(tcp),
            peer: None,
            h2: target.http2 && alpn == Alpn::Http,
            counted,
        });
    };
    let config = tls
        .client(expected, alpn)
        .map_err(|e| ConnectError::Tls(address, format!("{e:#}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    // The peer is checked by SPIFFE ID, not by name; any valid name will do.
    let name = rustls_pki_types::ServerName::IpAddress(address.ip().into());
    let stream = tokio::time::timeout(target.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Timeout(address))?
        .map_err(|e| ConnectError::Tls(address, e.to_string()))?;
    let (_, session) = stream.get_ref();
    let peer = session
        .peer_certificates()
        .and_then(rampart_certs::tls::peer_spiffe_id)
        .map(|id| id.to_string().into());
    let h2 = session.alpn_protocol() == Some(tls::H2);
    Ok(Connected {
        stream: Box::pin(stream),
        peer,
        h2,
        counted,
    })
}

pub enum Sender {
    /// An HTTP/1.1 connection; `reused`: it served a request before (the
    /// server may be closing it as this one is handed to it).
    H1 {
        sender: http1::SendRequest<Body>,
        reused: bool,
    },
    H2(H2),
}

#[derive(Default)]
pub struct Pool {
    h2: tokio::sync::Mutex<Option<H2>>,
    h1: Mutex<Vec<http1::SendRequest<Body>>>,
    /// The peer answered HTTP/1.1 last time: no need to queue for an h2 slot.
    h1_peer: AtomicBool,
    /// The SPIFFE ID the endpoint last presented.
    pub peer: Mutex<Option<Arc<str>>>,
}

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 64;

impl Pool {
    /// A sender for one request: a shared HTTP/2 connection, an idle
    /// HTTP/1.1 one, or a new connection.
    pub async fn sender(&self, target: &Target<'_>, tls: &Tls) -> Result<Sender, ConnectError> {
        if let Some(s) = self.idle_h1() {
            return Ok(Sender::H1 {
                sender: s,
                reused: true,
            });
        }
        let may_be_h2 = (target.mtls.is_some() && !self.h1_peer.load(Ordering::Relaxed))
            || (target.mtls.is_none() && target.http2);
        if !may_be_h2 {
            return self.open(target, tls, Alpn::Http).await;
        }
        // One connection attempt at a time, so a burst shares one h2 connection.
        let mut slot = self.h2.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(Sender::H2(s.clone()));
        }
        let sender = self.open(target, tls, Alpn::Http).await?;
        if let Sender::H2(s) = &sender {
            *slot = Some(s.clone());
        }
        Ok(sender)
    }

    fn idle_h1(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.h1.lock().expect("pool lock");
        idle.retain(|s| !s.is_closed());
        let ready = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(ready))
    }

    /// Returns an HTTP/1.1 connection for reuse (it becomes ready again
    /// once its response body has been read).
    pub fn put_back(&self, sender: http1::SendRequest<Body>) {
        let mut idle = self.h1.lock().expect("pool lock");
        if idle.len() < MAX_IDLE_H1 && !sender.is_closed() {
            idle.push(sender);
        }
    }

    /// A new HTTP/1.1 connection of its own, for a request that upgrades
    /// it (WebSocket): the connection then belongs to that request.
    pub async fn dedicated_h1(
        &self,
        target: &Target<'_>,
        tls: &Tls,
    ) -> Result<http1::SendRequest<Body>, ConnectError> {
        match self.open(target, tls, Alpn::Http1).await? {
            Sender::H1 { sender, .. } => Ok(sender),
            Sender::H2(_) => unreachable!("only http/1.1 was offered"),
        }
    }

    async fn open(
        &self,
        target: &Target<'_>,
        tls: &Tls,
        alpn: Alpn,
    ) -> Result<Sender, ConnectError> {
        let Connected {
            stream,
            peer,
            h2,
            counted,
        } = connect(target, tls, alpn).await?;
        if peer.is_some() {
            *self.peer.lock().expect("pool lock") = peer;
        }
        let address = target.address;
        if h2 {
            let sender = H2::handshake(stream, address, counted)
                .await
                .map_err(|e| ConnectError::H2(address, e))?;
            Ok(Sender::H2(sender))
        } else {
            // A peer that answers an offer of h2 with HTTP/1.1 will again.
            if target.mtls.is_some() && alpn == Alpn::Http {
                self.h1_peer.store(true, Ordering::Relaxed);
            }
            let (sender, connection) = http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ConnectError::Http(address, e))?;
            tokio::spawn(async move {
                let _counted = counted;
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(endpoint = %address, error = %e, "HTTP/1.1 upstream connection ended");
                }
            });
            Ok(Sender::H1 {
                sender,
                reused: false,
            })
        }
    }
}
