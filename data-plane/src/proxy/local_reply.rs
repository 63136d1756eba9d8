//! Replies the proxy makes itself (no route, denied, circuit open, upstream
//! unreachable or too slow: an [`Error`]). Each says why in its body and
//! carries the error for the access log and metrics; a gRPC caller gets
//! it as gRPC instead, as Envoy does: a gRPC client reads its status from
//! `grpc-status`, and a bare HTTP 503 would reach it as an unexplained
//! INTERNAL or UNKNOWN.

use super::body::{Body, full};
use super::error::{Error, NO_FLAGS};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

/// Marks a response as the proxy's own, with its reason, and whether it
/// has been put as gRPC already.
#[derive(Clone)]
struct LocalReply {
    error: Error,
    as_grpc: bool,
}

/// Why the proxy answered itself, if it did.
pub fn local_reply(extensions: &http::Extensions) -> Option<&Error> {
    extensions.get::<LocalReply>().map(|r| &r.error)
}

/// Marks an upstream's answer to a request the route's fault filter
/// delayed first.
#[derive(Clone, Copy)]
pub struct DelayInjected;

/// A response's `%RESPONSE_FLAGS%`: its error's if the proxy answered
/// itself, `DI` if a fault delayed the request the upstream answered, else
/// `-`.
pub fn response_flags(extensions: &http::Extensions) -> &'static str {
    match local_reply(extensions) {
        Some(error) => error.response_flags(),
        None if extensions.get::<DelayInjected>().is_some() => "DI",
        None => NO_FLAGS,
    }
}

/// The proxy's own answer for `error`: its status, the reason in words,
/// and the headers Envoy adds to such a reply (`x-envoy-overloaded` when a
/// circuit breaker is open, `x-ratelimit-limited` for a local rate limit).
pub fn reply(error: Error) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(format!("{error}\n"))));
    *r.status_mut() = error.status();
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    match &error {
        Error::Overflow { .. } => {
            headers.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        Error::RateLimited { .. } => {
            headers.insert("x-ratelimit-limited", HeaderValue::from_static("true"));
        }
        _ => {}
    }
    r.extensions_mut().insert(LocalReply {
        error,
        as_grpc: false,
    });
    r
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC status for an HTTP status, as the gRPC spec maps them.
fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `grpc-message` encoding: printable ASCII but `%` as is, the rest as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A local reply as a gRPC trailers-only response (HTTP 200, the status in
/// the headers, no body); any other response as it is.
pub fn for_grpc(response: Response<Body>) -> Response<Body> {
    let Some(LocalReply {
        error,
        as_grpc: false,
    }) = response.extensions().get::<LocalReply>().cloned()
    else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let code = grpc_status(parts.status);
    parts.status = StatusCode::OK;
    let why = error.to_string();
    parts.extensions.insert(LocalReply {
        error,
        as_grpc: true,
    });
    let headers = &mut parts.headers;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&why)) {
        headers.insert("grpc-message", message);
    }
    Response::from_parts(parts, full(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replies_become_grpc_statuses() {
        let r = for_grpc(reply(Error::Denied { policy: None }));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()["grpc-message"], "RBAC: access denied");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        let r = for_grpc(reply(Error::NoHealthyUpstream("100%".into())));
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "no healthy upstream in cluster 100%25"
        );
        // An upstream's own response is not touched.
        let upstream = Response::builder()
            .status(503)
            .body(full(Bytes::new()))
            .unwrap();
        assert_eq!(for_grpc(upstream).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
