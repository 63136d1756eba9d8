//! The request metrics, recorded when the response body ends or is dropped
//! (with the gRPC status from the trailers, if any).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::metrics::traffic::{DurationLabels, RequestLabels};
use crate::proxy::Proxy;
use crate::proxy::body::{Body, BoxError};
use crate::proxy::downstream::Downstream;
use crate::proxy::grpc_status::GRPC_STATUS;

/// A response body that records the request's metrics when it ends (with
/// the gRPC status from the trailers, if any) or is dropped.
pub(super) struct Observed {
    pub(super) inner: Body,
    pub(super) proxy: Arc<Proxy>,
    pub(super) down: Arc<Downstream>,
    pub(super) labels: Option<RequestLabels>,
    pub(super) started: Instant,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(status) = trailers.get(GRPC_STATUS).and_then(|v| v.to_str().ok())
            && let Some(labels) = self.labels.as_mut()
        {
            labels.grpc_status = status.to_owned();
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

impl Drop for Observed {
    fn drop(&mut self) {
        self.down.activity.end();
        let Some(labels) = self.labels.take() else {
            return;
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut last = self.down.counted.0.lock().expect("metrics cache lock");
        if let Some((_, requests, duration)) = last.as_ref().filter(|(l, ..)| *l == labels) {
            requests.inc();
            duration.observe(elapsed);
            return;
        }
        let m = self.proxy.metrics();
        let duration = m
            .duration
            .get_or_create(&DurationLabels {
                direction: labels.direction,
                destination_service: labels.destination_service.clone(),
            })
            .clone();
        let requests = m.requests.get_or_create(&labels).clone();
        requests.inc();
        duration.observe(elapsed);
        *last = Some((labels, requests, duration));
    }
}
