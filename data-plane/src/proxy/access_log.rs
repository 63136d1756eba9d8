//! Access logs: one JSON line per HTTP request on stdout, as an HTTP
//! connection manager's `StdoutAccessLog` with a `json_format` asks. The
//! format's values are Envoy's command operators; the subset below is
//! understood and anything else is refused (NACK) by name, so a line never
//! silently lacks what the control plane asked for. Lines are buffered and
//! written at least once a second (or at 64 KiB), never on the request path.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::body::{Body, BoxError};
use super::downstream::Downstream;
use super::grpc_status::grpc_status_in_headers;
use super::local_reply::local_reply_reason;

const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// What one key of a line holds.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Text(String),
    StartTime,
    Method,
    Path,
    Authority,
    Protocol,
    RequestHeader(HeaderName),
    ResponseCode,
    ResponseCodeDetails,
    GrpcStatus,
    BytesSent,
    /// TCP only: bytes read from the downstream.
    BytesReceived,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamPeer,
    DownstreamRemote,
    DownstreamLocal,
    DownstreamPeer,
}

/// The keys of a line and what each holds, sorted by key.
#[derive(Debug, PartialEq)]
pub struct AccessLogPlan {
    fields: Vec<(String, Field)>,
}

/// What a log is of: HTTP requests or TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    Http,
    Tcp,
}

/// The access log of an HTTP connection manager or a TCP proxy, if it has one.
pub fn compile(logs: &[AccessLog], of: Of) -> Result<Option<Arc<AccessLogPlan>>, String> {
    match logs {
        [] => Ok(None),
        [log] => compile_one(log, of).map(|p| Some(Arc::new(p))),
        _ => Err("access_log: only one access log per connection manager is supported".into()),
    }
}

fn compile_one(log: &AccessLog, of: Of) -> Result<AccessLogPlan, String> {
    if log.filter.is_some() {
        return Err("access_log.filter is not supported (every request is logged)".into());
    }
    let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err("access_log has no typed_config".into());
    };
    if any.type_url != STDOUT {
        return Err(format!(
            "access_log: {} is not supported (only StdoutAccessLog)",
            any.type_url
        ));
    }
    let stdout = StdoutAccessLog::decode(any.value.as_slice())
        .map_err(|e| format!("access_log: does not decode: {e}"))?;
    let format = match stdout.access_log_format {
        Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => f.format,
        _ => None,
    };
    let Some(Format::JsonFormat(json)) = format else {
        return Err("access_log: only a log_format with json_format is supported".into());
    };
    json_fields(&json, of).map(|fields| AccessLogPlan { fields })
}

fn json_fields(json: &Struct, of: Of) -> Result<Vec<(String, Field)>, String> {
    let mut fields = Vec::new();
    for (key, value) in &json.fields {
        let Some(Kind::StringValue(text)) = &value.kind else {
            return Err(format!(
                "access_log json_format.{key}: only string values are supported"
            ));
        };
        let field = operator(text)
            .and_then(|f| match (f, of) {
                (Field::BytesReceived, Of::Http) => {
                    Err("%BYTES_RECEIVED% is not supported on HTTP listeners".into())
                }
                (f, _) => Ok(f),
            })
            .map_err(|e| format!("access_log json_format.{key}: {text:?}: {e}"))?;
        fields.push((key.clone(), field));
    }
    // The format is a map: keys in order, so lines read the same each time.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(fields)
}

/// One operator (`%NAME%`, `%REQ(HEADER)%`) or text without any.
fn operator(text: &str) -> Result<Field, String> {
    let Some(inner) = text.strip_prefix('%').and_then(|t| t.strip_suffix('%')) else {
        if text.contains('%') {
            return Err("a value is one operator or plain text, not a mix".into());
        }
        return Ok(Field::Text(text.to_owned()));
    };
    if inner.contains('%') {
        return Err("a value is one operator or plain text, not a mix".into());
    }
    if let Some(header) = inner.strip_prefix("REQ(").and_then(|h| h.strip_suffix(')')) {
        return match header.to_ascii_lowercase().as_str() {
            ":method" => Ok(Field::Method),
            ":path" => Ok(Field::Path),
            ":authority" => Ok(Field::Authority),
            h if h.contains(['?', ':']) => {
                Err("alternative headers and length limits are not supported".into())
            }
            h => HeaderName::from_bytes(h.as_bytes())
                .map(Field::RequestHeader)
                .map_err(|_| format!("{header:?} is not a header name")),
        };
    }
    Ok(match inner {
        "START_TIME" => Field::StartTime,
        "PROTOCOL" => Field::Protocol,
        "RESPONSE_CODE" => Field::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Field::ResponseCodeDetails,
        "GRPC_STATUS(NUMBER)" => Field::GrpcStatus,
        "BYTES_SENT" => Field::BytesSent,
        "BYTES_RECEIVED" => Field::BytesReceived,
        "DURATION" => Field::Duration,
        "UPSTREAM_HOST" => Field::UpstreamHost,
        "UPSTREAM_CLUSTER" => Field::UpstreamCluster,
        "UPSTREAM_PEER_URI_SAN" => Field::UpstreamPeer,
        "DOWNSTREAM_REMOTE_ADDRESS" => Field::DownstreamRemote,
        "DOWNSTREAM_LOCAL_ADDRESS" => Field::DownstreamLocal,
        "DOWNSTREAM_PEER_URI_SAN" => Field::DownstreamPeer,
        _ => return Err(format!("the operator %{inner}% is not supported")),
    })
}

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
        let details = local_reply_reason(&parts.extensions)
            .unwrap_or("via_upstream")
            .to_owned();
        let grpc_status = grpc_status_in_headers(&parts.headers);
        let logged = Logged {
            inner: body,
            entry: Some(Box::new(Finished {
                code: parts.status.as_u16(),
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
                details: Some("downstream_remote_disconnect".to_owned()),
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
    use envoy_types::pb::google::protobuf::Value;

    fn format(pairs: &[(&str, &str)]) -> Struct {
        Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(Kind::StringValue((*v).to_owned())),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn operators_are_understood_or_refused_by_name() {
        let fields = json_fields(
            &format(&[
                ("code", "%RESPONSE_CODE%"),
                ("method", "%REQ(:METHOD)%"),
                ("id", "%REQ(X-REQUEST-ID)%"),
                ("mesh", "rampart"),
            ]),
            Of::Http,
        )
        .unwrap();
        assert_eq!(
            fields,
            [
                ("code".to_owned(), Field::ResponseCode),
                (
                    "id".to_owned(),
                    Field::RequestHeader(HeaderName::from_static("x-request-id"))
                ),
                ("mesh".to_owned(), Field::Text("rampart".into())),
                ("method".to_owned(), Field::Method),
            ]
        );
        for (value, error) in [
            ("%BYTES_RECEIVED%", "not supported on HTTP listeners"),
            (
                "%RESPONSE_FLAGS%",
                "the operator %RESPONSE_FLAGS% is not supported",
            ),
            ("%REQ(X?Y)%", "alternative headers"),
            ("took %DURATION% ms", "not a mix"),
        ] {
            let e = json_fields(&format(&[("k", value)]), Of::Http).unwrap_err();
            assert!(e.starts_with("access_log json_format.k: "), "{e}");
            assert!(e.contains(error), "{e}");
        }
    }

    #[test]
    fn the_start_time_is_utc_to_the_millisecond() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        assert_eq!(start_time(at), "2026-05-28T20:26:40.123Z");
    }
}
