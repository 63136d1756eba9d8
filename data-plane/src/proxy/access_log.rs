//! Access logs: one JSON line per HTTP request or TCP connection on stdout,
//! as an HTTP connection manager's or TCP proxy's `StdoutAccessLog` with a
//! `json_format` asks (the format is compiled by `rampart_plan::access_log`).
//! Lines are buffered and written at least once a second (or at 64 KiB),
//! never on the request path.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use rampart_plan::access_log::{AccessLogPlan, Field};

use super::body::{Body, BoxError};
use super::downstream::Downstream;
use super::error::{DOWNSTREAM_GONE, Error, NO_FLAGS, VIA_UPSTREAM};
use super::grpc_status::grpc_status_in_headers;
use super::local_reply::{local_reply, response_flags};

/// Where a forwarded request went, for the log (set only when logging).
#[derive(Clone)]
pub struct UpstreamInfo {
    pub cluster: Arc<str>,
    pub host: Option<SocketAddr>,
    pub peer: Option<Arc<str>>,
}

/// A request being logged: written when its response ends, or with
/// response code 0 if the caller goes away before it is answered.
pub struct Entry {
    arrived: Option<Arrived>,
    writer: Arc<Writer>,
}

/// What was known of a request when it arrived.
struct Arrived {
    plan: Arc<AccessLogPlan>,
    down: Arc<Downstream>,
    start: SystemTime,
    started: Instant,
    /// None for a TCP connection.
    request: Option<RequestSeen>,
}

/// What a line says of the request itself.
struct RequestSeen {
    method: Method,
    path: String,
    authority: Option<String>,
    version: Version,
    /// The values of the `REQ(...)` fields, in the plan's order.
    headers: Vec<Option<HeaderValue>>,
}

