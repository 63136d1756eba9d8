//! gRPC statuses in HTTP headers, for retries, outlier detection and the
//! access log. A leaf.

use http::header::{HeaderMap, HeaderName};

pub(super) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The status of a trailers-only gRPC response (an error: a normal one
/// carries its status in the trailers).
pub fn grpc_status_in_headers(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// gRPC statuses that map to a 5xx (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS): outlier detection counts
/// them like one, as Envoy does, since gRPC errors come with HTTP 200.
pub(super) fn is_grpc_server_error(status: u32) -> bool {
    matches!(status, 2 | 4 | 12 | 13 | 14 | 15)
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::{grpc_status_in_headers, is_grpc_server_error};

    #[test]
    fn grpc_errors_that_count_as_server_errors_are_envoy_s() {
        let counted: Vec<u32> = (0..=16).filter(|s| is_grpc_server_error(*s)).collect();
        assert_eq!(counted, [2, 4, 12, 13, 14, 15]);
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status_in_headers(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status_in_headers(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("unavailable"));
        assert_eq!(grpc_status_in_headers(&h), None);
    }
}
