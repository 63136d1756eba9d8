//! Real app servers and clients for data-plane scenarios: an HTTP echo
//! server (HTTP/1.1 and HTTP/2) that says who it is and what it saw, a TCP
//! server that answers after the client half-closes, and HTTP clients that
//! speak HTTP/1.1 or HTTP/2 with prior knowledge.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running echo server.
pub struct Echo {
    pub port: u16,
    /// Requests it has answered.
    pub hits: Arc<AtomicU64>,
    /// The `host` (or HTTP/2 authority) of every request, in order.
    pub hosts: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts an HTTP echo server named `name` on a free loopback port.
/// (`echo_failing` starts one that answers every request with 503.)
///
/// - any path: 200, body `name=<name> version=<HTTP/x> method=<M> path=<P> body=<bytes received> xfcc=<header>`
/// - `/status/NNN`: answers with that status
/// - `/slow/MS`: answers after MS milliseconds
/// - an HTTP/1.1 `Upgrade` request: `101 Switching Protocols`, then echoes
///   every byte back until the client closes
pub async fn echo(name: &str) -> Echo {
    serve_echo(name, false, "127.0.0.1:0").await
}

/// An echo server that fails every request with 503.
pub async fn echo_failing(name: &str) -> Echo {
    serve_echo(name, true, "127.0.0.1:0").await
}

/// An echo server on `bind` (IP:PORT, port 0 for any).
pub async fn echo_at(name: &str, bind: &str) -> Echo {
    serve_echo(name, false, bind).await
}

async fn serve_echo(name: &str, failing: bool, bind: &str) -> Echo {
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicU64::new(0));
    let hosts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (name, counter, seen) = (Arc::<str>::from(name), hits.clone(), hosts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (name, counter, seen) = (name.clone(), counter.clone(), seen.clone());
            tokio::spawn(async move {
                let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let (name, counter) = (name.clone(), counter.clone());
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .or_else(|| req.uri().authority().map(|a| a.as_str()))
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(host);
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        if let Some(protocol) = req.headers().get("upgrade").cloned() {
                            let upgraded = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(io) = upgraded.await {
                                    let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                                    let _ = tokio::io::copy(&mut r, &mut w).await;
                                    let _ = w.shutdown().await;
                                }
                            });
                            let mut response = hyper::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            response.headers_mut().insert("upgrade", protocol);
                            response
                                .headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            return Ok::<_, Infallible>(response);
                        }
                        let path = req.uri().path().to_owned();
                        let mut status = if failing { 503 } else { 200 };
                        if let Some(code) = path.strip_prefix("/status/") {
                            status = code.parse().unwrap_or(500);
                        }
                        if let Some(ms) = path.strip_prefix("/slow/") {
                            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0)))
                                .await;
                        }
                        let xfcc = req
                            .headers()
                            .get("x-forwarded-client-cert")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let (version, method) = (req.version(), req.method().clone());
                        let received = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len().to_string(),
                            Err(e) => format!("error:{e}"),
                        };
                        let mut body = format!(
                            "name={name} version={version:?} method={method} path={path} body={received} xfcc={xfcc}\n",
                        );
                        // `/big/N`: N more bytes after the line.
                        if let Some(n) = path.strip_prefix("/big/").and_then(|n| n.parse().ok()) {
                            body.push_str(&"x".repeat(n));
                        }
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Echo { port, hits, hosts }
}

/// Starts an HTTP/1.1 server that answers the first request on each
/// connection and closes the connection when the next one arrives, without
/// answering it or saying so beforehand (no `connection: close`): a server
/// whose keep-alive timeout ran out just as a request came. Returns its port.
pub async fn one_request_per_connection() -> u16 {
    each_connection(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        if stream.write_all(answer).await.is_ok() {
            // The next request's first bytes, then the connection drops.
            let _ = stream.read(&mut buf).await;
        }
    })
    .await
}

/// Starts an HTTP/1.1 server that dies in the middle of every response
/// to a path under `/cut`: the status line and headers, then 64 KiB of a
/// longer body (`content-length: 1000000`, or chunked for `/cut/chunked`),
/// then the connection is reset as when the process is killed. Any other
/// path gets a complete `ok`. Returns its port.
pub async fn dies_mid_body() -> u16 {
    each_connection(|mut stream| async move {
        let mut buf = [0u8; 4096];
        loop {
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            if !path.starts_with("/cut") {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
                continue;
            }
            let part = vec![b'x'; 64 * 1024];
            let mut out = Vec::new();
            if path == "/cut/chunked" {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                out.extend_from_slice(&part);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n");
                out.extend_from_slice(&part);
            }
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A reset, not a clean close: what a killed process leaves.
            // (Deprecated because a non-zero linger blocks on drop; zero
            // resets at once.)
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            return;
        }
    })
    .await
}

/// Listens on a loopback port and runs `serve` on each connection in a
/// task of its own; returns the port.
async fn each_connection<F, Fut>(serve: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        }
    });
    port
}

/// Starts a TCP server that reads until the client half-closes, then
/// answers `got N bytes: <what it read>` and closes. Returns its port.
pub async fn tcp_echo() -> u16 {
    each_connection(|mut stream| async move {
        let mut got = Vec::new();
        if stream.read_to_end(&mut got).await.is_ok() {
            let answer = format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got));
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await
}

/// Sends `data`, half-closes, and returns everything the peer sends back.
pub async fn tcp_exchange(addr: &str, data: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(data).await?;
    stream.shutdown().await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A status and body, or what went wrong.
pub type Answer = Result<(u16, String), String>;

/// One HTTP/1.1 GET on a new connection.
pub async fn get_h1(addr: &str, host: &str, path: &str) -> Answer {
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_h1(addr, req).await
}

/// `req` on a new HTTP/1.1 connection to `addr`.
async fn send_h1<B>(addr: &str, req: hyper::Request<B>) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    answer(sender.send_request(req).await).await
}

/// A request body sent in `chunks` with no length given (HTTP/1.1
/// chunked encoding), as a streaming client sends it.
struct Chunked(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// One HTTP/1.1 POST on a new connection, its body chunked.
pub async fn post_chunked_h1(addr: &str, host: &str, path: &str, chunks: Vec<Bytes>) -> Answer {
    let req = hyper::Request::post(path)
        .header("host", host)
        .body(Chunked(chunks.into()))
        .unwrap();
    send_h1(addr, req).await
}

/// One HTTP/2 (prior knowledge) GET on a new connection.
pub async fn get_h2(addr: &str, host: &str, path: &str) -> Answer {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{host}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    answer(sender.send_request(req).await).await
}

async fn answer(response: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>) -> Answer {
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A keep-alive HTTP/1.1 client on one connection, reconnecting if the
/// connection closes (as a real app's client pool does).
pub struct KeepAlive {
    addr: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl KeepAlive {
    pub fn new(addr: &str) -> KeepAlive {
        KeepAlive {
            addr: addr.to_owned(),
            sender: None,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Answer {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        answer(sender.send_request(req).await).await
    }
}

/// Asks `addr` to upgrade to `protocol` (HTTP/1.1), then sends `data`,
/// half-closes and returns the status line and everything read after the
/// response headers.
pub async fn upgrade_exchange(
    addr: &str,
    protocol: &str,
    data: &[u8],
) -> std::io::Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if !status.contains(" 101 ") {
        return Ok((status, Vec::new()));
    }
    stream.write_all(data).await?;
    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    Ok((status, rest))
}