impl Entry {
    pub fn start<B>(
        plan: &Arc<AccessLogPlan>,
        down: &Arc<Downstream>,
        req: &Request<B>,
        writer: Arc<Writer>,
    ) -> Entry {
        let headers = plan
            .fields
            .iter()
            .filter_map(|(_, f)| match f {
                Field::RequestHeader(h) => Some(req.headers().get(h).cloned()),
                _ => None,
            })
            .collect();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .map(str::to_owned);
        let arrived = Arrived {
            plan: plan.clone(),
            down: down.clone(),
            start: SystemTime::now(),
            started: Instant::now(),
            request: Some(RequestSeen {
                method: req.method().clone(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
                authority,
                version: req.version(),
                headers,
            }),
        };
        Entry {
            arrived: Some(arrived),
            writer,
        }
    }

    /// The response, its body logging the line when it ends.
    pub fn finish(mut self, response: Response<Body>) -> Response<Body> {
        let Some(arrived) = self.arrived.take() else {
            return response;
        };
        let (parts, body) = response.into_parts();
        let flags = response_flags(&parts.extensions);
        let details =
            local_reply(&parts.extensions).map_or_else(|| VIA_UPSTREAM.to_owned(), Error::details);
        let grpc_status = grpc_status_in_headers(&parts.headers);
        let logged = Logged {
            inner: body,
            entry: Some(Box::new(Finished {
                code: parts.status.as_u16(),
                flags,
                details: Some(details),
                grpc_status,
                upstream: parts.extensions.get::<UpstreamInfo>().cloned(),
                bytes_sent: 0,
                bytes_received: None,
                entry: arrived,
            })),
            writer: self.writer.clone(),
        };
        Response::from_parts(parts, logged.boxed())
    }
}

impl Drop for Entry {
    /// Not answered: the caller went away (its connection closed or its
    /// stream was reset) while the request was on its way.
    fn drop(&mut self) {
        if let Some(arrived) = self.arrived.take() {
            let finished = Finished {
                entry: arrived,
                code: 0,
                flags: DOWNSTREAM_GONE.0,
                details: Some(DOWNSTREAM_GONE.1.to_owned()),
                grpc_status: None,
                upstream: None,
                bytes_sent: 0,
                bytes_received: None,
            };
            self.writer.push(&finished.line());
        }
    }
}

struct Finished {
    entry: Arrived,
    /// 0 when there was no response (TCP, or the caller went away).
    code: u16,
    /// `%RESPONSE_FLAGS%`: `-` when nothing went wrong.
    flags: &'static str,
    details: Option<String>,
    grpc_status: Option<u32>,
    upstream: Option<UpstreamInfo>,
    bytes_sent: u64,
    bytes_received: Option<u64>,
}

/// The line of a TCP connection, written when it is dropped (however the
/// connection ended: no upstream reached, closed, reset, idle): code 0,
/// no request fields, the bytes each way.
pub struct TcpLine {
    arrived: Option<Arrived>,
    writer: Arc<Writer>,
    /// The endpoint, once one was reached.
    pub upstream: Option<UpstreamInfo>,
    /// Why no endpoint was reached, if none was (its response flags).
    pub failure: Option<Error>,
    /// Bytes written to the downstream.
    pub sent: u64,
    /// Bytes read from the downstream.
    pub received: u64,
}

impl TcpLine {
    pub fn start(
        plan: &Arc<AccessLogPlan>,
        down: &Arc<Downstream>,
        writer: Arc<Writer>,
    ) -> TcpLine {
        TcpLine {
            arrived: Some(Arrived {
                plan: plan.clone(),
                down: down.clone(),
                start: SystemTime::now(),
                started: Instant::now(),
                request: None,
            }),
            writer,
            upstream: None,
            failure: None,
            sent: 0,
            received: 0,
        }
    }
}

impl Drop for TcpLine {
    fn drop(&mut self) {
        if let Some(arrived) = self.arrived.take() {
            let finished = Finished {
                entry: arrived,
                code: 0,
                flags: self
                    .failure
                    .as_ref()
                    .map_or(NO_FLAGS, Error::response_flags),
                details: None,
                grpc_status: None,
                upstream: self.upstream.take(),
                bytes_sent: self.sent,
                bytes_received: Some(self.received),
            };
            self.writer.push(&finished.line());
        }
    }
}

/// A response body that writes the request's line when it ends or is
/// dropped (the caller went away).
struct Logged {
    inner: Body,
    entry: Option<Box<Finished>>,
    writer: Arc<Writer>,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(f) = self.entry.as_mut()
        {
            if let Some(data) = frame.data_ref() {
                f.bytes_sent += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref() {
                f.grpc_status = grpc_status_in_headers(trailers).or(f.grpc_status);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(f) = self.entry.take() {
            self.writer.push(&f.line());
        }
    }
}

/// `2026-12-03T13:30:00.123Z`, Envoy's default `START_TIME`.
fn start_time(at: SystemTime) -> String {
    static FORMAT: OnceLock<Vec<time::format_description::BorrowedFormatItem<'static>>> =
        OnceLock::new();
    let format = FORMAT.get_or_init(|| {
        time::format_description::parse_borrowed::<2>(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z",
        )
        .expect("a valid format")
    });
    time::OffsetDateTime::from(at)
        .format(format)
        .unwrap_or_default()
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl Finished {
    fn line(&self) -> Vec<u8> {
        use serde_json::Value;
        let e = &self.entry;
        let text = |s: &str| Value::String(s.to_owned());
        let or_null = |s: Option<&str>| s.map_or(Value::Null, text);
        let upstream = self.upstream.as_ref();
        let request = e.request.as_ref();
        let mut headers = request.map(|r| r.headers.iter());
        let mut line = b"{".to_vec();
        for (i, (key, field)) in e.plan.fields.iter().enumerate() {
            let value = match field {
                Field::Text(t) => text(t),
                Field::StartTime => Value::String(start_time(e.start)),
                Field::Method => or_null(request.map(|r| r.method.as_str())),
                Field::Path => or_null(request.map(|r| r.path.as_str())),
                Field::Authority => or_null(request.and_then(|r| r.authority.as_deref())),
                Field::Protocol => or_null(request.map(|r| protocol(r.version))),
                Field::RequestHeader(_) => or_null(
                    headers
                        .as_mut()
                        .and_then(|h| h.next())
                        .and_then(Option::as_ref)
                        .and_then(|v| v.to_str().ok()),
                ),
                Field::ResponseCode => Value::from(self.code),
                Field::ResponseCodeDetails => or_null(self.details.as_deref()),
                Field::ResponseFlags => text(self.flags),
                Field::GrpcStatus => self.grpc_status.map_or(Value::Null, Value::from),
                Field::BytesSent => Value::from(self.bytes_sent),
                Field::BytesReceived => self.bytes_received.map_or(Value::Null, Value::from),
                Field::Duration => Value::from(e.started.elapsed().as_millis() as u64),
                Field::UpstreamHost => or_null(
                    upstream
                        .and_then(|u| u.host)
                        .map(|h| h.to_string())
                        .as_deref(),
                ),
                Field::UpstreamCluster => or_null(upstream.map(|u| &*u.cluster)),
                Field::UpstreamPeer => or_null(upstream.and_then(|u| u.peer.as_deref())),
                Field::DownstreamRemote => text(&e.down.remote.to_string()),
                Field::DownstreamLocal => text(&e.down.local.to_string()),
                Field::DownstreamPeer => or_null(e.down.peer.as_deref()),
            };
            if i > 0 {
                line.push(b',');
            }
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut line, key);
            line.push(b':');
            let _ = serde_json::to_writer(&mut line, &value);
        }
        line.extend_from_slice(b"}\n");
        line
    }
}

/// Buffered stdout for the access log lines of every listener.
#[derive(Default)]
pub struct Writer {
    buffer: Mutex<Vec<u8>>,
    full: Notify,
}

/// Written out at this size even before the next second.
const FLUSH_AT: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Writer {
    fn push(&self, line: &[u8]) {
        let mut buffer = self.buffer.lock().expect("access log lock");
        buffer.extend_from_slice(line);
        if buffer.len() >= FLUSH_AT {
            self.full.notify_one();
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buffer.lock().expect("access log lock"))
    }

    /// Writes the buffer out every second, or sooner when it fills.
    pub async fn run(self: Arc<Self>) {
        let mut out = tokio::io::stdout();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = self.full.notified() => {}
            }
            let lines = self.take();
            if !lines.is_empty() {
                // stdout gone (closed pipe): the lines are dropped.
                let _ = out.write_all(&lines).await;
                let _ = out.flush().await;
            }
        }
    }

    /// What is left, at exit.
    pub fn flush_now(&self) {
        use std::io::Write;
        let lines = self.take();
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&lines);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_utc_to_the_millisecond() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        assert_eq!(start_time(at), "2026-05-28T20:26:40.123Z");
    }
}
