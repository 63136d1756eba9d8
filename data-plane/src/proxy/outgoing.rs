//! The request as it goes upstream, kept so that a retry (or a mirror) can
//! send it again: a small body of known size is read whole before the
//! first try; a streamed one (chunked HTTP/1.1, HTTP/2 and gRPC without
//! `content-length`) goes out as it arrives and is recorded on the way, up
//! to [`REPLAYABLE`] bytes, and mirrored once it has ended. As in Envoy, a
//! body longer than that is not retried (nor mirrored).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::body::{Body, BoxError, full};
use super::error::Error;

/// Bodies up to this size are kept so a retry or a mirror can resend them.
pub const REPLAYABLE: u64 = 64 * 1024;

pub struct Outgoing {
    pub parts: http::request::Parts,
    /// The whole body, when it is known.
    body: Option<Bytes>,
    /// A streamed body not sent yet (recording itself if `tape` is set).
    stream: Option<Body>,
    /// What a streamed body sent so far, and whether it has ended (when the
    /// route retries or mirrors, so it is worth keeping).
    tape: Option<(Arc<Mutex<Tape>>, watch::Receiver<bool>)>,
    /// Sent again (retried or mirrored) if need be: the first try then
    /// takes a copy of the head instead of the head itself.
    keep: bool,
}

impl Outgoing {
    /// `keep`: the route retries or mirrors, so the body is kept.
    pub async fn new(req: Request<Incoming>, keep: bool) -> Result<Outgoing, Error> {
        let (parts, body) = req.into_parts();
        let small =
            body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= REPLAYABLE);
        let mut out = Outgoing {
            parts,
            body: None,
            stream: None,
            tape: None,
            keep,
        };
        if keep && small {
            let bytes = body
                .collect()
                .await
                .map_err(|e| Error::BodyUnreadable(e.to_string()))?
                .to_bytes();
            out.body = Some(bytes);
        } else if keep {
            let tape = Arc::new(Mutex::new(Tape::default()));
            let (ended, watching) = watch::channel(false);
            out.stream = Some(
                Recorded {
                    inner: body,
                    tape: tape.clone(),
                    ended,
                }
                .boxed(),
            );
            out.tape = Some((tape, watching));
        } else {
            out.stream = Some(body.map_err(|e| Box::new(e) as BoxError).boxed());
        }
        Ok(out)
    }

    /// A copy with the whole body, for a mirror: at once if it is known; for
    /// a streamed body, once it has been sent and if it was kept whole
    /// (`None` then if it was not, or the request ended before).
    pub fn copy(&self) -> Option<impl Future<Output = Option<Outgoing>> + Send + 'static> {
        let parts = clone_parts(&self.parts);
        let known = self.body.clone();
        let tape = match &known {
            Some(_) => None,
            None => Some(self.tape.clone()?),
        };
        Some(async move {
            let body = match (known, tape) {
                (Some(body), _) => body,
                (None, Some((tape, mut ended))) => {
                    ended.wait_for(|e| *e).await.ok()?;
                    tape.lock().expect("tape lock").whole()?
                }
                (None, None) => return None,
            };
            Some(Outgoing {
                parts,
                body: Some(body),
                stream: None,
                tape: None,
                keep: false,
            })
        })
    }

    /// Whether [`Outgoing::take`] can give the request (again): its body is
    /// known, not sent yet, or was recorded whole.
    pub fn retryable(&self) -> bool {
        self.body.is_some()
            || self.stream.is_some()
            || self
                .tape
                .as_ref()
                .is_some_and(|(tape, _)| tape.lock().expect("tape lock").is_whole())
    }

    fn recorded(&self) -> Option<Bytes> {
        let (tape, _) = self.tape.as_ref()?;
        tape.lock().expect("tape lock").whole()
    }

    /// The next try's request (`None` once a body that cannot be sent again
    /// was sent).
    pub fn take(&mut self) -> Option<Request<Body>> {
        let body = match self.stream.take() {
            Some(stream) => stream,
            None => {
                if self.body.is_none() {
                    self.body = self.recorded();
                }
                full(self.body.clone()?)
            }
        };
        let parts = if self.keep {
            clone_parts(&self.parts)
        } else {
            // Sent once only: the head goes as it is, no copy (but without
            // what the downstream connection attached, as a copy would be).
            let mut parts = std::mem::replace(&mut self.parts, Request::new(()).into_parts().0);
            parts.extensions.clear();
            parts
        };
        Some(Request::from_parts(parts, body))
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.headers = parts.headers.clone();
    copy.version = parts.version;
    copy
}

/// What a streamed body has sent so far.
#[derive(Default)]
struct Tape {
    data: BytesMut,
    /// The body ended.
    ended: bool,
    /// Longer than REPLAYABLE, ended with trailers, or failed: not kept.
    spoiled: bool,
}

impl Tape {
    /// The body ended and was kept.
    fn is_whole(&self) -> bool {
        self.ended && !self.spoiled
    }

    /// The whole body, if it ended and was kept (a copy).
    fn whole(&self) -> Option<Bytes> {
        self.is_whole().then(|| self.data.clone().freeze())
    }

    fn record(&mut self, frame: &Frame<Bytes>) {
        match frame.data_ref() {
            Some(data) if !self.spoiled => {
                if (self.data.len() + data.len()) as u64 > REPLAYABLE {
                    self.spoiled = true;
                    self.data = BytesMut::new();
                } else {
                    self.data.extend_from_slice(data);
                }
            }
            Some(_) => {}
            // Trailers (rare on requests) are not replayed.
            None => self.spoiled = true,
        }
    }
}

/// A streamed request body that records itself on a [`Tape`] as it goes,
/// and says when it has ended (dropped before: never, and waiters stop).
struct Recorded {
    inner: Incoming,
    tape: Arc<Mutex<Tape>>,
    ended: watch::Sender<bool>,
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = self.inner.is_end_stream();
        let mut tape = self.tape.lock().expect("tape lock");
        match &polled {
            Poll::Ready(Some(Ok(frame))) => tape.record(frame),
            Poll::Ready(Some(Err(_))) => tape.spoiled = true,
            Poll::Ready(None) | Poll::Pending => {}
        }
        // The sender may stop polling once the body says it has ended.
        let now_ended = !tape.ended && (ended || matches!(polled, Poll::Ready(None)));
        tape.ended |= now_ended;
        drop(tape);
        if now_ended {
            self.ended.send_replace(true);
        }
        polled.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tape_keeps_a_short_body_and_gives_up_on_a_long_one() {
        let mut tape = Tape::default();
        tape.record(&Frame::data(Bytes::from_static(b"hello ")));
        assert_eq!(tape.whole(), None, "not ended yet");
        tape.record(&Frame::data(Bytes::from_static(b"world")));
        tape.ended = true;
        assert_eq!(tape.whole().as_deref(), Some(&b"hello world"[..]));

        let mut long = Tape::default();
        let chunk = Bytes::from(vec![b'x'; 40 * 1024]);
        long.record(&Frame::data(chunk.clone()));
        long.record(&Frame::data(chunk));
        long.ended = true;
        assert_eq!(long.whole(), None);

        let mut trailers = Tape::default();
        trailers.record(&Frame::data(Bytes::from_static(b"x")));
        trailers.record(&Frame::trailers(http::HeaderMap::new()));
        trailers.ended = true;
        assert_eq!(trailers.whole(), None);
    }
}
