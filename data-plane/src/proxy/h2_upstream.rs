//! HTTP/2 to an upstream on the h2 crate itself. The request's own task
//! opens the stream and waits for the response: no dispatch task, channel
//! or spawned response future per request, which hyper's client adds. A
//! request body still arriving is piped by a task of its own, since it must
//! go on while the response comes back (gRPC streaming).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{HeaderValue, Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{Body, BoxError, Stream};

/// Windows and limits as hyper's client sets them: the spec's 64 KiB
/// windows would throttle a large body on a fast hop.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// A PING every `KEEP_ALIVE`; no answer within `PING_TIMEOUT` closes the
/// connection, so a peer that vanished is not kept as a pooled connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A shared HTTP/2 connection to one endpoint.
#[derive(Clone)]
pub struct H2 {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl H2 {
    /// Opens HTTP/2 on `io` and drives the connection from a task of its
    /// own until it ends (`counted` is dropped then).
    pub async fn handshake<G: Send + 'static>(
        io: Stream,
        address: SocketAddr,
        counted: G,
    ) -> Result<H2, h2::Error> {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = connection.ping_pong();
        let done = closed.clone();
        tokio::spawn(async move {
            let _counted = counted;
            tokio::select! {
                ended = &mut connection => if let Err(e) = ended {
                    tracing::debug!(endpoint = %address, error = %e, "HTTP/2 upstream connection ended");
                },
                () = keep_alive(pings) => {
                    tracing::debug!(endpoint = %address, "HTTP/2 upstream did not answer a PING; closing");
                }
            }
            done.store(true, Ordering::Release);
        });
        Ok(H2 { send, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the connection can open another stream. A connection
    /// that cannot (the peer sent GOAWAY, or it failed) counts as closed
    /// from then on, so the pool opens a new one for the next request
    /// while the streams still open on this one finish.
    pub async fn ready(&mut self) -> Result<(), h2::Error> {
        let ready = std::future::poll_fn(|cx| self.send.poll_ready(cx)).await;
        if ready.is_err() {
            self.closed.store(true, Ordering::Release);
        }
        ready
    }

    /// Sends `req` (the connection must be ready) and waits for the
    /// response head.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Body>, h2::Error> {
        let (mut head, body) = req.into_parts();
        let end = body.is_end_stream();
        // A body whose size is known goes with its length, as hyper sends it.
        if let Some(n) = body.size_hint().exact()
            && n > 0
            && !head.headers.contains_key(header::CONTENT_LENGTH)
        {
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let (response, stream) = self.send.send_request(Request::from_parts(head, ()), end)?;
        if !end {
            tokio::spawn(pipe(body, stream));
        }
        let response = response.await?;
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Ok(response.map(|stream| {
            Received {
                stream,
                remaining: length,
                data_done: false,
            }
            .boxed()
        }))
    }
}

/// PINGs the peer every [`KEEP_ALIVE`]; returns when one goes unanswered.
async fn keep_alive(pings: Option<PingPong>) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE).await;
        match tokio::time::timeout(PING_TIMEOUT, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection is closing: its own end is logged.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Sends `body` on `stream` as the peer's flow control allows, and stops
/// if the peer resets the stream.
async fn pipe(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let (sent, ended) = match frame {
            None => (stream.send_data(Bytes::new(), true), true),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
                stream.send_reset(Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    (send_data(&mut stream, data, end).await, end)
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => (stream.send_trailers(trailers), true),
                    Err(_) => continue,
                },
            },
        };
        if sent.is_err() || ended {
            return;
        }
    }
}

/// Sends `data` in pieces the peer's window has room for.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end {
            stream.send_data(data, true)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let room = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(room) => room?,
            None => return Err(h2::Error::from(Reason::CANCEL)),
        };
        if room == 0 {
            continue;
        }
        let piece = data.split_to(room.min(data.len()));
        stream.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// A response body from an HTTP/2 stream, giving the window back as it is
/// read.
struct Received {
    stream: RecvStream,
    /// What the `content-length` says is still to come.
    remaining: Option<u64>,
    data_done: bool,
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match self.stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    self.remaining = self.remaining.map(|r| r.saturating_sub(data.len() as u64));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => self.data_done = true,
            }
        }
        match self.stream.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
