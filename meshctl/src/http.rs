//! Plain HTTP/1.1 GETs to the metrics and admin endpoints of Rampart's
//! processes (they serve HTTP on loopback; the admin API is gRPC over mTLS).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One GET on a new connection: (status, headers, body).
pub async fn get_with_headers(
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, headers, body))
}

/// One GET on a new connection: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes), String> {
    get_with_headers(addr, path).await.map(|(s, _, b)| (s, b))
}
