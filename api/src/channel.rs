//! A tonic channel over a caller-supplied rustls configuration. Rampart
//! authenticates servers by SPIFFE ID, not hostname, so the TLS setup comes
//! from rampart-certs and this only does the plumbing.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// How often an idle connection is pinged, and how long the answer may take.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to `addr` (`host:port`) with `tls` and HTTP/2.
pub async fn connect(
    addr: &str,
    tls: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(Arc::new(tls));
    // The URI scheme is only a label here: the connector does the TLS.
    // HTTP/2 pings find a connection that died without a word (a network
    // cut, a peer that vanished): without them a quiet ADS stream would
    // wait out the kernel's TCP timeout, a quarter of an hour.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| {
            let connector = connector.clone();
            async move {
                let host = uri.host().unwrap_or("localhost").to_owned();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                // The name is not checked (SPIFFE verification ignores it) but
                // must parse; IP literals are fine.
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}
